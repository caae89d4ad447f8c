//! The control plane over TLS (issue 17), on loopback, with certificates from a private CA
//! made here (`tests/support/tls.rs`).
//!
//! - `events_tls/fanout_4_consoles`: events per second delivered over `wss://` to 4 clients
//!   that read each frame (decrypted) and take its `seq` from the frame's start, as cheaply
//!   as possible: they stand in for consoles in other processes, as in `benches/events.rs`,
//!   so what is measured is the gateway side, encryption included. Target: ≥ 50,000
//!   events/s.
//! - `events_tls/fanout_4_decoding_consoles`: the same with the real client
//!   ([`control::connect_with`] trusting the CA, every event decoded), all in this process,
//!   so the clients' decryption and decoding share the cores with the gateway.
//!
//! The publisher stays within half a subscriber queue of the slowest client, so both
//! measure delivery without drops.
//! - `events_tls/approval_round_trip`: `toolgate serve` (the built binary, `--tls-cert`,
//!   `--operators`) in front of a trivial upstream (`tests/serve_support/trivial.rs`, in this
//!   process); an agent's `tools/call` over https is held; an approver connected to
//!   `wss://…/control` sends `approve` when it sees the hold, and the time is taken from the
//!   moment the command is sent to the moment the upstream receives the call. Criterion's
//!   time per iteration is that latency; a `summary:` line prints the median.
//!
//! Run: `nice cargo bench -j 1 --bench events_tls`.

#[path = "../tests/support/tls.rs"]
mod tls_support;
#[path = "../tests/serve_support/trivial.rs"]
#[allow(dead_code)]
mod trivial;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group};
use serde_json::{Value, json};
use toolgate::testing::control::{
    self, Connection, ControlHandle, EventsOptions, Hub, TlsClientOptions, connect_with,
};
use toolgate::testing::tls::{ServerTls, TlsFiles};
use toolgate::testing::wire::{CallEvent, ClientMsg, EventKind, GatewayInfo, Verdict};

const CONSOLES: usize = 4;
const BATCH: u64 = 20_000;

fn new_hub() -> Arc<Hub> {
    Hub::new(GatewayInfo {
        id: "bench".into(),
        pid: std::process::id(),
        version: "bench".into(),
        grant: "ci-bot".into(),
        server: "everything".into(),
        policy: "/srv/policy.json".into(),
        started_at: Utc::now(),
    })
}

fn call(hub: &Hub) -> EventKind {
    EventKind::Call(CallEvent {
        call_id: hub.next_call_id(),
        tool: "create_api_key".into(),
        grant: "ci-bot".into(),
        session: "s-7f3e".into(),
        server: "everything".into(),
        decision: Verdict::Allow,
        rule: "/tools/create_api_key".into(),
        reason: "allowed for CI".into(),
        args: json!({"keyName": "staging", "scopes": ["read", "write"], "apiKey": "[redacted]"})
            .into(),
        args_truncated: false,
        retry_after_ms: None,
        hold_deadline: None,
        shadow: None,
    })
}

/// A console: the real client over wss, recording the seq of every event it decodes.
async fn console(url: &str, token: &str, ca: &Path) -> Arc<AtomicU64> {
    let seen = Arc::new(AtomicU64::new(0));
    let tls = TlsClientOptions {
        ca_file: Some(ca.to_owned()),
    };
    let mut conn = connect_with(url, token, &tls)
        .await
        .expect("a console connects over TLS");
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(event)) = conn.next_event().await {
            if let EventKind::Missed(m) = &event.kind {
                panic!("a console missed {} events", m.dropped);
            }
            record.store(event.seq, Ordering::Release);
        }
    });
    seen
}

/// A console that reads raw frames over TLS and records the `seq` each starts with.
async fn raw_console(addr: SocketAddr, token: &str, ca: &Path) -> Arc<AtomicU64> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("the CA");
    for cert in
        <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
            &pem,
        )
    {
        roots.add(cert.expect("a certificate")).expect("a root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        toolgate::testing::tls::ring_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("a TLS handshake");
    let mut request = format!("wss://{addr}/")
        .into_client_request()
        .expect("a URL");
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("a header"),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("a websocket");
    let seen = Arc::new(AtomicU64::new(0));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let Ok(text) = msg.to_text() else { continue };
            let Some(rest) = text.strip_prefix("{\"seq\":") else {
                continue;
            };
            assert!(
                !text.contains("\"type\":\"missed\""),
                "a console missed events"
            );
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(seq) = digits.parse() {
                record.store(seq, Ordering::Release);
            }
        }
    });
    seen
}

