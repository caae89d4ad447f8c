//! `toolgate serve`'s transport: Streamable HTTP at `/mcp/<name>` for every server in
//! SERVERS.json, bearer tokens naming grants, the core in between.
//!
//! Each request is checked in this order, before anything reaches a server: a foreign
//! `Origin` → 403; no valid `Authorization: Bearer` token → 401 (the grant is then known);
//! an unknown server name → 404; a body over `--max-message` → 413; a body that is not one
//! JSON-RPC message beyond dispute ([`body`]) → 400; routing headers that disagree with the
//! body (`Mcp-Method`, `Mcp-Name`) → 400. The `Authorization` header is
//! never passed on: a stdio server never sees HTTP headers, and [`remote`] builds the
//! upstream's requests from SERVERS.json alone.
//!
//! Sessions (both eras):
//! - An `initialize` POST without `Mcp-Session-Id` opens a session: a [`link::CoreLink`] (one run
//!   of the core) with its own upstream — a freshly spawned server process for a command (a
//!   stdio server speaks to exactly one client, so one process per MCP session), or an
//!   upstream session for a URL. The gateway answers with its own `Mcp-Session-Id`; the
//!   upstream's, if any, stays inside [`remote`]. A session belongs to the grant that opened
//!   it: another grant's token on it gets 404, as an unknown session does.
//! - Later POSTs carry that id; GET opens the session's event stream; DELETE ends the
//!   session (holds are denied, the server stopped or its session deleted). A session idle
//!   for the configured time with nothing in flight is ended the same way.
//! - A request without a session that is not `initialize` is a 2026-07-28 stateless request:
//!   it goes through one shared link per (server, grant), its id renamed so that many
//!   clients never collide.
//! - Sessions and stateless links alike are capped per grant and in all ([`sessions`]); a
//!   place is reserved before a server is started. A grant at its cap gets 429 (its own
//!   problem: other grants still open sessions), a full gateway 503, and operators a
//!   `session_refused` event.
//!
//! Connections ([`listener`]): headers and bodies have deadlines, open connections a cap
//! (the unauthenticated shed first), and the open-file limit is shared out so that the
//! gateway's own files always find a descriptor.
//!
//! A request's answer is `application/json` when it is the first thing the core sends for it;
//! when something comes first (progress while a call is held, a server-to-client request), the
//! answer becomes an event stream passing each message on as it comes. A client that closes
//! the stream cancels the request: a held call is dropped, a forwarded one is cancelled
//! upstream.

pub(crate) mod body;
mod control_route;
mod inbox;
pub(crate) mod link;
pub(crate) mod listener;
mod pipe;
pub(crate) mod remote;
pub(crate) mod servers;
pub(crate) mod sessions;
pub(crate) mod sse;
mod upstream_conn;
mod upstream_pool;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use rand::Rng;
use tokio::sync::watch;

use self::link::{CoreLink, Delivery};
use self::listener::{ConnectionOptions, Peer};
use self::servers::ServerSpec;
use self::sessions::{Refused, SessionCaps, Sessions};
use super::Gateway;
use super::grants::GrantsHandle;
use super::jsonrpc::{self, IdKey, Raw, Shape};
use crate::sync::lock;
use crate::wire::{EventKind, SessionCap, SessionRefused};
/// Default idle time after which a session is ended.
pub(crate) const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Most sessions (and stateless links) open at once; more get 503.
pub(crate) const DEFAULT_MAX_SESSIONS: usize = 512;
/// Most sessions (and stateless links) one grant may have open; more get 429.
pub(crate) const DEFAULT_MAX_SESSIONS_PER_GRANT: usize = 16;
/// 2026-07-28's error code for routing headers that disagree with the body.
const HEADER_MISMATCH: i64 = -32020;
/// JSON-RPC "invalid request".
const INVALID_REQUEST: i64 = jsonrpc::code::INVALID_REQUEST;

