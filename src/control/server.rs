//! The event websocket: where operators (consoles, `tail`, `approve`) connect to a gateway.
//!
//! One task accepts connections; each connection gets its own task that sends a `hello` with
//! a snapshot, then the live stream from the [`Hub`], and answers the client's commands.
//! Security: loopback unless it speaks TLS (`--tls-cert`); a random 256-bit token per start
//! (and operator accounts' tokens, with `--operators`), required as
//! `Authorization: Bearer <token>` on the upgrade request and compared in constant time;
//! without it the upgrade is answered 401. Tokens in the URL are not accepted: URLs end up in
//! logs and shell history, and a browser page cannot set the header, so a web page the
//! operator visits cannot reach the gateway either.
//!
//! A slow client never slows the gateway: each connection reads from its own bounded
//! broadcast receiver; when it falls behind it is sent `missed` and a fresh `hello`.
//!
//! Sockets that never authenticate cannot lock operators out: a connection has
//! [`AUTH_DEADLINE`] to complete its handshake with the token, handshakes and open
//! connections are capped separately, and a new connection sheds the oldest handshake rather
//! than being refused (see [`super::admission`]). Under TLS the handshake counts towards
//! that deadline, and a plain-HTTP client is answered 400 saying to use `wss://`.
//!
//! The same sessions are served on another listener's upgrade by [`ControlPlane`]: `serve`
//! routes `/control` on its own port to it, where only operator accounts are accepted.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::admission::{Admission, Handshake};
use super::discovery::{DiscoveryEntry, DiscoveryFile};
use super::hub::{Hub, Published, Resolution, ResolveError};
use super::operators::{Identity, OperatorsHandle, Role};
use crate::tls::ServerTls;
use crate::wire::{
    ClientMsg, Event, EventKind, Hello, Missed, PROTOCOL_VERSION, Reply, ReplyCode, ResolvedBy,
};

/// Largest message a client may send: commands are small, but `write_policy` carries a whole
/// policy file (a larger one is edited on the gateway's machine). Only an authenticated
/// operator gets to send anything.
pub const MAX_CLIENT_MESSAGE: usize = 1024 * 1024;

/// Longest deny reason or operator name kept; the rest is cut.
const MAX_TEXT: usize = 2000;

/// Most events written to one client before a flush.
const BATCH: usize = 256;

pub use super::admission::{AUTH_DEADLINE, MAX_HANDSHAKING, MAX_OPERATORS};

/// Where and how the event websocket listens.
#[derive(Debug, Clone)]
pub struct EventsOptions {
    /// Default `127.0.0.1:0`: loopback, a free port.
    pub addr: SocketAddr,
    /// Serve `wss://` with this certificate; required to listen on a non-loopback address.
    pub tls: Option<ServerTls>,
    /// Accept the gateway's own per-start token (the discovery token, the local operator's
    /// credential). Off for a control listener meant for operator accounts only.
    pub local_token: bool,
    /// Write a discovery file so local consoles and the CLI find this gateway.
    pub discovery: bool,
    /// Operator accounts (`--operators FILE`) whose tokens are accepted besides the
    /// discovery token, each with its role.
    pub operators: Option<OperatorsHandle>,
}

impl Default for EventsOptions {
    fn default() -> Self {
        EventsOptions {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: None,
            local_token: true,
            discovery: true,
            operators: None,
        }
    }
}

/// Why the event websocket could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error(
        "refusing to serve the control websocket on {0}, which is not a loopback address, \
         without TLS: approvals and tokens would cross the network in clear text. Pass \
         --tls-cert PEM --tls-key PEM, or listen on 127.0.0.1"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen for events on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Discovery(#[from] super::discovery::DiscoveryError),
}

/// The running event websocket. Dropping it (or [`ControlHandle::shutdown`]) stops
/// accepting, closes the connections and removes the discovery file.
#[derive(Debug)]
pub struct ControlHandle {
    url: String,
    token: String,
    addr: SocketAddr,
    discovery: Option<DiscoveryFile>,
    stop: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
}

impl ControlHandle {
    /// `ws://ADDR/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bearer token clients must present.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The discovery file, when one was written.
    pub fn discovery_path(&self) -> Option<&std::path::Path> {
        self.discovery.as_ref().map(DiscoveryFile::path)
    }

