//! `serve`'s connections: its own accept loop in front of the router, so that slow, idle and
//! unauthenticated clients cannot take the descriptors and the time legitimate agents need.
//!
//! - **Deadlines.** A request's headers must arrive within the header deadline (hyper's
//!   `header_read_timeout`, which also closes a kept-alive connection idle for that long),
//!   and its body within the body deadline from then on; a late body is answered 408 and the
//!   connection closed. A request head over [`MAX_HEADER_BYTES`] is answered 431, and
//!   hyper's buffer per connection is capped, so memory stays bounded per connection.
//! - **A cap on open connections**, and the unauthenticated shed first. A connection counts
//!   as authenticated once one of its requests has presented a valid grant token
//!   ([`Peer::authenticated`]). At the cap, a new connection closes the oldest
//!   unauthenticated one, preferring one with no request under way: a slowloris never
//!   completes a request head, while an agent's connection sends one at once (seen at accept
//!   by peeking at the socket, so a flood accepted faster than connections are first read
//!   cannot shed it before its token is checked, unless nothing else is left). When every
//!   open connection is authenticated, the newcomer is answered 503 and closed.
//! - **A deep accept queue** (`crate::listen`): connections are shed only once accepted, so
//!   the kernel must be able to queue a flood's sockets; a full queue would drop an agent's
//!   SYN and cost it a second's retransmission. A shed connection is reset rather than
//!   closed, so the flood leaves no TIME_WAIT entries that new connections' SYNs would run
//!   into (the same second, for another reason).
//! - **Descriptors run out anyway** (other files, a limit lower than planned): an accept
//!   that fails with EMFILE sheds an unauthenticated connection and waits a moment before
//!   trying again, instead of spinning.
//!
//! - **TLS** (`--tls-cert`): a connection's first byte is awaited, then its handshake, both
//!   within the header deadline and while the connection counts as idle and
//!   unauthenticated, so a flood of handshakes that never finish is shed like idle sockets.
//!   A plain-HTTP request on the TLS port is answered 400, saying to use https://.
//!
//! [`plan`] shares the process's open-file limit between connections, server processes and
//! the gateway's own files before any of this starts.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot, watch};
use tower::ServiceExt;

use super::HttpGateway;
use crate::gateway::grants::Grants;
use crate::gateway::spin::keep_a_timer_due;
use crate::sync::lock;
use crate::tls::{self, ServerTls};

/// Default deadline for a request's headers (and for an idle kept-alive connection).
pub(crate) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The period of the timer kept due while the listener runs ([`keep_a_timer_due`]): half the
/// header timeout, within these bounds (an idle gateway wakes once per period).
const KEPT_TIMER_MIN: Duration = Duration::from_millis(100);
const KEPT_TIMER_MAX: Duration = Duration::from_secs(1);
/// Default deadline for a request's body, from the end of its headers.
pub(crate) const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on open connections.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Descriptors kept for the gateway's own files whatever the clients do: the policy and the
/// grants on each reload, the audit log, the counter store, the event websocket's clients,
/// watchers, logs.
pub(crate) const FD_RESERVE: u64 = 256;
/// Descriptors one MCP session may hold: a spawned server's stdin and stdout pipes and its
/// process handle, and one more while it starts.
pub(crate) const FDS_PER_SESSION: u64 = 4;
/// Most bytes hyper buffers per connection (its default, about 400 KiB, would let 1,024
/// unauthenticated connections hold 400 MiB).
const CONNECTION_BUFFER: usize = 64 * 1024;
/// Largest request head (request line and headers) accepted; larger ones get 431.
pub(crate) const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most bytes looked at, at accept, for a complete request head (see [`has_complete_head`]).
const PEEKED_HEAD: usize = 4096;
/// How long the accept loop waits after running out of descriptors.
const EMFILE_PAUSE: Duration = Duration::from_millis(20);
/// Most shed connections whose tasks have not closed them yet before the accept loop waits
/// for them: accepting faster than shed connections close would spend the descriptors the
/// shedding is meant to free (the kernel's accept queue holds the newcomers meanwhile).
const MAX_CLOSING: usize = 64;
/// How often, at most, a shedding or refusing accept loop says so in the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How `serve` treats connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionOptions {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

