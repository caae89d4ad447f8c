//! OTLP over gRPC and over TLS, against real receivers in the test: a gRPC collector (HTTP/2,
//! the official `opentelemetry-proto` messages behind gRPC's 5-byte prefix, the status in
//! trailers) and an OTLP/HTTP one, each plain or behind rustls with a private CA made here
//! (rcgen). The built binary exports to them, `wrap` driven by the real Python `mcp` client
//! in front of `@modelcontextprotocol/server-everything`, `serve` by the same client over
//! Streamable HTTP. Checks the spans (names, kinds, parent links, decision attributes) and
//! the `toolgate.calls` data points that arrive, that every request was a well-formed gRPC
//! call, that a collector whose certificate the gateway does not trust gets nothing, and that
//! a gRPC collector that is down or never answers costs calls nothing.

#[path = "serve_support/running.rs"]
mod running;

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as NumberValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use running::{Serve, Setup};
use serde_json::json;
use support::ANSWER_WITHIN;
use support::agent::{Agent, text};
use support::peers::everything;
use support::wait::{wait_for, wait_until};

/// `echo` allowed, everything else denied.
const POLICY: &str = r#"{"version": "1", "default": "deny", "tools": {"echo": {}}}"#;

const TRACE_SERVICE: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const METRICS_SERVICE: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// Export every 100 ms (spans) and 200 ms (metrics) instead of every 5 s and 60 s.
const SOON: [(&str, &str); 2] = [
    ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
];

/// What a collector speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    /// OTLP/gRPC over HTTP/2.
    Grpc,
    /// OTLP/HTTP (http/protobuf) over HTTP/1.1.
    Http,
}

/// One span as the collector decoded it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    kind: i32,
    span_id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
}

/// Everything a collector received.
#[derive(Debug, Default)]
struct Received {
    spans: Vec<Span>,
    /// The latest `toolgate.calls` value by (decision, tool, server).
    calls: BTreeMap<(String, String, String), f64>,
    /// `{version} {path}` of each export request.
    requests: Vec<String>,
    /// Whatever was not a well-formed export request, said in words.
    problems: Vec<String>,
    /// TLS handshakes that failed (the client refused the certificate, or spoke no TLS).
    handshakes_failed: usize,
}

impl Received {
    fn take_traces(&mut self, message: &[u8]) -> Result<(), String> {
        let request = ExportTraceServiceRequest::decode(message).map_err(|e| e.to_string())?;
        for resource in &request.resource_spans {
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    self.spans.push(Span {
                        name: span.name.clone(),
                        kind: span.kind,
                        span_id: hex::encode(&span.span_id),
                        parent: hex::encode(&span.parent_span_id),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        Ok(())
    }

    fn take_metrics(&mut self, message: &[u8]) -> Result<(), String> {
        let request = ExportMetricsServiceRequest::decode(message).map_err(|e| e.to_string())?;
        for resource in &request.resource_metrics {
            for scope in &resource.scope_metrics {
                for metric in scope.metrics.iter().filter(|m| m.name == "toolgate.calls") {
                    let Some(Data::Sum(sum)) = &metric.data else {
                        return Err(format!("toolgate.calls is not a sum: {metric:?}"));
                    };
                    for point in &sum.data_points {
                        let a = attributes(&point.attributes);
                        let label = |k: &str| a.get(k).cloned().unwrap_or_default();
                        let value = match point.value {
                            Some(NumberValue::AsInt(n)) => n as f64,
                            Some(NumberValue::AsDouble(x)) => x,
                            None => f64::NAN,
                        };
                        self.calls
                            .insert((label("decision"), label("tool"), label("server")), value);
                    }
                }
            }
        }
        Ok(())
    }

    /// The one span named `name` of `kind`, if it came.
    fn span(&self, name: &str, kind: SpanKind) -> Option<&Span> {
        self.spans
            .iter()
            .find(|s| s.name == name && s.kind == kind as i32)
    }

    /// The latest `toolgate.calls` of `decision` and `tool` through a server whose label
    /// ends with `server` (`serve` names its server; `wrap` its server's command line).
    fn calls(&self, decision: &str, tool: &str, server: &str) -> Option<f64> {
        self.calls
            .iter()
            .find(|((d, t, s), _)| d == decision && t == tool && s.ends_with(server))
            .map(|(_, n)| *n)
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// A collector on loopback, on a runtime of its own, stopped when dropped.
struct Collector {
    addr: SocketAddr,
    tls: bool,
    received: Arc<Mutex<Received>>,
    _runtime: tokio::runtime::Runtime,
}

impl Collector {
    /// A collector speaking `speaks`, behind TLS with `tls` when given.
    fn start(speaks: Speaks, tls: Option<Arc<rustls::ServerConfig>>) -> Collector {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the collector's runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the collector");
        let addr = listener.local_addr().expect("the collector's address");
        let received = Arc::new(Mutex::new(Received::default()));
        let kept = received.clone();
        let secure = tls.is_some();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (kept, tls) = (kept.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(config) => {
                            match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                                Ok(stream) => serve_connection(speaks, stream, kept).await,
                                Err(_) => kept.lock().expect("received").handshakes_failed += 1,
                            }
                        }
                        None => serve_connection(speaks, stream, kept).await,
                    }
                });
            }
        });
        Collector {
            addr,
            tls: secure,
            received,
            _runtime: runtime,
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Waits until `found` finds what it looks for in what was received.
    #[track_caller]
    fn wait<T>(&self, what: &str, found: impl Fn(&Received) -> Option<T>) -> T {
        wait_for(what, ANSWER_WITHIN, || {
            let received = self.received.lock().expect("received");
            found(&received).ok_or_else(|| format!("received: {received:#?}"))
        })
    }

    fn received(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().expect("received")
    }
}

async fn serve_connection<S>(speaks: Speaks, stream: S, kept: Arc<Mutex<Received>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let kept = kept.clone();
        async move { Ok::<_, Infallible>(answer(speaks, request, &kept).await) }
    });
    let io = TokioIo::new(stream);
    // A connection the gateway drops ends here; what it sent before is kept.
    let _ = match speaks {
        Speaks::Grpc => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await
        }
        Speaks::Http => {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
        }
    };
}

