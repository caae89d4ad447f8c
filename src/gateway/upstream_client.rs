//! A small MCP client session over an upstream's line streams, for commands that talk to a
//! server themselves instead of proxying an agent (`toolgate scan`).
//!
//! The session speaks newline-delimited JSON-RPC over any pair of async byte streams, the
//! same shape the core proxies: a stdio child's stdout/stdin ([`super::upstream`]), or a
//! Streamable HTTP upstream presented as line streams by [`super::http::remote::run`]. It settles the
//! protocol era the way the gateway's peers do: the `initialize` handshake offering
//! [`HANDSHAKE_VERSION`] (the server's answer is accepted as it is), and, when a server
//! refuses the handshake, the stateless 2026-07-28 era through `server/discover`, after
//! which every request carries its version in `_meta`. Everything waits against one
//! deadline, so a silent server ends in [`UpstreamError::Timeout`] naming the step it was on.
//!
//! It is deliberately small: requests one at a time, server notifications ignored, server
//! requests answered (`ping`) or refused (`method not found`): a scanner needs nothing more.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::jsonrpc::{META_PROTOCOL_VERSION, code};
use super::lines::{Line, LineReader};

/// The handshake-era version offered in `initialize`.
pub(crate) const HANDSHAKE_VERSION: &str = "2025-11-25";
/// The stateless era's version, proposed in `server/discover` and stamped on each request.
pub(crate) const STATELESS_VERSION: &str = "2026-07-28";
/// The `_meta` keys a 2026-07-28 request carries besides the version.
const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// Largest message accepted from a server (a tool list with big schemas fits many times).
pub(crate) const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Pages of `tools/list` followed before the server is judged to be looping.
pub(crate) const MAX_PAGES: usize = 10_000;

/// Which protocol era the session settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Era {
    /// `initialize` + `notifications/initialized` (2024-11-05 … 2025-11-25).
    Handshake,
    /// `server/discover`, then a `_meta` envelope on every request (2026-07-28).
    Stateless,
}

/// Why talking to the server failed. Every message says what the session was doing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("cannot talk to the MCP server (during `{method}`): {error}")]
    Io {
        method: String,
        error: std::io::Error,
    },
    #[error(
        "the MCP server closed the connection before answering `{method}`; is the command an MCP server speaking stdio?"
    )]
    Closed { method: String },
    #[error(
        "the MCP server did not answer `{method}` within {}s; is it an MCP server? (raise --timeout for a slow one)",
        .after.as_secs_f64()
    )]
    Timeout { method: String, after: Duration },
    /// The transport could not carry the request (an HTTP upstream unreachable or failing).
    #[error("no answer to `{method}`: {message}")]
    Transport { method: String, message: String },
    #[error("the MCP server refused `{method}`: {message} (code {code})")]
    Rpc {
        method: String,
        code: i64,
        message: String,
    },
    #[error("the MCP server's answer to `{method}` is not valid: {detail}")]
    Malformed { method: String, detail: String },
    #[error(
        "the MCP server accepts neither the initialize handshake ({handshake}) nor server/discover ({discover})"
    )]
    NoCommonEra { handshake: String, discover: String },
}

/// A connected client session. Requests go one at a time.
#[derive(Debug)]
pub(crate) struct Session<R, W> {
    reader: LineReader<R>,
    writer: W,
    next_id: u64,
    era: Era,
    protocol_version: String,
    server_info: Option<Value>,
    deadline: Instant,
    budget: Duration,
    client_info: Value,
}

