"""Drives a real MCP client (the Python `mcp` SDK) over Streamable HTTP, for the end-to-end
tests of `toolgate serve`.

Usage: http_driver.py MODE URL [TOKEN]

MODE is `auto` or `legacy` (see driver.py). TOKEN, when given, is sent as
`Authorization: Bearer TOKEN`. Commands and answers are driver.py's, one JSON per line on
stdin/stdout; a client that cannot connect answers its first command with
{"connect_error": "..."} and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from driver import sampling, serve_commands  # noqa: E402

from mcp.client.client import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: E402


async def main() -> int:
    argv = sys.argv[1:]
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    mode, url = argv[0], argv[1]
    headers = {"Authorization": f"Bearer {argv[2]}"} if len(argv) > 2 else None
    try:
        async with create_mcp_http_client(headers=headers) as http:
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, mode=mode, sampling_callback=sampling, read_timeout_seconds=60) as client:
                return await serve_commands(client)
    except BaseException as e:  # noqa: BLE001 - the test reads what went wrong
        print(json.dumps({"connect_error": f"{type(e).__name__}: {e}"}), flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
