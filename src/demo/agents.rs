//! Simulated agents: MCP clients that do the handshake, list the tools, then call them at a
//! readable pace, each under its own grant. Their mix of calls is chosen so that every kind of
//! decision shows up within seconds under the demo policy: allowed calls, denials by rule and
//! by default, argument validation, rate limits, holds for approval and hidden tools.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// A small deterministic generator, so a demo run is repeatable for a given seed.
#[derive(Debug, Clone)]
pub(crate) struct Dice(u64);

impl Dice {
    pub(crate) fn new(seed: u64) -> Dice {
        Dice(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One call an agent makes: a tool and its arguments, and whether it waits for a person.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Intent {
    pub tool: &'static str,
    pub args: Value,
}

/// The next call of an agent, by weighted choice. `holds_open` lowers the chance of asking
/// for another approval while one is pending, as a real agent blocked on it would.
pub(crate) fn next_intent(dice: &mut Dice, grant: &str, n: u64, holds_open: usize) -> Intent {
    let day = format!("2026-11-{:02}", 20 + dice.below(9));
    let pick = dice.below(100);
    let intent = |tool, args| Intent { tool, args };
    match pick {
        0..=17 => intent("list_meetings", json!({ "day": day })),
        18..=29 => intent(
            "create_api_key",
            json!({ "keyName": format!("{grant}-key-{n}"), "agent": grant }),
        ),
        30..=39 => intent(
            "book_meeting",
            json!({ "title": "design review", "room": "blue", "duration_minutes": 30 + 15 * dice.below(4) }),
        ),
        40..=44 => intent(
            "book_meeting",
            json!({ "title": "offsite planning", "room": "atrium", "duration_minutes": 240 }),
        ),
        45..=48 => intent(
            "book_meeting",
            json!({ "title": "URGENT sync", "room": "red", "duration_minutes": 15 }),
        ),
        49..=58 => intent(
            "send_message",
            json!({ "to": "team@partner.example", "subject": "minutes", "body": "Notes attached.", "api_key": "mk_live_5e3c" }),
        ),
        59..=62 => intent(
            "send_message",
            json!({ "to": "ceo@rival.example", "subject": "hello", "body": "Our roadmap..." }),
        ),
        63..=68 => intent(
            "cancel_meeting",
            json!({ "meeting_id": format!("mtg_{:04}", dice.below(40)) }),
        ),
        69..=73 => intent(
            "register_agent",
            json!({ "name": format!("{grant}-helper-{n}"), "owner": grant }),
        ),
        74..=79 if holds_open == 0 => intent(
            "export_data",
            json!({ "account": "acme-corp", "format": "csv" }),
        ),
        80..=83 if holds_open == 0 => intent(
            "revoke_api_key",
            json!({ "keyName": format!("{grant}-key-{}", n.saturating_sub(3)) }),
        ),
        84..=88 => intent("delete_account", json!({ "account": "acme-corp" })),
        89..=93 => intent(
            "transfer_credits",
            json!({ "to": "acct-991", "amount": 500 }),
        ),
        94..=97 => intent("debug_dump_env", json!({})),
        _ => intent("list_meetings", json!({ "day": day })),
    }
}

/// What an agent saw, for the demo's own line output and for tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub grant: String,
    pub tool: String,
    pub is_error: bool,
    pub text: String,
}

/// Runs one simulated agent over an MCP connection until `calls` calls were answered (or
/// forever with `None`), one call every `pace`.
pub(crate) async fn run<R, W>(
    grant: String,
    reader: R,
    mut writer: W,
    pace: Duration,
    calls: Option<u64>,
    seed: u64,
    answers: Option<mpsc::UnboundedSender<Answer>>,
) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let mut lines = reader.lines();
    let send = |value: Value| {
        let mut bytes = value.to_string().into_bytes();
        bytes.push(b'\n');
        bytes
    };

    // Handshake and discovery, as a real client does.
    writer
        .write_all(&send(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": format!("demo-agent-{grant}"), "version": "1"}
            }}),
        ))
        .await?;
    writer.flush().await?;
    wait_for(&mut lines, 0).await?;
    writer
        .write_all(&send(
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        ))
        .await?;
    let mut cursor: Option<String> = None;
    loop {
        let params = cursor.as_ref().map_or(json!({}), |c| json!({"cursor": c}));
        writer
            .write_all(&send(
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": params}),
            ))
            .await?;
        writer.flush().await?;
        let reply = wait_for(&mut lines, 1).await?;
        match reply.pointer("/result/nextCursor").and_then(Value::as_str) {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }

    // Calls go out at the pace; answers come back whenever (held calls take a while).
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u64, Value)>();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(id) = msg.get("id").and_then(Value::as_u64)
                && done_tx.send((id, msg)).is_err()
            {
                break;
            }
        }
    });

    let mut dice = Dice::new(seed);
    let mut pending: std::collections::HashMap<u64, &'static str> = Default::default();
    let mut holds: HashSet<u64> = HashSet::new();
    let mut answered = 0u64;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(pace);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if calls.is_some_and(|max| answered >= max) {
            return Ok(());
        }
        tokio::select! {
            _ = tick.tick(), if calls.is_none_or(|max| sent < max) => {
                let id = 100 + sent;
                let intent = next_intent(&mut dice, &grant, sent, holds.len());
                if matches!(intent.tool, "export_data" | "revoke_api_key") {
                    holds.insert(id);
                }
                pending.insert(id, intent.tool);
                writer.write_all(&send(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                    "params": {"name": intent.tool, "arguments": intent.args}}))).await?;
                writer.flush().await?;
                sent += 1;
            }
            answer = done_rx.recv() => {
                let Some((id, msg)) = answer else {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "gateway closed the connection"));
                };
                holds.remove(&id);
                let Some(tool) = pending.remove(&id) else { continue };
                answered += 1;
                if let Some(out) = &answers {
                    let is_error = msg.get("error").is_some()
                        || msg.pointer("/result/isError").and_then(Value::as_bool).unwrap_or(false);
                    let text = msg
                        .pointer("/result/content/0/text")
                        .or_else(|| msg.pointer("/error/message"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    let _ = out.send(Answer { grant: grant.clone(), tool: tool.to_owned(), is_error, text });
                }
            }
        }
    }
}

/// Reads lines until the answer to request `id` arrives.
async fn wait_for<R: AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    id: u64,
) -> std::io::Result<Value> {
    while let Some(line) = lines.next_line().await? {
        if let Ok(msg) = serde_json::from_str::<Value>(&line)
            && msg.get("id").and_then(Value::as_u64) == Some(id)
        {
            return Ok(msg);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the gateway closed the connection during the handshake",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_calls_every_tool_the_demo_server_offers() {
        let mut dice = Dice::new(7);
        let mut seen = HashSet::new();
        for n in 0..2_000 {
            seen.insert(next_intent(&mut dice, "ci-bot", n, 0).tool);
        }
        let catalogue: HashSet<String> = crate::demo::server::catalogue()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        for tool in &seen {
            assert!(
                catalogue.contains(*tool),
                "{tool} is not offered by the demo server"
            );
        }
        assert_eq!(
            seen.len(),
            catalogue.len(),
            "every offered tool gets called"
        );
    }

    #[test]
    fn no_new_approval_is_asked_while_one_is_open() {
        let mut dice = Dice::new(11);
        for n in 0..2_000 {
            let tool = next_intent(&mut dice, "ops-bot", n, 1).tool;
            assert!(!matches!(tool, "export_data" | "revoke_api_key"));
        }
    }
}