/// How the open-file limit is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub max_connections: usize,
    pub max_sessions: usize,
    /// The caps asked for did not fit in the limit and were lowered.
    pub lowered: bool,
}

/// Shares `limit` descriptors, of which `in_use` are open already, between the connections
/// and sessions asked for, keeping [`FD_RESERVE`] for the gateway's own files. When they do
/// not fit, both caps are lowered in proportion (never below 1).
pub(crate) fn plan(limit: u64, in_use: u64, max_connections: usize, max_sessions: usize) -> Plan {
    let available = limit.saturating_sub(in_use).saturating_sub(FD_RESERVE);
    let wanted = max_connections as u64 + FDS_PER_SESSION * max_sessions as u64;
    if wanted <= available {
        return Plan {
            max_connections,
            max_sessions,
            lowered: false,
        };
    }
    let scale = |n: usize| ((n as u64 * available / wanted.max(1)) as usize).max(1);
    Plan {
        max_connections: scale(max_connections),
        max_sessions: scale(max_sessions),
        lowered: true,
    }
}

/// A connection as the handlers see it (a request extension).
#[derive(Debug)]
pub(crate) struct Peer {
    id: u64,
    registry: Arc<Registry>,
    /// Changed only under the registry's lock.
    authenticated: AtomicBool,
    /// The last bearer token this connection presented that named a grant (see
    /// [`Peer::known_grant`]).
    token: Mutex<Option<KnownToken>>,
}

/// A token checked on this connection, against the grants in force then.
#[derive(Debug)]
struct KnownToken {
    token: Box<[u8]>,
    /// The grants it was checked against: kept alive, so that a reload (a new set) is
    /// never mistaken for this one.
    grants: Arc<Grants>,
    /// Shared with every request that presents the token: no copy per request.
    grant: Arc<str>,
}

impl Peer {
    /// The grant `token` named when this connection last presented it, if the grants in
    /// force are still the ones it was checked against (a reload, or a revoked grant,
    /// makes the next request check again). An agent sends the same token on every request
    /// of a connection: this spares each one the SHA-256 and the comparison with every
    /// stored hash. The comparison with the remembered token is in constant time.
    pub(crate) fn known_grant(&self, token: &str, grants: &Arc<Grants>) -> Option<Arc<str>> {
        let known = lock(&self.token);
        let known = known.as_ref()?;
        let same = Arc::ptr_eq(&known.grants, grants)
            && crate::credentials::same_secret(&known.token, token.as_bytes());
        same.then(|| known.grant.clone())
    }

    /// Remembers that `token` named `grant` under `grants`.
    pub(crate) fn remember_grant(&self, token: &str, grants: Arc<Grants>, grant: Arc<str>) {
        *lock(&self.token) = Some(KnownToken {
            token: token.as_bytes().into(),
            grants,
            grant,
        });
    }

    /// The connection presented a valid grant token: it is no longer shed for newcomers.
    pub(crate) fn authenticated(&self) {
        if self.authenticated.load(Ordering::Relaxed) {
            return;
        }
        let mut open = self.registry.lock();
        // A connection already shed stays shed.
        let shed = match open.idle.remove(&self.id) {
            Some(shed) => Some(shed),
            None => open.in_request.remove(&self.id),
        };
        if shed.is_some() {
            open.authenticated += 1;
            self.authenticated.store(true, Ordering::Relaxed);
        }
    }

