//! OpenTelemetry traces against a real receiver: an OTLP/HTTP endpoint inside the test that
//! decodes the export requests of the built binary (`toolgate wrap --otlp`) with the official
//! `opentelemetry-proto` definitions, in front of `tests/e2e/recording_server.py`, which
//! records every line that reaches it. Checks span names, kinds, parent links client →
//! gateway → server, attributes, the `traceparent` the server receives, the audit records'
//! `trace_id`/`span_id`; and that a collector that is down or never answers costs calls
//! nothing.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
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

/// An OTLP/HTTP receiver on loopback: every span of every export request, decoded.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<Exported>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || serve_exports(stream, &kept));
            }
        });
        Receiver { port, spans }
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
fn serve_exports(stream: TcpStream, spans: &Mutex<Vec<Exported>>) {
    let _ = stream.set_read_timeout(Some(ANSWER_WITHIN));
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
        if reader.read_exact(&mut body).is_err() {
            return;
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
        let answer =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
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

    let spans = receiver.wait("5 spans (2 allowed calls × 2, 1 denied)", |s| s.len() >= 5);
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
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().expect("streams").push(stream);
        }
    });
    calls_are_answered_with_collector_at(&format!("http://127.0.0.1:{port}"));
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
