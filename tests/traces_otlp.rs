//! OpenTelemetry traces and metrics against a real receiver: an OTLP/HTTP endpoint inside the
//! test that decodes the export requests of the built binary (`toolgate wrap --otlp`) with the
//! official `opentelemetry-proto` definitions (`/v1/traces` and `/v1/metrics`), in front of
//! `tests/e2e/recording_server.py`, which records every line that reaches it. Checks span
//! names, kinds, parent links client → gateway → server, attributes, for `tools/call` and the
//! other MCP requests, the `traceparent` the server receives, the audit records'
//! `trace_id`/`span_id`; the metrics `wrap` pushes; and that a collector that is down or never
//! answers costs calls nothing.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as NumberValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::{Value, json};
use support::ANSWER_WITHIN;
use support::peers::{e2e_script, python};

const POLICY: &str = r#"{"version": "1", "default": "deny", "tools": {"echo": {},
  "wait": {"action": "require_approval", "approval_timeout": "1s"}}}"#;

/// The client's own span, as a W3C traceparent it sends in `_meta`.
const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
    events: Vec<String>,
    event_attributes: Vec<BTreeMap<String, String>>,
    status_code: i32,
    service: String,
}

fn text_of(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text_of(&kv.value)))
        .collect()
}

/// One data point of an exported metric: a sum's or gauge's value, or a histogram's count
/// (and its sum).
#[derive(Debug, Clone, PartialEq)]
struct Point {
    attributes: BTreeMap<String, String>,
    value: f64,
    sum: Option<f64>,
}

/// Each metric's data points in the latest export that had it (they are cumulative).
type Latest = BTreeMap<String, Vec<Point>>;

