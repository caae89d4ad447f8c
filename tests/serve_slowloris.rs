//! `toolgate serve` against slow, idle and unauthenticated connections, with the built binary
//! on loopback: deadlines for headers and bodies, the connection cap that sheds the
//! unauthenticated first, and a slowloris flood (1,100 half-sent requests, kept up as the
//! gateway closes them) against a gateway started at a 1,024 open-file limit, while a real
//! agent's requests are answered, each within a second, and policy and grants reloads apply.

#[path = "serve_support/running.rs"]
mod running;
#[path = "serve_support/trivial.rs"]
mod trivial;

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use running::{Reply, Serve, Setup, add_grant, initialize, read_reply, soft_nofile, with_nofile};
use serde_json::json;
use support::ANSWER_WITHIN;
use support::agent::{Agent, text};
use support::peers::peer;
use support::wait::{wait_for, wait_until};

/// Half-sent requests the flood keeps open.
const FLOOD_SOCKETS: usize = 1_100;
const FLOOD_THREADS: usize = 4;
/// Most connections the flood makes in all.
const FLOOD_MAX_CONNECTS: usize = 40_000;
/// Longest the flood runs.
const FLOOD_MAX_TIME: Duration = Duration::from_secs(120);
/// How often each flooding thread reopens what the gateway closed.
const FLOOD_SWEEP: Duration = Duration::from_millis(100);
/// The bound on each of the agent's requests during the flood: a correctness deadline
/// (issue 14), generous for a loaded CI machine, not a benchmark.
const EACH_WITHIN: Duration = Duration::from_secs(1);
/// How long a policy or grants edit may take to apply (debounce plus slack for CI).
const RELOAD_WITHIN: Duration = Duration::from_secs(20);
/// The open-file limit the flooded gateway runs with.
const GATEWAY_NOFILE: u64 = 1024;

/// A request cut off in its headers, as a slowloris client leaves it.
const HALF_REQUEST: &[u8] =
    b"POST /mcp/time HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/js";

const POLICY: &str = r#"{"version": "1", "default": "allow"}"#;
const POLICY_RELOADED: &str = r#"{"version": "1", "default": "allow",
  "tools": {"get_current_time": {"action": "deny", "reason": "reloaded under the flood"}}}"#;

/// The flood's threads and counters.
struct Flood {
    stop: Arc<AtomicBool>,
    connects: Arc<AtomicUsize>,
    closed_by_gateway: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Flood {
    /// Opens [`FLOOD_SOCKETS`] half-sent requests to `addr` and reopens each one the gateway
    /// closes, until stopped (or its count or time bound is reached).
    fn start(addr: SocketAddr) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let connects = Arc::new(AtomicUsize::new(0));
        let closed_by_gateway = Arc::new(AtomicUsize::new(0));
        let threads = (0..FLOOD_THREADS)
            .map(|_| {
                let (stop, connects, closed) =
                    (stop.clone(), connects.clone(), closed_by_gateway.clone());
                std::thread::spawn(move || {
                    let began = Instant::now();
                    let mut sockets: Vec<Option<TcpStream>> =
                        (0..FLOOD_SOCKETS / FLOOD_THREADS).map(|_| None).collect();
                    while !stop.load(Ordering::SeqCst) && began.elapsed() < FLOOD_MAX_TIME {
                        for slot in sockets.iter_mut() {
                            if let Some(socket) = slot
                                && closed_by_peer(socket)
                            {
                                closed.fetch_add(1, Ordering::SeqCst);
                                *slot = None;
                            }
                            if slot.is_none()
                                && connects.fetch_add(1, Ordering::SeqCst) < FLOOD_MAX_CONNECTS
                            {
                                *slot = half_request(addr);
                            }
                        }
                        std::thread::sleep(FLOOD_SWEEP);
                    }
                })
            })
            .collect();
        Flood {
            stop,
            connects,
            closed_by_gateway,
            threads,
        }
    }

    /// Stops the flood; returns (connections made, connections the gateway closed).
    fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("a flooding thread panicked");
        }
        (
            self.connects.load(Ordering::SeqCst).min(FLOOD_MAX_CONNECTS),
            self.closed_by_gateway.load(Ordering::SeqCst),
        )
    }
}

