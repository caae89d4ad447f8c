//! What `toolgate wrap` adds to a `tools/call` round trip over stdio.
//!
//! The same load runs against a trivial upstream MCP server (this bench binary itself, started
//! with `--trivial-upstream`: it answers every request at once) directly, and through
//! `toolgate wrap` with an allowing policy and the audit log on:
//!
//! - 10,000 sequential calls: the median round trip, and the median added by the gateway;
//! - 64 calls in flight: calls per second, and the gateway's share of direct throughput.
//!
//! The trivial upstream is the worst case for the gateway: it does no work at all, so the
//! gateway's own per-call work is all that separates the two runs. The same two loads then
//! run against a real MCP server, the pinned npm `@modelcontextprotocol/server-everything`
//! (its `echo` tool, over stdio, from `tests/peers`; run `scripts/setup-test-peers` first,
//! or that comparison is skipped), which is what an agent would see.
//!
//! Run: `cargo bench --bench gateway_stdio`. The summary lines (`summary: ...`) print
//! first; criterion's own measurements of the two loads (trivial upstream) follow.
//! Targets (issue 3): ≤ 50 µs added per call; ≥ 80% of direct throughput with 64 in flight.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};

const SEQUENTIAL_CALLS: usize = 10_000;
const IN_FLIGHT: usize = 64;
const IN_FLIGHT_CALLS: usize = 20_000;

const POLICY: &str = r#"{"version":"1","default":"deny","tools":{"echo":{}}}"#;

#[path = "support/upstream.rs"]
mod upstream;
use upstream::trivial_upstream;

/// The MCP server at the end of the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    /// [`trivial_upstream`]: answers at once, does nothing.
    Trivial,
    /// npm `@modelcontextprotocol/server-everything` (stdio), its `echo` tool.
    Everything,
}

impl Upstream {
    fn name(self) -> &'static str {
        match self {
            Upstream::Trivial => "trivial upstream",
            Upstream::Everything => "server-everything echo",
        }
    }

    /// The program and arguments that start it; `None` when it is not installed.
    fn command(self) -> Option<(std::ffi::OsString, Vec<std::ffi::OsString>)> {
        match self {
            Upstream::Trivial => Some((
                std::env::current_exe().expect("bench binary path").into(),
                vec!["--trivial-upstream".into()],
            )),
            Upstream::Everything => {
                let entry = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
                entry
                    .exists()
                    .then(|| ("node".into(), vec![entry.into(), "stdio".into()]))
            }
        }
    }
}

struct Peer {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
    line: String,
}

impl Peer {
    fn start(through_gateway: bool, dir: &Path) -> Peer {
        Peer::start_with(Upstream::Trivial, through_gateway, dir).expect("trivial upstream")
    }

