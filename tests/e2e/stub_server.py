"""A deliberately misbehaving stdio MCP server for toolgate's fault tests.

Speaks just enough of the handshake-era protocol (newline-delimited JSON-RPC) to be called.
Behaviours, chosen by the first argument:

  crash      `tools/call` of `crash` exits with status 3 without answering.
  stubborn   writes its pid to the file named by the second argument, ignores SIGTERM and
             the end of its input, and stays alive until killed.
"""

import json
import os
import signal
import sys
import time


def answer(msg_id, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}) + "\n")
    sys.stdout.flush()


def serve(crash_on_call):
    for line in sys.stdin:
        msg = json.loads(line)
        method, msg_id = msg.get("method"), msg.get("id")
        if msg_id is None:
            continue
        if method == "initialize":
            answer(msg_id, {
                "protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "stub", "version": "1"},
            })
        elif method == "tools/list":
            answer(msg_id, {"tools": [{"name": "crash", "inputSchema": {"type": "object"}},
                                      {"name": "ok", "inputSchema": {"type": "object"}}]})
        elif method == "tools/call" and crash_on_call and msg["params"]["name"] == "crash":
            os._exit(3)
        else:
            answer(msg_id, {"content": [{"type": "text", "text": "ok"}]})


def main():
    mode = sys.argv[1]
    if mode == "crash":
        serve(crash_on_call=True)
    elif mode == "stubborn":
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        serve(crash_on_call=False)
        while True:
            time.sleep(1)


if __name__ == "__main__":
    main()
