//! The demo MCP server: a small "agent meeting service" speaking real newline-delimited
//! JSON-RPC (MCP, handshake era), so the demo's gateway has something real to sit in front of.
//!
//! It keeps a little state (agents, keys, meetings) so results read like a real service's.
//! `tools/list` answers in pages of [`PAGE_SIZE`] tools, which exercises the gateway's
//! filtering of every page for `hide`.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// Tools per `tools/list` page.
pub(crate) const PAGE_SIZE: usize = 4;

/// The protocol versions the demo server speaks (newest first).
const VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The catalogue: name, description, input schema properties (name, type, description),
/// required properties, annotations.
pub(crate) fn catalogue() -> Vec<Value> {
    let tool = |name: &str, desc: &str, props: Value, required: &[&str], hints: Value| {
        json!({
            "name": name,
            "description": desc,
            "inputSchema": {"type": "object", "properties": props, "required": required},
            "annotations": hints,
        })
    };
    let read = json!({"readOnlyHint": true, "openWorldHint": false});
    let write = json!({"readOnlyHint": false, "destructiveHint": false, "openWorldHint": false});
    let destructive =
        json!({"readOnlyHint": false, "destructiveHint": true, "openWorldHint": false});
    vec![
        tool(
            "register_agent",
            "Register a new agent identity with the meeting service.",
            json!({"name": {"type": "string"}, "owner": {"type": "string"}}),
            &["name"],
            write.clone(),
        ),
        tool(
            "create_api_key",
            "Create an API key for an agent. The key is shown once.",
            json!({"keyName": {"type": "string"}, "agent": {"type": "string"}}),
            &["keyName"],
            write.clone(),
        ),
        tool(
            "revoke_api_key",
            "Revoke an API key; whoever uses it loses access at once.",
            json!({"keyName": {"type": "string"}}),
            &["keyName"],
            destructive.clone(),
        ),
        tool(
            "list_meetings",
            "List the meetings booked for a day.",
            json!({"day": {"type": "string", "description": "YYYY-MM-DD"}}),
            &[],
            read,
        ),
        tool(
            "book_meeting",
            "Book a meeting room for a number of minutes.",
            json!({
                "title": {"type": "string"},
                "room": {"type": "string"},
                "duration_minutes": {"type": "integer"}
            }),
            &["title", "duration_minutes"],
            write.clone(),
        ),
        tool(
            "cancel_meeting",
            "Cancel a booked meeting.",
            json!({"meeting_id": {"type": "string"}}),
            &["meeting_id"],
            destructive.clone(),
        ),
        tool(
            "send_message",
            "Send an e-mail on behalf of the agent.",
            json!({"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}}),
            &["to", "subject"],
            json!({"readOnlyHint": false, "destructiveHint": false, "openWorldHint": true}),
        ),
        tool(
            "export_data",
            "Export all of an account's data as a download link.",
            json!({"account": {"type": "string"}, "format": {"type": "string", "enum": ["csv", "json"]}}),
            &["account"],
            json!({"readOnlyHint": true, "openWorldHint": true}),
        ),
        tool(
            "delete_account",
            "Delete an account and everything in it. Cannot be undone.",
            json!({"account": {"type": "string"}}),
            &["account"],
            destructive,
        ),
        tool(
            "transfer_credits",
            "Transfer meeting credits to another account.",
            json!({"to": {"type": "string"}, "amount": {"type": "integer"}}),
            &["to", "amount"],
            json!({"readOnlyHint": false, "destructiveHint": false, "openWorldHint": true}),
        ),
        tool(
            "debug_dump_env",
            "Print the service's environment (for its developers).",
            json!({}),
            &[],
            write,
        ),
    ]
}

/// The service's state, so answers are consistent within a run.
#[derive(Debug, Default)]
struct Service {
    agents: Vec<String>,
    keys: BTreeMap<String, String>,
    meetings: BTreeMap<String, String>,
    next: u64,
}

impl Service {
    fn call(&mut self, tool: &str, args: &Value) -> Result<String, String> {
        let arg = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        self.next += 1;
        let n = self.next;
        match tool {
            "register_agent" => {
                let name = arg("name");
                self.agents.push(name.clone());
                Ok(format!("Registered agent {name} (id ag_{n:04})."))
            }
            "create_api_key" => {
                let name = arg("keyName");
                let key = format!("mk_live_{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                self.keys.insert(name.clone(), key.clone());
                Ok(format!("Created key {name}: {key}"))
            }
            "revoke_api_key" => {
                let name = arg("keyName");
                match self.keys.remove(&name) {
                    Some(_) => Ok(format!("Revoked key {name}.")),
                    None => Err(format!("No key named {name}.")),
                }
            }
            "list_meetings" => {
                if self.meetings.is_empty() {
                    Ok("No meetings booked.".into())
                } else {
                    Ok(self
                        .meetings
                        .iter()
                        .map(|(id, t)| format!("{id}: {t}"))
                        .collect::<Vec<_>>()
                        .join("\n"))
                }
            }
            "book_meeting" => {
                let id = format!("mtg_{n:04}");
                let title = arg("title");
                self.meetings.insert(id.clone(), title.clone());
                Ok(format!("Booked {id}: {title}."))
            }
            "cancel_meeting" => {
                let id = arg("meeting_id");
                match self.meetings.remove(&id) {
                    Some(t) => Ok(format!("Cancelled {id} ({t}).")),
                    None => Err(format!("No meeting {id}.")),
                }
            }
            "send_message" => Ok(format!("Sent to {} (message id msg_{n:05}).", arg("to"))),
            "export_data" => Ok(format!(
                "Export of {} ready: https://exports.meetings.example/{n:08x}.{}",
                arg("account"),
                args.get("format").and_then(Value::as_str).unwrap_or("csv")
            )),
            "delete_account" => Ok(format!("Deleted account {}.", arg("account"))),
            "transfer_credits" => Ok(format!(
                "Transferred {} credits to {}.",
                args.get("amount").and_then(Value::as_i64).unwrap_or(0),
                arg("to")
            )),
            "debug_dump_env" => Ok("MEETINGS_DB_PASSWORD=hunter2".into()),
            other => Err(format!("Unknown tool: {other}")),
        }
    }
}

/// Serves one MCP connection until the reader ends.
pub(crate) async fn serve<R, W>(reader: R, mut writer: W) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let tools = catalogue();
    let mut service = Service::default();
    let mut lines = reader.lines();
    while let Some(line) = lines.next_line().await? {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            let err = json!({"jsonrpc": "2.0", "id": null,
                "error": {"code": -32700, "message": "parse error"}});
            write_line(&mut writer, &err).await?;
            continue;
        };
        let Some(id) = msg.get("id").cloned() else {
            continue; // a notification: nothing to answer
        };
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        let result = match method {
            "initialize" => {
                let asked = params.get("protocolVersion").and_then(Value::as_str);
                let version = asked
                    .filter(|v| VERSIONS.contains(v))
                    .unwrap_or(VERSIONS[0]);
                Ok(json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": {"name": "meetings-demo", "version": env!("CARGO_PKG_VERSION")},
                }))
            }
            "ping" => Ok(json!({})),
            "tools/list" => {
                let start = params
                    .get("cursor")
                    .and_then(Value::as_str)
                    .and_then(|c| c.parse::<usize>().ok())
                    .unwrap_or(0);
                let page: Vec<Value> = tools.iter().skip(start).take(PAGE_SIZE).cloned().collect();
                let mut result = json!({"tools": page});
                if start + PAGE_SIZE < tools.len() {
                    result["nextCursor"] = json!((start + PAGE_SIZE).to_string());
                }
                Ok(result)
            }
            "tools/call" => {
                let name = params.get("name").and_then(Value::as_str).unwrap_or("");
                let args = params.get("arguments").cloned().unwrap_or(json!({}));
                let (text, is_error) = match service.call(name, &args) {
                    Ok(text) => (text, false),
                    Err(text) => (text, true),
                };
                Ok(json!({"content": [{"type": "text", "text": text}], "isError": is_error}))
            }
            _ => Err(json!({"code": -32601, "message": format!("method not found: {method}")})),
        };
        let reply = match result {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
        };
        write_line(&mut writer, &reply).await?;
    }
    Ok(())
}