    /// Stops accepting, closes every connection (with a close frame) and removes the
    /// discovery file; returns when the accept loop has ended.
    pub async fn shutdown(mut self) {
        self.discovery.take();
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

/// A fresh random 256-bit token, hex.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Binds the event websocket, writes the discovery file and starts serving `hub`.
pub async fn start(hub: Arc<Hub>, opts: EventsOptions) -> anyhow::Result<ControlHandle> {
    Ok(start_server(hub, opts).await?)
}

async fn start_server(hub: Arc<Hub>, opts: EventsOptions) -> Result<ControlHandle, StartError> {
    if !opts.addr.ip().is_loopback() && opts.tls.is_none() {
        return Err(StartError::NotLoopback(opts.addr));
    }
    let listener = crate::listen::listen(opts.addr).map_err(|source| StartError::Bind {
        addr: opts.addr,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: opts.addr,
        source,
    })?;
    let token = new_token();
    let scheme = if opts.tls.is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://{addr}/");
    let discovery = if opts.discovery {
        let info = hub.info();
        Some(DiscoveryFile::create(&DiscoveryEntry {
            id: info.id.clone(),
            url: url.clone(),
            token: token.clone(),
            pid: info.pid,
            policy: info.policy.clone(),
            grant: info.grant.clone(),
            server: info.server.clone(),
            started_at: info.started_at,
        })?)
    } else {
        None
    };
    let (stop, stopped) = watch::channel(false);
    let access = Arc::new(Access {
        token: opts.local_token.then(|| token.clone()),
        operators: opts.operators.clone(),
    });
    let accept = tokio::spawn(accept_loop(listener, hub, access, opts.tls, stopped));
    Ok(ControlHandle {
        url,
        token,
        addr,
        discovery,
        stop,
        accept: Some(accept),
    })
}

async fn accept_loop(
    listener: TcpListener,
    hub: Arc<Hub>,
    access: Arc<Access>,
    tls: Option<ServerTls>,
    mut stopped: watch::Receiver<bool>,
) {
    // At most MAX_HANDSHAKING + MAX_OPERATORS tasks, plus shed ones on their way out: a
    // flood of sockets cannot exhaust the gateway's file descriptors.
    let mut connections = tokio::task::JoinSet::new();
    let admission = Admission::new(MAX_HANDSHAKING, MAX_OPERATORS);
    loop {
        tokio::select! {
            _ = until_stopped(&mut stopped) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let handshake = admission.handshake();
                    let admission = admission.clone();
                    let hub = hub.clone();
                    let access = access.clone();
                    let stopped = stopped.clone();
                    let tls = tls.clone();
                    connections.spawn(async move {
                        let served = serve_connection(
                            stream, handshake, admission, hub, access, tls, stopped,
                        );
                        if let Err(e) = served.await {
                            tracing::debug!(%peer, error = %e, "event connection ended");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accepting an event connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connection tasks so the set does not grow. One that panicked is
            // a bug, not an operator who left: say so (its socket is closed with it).
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!("an operator's connection panicked and was closed: {e}");
                }
            }
        }
    }
    // Each connection sees `stopped` and closes itself; wait for them briefly.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

/// Returns once the operator accounts change; never when there are none.
async fn changed(
    accounts: &mut Option<watch::Receiver<u64>>,
) -> Result<(), watch::error::RecvError> {
    match accounts {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// Returns once the server is told to stop (or its handle is gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not across an await.
    let _ = stopped.wait_for(|s| *s).await.is_ok();
}

/// Who may connect: the holder of the gateway's own token (when accepted), and operator
/// accounts.
#[derive(Debug)]
struct Access {
    token: Option<String>,
    operators: Option<OperatorsHandle>,
}

impl Access {
    /// Who the upgrade request's bearer token says the client is; `None`: nobody we know.
    fn identify(&self, headers: &HeaderMap) -> Option<Identity> {
        if let Some(token) = &self.token
            && authorized(headers, token)
        {
            return Some(Identity::Local);
        }
        let operators = self.operators.as_ref()?;
        let presented = bearer(headers)?;
        operators.current().authenticate(presented)
    }
}

/// The bearer token of an upgrade request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(tokio_tungstenite::tungstenite::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Whether the upgrade request carries `Authorization: Bearer <token>`.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    // Constant time in the token's content; lengths are not secret (always 64).
    bearer(headers).is_some_and(|presented| {
        crate::credentials::same_secret(presented.as_bytes(), token.as_bytes())
    })
}

fn refusal(status: StatusCode, body: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(body));
    *response.status_mut() = status;
    response
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("no authenticated handshake within {AUTH_DEADLINE:?}")]
    HandshakeTimeout,
    #[error("shed to make room for a newer handshake")]
    Shed,
    #[error("not a TLS client (answered 400), or it left before its TLS handshake")]
    NotTls,
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    #[error(transparent)]
    Websocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The websocket settings of the gateway's side.
fn server_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

/// A connection that presented a token we know, with its operator slot (held until the
/// connection ends).
#[derive(Debug)]
pub(crate) struct Admitted {
    identity: Identity,
    _slot: OwnedSemaphorePermit,
}

/// Who the request's token says the client is, and an operator slot for it; otherwise the
/// status and text to refuse it with.
fn admit(
    access: &Access,
    admission: &Admission,
    headers: &HeaderMap,
) -> Result<Admitted, (StatusCode, String)> {
    let Some(identity) = access.identify(headers) else {
        return Err((
            StatusCode::UNAUTHORIZED,
            "a valid `Authorization: Bearer <token>` header is required\n".to_owned(),
        ));
    };
    let Some(slot) = admission.operator() else {
        tracing::warn!("{MAX_OPERATORS} operators are connected; refusing one more");
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{MAX_OPERATORS} operator connections are open on this gateway; close one \
                 (a console, `tail`) and try again\n"
            ),
        ));
    };
    Ok(Admitted {
        identity,
        _slot: slot,
    })
}

