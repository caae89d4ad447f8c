//! Event delivery over real websockets.
//!
//! - `fanout/4_clients`: events per second the hub and server deliver, every event to each
//!   of 4 connected websocket clients. The clients read each frame and take its `seq` from
//!   the frame's start, as cheaply as possible: they stand in for consoles in other
//!   processes, and what is measured is the gateway side.
//! - `fanout/4_decoding_clients`: the same with the real client ([`control::connect`],
//!   every event decoded), all in this process, so the clients' decoding shares the cores.
//!
//! The publisher keeps at most half a subscriber queue ahead of the slowest client, so both
//! measure delivery capacity without drops.
//! - `wrap_proxying/4_clients`: the real gateway (`toolgate wrap`, audit log on) proxying
//!   pipelined `tools/call`s to a trivial upstream (this bench binary with
//!   `--trivial-upstream`, answering at once), with 4 websocket clients following: events
//!   (a `call` and an `outcome` per call) per second delivered to all 4.
//! - After the criterion run, a memory report: the process RSS before and after publishing
//!   200,000 events with one client connected that never reads (plus one that does).
//!
//! Run: `CARGO_TARGET_DIR=/work/target nice cargo bench --bench events`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group};
use serde_json::json;
use toolgate::testing::control::{self, ControlHandle, EventsOptions, Hub};
use toolgate::testing::wire::{CallEvent, EventKind, GatewayInfo, Verdict};

const CLIENTS: usize = 4;
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

async fn serve(hub: &Arc<Hub>) -> ControlHandle {
    control::start(
        hub.clone(),
        EventsOptions {
            discovery: false,
            ..EventsOptions::default()
        },
    )
    .await
    .expect("server starts")
}

/// Spawns a client that records the seq of every event it reads.
async fn reading_client(server: &ControlHandle) -> Arc<AtomicU64> {
    let seen = Arc::new(AtomicU64::new(0));
    let mut conn = control::connect(server.url(), server.token())
        .await
        .expect("client connects");
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(event)) = conn.next_event().await {
            if let EventKind::Missed(m) = &event.kind {
                panic!("a reading client missed {} events", m.dropped);
            }
            record.store(event.seq, Ordering::Release);
        }
    });
    seen
}

/// Spawns a client that reads raw frames and records the `seq` each starts with.
async fn raw_client(server: &ControlHandle) -> Arc<AtomicU64> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let seen = Arc::new(AtomicU64::new(0));
    let mut request = server.url().into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", server.token()).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("client connects");
    let record = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let Ok(text) = msg.to_text() else { continue };
            let Some(rest) = text.strip_prefix("{\"seq\":") else {
                continue;
            };
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            assert!(
                !text.contains("\"type\":\"missed\""),
                "a reading client missed events"
            );
            if let Ok(seq) = digits.parse() {
                record.store(seq, Ordering::Release);
            }
        }
    });
    seen
}

fn slowest(clients: &[Arc<AtomicU64>]) -> u64 {
    clients
        .iter()
        .map(|c| c.load(Ordering::Acquire))
        .min()
        .unwrap_or(0)
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    for (name, decoding) in [("4_clients", false), ("4_decoding_clients", true)] {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let hub = new_hub();
        let (server, clients) = runtime.block_on(async {
            let server = serve(&hub).await;
            let mut clients = Vec::new();
            for _ in 0..CLIENTS {
                clients.push(if decoding {
                    reading_client(&server).await
                } else {
                    raw_client(&server).await
                });
            }
            (server, clients)
        });
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    publish_paced(&hub, &clients, BATCH);
                }
                start.elapsed()
            })
        });
        drop(server);
    }
    group.finish();
}

/// Publishes `n` events, staying within half a queue of the slowest client (sleeping, not
/// spinning, so the publisher leaves the cores to the server), and waits for all of them
/// to arrive.
fn publish_paced(hub: &Hub, clients: &[Arc<AtomicU64>], n: u64) {
    let window = (control::SUBSCRIBER_QUEUE / 2) as u64;
    let target = hub.latest_seq() + n;
    while hub.latest_seq() < target {
        let room = window.saturating_sub(hub.latest_seq() - slowest(clients));
        if room == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        for _ in 0..room.min(target - hub.latest_seq()) {
            hub.publish(call(hub));
        }
    }
    while slowest(clients) < target {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Resident set size of this process, from /proc.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn stalled_client_memory() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let hub = new_hub();
    runtime.block_on(async {
        let server = serve(&hub).await;
        // Connected, never read.
        let _stalled = control::connect(server.url(), server.token())
            .await
            .expect("client connects");
        let reader = reading_client(&server).await;
        let publish = async |n: u64| {
            let target = hub.latest_seq() + n;
            while hub.latest_seq() < target {
                if hub.latest_seq() - reader.load(Ordering::Acquire) < 2048 {
                    hub.publish(call(&hub));
                } else {
                    tokio::time::sleep(Duration::from_micros(50)).await;
                }
            }
            while reader.load(Ordering::Acquire) < target {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        // Warm up: fill the recent-calls ring, the socket buffers and the queues.
        publish(50_000).await;
        let before = rss_kib();
        let start = Instant::now();
        publish(200_000).await;
        let elapsed = start.elapsed();
        let after = rss_kib();
        println!(
            "stalled client: RSS {before} KiB after 50,000 events, {after} KiB after 200,000 \
             more ({:+} KiB); {:.0} events/s to the reading client meanwhile",
            after as i64 - before as i64,
            200_000.0 / elapsed.as_secs_f64()
        );
    });
}

/// The trivial upstream MCP server: answers every request at once with a one-line result.
fn trivial_upstream() {
    use std::io::{BufRead, Write};
    let mut input = std::io::BufReader::new(std::io::stdin().lock());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = String::new();
    loop {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line)
            && let Some(id) = msg.get("id")
        {
            let result = if msg["method"] == "initialize" {
                json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                       "serverInfo": {"name": "trivial", "version": "0"}})
            } else {
                json!({"content": [{"type": "text", "text": "ok"}]})
            };
            let _ = writeln!(
                out,
                "{}",
                json!({"jsonrpc": "2.0", "id": id, "result": result})
            );
        }
        // Answer a burst in one write, and never sit on an answer while waiting for input.
        if !input.buffer().contains(&b'\n') && out.flush().is_err() {
            return;
        }
    }
}