// Header names as constants: a `&str` name is parsed and checked on every lookup.
const SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");
const METHOD_HEADER: HeaderName = HeaderName::from_static("mcp-method");
const NAME_HEADER: HeaderName = HeaderName::from_static("mcp-name");
/// How long open connections may take to finish once the gateway stops.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// How `serve` is set up.
#[derive(Debug)]
pub(crate) struct ServeOptions {
    pub servers: BTreeMap<String, ServerSpec>,
    pub grants: GrantsHandle,
    /// Origins a browser may call from (`scheme://host[:port]`); requests without `Origin`
    /// (agents, not browsers) are not affected.
    pub allowed_origins: Vec<String>,
    /// See [`crate::gateway::upstream::ServerProcess::stop`].
    pub grace: Duration,
    pub session_idle: Duration,
    pub max_sessions: usize,
    pub max_sessions_per_grant: usize,
    pub connections: ConnectionOptions,
    /// The largest message in either direction, request bodies included (`--max-message`).
    pub max_message: usize,
    /// `/metrics`, in the Prometheus text format.
    pub metrics: Option<crate::telemetry::MetricsEndpoint>,
    /// Server name → the identity its tool pins belong to (`--server-id NAME=ID`); a server
    /// not named here pins under its own name.
    pub server_ids: HashMap<String, String>,
    /// `--tls-cert`: every connection speaks TLS.
    pub tls: Option<crate::tls::ServerTls>,
    /// The control websocket at `/control` (`--operators`, without `--control-listen`).
    pub control: Option<crate::control::server::ControlPlane>,
}

/// The HTTP gateway: servers, grants, sessions, and the shared decision machinery.
pub(crate) struct HttpGateway {
    /// Policy, counters, hub, audit and clock shared by every grant and server; its own
    /// grant and server names are not used.
    base: Arc<Gateway>,
    options: ServeOptions,
    client: reqwest::Client,
    /// MCP sessions and stateless (2026-07-28) links, and their caps.
    links: Sessions,
    /// Held while a stateless link is looked up and started, so that concurrent requests
    /// start one link per (server, grant), not several.
    stateless_start: Mutex<()>,
    /// A gateway per (grant, server), so events and audit records name both.
    callers: Mutex<HashMap<(String, String), Arc<Gateway>>>,
}