async fn serve_connection(
    mut stream: TcpStream,
    mut handshake: Handshake,
    admission: Admission,
    hub: Arc<Hub>,
    access: Arc<Access>,
    tls: Option<ServerTls>,
    stopped: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + AUTH_DEADLINE;
    let Some(tls) = tls else {
        let (ws, admitted) = upgrade(stream, &mut handshake, &admission, &access, deadline).await?;
        drop(handshake);
        return run_session(ws, admitted, &hub, &access, stopped).await;
    };
    // The TLS handshake is part of the time a connection has to authenticate, and can be
    // shed like any other handshake.
    let secure = async {
        match crate::tls::sniff(&mut stream).await {
            crate::tls::Sniffed::Tls => tls
                .acceptor()
                .accept(stream)
                .await
                .map_err(ConnectionError::Tls),
            crate::tls::Sniffed::Plain => {
                crate::tls::refuse_plain(&mut stream).await;
                Err(ConnectionError::NotTls)
            }
            crate::tls::Sniffed::Gone => Err(ConnectionError::NotTls),
        }
    };
    let secured = tokio::select! {
        secured = tokio::time::timeout_at(deadline, secure) =>
            secured.map_err(|_| ConnectionError::HandshakeTimeout)??,
        () = handshake.shed() => return Err(ConnectionError::Shed),
    };
    let (ws, admitted) = upgrade(secured, &mut handshake, &admission, &access, deadline).await?;
    drop(handshake);
    run_session(ws, admitted, &hub, &access, stopped).await
}

/// The websocket handshake with the token check, by `deadline`, unless shed first.
async fn upgrade<S>(
    stream: S,
    handshake: &mut Handshake,
    admission: &Admission,
    access: &Access,
    deadline: tokio::time::Instant,
) -> Result<(WebSocketStream<S>, Admitted), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut admitted = None;
    // The error type is tungstenite's, fixed by its `Callback` signature.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| {
        match admit(access, admission, request.headers()) {
            Ok(ok) => admitted = Some(ok),
            Err((status, text)) => return Err(refusal(status, text)),
        }
        Ok(response)
    };
    let accepting = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(server_config())),
    );
    let ws = tokio::select! {
        accepted = accepting => accepted.map_err(|_| ConnectionError::HandshakeTimeout)??,
        () = handshake.shed() => return Err(ConnectionError::Shed),
    };
    // The callback ran and accepted, or the handshake failed above.
    let admitted = admitted.ok_or(ConnectionError::HandshakeTimeout)?;
    Ok((ws, admitted))
}