/// A new connection with half a request sent, not waiting for anything.
fn half_request(addr: SocketAddr) -> Option<TcpStream> {
    let mut socket = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    socket.write_all(HALF_REQUEST).ok()?;
    socket.set_nonblocking(true).ok()?;
    Some(socket)
}

/// Whether the gateway closed (or answered) this half-sent request.
fn closed_by_peer(socket: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    !matches!(socket.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// Raises this test process's own open-file limit: the flood needs more than 1,024.
fn raise_own_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let needed = FLOOD_SOCKETS as u64 + 512;
    assert!(
        hard >= needed,
        "the flood needs {needed} descriptors in the test process; the hard limit is {hard}"
    );
    if soft < needed {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

/// Runs `request`, failing if it takes longer than [`EACH_WITHIN`].
fn within_a_second<T>(what: &str, request: impl FnOnce() -> T) -> (T, Duration) {
    let began = Instant::now();
    let out = request();
    let took = began.elapsed();
    assert!(took < EACH_WITHIN, "{what} took {took:?} during the flood");
    (out, took)
}

/// Opens a session on the trivial upstream with a new connection, and ends it.
fn new_session(serve: &Serve, token: &str) -> Reply {
    let opened = serve.post("t", token, None, &initialize());
    if let Some(session) = opened.header("mcp-session-id") {
        let auth = format!("Bearer {token}");
        serve.http(
            "DELETE",
            "/mcp/t",
            &[("Authorization", &auth), ("Mcp-Session-Id", session)],
            "",
        );
    }
    opened
}

#[test]
fn a_slowloris_flood_at_a_1024_file_limit_leaves_agents_answered_within_a_second_and_reloads_working()
 {
    raise_own_limit();
    let (upstream, _seen) = trivial::start(false);
    let serve = Serve::start(Setup {
        policy: POLICY,
        servers: json!({
            "time": { "command": peer(".venv/bin/mcp-server-time") },
            "t": { "url": format!("http://{upstream}/mcp") },
        }),
        grants: &["agent"],
        nofile: Some((GATEWAY_NOFILE, GATEWAY_NOFILE)),
        ..Setup::default()
    });
    let token = serve.tokens[0].clone();
    assert!(
        serve.log().contains("open-file limit 1024"),
        "the gateway did not report its limit; log:\n{}",
        serve.log()
    );
    let mut agent = Agent::http("legacy", &serve.url("time"), &token);
    let first = agent.call("get_current_time", json!({"timezone": "UTC"}));
    assert_eq!(first["is_error"], false, "{first}");

    let flood = Flood::start(serve.addr);
    wait_until("the flood to build up", ANSWER_WITHIN, || {
        flood.connects.load(Ordering::SeqCst) >= FLOOD_SOCKETS
            && flood.closed_by_gateway.load(Ordering::SeqCst) > 0
    });

    let (mut peak_fds, mut peak_rss, mut slowest) = (0, 0, Duration::ZERO);
    let mut sample = |serve: &Serve, took: Duration| {
        peak_fds = peak_fds.max(serve.open_fds());
        peak_rss = peak_rss.max(serve.rss_kib());
        slowest = slowest.max(took);
    };
    // Long enough for kept-alive connections to be closed as idle and reopened through the
    // flood.
    for i in 0..20 {
        let (answer, took) = within_a_second(&format!("the agent's call {i}"), || {
            agent.call("get_current_time", json!({"timezone": "UTC"}))
        });
        assert_eq!(answer["is_error"], false, "{answer}");
        sample(&serve, took);
        let (opened, took) =
            within_a_second(&format!("new session {i}"), || new_session(&serve, &token));
        assert_eq!(opened.status, 200, "{}", opened.body);
        sample(&serve, took);
        std::thread::sleep(Duration::from_millis(300));
    }

    // A policy edit applies during the flood.
    std::fs::write(serve.dir.path().join("policy.json"), POLICY_RELOADED).unwrap();
    let deadline = Instant::now() + RELOAD_WITHIN;
    loop {
        let (answer, took) = within_a_second("a call after the policy edit", || {
            agent.call("get_current_time", json!({"timezone": "UTC"}))
        });
        sample(&serve, took);
        if answer["is_error"] == true {
            assert!(
                text(&answer).contains("reloaded under the flood"),
                "{answer}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the policy edit did not apply; log:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // So does a new grant.
    let late = add_grant(serve.dir.path(), "late");
    let deadline = Instant::now() + RELOAD_WITHIN;
    loop {
        let (opened, took) =
            within_a_second("a request with a new grant", || new_session(&serve, &late));
        sample(&serve, took);
        if opened.status == 200 {
            break;
        }
        assert_eq!(opened.status, 401, "{}", opened.body);
        assert!(
            Instant::now() < deadline,
            "the new grant did not apply; log:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (connects, closed) = flood.stop();
    agent.close();

    let log = serve.log();
    assert!(
        !log.contains("Too many open files") && !log.contains("os error 24"),
        "the gateway ran out of descriptors; log:\n{log}"
    );
    assert!(closed > 0 && connects >= FLOOD_SOCKETS);
    eprintln!(
        "slowloris flood: {FLOOD_SOCKETS} half-sent requests kept up, {connects} connections \
         made, {closed} closed by the gateway; gateway at nofile {GATEWAY_NOFILE}: peak VmRSS \
         {peak_rss} KiB, peak {peak_fds} descriptors; slowest agent request {slowest:?}"
    );
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let (upstream, _seen) = trivial::start(false);
    let serve = Serve::start(Setup {
        policy: POLICY,
        servers: json!({ "t": { "url": format!("http://{upstream}/mcp") } }),
        grants: &["ci"],
        extra: &["--header-timeout", "1"],
        ..Setup::default()
    });
    let mut slow = TcpStream::connect(serve.addr).unwrap();
    slow.write_all(HALF_REQUEST).unwrap();
    // Shorter than hyper's own default (30 s), so only the flag's deadline can pass this.
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    // Without the deadline the gateway would wait for the rest and this read would time
    // out as an error.
    match slow.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

/// The header deadline also runs between the requests of a kept-alive connection: it starts
/// again at the end of each answer, so requests each sent within it keep the connection open
/// past it, and a next head cut off is disconnected.
#[test]
fn a_kept_alive_connection_whose_next_head_does_not_come_is_disconnected() {
    let (upstream, _seen) = trivial::start(false);
    let serve = Serve::start(Setup {
        policy: POLICY,
        servers: json!({ "t": { "url": format!("http://{upstream}/mcp") } }),
        grants: &["ci"],
        extra: &["--header-timeout", "2"],
        ..Setup::default()
    });
    let token = serve.tokens[0].clone();
    let mut agent = TcpStream::connect(serve.addr).unwrap();
    agent.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    // Four requests 0.8 s apart: 3.2 s on one connection, each head well within the 2 s.
    for i in 0..4 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(800));
        }
        assert_eq!(
            keep_alive_request(&serve, &mut agent, &token),
            200,
            "request {i}"
        );
    }
    // Then half a head, and nothing more.
    agent.write_all(HALF_REQUEST).unwrap();
    // Shorter than hyper's own default (30 s), so only the flag's deadline can pass this.
    agent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    match agent.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest)),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_answered_408_naming_the_flag() {
    let (upstream, _seen) = trivial::start(false);
    let serve = Serve::start(Setup {
        policy: POLICY,
        servers: json!({ "t": { "url": format!("http://{upstream}/mcp") } }),
        grants: &["ci"],
        extra: &["--body-timeout", "1"],
        ..Setup::default()
    });
    let mut slow = TcpStream::connect(serve.addr).unwrap();
    slow.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    let head = format!(
        "POST /mcp/t HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"jsonrpc\":",
        serve.tokens[0]
    );
    slow.write_all(head.as_bytes()).unwrap();
    let reply = read_reply(&mut slow);
    assert_eq!(reply.status, 408, "{reply:?}");
    assert!(reply.body.contains("--body-timeout"), "{}", reply.body);
}

/// A request on a kept-alive connection; reads its answer by `Content-Length` and leaves the
/// connection open.
fn keep_alive_request(serve: &Serve, stream: &mut TcpStream, token: &str) -> u16 {
    let body = initialize().to_string();
    let req = format!(
        "POST /mcp/t HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream
            .read_exact(&mut byte)
            .unwrap_or_else(|e| panic!("no answer ({e}); log:\n{}", serve.log()));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn at_the_connection_cap_the_unauthenticated_are_shed_first_and_then_newcomers_refused() {
    let (upstream, _seen) = trivial::start(false);
    let serve = Serve::start(Setup {
        policy: POLICY,
        servers: json!({ "t": { "url": format!("http://{upstream}/mcp") } }),
        grants: &["ci"],
        extra: &["--max-connections", "3", "--header-timeout", "60"],
        ..Setup::default()
    });
    let token = serve.tokens[0].clone();
    // Three idle connections that never say anything fill the cap.
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(serve.addr).unwrap())
        .collect();
    for socket in &idle {
        socket.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    }
    // Agents still get in: each newcomer closes the oldest idle one.
    let mut agents = Vec::new();
    for (i, socket) in idle.iter_mut().enumerate() {
        let mut agent = TcpStream::connect(serve.addr).unwrap();
        agent.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
        assert_eq!(keep_alive_request(&serve, &mut agent, &token), 200);
        let mut rest = Vec::new();
        let closed = socket.read_to_end(&mut rest);
        // Shed with a reset, not a graceful close: a flood of sheds must leave no TIME_WAIT
        // entries for new connections' SYNs to run into.
        assert!(
            matches!(&closed, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "idle connection {i} was not shed with a reset: {closed:?}"
        );
        agents.push(agent);
    }
    // Every open connection is now an authenticated agent's: a newcomer is refused, saying
    // which cap.
    let mut newcomer = TcpStream::connect(serve.addr).unwrap();
    newcomer.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    let refused = read_reply(&mut newcomer);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused.body.contains("--max-connections"),
        "{}",
        refused.body
    );
    // The agents' connections still work.
    for agent in &mut agents {
        assert_eq!(keep_alive_request(&serve, agent, &token), 200);
    }
}

#[test]
fn request_headers_beyond_32_kib_are_refused_with_431() {
    let (upstream, _seen) = trivial::start(false);
    let serve = Serve::start(Setup {
        policy: POLICY,
        servers: json!({ "t": { "url": format!("http://{upstream}/mcp") } }),
        grants: &["ci"],
        ..Setup::default()
    });
    let auth = format!("Bearer {}", serve.tokens[0]);
    let pad = "x".repeat(100 * 1024);
    let reply = serve.http(
        "POST",
        "/mcp/t",
        &[("Authorization", &auth), ("X-Pad", &pad)],
        &initialize().to_string(),
    );
    assert_eq!(reply.status, 431, "{reply:?}");
}

/// Waits until process `pid` has a soft open-file limit of `want`.
fn wait_soft_nofile(pid: u32, want: u64, who: &str) {
    let what = format!("{who} to raise its soft open-file limit to the hard limit {want}");
    wait_for(&what, ANSWER_WITHIN, || match soft_nofile(pid) {
        Some(now) if now == want => Ok(()),
        now => Err(format!("it is {now:?}")),
    });
}

#[test]
fn serve_and_wrap_raise_their_open_file_limit_to_the_hard_limit() {
    let (upstream, _seen) = trivial::start(false);
    let serve = Serve::start(Setup {
        policy: POLICY,
        servers: json!({ "t": { "url": format!("http://{upstream}/mcp") } }),
        grants: &["ci"],
        nofile: Some((1024, 4096)),
        ..Setup::default()
    });
    wait_soft_nofile(serve.pid(), 4096, "serve");
    assert!(
        serve.log().contains("open-file limit 4096 (was 1024)"),
        "{}",
        serve.log()
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.json"), POLICY).unwrap();
    let mut wrap = std::process::Command::new(support::toolgate());
    wrap.args(
        support::agent::wrap(dir.path(), "ci", &["--no-events"], vec!["cat".into()])[1..].iter(),
    )
    .env("XDG_RUNTIME_DIR", dir.path())
    .env("XDG_STATE_HOME", dir.path())
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    with_nofile(&mut wrap, 1024, 4096);
    let mut wrap = wrap.spawn().unwrap();
    wait_soft_nofile(wrap.id(), 4096, "wrap");
    let _ = wrap.kill();
    let _ = wrap.wait();
}