/// An OTLP/HTTP receiver on loopback: every span of every export request, decoded, and the
/// latest data points of every metric.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<Exported>>>,
    metrics: Arc<Mutex<Latest>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let metrics = Arc::new(Mutex::new(Latest::new()));
        let (kept, kept_metrics) = (spans.clone(), metrics.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (kept, kept_metrics) = (kept.clone(), kept_metrics.clone());
                std::thread::spawn(move || serve_exports(stream, &kept, &kept_metrics));
            }
        });
        Receiver {
            port,
            spans,
            metrics,
        }
    }

    /// Waits until `done` holds for the latest metrics; fails saying what it waited for.
    fn wait_metrics(&self, what: &str, done: impl Fn(&Latest) -> bool) -> Latest {
        let deadline = Instant::now() + ANSWER_WITHIN;
        loop {
            let metrics = self.metrics.lock().expect("metrics").clone();
            if done(&metrics) {
                return metrics;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver did not get {what} within {ANSWER_WITHIN:?}; got {metrics:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until `done` holds for the spans received; fails saying what it waited for.
    fn wait(&self, what: &str, done: impl Fn(&[Exported]) -> bool) -> Vec<Exported> {
        let deadline = Instant::now() + ANSWER_WITHIN;
        loop {
            let spans = self.spans.lock().expect("spans").clone();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver did not get {what} within {ANSWER_WITHIN:?}; got {spans:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Answers export requests on one (kept-alive) connection, decoding each body.
fn serve_exports(stream: TcpStream, spans: &Mutex<Vec<Exported>>, metrics: &Mutex<Latest>) {
    let _ = stream.set_read_timeout(Some(ANSWER_WITHIN));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        let mut request_line = None;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if request_line.is_none() {
                request_line = Some(line.clone());
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if request_line.is_some_and(|l| l.starts_with("POST /v1/metrics ")) {
            let request = ExportMetricsServiceRequest::decode(body.as_slice())
                .expect("an OTLP metrics export request");
            metrics
                .lock()
                .expect("metrics")
                .extend(decode_metrics(&request));
            if writer.write_all(answer.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let request =
            ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP export request");
        let mut decoded = Vec::new();
        for resource_spans in &request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_default();
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    decoded.push(Exported {
                        name: span.name.clone(),
                        kind: span.kind,
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent: hex::encode(&span.parent_span_id),
                        attributes: attributes(&span.attributes),
                        events: span.events.iter().map(|e| e.name.clone()).collect(),
                        event_attributes: span
                            .events
                            .iter()
                            .map(|e| attributes(&e.attributes))
                            .collect(),
                        status_code: span.status.as_ref().map_or(0, |s| s.code),
                        service: service.clone(),
                    });
                }
            }
        }
        spans.lock().expect("spans").extend(decoded);
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Every metric of one export request, by name, with its data points.
fn decode_metrics(request: &ExportMetricsServiceRequest) -> Latest {
    let mut latest = Latest::new();
    for resource in &request.resource_metrics {
        for scope in &resource.scope_metrics {
            for metric in &scope.metrics {
                let points: Vec<Point> = match &metric.data {
                    Some(Data::Sum(sum)) => sum.data_points.iter().map(number).collect(),
                    Some(Data::Gauge(gauge)) => gauge.data_points.iter().map(number).collect(),
                    Some(Data::Histogram(histogram)) => histogram
                        .data_points
                        .iter()
                        .map(|p| Point {
                            attributes: attributes(&p.attributes),
                            value: p.count as f64,
                            sum: p.sum,
                        })
                        .collect(),
                    other => panic!("an unexpected kind of metric {}: {other:?}", metric.name),
                };
                latest.insert(metric.name.clone(), points);
            }
        }
    }
    latest
}

fn number(point: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> Point {
    Point {
        attributes: attributes(&point.attributes),
        value: match point.value {
            Some(NumberValue::AsInt(n)) => n as f64,
            Some(NumberValue::AsDouble(x)) => x,
            None => f64::NAN,
        },
        sum: None,
    }
}

/// The value of `metric`'s point whose attributes include `with`, if exported.
fn point(latest: &Latest, metric: &str, with: &[(&str, &str)]) -> Option<f64> {
    latest
        .get(metric)?
        .iter()
        .find(|p| {
            with.iter()
                .all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|p| p.value)
}

/// `toolgate wrap --otlp URL` in front of the recording server, spoken to in raw lines.
struct Wrap {
    dir: tempfile::TempDir,
    child: Child,
    stdin: Option<ChildStdin>,
    out: mpsc::Receiver<String>,
}

impl Wrap {
    fn start(otlp: &str) -> Wrap {
        Wrap::start_with(otlp, &[])
    }

    /// With `env` set for the gateway.
    fn start_with(otlp: &str, env: &[(&str, &str)]) -> Wrap {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("policy.json"), POLICY).expect("write the policy");
        let mut child = Command::new(support::toolgate())
            .arg("wrap")
            .arg("--policy")
            .arg(path("policy.json"))
            .arg("--audit")
            .arg(path("audit.jsonl"))
            .args(["--grant", "ci", "--counters", "memory", "--no-events"])
            .args(["--otlp", otlp])
            .arg("--")
            .arg(python())
            .arg(e2e_script("recording_server.py"))
            .arg(path("record.jsonl"))
            .env("XDG_STATE_HOME", dir.path())
            // Export every 100 ms instead of every 5 s: the test waits less.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_RESOURCE_ATTRIBUTES")
            .env_remove("OTEL_METRIC_EXPORT_INTERVAL")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(path("stderr.log")).expect("the log"))
            .spawn()
            .expect("start toolgate wrap");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("wrap's stdout");
        let (tx, out) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Wrap {
            dir,
            child,
            stdin,
            out,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("wrap's stdin is open");
        writeln!(stdin, "{message}").expect("write to wrap");
        stdin.flush().expect("flush wrap's stdin");
    }

    /// Sends a request and waits for the answer with its id.
    fn ask(&mut self, message: Value) -> Value {
        let id = message["id"].clone();
        self.send(&message);
        let deadline = Instant::now() + ANSWER_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.out.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no answer to request {id} within {ANSWER_WITHIN:?}; log:\n{}",
                    self.log()
                )
            });
            let answer: Value = serde_json::from_str(&line).expect("wrap writes JSON lines");
            if answer["id"] == id {
                return answer;
            }
        }
    }

    fn handshake(&mut self) {
        let answer = self.ask(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
        );
        assert!(answer.get("result").is_some(), "{answer}");
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    }

    /// Closes stdin and waits for wrap to exit (it exports what is queued first).
    fn finish(mut self) -> tempfile::TempDir {
        drop(self.stdin.take());
        let deadline = Instant::now() + ANSWER_WITHIN;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "wrap exited with {status}; log:\n{}",
                    self.log()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "wrap did not exit within {ANSWER_WITHIN:?} of its stdin closing; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        for name in ["record.jsonl", "audit.jsonl", "stderr.log"] {
            let _ = std::fs::copy(self.dir.path().join(name), dir.path().join(name));
        }
        dir
    }
}

impl Drop for Wrap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(id: u64, tool: &str, meta: Option<Value>) -> Value {
    let mut params = json!({"name": tool, "arguments": {"message": "hi"}});
    if let Some(meta) = meta {
        params["_meta"] = meta;
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

/// The `tools/call` lines that reached the recording server, by request id.
fn received_calls(dir: &Path) -> BTreeMap<u64, Value> {
    let text = std::fs::read_to_string(dir.join("record.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["t"] == "recv")
        .filter_map(|r| serde_json::from_str::<Value>(r["raw"].as_str()?.trim()).ok())
        .filter(|m| m["method"] == "tools/call")
        .filter_map(|m| Some((m["id"].as_u64()?, m)))
        .collect()
}

fn audit(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Picks the span of `kind` for the request with id `id`.
fn by_request(id: &'static str, kind: i32) -> impl Fn(&Exported) -> bool {
    move |s: &Exported| {
        s.kind == kind && s.attributes.get("jsonrpc.request.id").map(String::as_str) == Some(id)
    }
}

fn the<'a>(spans: &'a [Exported], what: &str, pick: impl Fn(&Exported) -> bool) -> &'a Exported {
    let found: Vec<&Exported> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "exactly one {what} span; all: {spans:#?}");
    found[0]
}

#[test]
fn calls_are_traced_client_to_gateway_to_server_with_mcp_attributes() {
    let receiver = Receiver::start();
    let mut wrap = Wrap::start(&receiver.url());
    wrap.handshake();
    let continued = wrap.ask(call(
        2,
        "echo",
        Some(json!({"traceparent": format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"), "tracestate": "k=v"})),
    ));
    assert!(continued.get("result").is_some(), "{continued}");
    let started = wrap.ask(call(3, "echo", None));
    assert!(started.get("result").is_some(), "{started}");
    let denied = wrap.ask(call(4, "rm", None));
    assert_eq!(denied["result"]["isError"], true, "{denied}");
    let dir = wrap.finish();

    let spans = receiver.wait(
        "7 spans (initialize × 2, 2 allowed calls × 2, 1 denied)",
        |s| s.len() >= 7,
    );
    let server_kind = SpanKind::Server as i32;
    let client_kind = SpanKind::Client as i32;

    // A client's traceparent is continued: the gateway's SERVER span is its child...
    let server2 = the(&spans, "SERVER of request 2", by_request("2", server_kind));
    assert_eq!(server2.name, "tools/call echo");
    assert_eq!(server2.trace_id, CLIENT_TRACE);
    assert_eq!(server2.parent, CLIENT_SPAN);
    assert_eq!(server2.service, "toolgate");
    for (key, value) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "echo"),
        ("gen_ai.operation.name", "execute_tool"),
        ("toolgate.decision", "allow"),
        ("toolgate.rule", "/tools/echo"),
        ("toolgate.grant", "ci"),
    ] {
        assert_eq!(
            server2.attributes.get(key).map(String::as_str),
            Some(value),
            "{key}: {server2:#?}"
        );
    }
    assert!(
        server2.attributes.contains_key("mcp.session.id"),
        "{server2:#?}"
    );
    // ...its CLIENT span the SERVER span's child...
    let client2 = the(&spans, "CLIENT of request 2", by_request("2", client_kind));
    assert_eq!(client2.name, "tools/call echo");
    assert_eq!(client2.trace_id, CLIENT_TRACE);
    assert_eq!(client2.parent, server2.span_id);
    // ...and the request reaches the server untouched, with the client's own traceparent.
    let received = received_calls(dir.path());
    assert_eq!(
        received[&2]["params"]["_meta"],
        json!({"traceparent": format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"), "tracestate": "k=v"})
    );

    // Without one, the trace starts at the gateway, and the server is told the CLIENT span.
    let server3 = the(&spans, "SERVER of request 3", by_request("3", server_kind));
    assert_eq!(server3.parent, "", "{server3:#?}");
    let client3 = the(&spans, "CLIENT of request 3", by_request("3", client_kind));
    assert_eq!(client3.parent, server3.span_id);
    assert_eq!(
        received[&3]["params"]["_meta"]["traceparent"],
        json!(format!("00-{}-{}-01", client3.trace_id, client3.span_id))
    );
    assert_eq!(
        received[&3]["params"]["arguments"],
        json!({"message": "hi"})
    );

    // A denied call has its SERVER span only, marked as an error, and never reaches the server.
    let server4 = the(&spans, "SERVER of request 4", by_request("4", server_kind));
    assert_eq!(server4.name, "tools/call rm");
    assert_eq!(
        server4
            .attributes
            .get("toolgate.decision")
            .map(String::as_str),
        Some("deny")
    );
    assert_eq!(
        server4.attributes.get("error.type").map(String::as_str),
        Some("deny")
    );
    assert_eq!(server4.status_code, 2, "status ERROR: {server4:#?}");
    assert!(spans.iter().all(|s| !by_request("4", client_kind)(s)));
    assert!(!received.contains_key(&4));

    // Audit records join the trace: the decision and the outcome name it.
    let records = audit(dir.path());
    let of_call = |kind: &str, trace: &str| {
        records
            .iter()
            .filter(|r| r["kind"] == kind && r["trace_id"] == trace)
            .count()
    };
    assert_eq!(of_call("decision", CLIENT_TRACE), 1, "{records:#?}");
    assert_eq!(of_call("outcome", CLIENT_TRACE), 1, "{records:#?}");
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "decision" && r["span_id"] == server2.span_id.as_str()),
        "{records:#?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["decision"] == "deny" && r["trace_id"] == server4.trace_id.as_str()),
        "{records:#?}"
    );
}

/// Calls through a gateway whose collector is `otlp` all get their answers, and the gateway
/// stops normally when its client leaves.
fn calls_are_answered_with_collector_at(otlp: &str) {
    let mut wrap = Wrap::start(otlp);
    wrap.handshake();
    for id in 1..=20 {
        let answer = wrap.ask(call(id, "echo", None));
        assert!(answer.get("result").is_some(), "{answer}");
    }
    let dir = wrap.finish();
    assert_eq!(received_calls(dir.path()).len(), 20);
}

#[test]
fn a_collector_that_is_down_costs_calls_nothing() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    calls_are_answered_with_collector_at(&format!("http://127.0.0.1:{port}"));
}

#[test]
fn a_collector_that_never_answers_costs_calls_nothing() {
    // Accepts connections and reads nothing: every export waits for its timeout.
    let (port, _held) = support::silent_listener();
    calls_are_answered_with_collector_at(&format!("http://127.0.0.1:{port}"));
}

/// The `tools/call echo` spans among `spans`.
fn echo_spans(spans: &[Exported]) -> usize {
    spans.iter().filter(|s| s.name == "tools/call echo").count()
}

#[test]
fn spans_still_queued_at_stop_are_exported_before_wrap_exits() {
    let receiver = Receiver::start();
    // A timer that never fires during the test: only the stop can export these.
    let mut wrap = Wrap::start_with(&receiver.url(), &[("OTEL_BSP_SCHEDULE_DELAY", "600000")]);
    wrap.handshake();
    for id in 1..=3 {
        let answer = wrap.ask(call(id, "echo", None));
        assert!(answer.get("result").is_some(), "{answer}");
    }
    wrap.finish();
    let spans = receiver.wait(
        "the 3 calls' SERVER and CLIENT spans, exported at stop",
        |s| echo_spans(s) >= 6,
    );
    assert_eq!(echo_spans(&spans), 6, "{spans:#?}");
}

#[test]
fn a_full_batch_is_exported_before_the_timer() {
    let receiver = Receiver::start();
    let mut wrap = Wrap::start_with(
        &receiver.url(),
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
        ],
    );
    // `initialize` (2 spans) and one call (2 more) make a batch of 4.
    wrap.handshake();
    let answer = wrap.ask(call(1, "echo", None));
    assert!(answer.get("result").is_some(), "{answer}");
    receiver.wait("a batch of 4 spans while wrap still runs", |s| {
        echo_spans(s) == 2
    });
    wrap.finish();
}

#[test]
fn a_held_call_has_events_when_held_and_when_resolved() {
    let receiver = Receiver::start();
    let mut wrap = Wrap::start(&receiver.url());
    wrap.handshake();
    // Nobody approves it: the 1 s approval timeout denies it.
    let answer = wrap.ask(call(5, "wait", None));
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    let _ = wrap.finish();
    let spans = receiver.wait("the held call's SERVER span", |s| {
        s.iter().any(by_request("5", SpanKind::Server as i32))
    });
    let held = the(
        &spans,
        "SERVER of request 5",
        by_request("5", SpanKind::Server as i32),
    );
    assert_eq!(
        held.events,
        ["toolgate.hold", "toolgate.hold_resolved"],
        "{held:#?}"
    );
    assert_eq!(
        held.event_attributes[1]
            .get("toolgate.resolved_by")
            .map(String::as_str),
        Some("timeout")
    );
    assert_eq!(
        held.event_attributes[1]
            .get("toolgate.approved")
            .map(String::as_str),
        Some("false")
    );
    assert_eq!(
        held.attributes.get("error.type").map(String::as_str),
        Some("hold_denied")
    );
    assert!(
        spans
            .iter()
            .all(|s| !by_request("5", SpanKind::Client as i32)(s))
    );
}

/// The lines of `method` that reached the recording server, by request id.
fn received_requests(dir: &Path, method: &str) -> BTreeMap<u64, Value> {
    let text = std::fs::read_to_string(dir.join("record.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["t"] == "recv")
        .filter_map(|r| serde_json::from_str::<Value>(r["raw"].as_str()?.trim()).ok())
        .filter(|m| m["method"] == method)
        .filter_map(|m| Some((m["id"].as_u64()?, m)))
        .collect()
}

#[test]
fn every_request_is_traced_named_by_method_and_target() {
    let receiver = Receiver::start();
    let mut wrap = Wrap::start(&receiver.url());
    wrap.handshake();
    let requests = [
        json!({"jsonrpc": "2.0", "id": 10, "method": "tools/list"}),
        json!({"jsonrpc": "2.0", "id": 11, "method": "prompts/get",
               "params": {"name": "review", "arguments": {"code": "x"}}}),
        json!({"jsonrpc": "2.0", "id": 12, "method": "resources/read",
               "params": {"uri": "file:///etc/motd", "_meta": {"progressToken": 1}}}),
        json!({"jsonrpc": "2.0", "id": 13, "method": "vendor/thing\u{1b}[31m", "params": {}}),
    ];
    for request in requests {
        let answer = wrap.ask(request);
        assert!(answer.get("result").is_some(), "{answer}");
    }
    let dir = wrap.finish();
    let spans = receiver.wait("10 spans (5 requests × SERVER and CLIENT)", |s| {
        s.len() >= 10
    });
    let server_kind = SpanKind::Server as i32;
    let client_kind = SpanKind::Client as i32;

    for (id, name, method) in [
        ("0", "initialize", "initialize"),
        ("10", "tools/list", "tools/list"),
        ("11", "prompts/get review", "prompts/get"),
        ("12", "resources/read", "resources/read"),
        ("13", "_OTHER", "_OTHER"),
    ] {
        let server = the(
            &spans,
            &format!("SERVER of {id}"),
            by_request(id, server_kind),
        );
        let client = the(
            &spans,
            &format!("CLIENT of {id}"),
            by_request(id, client_kind),
        );
        assert_eq!(server.name, name, "{server:#?}");
        assert_eq!(client.name, name, "{client:#?}");
        assert_eq!(client.parent, server.span_id, "{client:#?}");
        assert_eq!(client.trace_id, server.trace_id);
        assert_eq!(server.parent, "", "no traceparent came: {server:#?}");
        for span in [server, client] {
            assert_eq!(
                span.attributes.get("mcp.method.name").map(String::as_str),
                Some(method),
                "{span:#?}"
            );
            assert!(span.attributes.contains_key("mcp.session.id"), "{span:#?}");
            // The version `initialize` settled on (the client's ask, on `initialize` itself).
            assert_eq!(
                span.attributes
                    .get("mcp.protocol.version")
                    .map(String::as_str),
                Some("2025-11-25"),
                "{span:#?}"
            );
            assert_eq!(span.status_code, 0, "not an error: {span:#?}");
        }
    }
    let prompt = the(&spans, "SERVER of 11", by_request("11", server_kind));
    assert_eq!(
        prompt
            .attributes
            .get("gen_ai.prompt.name")
            .map(String::as_str),
        Some("review")
    );
    let read = the(&spans, "SERVER of 12", by_request("12", server_kind));
    assert_eq!(
        read.attributes.get("mcp.resource.uri").map(String::as_str),
        Some("file:///etc/motd")
    );
    // Arguments are never recorded.
    assert!(
        spans
            .iter()
            .all(|s| s.attributes.values().all(|v| !v.contains("\"code\""))),
        "{spans:#?}"
    );

    // Each request reached the server with its CLIENT span's traceparent, everything else
    // as sent.
    for (method, id, rest) in [
        ("initialize", "0", json!({"protocolVersion": "2025-11-25"})),
        (
            "prompts/get",
            "11",
            json!({"name": "review", "arguments": {"code": "x"}}),
        ),
        ("resources/read", "12", json!({"uri": "file:///etc/motd"})),
    ] {
        let number: u64 = id.parse().expect("a numeric id");
        let received = &received_requests(dir.path(), method)[&number];
        let client = the(
            &spans,
            &format!("CLIENT of {id}"),
            by_request(id, client_kind),
        );
        assert_eq!(
            received["params"]["_meta"]["traceparent"],
            json!(format!("00-{}-{}-01", client.trace_id, client.span_id)),
            "{received}"
        );
        for (key, value) in rest.as_object().expect("an object") {
            assert_eq!(&received["params"][key], value, "{received}");
        }
    }
    assert_eq!(
        received_requests(dir.path(), "resources/read")[&12]["params"]["_meta"]["progressToken"],
        json!(1)
    );
    // A request without params goes as it came.
    assert_eq!(
        received_requests(dir.path(), "tools/list")[&10].get("params"),
        None
    );
}

#[test]
fn wrap_pushes_the_metrics_by_otlp() {
    let receiver = Receiver::start();
    // Collect every 200 ms instead of every minute: the test waits less.
    let mut wrap = Wrap::start_with(&receiver.url(), &[("OTEL_METRIC_EXPORT_INTERVAL", "200")]);
    wrap.handshake();
    for id in 1..=2 {
        let answer = wrap.ask(call(id, "echo", None));
        assert!(answer.get("result").is_some(), "{answer}");
    }
    let denied = wrap.ask(call(3, "rm", None));
    assert_eq!(denied["result"]["isError"], true, "{denied}");
    // Counted and exported while the gateway runs, not only at its stop.
    let calls = |m: &Latest, decision: &str, tool: &str| {
        point(
            m,
            "toolgate.calls",
            &[("decision", decision), ("tool", tool), ("grant", "ci")],
        )
    };
    receiver.wait_metrics("2 allowed and 1 denied call", |m| {
        calls(m, "allow", "echo") == Some(2.0) && calls(m, "deny", "rm") == Some(1.0)
    });
    let held = wrap.ask(call(4, "wait", None));
    assert_eq!(held["result"]["isError"], true, "{held}");
    let _ = wrap.finish();

    let latest = receiver.wait_metrics("the timed-out hold and the durations", |m| {
        point(m, "toolgate.hold.wait", &[("resolution", "timeout")]) == Some(1.0)
            && point(
                m,
                "mcp.server.operation.duration",
                &[("gen_ai.tool.name", "echo")],
            ) == Some(2.0)
    });
    assert_eq!(
        point(
            &latest,
            "toolgate.call.duration",
            &[("tool", "echo"), ("error", "false")]
        ),
        Some(2.0),
        "{latest:#?}"
    );
    assert_eq!(
        point(
            &latest,
            "mcp.server.operation.duration",
            &[
                ("mcp.method.name", "tools/call"),
                ("gen_ai.tool.name", "echo")
            ]
        ),
        Some(2.0),
        "{latest:#?}"
    );
    // The hold waited about its 1 s timeout.
    let wait = latest["toolgate.hold.wait"]
        .iter()
        .find(|p| p.attributes.get("resolution").map(String::as_str) == Some("timeout"))
        .and_then(|p| p.sum)
        .expect("the hold wait's sum");
    assert!((0.9..10.0).contains(&wait), "{wait}");
    assert_eq!(
        point(&latest, "toolgate.held_calls", &[]),
        Some(0.0),
        "{latest:#?}"
    );
    assert_eq!(
        point(
            &latest,
            "toolgate.policy.reloads",
            &[("result", "rejected")]
        ),
        Some(0.0),
        "{latest:#?}"
    );
    for name in ["toolgate.store.errors", "toolgate.tool_changes"] {
        assert!(latest.contains_key(name), "{name}: {latest:#?}");
    }
}