impl<R, W> Session<R, W>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Opens a session: the handshake, or `server/discover` for a server that refuses it.
    /// Every step of this session, later requests included, must finish within `budget`.
    pub(crate) async fn connect(
        reader: R,
        writer: W,
        client_name: &str,
        budget: Duration,
    ) -> Result<Session<R, W>, UpstreamError> {
        let mut session = Session {
            reader: LineReader::new(reader, MAX_MESSAGE),
            writer,
            next_id: 0,
            era: Era::Handshake,
            protocol_version: HANDSHAKE_VERSION.to_string(),
            server_info: None,
            deadline: Instant::now() + budget,
            budget,
            client_info: json!({"name": client_name, "version": env!("CARGO_PKG_VERSION")}),
        };
        let init = session
            .request_raw(
                "initialize",
                json!({
                    "protocolVersion": HANDSHAKE_VERSION,
                    "capabilities": {},
                    "clientInfo": session.client_info.clone(),
                }),
            )
            .await;
        match init {
            Ok(result) => {
                let version = result
                    .get("protocolVersion")
                    .and_then(Value::as_str)
                    .ok_or_else(|| UpstreamError::Malformed {
                        method: "initialize".into(),
                        detail: "no protocolVersion".into(),
                    })?;
                session.protocol_version = version.to_string();
                session.server_info = result.get("serverInfo").cloned();
                session
                    .send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                    .await
                    .map_err(|error| UpstreamError::Io {
                        method: "notifications/initialized".into(),
                        error,
                    })?;
                Ok(session)
            }
            Err(UpstreamError::Rpc { message, code, .. }) => {
                let handshake = format!("{message} (code {code})");
                session.discover(handshake).await?;
                Ok(session)
            }
            Err(other) => Err(other),
        }
    }

    /// The stateless era: `server/discover` at [`STATELESS_VERSION`].
    async fn discover(&mut self, handshake: String) -> Result<(), UpstreamError> {
        self.era = Era::Stateless;
        self.protocol_version = STATELESS_VERSION.to_string();
        let result = match self.request("server/discover", json!({})).await {
            Ok(result) => result,
            Err(UpstreamError::Rpc { message, code, .. }) => {
                return Err(UpstreamError::NoCommonEra {
                    handshake,
                    discover: format!("{message} (code {code})"),
                });
            }
            Err(other) => return Err(other),
        };
        let supported = result
            .get("supportedVersions")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect::<Vec<_>>())
            .unwrap_or_default();
        if !supported.is_empty() && !supported.contains(&STATELESS_VERSION) {
            return Err(UpstreamError::NoCommonEra {
                handshake,
                discover: format!(
                    "it supports {}, toolgate speaks {STATELESS_VERSION}",
                    supported.join(", ")
                ),
            });
        }
        self.server_info = result.get("serverInfo").cloned();
        Ok(())
    }

    #[cfg(test)]
    fn era(&self) -> Era {
        self.era
    }

    /// The protocol version in use: what the server answered to `initialize`, or
    /// [`STATELESS_VERSION`].
    pub(crate) fn protocol_version(&self) -> &str {
        &self.protocol_version
    }

    /// The server's `serverInfo` (`name`, `version`), when it sent one.
    pub(crate) fn server_info(&self) -> Option<&Value> {
        self.server_info.as_ref()
    }

    /// Every tool the server offers, in its order, following `nextCursor` to the last page.
    pub(crate) async fn list_tools(&mut self) -> Result<Vec<Value>, UpstreamError> {
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        let mut seen_cursors = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(c) => json!({ "cursor": c }),
                None => json!({}),
            };
            let mut result = self.request("tools/list", params).await?;
            let malformed = |detail: &str| UpstreamError::Malformed {
                method: "tools/list".into(),
                detail: detail.into(),
            };
            match result.get_mut("tools").map(Value::take) {
                Some(Value::Array(page)) => tools.extend(page),
                _ => return Err(malformed("no `tools` array")),
            }
            cursor = match result.get("nextCursor") {
                None | Some(Value::Null) => return Ok(tools),
                Some(Value::String(next)) => Some(next.clone()),
                Some(_) => return Err(malformed("`nextCursor` is not a string")),
            };
            if let Some(next) = &cursor
                && !seen_cursors.insert(next.clone())
            {
                return Err(malformed("`nextCursor` repeats an earlier cursor"));
            }
        }
        Err(UpstreamError::Malformed {
            method: "tools/list".into(),
            detail: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// Sends a request (stamped with the era's `_meta` in the stateless era) and waits for
    /// its answer.
    pub(crate) async fn request(
        &mut self,
        method: &str,
        mut params: Value,
    ) -> Result<Value, UpstreamError> {
        if self.era == Era::Stateless
            && let Value::Object(map) = &mut params
        {
            let meta = map
                .entry("_meta")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(meta) = meta {
                meta.insert(META_PROTOCOL_VERSION.into(), json!(STATELESS_VERSION));
                meta.insert(META_CLIENT_INFO.into(), self.client_info.clone());
                meta.insert(META_CLIENT_CAPABILITIES.into(), json!({}));
            }
        }
        self.request_raw(method, params).await
    }

    async fn request_raw(&mut self, method: &str, params: Value) -> Result<Value, UpstreamError> {
        self.next_id += 1;
        let id = self.next_id;
        let io = |error: std::io::Error| match error.kind() {
            // The server exited (or closed its input) before it could be asked.
            std::io::ErrorKind::BrokenPipe => UpstreamError::Closed {
                method: method.to_string(),
            },
            _ => UpstreamError::Io {
                method: method.to_string(),
                error,
            },
        };
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await
            .map_err(io)?;
        loop {
            let line = match tokio::time::timeout_at(self.deadline, self.read_line(method)).await {
                Ok(line) => line?,
                Err(_) => {
                    return Err(UpstreamError::Timeout {
                        method: method.to_string(),
                        after: self.budget,
                    });
                }
            };
            let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(&line) else {
                // Noise on a server's stdout (a stray log line) is not an answer; skip it.
                continue;
            };
            match (message.get("method"), message.get("id")) {
                (Some(Value::String(asked)), Some(their_id)) => {
                    self.answer_server_request(asked, their_id)
                        .await
                        .map_err(io)?;
                }
                (Some(_), None) => {} // a notification (log, progress, list changed)
                (None, Some(answer_id)) if answer_id.as_u64() == Some(id) => {
                    if let Some(error) = message.get("error") {
                        let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
                        let text = error
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("no message")
                            .to_string();
                        let method = method.to_string();
                        return Err(if code == code::UPSTREAM_GONE {
                            UpstreamError::Transport {
                                method,
                                message: text,
                            }
                        } else {
                            UpstreamError::Rpc {
                                method,
                                code,
                                message: text,
                            }
                        });
                    }
                    return message.get("result").cloned().ok_or_else(|| {
                        UpstreamError::Malformed {
                            method: method.to_string(),
                            detail: "neither result nor error".into(),
                        }
                    });
                }
                _ => {} // an answer to something else: not ours to judge
            }
        }
    }

    /// `ping` is answered; everything else a server asks of the client is refused.
    async fn answer_server_request(&mut self, method: &str, id: &Value) -> std::io::Result<()> {
        let answer = if method == "ping" {
            json!({"jsonrpc": "2.0", "id": id, "result": {}})
        } else {
            json!({"jsonrpc": "2.0", "id": id, "error": {
                "code": METHOD_NOT_FOUND,
                "message": format!("{method} is not offered by this client"),
            }})
        };
        self.send(&answer).await
    }

    /// The next line from the server, never kept beyond [`MAX_MESSAGE`] bytes.
    async fn read_line(&mut self, method: &str) -> Result<Vec<u8>, UpstreamError> {
        let line = self
            .reader
            .try_next()
            .await
            .map_err(|error| UpstreamError::Io {
                method: method.to_string(),
                error,
            })?;
        match line {
            Some(Line::Whole(line)) => Ok(line),
            Some(Line::TooLong { len, .. }) => Err(UpstreamError::Malformed {
                method: method.to_string(),
                detail: format!(
                    "a message of {len} bytes, larger than {} MiB",
                    MAX_MESSAGE >> 20
                ),
            }),
            None => Err(UpstreamError::Closed {
                method: method.to_string(),
            }),
        }
    }

    async fn send(&mut self, message: &Value) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec(message)?;
        bytes.push(b'\n');
        self.writer.write_all(&bytes).await?;
        self.writer.flush().await
    }

    /// Ends the session by closing the server's input (a stdio server exits on that).
    pub(crate) async fn close(mut self) {
        let _ = self.writer.shutdown().await;
    }
}

