"""An MCP server on the official Python SDK (mcp 2.x, from PyPI) that misbehaves on request:
the tests start it as a real stdio child (or, with --http PORT, a streamable-HTTP server) to
see what grip does when a server is slow, crashes, errs, changes its tools or starts children.

PROBE_DIR (an env var the test sets through the manifest) receives marker files: what the
server saw, for the test to check (a cancellation, a grandchild's pid).
"""

import os
import subprocess
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer

PROBE_DIR = os.environ.get("PROBE_DIR", ".")
server = MCPServer("grip-probe")


def mark(name: str, text: str) -> None:
    with open(os.path.join(PROBE_DIR, name), "a", encoding="utf-8") as f:
        f.write(text + "\n")


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers (a structured result)."""
    return a + b


@server.tool()
def fail(message: str) -> str:
    """Always fails with the message (an error result)."""
    raise ValueError(message)


@server.tool()
async def sleep(seconds: float) -> str:
    """Sleeps; a cancellation from the client is written to PROBE_DIR/cancelled."""
    mark("started", str(seconds))
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        mark("cancelled", str(seconds))
        raise
    return f"slept {seconds}"


@server.tool()
def crash() -> str:
    """Ends the server process at once."""
    print("probe: crashing on request", file=sys.stderr, flush=True)
    os._exit(3)


@server.tool()
async def grow(name: str, ctx: Context) -> str:
    """Adds a tool called `name` and tells the client its tool list changed."""

    def grown() -> str:
        return f"I am {name}"

    server.add_tool(grown, name=name, description=f"a tool added at run time ({name})")
    await ctx.session.send_tool_list_changed()
    return f"added {name}"


@server.tool()
def env(name: str) -> str:
    """The server's environment variable `name`, or <unset>."""
    return os.environ.get(name, "<unset>")


@server.tool()
def spawn_child() -> int:
    """Starts a long-lived child process (a grandchild of grip); its pid goes to PROBE_DIR."""
    child = subprocess.Popen(["sleep", "300"])
    mark("child.pid", str(child.pid))
    return child.pid


if __name__ == "__main__":
    print(f"probe: started pid {os.getpid()}", file=sys.stderr, flush=True)
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