type Body = BoxBody<Bytes, Infallible>;

/// An answer of `frames`, with `status` and `headers`.
fn reply(
    status: u16,
    headers: &[(&'static str, &'static str)],
    frames: Vec<Frame<Bytes>>,
) -> hyper::Response<Body> {
    let body = StreamBody::new(futures_util::stream::iter(
        frames.into_iter().map(Ok::<_, Infallible>),
    ));
    let mut response = hyper::Response::new(body.boxed());
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("a status");
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(*name, hyper::header::HeaderValue::from_static(value));
    }
    response
}

/// A gRPC answer with `status` in its trailers, after an empty Export…ServiceResponse when OK.
fn grpc_reply(status: &'static str) -> hyper::Response<Body> {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert(
        "grpc-status",
        hyper::header::HeaderValue::from_static(status),
    );
    let mut frames = Vec::new();
    if status == "0" {
        // An empty message: no partial success.
        frames.push(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0])));
    }
    frames.push(Frame::trailers(trailers));
    reply(200, &[("content-type", "application/grpc")], frames)
}

async fn answer(
    speaks: Speaks,
    request: hyper::Request<Incoming>,
    kept: &Mutex<Received>,
) -> hyper::Response<Body> {
    let version = request.version();
    let path = request.uri().path().to_owned();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (content_type, te) = (header("content-type"), header("te"));
    let body = request.into_body().collect().await.map(|b| b.to_bytes());
    let mut received = kept.lock().expect("received");
    received.requests.push(format!("{version:?} {path}"));
    let Ok(body) = body else {
        received
            .problems
            .push(format!("{path}: the body broke off"));
        return reply(400, &[], Vec::new());
    };
    match speaks {
        Speaks::Grpc => {
            if content_type != "application/grpc" || te != "trailers" {
                received
                    .problems
                    .push(format!("{path}: content-type {content_type:?}, te {te:?}"));
            }
            // One uncompressed message behind its 5-byte prefix.
            let message = match body.get(..5) {
                Some([0, a, b, c, d])
                    if u32::from_be_bytes([*a, *b, *c, *d]) as usize == body.len() - 5 =>
                {
                    body.slice(5..)
                }
                _ => {
                    received
                        .problems
                        .push(format!("{path}: not one gRPC message: {body:?}"));
                    return grpc_reply("3");
                }
            };
            let taken = match path.as_str() {
                TRACE_SERVICE => received.take_traces(&message),
                METRICS_SERVICE => received.take_metrics(&message),
                _ => return grpc_reply("12"),
            };
            match taken {
                Ok(()) => grpc_reply("0"),
                Err(e) => {
                    received.problems.push(format!("{path}: {e}"));
                    grpc_reply("3")
                }
            }
        }
        Speaks::Http => {
            let taken = match path.as_str() {
                "/v1/traces" => received.take_traces(&body),
                "/v1/metrics" => received.take_metrics(&body),
                _ => return reply(404, &[], Vec::new()),
            };
            if let Err(e) = taken {
                received.problems.push(format!("{path}: {e}"));
                return reply(400, &[], Vec::new());
            }
            reply(
                200,
                &[("content-type", "application/x-protobuf")],
                Vec::new(),
            )
        }
    }
}