/// The control websocket served on an upgrade of another listener: `serve`'s `/control`.
/// Only operator accounts are accepted there; the local discovery token stays on the
/// loopback event websocket.
#[derive(Debug, Clone)]
pub(crate) struct ControlPlane {
    hub: Arc<Hub>,
    access: Arc<Access>,
    admission: Admission,
    stopped: watch::Receiver<bool>,
}

impl ControlPlane {
    /// Sessions of `hub` for the accounts of `operators`, until `stopped` becomes true.
    pub(crate) fn new(
        hub: Arc<Hub>,
        operators: OperatorsHandle,
        stopped: watch::Receiver<bool>,
    ) -> ControlPlane {
        ControlPlane {
            hub,
            access: Arc::new(Access {
                token: None,
                operators: Some(operators),
            }),
            admission: Admission::new(MAX_HANDSHAKING, MAX_OPERATORS),
            stopped,
        }
    }

    /// Checks an upgrade request's token and takes an operator slot; otherwise the status
    /// and text to refuse it with.
    pub(crate) fn admit(&self, headers: &HeaderMap) -> Result<Admitted, (StatusCode, String)> {
        admit(&self.access, &self.admission, headers)
    }

    /// Runs the session of an admitted, upgraded connection until it ends.
    pub(crate) async fn serve<S>(&self, ws: WebSocketStream<S>, admitted: Admitted)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let run = run_session(ws, admitted, &self.hub, &self.access, self.stopped.clone());
        if let Err(e) = run.await {
            tracing::debug!(error = %e, "control connection ended");
        }
    }

    /// The websocket settings to wrap an upgraded connection with.
    pub(crate) fn websocket_config() -> WebSocketConfig {
        server_config()
    }
}

/// An authenticated session: the `hello`, then the stream and the client's commands.
async fn run_session<S>(
    mut ws: WebSocketStream<S>,
    admitted: Admitted,
    hub: &Hub,
    access: &Access,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Admitted { identity, _slot } = admitted;
    let mut accounts = access.operators.as_ref().map(OperatorsHandle::subscribe);

    let (mut last_seq, mut events) = send_hello(&mut ws, hub).await?;
    loop {
        tokio::select! {
            _ = until_stopped(&mut stopped) => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            Ok(()) = changed(&mut accounts) => {
                let still = access
                    .operators
                    .as_ref()
                    .is_none_or(|handle| identity.still_valid(&handle.current()));
                if !still {
                    let _ = ws.close(Some(CloseFrame {
                        code: CloseCode::Policy,
                        reason: "this operator account was revoked or its role changed; \
                                 connect again with a valid token"
                            .into(),
                    }))
                    .await;
                    return Ok(());
                }
            }
            event = events.recv() => {
                if forward_burst(&mut ws, hub, event, &mut events, &mut last_seq).await?
                    == Stream::Closed
                {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
            }
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let reply = handle_command(hub, &identity, text.as_str()).await;
                    send_event(&mut ws, &per_client(hub, hub.latest_seq(), EventKind::Reply(reply)))
                        .await?;
                }
                Some(Ok(Message::Binary(_))) => {
                    let reply = Reply {
                        id: 0,
                        ok: false,
                        error: Some("commands are JSON text frames".into()),
                        code: Some(ReplyCode::Failed),
                        ..Reply::default()
                    };
                    send_event(&mut ws, &per_client(hub, hub.latest_seq(), EventKind::Reply(reply)))
                        .await?;
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Err(e)) => return Err(e.into()),
            },
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Stream {
    Open,
    /// The hub is gone (the gateway is stopping).
    Closed,
}

/// Writes `first` and whatever else is already queued (up to [`BATCH`]), then flushes once:
/// one write for a burst instead of one per event. A client that fell behind is sent
/// `missed` and a fresh `hello`, and `events` is replaced by a receiver that follows it.
async fn forward_burst<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    hub: &Hub,
    first: Result<Arc<Published>, broadcast::error::RecvError>,
    events: &mut broadcast::Receiver<Arc<Published>>,
    last_seq: &mut u64,
) -> Result<Stream, ConnectionError> {
    use broadcast::error::{RecvError, TryRecvError};

    let mut next = first;
    for written in 1.. {
        match next {
            Ok(event) => {
                *last_seq = event.seq;
                ws.feed(Message::Text(event.json())).await?;
            }
            Err(RecvError::Lagged(_)) => {
                // Start over from a fresh snapshot rather than replay what is left of the
                // queue: the client is told exactly how many events it did not get.
                let (snapshot, seq, fresh) = hub.subscribe_with_snapshot();
                let missed = per_client(
                    hub,
                    seq,
                    EventKind::Missed(Missed {
                        dropped: seq.saturating_sub(*last_seq),
                    }),
                );
                feed_event(ws, &missed).await?;
                feed_event(ws, &hello(hub, snapshot, seq)).await?;
                *last_seq = seq;
                *events = fresh;
            }
            Err(RecvError::Closed) => return Ok(Stream::Closed),
        }
        if written == BATCH {
            break;
        }
        next = match events.try_recv() {
            Ok(event) => Ok(event),
            Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
            Err(TryRecvError::Closed) => Err(RecvError::Closed),
            Err(TryRecvError::Empty) => break,
        };
    }
    ws.flush().await?;
    Ok(Stream::Open)
}

/// Sends a `hello` with a snapshot; returns its `seq` and the receiver of what follows it.
async fn send_hello<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    hub: &Hub,
) -> Result<(u64, broadcast::Receiver<Arc<Published>>), ConnectionError> {
    let (snapshot, seq, events) = hub.subscribe_with_snapshot();
    send_event(ws, &hello(hub, snapshot, seq)).await?;
    Ok((seq, events))
}

