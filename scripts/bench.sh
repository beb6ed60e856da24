#!/usr/bin/env bash
# Runs every benchmark in one go (a few minutes on 2 cores) and prints the tables that
# BENCHMARKS.md reports. Each compares against a baseline measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p e2e --bench boundary      # plugin boundary, wire JSON, fan-out (criterion)
cargo bench -p e2e --bench task          # PromptTask and apublish_event (criterion)
cargo bench -p e2e --bench driver_load   # OpenAI and Anthropic plugins vs raw reqwest
cargo bench -p e2e --bench e2e_load      # every mode vs bare requests, scale sweep to 10,000 tasks
cargo bench -p e2e --bench daemon_load   # daemon added latency at 1/64/512, RSS at 10,000 tasks
cargo bench -p e2e --bench host_cost     # grip serve vs a hand-written axum + reqwest proxy: CPU and p99 at 1/16/64
cargo bench -p e2e --bench openai_front  # /v1/chat/completions vs /v1/tasks, CPU and latency at 1 and 64
cargo bench -p e2e --bench local_model   # llama.cpp driver: load, tokens/s, RSS, first token
cargo bench -p e2e --bench mcp_call      # an MCP tool call vs the same tool in process; stdio server start-up
cargo bench -p e2e --bench telemetry     # OpenTelemetry off / on / on with content: daemon CPU and latency at 1 and 64
