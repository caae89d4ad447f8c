//! What learn mode adds to a call on the gateway's path: deciding to record it, copying its
//! arguments, and queueing the observation for the recorder's thread (which redacts and
//! writes it to the SQLite observation file in batches, off the call's path).
//!
//! Two measurements, with the real queue ([`QUEUE`] observations):
//! - *accepted*: calls recorded in runs of half a queue, the writer left to catch up (not
//!   timed) between runs, so every observation measured is queued, none dropped;
//! - *flood*: calls recorded back to back; when the bench outruns the writer the
//!   observation is dropped and counted, which is the gateway's behaviour under overload (the
//!   count is printed).
//!
//! Target (issue 21): ≤ 5 µs per call.
//!
//! Run: `cargo bench --bench learn`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use toolgate::testing::control::Hub;
use toolgate::testing::gateway::Gateway;
use toolgate::testing::learn::{QUEUE, observe_allowed, recording, settle};
use toolgate::testing::policy::{MemoryStore, Policy};
use toolgate::testing::wire::GatewayInfo;

fn gateway(dir: &std::path::Path) -> Gateway {
    let policy = Policy::parse(r#"{"version":"1","default":"allow"}"#, "policy.json")
        .expect("the bench policy is valid");
    let hub = Hub::new(GatewayInfo {
        id: "bench".into(),
        pid: 1,
        version: "bench".into(),
        grant: "bench".into(),
        server: "fs".into(),
        policy: "/tmp/policy.json".into(),
        started_at: chrono::Utc::now(),
    });
    let gateway = Gateway::new(
        Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
        Arc::new(MemoryStore::new()),
        hub,
        "bench",
        "fs",
    );
    recording(gateway, &dir.join("counters.learn.sqlite3"), QUEUE).expect("start the recorder")
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let gateway = gateway(dir.path());
    let args = json!({
        "path": "/srv/notes/2026/december/meeting.md",
        "head": 40,
        "apiKey": "sk-abcdefghijklmnopqrstuvwxyz012345",
        "options": {"encoding": "utf-8", "follow": false},
    });
    c.bench_function("learn: record one call, accepted", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let run = left.min((QUEUE / 2) as u64);
                let start = Instant::now();
                for _ in 0..run {
                    observe_allowed(&gateway, "fs", "read_text_file", &args);
                }
                spent += start.elapsed();
                left -= run;
                settle(&gateway, Duration::from_secs(60)).expect("the recorder settles");
            }
            spent
        });
    });
    let accepted_drops = settle(&gateway, Duration::from_secs(60)).unwrap_or_default();
    println!("summary: {accepted_drops} observation(s) dropped in the accepted runs (expected 0)");
    c.bench_function("learn: record one call, flood", |b| {
        b.iter(|| observe_allowed(&gateway, "fs", "read_text_file", &args));
    });
    match settle(&gateway, Duration::from_secs(60)) {
        Some(dropped) => println!(
            "summary: {} observation(s) dropped in the flood, the writer behind (counted, never blocking)",
            dropped - accepted_drops
        ),
        None => println!("summary: the recorder did not settle within 60 s"),
    }
}

criterion_group!(learn, bench);
criterion_main!(learn);
