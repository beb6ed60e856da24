"""A real MCP client (the official Python SDK, mcp 2.x from PyPI) against `grip mcp serve`.

    mcp_client_check.py '{"stdio": ["grip", "mcp", "serve", ...]} | {"url": "http://..."},
                          "calls": [[name, args], ...], "abandon": [name, args, seconds]}'

Prints one JSON object: the tools listed and each call's result, as the SDK parsed them (in
the protocol's camelCase), for the Rust test to check.
"""

import asyncio
import json
import sys

import anyio

from mcp import Client, StdioServerParameters


async def main() -> None:
    spec = json.loads(sys.argv[1])
    if "stdio" in spec:
        command, *args = spec["stdio"]
        target = StdioServerParameters(command=command, args=args, env=spec.get("env"))
    else:
        target = spec["url"]
    out = {"tools": [], "results": []}
    async with Client(target) as client:
        listed = await client.list_tools()
        out["tools"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed.tools]
        for name, arguments in spec["calls"]:
            result = await client.call_tool(name, arguments)
            out["results"].append(result.model_dump(mode="json", by_alias=True, exclude_none=True))
        # A call given up on after `seconds`: the SDK tells the server with notifications/cancelled.
        if "abandon" in spec:
            name, arguments, seconds = spec["abandon"]
            out["abandoned"] = True
            with anyio.move_on_after(seconds):
                await client.call_tool(name, arguments)
                out["abandoned"] = False
    print(json.dumps(out))


asyncio.run(main())
