//! The HTTP/1.1 connections one upstream session ([`super::remote`]) keeps open to its URL
//! server, and the requests sent over them.
//!
//! Every request of a session goes to the same origin, so most of what a general client
//! does per request is spent for nothing: reqwest parses the URL again, asks its proxy
//! matcher, checks a connection out of a pool keyed by origin (with its own locks, timer
//! and task), and converts the request and response between its types and hyper's. Here a
//! plain `http://` URL is read once, when the session starts, and its requests go straight
//! to an HTTP/1.1 connection of the session's own ([`super::upstream_conn`]: the request
//! written in one piece, the answer's head parsed by `httparse`, its body framed strictly):
//! idle ones are reused (a request that an idle connection, closed by the server meanwhile,
//! did not take a byte of is tried on the next one), a new one is opened when none is idle
//! (`TCP_NODELAY`, within [`CONNECT_WITHIN`]), and a connection goes back to the idle list
//! once its answer has been read to the end (and could carry another), while the process
//! keeps fewer than [`MAX_IDLE`] idle ones in all. Nothing is followed: a redirect is an
//! answer like any other.
//!
//! A connection has no task of its own: the request using it writes it and reads its answer,
//! so nothing crosses a task boundary. An idle connection is read by no one: a close by the
//! server meanwhile is seen when it is next taken (what the runtime saw come on it).
//!
//! What this path does not do goes through reqwest, as every request did before: a URL the
//! environment's proxy settings (`HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`) send through a
//! proxy, one with credentials in it, one that does not parse as a plain `http://` URL.
//! `https://` upstreams are refused when SERVERS.json is read (this build speaks no TLS to
//! upstreams, through either path).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use bytes::Bytes;
use hyper_util::client::proxy::matcher::Matcher;

use super::upstream_conn::{self, Body, Connection, WriteFailed};

use crate::sync::lock;

/// How long opening a connection to the upstream may take (reqwest's `connect_timeout`
/// before).
pub(crate) const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// Idle connections kept by all upstream sessions of the process together; more are closed
/// when their answer ends. Each is a descriptor, and sessions are many (`--max-sessions`):
/// kept per session without a common cap, a grant could leave thousands open. (Connections
/// in use are bounded by the requests in flight, that is by the agents' connections.)
const MAX_IDLE: usize = 64;
/// How many connections are idle now, in every session.
static IDLE: AtomicUsize = AtomicUsize::new(0);
/// An idle connection older than this is closed rather than reused (reqwest's default).
const IDLE_FOR: Duration = Duration::from_secs(90);

/// One upstream session's way to its URL server.
pub(crate) struct Upstream {
    route: Route,
}

enum Route {
    /// Straight to the server over connections of this session's own.
    Direct(Arc<Direct>),
    /// Through reqwest (a proxy from the environment, credentials in the URL...).
    General {
        client: reqwest::Client,
        /// The URL, parsed once (`None`: it does not parse, and each request says so).
        url: Option<reqwest::Url>,
        text: String,
    },
}

struct Direct {
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header: the URL's authority.
    host: HeaderValue,
    /// The request target: the URL's path and query.
    target: String,
    idle: Mutex<Vec<Idle>>,
}

/// A connection in an idle list, counted in [`IDLE`] while it is there.
struct Idle {
    /// Taken out when the connection is used again.
    conn: Option<Connection>,
    since: Instant,
}

impl Idle {
    /// Takes a place under [`MAX_IDLE`], if one is left.
    fn new(conn: Connection) -> Option<Idle> {
        IDLE.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_IDLE).then_some(n + 1)
        })
        .ok()?;
        Some(Idle {
            conn: Some(conn),
            since: Instant::now(),
        })
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        IDLE.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Upstream {
    /// The way to `url`: straight to it when it is a plain `http://` URL that no proxy
    /// setting of the environment applies to, else through `client`.
    pub(crate) fn new(url: &str, client: reqwest::Client) -> Upstream {
        let proxies = Matcher::from_system();
        let route = match Direct::for_url(url, &proxies) {
            Some(direct) => Route::Direct(Arc::new(direct)),
            None => Route::General {
                client,
                url: reqwest::Url::parse(url).ok(),
                text: url.to_owned(),
            },
        };
        Upstream { route }
    }

    /// Whether requests go over this session's own connections (not through reqwest).
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        matches!(self.route, Route::Direct(_))
    }

    /// Sends one request; `Err` says why no answer came (in words for the agent).
    pub(crate) async fn send(
        &self,
        method: Method,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Answer, String> {
        match &self.route {
            Route::Direct(direct) => direct.send(method, headers, body).await,
            // reqwest's future is large and this route rare: boxed, so that every request's
            // future (moved into `remote`'s set of requests in flight) stays small.
            Route::General { client, url, text } => {
                let req = match url {
                    Some(url) => client.request(method, url.clone()),
                    None => client.request(method, text.as_str()),
                };
                Box::pin(general_send(req.headers(headers).body(body))).await
            }
        }
    }
}