    /// A complete request head arrived (`true`), or its answer was sent (`false`). An
    /// unauthenticated connection with a request under way is shed only when no idle one is
    /// left: a slowloris never completes a head, an agent sends one at once.
    fn in_request(&self, started: bool) {
        if self.authenticated.load(Ordering::Relaxed) {
            return;
        }
        let mut guard = self.registry.lock();
        let open = &mut *guard;
        let (from, to) = if started {
            (&mut open.idle, &mut open.in_request)
        } else {
            (&mut open.in_request, &mut open.idle)
        };
        if let Some(shed) = from.remove(&self.id) {
            to.insert(self.id, shed);
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let mut open = self.registry.lock();
        if self.authenticated.load(Ordering::Relaxed) {
            open.authenticated -= 1;
        } else if open.idle.remove(&self.id).is_none() && open.in_request.remove(&self.id).is_none()
        {
            // Shed: its descriptor closes now.
            open.closing = open.closing.saturating_sub(1);
        }
        drop(open);
        self.registry.closed.notify_waiters();
    }
}

/// The open connections by kind. Unauthenticated ones are keyed by admission order (oldest
/// first); sending on a connection's sender sheds it.
#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    /// Unauthenticated, with no request under way: shed first.
    idle: BTreeMap<u64, oneshot::Sender<()>>,
    /// Unauthenticated, a request head received and not answered yet.
    in_request: BTreeMap<u64, oneshot::Sender<()>>,
    authenticated: usize,
    /// Connections shed whose task has not closed them yet: their descriptors are still
    /// open.
    closing: usize,
}

impl Open {
    fn len(&self) -> usize {
        self.idle.len() + self.in_request.len() + self.authenticated
    }

    /// Closes the oldest idle unauthenticated connection, else the oldest unauthenticated
    /// one with a request under way; false if every open connection is authenticated.
    fn shed_oldest(&mut self) -> bool {
        match self
            .idle
            .pop_first()
            .or_else(|| self.in_request.pop_first())
        {
            Some((_, shed)) => {
                let _ = shed.send(());
                // Counted until its `Peer` is dropped, which follows whether or not the
                // connection was still listening.
                self.closing += 1;
                true
            }
            None => false,
        }
    }
}

/// The open connections.
#[derive(Debug, Default)]
struct Registry {
    open: Mutex<Open>,
    closed: Notify,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Open> {
        crate::sync::lock(&self.open)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Waits until fewer than [`MAX_CLOSING`] shed connections are still open.
    async fn closing_below_cap(&self) {
        loop {
            let closed = self.closed.notified();
            if self.lock().closing < MAX_CLOSING {
                return;
            }
            closed.await;
        }
    }

    /// Registers a new connection, shedding the oldest unauthenticated one when `max` are
    /// open; `None` when every open connection is authenticated. `in_request`: a complete
    /// request head is waiting on it already.
    fn admit(
        self: &Arc<Self>,
        max: usize,
        in_request: bool,
    ) -> Option<(Arc<Peer>, oneshot::Receiver<()>)> {
        let mut open = self.lock();
        if open.len() >= max && !open.shed_oldest() {
            return None;
        }
        let id = open.next_id;
        open.next_id += 1;
        let (shed, shed_rx) = oneshot::channel();
        if in_request {
            open.in_request.insert(id, shed);
        } else {
            open.idle.insert(id, shed);
        }
        drop(open);
        let peer = Arc::new(Peer {
            id,
            registry: self.clone(),
            authenticated: AtomicBool::new(false),
            token: Mutex::new(None),
        });
        Some((peer, shed_rx))
    }
}

/// A warning that is logged at most every [`WARN_EVERY`], with how often it was suppressed.
struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn new() -> Throttled {
        Throttled {
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, what: impl FnOnce() -> String) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        let more = match std::mem::take(&mut self.suppressed) {
            0 => String::new(),
            n => format!(" ({n} more times since the last warning)"),
        };
        tracing::warn!("{}{more}", what());
        self.last = Some(now);
    }
}

