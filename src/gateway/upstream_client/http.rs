//! A minimal Streamable HTTP client transport, presented as line streams so a
//! [`super::Session`] speaks to a URL exactly as it speaks to a stdio child.
//!
//! [`run`] reads one JSON-RPC message per line from the session and POSTs each to the URL
//! (`Accept: application/json, text/event-stream`, the configured headers, the server's
//! `Mcp-Session-Id` once it gave one, `MCP-Protocol-Version` once one is settled); what comes
//! back — a JSON body, or an event stream read until the answer arrives — is written back as
//! lines. A failed request (unreachable, an HTTP error without a JSON-RPC body) is answered
//! with a JSON-RPC error of code [`code::UPSTREAM_GONE`], which the session reports as a
//! transport failure rather than as the server's refusal. When the session closes its side,
//! the server's session is ended with DELETE.
//!
//! Requests go one at a time, which is all a session does. It has the same shape as the
//! HTTP gateway's upstream transport (`gateway::http::remote::run`: line streams in and out),
//! so `toolgate scan --url` can move onto that one when it lands, and this file goes.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::gateway::jsonrpc::{META_PROTOCOL_VERSION, code};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
/// How long ending the server's session (DELETE) may take.
const DELETE_WITHIN: Duration = Duration::from_secs(2);

/// A Streamable HTTP server: its URL and the headers sent with every request.
#[derive(Debug, Clone)]
pub struct HttpServer {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// A `--header "Name: value"` argument could not be read.
#[derive(Debug, thiserror::Error)]
#[error("bad header {0:?}: expected \"Name: value\"")]
pub struct BadHeader(pub String);

/// Parses `Name: value`.
pub fn parse_header(text: &str) -> Result<(String, String), BadHeader> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| BadHeader(text.to_string()))?;
    let name = name.trim();
    let valid = !name.is_empty()
        && reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
        && reqwest::header::HeaderValue::from_str(value.trim()).is_ok();
    if !valid {
        return Err(BadHeader(text.to_string()));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

/// Carries the session's messages to `server` until the session closes its side.
pub async fn run<R, W>(server: HttpServer, mut from_session: R, mut to_session: W)
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|_| reqwest::Client::new());
    let mut state = State::default();
    loop {
        let mut line = Vec::new();
        match from_session.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(_) => {}
        }
        let Ok(message) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        for answer in exchange(&client, &server, &mut state, &message).await {
            let mut bytes = answer.to_string().into_bytes();
            bytes.push(b'\n');
            if to_session.write_all(&bytes).await.is_err() || to_session.flush().await.is_err() {
                return;
            }
        }
    }
    if let Some(session) = &state.session {
        let delete = request(&client, reqwest::Method::DELETE, &server, &state)
            .header(SESSION_HEADER, session)
            .send();
        let _ = tokio::time::timeout(DELETE_WITHIN, delete).await;
    }
    let _ = to_session.shutdown().await;
}

#[derive(Debug, Default)]
struct State {
    session: Option<String>,
    version: Option<String>,
}

fn request(
    client: &reqwest::Client,
    method: reqwest::Method,
    server: &HttpServer,
    state: &State,
) -> reqwest::RequestBuilder {
    let mut builder = client.request(method, &server.url);
    for (name, value) in &server.headers {
        builder = builder.header(name, value);
    }
    if let Some(session) = &state.session {
        builder = builder.header(SESSION_HEADER, session);
    }
    if let Some(version) = &state.version {
        builder = builder.header(VERSION_HEADER, version);
    }
    builder
}

