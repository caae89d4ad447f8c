"""Drives a real MCP client (the Python `mcp` SDK) for toolgate's end-to-end tests.

Usage: driver.py MODE STDERR_LOG -- COMMAND ARGS...

MODE is the client's connect mode: `auto` (probe `server/discover`, fall back to the
`initialize` handshake) or `legacy` (handshake only). COMMAND is the server to connect to
over stdio, usually `toolgate wrap ... -- <real server>`; its stderr goes to STDERR_LOG.

The test sends one JSON command per line on stdin and reads one JSON answer per line on
stdout, so one client session serves a whole scenario:

  {"op": "info"}                                  -> {"protocol": "2025-11-25"}
  {"op": "list_tools"}                            -> {"tools": ["echo", ...]}
  {"op": "call", "tool": T, "args": {...},
   "progress": true}                              -> {"is_error": b, "texts": [...],
                                                      "result_type": s, "progress": n}
  {"op": "close"}                                 -> {"closed": true}, then exit 0

A call that fails with a JSON-RPC error answers {"error": {"code": c, "message": m}}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import mcp_types as types
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError


async def sampling(_context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    """Answers every sampling request with a fixed text, so the test can see it came back."""
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text="sampled by the e2e driver"),
        model="e2e-driver",
        stop_reason="endTurn",
    )


def result_json(result: types.CallToolResult) -> dict[str, Any]:
    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
    return {
        "is_error": bool(result.is_error),
        "texts": texts,
        "result_type": getattr(result, "result_type", None),
    }


async def handle(client: Client, cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd.get("op")
    if op == "info":
        return {"protocol": client.protocol_version}
    if op == "list_tools":
        tools = await client.list_tools(cache_mode="bypass")
        return {"tools": [t.name for t in tools.tools]}
    if op == "call":
        seen: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)

        try:
            result = await client.call_tool(
                cmd["tool"],
                cmd.get("args", {}),
                progress_callback=on_progress if cmd.get("progress") else None,
            )
        except MCPError as e:
            return {"error": {"code": e.code, "message": str(e)}}
        out = result_json(result)
        out["progress"] = len(seen)
        return out
    return {"error": {"code": 0, "message": f"unknown op {op!r}"}}


async def main() -> int:
    argv = sys.argv[1:]
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    mode, log_path, command = argv[0], argv[1], argv[3:]
    # The SDK passes servers only a short list of variables; the gateway also needs to know
    # where the test keeps its runtime and state files.
    passed = {k: os.environ[k] for k in ("XDG_RUNTIME_DIR", "XDG_STATE_HOME", "RUST_LOG") if k in os.environ}
    params = StdioServerParameters(command=command[0], args=command[1:], env=passed)
    with open(log_path, "a", encoding="utf-8") as log:
        transport = stdio_client(params, errlog=log)
        async with Client(transport, mode=mode, sampling_callback=sampling, read_timeout_seconds=60) as client:
            return await serve_commands(client)


async def serve_commands(client: Client) -> int:
    """Answers one JSON command per stdin line until stdin ends or a `close` command."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return 0
        cmd = json.loads(line)
        if cmd.get("op") == "close":
            print(json.dumps({"closed": True}), flush=True)
            return 0
        try:
            answer = await handle(client, cmd)
        except Exception as e:  # report, keep the session for the next command
            answer = {"error": {"code": -1, "message": f"{type(e).__name__}: {e}"}}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
