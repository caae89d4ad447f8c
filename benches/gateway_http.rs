//! What `toolgate serve` adds to a `tools/call` round trip over Streamable HTTP.
//!
//! A trivial Streamable HTTP upstream (`tests/serve_support/trivial.rs`, in this process: it
//! answers every request at once with JSON) is called directly, and through `toolgate serve`
//! (the release binary, an allowing policy, the audit log on, a bearer token, one MCP
//! session):
//!
//! - sequential calls, direct and through the gateway alternating: the median round trip
//!   and the median added by the gateway. The client runs on a runtime of one thread, so
//!   that a call and its connection's task (reqwest's) never wake each other across
//!   threads: driven from the main thread with the connection on a worker, as before, the
//!   client alone added two cross-thread wake-ups to every exchange, direct or not;
//! - 64 calls in flight, direct and through the gateway: calls per second (the client on
//!   two worker threads).
//!
//! Both paths use the same client in each part. The audit log is written outside the
//! directory of the policy and grants files, which `serve` watches (as a deployment would
//! put it), so its flushes do not wake the file watcher.
//!
//! Run: `cargo bench --bench gateway_http`. The `summary:` lines print first; criterion's own
//! measurements of one call, direct and through the gateway, follow.
//! Targets (issue 15): ≤ 100 µs added per call at the median; ≥ 50 % of direct throughput
//! with 64 calls in flight.
//!
//! To compare binaries or settings in one sitting, `TOOLGATE=PATH` runs another `toolgate`
//! binary as the gateway and `TOOLGATE_SERVE_ARGS="--threads 2"` adds arguments to `serve`.

#[path = "../tests/serve_support/trivial.rs"]
#[allow(dead_code)]
mod trivial;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use serde_json::{Value, json};

const SEQUENTIAL_CALLS: usize = 5_000;
const IN_FLIGHT: usize = 64;
const IN_FLIGHT_CALLS: usize = 20_000;

const POLICY: &str = r#"{"version":"1","default":"deny","tools":{"echo":{}}}"#;

/// One MCP endpoint as a client sees it.
#[derive(Clone)]
struct Endpoint {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    session: Option<String>,
}

impl Endpoint {
    fn post(&self, body: String) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(session) = &self.session {
            req = req.header("mcp-session-id", session);
        }
        req
    }

    async fn initialize(&mut self) {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"}}});
        let resp = self
            .post(init.to_string())
            .send()
            .await
            .expect("initialize");
        assert!(resp.status().is_success(), "initialize: {}", resp.status());
        self.session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let _ = resp.bytes().await;
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let _ = self.post(note.to_string()).send().await;
    }

    async fn call(&self, id: u64) -> Duration {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"hello"}}}}}}"#
        );
        let start = Instant::now();
        let resp = self.post(body).send().await.expect("call");
        let bytes = resp.bytes().await.expect("answer");
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
    url: String,
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
            url: format!("http://{addr}/mcp/t"),
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

async fn throughput(endpoint: &Endpoint) -> f64 {
    let per_task = IN_FLIGHT_CALLS / IN_FLIGHT;
    let start = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|t| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    endpoint.call((t * per_task + i) as u64 + 1_000_000).await;
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(IN_FLIGHT * 2)
        .build()
        .expect("client");
    let (direct, gateway) = runtime.block_on(async {
        let mut direct = Endpoint {
            http: http.clone(),
            url: format!("http://{upstream}/mcp"),
            token: None,
            session: None,
        };
        direct.initialize().await;
        let mut gateway = Endpoint {
            http: http.clone(),
            url: serve.url.clone(),
            token: Some(serve.token.clone()),
            session: None,
        };
        gateway.initialize().await;
        (direct, gateway)
    });
    // The sequential client: its own runtime of one thread, and its own connections there.
    let sequential = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("sequential runtime");
    let one_thread = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let direct_seq = Endpoint {
        http: one_thread.clone(),
        ..direct.clone()
    };
    let gateway_seq = Endpoint {
        http: one_thread,
        ..gateway.clone()
    };
    let direct = Arc::new(direct);
    let gateway = Arc::new(gateway);

    sequential.block_on(async {
        // Warm up both paths (connections, the upstream's pool behind the gateway).
        for i in 0..200 {
            direct_seq.call(i).await;
            gateway_seq.call(i).await;
        }
        let mut direct_samples = Vec::with_capacity(SEQUENTIAL_CALLS);
        let mut gateway_samples = Vec::with_capacity(SEQUENTIAL_CALLS);
        for i in 0..SEQUENTIAL_CALLS as u64 {
            direct_samples.push(direct_seq.call(i).await);
            gateway_samples.push(gateway_seq.call(i).await);
        }
        let (d, g) = (median(direct_samples), median(gateway_samples));
        println!(
            "summary: {SEQUENTIAL_CALLS} sequential tools/call: median direct {:.1} µs, through serve {:.1} µs, added {:.1} µs (target ≤ 100 µs)",
            micros(d),
            micros(g),
            micros(g.saturating_sub(d))
        );
    });
    runtime.block_on(async {
        let direct_rate = throughput(&direct).await;
        let gateway_rate = throughput(&gateway).await;
        println!(
            "summary: {IN_FLIGHT} in flight: direct {direct_rate:.0} calls/s, through serve {gateway_rate:.0} calls/s, {:.0} % of direct (target ≥ 50 %)",
            100.0 * gateway_rate / direct_rate
        );
    });

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("http tools/call");
    group.bench_function("direct", |b| {
        b.iter(|| sequential.block_on(direct_seq.call(1)))
    });
    group.bench_function("through serve", |b| {
        b.iter(|| sequential.block_on(gateway_seq.call(1)))
    });
    group.finish();
    c.final_summary();
}
