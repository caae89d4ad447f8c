//! A Streamable HTTP upstream as a pair of line streams, so the core proxies to it exactly
//! as it proxies to a stdio server.
//!
//! [`run`] reads the messages the core sends upstream, one JSON line each, and POSTs each to
//! the server's URL; what comes back — a JSON body, or an event stream whose messages
//! (progress, server-to-client requests, then the answer) are passed on as they arrive — is
//! written back as lines. It is the client half of the transport: it keeps the upstream's
//! `Mcp-Session-Id` (the agent never sees it; the gateway gives the agent its own), sends
//! `MCP-Protocol-Version` (the version `initialize` settled, or a 2026-07-28 request's own),
//! sets `Mcp-Method`/`Mcp-Name` on 2026-07-28 requests from the body the policy judged (never
//! from the agent's headers), opens the GET stream once the session is initialized, and
//! DELETEs the session when the core closes its side. The headers configured in SERVERS.json
//! are sent with every request; the agent's `Authorization` never is.
//!
//! An upstream that fails a request (HTTP error, unreachable, stream cut before the answer,
//! an answer larger than `--max-message`) gets that request answered with a JSON-RPC error,
//! so the core's bookkeeping (pending calls, units given back) works as it does for a
//! server process that dies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncWrite};
use tokio::sync::mpsc;

use super::pipe::Queued;
use super::servers::UrlServer;
use super::sse::SseParser;
use super::upstream_pool::{Answer, CONNECT_WITHIN, Upstream};
use crate::gateway::budget::{ByteBudget, Charge};
use crate::gateway::core::Known;
use crate::gateway::jsonrpc::{
    self, IdKey, META_PROTOCOL_VERSION, Parsed, Raw, Read, Shape, Spelled, code,
};
use crate::gateway::line_writer::write_lines;
use crate::gateway::lines::{Line, LineReader};
use crate::sync::lock;
/// Times the GET stream is reopened after it fails, before giving up.
const GET_RETRIES: u32 = 2;
/// How long closing the upstream session (DELETE) may take.
const DELETE_WITHIN: Duration = Duration::from_secs(2);

const SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");
const VERSION_HEADER: HeaderName = HeaderName::from_static("mcp-protocol-version");
const ACCEPT_BOTH: HeaderValue = HeaderValue::from_static("application/json, text/event-stream");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The HTTP client for upstreams reached through a proxy (and for `toolgate scan`'s): a
/// connect timeout, no redirects (an upstream's answer comes from the URL configured, or
/// not at all). Plain `http://` upstreams are reached without it
/// ([`super::upstream_pool`]), with the same timeout and no redirects either.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_WITHIN)
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The state of one upstream connection.
struct Remote {
    server: UrlServer,
    upstream: Upstream,
    /// `server.headers`, converted once.
    headers: HeaderMap,
    /// The upstream's session id, from its `initialize` answer.
    session: Mutex<Option<HeaderValue>>,
    /// The protocol version `initialize` settled.
    version: Mutex<Option<HeaderValue>>,
    /// The headers of a POST without routing headers of its own (almost every request),
    /// built once for the session's id and version as they are now, cloned per request;
    /// emptied whenever either changes.
    plain_post: Mutex<Option<HeaderMap>>,
    /// Lines for the core.
    to_core: mpsc::Sender<Queued>,
    /// Bytes queued for the core (2 × `--max-message` + 64 KiB): an answer waits for room.
    to_core_budget: ByteBudget,
    /// The largest answer (or event) accepted from the upstream (`--max-message`).
    max: usize,
}

/// Lines from the core, each with the charge it took from its queue's budget.
pub(crate) type FromCore = mpsc::UnboundedReceiver<(Vec<u8>, Charge, Known)>;

/// Proxies between a pair of line streams (for `toolgate scan`, whose MCP session meets
/// this transport over in-memory pipes) and a Streamable HTTP server until the session
/// closes its side (then the upstream session is deleted and `to_core` closed).
pub(crate) async fn run<R, W>(
    server: UrlServer,
    client: reqwest::Client,
    max: usize,
    from_core: R,
    to_core: W,
) where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (lines_tx, lines_rx) = mpsc::unbounded_channel();
    let from_budget = ByteBudget::for_messages(max);
    // The core only writes what it accepted (at most `max`) or built itself.
    let mut lines = LineReader::new(from_core, max.saturating_add(64 * 1024));
    let read = async move {
        while let Some(line) = lines.next("core").await {
            let Line::Whole(line) = line else {
                tracing::warn!("dropped a message from the core larger than --max-message");
                continue;
            };
            let Some(charge) = from_budget.charge(line.len()).await else {
                break;
            };
            if lines_tx.send((line, charge, Known::Nothing)).is_err() {
                break;
            }
        }
    };
    let (tx, rx) = mpsc::channel(1024);
    let to_core_budget = ByteBudget::for_messages(max);
    let writer = tokio::spawn(write_lines(to_core, rx, to_core_budget.clone(), "core"));
    tokio::join!(
        read,
        run_queued(server, client, max, lines_rx, tx, to_core_budget)
    );
    let _ = writer.await;
}