fn slowest(consoles: &[Arc<AtomicU64>]) -> u64 {
    consoles
        .iter()
        .map(|c| c.load(Ordering::Acquire))
        .min()
        .unwrap_or(0)
}

/// Publishes `n` events within half a queue of the slowest console, and waits for all of
/// them to arrive.
fn publish_paced(hub: &Hub, consoles: &[Arc<AtomicU64>], n: u64) {
    let window = (control::SUBSCRIBER_QUEUE / 2) as u64;
    let target = hub.latest_seq() + n;
    while hub.latest_seq() < target {
        let room = window.saturating_sub(hub.latest_seq() - slowest(consoles));
        if room == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        for _ in 0..room.min(target - hub.latest_seq()) {
            hub.publish(call(hub));
        }
    }
    while slowest(consoles) < target {
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn fanout(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = tls_support::Ca::new("bench CA").write_server(dir.path(), "gw");
    let mut group = c.benchmark_group("events_tls");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    let mut summaries = Vec::new();
    for (name, decoding) in [
        ("fanout_4_consoles", false),
        ("fanout_4_decoding_consoles", true),
    ] {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let hub = new_hub();
        let (server, consoles): (ControlHandle, Vec<_>) = runtime.block_on(async {
            let tls = ServerTls::start(TlsFiles {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
            .expect("the pair loads");
            let server = control::start(
                hub.clone(),
                EventsOptions {
                    tls: Some(tls),
                    discovery: false,
                    ..EventsOptions::default()
                },
            )
            .await
            .expect("the event websocket starts");
            let url = format!("wss://127.0.0.1:{}/", server.local_addr().port());
            let mut consoles = Vec::new();
            for _ in 0..CONSOLES {
                consoles.push(if decoding {
                    console(&url, server.token(), &files.ca).await
                } else {
                    raw_console(server.local_addr(), server.token(), &files.ca).await
                });
            }
            (server, consoles)
        });
        let mut rates = Vec::new();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let one = Instant::now();
                    publish_paced(&hub, &consoles, BATCH);
                    rates.push(BATCH as f64 / one.elapsed().as_secs_f64());
                }
                start.elapsed()
            })
        });
        drop(server);
        rates.sort_by(f64::total_cmp);
        summaries.push(format!(
            "summary: {name}: events over TLS to {CONSOLES} consoles, median {:.0} events/s \
             ({} batches of {BATCH})",
            rates[rates.len() / 2],
            rates.len()
        ));
    }
    group.finish();
    for line in summaries {
        println!("{line}");
    }
}

/// `toolgate serve` over TLS with an approver account, in front of the trivial upstream;
/// killed when dropped.
struct TlsServe {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    grant: String,
    operator: String,
    ca: PathBuf,
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(args)
        .output()
        .expect("run toolgate");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout)
        .expect("a token")
        .trim()
        .to_owned()
}