impl std::fmt::Debug for HttpGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGateway")
            .field("servers", &self.options.servers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl HttpGateway {
    pub(crate) fn new(base: Arc<Gateway>, options: ServeOptions) -> Arc<HttpGateway> {
        let links = Sessions::new(SessionCaps {
            per_grant: options.max_sessions_per_grant,
            total: options.max_sessions,
        });
        Arc::new(HttpGateway {
            base,
            options,
            client: remote::http_client(),
            links,
            stateless_start: Mutex::new(()),
            callers: Mutex::new(HashMap::new()),
        })
    }

    /// The router: `/mcp/{name}` for every method.
    pub(crate) fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/mcp/{name}", axum::routing::any(handle))
            .route("/metrics", axum::routing::get(metrics))
            .route("/control", axum::routing::get(control_route::control))
            .fallback(|| async {
                plain(
                    StatusCode::NOT_FOUND,
                    "no such endpoint; MCP servers are at /mcp/<name>",
                )
            })
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` becomes `true`; then ends every session (held
    /// calls are denied, servers stopped) and returns.
    pub(crate) async fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let reaper = tokio::spawn(self.clone().reap());
        let gw = self.clone();
        let mut stopping = shutdown.clone();
        // Open streams end with their sessions; a client that keeps a connection anyway
        // does not keep the gateway from stopping (the listener drains for a while only).
        let closer = tokio::spawn(async move {
            let _ = stopping.wait_for(|s| *s).await;
            gw.close_all();
        });
        let result = listener::serve(
            listener,
            self.clone(),
            self.router(),
            self.options.connections,
            self.options.tls.clone(),
            shutdown,
            SHUTDOWN_DRAIN,
        )
        .await;
        reaper.abort();
        closer.abort();
        self.close_all();
        result
    }

    /// Ends every session and stateless link.
    pub(crate) fn close_all(&self) {
        for link in self.links.drain() {
            link.close();
        }
    }

    /// Ends idle sessions and forgets ended ones, periodically.
    async fn reap(self: Arc<Self>) {
        let every = (self.options.session_idle / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let idle = self.options.session_idle;
            let stale = |link: &CoreLink| link.ended() || (!link.busy() && link.idle_for() >= idle);
            for link in self.links.remove_if(stale) {
                link.close();
            }
        }
    }

    fn caller(&self, grant: &str, server: &str) -> Arc<Gateway> {
        let key = (grant.to_owned(), server.to_owned());
        lock(&self.callers)
            .entry(key)
            .or_insert_with(|| {
                let b = &self.base;
                Arc::new(Gateway {
                    policy: b.policy.clone(),
                    store: b.store.clone(),
                    hub: b.hub.clone(),
                    grant: grant.into(),
                    server: server.into(),
                    audit: b.audit.clone(),
                    clock: b.clock.clone(),
                    hold_progress_interval: b.hold_progress_interval,
                    traces: b.traces.clone(),
                    pins: b.pins.clone(),
                    // Pins belong to the server's name in SERVERS.json, unless
                    // `--server-id NAME=ID` names another identity for it.
                    server_id: Some(
                        self.options
                            .server_ids
                            .get(server)
                            .cloned()
                            .unwrap_or_else(|| server.to_owned()),
                    ),
                    shadow_policy: b.shadow_policy.clone(),
                    learn: b.learn.clone(),
                    counters_publisher: Default::default(),
                })
            })
            .clone()
    }

    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.options
            .allowed_origins
            .iter()
            .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(&origin))
    }

    /// The grant of the request's bearer token; `peer` (the connection) remembers the last
    /// one it checked.
    fn authenticate(&self, headers: &HeaderMap, peer: Option<&Peer>) -> Option<Arc<str>> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = token.trim();
        let grants = self.options.grants.load_full();
        if let Some(grant) = peer.and_then(|p| p.known_grant(token, &grants)) {
            return Some(grant);
        }
        let grant: Arc<str> = grants.authenticate(token)?.into();
        if let Some(peer) = peer {
            peer.remember_grant(token, grants.clone(), grant.clone());
        }
        Some(grant)
    }

    fn session(&self, id: &str, server: &str, grant: &str) -> Option<Arc<CoreLink>> {
        let link = self.links.session(id)?;
        (link.server == server && link.grant == grant && !link.ended()).then_some(link)
    }

    /// A place for a new link of `grant`; a refusal is logged and published (throttled).
    fn reserve(&self, server: &str, grant: &str) -> Result<sessions::Reservation<'_>, NoLink> {
        self.links.reserve(grant).map_err(|refused| {
            if let Some(count) = self.links.note_refusal(grant, refused.cap, Instant::now()) {
                tracing::warn!(
                    "refused {count} MCP session(s) of grant {grant} (latest for {server}): {}",
                    refused.cap.explain(refused.max as u64)
                );
                self.base
                    .hub
                    .publish(EventKind::SessionRefused(SessionRefused {
                        grant: grant.to_owned(),
                        server: server.to_owned(),
                        cap: refused.cap,
                        max: refused.max as u64,
                        refused: count,
                    }));
            }
            NoLink::Refused(refused)
        })
    }

    fn open_session(&self, server: &str, grant: &str) -> Result<(String, Arc<CoreLink>), NoLink> {
        let place = self.reserve(server, grant)?;
        let spec = &self.options.servers[server];
        let id = random_id();
        let label = format!("{server}-{}", &id[..12]);
        let link = CoreLink::start(
            self.caller(grant, server),
            spec,
            &self.client,
            label,
            false,
            self.options.grace,
            self.options.max_message,
        )
        .map_err(|e| {
            tracing::error!("{e}");
            NoLink::CannotStart
        })?;
        place.open_session(id.clone(), link.clone());
        Ok((id, link))
    }

    fn stateless_link(&self, server: &str, grant: &str) -> Result<Arc<CoreLink>, NoLink> {
        if let Some(link) = self.links.stateless(server, grant) {
            return Ok(link);
        }
        let _starting = lock(&self.stateless_start);
        if let Some(link) = self.links.stateless(server, grant) {
            return Ok(link);
        }
        let place = self.reserve(server, grant)?;
        let spec = &self.options.servers[server];
        let label = format!("{server}-stateless-{}", &random_id()[..8]);
        let link = CoreLink::start(
            self.caller(grant, server),
            spec,
            &self.client,
            label,
            true,
            self.options.grace,
            self.options.max_message,
        )
        .map_err(|e| {
            tracing::error!("{e}");
            NoLink::CannotStart
        })?;
        place.open_stateless(server, link.clone());
        Ok(link)
    }
}

/// Why no link could serve a request.
#[derive(Debug, Clone, Copy)]
enum NoLink {
    Refused(Refused),
    CannotStart,
}

impl NoLink {
    fn response(self) -> Response {
        match self {
            NoLink::Refused(Refused {
                cap: SessionCap::Grant,
                max,
            }) => plain(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "this grant has {max} open MCP sessions, as many as one grant may \
                     (the gateway's --max-sessions-per-grant); end one (DELETE with its \
                     Mcp-Session-Id), let idle ones end (--session-idle), or ask the \
                     operator to raise the cap"
                ),
            ),
            NoLink::Refused(Refused {
                cap: SessionCap::Gateway,
                max,
            }) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "the gateway has {max} open MCP sessions, as many as it may \
                     (--max-sessions); try again later or ask the operator to raise the cap"
                ),
            ),
            NoLink::CannotStart => plain(
                StatusCode::BAD_GATEWAY,
                "the MCP server could not be started",
            ),
        }
    }
}

/// A random 128-bit session id, hex.
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

/// A JSON answer; its one header a static value (a `&str` header would be checked and
/// copied for every answer).
fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    const JSON: HeaderValue = HeaderValue::from_static("application/json");
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, JSON);
    response
}

fn rpc_error(status: StatusCode, id: Option<&IdKey>, code: i64, message: &str) -> Response {
    json_response(status, jsonrpc::error_response(id, code, message))
}

/// `/mcp/{name}` as axum routes it (a name with percent-escapes, which axum decodes).
async fn handle(
    State(gw): State<Arc<HttpGateway>>,
    Path(name): Path<String>,
    peer: Option<Extension<Arc<Peer>>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = peer.map(|Extension(peer)| peer);
    mcp(&gw, &name, peer, &method, &headers, body).await
}

/// The server name of an MCP endpoint's path (`/mcp/{name}`), when it can be read without
/// decoding: one segment, not empty, no percent-escape. Other paths go through axum's
/// router, which answers them as before (decoded, or 404).
pub(crate) fn plain_mcp_name(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/mcp/")?;
    (!name.is_empty() && !name.contains(['/', '%'])).then_some(name)
}

impl HttpGateway {
    /// A request to `/mcp/{name}` (see [`plain_mcp_name`]), answered without axum's router
    /// and extractors: the same checks and handler as [`handle`], on the request's own
    /// headers rather than a copy of them.
    pub(crate) async fn mcp_request<B: RequestBody>(
        self: &Arc<Self>,
        name: &str,
        peer: Arc<Peer>,
        parts: &axum::http::request::Parts,
        body: B,
    ) -> Response {
        mcp(self, name, Some(peer), &parts.method, &parts.headers, body).await
    }
}

/// Every MCP request, in the order the module's doc gives: Origin, bearer token, server,
/// then the method's own handler.
async fn mcp<B: RequestBody>(
    gw: &Arc<HttpGateway>,
    name: &str,
    peer: Option<Arc<Peer>>,
    method: &Method,
    headers: &HeaderMap,
    body: B,
) -> Response {
    if !gw.origin_allowed(headers) {
        return plain(
            StatusCode::FORBIDDEN,
            "requests from this Origin are not allowed",
        );
    }
    let Some(grant) = gw.authenticate(headers, peer.as_deref()) else {
        let mut resp = plain(
            StatusCode::UNAUTHORIZED,
            "a valid `Authorization: Bearer <token>` is required (toolgate grants add NAME)",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    };
    if let Some(peer) = &peer {
        peer.authenticated();
    }
    if !gw.options.servers.contains_key(name) {
        return plain(
            StatusCode::NOT_FOUND,
            "no MCP server by that name on this gateway",
        );
    }
    let session = headers
        .get(SESSION_HEADER)
        .map(|v| v.to_str().unwrap_or(""));
    match *method {
        Method::POST => post(gw, name, &grant, session, headers, body).await,
        Method::GET => get(gw, name, &grant, session.map(str::to_owned), headers),
        Method::DELETE => delete(gw, name, &grant, session.map(str::to_owned)),
        _ => {
            let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "use POST, GET or DELETE");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            resp
        }
    }
}

/// `GET /metrics` (see [`crate::telemetry::scrape`]).
async fn metrics(State(gw): State<Arc<HttpGateway>>, headers: HeaderMap) -> Response {
    match &gw.options.metrics {
        Some(endpoint) => endpoint.answer(&headers),
        None => plain(StatusCode::NOT_FOUND, "this gateway serves no metrics"),
    }
}

fn accepts_events(headers: &HeaderMap) -> bool {
    // Searchers built once: `str::contains` builds one per search, which costs more than
    // the search of a header value.
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    static EVENTS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("text/event-stream"));
    static ANY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("*/*"));
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| EVENTS.find(v.as_bytes()).is_some() || ANY.find(v.as_bytes()).is_some())
}

/// Decodes a 2026-07-28 header value (`=?base64?…?=` or plain).
fn decode_header(value: &str) -> Option<String> {
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(b64) => base64_decode(b64).and_then(|b| String::from_utf8(b).ok()),
        None => Some(value.to_owned()),
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// Checks `Mcp-Method` and `Mcp-Name` against the body: the policy judges the body, so a
/// server that routes by header must never be told something else.
fn routing_headers_agree(
    headers: &HeaderMap,
    method: Option<&str>,
    params: Option<Raw<'_>>,
) -> Result<(), &'static str> {
    if let Some(h) = headers.get(METHOD_HEADER) {
        let h = h.to_str().ok().and_then(decode_header);
        if h.as_deref() != method {
            return Err("Mcp-Method header does not match the request body's method");
        }
    }
    if let Some(h) = headers.get(NAME_HEADER) {
        let key = match method {
            Some("tools/call" | "prompts/get") => "name",
            Some("resources/read") => "uri",
            _ => return Ok(()),
        };
        let body_value = params
            .and_then(|p| {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(p.get()).ok()
            })
            .and_then(|mut m| m.remove(key))
            .and_then(|v| v.as_str().map(str::to_owned));
        let h = h.to_str().ok().and_then(decode_header);
        if body_value.is_some() && h != body_value {
            return Err("Mcp-Name header does not match the request body");
        }
    }
    Ok(())
}

async fn post<B: RequestBody>(
    gw: &Arc<HttpGateway>,
    server: &str,
    grant: &str,
    session: Option<&str>,
    headers: &HeaderMap,
    body: B,
) -> Response {
    let max = gw.options.max_message;
    let bytes = match read_body(body, max).await {
        Some(bytes) => bytes,
        None => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request bodies are limited to {max} bytes (the gateway's --max-message)"),
            );
        }
    };
    // From here on the request is one line, exactly as the core will read it.
    let refused = |refused: body::BodyRefused| {
        rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            refused.code(),
            &refused.to_string(),
        )
    };
    let line = match body::unread_line(&bytes) {
        Ok(line) => line,
        Err(why) => return refused(why),
    };
    let env = match body::message(&line) {
        Ok(env) => env,
        Err(why) => return refused(why),
    };
    let shape = match env.shape() {
        Ok(shape) => shape,
        Err(invalid) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                None,
                INVALID_REQUEST,
                &format!("invalid request: {}", invalid.why),
            );
        }
    };
    let method = match &shape {
        Shape::Request { method, .. } | Shape::Notification { method } => Some(*method),
        Shape::Response { .. } => None,
    };
    let id = match &shape {
        Shape::Request { id, .. } => Some(id.clone()),
        _ => None,
    };
    if let Err(why) = routing_headers_agree(headers, method, env.params) {
        return rpc_error(StatusCode::BAD_REQUEST, id.as_ref(), HEADER_MISMATCH, why);
    }
    let mut new_session = None;
    let link = match session {
        Some(sid) => match gw.session(sid, server, grant) {
            Some(link) => link,
            None => {
                return rpc_error(
                    StatusCode::NOT_FOUND,
                    id.as_ref(),
                    INVALID_REQUEST,
                    "unknown or ended MCP session; start a new one",
                );
            }
        },
        None if method == Some("initialize") => match gw.open_session(server, grant) {
            Ok((sid, link)) => {
                new_session = Some(sid);
                link
            }
            Err(no) => return no.response(),
        },
        None => match gw.stateless_link(server, grant) {
            Ok(link) => link,
            Err(no) => return no.response(),
        },
    };
    let (Some(client_id), Some(raw_id)) = (id, env.id) else {
        // A notification, or the client's answer to a server-to-client request. A
        // stateless client's cancellation names its own ids, which mean nothing on a
        // shared link; closing the request's stream is how it cancels.
        let stateless_cancel = new_session.is_none()
            && headers.get(SESSION_HEADER).is_none()
            && method == Some("notifications/cancelled");
        if !stateless_cancel && !link.notify(line.clone()).await {
            return plain(StatusCode::BAD_GATEWAY, "the MCP server is gone");
        }
        return StatusCode::ACCEPTED.into_response();
    };
    let prepared = link.prepare(&line, &client_id, raw_id, env.params);
    // What this read of the line goes with it: the core does not scan it again.
    let read = env.read(&line);
    let (core_id, rx) = match link.request(prepared, line, read).await {
        Ok(pair) => pair,
        Err(e) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Some(&client_id),
                INVALID_REQUEST,
                &e.to_string(),
            );
        }
    };
    let mut resp = answer(link, core_id, client_id, rx, accepts_events(headers)).await;
    if let Some(sid) = new_session
        && let Ok(value) = HeaderValue::from_str(&sid)
    {
        resp.headers_mut().insert(SESSION_HEADER, value);
    }
    resp
}

/// A request body of at most `max` bytes; `None` when it is larger or fails (cut off, or
/// past its deadline). A body that comes as one frame, as almost every one does, is taken as
/// it came: only a body in several frames is gathered into a buffer (a general collector
/// queues every frame first).
async fn read_body<B: RequestBody>(mut body: B, max: usize) -> Option<Bytes> {
    use http_body_util::BodyExt;
    let mut whole: Option<Bytes> = None;
    let mut gathered: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        // Trailers carry nothing the gateway reads.
        let Ok(data) = frame.ok()?.into_data() else {
            continue;
        };
        let so_far = whole.as_ref().map_or(0, Bytes::len) + gathered.len();
        if so_far + data.len() > max {
            return None;
        }
        match whole.take() {
            None if gathered.is_empty() => whole = Some(data),
            first => {
                if let Some(first) = first {
                    gathered.extend_from_slice(&first);
                }
                gathered.extend_from_slice(&data);
            }
        }
    }
    Some(whole.unwrap_or_else(|| Bytes::from(gathered)))
}

/// What a request's body may be: axum's (through the router) or the listener's own, unboxed
/// (`/mcp/{name}`, [`HttpGateway::mcp_request`]).
pub(crate) trait RequestBody: hyper::body::Body<Data = Bytes> + Unpin + Send {}

impl<B: hyper::body::Body<Data = Bytes> + Unpin + Send> RequestBody for B {}

/// Cancels a request in the core when dropped before its answer came.
struct CancelOnDrop {
    link: Arc<CoreLink>,
    id: Option<IdKey>,
}

impl CancelOnDrop {
    fn done(&mut self) {
        self.id = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.link.cancel(&id);
        }
    }
}

/// Waits for what the core sends for a request and answers the POST with it.
async fn answer(
    link: Arc<CoreLink>,
    core_id: IdKey,
    client_id: IdKey,
    mut rx: inbox::Inbox,
    events_ok: bool,
) -> Response {
    let mut pending = CancelOnDrop {
        link,
        id: Some(core_id),
    };
    let gone = |client_id: &IdKey| {
        json_response(
            StatusCode::OK,
            jsonrpc::error_response(
                Some(client_id),
                jsonrpc::code::UPSTREAM_GONE,
                "the MCP server ended before answering",
            ),
        )
    };
    let first = loop {
        match rx.recv().await {
            None => {
                pending.done();
                return gone(&client_id);
            }
            Some(Delivery::Final(body)) => {
                pending.done();
                return json_response(StatusCode::OK, body);
            }
            // A client that cannot read an event stream gets the answer alone.
            Some(Delivery::Interim(_)) if !events_ok => continue,
            Some(Delivery::Interim(first)) => break first,
        }
    };
    let state = (Some(first), rx, pending, client_id, false);
    let stream = futures_util::stream::unfold(
        state,
        |(first, mut rx, mut pending, client_id, finished)| async move {
            if finished {
                return None;
            }
            if let Some(first) = first {
                return Some((
                    Ok::<Bytes, Infallible>(sse::frame(&first)),
                    (None, rx, pending, client_id, false),
                ));
            }
            match rx.recv().await {
                Some(Delivery::Interim(msg)) => {
                    Some((Ok(sse::frame(&msg)), (None, rx, pending, client_id, false)))
                }
                Some(Delivery::Final(msg)) => {
                    pending.done();
                    Some((Ok(sse::frame(&msg)), (None, rx, pending, client_id, true)))
                }
                None => {
                    pending.done();
                    let msg = jsonrpc::error_response(
                        Some(&client_id),
                        jsonrpc::code::UPSTREAM_GONE,
                        "the MCP server ended before answering",
                    );
                    Some((Ok(sse::frame(&msg)), (None, rx, pending, client_id, true)))
                }
            }
        },
    );
    event_stream(Body::from_stream(stream))
}

fn event_stream(body: Body) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn get(
    gw: &Arc<HttpGateway>,
    server: &str,
    grant: &str,
    session: Option<String>,
    headers: &HeaderMap,
) -> Response {
    let Some(sid) = session else {
        let mut resp = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "a GET stream needs an MCP session",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    };
    if !accepts_events(headers) {
        return plain(
            StatusCode::NOT_ACCEPTABLE,
            "the GET stream is text/event-stream",
        );
    }
    let Some(link) = gw.session(&sid, server, grant) else {
        return plain(StatusCode::NOT_FOUND, "unknown or ended MCP session");
    };
    let rx = match link.listen() {
        Ok(rx) => rx,
        Err(e) => return plain(StatusCode::CONFLICT, &e.to_string()),
    };
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|msg| (Ok::<Bytes, Infallible>(sse::frame(&msg)), rx))
    });
    event_stream(Body::from_stream(stream))
}

fn delete(gw: &Arc<HttpGateway>, server: &str, grant: &str, session: Option<String>) -> Response {
    let Some(sid) = session else {
        return plain(
            StatusCode::BAD_REQUEST,
            "DELETE ends an MCP session: send its Mcp-Session-Id",
        );
    };
    if gw.session(&sid, server, grant).is_none() {
        return plain(StatusCode::NOT_FOUND, "unknown or ended MCP session");
    }
    if let Some(link) = gw.links.remove(&sid) {
        link.close();
    }
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn events_are_accepted_when_any_accept_header_names_them_or_everything() {
        let accepts = |values: &[&[u8]]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::ACCEPT, HeaderValue::from_bytes(value).unwrap());
            }
            accepts_events(&headers)
        };
        assert!(accepts(&[b"application/json, text/event-stream"]));
        assert!(accepts(&[b"text/event-stream"]));
        assert!(accepts(&[b"*/*"]));
        assert!(accepts(&[b"application/json", b"text/event-stream;q=0.5"]));
        assert!(!accepts(&[b"application/json"]));
        assert!(!accepts(&[b"text/event", b"application/*"]));
        assert!(!accepts(&[]));
        // A value that is not visible ASCII is not read, whatever it spells.
        assert!(!accepts(&[b"text/event-stream \xff"]));
        assert!(accepts(&[b"text/event-stream \xff", b"*/*"]));
    }

    #[tokio::test]
    async fn a_body_is_read_whole_in_one_frame_or_many_and_refused_past_the_cap() {
        let one = Body::from("{\"a\":1}");
        assert_eq!(read_body(one, 7).await.as_deref(), Some(&b"{\"a\":1}"[..]));
        let pieces: Vec<Result<&'static str, std::io::Error>> =
            vec![Ok("{\"a\""), Ok(":"), Ok("1}")];
        let many = Body::from_stream(futures_util::stream::iter(pieces));
        assert_eq!(read_body(many, 7).await.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(read_body(Body::from("{\"a\":1}"), 6).await, None);
        let pieces: Vec<Result<&'static str, std::io::Error>> = vec![Ok("{\"a\""), Ok(":1}")];
        let many = Body::from_stream(futures_util::stream::iter(pieces));
        assert_eq!(read_body(many, 6).await, None, "the cap counts every frame");
        let pieces: Vec<Result<&'static str, std::io::Error>> =
            vec![Ok("{"), Err(std::io::Error::other("cut off"))];
        let broken = Body::from_stream(futures_util::stream::iter(pieces));
        assert_eq!(
            read_body(broken, 100).await,
            None,
            "a failed body is refused"
        );
        assert_eq!(
            read_body(Body::empty(), 100).await.as_deref(),
            Some(&b""[..])
        );
    }

    #[test]
    fn base64_header_values_decode() {
        assert_eq!(
            decode_header("=?base64?aMOpbGxv?=").as_deref(),
            Some("héllo")
        );
        assert_eq!(decode_header("plain").as_deref(), Some("plain"));
        assert_eq!(decode_header("=?base64?***?="), None);
    }

    #[test]
    fn only_a_plain_one_segment_mcp_path_skips_the_router() {
        assert_eq!(plain_mcp_name("/mcp/time"), Some("time"));
        assert_eq!(plain_mcp_name("/mcp/a.b-c_d"), Some("a.b-c_d"));
        // Decoded by axum, or refused by its router, as before.
        for path in [
            "/mcp/t%69me",
            "/mcp/",
            "/mcp",
            "/mcp/time/",
            "/mcp/a/b",
            "/metrics",
        ] {
            assert_eq!(plain_mcp_name(path), None, "{path}");
        }
    }

    #[test]
    fn a_name_header_that_disagrees_with_the_body_is_refused() {
        let params = RawValue::from_string(r#"{"name":"delete_account"}"#.into()).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("mcp-name", HeaderValue::from_static("get_time"));
        assert!(
            routing_headers_agree(&headers, Some("tools/call"), Some(Raw::of(&params))).is_err()
        );
        headers.insert("mcp-name", HeaderValue::from_static("delete_account"));
        assert!(
            routing_headers_agree(&headers, Some("tools/call"), Some(Raw::of(&params))).is_ok()
        );
        headers.insert("mcp-method", HeaderValue::from_static("tools/list"));
        assert!(
            routing_headers_agree(&headers, Some("tools/call"), Some(Raw::of(&params))).is_err()
        );
    }
}