/// Spawns a client that counts the `outcome` frames it reads.
async fn outcome_counter(url: &str, token: &str) -> Arc<AtomicU64> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let outcomes = Arc::new(AtomicU64::new(0));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("client connects");
    let count = outcomes.clone();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let Ok(text) = msg.to_text() else { continue };
            assert!(
                !text.contains("\"type\":\"missed\""),
                "a reading client missed events"
            );
            if text.contains("\"type\":\"outcome\"") {
                count.fetch_add(1, Ordering::Release);
            }
        }
    });
    outcomes
}

fn wrap_proxying(c: &mut Criterion) {
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};

    const CALLS: u64 = 5_000;
    const IN_FLIGHT: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"version":"1","default":"deny","tools":{"echo":{}}}"#,
    )
    .unwrap();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .arg("wrap")
        .arg("--policy")
        .arg(&policy)
        .arg("--audit")
        .arg(dir.path().join("audit.jsonl"))
        .arg("--log-level")
        .arg("warn")
        .args(["--counters", "memory"])
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .arg("--trivial-upstream")
        .env("XDG_RUNTIME_DIR", &run)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start toolgate wrap");
    let mut stdin = std::io::BufWriter::new(gateway.stdin.take().unwrap());
    let stdout = gateway.stdout.take().unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let count = answered.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if line.is_err() {
                return;
            }
            count.fetch_add(1, Ordering::Release);
        }
    });
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "0"}}});
    writeln!(stdin, "{init}").unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .unwrap();
    stdin.flush().unwrap();
    let wait_until = |counter: &AtomicU64, n: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while counter.load(Ordering::Acquire) < n {
            assert!(
                Instant::now() < deadline,
                "stuck at {} of {n} (a client that missed events stops counting)",
                counter.load(Ordering::Acquire)
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    wait_until(&answered, 1);

    let entry = loop {
        let found = std::fs::read_dir(run.join("toolgate")).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "json"))
        });
        if let Some(text) = found.and_then(|f| std::fs::read_to_string(f).ok())
            && let Ok(entry) = serde_json::from_str::<control::DiscoveryEntry>(&text)
        {
            break entry;
        }
        assert!(
            gateway.try_wait().ok().flatten().is_none(),
            "toolgate wrap exited before writing its discovery file"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let clients: Vec<_> = runtime.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(outcome_counter(&entry.url, &entry.token).await);
        }
        clients
    });

    let mut group = c.benchmark_group("wrap_proxying");
    group.throughput(Throughput::Elements(2 * CALLS));
    group.sample_size(10);
    let mut next_id = 1u64;
    let mut calls_done = 0u64;
    group.bench_function("4_clients", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                // Like an agent with 64 calls in flight.
                let end = next_id + CALLS;
                while next_id < end {
                    let in_flight = next_id - answered.load(Ordering::Acquire);
                    if in_flight >= IN_FLIGHT {
                        std::thread::sleep(Duration::from_micros(50));
                        continue;
                    }
                    for _ in 0..(IN_FLIGHT - in_flight).min(end - next_id) {
                        let call = json!({"jsonrpc": "2.0", "id": next_id, "method": "tools/call",
                            "params": {"name": "echo", "arguments": {"message": "hello"}}});
                        writeln!(stdin, "{call}").unwrap();
                        next_id += 1;
                    }
                    stdin.flush().unwrap();
                }
                calls_done += CALLS;
                wait_until(&answered, 1 + calls_done);
                for client in &clients {
                    wait_until(client, calls_done);
                }
            }
            start.elapsed()
        })
    });
    group.finish();
    drop(stdin);
    let _ = gateway.wait();
}

criterion_group!(benches, fanout, wrap_proxying);

fn main() {
    if std::env::args().any(|a| a == "--trivial-upstream") {
        trivial_upstream();
        return;
    }
    benches();
    stalled_client_memory();
    Criterion::default().configure_from_args().final_summary();
}