/// Serves `router` on `listener` until `shutdown` becomes true; then stops accepting, lets
/// open connections finish their requests for up to `drain`, and returns.
/// With `tls`, every connection speaks TLS.
pub(crate) async fn serve(
    listener: TcpListener,
    gateway: Arc<HttpGateway>,
    router: Router,
    options: ConnectionOptions,
    tls: Option<ServerTls>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) -> io::Result<()> {
    let registry = Arc::new(Registry::default());
    // So that arming each connection's header timer does not wake the runtime and cut its
    // spin short (spin.rs): a timer due within half the header timeout, at most a second.
    let _kept =
        keep_a_timer_due((options.header_timeout / 2).clamp(KEPT_TIMER_MIN, KEPT_TIMER_MAX));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(CONNECTION_BUFFER)
        .max_header_size(MAX_HEADER_BYTES);
    let mut out_of_fds = Throttled::new();
    let mut full = Throttled::new();
    loop {
        tokio::select! {
            () = registry.closing_below_cap() => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_out_of_descriptors(&e) => {
                    let shed = registry.lock().shed_oldest();
                    out_of_fds.warn(|| format!(
                        "cannot accept a connection: {e}; {}; raise the open-file limit \
                         (ulimit -n, LimitNOFILE=) or lower --max-connections",
                        if shed { "closed the oldest unauthenticated connection" }
                        else { "every open connection is authenticated" }
                    ));
                    tokio::time::sleep(EMFILE_PAUSE).await;
                    continue;
                }
                // The client gave up before it was accepted, or a transient error.
                Err(e) => {
                    tracing::debug!("accept failed: {e}");
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        // Under TLS the head is encrypted: every connection starts idle, and one that
        // completes its handshake and sends a request moves on as a plain one does.
        let head = tls.is_none() && has_complete_head(&stream);
        let Some((peer, shed)) = registry.admit(options.max_connections, head) else {
            full.warn(|| {
                format!(
                    "{} authenticated connections are open, the most allowed \
                     (--max-connections); refusing new ones",
                    options.max_connections
                )
            });
            // A TLS client could not read a plain answer: closing is all it gets.
            if tls.is_none() {
                refuse(stream, options.max_connections);
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            Serving {
                http: http.clone(),
                gateway: gateway.clone(),
                router: router.clone(),
                tls: tls.clone(),
                header_timeout: options.header_timeout,
                body_timeout: options.body_timeout,
            },
            peer,
            shed,
            shutdown.clone(),
        ));
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + drain;
    loop {
        let closed = registry.closed.notified();
        if registry.len() == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, closed).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Makes closing `socket` send a reset instead of a FIN (`SO_LINGER` 0), for a connection
/// shed under a flood: there is nothing to deliver to it, and a graceful close would leave a
/// TIME_WAIT entry per shed connection on the gateway's side. Tens of thousands of those
/// collide with the ephemeral ports of new connections from the same address, whose SYNs
/// then wait a second for a retransmission; a reset leaves nothing behind.
fn reset_on_close(socket: std::os::fd::RawFd) {
    set_reset_on_close(socket, true);
}

/// Turns [`reset_on_close`] on or off (`SO_LINGER` 0, or the default graceful close).
fn set_reset_on_close(socket: std::os::fd::RawFd, reset: bool) {
    use nix::libc;
    let linger = libc::linger {
        l_onoff: i32::from(reset),
        l_linger: 0,
    };
    // SAFETY: `socket` is the descriptor of the connection's stream, which the caller (or a
    // future the caller holds) still owns, not yet dropped, and `linger` is a valid `struct linger` for the call.
    let done = unsafe {
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if done != 0 {
        tracing::debug!(
            "cannot set SO_LINGER on a shed connection: {}",
            io::Error::last_os_error()
        );
    }
}

/// Whether a complete request head (up to [`PEEKED_HEAD`] bytes) is already waiting on a
/// connection just accepted, read without taking it from the socket.
///
/// Under a flood, connections are shed oldest first, and an accepted connection may be
/// shed before its task first reads it. An agent's request is in the socket by the time the
/// connection leaves the accept queue; a slowloris's head never completes. So this is decided
/// here, at accept, rather than when the connection's task gets to it.
fn has_complete_head(stream: &TcpStream) -> bool {
    use nix::libc;
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; PEEKED_HEAD];
    // SAFETY: `buf` is valid for writes of its length for the whole call, and the descriptor
    // is the stream's own, open while it is borrowed. (tokio's `peek` would wait for the
    // reactor to have seen the socket readable, which it has not yet.)
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    let Ok(n) = usize::try_from(n) else {
        return false;
    };
    buf[..n].windows(4).any(|w| w == b"\r\n\r\n")
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == nix::libc::EMFILE || code == nix::libc::ENFILE
    )
}

/// Answers a connection there is no room for with 503, without waiting for it, and closes
/// it.
fn refuse(stream: TcpStream, max: usize) {
    let text = format!(
        "all {max} connections this gateway allows are open and authenticated \
         (--max-connections); try again later\n"
    );
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    // A fresh socket's send buffer takes this at once; if not, closing is answer enough.
    // (Written on the plain socket: tokio's `try_write` would wait for the reactor to have
    // seen the socket writable.)
    if let Ok(stream) = stream.into_std() {
        let _ = std::io::Write::write(&mut &stream, reply.as_bytes());
    }
}

/// What every connection of one listener is served with.
struct Serving {
    http: hyper::server::conn::http1::Builder,
    /// Answers `/mcp/{name}` itself ([`HttpGateway::mcp_request`]).
    gateway: Arc<HttpGateway>,
    /// Answers every other path.
    router: Router,
    tls: Option<ServerTls>,
    header_timeout: Duration,
    body_timeout: Duration,
}

async fn connection(
    mut stream: TcpStream,
    serving: Serving,
    peer: Arc<Peer>,
    mut shed: oneshot::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let socket = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let Some(tls) = serving.tls.clone() else {
        drive(TokioIo::new(stream), socket, serving, peer, shed, shutdown).await;
        return;
    };
    // The handshake is part of the request head's time: a client that does not finish it
    // within the header deadline is dropped, and until then it is idle and unauthenticated.
    // The handshake future owns the socket, and whichever way it is dropped (deadline,
    // shed, stopping) the socket closes with it: reset, as a shed connection is, unless the
    // handshake completes.
    set_reset_on_close(socket, true);
    let handshake = async {
        match tls::sniff(&mut stream).await {
            tls::Sniffed::Tls => tls.acceptor().accept(stream).await.ok(),
            tls::Sniffed::Plain => {
                // The answer must reach the client: a graceful close.
                set_reset_on_close(socket, false);
                tls::refuse_plain(&mut stream).await;
                None
            }
            tls::Sniffed::Gone => None,
        }
    };
    let secured = tokio::select! {
        done = tokio::time::timeout(serving.header_timeout, handshake) => match done {
            Ok(Some(secured)) => secured,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!("a TLS handshake did not finish within the header deadline");
                return;
            }
        },
        Ok(()) = &mut shed => return,
        _ = shutdown.wait_for(|stop| *stop) => return,
    };
    set_reset_on_close(socket, false);
    drive(TokioIo::new(secured), socket, serving, peer, shed, shutdown).await;
}

/// Serves HTTP/1.1 (upgrades included: `/control`'s websocket) on an open connection until
/// it ends, is shed, or the gateway stops.
async fn drive<I>(
    io: I,
    socket: std::os::fd::RawFd,
    serving: Serving,
    peer: Arc<Peer>,
    shed: oneshot::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let Serving {
        http,
        gateway,
        router,
        body_timeout,
        ..
    } = serving;
    let service_peer = peer.clone();
    let service = hyper::service::service_fn(move |req| {
        request(
            gateway.clone(),
            router.clone(),
            service_peer.clone(),
            body_timeout,
            req,
        )
    });
    let conn = http.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let stopping = tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("connection ended: {e}");
            }
            false
        }
        // Shed for a newcomer: reset, then dropping the connection closes it.
        Ok(()) = shed => {
            reset_on_close(socket);
            false
        }
        _ = shutdown.wait_for(|stop| *stop) => true,
    };
    if stopping {
        // Requests under way finish (within the drain the accept loop allows); an idle
        // connection closes now.
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
    drop(peer);
}

