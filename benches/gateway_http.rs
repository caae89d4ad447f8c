//! What `toolgate serve` adds to a `tools/call` round trip over Streamable HTTP.
//!
//! A trivial Streamable HTTP upstream (`tests/serve_support/trivial.rs`, in this process: it
//! answers every request at once with JSON) is called directly, and through `toolgate serve`
//! (the release binary, an allowing policy, the audit log on, a bearer token, one MCP
//! session):
//!
//! - sequential calls, direct and through the gateway alternating: the median round trip
//!   and the median added by the gateway;
//! - 64 calls in flight, direct and through the gateway: calls per second. One run of each
//!   lasts about a second and single runs vary a lot, so the phase runs `IN_FLIGHT_ROUNDS`
//!   rounds (5 by default), direct then through the gateway in each, and prints the median
//!   rates, the share as the median of the rounds' own shares, and a line with their ranges
//!   (until session 11: one round, the same line without "medians of N rounds"). The cost
//!   lines below are the first round's.
//!
//! The client is the same for both paths: a bare HTTP/1.1 connection (hyper's) per caller,
//! kept alive, `TCP_NODELAY`, its task on the caller's runtime. The sequential caller runs
//! on a runtime of one thread; the 64 callers on two worker threads. (Until issue 15's third
//! round this bench used reqwest, driven from the main thread with its connections on the
//! workers: about 64 µs of the client's own CPU per exchange and two cross-thread wake-ups,
//! counted in the direct figure and the gateway's alike, which made a direct exchange look
//! like 120–140 µs and hid part of the gateway's cost in the throughput ratio.)
//!
//! The audit log is written outside the directory of the policy and grants files, which
//! `serve` watches (as a deployment would put it), so its flushes do not wake the watcher.
//!
//! Run: `cargo bench --bench gateway_http`. The `summary:` lines print first; criterion's own
//! measurements of one call, direct and through the gateway, follow.
//! Targets (issue 15): ≤ 100 µs added per call at the median; ≥ 50 % of direct throughput
//! with 64 calls in flight.
//!
//! Each 64-in-flight phase also prints what it cost: CPU time per call of `serve` and of this
//! process (the load driver and the upstream together; `/proc/PID/task/*/schedstat`), the
//! gateway's context switches per call (how often its threads slept: a gateway that never
//! runs out of work sleeps almost never), and the share of the machine left idle or taken by
//! niced work of others (`/proc/stat`), so a run says whether a core idled (a convoy) or the
//! gateway's thread was the bottleneck.
//!
//! To compare binaries or settings in one sitting, `TOOLGATE=PATH` runs another `toolgate`
//! binary as the gateway and `TOOLGATE_SERVE_ARGS="--threads 2"` adds arguments to `serve`.

#[path = "support/stats.rs"]
mod stats;
use stats::median_range;
#[path = "../tests/serve_support/trivial.rs"]
#[allow(dead_code)]
mod trivial;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use serde_json::{Value, json};

const SEQUENTIAL_CALLS: usize = 5_000;
const IN_FLIGHT: usize = 64;
const IN_FLIGHT_CALLS: usize = 20_000;

const POLICY: &str = r#"{"version":"1","default":"deny","tools":{"echo":{}}}"#;

/// One MCP endpoint as a client sees it.
#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    path: String,
    token: Option<String>,
    session: Option<String>,
}

/// A caller's own connection to an endpoint.
struct Connection(SendRequest<Full<Bytes>>);

impl Endpoint {
    /// Opens a connection, its task spawned on the current runtime.
    async fn connect(&self) -> Connection {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        Connection(sender)
    }

    /// POSTs `body` and returns the answer's head and body.
    async fn post(
        &self,
        connection: &mut Connection,
        body: String,
    ) -> (http::response::Parts, Bytes) {
        let mut req = http::Request::post(self.path.as_str())
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if let Some(session) = &self.session {
            req = req.header("mcp-session-id", session);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        connection.0.ready().await.expect("connection ready");
        let resp = connection.0.send_request(req).await.expect("answer");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("answer body").to_bytes();
        (parts, body)
    }

    async fn initialize(&mut self) {
        let mut connection = self.connect().await;
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"}}});
        let (head, _) = self.post(&mut connection, init.to_string()).await;
        assert!(head.status.is_success(), "initialize: {}", head.status);
        self.session = head
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let _ = self.post(&mut connection, note.to_string()).await;
    }

    async fn call(&self, connection: &mut Connection, id: u64) -> Duration {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"hello"}}}}}}"#
        );
        let start = Instant::now();
        let (_, bytes) = self.post(connection, body).await;
        let elapsed = start.elapsed();
        let answer: Value = serde_json::from_slice(&bytes).expect("JSON answer");
        assert_eq!(answer["result"]["content"][0]["text"], "hello", "{answer}");
        elapsed
    }
}