impl TlsServe {
    fn start(upstream: SocketAddr) -> TlsServe {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        let files = tls_support::Ca::new("bench CA").write_server(dir.path(), "gw");
        std::fs::write(
            path("policy.json"),
            r#"{"version":"1","default":"deny","tools":{"echo":{"action":"require_approval"}}}"#,
        )
        .expect("policy");
        std::fs::write(
            path("servers.json"),
            json!({"mcpServers": {"t": {"url": format!("http://{upstream}/mcp")}}}).to_string(),
        )
        .expect("servers");
        let grant = cli(&["grants", "add", "bench", "--file", &path("grants.json")]);
        let operator = cli(&[
            "operators",
            "add",
            "alice",
            "--role",
            "approver",
            "--file",
            &path("operators.json"),
        ]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(["serve", "--policy", &path("policy.json")])
            .args(["--servers", &path("servers.json")])
            .args(["--grants", &path("grants.json")])
            .args(["--audit", &path("audit.jsonl")])
            .args(["--operators", &path("operators.json")])
            .args(["--tls-cert", files.cert.to_str().unwrap()])
            .args(["--tls-key", files.key.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
            .args(["--counters", "memory"])
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("XDG_STATE_HOME", dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().expect("serve exited").expect("stderr");
            if let Some(addr) = line.strip_prefix("toolgate serve: listening on https://") {
                break addr.parse().expect("an address");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        TlsServe {
            child,
            dir,
            addr,
            grant,
            operator,
            ca: files.ca,
        }
    }

    /// One HTTPS request on a new connection; the answer's head and body.
    fn post(&self, session: Option<&str>, body: &Value) -> String {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&self.ca).expect("the CA");
        for cert in
            <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
                &pem,
            )
        {
            roots.add(cert.expect("a certificate")).expect("a root");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            toolgate::testing::tls::ring_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a name");
        let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("a client");
        let tcp = std::net::TcpStream::connect(self.addr).expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let body = body.to_string();
        let session = session
            .map(|s| format!("Mcp-Session-Id: {s}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST /mcp/t HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer \
             {}\r\nContent-Type: application/json\r\nAccept: application/json, \
             text/event-stream\r\n{session}Content-Length: {}\r\n\r\n{body}",
            self.addr,
            self.grant,
            body.len()
        );
        tls.write_all(request.as_bytes()).expect("send");
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// An MCP session's id.
    fn session(&self) -> String {
        let answer = self.post(
            None,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "bench", "version": "1"}}}),
        );
        let session = answer
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("mcp-session-id")
                    .then(|| v.trim().to_owned())
            })
            .expect("a session id");
        self.post(
            Some(&session),
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        );
        session
    }
}

impl Drop for TlsServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

/// One approval: a held call from the agent, `approve` sent by the approver; the time from
/// sending it to the upstream receiving the call.
async fn approval(
    gw: &Arc<TlsServe>,
    session: &str,
    approver: &mut Connection,
    seen: &trivial::Seen,
    n: u64,
) -> Duration {
    let calls_before = upstream_calls(seen);
    let agent = {
        let gw = gw.clone();
        let session = session.to_owned();
        std::thread::spawn(move || {
            gw.post(
                Some(&session),
                &json!({"jsonrpc": "2.0", "id": 100 + n, "method": "tools/call",
                        "params": {"name": "echo", "arguments": {"message": "may I"}}}),
            )
        })
    };
    let call_id = loop {
        let event = approver
            .next_event()
            .await
            .expect("the gateway stays connected")
            .expect("a valid event");
        if let EventKind::Call(call) = event.kind
            && call.decision == Verdict::Hold
        {
            break call.call_id;
        }
    };
    let sent = Instant::now();
    approver
        .send(&ClientMsg::Approve {
            id: n,
            call_id: call_id.to_string(),
            operator: None,
        })
        .await
        .expect("approve sent");
    while upstream_calls(seen) == calls_before {
        std::hint::spin_loop();
        tokio::task::yield_now().await;
    }
    let latency = sent.elapsed();
    let answer = agent.join().expect("the agent's thread");
    assert!(answer.contains("\"text\":\"may I\""), "{answer}");
    latency
}

fn upstream_calls(seen: &trivial::Seen) -> usize {
    seen.methods
        .lock()
        .expect("the upstream's record")
        .iter()
        .filter(|m| *m == "tools/call")
        .count()
}

fn approval_round_trip(c: &mut Criterion) {
    let (upstream, seen) = trivial::start(true);
    let gw = Arc::new(TlsServe::start(upstream));
    let session = gw.session();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut approver = runtime.block_on(async {
        connect_with(
            &format!("wss://{}/control", gw.addr),
            &gw.operator,
            &TlsClientOptions {
                ca_file: Some(gw.ca.clone()),
            },
        )
        .await
        .expect("the approver connects over wss")
    });
    let mut group = c.benchmark_group("events_tls");
    group.sample_size(30);
    let mut n = 0;
    let mut samples = Vec::new();
    group.bench_function("approval_round_trip", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let one = runtime.block_on(approval(&gw, &session, &mut approver, &seen, n));
                samples.push(one);
                total += one;
            }
            total
        })
    });
    group.finish();
    samples.sort();
    println!(
        "summary: approval over wss, approve sent → upstream receives the call: median {:.0} \
         µs ({} approvals)",
        samples[samples.len() / 2].as_secs_f64() * 1e6,
        samples.len()
    );
}

criterion_group!(benches, fanout, approval_round_trip);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