    /// Starts `upstream`, directly or through `toolgate wrap`, and completes the MCP
    /// handshake; `None` when the upstream is not installed.
    fn start_with(upstream: Upstream, through_gateway: bool, dir: &Path) -> Option<Peer> {
        let (program, args) = upstream.command()?;
        let mut command = if through_gateway {
            let policy = dir.join("policy.json");
            std::fs::write(&policy, POLICY).expect("write policy");
            let mut c = Command::new(env!("CARGO_BIN_EXE_toolgate"));
            c.arg("wrap")
                .arg("--policy")
                .arg(&policy)
                .arg("--audit")
                .arg(dir.join("audit.jsonl"))
                .arg("--log-level")
                .arg("warn")
                .args(["--counters", "memory"])
                .arg("--")
                .arg(&program)
                .args(&args);
            c
        } else {
            let mut c = Command::new(&program);
            c.args(&args);
            c
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the upstream");
        let stdin = BufWriter::new(child.stdin.take().expect("stdin"));
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut peer = Peer {
            child,
            stdin,
            stdout,
            next_id: 0,
            line: String::new(),
        };
        if upstream == Upstream::Everything {
            peer.initialize();
        }
        // Warm up: the first answer proves the pipeline is up.
        peer.round_trip();
        Some(peer)
    }

    /// The MCP handshake a real server expects before any call.
    fn initialize(&mut self) {
        self.next_id += 1;
        writeln!(
            self.stdin,
            r#"{{"jsonrpc":"2.0","id":{},"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"toolgate-bench","version":"0"}}}}}}"#,
            self.next_id
        )
        .expect("write initialize");
        self.stdin.flush().expect("flush");
        self.recv();
        writeln!(
            self.stdin,
            r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
        )
        .expect("write initialized");
    }

    fn send(&mut self) {
        self.next_id += 1;
        writeln!(
            self.stdin,
            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"hello"}}}}}}"#,
            self.next_id
        )
        .expect("write call");
    }

    /// Reads the next answer; notifications a real server sends on its own are skipped.
    fn recv(&mut self) {
        loop {
            self.line.clear();
            let n = self.stdout.read_line(&mut self.line).expect("read answer");
            assert!(n > 0, "upstream closed");
            if self.line.contains("\"result\"") {
                return;
            }
            assert!(
                self.line.contains("\"method\"") && !self.line.contains("\"id\""),
                "{}",
                self.line
            );
        }
    }

    fn round_trip(&mut self) -> Duration {
        let start = Instant::now();
        self.send();
        self.stdin.flush().expect("flush");
        self.recv();
        start.elapsed()
    }

    /// `calls` calls with `window` in flight; returns the elapsed time.
    fn pipelined(&mut self, calls: usize, window: usize) -> Duration {
        let start = Instant::now();
        let mut sent = 0;
        while sent < window.min(calls) {
            self.send();
            sent += 1;
        }
        self.stdin.flush().expect("flush");
        for _ in 0..calls {
            // Flush before a read could block: when no whole answer is buffered.
            if !self.stdout.buffer().contains(&b'\n') {
                self.stdin.flush().expect("flush");
            }
            self.recv();
            if sent < calls {
                self.send();
                sent += 1;
            }
        }
        start.elapsed()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.stdin.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The issue's two measurements against `upstream`. Direct and wrapped calls alternate, so
/// both see the same machine load (this runs on shared 2-core machines).
fn summary(dir: &Path, upstream: Upstream) {
    let (Some(mut direct), Some(mut wrapped)) = (
        Peer::start_with(upstream, false, dir),
        Peer::start_with(upstream, true, dir),
    ) else {
        println!(
            "summary: {}: not installed (run scripts/setup-test-peers); skipped",
            upstream.name()
        );
        return;
    };
    let label = upstream.name();
    let mut direct_samples = Vec::with_capacity(SEQUENTIAL_CALLS);
    let mut wrapped_samples = Vec::with_capacity(SEQUENTIAL_CALLS);
    for _ in 0..SEQUENTIAL_CALLS {
        direct_samples.push(direct.round_trip());
        wrapped_samples.push(wrapped.round_trip());
    }
    let (direct_median, wrapped_median) = (median(direct_samples), median(wrapped_samples));
    let added = wrapped_median.saturating_sub(direct_median);
    println!(
        "summary: {label}: {SEQUENTIAL_CALLS} sequential tools/call: median direct {:.1} µs, through wrap {:.1} µs, added {:.1} µs (target ≤ 50 µs)",
        direct_median.as_secs_f64() * 1e6,
        wrapped_median.as_secs_f64() * 1e6,
        added.as_secs_f64() * 1e6
    );

    const ROUNDS: usize = 10;
    let per_round = IN_FLIGHT_CALLS / ROUNDS;
    let (mut direct_time, mut wrapped_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        direct_time += direct.pipelined(per_round, IN_FLIGHT);
        wrapped_time += wrapped.pipelined(per_round, IN_FLIGHT);
    }
    let calls = (per_round * ROUNDS) as f64;
    let (direct_rate, wrapped_rate) = (
        calls / direct_time.as_secs_f64(),
        calls / wrapped_time.as_secs_f64(),
    );
    println!(
        "summary: {label}: {IN_FLIGHT} in flight ({} calls): direct {direct_rate:.0} calls/s, through wrap {wrapped_rate:.0} calls/s, ratio {:.0}% (target ≥ 80%); gateway cost {:.1} µs per call",
        per_round * ROUNDS,
        wrapped_rate / direct_rate * 100.0,
        (1.0 / wrapped_rate - 1.0 / direct_rate) * 1e6
    );
}

fn criterion_benches(c: &mut Criterion, dir: &Path) {
    let mut group = c.benchmark_group("tools_call_round_trip");
    group.sample_size(20);
    for (name, through_gateway) in [("direct", false), ("wrap", true)] {
        let mut peer = Peer::start(through_gateway, dir);
        group.bench_function(BenchmarkId::new("sequential", name), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| peer.round_trip()).sum());
        });
    }
    group.finish();

    let mut group = c.benchmark_group("tools_call_64_in_flight");
    group.sample_size(10);
    group.throughput(Throughput::Elements(IN_FLIGHT as u64 * 16));
    for (name, through_gateway) in [("direct", false), ("wrap", true)] {
        let mut peer = Peer::start(through_gateway, dir);
        group.bench_function(BenchmarkId::new("pipelined", name), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| peer.pipelined(IN_FLIGHT * 16, IN_FLIGHT))
                    .sum()
            });
        });
    }
    group.finish();
}

fn main() {
    if std::env::args().any(|a| a == "--trivial-upstream") {
        trivial_upstream();
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    summary(dir.path(), Upstream::Trivial);
    summary(dir.path(), Upstream::Everything);
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c, dir.path());
    c.final_summary();
}
