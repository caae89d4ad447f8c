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
use toolgate::control::{self, ControlHandle, EventsOptions, Hub};
use toolgate::wire::{CallEvent, EventKind, GatewayInfo, Verdict};

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
        args: json!({"keyName": "staging", "scopes": ["read", "write"], "apiKey": "[redacted]"}),
        args_truncated: false,
        retry_after_ms: None,
        hold_deadline: None,
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
    let window = (control::hub::SUBSCRIBER_QUEUE / 2) as u64;
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

criterion_group!(benches, fanout);

fn main() {
    benches();
    stalled_client_memory();
    Criterion::default().configure_from_args().final_summary();
}
