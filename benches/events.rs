//! Event delivery over real websockets.
//!
//! - `fanout/4_clients`: events per second the hub and server deliver, every event to each
//!   of 4 connected clients (the real client: websocket + JSON decoding). The publisher keeps
//!   at most half a subscriber queue ahead of the slowest client, so this measures delivery
//!   capacity without drops.
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

fn slowest(clients: &[Arc<AtomicU64>]) -> u64 {
    clients
        .iter()
        .map(|c| c.load(Ordering::Acquire))
        .min()
        .unwrap_or(0)
}

fn fanout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let hub = new_hub();
    let (server, clients) = runtime.block_on(async {
        let server = serve(&hub).await;
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(reading_client(&server).await);
        }
        (server, clients)
    });
    let window = (control::hub::SUBSCRIBER_QUEUE / 2) as u64;

    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.bench_function("4_clients", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let target = hub.latest_seq() + BATCH;
                while hub.latest_seq() < target {
                    if hub.latest_seq() - slowest(&clients) < window {
                        hub.publish(call(&hub));
                    } else {
                        std::thread::yield_now();
                    }
                }
                while slowest(&clients) < target {
                    std::thread::yield_now();
                }
            }
            start.elapsed()
        })
    });
    group.finish();
    drop(server);
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
