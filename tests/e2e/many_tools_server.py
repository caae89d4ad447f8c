"""A stdio MCP server with 54 tools and no annotations, for `toolgate scan`'s tests.

Built on the real `mcp` package (low-level server). It stands for the kind of server a
person scans before writing a first policy by hand: a SaaS back office whose tools say what
they do only through their names, descriptions and schemas. `tools/list` is paginated, 20
tools a page, so a scanner must follow `nextCursor`.

Usage: many_tools_server.py [--modern-only]
       many_tools_server.py --http PORT [--require-header NAME:VALUE]

--modern-only serves only the stateless 2026-07-28 era over stdio: `initialize` is refused
and a client must use `server/discover`. --http serves Streamable HTTP at
http://127.0.0.1:PORT/mcp instead (printing "listening" on stderr once it is), answering 401
to requests without the --require-header header.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

PAGE = 20


def obj(**props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props}


S = {"type": "string"}
N = {"type": "number"}

# (name, description, input properties, output schema or None)
TOOLS: list[tuple[str, str, dict[str, Any], dict[str, Any] | None]] = [
    ("list_users", "Lists the users of the workspace.", obj(page=N), None),
    ("get_user", "Returns one user by id.", obj(id=S), None),
    ("search_users", "Finds users by name or email.", obj(query=S), None),
    ("create_user", "Adds a user to the workspace.", obj(name=S, email=S), None),
    ("update_user", "Changes a user's name or role.", obj(id=S, role=S), None),
    ("delete_user", "Deletes a user and everything they own.", obj(id=S), None),
    ("invite_member", "Invites someone by email.", obj(email=S), None),
    ("removeMember", "Takes a member out of a team.", obj(team=S, user=S), None),
    ("list_orders", "Lists orders, newest first.", obj(since=S), None),
    ("get_order", "Returns an order with its lines.", obj(id=S), None),
    ("book_shipment", "Books a courier for an order.", obj(order=S), None),
    ("cancel_order", "Cancels an order that has not shipped.", obj(id=S), None),
    ("refund_payment", "Refunds a payment to the card it came from.", obj(payment=S, amount=N), None),
    ("charge_card", "Charges a stored card.", obj(card=S, amount=N), None),
    ("list_invoices", "Lists invoices.", obj(), None),
    ("get_invoice", "Returns an invoice as PDF.", obj(id=S), None),
    ("create_invoice", "Creates a draft invoice.", obj(customer=S), None),
    ("send_invoice", "Emails an invoice to the customer.", obj(id=S), None),
    ("void_invoice", "Permanently voids an invoice; it cannot be reopened.", obj(id=S), None),
    ("create_api_key", "Creates an API key for a service account.", obj(keyName=S),
     obj(apiKey=S, created=S)),
    ("list_api_keys", "Lists API keys (names only).", obj(), None),
    ("revoke_api_key", "Revokes an API key at once.", obj(keyName=S), None),
    ("rotate_secret", "Issues a new signing secret.", obj(service=S), obj(secret=S)),
    ("connect_database", "Opens a connection to a database.", obj(host=S, password=S), None),
    ("query_database", "Runs a read-only SQL query.", obj(sql=S), None),
    ("drop_table", "Drops a table.", obj(table=S), None),
    ("truncate_logs", "Empties the log tables.", obj(), None),
    ("export_report", "Exports the monthly report as CSV.", obj(month=S), None),
    ("read_file", "Reads a file from the shared drive.", obj(path=S), None),
    ("write_file", "Writes a file to the shared drive.", obj(path=S, content=S), None),
    ("purge_cache", "Purges the CDN cache.", obj(), None),
    ("fetch_url", "Downloads a web page.", obj(url=S), None),
    ("send_email", "Sends an email.", obj(to=S, body=S), None),
    ("post_to_slack", "Posts a message to a Slack channel.", obj(channel=S, text=S), None),
    ("create_ticket", "Opens a support ticket.", obj(title=S), None),
    ("close_ticket", "Closes a support ticket.", obj(id=S), None),
    ("list_tickets", "Lists open tickets.", obj(), None),
    ("comment_on_ticket", "Adds a comment to a ticket.", obj(id=S, text=S), None),
    ("deploy_service", "Deploys a service version.", obj(service=S, version=S), None),
    ("restart_service", "Restarts a service.", obj(service=S), None),
    ("get_service_status", "Returns a service's health.", obj(service=S), None),
    ("scale_service", "Changes the replica count.", obj(service=S, replicas=N), None),
    ("terminate_instance", "Terminates a VM.", obj(id=S), None),
    ("run_shell_command", "Runs a command on the build host.", obj(command=S), None),
    ("set_feature_flag", "Turns a feature flag on or off.", obj(flag=S, on={"type": "boolean"}), None),
    ("list_feature_flags", "Lists feature flags.", obj(), None),
    ("backup_database", "Takes a snapshot of the database.", obj(), None),
    ("restore_backup", "Replaces the database with a snapshot.", obj(snapshot=S), None),
    ("wipe_device", "Erases a lost laptop remotely.", obj(device=S), None),
    ("login_as", "Starts a session as another user.", obj(user=S), obj(sessionToken=S)),
    ("calculate_tax", "Computes the tax for an amount.", obj(amount=N, country=S), None),
    ("translate_text", "Translates text into another language.", obj(text=S, to=S), None),
    ("frobnicate", "Does the nightly thing.", obj(), None),
    ("archive_project", "Archives a project (it can be restored).", obj(id=S), None),
]

assert len(TOOLS) == 54, len(TOOLS)


def tool(entry: tuple[str, str, dict[str, Any], dict[str, Any] | None]) -> types.Tool:
    name, description, input_schema, output_schema = entry
    return types.Tool(name=name, description=description, input_schema=input_schema, output_schema=output_schema)


async def list_tools(_ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    start = int(params.cursor) if params and params.cursor else 0
    end = start + PAGE
    page = [tool(t) for t in TOOLS[start:end]]
    return types.ListToolsResult(tools=page, next_cursor=str(end) if end < len(TOOLS) else None)


async def call_tool(_ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"{params.name}: done")])


server = Server("many-tools", on_list_tools=list_tools, on_call_tool=call_tool)


def serve_http(port: int, required: str | None) -> None:
    import uvicorn

    app = server.streamable_http_app(host="127.0.0.1")
    name, _, value = (required or "").partition(":")

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if required and scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            if headers.get(name.strip().lower()) != value.strip():
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"missing header"})
                return
        await app(scope, receive, send)

    class Announce(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            print("listening", file=sys.stderr, flush=True)

    Announce(uvicorn.Config(guarded, host="127.0.0.1", port=port, log_level="warning")).run()


async def main() -> None:
    modern_only = "--modern-only" in sys.argv[1:]
    async with stdio_server() as (read_stream, write_stream):
        if modern_only:
            # The stateless era's serving loop alone: `initialize` is answered with
            # UNSUPPORTED_PROTOCOL_VERSION, as a server that dropped the handshake would.
            from mcp.server.runner import _serve_modern_stream

            async with server.lifespan(server) as state:
                await _serve_modern_stream(
                    server, read_stream, write_stream, lifespan_state=state, raise_exceptions=False
                )
        else:
            await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--http" in args:
        port = int(args[args.index("--http") + 1])
        required = args[args.index("--require-header") + 1] if "--require-header" in args else None
        serve_http(port, required)
    else:
        anyio.run(main)