/// JSON-RPC's code for a method the receiver does not offer.
const METHOD_NOT_FOUND: i64 = -32601;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader, duplex};

    /// A scripted server on the far end of in-memory pipes: answers each request line with
    /// what `answer` returns (`None`: stay silent).
    fn scripted(
        answer: impl Fn(&Value) -> Option<Vec<Value>> + Send + 'static,
    ) -> (
        BufReader<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<Vec<Value>>,
    ) {
        let (client_out, server_in) = duplex(1 << 20);
        let (mut server_out, client_in) = duplex(1 << 20);
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut lines = BufReader::new(server_in).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let msg: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                for out in answer(&msg).unwrap_or_default() {
                    let mut bytes = serde_json::to_vec(&out).unwrap_or_default();
                    bytes.push(b'\n');
                    if server_out.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                seen.push(msg);
            }
            seen
        });
        (BufReader::new(client_in), client_out, task)
    }

    fn reply(msg: &Value, result: Value) -> Vec<Value> {
        vec![json!({"jsonrpc": "2.0", "id": msg["id"], "result": result})]
    }

    #[tokio::test]
    async fn handshake_then_every_page_of_tools_in_order() {
        let (r, w, server) = scripted(|msg| match msg["method"].as_str()? {
            "initialize" => Some(reply(
                msg,
                json!({"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "s"}}),
            )),
            "tools/list" => {
                let page = match msg["params"]["cursor"].as_str() {
                    None => json!({"tools": [{"name": "a"}, {"name": "b"}], "nextCursor": "p2"}),
                    Some("p2") => json!({"tools": [{"name": "c"}], "nextCursor": "p3"}),
                    Some(_) => json!({"tools": [{"name": "d"}]}),
                };
                // A log notification and a ping from the server come first.
                let mut out = vec![
                    json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {}}),
                    json!({"jsonrpc": "2.0", "id": "srv-1", "method": "ping"}),
                ];
                out.extend(reply(msg, page));
                Some(out)
            }
            _ => None,
        });
        let mut s = Session::connect(r, w, "test", Duration::from_secs(30))
            .await
            .expect("connects");
        assert_eq!(s.era(), Era::Handshake);
        assert_eq!(s.protocol_version(), "2025-06-18");
        let names: Vec<_> = s
            .list_tools()
            .await
            .expect("lists")
            .iter()
            .map(|t| t["name"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        s.close().await;
        let seen = server.await.expect("server task");
        assert_eq!(seen[1]["method"], "notifications/initialized");
        assert!(
            seen.iter()
                .any(|m| m["id"] == "srv-1" && m["result"] == json!({})),
            "the server's ping was answered"
        );
    }

    #[tokio::test]
    async fn a_server_refusing_the_handshake_is_spoken_to_in_the_stateless_era() {
        let (r, w, server) = scripted(|msg| match msg["method"].as_str()? {
            "initialize" => Some(vec![json!({"jsonrpc": "2.0", "id": msg["id"],
                "error": {"code": -32022, "message": "modern only"}})]),
            "server/discover" => Some(reply(
                msg,
                json!({"supportedVersions": ["2026-07-28"], "capabilities": {}}),
            )),
            "tools/list" => Some(reply(msg, json!({"tools": [{"name": "x"}]}))),
            _ => None,
        });
        let mut s = Session::connect(r, w, "test", Duration::from_secs(30))
            .await
            .expect("connects");
        assert_eq!(s.era(), Era::Stateless);
        assert_eq!(s.list_tools().await.expect("lists").len(), 1);
        s.close().await;
        let seen = server.await.expect("server task");
        let list = seen
            .iter()
            .find(|m| m["method"] == "tools/list")
            .expect("tools/list sent");
        assert_eq!(list["params"]["_meta"][META_PROTOCOL_VERSION], "2026-07-28");
    }

    #[tokio::test]
    async fn a_repeating_cursor_is_an_error_not_a_loop() {
        let (r, w, _server) = scripted(|msg| match msg["method"].as_str()? {
            "initialize" => Some(reply(msg, json!({"protocolVersion": "2025-11-25"}))),
            "tools/list" => Some(reply(msg, json!({"tools": [], "nextCursor": "same"}))),
            _ => None,
        });
        let mut s = Session::connect(r, w, "test", Duration::from_secs(30))
            .await
            .expect("connects");
        let err = s.list_tools().await.expect_err("loops");
        assert!(err.to_string().contains("repeats"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out_naming_the_step() {
        let (r, w, _server) = scripted(|_| None);
        let err = Session::connect(r, w, "test", Duration::from_millis(200))
            .await
            .expect_err("silent");
        assert!(matches!(err, UpstreamError::Timeout { .. }), "{err:?}");
        assert!(
            err.to_string().contains("`initialize` within 0.2s"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_line_longer_than_the_limit_is_an_error_naming_its_size_not_a_buffer() {
        let (client_out, _server_in) = duplex(1 << 16);
        let (mut server_out, client_in) = duplex(1 << 16);
        let server = tokio::spawn(async move {
            // No newline at all: the reader must give up at the limit, not wait for one.
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..(MAX_MESSAGE >> 20) + 1 {
                if server_out.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let err = Session::connect(
            BufReader::new(client_in),
            client_out,
            "test",
            Duration::from_secs(30),
        )
        .await
        .expect_err("an endless line is not an answer");
        assert!(matches!(err, UpstreamError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
        server.abort();
    }
}