/// Sends a request through reqwest.
async fn general_send(req: reqwest::RequestBuilder) -> Result<Answer, String> {
    let resp = req
        .send()
        .await
        .map_err(|e| format!("cannot reach the MCP server: {e}"))?;
    Ok(Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: AnswerBody::General(resp),
    })
}

impl Direct {
    /// `None` unless `url` is a plain `http://` URL that `proxies` leave alone.
    fn for_url(url: &str, proxies: &Matcher) -> Option<Direct> {
        let uri: Uri = url.parse().ok()?;
        if uri.scheme_str() != Some("http") {
            return None;
        }
        let authority = uri.authority()?;
        // Credentials in the URL: reqwest turns them into a Basic header.
        if authority.as_str().contains('@') {
            return None;
        }
        if proxies.intercept(&uri).is_some() {
            return None;
        }
        let port = authority.port_u16().unwrap_or(80);
        let address = format!("{}:{port}", authority.host());
        let host = HeaderValue::from_str(authority.as_str()).ok()?;
        let target = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        Some(Direct {
            address,
            host,
            target,
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn send(
        self: &Arc<Self>,
        method: Method,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Answer, String> {
        let request = upstream_conn::request(&method, &self.target, &self.host, &headers, &body);
        let unreachable = |e: String| format!("cannot reach the MCP server: {e}");
        loop {
            let (mut conn, fresh) = match self.take_idle() {
                Some(conn) => (conn, false),
                // Boxed: opening a connection is rare once the session runs, and its
                // future (resolving, connecting) would otherwise make every request's larger.
                None => (Box::pin(self.connect()).await?, true),
            };
            match conn.write(&request).await {
                Ok(()) => {}
                // Not one byte taken: an idle connection the server had closed.
                Err(WriteFailed::Untaken(_)) if !fresh => continue,
                Err(WriteFailed::Untaken(e) | WriteFailed::PartWay(e)) => {
                    return Err(unreachable(e));
                }
            }
            // Its errors say what was wrong with the answer, or that none came.
            let head = conn.head(&method).await?;
            return Ok(Answer {
                status: head.status,
                headers: head.headers,
                body: AnswerBody::Direct {
                    body: head.body,
                    connection: Some((conn, self.clone())),
                },
            });
        }
    }

    /// An idle connection still open, if any.
    fn take_idle(&self) -> Option<Connection> {
        let mut idle = lock(&self.idle);
        while let Some(mut entry) = idle.pop() {
            let recent = entry.since.elapsed() < IDLE_FOR;
            if let Some(mut conn) = entry.conn.take()
                && recent
                && conn.idle_and_open()
            {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection whose answer was read to the end for the next request.
    fn put_back(&self, conn: Connection) {
        if let Some(idle) = Idle::new(conn) {
            lock(&self.idle).push(idle);
        }
    }

    async fn connect(&self) -> Result<Connection, String> {
        let stream = tokio::time::timeout(
            CONNECT_WITHIN,
            tokio::net::TcpStream::connect(self.address.as_str()),
        )
        .await
        .map_err(|_| {
            format!(
                "cannot reach the MCP server: no connection to {} within {} s",
                self.address,
                CONNECT_WITHIN.as_secs()
            )
        })?
        .map_err(|e| format!("cannot reach the MCP server at {}: {e}", self.address))?;
        // A request is one write, but an answer must not wait for the ACK of the last one.
        let _ = stream.set_nodelay(true);
        Ok(Connection::new(stream))
    }
}

/// An upstream's answer: its head, and its body to read.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: AnswerBody,
}

enum AnswerBody {
    /// On a connection of the session's own, driven while the body is read, which goes
    /// back to it once the body ends (dropped with the answer before then: closed).
    Direct {
        body: Body,
        connection: Option<(Connection, Arc<Direct>)>,
    },
    General(reqwest::Response),
}

impl Answer {
    /// Drops an answer whose body is not wanted, without waiting for it: a connection whose
    /// body has already ended (an empty `202`) goes back to the idle list, any other is
    /// closed.
    pub(crate) fn discard(mut self) {
        if let AnswerBody::Direct { body, connection } = &mut self.body {
            give_back(body, connection);
        }
    }

    /// The next piece of the body; `None` at its end.
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        match &mut self.body {
            AnswerBody::General(resp) => resp.chunk().await.map_err(|e| e.to_string()),
            AnswerBody::Direct { body, connection } => {
                let Some((conn, _)) = connection.as_mut() else {
                    // Given back at the body's end, or closed when reading it failed: a
                    // body that failed stays failed, never a clean end.
                    return if body.is_done() {
                        Ok(None)
                    } else {
                        Err("the MCP server's answer was cut off".into())
                    };
                };
                let chunk = match conn.chunk(body).await {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        // Closed: what is left of it cannot be trusted.
                        *connection = None;
                        return Err(e);
                    }
                };
                if body.is_done() {
                    give_back(body, connection);
                }
                Ok(chunk)
            }
        }
    }
}

/// Takes an answer's connection: back to its idle list when it can carry another request,
/// else closed.
fn give_back(body: &Body, connection: &mut Option<(Connection, Arc<Direct>)>) {
    if let Some((conn, direct)) = connection.take()
        && body.reusable(&conn)
    {
        direct.put_back(conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request on a connection with `answer` (a whole HTTP
    /// response), closing the connection after each one when `close`; counts connections.
    async fn server(answer: &'static str, close: bool) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        // A request: its head, then as many body bytes as it says.
                        let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        if seen.len() < end + 4 + length {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                            continue;
                        }
                        seen.drain(..end + 4 + length);
                        if stream.write_all(answer.as_bytes()).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    const OK: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

    async fn post(upstream: &Upstream) -> (StatusCode, Vec<u8>) {
        let mut answer = upstream
            .send(Method::POST, HeaderMap::new(), Bytes::from_static(b"{}"))
            .await
            .expect("an answer");
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await.expect("the body") {
            body.extend_from_slice(&chunk);
        }
        (answer.status, body)
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_was_read() {
        let (url, accepted) = server(OK, false).await;
        let upstream = Upstream::new(&url, client());
        assert!(upstream.is_direct());
        for _ in 0..3 {
            assert_eq!(post(&upstream).await, (StatusCode::OK, b"{}".to_vec()));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// A body of many reads (far more than one read buffer), chunked or not, comes whole
    /// through a connection driven only by its reader, which is then reused.
    #[tokio::test]
    async fn a_long_answer_is_read_whole_while_its_reader_drives_the_connection() {
        let body = "x".repeat(300_000);
        let sized: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let chunks: String = body
            .as_bytes()
            .chunks(7_000)
            .map(|c| format!("{:x}\r\n{}\r\n", c.len(), String::from_utf8_lossy(c)))
            .collect();
        let chunked: &'static str = Box::leak(
            format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{chunks}0\r\n\r\n")
                .into_boxed_str(),
        );
        for answer in [sized, chunked] {
            let (url, accepted) = server(answer, false).await;
            let upstream = Upstream::new(&url, client());
            for _ in 0..3 {
                // A connection no one drives would leave the read waiting for ever.
                let (status, got) = tokio::time::timeout(Duration::from_secs(10), post(&upstream))
                    .await
                    .expect("the answer within 10 s");
                assert_eq!(status, StatusCode::OK);
                assert!(got == body.as_bytes(), "{} bytes came", got.len());
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn idle_connections_are_capped_across_sessions() {
        let (url, _) = server(OK, false).await;
        let sessions: Vec<Upstream> = (0..MAX_IDLE + 8)
            .map(|_| Upstream::new(&url, client()))
            .collect();
        for upstream in &sessions {
            post(upstream).await;
        }
        // Other tests of this process may hold places too, never more than the cap.
        assert!(IDLE.load(Ordering::SeqCst) <= MAX_IDLE);
        let kept: usize = sessions
            .iter()
            .map(|u| match &u.route {
                Route::Direct(direct) => lock(&direct.idle).len(),
                Route::General { .. } => 0,
            })
            .sum();
        assert!(kept <= MAX_IDLE, "{kept} idle connections kept");
        assert!(kept >= MAX_IDLE - 8, "only {kept} idle connections kept");
        drop(sessions);
        // Their places are given back: what is left is other tests' (a few at most).
        assert!(IDLE.load(Ordering::SeqCst) <= 8);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        let (url, accepted) = server(OK, true).await;
        let upstream = Upstream::new(&url, client());
        for _ in 0..3 {
            assert_eq!(post(&upstream).await, (StatusCode::OK, b"{}".to_vec()));
            // The close reaches the idle connection before the next request.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    /// A body cut short is an error, and asking again does not turn it into a clean end.
    #[tokio::test]
    async fn a_body_cut_short_stays_an_error() {
        let (url, _) = server("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello", true).await;
        let upstream = Upstream::new(&url, client());
        let mut answer = upstream
            .send(Method::POST, HeaderMap::new(), Bytes::from_static(b"{}"))
            .await
            .expect("a head");
        let mut got = Vec::new();
        let failed = loop {
            match answer.chunk().await {
                Ok(Some(chunk)) => got.extend_from_slice(&chunk),
                Ok(None) => panic!("a clean end after {} bytes", got.len()),
                Err(e) => break e,
            }
        };
        assert!(failed.contains("ended before its length"), "{failed}");
        let again = answer.chunk().await;
        assert!(again.is_err(), "{again:?}");
    }

    #[tokio::test]
    async fn a_redirect_is_an_answer_not_followed() {
        let (url, accepted) = server(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:1/elsewhere\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .await;
        let upstream = Upstream::new(&url, client());
        assert_eq!(
            post(&upstream).await,
            (StatusCode::TEMPORARY_REDIRECT, Vec::new())
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_an_error_that_says_so() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        drop(listener);
        let upstream = Upstream::new(&url, client());
        let Err(why) = upstream
            .send(Method::POST, HeaderMap::new(), Bytes::new())
            .await
        else {
            panic!("a closed port answered");
        };
        assert!(why.starts_with("cannot reach the MCP server"), "{why}");
    }

    fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    #[test]
    fn plain_http_urls_go_direct_and_others_through_reqwest() {
        let none = Matcher::builder().build();
        assert!(Direct::for_url("http://127.0.0.1:3001/mcp", &none).is_some());
        assert!(Direct::for_url("http://[::1]:3001/mcp?x=1", &none).is_some());
        assert!(Direct::for_url("http://user:pw@127.0.0.1:3001/mcp", &none).is_none());
        assert!(Direct::for_url("not a url", &none).is_none());
        assert!(!Upstream::new("not a url", client()).is_direct());
    }

    #[test]
    fn a_url_a_proxy_setting_applies_to_goes_through_reqwest() {
        let proxies = Matcher::builder()
            .http("http://proxy.example:3128")
            .no("localhost")
            .build();
        assert!(Direct::for_url("http://10.0.0.7:3001/mcp", &proxies).is_none());
        assert!(Direct::for_url("http://localhost:3001/mcp", &proxies).is_some());
        let none = Matcher::builder().build();
        assert!(Direct::for_url("http://10.0.0.7:3001/mcp", &none).is_some());
    }

    #[test]
    fn the_request_target_is_the_path_and_query_and_the_host_the_authority() {
        let none = Matcher::builder().build();
        let direct = Direct::for_url("http://127.0.0.1:3001/mcp/x?a=1", &none).expect("plain URL");
        assert_eq!(direct.address, "127.0.0.1:3001");
        assert_eq!(direct.host, "127.0.0.1:3001");
        assert_eq!(direct.target, "/mcp/x?a=1");
        let bare = Direct::for_url("http://localhost", &none).expect("plain URL");
        assert_eq!(bare.address, "localhost:80");
        assert_eq!(bare.target, "/");
    }
}
