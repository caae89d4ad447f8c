//! What tracing adds to a `tools/call` through `toolgate wrap`: the same trivial upstream
//! (this bench binary, `--trivial-upstream`: it answers every request at once) behind `wrap`
//! with tracing off, and on with every call sampled, exporting by OTLP to a receiver in this
//! process that reads each export request and answers OK: over HTTP/1.1 (http/protobuf), then
//! over gRPC (HTTP/2, `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`).
//!
//! - 5,000 sequential calls, the two gateways alternating (the machine is shared): the
//!   median round trip of each, and the difference;
//! - 64 calls in flight: calls per second of each, and the cost per call.
//!
//! Run: `cargo bench --bench tracing`. Target (issue 19): ≤ 5 µs added per call with export
//! on. The off path (`Gateway::traces` is `None`) is one branch per call.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};

const SEQUENTIAL_CALLS: usize = 5_000;
const IN_FLIGHT: usize = 64;
const IN_FLIGHT_CALLS: usize = 20_000;

const POLICY: &str = r#"{"version":"1","default":"deny","tools":{"echo":{}}}"#;

#[path = "support/upstream.rs"]
mod upstream;
use upstream::trivial_upstream;

/// An OTLP/HTTP sink on loopback: reads each request whole and answers 200.
fn otlp_sink() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
    let port = listener.local_addr().expect("sink address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut writer) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err()
                        || writer
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// An OTLP/gRPC sink on loopback: reads each call whole and answers `grpc-status: 0` after an
/// empty response message.
fn grpc_sink() -> u16 {
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, StreamBody};
    use hyper::body::Frame;
    use hyper::header::HeaderValue;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the gRPC sink's runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the gRPC sink");
            let port = listener.local_addr().expect("sink address").port();
            port_tx.send(port).expect("the sink's port");
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(
                    |request: hyper::Request<hyper::body::Incoming>| async move {
                        let _ = request.into_body().collect().await;
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        let frames = [
                            Frame::data(Bytes::from_static(&[0; 5])),
                            Frame::trailers(trailers),
                        ];
                        let body = StreamBody::new(futures_util::stream::iter(
                            frames.into_iter().map(Ok::<_, Infallible>),
                        ));
                        let mut response = hyper::Response::new(body);
                        response
                            .headers_mut()
                            .insert("content-type", HeaderValue::from_static("application/grpc"));
                        Ok::<_, Infallible>(response)
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
    });
    port_rx.recv().expect("the gRPC sink's port")
}

/// Where a traced gateway exports: the collector's URL and `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Clone, Copy)]
struct Export<'a> {
    url: &'a str,
    protocol: &'a str,
}

struct Peer {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
    line: String,
}

impl Peer {
    /// `wrap` in front of the trivial upstream; traced to `otlp` when given.
    fn start(dir: &Path, otlp: Option<Export<'_>>) -> Peer {
        let policy = dir.join("policy.json");
        std::fs::write(&policy, POLICY).expect("write policy");
        let mut command = Command::new(env!("CARGO_BIN_EXE_toolgate"));
        command
            .arg("wrap")
            .arg("--policy")
            .arg(&policy)
            .arg("--audit")
            .arg(dir.join(format!("audit-{}.jsonl", otlp.is_some())))
            .args(["--log-level", "warn", "--counters", "memory", "--no-events"])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("OTEL_TRACES_SAMPLER", "always_on");
        if let Some(export) = otlp {
            command
                .args(["--otlp", export.url])
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", export.protocol);
        }
        let mut child = command
            .arg("--")
            .arg(std::env::current_exe().expect("bench binary path"))
            .arg("--trivial-upstream")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start wrap");
        let stdin = BufWriter::new(child.stdin.take().expect("stdin"));
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut peer = Peer {
            child,
            stdin,
            stdout,
            next_id: 0,
            line: String::new(),
        };
        peer.round_trip();
        peer
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

    fn recv(&mut self) {
        self.line.clear();
        let n = self.stdout.read_line(&mut self.line).expect("read answer");
        assert!(n > 0 && self.line.contains("\"result\""), "{}", self.line);
    }

    fn round_trip(&mut self) -> Duration {
        let start = Instant::now();
        self.send();
        self.stdin.flush().expect("flush");
        self.recv();
        start.elapsed()
    }

    fn pipelined(&mut self, calls: usize, window: usize) -> Duration {
        let start = Instant::now();
        let mut sent = 0;
        while sent < window.min(calls) {
            self.send();
            sent += 1;
        }
        self.stdin.flush().expect("flush");
        for _ in 0..calls {
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

fn summary(dir: &Path, otlp: Export<'_>) {
    let protocol = otlp.protocol;
    let mut off = Peer::start(dir, None);
    let mut on = Peer::start(dir, Some(otlp));
    let (mut off_samples, mut on_samples) = (Vec::new(), Vec::new());
    for _ in 0..SEQUENTIAL_CALLS {
        off_samples.push(off.round_trip());
        on_samples.push(on.round_trip());
    }
    let (off_median, on_median) = (median(off_samples), median(on_samples));
    println!(
        "summary: {protocol}: {SEQUENTIAL_CALLS} sequential tools/call through wrap: median tracing off {:.1} µs, on (100 % sampled, exported) {:.1} µs, added {:.1} µs (target ≤ 5 µs)",
        off_median.as_secs_f64() * 1e6,
        on_median.as_secs_f64() * 1e6,
        on_median.as_secs_f64() * 1e6 - off_median.as_secs_f64() * 1e6
    );
    const ROUNDS: usize = 10;
    let per_round = IN_FLIGHT_CALLS / ROUNDS;
    let (mut off_time, mut on_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        off_time += off.pipelined(per_round, IN_FLIGHT);
        on_time += on.pipelined(per_round, IN_FLIGHT);
    }
    let calls = (per_round * ROUNDS) as f64;
    let (off_rate, on_rate) = (
        calls / off_time.as_secs_f64(),
        calls / on_time.as_secs_f64(),
    );
    println!(
        "summary: {protocol}: {IN_FLIGHT} in flight: tracing off {off_rate:.0} calls/s, on {on_rate:.0} calls/s; tracing costs {:.1} µs per call",
        (1.0 / on_rate - 1.0 / off_rate) * 1e6
    );
}

fn main() {
    if std::env::args().any(|a| a == "--trivial-upstream") {
        trivial_upstream();
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let http_url = format!("http://127.0.0.1:{}", otlp_sink());
    let grpc_url = format!("http://127.0.0.1:{}", grpc_sink());
    let http = Export {
        url: &http_url,
        protocol: "http/protobuf",
    };
    let grpc = Export {
        url: &grpc_url,
        protocol: "grpc",
    };
    summary(dir.path(), http);
    summary(dir.path(), grpc);
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("tools_call_tracing");
    group.sample_size(20);
    for (name, export) in [("off", None), ("on", Some(http)), ("on-grpc", Some(grpc))] {
        let mut peer = Peer::start(dir.path(), export);
        group.bench_function(BenchmarkId::new("sequential", name), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| peer.round_trip()).sum());
        });
    }
    group.finish();
    c.final_summary();
}