/// `toolgate serve` in front of the trivial upstream, killed when dropped.
struct Serve {
    child: Child,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    token: String,
}

impl Serve {
    fn start(upstream: std::net::SocketAddr) -> Serve {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("policy.json"), POLICY).expect("policy");
        std::fs::create_dir(path("log")).expect("log directory");
        std::fs::write(
            path("servers.json"),
            json!({"mcpServers": {"t": {"url": format!("http://{upstream}/mcp")}}}).to_string(),
        )
        .expect("servers");
        let binary =
            std::env::var("TOOLGATE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_toolgate").into());
        let extra = std::env::var("TOOLGATE_SERVE_ARGS").unwrap_or_default();
        let out = Command::new(&binary)
            .args(["grants", "add", "bench", "--file"])
            .arg(path("grants.json"))
            .output()
            .expect("grants add");
        let token = String::from_utf8(out.stdout)
            .expect("token")
            .trim()
            .to_owned();
        let mut child = Command::new(&binary)
            .arg("serve")
            .arg("--policy")
            .arg(path("policy.json"))
            .arg("--servers")
            .arg(path("servers.json"))
            .arg("--grants")
            .arg(path("grants.json"))
            .arg("--audit")
            .arg(path("log").join("audit.jsonl"))
            .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
            .args(["--counters", "memory"])
            .args(extra.split_whitespace())
            .env("XDG_RUNTIME_DIR", dir.path())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().expect("serve exited").expect("stderr");
            if let Some(addr) = line.strip_prefix("toolgate serve: listening on http://") {
                break addr.to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Serve {
            child,
            _dir: dir,
            addr: addr.parse().expect("listening address"),
            token,
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// CPU time of every thread of process `pid` so far (`/proc/PID/task/*/schedstat`, in
/// nanoseconds), and its context switches (voluntary and not).
fn process_cpu(pid: u32) -> (Duration, u64) {
    let mut cpu = 0u64;
    let mut switches = 0u64;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (Duration::ZERO, 0);
    };
    for task in tasks.flatten() {
        let path = task.path();
        if let Ok(stat) = std::fs::read_to_string(path.join("schedstat")) {
            cpu += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(status) = std::fs::read_to_string(path.join("status")) {
            switches += status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (Duration::from_nanos(cpu), switches)
}

/// The machine's idle, niced and total CPU ticks so far (`/proc/stat`'s `cpu` line; idle
/// counts iowait too). Niced work is counted apart: on a shared machine it is what others'
/// builds ran (at nice 19) in time this bench's processes left them.
fn machine_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (
        idle,
        fields.get(1).copied().unwrap_or(0),
        fields.iter().sum(),
    )
}

/// What a 64-in-flight phase cost: CPU per call of the gateway and of this process (the
/// load driver and the upstream), the gateway's context switches per call, and the
/// machine's idle share while it ran.
struct PhaseCost {
    serve: (Duration, u64),
    bench: (Duration, u64),
    ticks: (u64, u64, u64),
}

impl PhaseCost {
    fn start(serve: u32) -> PhaseCost {
        PhaseCost {
            serve: process_cpu(serve),
            bench: process_cpu(std::process::id()),
            ticks: machine_ticks(),
        }
    }

    fn end(self, serve: u32, calls: usize) -> String {
        let (serve_cpu, serve_cs) = process_cpu(serve);
        let (bench_cpu, _) = process_cpu(std::process::id());
        let (idle, nice, total) = machine_ticks();
        let per_call = |d: Duration| micros(d) / calls.max(1) as f64;
        let total = (total - self.ticks.2).max(1) as f64;
        let idle_share = 100.0 * (idle - self.ticks.0) as f64 / total;
        let nice_share = 100.0 * (nice - self.ticks.1) as f64 / total;
        format!(
            "serve {:.1} µs CPU/call ({:.2} switches/call), bench (driver + upstream) {:.1} µs CPU/call, machine idle {idle_share:.0} % (niced work of others {nice_share:.0} %)",
            per_call(serve_cpu.saturating_sub(self.serve.0)),
            (serve_cs - self.serve.1) as f64 / calls.max(1) as f64,
            per_call(bench_cpu.saturating_sub(self.bench.0)),
        )
    }
}

/// How many rounds the 64-in-flight phase runs, direct and through `serve` taking turns:
/// `IN_FLIGHT_ROUNDS`, 5 by default.
fn in_flight_rounds() -> usize {
    std::env::var("IN_FLIGHT_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5)
}

async fn throughput(endpoint: &Arc<Endpoint>) -> f64 {
    let per_task = IN_FLIGHT_CALLS / IN_FLIGHT;
    let mut connections = Vec::with_capacity(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        connections.push(endpoint.connect().await);
    }
    let start = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(t, mut connection)| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    endpoint
                        .call(&mut connection, (t * per_task + i) as u64 + 1_000_000)
                        .await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller task");
    }
    (per_task * IN_FLIGHT) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let (upstream, _) = trivial::start(false);
    let serve = Serve::start(upstream);
    let mut direct = Endpoint {
        addr: upstream,
        path: "/mcp".into(),
        token: None,
        session: None,
    };
    let mut gateway = Endpoint {
        addr: serve.addr,
        path: "/mcp/t".into(),
        token: Some(serve.token.clone()),
        session: None,
    };
    // The sequential caller: one thread, its connections' tasks on it too.
    let sequential = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("sequential runtime");
    let (mut direct_conn, mut gateway_conn) = sequential.block_on(async {
        direct.initialize().await;
        gateway.initialize().await;
        (direct.connect().await, gateway.connect().await)
    });

    sequential.block_on(async {
        // Warm up both paths (connections, the upstream's connections behind the gateway).
        for i in 0..200 {
            direct.call(&mut direct_conn, i).await;
            gateway.call(&mut gateway_conn, i).await;
        }
        let mut direct_samples = Vec::with_capacity(SEQUENTIAL_CALLS);
        let mut gateway_samples = Vec::with_capacity(SEQUENTIAL_CALLS);
        for i in 0..SEQUENTIAL_CALLS as u64 {
            direct_samples.push(direct.call(&mut direct_conn, i).await);
            gateway_samples.push(gateway.call(&mut gateway_conn, i).await);
        }
        let (d, g) = (median(direct_samples), median(gateway_samples));
        println!(
            "summary: {SEQUENTIAL_CALLS} sequential tools/call: median direct {:.1} µs, through serve {:.1} µs, added {:.1} µs (target ≤ 100 µs)",
            micros(d),
            micros(g),
            micros(g.saturating_sub(d))
        );
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (direct_arc, gateway_arc) = (Arc::new(direct.clone()), Arc::new(gateway.clone()));
    runtime.block_on(async {
        let pid = serve.child.id();
        let calls = (IN_FLIGHT_CALLS / IN_FLIGHT) * IN_FLIGHT;
        let rounds = in_flight_rounds();
        let (mut direct_rates, mut gateway_rates) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let cost = PhaseCost::start(pid);
            direct_rates.push(throughput(&direct_arc).await);
            let direct_cost = cost.end(pid, calls);
            let cost = PhaseCost::start(pid);
            gateway_rates.push(throughput(&gateway_arc).await);
            let gateway_cost = cost.end(pid, calls);
            if round == 0 {
                println!("summary: {IN_FLIGHT} in flight, direct: {direct_cost}");
                println!("summary: {IN_FLIGHT} in flight, through serve: {gateway_cost}");
            }
        }
        let shares: Vec<f64> = gateway_rates
            .iter()
            .zip(&direct_rates)
            .map(|(g, d)| 100.0 * g / d)
            .collect();
        let (direct_rate, direct_low, direct_high) = median_range(direct_rates);
        let (gateway_rate, gateway_low, gateway_high) = median_range(gateway_rates);
        let (share, share_low, share_high) = median_range(shares);
        println!(
            "summary: {IN_FLIGHT} in flight, medians of {rounds} rounds: direct {direct_rate:.0} calls/s, through serve {gateway_rate:.0} calls/s, {share:.0} % of direct (target ≥ 50 %)"
        );
        println!(
            "summary: {IN_FLIGHT} in flight, ranges over {rounds} rounds: direct {direct_low:.0}–{direct_high:.0} calls/s, through serve {gateway_low:.0}–{gateway_high:.0} calls/s, {share_low:.0}–{share_high:.0} % of direct"
        );
    });

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("http tools/call");
    group.bench_function("direct", |b| {
        b.iter(|| sequential.block_on(direct.call(&mut direct_conn, 1)))
    });
    group.bench_function("through serve", |b| {
        b.iter(|| sequential.block_on(gateway.call(&mut gateway_conn, 1)))
    });
    group.finish();
    c.final_summary();
}