/// Proxies between the core's upstream side and a Streamable HTTP server until the core
/// closes its side (then the upstream session is deleted and `to_core` closed). Lines come
/// from the core's queue and go back on `to_core` (each charged to `to_core_budget`):
/// `serve`'s links hand both queues to the core as its upstream streams
/// ([`super::pipe`]), with no pipe or task between, and poll this future in the core's own
/// task beside its readers ([`crate::gateway::core::run_outputs`]). Requests in flight are
/// driven here, in whichever task polls this, not one task each.
pub(crate) async fn run_queued(
    server: UrlServer,
    client: reqwest::Client,
    max: usize,
    mut from_core: FromCore,
    to_core: mpsc::Sender<Queued>,
    to_core_budget: ByteBudget,
) {
    let mut headers = HeaderMap::with_capacity(server.headers.len() + 4);
    for (k, v) in &server.headers {
        // SERVERS.json's headers were checked when it was read.
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    let remote = Arc::new(Remote {
        upstream: Upstream::new(&server.url, client),
        server,
        headers,
        session: Mutex::new(None),
        version: Mutex::new(None),
        plain_post: Mutex::new(None),
        to_core,
        to_core_budget,
        max,
    });
    let mut in_flight = FuturesUnordered::new();
    let mut get_stream = None;
    loop {
        let (line, known) = tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
            next = from_core.recv() => match next {
                // The line's bytes go back to the queue's budget as it leaves the queue, not
                // when it is posted: a request waiting on a slow server must not hold back
                // the lines behind it (a cancellation); requests in flight are bounded by the
                // core's cap on requests in flight (`MAX_IN_FLIGHT`), as with a task each.
                Some((line, _charge, known)) => (line, known),
                None => break,
            },
        };
        let request = match known {
            // A request the core read, whose routing headers are plainly none: not read
            // again.
            Known::Request(id) if !needs_routing(&line) => Some((id, Routing::default())),
            _ => None,
        };
        let request = match request {
            Some(request) => Ok(request),
            None => {
                let Parsed::Message(env) = jsonrpc::parse(&line) else {
                    // The core only forwards single messages it classified.
                    tracing::warn!("dropped a line from the core that is not one message");
                    continue;
                };
                let method = env.method.as_deref();
                let initialized = method == Some("notifications/initialized");
                let routing = Routing::of(method, env.params);
                match env.shape() {
                    Ok(Shape::Request { id, .. }) => Ok((id, routing)),
                    _ => Err((routing, initialized)),
                }
            }
        };
        match request {
            Ok((id, routing)) => {
                let remote = remote.clone();
                in_flight.push(async move { remote.post_request(line, id, routing).await });
            }
            Err((routing, initialized)) => {
                // The next line waits for this one (in order), the requests in flight not.
                let posted = remote.post_notification(line, Some(routing));
                tokio::pin!(posted);
                loop {
                    tokio::select! {
                        biased;
                        () = &mut posted => break,
                        Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                    }
                }
                if initialized && get_stream.is_none() && lock(&remote.session).is_some() {
                    get_stream = Some(tokio::spawn(remote.clone().listen()));
                }
            }
        }
    }
    drop(in_flight);
    if let Some(task) = get_stream {
        task.abort();
    }
    remote.close_session().await;
}