/// rustls's `ring` provider (the one toolgate builds with; deprecated in rustls 0.23.48 for
/// lacking post-quantum key exchange, which is beside the point of these tests).
#[allow(deprecated)]
fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(toolgate::testing::tls::ring_provider())
}

/// A private CA and a server certificate it signed for 127.0.0.1: the CA's PEM, and the
/// server's TLS configuration offering `alpn`.
fn private_ca(alpn: &[u8]) -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "toolgate test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("a CA key"))
        .expect("the CA certificate");
    let key = KeyPair::generate().expect("a server key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("server parameters")
        .signed_by(&key, &ca)
        .expect("the server certificate");
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![server.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("the server's TLS configuration");
    config.alpn_protocols = vec![alpn.to_vec()];
    (ca.pem(), Arc::new(config))
}

/// The real Python client over stdio, starting `toolgate wrap --otlp {otlp}` with `env`
/// in front of server-everything; the gateway's files in `dir`.
fn wrap_client(dir: &Path, otlp: &str, env: &[(&str, &str)]) -> Agent {
    std::fs::write(dir.join("policy.json"), POLICY).expect("write the policy");
    // The SDK passes the server only a few variables: `env` sets the gateway's.
    let mut command = vec!["/usr/bin/env".to_owned()];
    command.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    command.extend(support::agent::wrap(
        dir,
        "ci",
        &["--no-events", "--otlp", otlp],
        everything(),
    ));
    Agent::stdio("legacy", &dir.join("gateway.log"), &command, &[])
}

/// An allowed `echo` and a denied `get-env`.
fn allowed_and_denied(client: &mut Agent) {
    let allowed = client.call("echo", json!({"message": "hi"}));
    assert_eq!(text(&allowed), "Echo: hi", "{allowed}");
    let denied = client.call("get-env", json!({}));
    assert_eq!(denied["is_error"], true, "{denied}");
}

/// The SERVER and CLIENT spans of the allowed `echo` (the CLIENT the SERVER's child) and
/// the SERVER span of the denied `get-env`.
fn check_call_spans(collector: &Collector) {
    let (server, client) = collector.wait("the SERVER and CLIENT spans of echo", |r| {
        Some((
            r.span("tools/call echo", SpanKind::Server)?.clone(),
            r.span("tools/call echo", SpanKind::Client)?.clone(),
        ))
    });
    assert_eq!(client.parent, server.span_id, "{client:#?} {server:#?}");
    assert_eq!(
        server
            .attributes
            .get("toolgate.decision")
            .map(String::as_str),
        Some("allow"),
        "{server:#?}"
    );
    assert_eq!(
        server
            .attributes
            .get("gen_ai.tool.name")
            .map(String::as_str),
        Some("echo")
    );
    let denied = collector.wait("the SERVER span of get-env", |r| {
        r.span("tools/call get-env", SpanKind::Server).cloned()
    });
    assert_eq!(
        denied
            .attributes
            .get("toolgate.decision")
            .map(String::as_str),
        Some("deny"),
        "{denied:#?}"
    );
    assert!(
        collector
            .received()
            .span("tools/call get-env", SpanKind::Client)
            .is_none(),
        "a denied call never goes upstream"
    );
}

/// Every request reached the signal's gRPC service over HTTP/2, well formed.
fn check_grpc_requests(collector: &Collector) {
    let received = collector.received();
    assert!(received.problems.is_empty(), "{:#?}", received.problems);
    assert!(!received.requests.is_empty());
    for request in &received.requests {
        assert!(
            request == &format!("HTTP/2.0 {TRACE_SERVICE}")
                || request == &format!("HTTP/2.0 {METRICS_SERVICE}"),
            "{request}"
        );
    }
}

#[test]
fn wrap_exports_spans_and_metrics_over_grpc() {
    let collector = Collector::start(Speaks::Grpc, None);
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut env = vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
    env.extend(SOON);
    let mut client = wrap_client(dir.path(), &collector.url(), &env);
    allowed_and_denied(&mut client);
    check_call_spans(&collector);
    collector.wait("toolgate.calls: echo allowed, get-env denied", |r| {
        (r.calls("allow", "echo", "mcp-server-everything stdio") == Some(1.0)
            && r.calls("deny", "get-env", "mcp-server-everything stdio") == Some(1.0))
        .then_some(())
    });
    assert!(client.close().success(), "{}", client.log());
    check_grpc_requests(&collector);
}

#[test]
fn serve_exports_metrics_and_spans_over_grpc_with_tls_to_a_private_ca() {
    let (ca, tls) = private_ca(b"h2");
    let collector = Collector::start(Speaks::Grpc, Some(tls));
    let pki = tempfile::tempdir().expect("a temp dir");
    let ca_file = pki.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("write the CA");
    let ca_file = ca_file.display().to_string();
    let url = collector.url();
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.as_str()),
    ];
    env.extend(SOON);
    let command = everything();
    let serve = Serve::start(Setup {
        policy: POLICY,
        servers: json!({ "everything": { "command": command[0], "args": &command[1..] } }),
        grants: &["ci"],
        extra: &["--otlp", &url],
        env: &env,
        ..Setup::default()
    });
    let mut client = serve.client("legacy", "everything", &serve.tokens[0]);
    allowed_and_denied(&mut client);
    collector.wait(
        "toolgate.calls from serve: echo allowed, get-env denied",
        |r| {
            (r.calls("allow", "echo", "everything") == Some(1.0)
                && r.calls("deny", "get-env", "everything") == Some(1.0))
            .then_some(())
        },
    );
    check_call_spans(&collector);
    check_grpc_requests(&collector);
    assert_eq!(collector.received().handshakes_failed, 0);
}