fn hello(hub: &Hub, snapshot: crate::wire::Snapshot, seq: u64) -> Event {
    per_client(
        hub,
        seq,
        EventKind::Hello(Box::new(Hello {
            protocol: PROTOCOL_VERSION,
            info: hub.info().clone(),
            snapshot,
        })),
    )
}

/// A message for one client (`hello`, `missed`, `reply`): it carries the latest `seq`
/// rather than taking a new one.
fn per_client(hub: &Hub, seq: u64, kind: EventKind) -> Event {
    Event {
        seq,
        ts: Utc::now(),
        gateway: hub.info().id.as_str().into(),
        kind,
    }
}

/// Queues one event on the socket without flushing.
async fn feed_event<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    event: &Event,
) -> Result<(), ConnectionError> {
    let text = serde_json::to_string(event)?;
    ws.feed(Message::Text(Utf8Bytes::from(text))).await?;
    Ok(())
}

async fn send_event<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    event: &Event,
) -> Result<(), ConnectionError> {
    let text = serde_json::to_string(event)?;
    ws.send(Message::Text(Utf8Bytes::from(text))).await?;
    Ok(())
}

/// Runs one client command; every outcome, including garbage, is a [`Reply`].
async fn handle_command(hub: &Hub, identity: &Identity, text: &str) -> Reply {
    let msg: ClientMsg = match serde_json::from_str(text) {
        Ok(msg) => msg,
        Err(e) => {
            // Answer with the id when one can be read, so the client can match the error.
            let id = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64))
                .unwrap_or(0);
            return Reply {
                id,
                ok: false,
                error: Some(format!("not a command this gateway understands: {e}")),
                code: Some(ReplyCode::Unsupported),
                ..Reply::default()
            };
        }
    };
    if let Some(refused) = refused_for_role(identity, &msg) {
        return refused;
    }
    let (id, call_id, resolution) = match msg {
        ClientMsg::Approve {
            id,
            call_id,
            operator,
        } => (
            id,
            call_id,
            Resolution {
                approved: true,
                by: ResolvedBy::Operator,
                operator: identity.operator_name(operator).map(cap),
                reason: None,
            },
        ),
        ClientMsg::Deny {
            id,
            call_id,
            reason,
            operator,
        } => (
            id,
            call_id,
            Resolution {
                approved: false,
                by: ResolvedBy::Operator,
                operator: identity.operator_name(operator).map(cap),
                reason: reason.map(cap),
            },
        ),
        ClientMsg::AcceptPin {
            id,
            server,
            tool,
            fingerprint,
            operator,
        } => {
            let accepted = match hub.pin_review() {
                Some(review) => {
                    review
                        .accept_pin(
                            &server,
                            &tool,
                            &fingerprint,
                            identity.operator_name(operator).map(cap),
                        )
                        .await
                }
                None => Err("this gateway does not pin tools".into()),
            };
            return Reply {
                id,
                ok: accepted.is_ok(),
                code: accepted.is_err().then_some(ReplyCode::Failed),
                error: accepted.err(),
                ..Reply::default()
            };
        }
        ClientMsg::ReadPolicy { id } => {
            return super::remote_policy::read_reply(id, hub.info().policy.clone().into()).await;
        }
        ClientMsg::WritePolicy {
            id,
            text,
            base_hash,
            force,
        } => {
            let operator = identity
                .operator_name(None)
                .unwrap_or_else(|| "the local token".into());
            let path = hub.info().policy.clone().into();
            return super::remote_policy::write_reply(id, path, text, base_hash, force, operator)
                .await;
        }
    };
    match hub.resolve(&call_id, resolution) {
        Ok(()) => Reply {
            id,
            ok: true,
            ..Reply::default()
        },
        Err(e @ (ResolveError::UnknownCall(_) | ResolveError::AlreadyResolved(_))) => Reply {
            id,
            ok: false,
            error: Some(e.to_string()),
            code: Some(ReplyCode::Failed),
            ..Reply::default()
        },
    }
}