/// The routing headers of a 2026-07-28 request, taken from its body.
#[derive(Debug, Default)]
struct Routing {
    /// The request's own protocol version (`_meta`), when it carries one.
    version: Option<String>,
    /// The method, kept only with a version (only then is it sent as a header).
    method: Option<String>,
    name: Option<String>,
    initialize: bool,
}

impl Routing {
    fn of(method: Option<&str>, params: Option<Raw<'_>>) -> Routing {
        #[derive(Deserialize)]
        struct P {
            #[serde(default, rename = "_meta")]
            meta: Option<serde_json::Map<String, serde_json::Value>>,
            #[serde(default)]
            name: Option<serde_json::Value>,
            #[serde(default)]
            uri: Option<serde_json::Value>,
        }
        // Only a request that carries its own version (in `_meta`) gets routing headers: one
        // whose text cannot hold that key (not even escaped) is not read a second time.
        let p = params
            .filter(|p| may_hold_meta(p.get()))
            .and_then(|p| serde_json::from_str::<P>(p.get()).ok());
        let version = p
            .as_ref()
            .and_then(|p| p.meta.as_ref())
            .and_then(|m| m.get(META_PROTOCOL_VERSION))
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let name = match method {
            Some("tools/call" | "prompts/get") => p.as_ref().and_then(|p| p.name.clone()),
            Some("resources/read") => p.as_ref().and_then(|p| p.uri.clone()),
            _ => None,
        }
        .and_then(|v| v.as_str().map(str::to_owned));
        let method_header = version.as_ref().and(method).map(str::to_owned);
        Routing {
            version,
            method: method_header,
            name,
            initialize: method == Some("initialize"),
        }
    }
}

/// Whether a JSON text may have a `_meta` key: it spells it, or has an escape that could.
fn may_hold_meta(text: &str) -> bool {
    jsonrpc::may_spell(text.as_bytes(), &[Spelled::Meta])
}

/// Whether [`Routing::of`] a request `line` may be other than the default: only an
/// `initialize` or params with `_meta` give routing, and a line that spells neither (not
/// even escaped) has neither.
fn needs_routing(line: &[u8]) -> bool {
    jsonrpc::may_spell(line, &[Spelled::Meta, Spelled::Initialize])
}

/// A header value as 2026-07-28 encodes it: plain when it is visible ASCII without edge
/// spaces, else `=?base64?…?=`.
fn header_value(text: &str) -> String {
    let plain = text.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !text.starts_with(' ')
        && !text.ends_with(' ')
        && !text.starts_with("=?base64?");
    if plain {
        text.to_owned()
    } else {
        use base64_encode as b64;
        format!("=?base64?{}?=", b64(text.as_bytes()))
    }
}