async fn write_line<W: AsyncWrite + Unpin>(writer: &mut W, value: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value)?;
    bytes.push(b'\n');
    writer.write_all(&bytes).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn exchange(requests: &[Value]) -> Vec<Value> {
        let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
        let mut out = Vec::new();
        serve(BufReader::new(input.as_bytes()), &mut out)
            .await
            .unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn lists_every_tool_across_pages() {
        let mut names = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let reply =
                exchange(&[json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":params})])
                    .await;
            let result = &reply[0]["result"];
            for t in result["tools"].as_array().unwrap() {
                names.push(t["name"].as_str().unwrap().to_owned());
            }
            match result.get("nextCursor") {
                Some(c) => cursor = Some(c.as_str().unwrap().to_owned()),
                None => break,
            }
        }
        assert_eq!(names.len(), catalogue().len());
        assert!(names.contains(&"delete_account".to_owned()));
    }

    #[tokio::test]
    async fn answers_calls_with_state_and_unknown_methods_with_an_error() {
        let replies = exchange(&[
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"book_meeting","arguments":{"title":"standup","duration_minutes":15}}}),
            json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"list_meetings","arguments":{}}}),
            json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
            json!({"jsonrpc":"2.0","id":3,"method":"resources/list"}),
        ])
        .await;
        assert_eq!(replies.len(), 3, "notifications get no answer");
        assert!(
            replies[1]["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("standup")
        );
        assert_eq!(replies[2]["error"]["code"], -32601);
    }
}
