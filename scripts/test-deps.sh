#!/usr/bin/env bash
# Registry packages the tests need, installed where the tests look for them:
# - Debian's nats-server (2.9 on Debian 12), which the queue tests start (tests/tests/queue.rs);
# - a Python venv at target/venv with the official OpenAI SDK (tests/tests/openai_front.rs), the
#   official MCP SDK and the reference time server (tests/tests/mcp.rs);
# - the reference "everything" MCP server from npm, in target/npm (tests/tests/mcp.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  else
    echo "nats-server is missing: install the Debian package nats-server (sudo apt-get install nats-server)" >&2
    exit 1
  fi
fi
if [ ! -x target/venv/bin/python ]; then
  mkdir -p target
  # Debian splits venv support out of python3: install it when it is missing (CI runs as root).
  if ! python3 -m venv target/venv 2>/dev/null; then
    rm -rf target/venv
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
      echo "python3 -m venv failed: install the Debian package python3-venv" >&2
      exit 1
    fi
    python3 -m venv target/venv
  fi
fi
target/venv/bin/python -m pip install --quiet --disable-pip-version-check "openai==2.8.1" \
  "mcp==2.3.0" "mcp-server-time==2026.10.19"
if ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "npm is missing: install Node.js and npm (the Debian packages nodejs and npm)" >&2
    exit 1
  fi
fi
if [ ! -x target/npm/node_modules/.bin/mcp-server-everything ]; then
  mkdir -p target/npm
  npm install --silent --no-audit --no-fund --prefix target/npm \
    "@modelcontextprotocol/server-everything@2026.8.31"
fi