/// Standard base64 with padding.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Remote {
    /// The headers of a request to the upstream: SERVERS.json's, the upstream session's,
    /// the protocol version and, for a 2026-07-28 request, its routing headers.
    fn headers(&self, routing: Option<&Routing>) -> HeaderMap {
        let mut headers = self.headers.clone();
        headers.insert(header::ACCEPT, ACCEPT_BOTH);
        if let Some(session) = lock(&self.session).as_ref() {
            headers.insert(SESSION_HEADER, session.clone());
        }
        let own_version = routing
            .and_then(|r| r.version.as_deref())
            .and_then(|v| HeaderValue::from_str(v).ok());
        let modern = own_version.is_some();
        let version = own_version.or_else(|| {
            if routing.is_some_and(|r| r.initialize) {
                None
            } else {
                lock(&self.version).clone()
            }
        });
        if let Some(version) = version {
            headers.insert(VERSION_HEADER, version);
        }
        if modern && let Some(routing) = routing {
            if let Some(method) = routing.method.as_deref().map(header_value)
                && let Ok(value) = HeaderValue::from_str(&method)
            {
                headers.insert(HeaderName::from_static("mcp-method"), value);
            }
            if let Some(name) = routing.name.as_deref().map(header_value)
                && let Ok(value) = HeaderValue::from_str(&name)
            {
                headers.insert(HeaderName::from_static("mcp-name"), value);
            }
        }
        headers
    }

    /// POSTs a JSON-RPC message.
    async fn post(&self, line: Vec<u8>, routing: Option<&Routing>) -> Result<Answer, String> {
        let plain = routing.is_none_or(|r| r.version.is_none() && !r.initialize);
        let headers = if plain {
            lock(&self.plain_post)
                .get_or_insert_with(|| self.post_headers(None))
                .clone()
        } else {
            self.post_headers(routing)
        };
        self.upstream
            .send(Method::POST, headers, Bytes::from(line))
            .await
    }

    fn post_headers(&self, routing: Option<&Routing>) -> HeaderMap {
        let mut headers = self.headers(routing);
        headers.insert(header::CONTENT_TYPE, JSON);
        headers
    }

    async fn deliver(&self, message: &[u8]) {
        self.deliver_line(one_line(message), None).await;
    }

    /// Queues a line (one message, no line breaks) for the core once it fits the budget,
    /// with what was read of it (that line's own [`Read`], or `None`).
    async fn deliver_line(&self, line: Vec<u8>, read: Option<Read>) {
        let Some(charge) = self.to_core_budget.charge(line.len()).await else {
            return;
        };
        let _ = self.to_core.send((line, charge, read.map(Box::new))).await;
    }

    /// POSTs a notification, or a response to a server-to-client request; the answer
    /// carries nothing for the core.
    async fn post_notification(&self, line: Vec<u8>, routing: Option<Routing>) {
        match self.post(line, routing.as_ref()).await {
            Ok(answer) => {
                if !answer.status.is_success() {
                    tracing::debug!("upstream answered a notification with {}", answer.status);
                }
                answer.discard();
            }
            Err(e) => tracing::warn!("upstream {}: {e}", self.server.url),
        }
    }

    /// POSTs a request and passes its answer (and whatever the server sends on the way) to
    /// the core; any failure becomes a JSON-RPC error answer.
    async fn post_request(&self, line: Vec<u8>, id: IdKey, routing: Routing) {
        if let Err(why) = self.try_request(line, &id, &routing).await {
            tracing::warn!("upstream {}: {why}", self.server.url);
            self.deliver(&jsonrpc::error_response(
                Some(&id),
                code::UPSTREAM_GONE,
                &why,
            ))
            .await;
        }
    }

    async fn try_request(
        &self,
        line: Vec<u8>,
        id: &IdKey,
        routing: &Routing,
    ) -> Result<(), String> {
        let mut resp = self.post(line, Some(routing)).await?;
        let status = resp.status;
        let content_type = resp
            .headers
            .get(header::CONTENT_TYPE)
            .map_or(&b""[..], HeaderValue::as_bytes);
        // Media types are case-insensitive.
        let is = |media: &str| {
            content_type
                .get(..media.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(media.as_bytes()))
        };
        let (event_stream, json) = (is("text/event-stream"), is("application/json"));
        if routing.initialize
            && status.is_success()
            && let Some(session) = resp.headers.get(SESSION_HEADER)
        {
            *lock(&self.session) = Some(session.clone());
            *lock(&self.plain_post) = None;
        }
        if event_stream && status.is_success() {
            // Boxed: the parser's state would otherwise enlarge every request's future.
            return Box::pin(self.relay_stream(&mut resp, id, routing)).await;
        }
        let body = read_capped(&mut resp, self.max).await?;
        // `None`: no JSON-RPC answer; `Some(Err(read))`: the body itself is the answer (and
        // what was read of it); `Some(Ok(line))`: this error line is.
        let answer = if json
            && let Parsed::Message(env) = jsonrpc::parse(&body)
            && (env.result.is_some() || env.error.is_some())
        {
            if status.is_success() {
                self.answered(&env, routing);
                Some(Err(env.read(&body)))
            } else {
                // An error sent with an HTTP error status may carry a null id.
                Some(match env.error {
                    Some(error) => Ok(format!(
                        r#"{{"jsonrpc":"2.0","id":{},"error":{}}}"#,
                        id.json(),
                        error.get()
                    )
                    .into_bytes()),
                    None => Err(env.read(&body)),
                })
            }
        } else {
            None
        };
        match answer {
            Some(Ok(line)) => {
                self.deliver_line(into_one_line(line), None).await;
                return Ok(());
            }
            Some(Err(read)) => {
                // The body as it came, made one line in place (no copy); the core takes it
                // with what was read of it here.
                let start = body.len() - body.trim_ascii_start().len();
                let line = into_one_line(body);
                let read = read.and_then(|read| read.within(start, line.len()));
                self.deliver_line(line, read).await;
                return Ok(());
            }
            None => {}
        }
        if status == StatusCode::NOT_FOUND && lock(&self.session).is_some() {
            return Err("the MCP server ended the session".into());
        }
        Err(format!(
            "the MCP server answered HTTP {status} without a JSON-RPC answer"
        ))
    }

    /// Notes what an answer to `initialize` settled.
    fn answered(&self, env: &jsonrpc::Envelope<'_>, routing: &Routing) {
        if !routing.initialize {
            return;
        }
        #[derive(Deserialize)]
        struct Init {
            #[serde(rename = "protocolVersion")]
            protocol_version: Option<String>,
        }
        if let Some(version) = env
            .result
            .and_then(|r| serde_json::from_str::<Init>(r.get()).ok())
            .and_then(|i| i.protocol_version)
        {
            *lock(&self.version) = HeaderValue::from_str(&version).ok();
            *lock(&self.plain_post) = None;
        }
    }

    /// Passes on the messages of a request's event stream as they come, until its answer.
    async fn relay_stream(
        &self,
        resp: &mut Answer,
        id: &IdKey,
        routing: &Routing,
    ) -> Result<(), String> {
        let mut parser = SseParser::new(self.max);
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => return Err(format!("the MCP server's event stream failed: {e}")),
            };
            let events = parser.feed(&chunk).map_err(|e| e.to_string())?;
            for event in events.into_iter().filter(|e| e.is_message()) {
                let bytes = event.data.as_bytes();
                let is_answer = matches!(
                    jsonrpc::parse(bytes),
                    Parsed::Message(ref env)
                        if matches!(env.shape(), Ok(Shape::Response { id: ref answered }) if answered == id)
                );
                if is_answer {
                    if let Parsed::Message(env) = jsonrpc::parse(bytes) {
                        self.answered(&env, routing);
                    }
                    self.deliver(bytes).await;
                    return Ok(());
                }
                self.deliver(bytes).await;
            }
        }
        Err("the MCP server's event stream ended without an answer".into())
    }

    /// The GET stream: messages the server sends outside any request.
    async fn listen(self: Arc<Self>) {
        let mut failures = 0;
        while failures <= GET_RETRIES {
            let mut headers = self.headers(None);
            headers.insert(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
            let mut resp = match self.upstream.send(Method::GET, headers, Bytes::new()).await {
                Ok(resp) => resp,
                Err(e) => {
                    tracing::debug!("GET stream: {e}");
                    failures += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if resp.status == StatusCode::METHOD_NOT_ALLOWED {
                return;
            }
            if !resp.status.is_success() {
                tracing::debug!("GET stream refused: {}", resp.status);
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let mut parser = SseParser::new(self.max);
            while let Ok(Some(chunk)) = resp.chunk().await {
                match parser.feed(&chunk) {
                    Ok(events) => {
                        failures = 0;
                        for event in events.into_iter().filter(|e| e.is_message()) {
                            self.deliver(event.data.as_bytes()).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("GET stream: {e}");
                        break;
                    }
                }
            }
            failures += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn close_session(&self) {
        if lock(&self.session).is_none() {
            return;
        }
        let deleted = self
            .upstream
            .send(Method::DELETE, self.headers(None), Bytes::new());
        let _ = tokio::time::timeout(DELETE_WITHIN, deleted).await;
    }
}

/// A message as one line: upstreams may pretty-print, the core reads lines.
fn one_line(message: &[u8]) -> Vec<u8> {
    // Valid JSON or not, CR and LF become spaces: between tokens that changes nothing, and
    // anything else the core refuses as malformed, whole, on its one line.
    // As `jsonrpc::one_line`, with room for the newline the core's queue adds
    // ([`super::pipe::LineSource`]) so that adding it moves nothing.
    let text = message.trim_ascii();
    let mut line = Vec::with_capacity(text.len() + 1);
    line.extend(
        text.iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    line
}

/// [`one_line`] in place: the same bytes, without a copy (and with room for the newline the
/// core's queue adds, when the buffer had it).
fn into_one_line(mut message: Vec<u8>) -> Vec<u8> {
    let end = message.trim_ascii_end().len();
    message.truncate(end);
    let start = message.len() - message.trim_ascii_start().len();
    if start > 0 {
        message.drain(..start);
    }
    // Most answers have no line break inside: found at SIMD speed, and none is replaced.
    if let Some(first) = memchr::memchr2(b'\n', b'\r', &message) {
        for b in &mut message[first..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
    }
    message
}

/// Reads a response body, refusing one larger than `max` (before buffering it whole). The
/// buffer is sized by the first piece, with room for the newline the core's queue adds
/// ([`super::pipe::LineSource`]), so a body that comes whole (almost every one) is copied
/// once and never moved again.
async fn read_capped(resp: &mut Answer, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(format!(
                        "the MCP server's answer is larger than the gateway accepts ({max} bytes; --max-message)"
                    ));
                }
                if body.capacity() == 0 {
                    body.reserve_exact(chunk.len() + 1);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(format!("reading the MCP server's answer: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn header_values_outside_visible_ascii_are_base64_encoded() {
        assert_eq!(header_value("get_time"), "get_time");
        assert_eq!(header_value("héllo"), "=?base64?aMOpbGxv?=");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"abc"), "YWJj");
    }

    #[test]
    fn pretty_printed_answers_become_one_line() {
        assert_eq!(
            one_line(b"{\n  \"a\": 1\r\n}\n"),
            b"{   \"a\": 1  }".to_vec()
        );
        assert_eq!(one_line(b"{\"a\":1}"), b"{\"a\":1}".to_vec());
    }

    #[test]
    fn a_body_becomes_one_line_in_place_exactly_as_a_copy_would() {
        let cases: [&[u8]; 7] = [
            b"{\n  \"a\": 1\r\n}\n",
            b"{\"a\":1}",
            b"  \r\n{\"a\":\n1} \t\n",
            b"",
            b" \n\r\t ",
            b"\n{}",
            b"{\"s\":\"x\\ny\"}\r",
        ];
        for case in cases {
            let mut buffer = Vec::with_capacity(case.len() + 1);
            buffer.extend_from_slice(case);
            let line = into_one_line(buffer);
            assert_eq!(line, one_line(case), "{:?}", String::from_utf8_lossy(case));
            assert!(!line.contains(&b'\n') && !line.contains(&b'\r'));
        }
    }

    #[test]
    fn routing_headers_come_from_the_body() {
        let params = RawValue::from_string(
            r#"{"name":"t","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}"#
                .into(),
        )
        .unwrap();
        let r = Routing::of(Some("tools/call"), Some(Raw::of(&params)));
        assert_eq!(r.version.as_deref(), Some("2026-07-28"));
        assert_eq!(r.name.as_deref(), Some("t"));
    }

    #[test]
    fn a_meta_key_spelled_with_an_escape_still_gives_routing_headers() {
        let params = RawValue::from_string(
            r#"{"name":"t","\u005fmeta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}"#
                .into(),
        )
        .unwrap();
        let r = Routing::of(Some("tools/call"), Some(Raw::of(&params)));
        assert_eq!(r.version.as_deref(), Some("2026-07-28"));
        let plain = RawValue::from_string(r#"{"name":"t","arguments":{}}"#.into()).unwrap();
        let r = Routing::of(Some("tools/call"), Some(Raw::of(&plain)));
        assert_eq!((r.version, r.name), (None, None));
    }

    #[test]
    fn a_request_is_read_again_for_routing_whenever_its_body_could_give_any() {
        let lines: [&[u8]; 8] = [
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":1}}}"#,
            br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
            br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"t","\u005fmeta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
            br#"{"jsonrpc":"2.0","id":4,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
            br#"{"jsonrpc":"2.0","id":5,"method":"\u0069nitialize","params":{}}"#,
            br#"{"jsonrpc":"2.0","id":6,"method":"resources/read","params":{"uri":"x","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#,
            br#"{"jsonrpc":"2.0","id":8,"method":"prompts/get","params":{"name":"p"}}"#,
        ];
        let mut plain_ones = Vec::new();
        for line in lines {
            let Parsed::Message(env) = jsonrpc::parse(line) else {
                panic!("not a message: {}", String::from_utf8_lossy(line))
            };
            let r = Routing::of(env.method.as_deref(), env.params);
            let plain = r.version.is_none() && r.method.is_none() && r.name.is_none();
            let plain = plain && !r.initialize;
            plain_ones.push(plain);
            assert!(
                plain || needs_routing(line),
                "routing skipped for {}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(
            plain_ones,
            [true, false, false, false, false, false, true, true],
            "which of the requests have routing"
        );
        assert!(
            !needs_routing(lines[0]) && !needs_routing(lines[6]) && !needs_routing(lines[7]),
            "a plain request is not read again"
        );
    }

    /// An upstream on loopback that answers each POST with the next of `answers` (status,
    /// body), as JSON; what was read of each answer reaches the core with it.
    async fn answered_by(answers: Vec<(u16, &'static str)>) -> Vec<(Vec<u8>, Option<Read>)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let count = answers.len();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            for (status, body) in answers {
                // One request: its head, then as many bytes as it says.
                let head_end = loop {
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    let n = socket.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the gateway closed its connection");
                    buf.extend_from_slice(&chunk[..n]);
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |n| n.trim().parse().unwrap());
                while buf.len() < head_end + length {
                    let mut chunk = [0u8; 4096];
                    let n = socket.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                buf.drain(..head_end + length);
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let (lines_tx, lines_rx) = mpsc::unbounded_channel();
        let (to_core, mut core_rx) = mpsc::channel(8);
        let budget = ByteBudget::for_messages(64 * 1024);
        let server = UrlServer {
            url,
            headers: Vec::new(),
        };
        let remote = tokio::spawn(run_queued(
            server,
            http_client(),
            64 * 1024,
            lines_rx,
            to_core,
            budget.clone(),
        ));
        let mut got = Vec::new();
        for id in 0..count {
            let line = format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"t"}}}}"#
            );
            let charge = budget.try_charge(line.len()).unwrap();
            lines_tx
                .send((line.into_bytes(), charge, Known::Nothing))
                .unwrap();
            let (line, _charge, read) =
                tokio::time::timeout(Duration::from_secs(10), core_rx.recv())
                    .await
                    .expect("an answer in time")
                    .expect("an answer");
            got.push((line, read.map(|read| *read)));
        }
        remote.abort();
        got
    }

    #[tokio::test]
    async fn what_was_read_of_an_answer_goes_to_the_core_with_the_line_made_of_it() {
        let got = answered_by(vec![
            (200, r#"{"jsonrpc":"2.0","id":0,"result":{"content":[{"type":"text","text":"a"}]}}"#),
            // Pretty-printed: the line is trimmed and its line breaks made spaces, and what
            // was read moves with it.
            (200, "\r\n  {\r\n \"jsonrpc\": \"2.0\",\n \"id\": 1,\n \"result\": {\"isError\": true}\n}\n"),
            // An error under an HTTP error status: the gateway writes the line itself.
            (500, r#"{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"down"}}"#),
        ])
        .await;
        assert_eq!(got.len(), 3);
        for (line, read) in &got[..2] {
            let Parsed::Message(env) = jsonrpc::parse(line) else {
                panic!("a message");
            };
            let read = read.expect("read with the answer");
            assert_eq!(env.read(line), Some(read));
            assert!(read.envelope(line).is_some());
        }
        assert!(!got[1].0.contains(&b'\n') && got[1].0.starts_with(b"{"));
        assert!(got[2].1.is_none(), "a line the gateway built goes without");
        assert!(String::from_utf8_lossy(&got[2].0).contains(r#""id":2"#));
    }
}