/// POSTs one message; returns the messages to hand back (for a request: its answer, after
/// whatever the server sent before it).
async fn exchange(
    client: &reqwest::Client,
    server: &HttpServer,
    state: &mut State,
    message: &Value,
) -> Vec<Value> {
    let id = message
        .get("id")
        .filter(|_| message.get("method").is_some());
    // A 2026-07-28 request names its own version; it goes in the header too.
    if let Some(version) = message
        .pointer("/params/_meta")
        .and_then(|m| m.get(META_PROTOCOL_VERSION))
        .and_then(Value::as_str)
    {
        state.version = Some(version.to_string());
    }
    let failed = |why: String| match id {
        Some(id) => vec![json!({"jsonrpc": "2.0", "id": id,
            "error": {"code": code::UPSTREAM_GONE, "message": why}})],
        None => Vec::new(),
    };
    let sent = request(client, reqwest::Method::POST, server, state)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            reqwest::header::ACCEPT,
            "application/json, text/event-stream",
        )
        .body(message.to_string())
        .send()
        .await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => return failed(format!("cannot reach {}: {e}", server.url)),
    };
    if let Some(session) = response
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        state.session = Some(session.to_string());
    }
    let status = response.status();
    let event_stream = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut answers = Vec::new();
    if event_stream {
        let mut events = EventLines::default();
        'stream: loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    return failed(format!("the event stream from {} broke: {e}", server.url));
                }
            };
            for data in events.feed(&chunk) {
                let Ok(answer) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                let done = id.is_some() && answer.get("id") == id && answer.get("method").is_none();
                answers.push(answer);
                if done {
                    break 'stream;
                }
            }
        }
    } else {
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => {
                return failed(format!(
                    "reading the answer from {} failed: {e}",
                    server.url
                ));
            }
        };
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(batch)) => answers.extend(batch),
            Ok(answer @ Value::Object(_)) => answers.push(answer),
            _ if status.is_success() => {}
            _ => {
                let text = String::from_utf8_lossy(&body);
                let text: String = text.chars().take(200).collect();
                return failed(format!("{} answered HTTP {status}: {text}", server.url));
            }
        }
    }
    if message.get("method").and_then(Value::as_str) == Some("initialize")
        && let Some(version) = answers
            .iter()
            .find_map(|a| a.pointer("/result/protocolVersion"))
            .and_then(Value::as_str)
    {
        state.version = Some(version.to_string());
    }
    let answered = answers.iter().any(|a| a.get("id") == id);
    if id.is_some() && !answered {
        answers.extend(failed(format!(
            "{} answered HTTP {status} without an answer to the request",
            server.url
        )));
    }
    answers
}

/// The `data` of server-sent events, as the bytes arrive (only what MCP uses: `data`
/// lines joined with newlines; comments and other fields skipped).
#[derive(Debug, Default)]
struct EventLines {
    line: Vec<u8>,
    data: String,
    has_data: bool,
}

/// An event larger than this is dropped rather than buffered without bound.
const MAX_EVENT: usize = super::MAX_MESSAGE;

impl EventLines {
    fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        for &b in chunk {
            if b != b'\n' {
                if self.line.len() <= MAX_EVENT {
                    self.line.push(b);
                }
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                if self.has_data {
                    done.push(std::mem::take(&mut self.data));
                    self.has_data = false;
                }
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            if let Some(value) = text.strip_prefix("data:") {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
                self.has_data = self.data.len() <= MAX_EVENT;
                if !self.has_data {
                    self.data.clear();
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_is_joined_and_split_at_blank_lines_across_chunks() {
        let mut e = EventLines::default();
        assert!(
            e.feed(b": comment\nevent: message\ndata: {\"a\"")
                .is_empty()
        );
        assert_eq!(
            e.feed(b":1}\r\n\r\ndata: x\ndata: y\n\n"),
            ["{\"a\":1}", "x\ny"]
        );
    }

    #[test]
    fn headers_are_read_as_name_colon_value() {
        assert_eq!(
            parse_header("Authorization: Bearer abc").expect("valid"),
            ("Authorization".into(), "Bearer abc".into())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": value").is_err());
        assert!(parse_header("Bad Name: v").is_err());
    }
}