#[test]
fn wrap_exports_over_https_trusting_the_certificate_variable() {
    let (ca, tls) = private_ca(b"http/1.1");
    let collector = Collector::start(Speaks::Http, Some(tls));
    let dir = tempfile::tempdir().expect("a temp dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("write the CA");
    let ca_file = ca_file.display().to_string();
    let mut env = vec![("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca_file.as_str())];
    env.extend(SOON);
    // Traces trust the CA; metrics are off (their own certificate variable is not set).
    env.push(("OTEL_METRICS_EXPORTER", "none"));
    let mut client = wrap_client(dir.path(), &collector.url(), &env);
    allowed_and_denied(&mut client);
    check_call_spans(&collector);
    assert!(client.close().success(), "{}", client.log());
    let received = collector.received();
    assert!(received.problems.is_empty(), "{:#?}", received.problems);
    assert!(
        received.requests.iter().all(|r| r == "HTTP/1.1 /v1/traces"),
        "{:#?}",
        received.requests
    );
}

#[test]
fn a_collector_whose_certificate_is_not_trusted_gets_nothing_and_calls_go_on() {
    let (_, tls) = private_ca(b"h2");
    let collector = Collector::start(Speaks::Grpc, Some(tls));
    let dir = tempfile::tempdir().expect("a temp dir");
    // Another CA than the one that signed the collector's certificate.
    let (other_ca, _) = private_ca(b"h2");
    let ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&ca_file, other_ca).expect("write the CA");
    let ca_file = ca_file.display().to_string();
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.as_str()),
    ];
    env.extend(SOON);
    let mut client = wrap_client(dir.path(), &collector.url(), &env);
    for _ in 0..5 {
        allowed_and_denied(&mut client);
    }
    // The gateway tried (and refused the certificate) while the calls were answered.
    collector.wait("a refused TLS handshake", |r| {
        (r.handshakes_failed > 0).then_some(())
    });
    assert!(client.close().success(), "{}", client.log());
    let received = collector.received();
    assert!(received.requests.is_empty(), "{:#?}", received.requests);
    assert!(received.spans.is_empty());
}

/// Twenty calls through `wrap` exporting by gRPC to `otlp` are all answered, and the
/// gateway stops normally when its client leaves.
fn calls_are_answered_with_grpc_collector_at(otlp: &str) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut env = vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
    env.extend(SOON);
    let mut client = wrap_client(dir.path(), otlp, &env);
    for n in 0..20 {
        let answer = client.call("echo", json!({"message": format!("{n}")}));
        assert_eq!(text(&answer), format!("Echo: {n}"), "{answer}");
    }
    assert!(client.close().success(), "{}", client.log());
}

#[test]
fn a_grpc_collector_that_is_down_costs_calls_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    calls_are_answered_with_grpc_collector_at(&format!("http://127.0.0.1:{port}"));
}

#[test]
fn a_grpc_collector_that_never_answers_costs_calls_nothing() {
    // Accepts connections and reads nothing: no HTTP/2 handshake ever completes.
    let (port, held) = support::silent_listener();
    calls_are_answered_with_grpc_collector_at(&format!("http://127.0.0.1:{port}"));
    wait_until("the gateway's export connection", ANSWER_WITHIN, || {
        !held.lock().expect("streams").is_empty()
    });
}

#[test]
fn an_unreadable_certificate_file_stops_the_gateway_at_start_saying_which() {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("policy.json"), POLICY).expect("write the policy");
    let missing = dir.path().join("no-such-ca.pem");
    let args = support::agent::wrap(
        dir.path(),
        "ci",
        &["--no-events", "--otlp", "https://127.0.0.1:4317"],
        vec!["true".to_owned()],
    );
    let output = std::process::Command::new(&args[0])
        .args(&args[1..])
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &missing)
        .env("XDG_STATE_HOME", dir.path())
        .env("XDG_RUNTIME_DIR", dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run toolgate wrap");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && stderr.contains("no-such-ca.pem"),
        "{stderr}"
    );
}
