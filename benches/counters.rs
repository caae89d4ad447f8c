//! A decision with a limit on each counter store: memory, SQLite (a file in a temp dir) and
//! Redis (a private `redis-server` on loopback). Targets: median ≤ 50 µs per admitted call
//! with SQLite, ≤ 300 µs with Redis. Criterion reports the medians; a plain timing loop after
//! each prints the median and p99 of single decisions, since tails matter for a gateway.
//!
//! Every call is admitted: it is attributed to one of many grants in turn, and the clock
//! advances 1 ms per call, so each grant's budget (30 a minute) always has room, while units
//! keep being pruned as they would in a long-running gateway.
//!
//! Before them, `summary:` lines give the SQLite pages written per admitted call (the WAL's
//! growth while a reader holds checkpoints off) when calls are decided alone, 8 or 64 to a
//! transaction (as the store thread batches calls that queue up while it commits).
//!
//! Run: `cargo bench --bench counters` (needs `redis-server`; scripts/setup-test-peers).

use std::hint::black_box;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::sync::Arc;

use toolgate::testing::policy::{
    Admission, Call, CounterStore, LimitRequest, MemoryStore, Policy, RedisStore, Scope,
    SqliteStore, Verdict,
};

const T0: u64 = 1_764_000_000_000;
const GRANTS: usize = 20_000;
const SAMPLES: usize = 20_000;

fn policy() -> Policy {
    let text = json!({
        "version": "1",
        "default": "deny",
        "tools": {"create_api_key": {"limits": [
            {"counter": "create_api_key_rate", "window": "minute", "max": 30, "scope": "grant"}
        ]}}
    });
    Policy::parse(&text.to_string(), "bench.json").expect("bench policy is valid")
}

/// Decides calls in turn, each from the next grant, each 1 ms after the previous.
struct Driver {
    policy: Policy,
    grants: Vec<String>,
    args: serde_json::Value,
    n: u64,
}

impl Driver {
    fn new() -> Driver {
        Driver {
            policy: policy(),
            grants: (0..GRANTS).map(|i| format!("grant-{i}")).collect(),
            args: json!({"keyName": "staging"}),
            n: 0,
        }
    }

    fn decide(&mut self, store: &dyn CounterStore) -> Verdict {
        self.n += 1;
        let grant = &self.grants[self.n as usize % GRANTS];
        let d = self.policy.decide(
            &Call {
                tool: "create_api_key",
                args: &self.args,
                grant,
                session: "s",
            },
            store,
            T0 + self.n,
        );
        d.verdict
    }
}

fn bench_store(c: &mut Criterion, name: &str, store: &dyn CounterStore) {
    let mut driver = Driver::new();
    c.bench_function(&format!("decide with a limit/{name}"), |b| {
        b.iter(|| {
            let verdict = driver.decide(store);
            debug_assert_eq!(verdict, Verdict::Allow);
            black_box(verdict)
        })
    });
    let mut times: Vec<Duration> = Vec::with_capacity(SAMPLES);
    let mut refused = 0;
    for _ in 0..SAMPLES {
        let start = Instant::now();
        let verdict = driver.decide(store);
        times.push(start.elapsed());
        if verdict != Verdict::Allow {
            refused += 1;
        }
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "decide with a limit/{name}: {SAMPLES} single decisions: median {:.1} µs, p99 {:.1} µs, max {:.1} µs{}",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        times[times.len() - 1].as_secs_f64() * 1e6,
        if refused > 0 {
            format!(" ({refused} NOT admitted: the bench is wrong)")
        } else {
            String::new()
        }
    );
}

/// A private `redis-server`, killed on drop.
struct Redis(Child, String);

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (install it with scripts/setup-test-peers)");
        let url = format!("redis://127.0.0.1:{port}/0");
        let client = redis::Client::open(url.as_str()).expect("url");
        let started = Instant::now();
        while client
            .get_connection_with_timeout(Duration::from_millis(200))
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis(child, url)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// WAL frames written per admitted call, `batch` calls per transaction, on one budget that
/// always has room (as the limited tool of `benches/counters_wrap.rs`).
/// Returns the pages and the bytes (with the frame headers).
fn wal_pages_per_admission(batch: usize) -> (f64, f64) {
    const CALLS: usize = 4096;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("counters.sqlite3");
    let store = SqliteStore::open(&path).expect("sqlite store");
    let counter: Arc<str> = Arc::from("per_hour");
    let limits = [LimitRequest {
        counter: &counter,
        scope: Scope::Grant,
        scope_key: "laptop",
        max: 1_000_000_000,
        window_ms: 3_600_000,
    }];
    let mut n = 0u64;
    let mut admit = |count: usize| {
        let calls: Vec<(&[LimitRequest<'_>], u64)> = (0..count)
            .map(|_| {
                n += 1;
                (&limits[..], T0 + n)
            })
            .collect();
        for answer in store.admit_many(&calls) {
            assert!(
                matches!(answer, Ok(Admission::Admitted(_))),
                "not admitted: {answer:?}"
            );
        }
    };
    // The budget exists and the first sweep ran before measuring.
    admit(1);
    let reader = rusqlite::Connection::open(&path).expect("open a reader");
    let page_size: i64 = reader
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    let page_size = u64::try_from(page_size).expect("a positive page size");
    // A read transaction keeps the WAL from being checkpointed and restarted: it only grows.
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM sqlite_master;")
        .expect("hold a read transaction");
    let wal = path.with_extension("sqlite3-wal");
    let size = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    let before = size();
    for _ in 0..CALLS / batch {
        admit(batch);
    }
    let calls = (CALLS / batch * batch) as f64;
    let grown = size() - before;
    (
        (grown / (page_size + 24)) as f64 / calls,
        grown as f64 / calls,
    )
}

fn counters(c: &mut Criterion) {
    for batch in [1, 8, 64] {
        let (pages, bytes) = wal_pages_per_admission(batch);
        println!(
            "summary: SQLite pages written per admitted call, {batch} per transaction: {pages:.2} ({:.1} KB)",
            bytes / 1000.0
        );
    }
    bench_store(c, "memory", &MemoryStore::new());

    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = SqliteStore::open(&dir.path().join("counters.sqlite3")).expect("sqlite store");
    bench_store(c, "sqlite", &sqlite);

    let server = Redis::start();
    let redis = RedisStore::new(&server.1, &server.1, "bench").expect("redis store");
    bench_store(c, "redis", &redis);
}

criterion_group!(benches, counters);
criterion_main!(benches);