/// The refusal of a command the connection's role does not allow; `None` when allowed.
fn refused_for_role(identity: &Identity, msg: &ClientMsg) -> Option<Reply> {
    let (needed, what) = match msg {
        ClientMsg::Approve { .. } => (Role::Approver, "approving a held call"),
        ClientMsg::Deny { .. } => (Role::Approver, "denying a held call"),
        ClientMsg::AcceptPin { .. } => (Role::Admin, "accepting a tool's new definition"),
        ClientMsg::ReadPolicy { .. } => (Role::Viewer, "reading the policy"),
        ClientMsg::WritePolicy { .. } => (Role::Admin, "writing the policy"),
    };
    let role = identity.role();
    if role >= needed {
        return None;
    }
    let who = match identity {
        Identity::Local => "this connection".to_owned(),
        Identity::Operator { name, .. } => format!("operator {name}"),
    };
    Some(Reply {
        id: msg.id(),
        ok: false,
        error: Some(format!(
            "refused: {who} has the {role} role, and {what} needs the {needed} role or above \
             (toolgate operators add NAME --role {needed})"
        )),
        code: Some(ReplyCode::Forbidden),
        ..Reply::default()
    })
}

/// Cuts operator-supplied text to [`MAX_TEXT`] characters.
fn cap(text: String) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((cut, _)) => text[..cut].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: Option<&str>) -> Request {
        let mut builder = Request::builder().uri("/");
        if let Some(auth) = auth {
            builder = builder.header("Authorization", auth);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let token = new_token();
        assert_eq!(token.len(), 64);
        let authorized = |request: Request, token: &str| authorized(request.headers(), token);
        assert!(authorized(
            request(Some(&format!("Bearer {token}"))),
            &token
        ));
        assert!(!authorized(request(None), &token));
        assert!(!authorized(request(Some(&token)), &token));
        assert!(!authorized(request(Some("Bearer ")), &token));
        assert!(!authorized(
            request(Some(&format!("Bearer {}", &token[..63]))),
            &token
        ));
        assert!(!authorized(
            request(Some(&format!("Basic {token}"))),
            &token
        ));
    }

    #[test]
    fn tokens_differ_per_start() {
        assert_ne!(new_token(), new_token());
    }

    #[test]
    fn long_operator_text_is_cut() {
        assert_eq!(cap("é".repeat(MAX_TEXT + 5)).chars().count(), MAX_TEXT);
        assert_eq!(cap("short".into()), "short");
    }
}
