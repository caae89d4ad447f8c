"""A stdio MCP server whose tool names, descriptions and server name carry terminal escapes.

For the command line's output tests: whatever `toolgate scan` prints of what this server says
must reach the terminal inert. Standard library only; speaks the handshake era
(newline-delimited JSON-RPC): `initialize`, `tools/list` (one page), nothing else.
"""

import json
import sys

# OSC 52 (set the clipboard), clear screen, a C1 CSI, NEL, a bidi override, DEL, a zero-width
# space: the same text as HOSTILE in tests/cli_hostile_output.rs.
HOSTILE = "\x1b]52;c;aGk=\x07\x1b[2J\u009b2J\u0085\u202e\x7f\u200b"


def answer(msg_id, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id, "result": result}) + "\n")
    sys.stdout.flush()


def main():
    for line in sys.stdin:
        msg = json.loads(line)
        method, msg_id = msg.get("method"), msg.get("id")
        if msg_id is None:
            continue
        if method == "initialize":
            answer(msg_id, {
                "protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "srv" + HOSTILE, "version": "1"},
            })
        elif method == "tools/list":
            answer(msg_id, {"tools": [
                {"name": "delete" + HOSTILE, "description": "Deletes." + HOSTILE,
                 "inputSchema": {"type": "object"}},
                {"name": "read_notes", "description": "Reads notes." + HOSTILE,
                 "inputSchema": {"type": "object"}},
            ]})
        else:
            sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg_id,
                                         "error": {"code": -32601, "message": "no"}}) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