/// One request: the connection attached for the handlers, the body under its deadline.
/// An MCP endpoint's request goes straight to its handler; any other through axum's router.
async fn request(
    gateway: Arc<HttpGateway>,
    router: Router,
    peer: Arc<Peer>,
    body_timeout: Duration,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let late = Arc::new(AtomicBool::new(false));
    let (mut parts, body) = req.into_parts();
    peer.in_request(true);
    let answered = peer.clone();
    let body = DeadlineBody {
        inner: body,
        timeout: body_timeout,
        timer: None,
        late: late.clone(),
    };
    let response = match super::plain_mcp_name(parts.uri.path()) {
        // The body as it is, not boxed: read by the handler's own type.
        Some(name) => gateway.mcp_request(name, peer, &parts, body).await,
        None => {
            parts.extensions.insert(peer);
            let request = Request::from_parts(parts, Body::new(body));
            let Ok(response) = router.oneshot(request).await;
            response
        }
    };
    answered.in_request(false);
    if late.load(Ordering::Relaxed) {
        return Ok(body_too_slow(body_timeout));
    }
    Ok(response)
}

fn body_too_slow(body_timeout: Duration) -> Response<Body> {
    let mut response = (
        StatusCode::REQUEST_TIMEOUT,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!(
            "the request body did not arrive within {} s of its headers; send it at once \
             (the gateway's --body-timeout sets this deadline)\n",
            body_timeout.as_secs_f64()
        ),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Incoming,
    /// How long the body may take, counted from the first time it is asked for and is not
    /// all there (the handler asks as soon as it has the head).
    timeout: Duration,
    /// Set the first time the body is not there yet: most bodies come with their head, and
    /// their request then neither reads the clock nor registers a timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    late: Arc<AtomicBool>,
}

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTooSlow;

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_ready() {
            self.late.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyTooSlow.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_that_fits_is_kept() {
        let plan = plan(1 << 20, 20, 1024, 512);
        assert_eq!(
            plan,
            Plan {
                max_connections: 1024,
                max_sessions: 512,
                lowered: false
            }
        );
    }

    #[test]
    fn a_small_limit_lowers_both_caps_and_keeps_the_reserve() {
        let plan = plan(1024, 30, 1024, 512);
        assert!(plan.lowered);
        let used = plan.max_connections as u64 + FDS_PER_SESSION * plan.max_sessions as u64;
        assert!(used + FD_RESERVE + 30 <= 1024, "{plan:?}");
        assert!(
            plan.max_connections >= 200 && plan.max_sessions >= 100,
            "{plan:?}"
        );
    }

    #[test]
    fn the_oldest_unauthenticated_connection_is_shed_first() {
        let registry = Arc::new(Registry::default());
        let (first, mut first_shed) = registry.admit(3, false).unwrap();
        let (second, mut second_shed) = registry.admit(3, false).unwrap();
        let (third, mut third_shed) = registry.admit(3, false).unwrap();
        first.authenticated();
        let (_fourth, _) = registry.admit(3, false).unwrap();
        assert!(
            first_shed.try_recv().is_err(),
            "an authenticated one was shed"
        );
        assert_eq!(second_shed.try_recv(), Ok(()));
        assert!(third_shed.try_recv().is_err());
        drop((second, third));
    }

    #[test]
    fn a_connection_with_a_request_under_way_is_shed_after_idle_ones_and_counts_once() {
        let registry = Arc::new(Registry::default());
        let (agent, mut agent_shed) = registry.admit(3, false).unwrap();
        let (idle, mut idle_shed) = registry.admit(3, false).unwrap();
        let (_other, mut other_shed) = registry.admit(3, false).unwrap();
        agent.in_request(true);
        assert_eq!(registry.len(), 3);
        // The agent's connection is the oldest, but a request head has arrived on it.
        let (_new, _) = registry.admit(3, false).unwrap();
        assert_eq!(idle_shed.try_recv(), Ok(()));
        assert!(agent_shed.try_recv().is_err());
        drop(idle);
        // Answered without a valid token: idle again, and the oldest.
        agent.in_request(false);
        let (_newer, _) = registry.admit(3, false).unwrap();
        assert_eq!(agent_shed.try_recv(), Ok(()));
        assert!(other_shed.try_recv().is_err());
        // Shed already: authenticating later does not bring it back.
        agent.authenticated();
        drop(agent);
        assert_eq!(registry.len(), 3);
    }

    #[tokio::test]
    async fn a_complete_head_is_seen_at_accept_and_a_slowloris_head_is_not() {
        use tokio::io::AsyncWriteExt;
        let listener = crate::listen::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        for (sent, complete) in [
            (&b"POST /mcp/t HTTP/1.1\r\nHost: x\r\n\r\n{}"[..], true),
            (
                &b"POST /mcp/t HTTP/1.1\r\nHost: x\r\nContent-Type: app"[..],
                false,
            ),
            (&b""[..], false),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(sent).await.unwrap();
            client.flush().await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            // Loopback delivers a write before `write_all` returns; give it a moment anyway.
            let deadline = Instant::now() + Duration::from_secs(2);
            while complete && !has_complete_head(&accepted) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(has_complete_head(&accepted), complete, "{sent:?}");
            // Peeking takes nothing from the socket.
            assert_eq!(has_complete_head(&accepted), complete, "{sent:?}");
        }
    }

    #[tokio::test]
    async fn shed_connections_count_as_closing_until_dropped_and_the_accept_loop_waits_for_them() {
        let registry = Arc::new(Registry::default());
        let mut shed = Vec::new();
        for _ in 0..MAX_CLOSING {
            shed.push(registry.admit(1, false).unwrap());
        }
        // Each admission at the cap of 1 shed the one before it; the last is open.
        assert_eq!(registry.lock().closing, MAX_CLOSING - 1);
        assert_eq!(registry.len(), 1);
        let (open, _) = registry.admit(1, false).unwrap();
        assert_eq!(registry.lock().closing, MAX_CLOSING);
        let waiting = registry.closing_below_cap();
        tokio::pin!(waiting);
        let early = tokio::time::timeout(Duration::from_millis(20), &mut waiting).await;
        assert!(early.is_err(), "the accept loop did not wait");
        // One shed connection closes: the loop goes on.
        drop(shed.remove(0));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the accept loop went on once a shed connection closed");
        assert_eq!(registry.lock().closing, MAX_CLOSING - 1);
        drop(shed);
        assert_eq!(registry.lock().closing, 0);
        assert_eq!(registry.len(), 1);
        drop(open);
    }

    #[test]
    fn when_every_connection_is_authenticated_the_newcomer_is_refused() {
        let registry = Arc::new(Registry::default());
        let (a, _a) = registry.admit(2, false).unwrap();
        let (b, _b) = registry.admit(2, false).unwrap();
        a.authenticated();
        b.authenticated();
        assert!(registry.admit(2, false).is_none());
        drop(a);
        assert_eq!(registry.len(), 1);
        assert!(registry.admit(2, false).is_some());
    }
}
