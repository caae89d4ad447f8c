//! How OTLP exports leave the process, for traces and metrics alike: the settings both
//! signals read (endpoint, protocol, trusted certificate) and the HTTP client that carries
//! the SDK's export requests.
//!
//! The SDK's OTLP/HTTP exporter encodes each batch as protobuf and hands it to
//! [`ExportClient`] as an HTTP request. For `http/protobuf` the client posts it as it is;
//! for `grpc` it makes the same bytes a gRPC unary call (HTTP/2, the message behind a
//! 5-byte prefix, posted to the signal's `…Service/Export`, the status read from the
//! answer's trailers) and gives the SDK back an HTTP answer with what gRPC said. So gRPC
//! costs no second HTTP/2 stack (no tonic): hyper's, which reqwest already builds, does both.
//! An `https://` endpoint is spoken to over rustls (the `ring` provider), trusting the
//! system's roots, or only the CA file `OTEL_EXPORTER_OTLP_CERTIFICATE` names when set.
//!
//! Every request runs on a runtime of its own, on one thread ([`export_runtime`]; the SDK's
//! export threads have none), bounded by [`EXPORT_DEADLINE`] and a cap on the answer's size:
//! a slow or absent collector costs a call nothing (the spans and points wait in the SDK's
//! queues, off the call path), and the requests' work (HTTP, TLS, the collector's sockets)
//! never takes the gateway's runtime threads from its calls (`wrap` has one).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::{BufMut as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// What OTLP exports: each has its own variables beside the shared ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// `TRACES` / `METRICS`, as in `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    fn upper(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }

    /// The path under a collector's base URL, for OTLP/HTTP.
    fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// The gRPC method of the signal's collector service.
    fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        }
    }

    /// Whether this signal is exported, and how: `None` when off. `otlp` is `--otlp`'s base
    /// URL (it wins over the environment); `env` reads the standard variables. Errors say
    /// which setting is wrong and what to use instead.
    pub(crate) fn configured(
        self,
        otlp: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<Export>> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let upper = self.upper();
        let exporter = format!("OTEL_{upper}_EXPORTER");
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set(&exporter).is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        // The signal's own variable first, then the shared one.
        let either = |what: &str| {
            let own = format!("OTEL_EXPORTER_OTLP_{upper}_{what}");
            let shared = format!("OTEL_EXPORTER_OTLP_{what}");
            match set(&own) {
                Some(value) => Some((own, value)),
                None => set(&shared).map(|value| (shared, value)),
            }
        };
        let protocol = match either("PROTOCOL") {
            None => OtlpProtocol::HttpProtobuf,
            Some((_, p)) if p.trim() == "http/protobuf" => OtlpProtocol::HttpProtobuf,
            Some((_, p)) if p.trim() == "grpc" => OtlpProtocol::Grpc,
            Some((name, p)) => anyhow::bail!(
                "{name}={p} is not supported: toolgate exports OTLP as http/protobuf (a \
                 collector's port 4318) or grpc (port 4317); set {name} to one of those or \
                 unset it"
            ),
        };
        let own_endpoint = format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT");
        // A signal's own endpoint is the whole URL; the shared one and `--otlp` are base
        // URLs that OTLP/HTTP adds the signal's path to (gRPC names the method instead).
        let (setting, url, whole) = match (otlp, set(&own_endpoint)) {
            (Some(url), _) => ("--otlp".to_owned(), url.to_owned(), false),
            (None, Some(url)) => (own_endpoint, url, true),
            (None, None) => match set("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(url) => ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), url, false),
                None => return Ok(None),
            },
        };
        let url = url.trim();
        let parsed: Option<http::Uri> = url.parse().ok();
        let secure = match parsed.as_ref().and_then(http::Uri::scheme_str) {
            Some("http") => false,
            Some("https") => true,
            _ => anyhow::bail!(
                "{setting} {url}: give the collector's URL with its scheme, such as \
                 http://127.0.0.1:4318 for http/protobuf (traces go to its /v1/traces, \
                 metrics to its /v1/metrics) or http://127.0.0.1:4317 with \
                 OTEL_EXPORTER_OTLP_PROTOCOL=grpc; https:// for TLS"
            ),
        };
        if parsed.as_ref().and_then(http::Uri::authority).is_none() {
            anyhow::bail!("{setting} {url}: the URL names no host");
        }
        let endpoint = match protocol {
            OtlpProtocol::HttpProtobuf if !whole => {
                format!("{}{}", url.trim_end_matches('/'), self.path())
            }
            _ => url.to_owned(),
        };
        let certificate = either("CERTIFICATE").map(|(_, path)| PathBuf::from(path));
        for what in ["CLIENT_KEY", "CLIENT_CERTIFICATE"] {
            if let Some((name, _)) = either(what) {
                anyhow::bail!(
                    "{name} is set, but toolgate does not present client certificates to a \
                     collector (mutual TLS); unset it, or put a collector on this host in \
                     between"
                );
            }
        }
        if certificate.is_some() && !secure {
            tracing::warn!(
                "{setting} {url} is plain HTTP: OTEL_EXPORTER_OTLP_CERTIFICATE is not used"
            );
        }
        Ok(Some(Export {
            endpoint,
            protocol,
            certificate: certificate.filter(|_| secure),
        }))
    }
}

/// How export requests travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`, the default).
    HttpProtobuf,
    /// OTLP/gRPC (`grpc`).
    Grpc,
}

impl OtlpProtocol {
    /// As `OTEL_EXPORTER_OTLP_PROTOCOL` spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::Grpc => "grpc",
        }
    }
}

/// Where and how one signal is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Export {
    /// The URL export requests go to: for http/protobuf the signal's (`…/v1/traces`); for
    /// gRPC its scheme and authority are used, the path is the service's.
    pub(crate) endpoint: String,
    pub(crate) protocol: OtlpProtocol,
    /// A PEM file of the CAs to trust instead of the system's, for an `https://` endpoint.
    pub(crate) certificate: Option<PathBuf>,
}

/// The runtime every export request runs on: a current-thread runtime on a thread of its own
/// (`toolgate-otlp`), started by the first exporter and shared by both signals. Measured with
/// `cargo bench --bench tracing`: requests spawned on the gateway's own runtime added their
/// HTTP work to the calls that thread was serving.
pub(crate) fn export_runtime() -> anyhow::Result<tokio::runtime::Handle> {
    static HANDLE: std::sync::Mutex<Option<tokio::runtime::Handle>> = std::sync::Mutex::new(None);
    let mut handle = HANDLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = handle.as_ref() {
        return Ok(handle.clone());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the OTLP export runtime")?;
    let started = runtime.handle().clone();
    std::thread::Builder::new()
        .name("toolgate-otlp".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .context("starting the OTLP export thread")?;
    *handle = Some(started.clone());
    Ok(started)
}

impl Export {
    /// The exporter's HTTP client for `signal`, running its requests on the export thread
    /// ([`export_runtime`]). Reads the certificate file (or the system's roots) for an `https://`
    /// endpoint; fails saying which file and why.
    pub(crate) fn client(&self, signal: Signal) -> anyhow::Result<ExportClient> {
        let runtime = export_runtime()?;
        let secure = self.endpoint.starts_with("https://");
        let roots = if secure {
            self.roots()?
        } else {
            // Never consulted: the exporter only ever posts to the plain endpoint.
            rustls::RootCertStore::empty()
        };
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::ring_provider()))
                .with_safe_default_protocol_versions()
                .context("TLS for OTLP export")?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let mut builder = Client::builder(TokioExecutor::new());
        let connector = match self.protocol {
            OtlpProtocol::HttpProtobuf => connector.enable_http1().build(),
            OtlpProtocol::Grpc => {
                builder.http2_only(true);
                connector.enable_http2().build()
            }
        };
        Ok(ExportClient {
            runtime,
            client: builder.build(connector),
            protocol: self.protocol,
            signal,
        })
    }

    /// The CAs an `https://` endpoint is checked against.
    fn roots(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.certificate {
            Some(path) => {
                let pem = read_capped(path).with_context(|| {
                    format!(
                        "cannot read OTEL_EXPORTER_OTLP_CERTIFICATE {}",
                        path.display()
                    )
                })?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.with_context(|| {
                        format!("{}: not a PEM certificate file", path.display())
                    })?;
                    roots.add(cert).with_context(|| {
                        format!("{}: a certificate rustls cannot use", path.display())
                    })?;
                }
                if roots.is_empty() {
                    anyhow::bail!(
                        "{}: no certificate in it (OTEL_EXPORTER_OTLP_CERTIFICATE names a PEM \
                         file of the collector's CA)",
                        path.display()
                    );
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (_added, _unusable) = roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    anyhow::bail!(
                        "{}: no trusted certificates found on this system to check the \
                         collector with; set OTEL_EXPORTER_OTLP_CERTIFICATE to its CA's PEM \
                         file{}",
                        self.endpoint,
                        found
                            .errors
                            .first()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        Ok(roots)
    }
}

/// A certificate file is small; a larger one is refused rather than read whole.
const MAX_CERTIFICATE_FILE: u64 = 1024 * 1024;

fn read_capped(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CERTIFICATE_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CERTIFICATE_FILE {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(bytes)
}

/// The resource every export names: `service.name` is `toolgate` unless
/// `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` says otherwise (the SDK reads both).
pub(crate) fn resource() -> opentelemetry_sdk::Resource {
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    if !named {
        resource = resource.with_service_name("toolgate");
    }
    resource.build()
}

/// The OTLP exporters' HTTP client (see the module's doc).
pub(crate) struct ExportClient {
    runtime: tokio::runtime::Handle,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    protocol: OtlpProtocol,
    signal: Signal,
}

impl std::fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportClient")
            .field("protocol", &self.protocol)
            .field("signal", &self.signal)
            .finish_non_exhaustive()
    }
}

/// A collector's answer is a small protobuf message; a larger one fails the export.
const MAX_ANSWER: usize = 64 * 1024;

/// The longest an export request may take, whatever the exporter asks.
const EXPORT_DEADLINE: Duration = Duration::from_secs(10);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let protocol = self.protocol;
        let request = match protocol {
            OtlpProtocol::HttpProtobuf => request.map(Full::new),
            OtlpProtocol::Grpc => grpc_request(request, self.signal)?,
        };
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let response = tokio::time::timeout(EXPORT_DEADLINE, client.request(request)).await??;
            let (parts, body) = response.into_parts();
            let collected =
                tokio::time::timeout(EXPORT_DEADLINE, Limited::new(body, MAX_ANSWER).collect())
                    .await??;
            let trailers = collected.trailers().cloned();
            let body = collected.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(match protocol {
                OtlpProtocol::HttpProtobuf => http::Response::from_parts(parts, body),
                OtlpProtocol::Grpc => grpc_answer(parts, trailers.as_ref(), body),
            })
        });
        task.await?
    }
}

/// The SDK's OTLP/HTTP request as a gRPC unary call: the same protobuf message behind
/// gRPC's prefix (uncompressed, 4-byte length), posted over HTTP/2 to the signal's
/// service; the exporter's headers (`OTEL_EXPORTER_OTLP_HEADERS`) go along as metadata.
fn grpc_request(
    request: http::Request<Bytes>,
    signal: Signal,
) -> Result<http::Request<Full<Bytes>>, opentelemetry_http::HttpError> {
    let (mut parts, message) = request.into_parts();
    let (Some(scheme), Some(authority)) = (parts.uri.scheme(), parts.uri.authority()) else {
        return Err(format!("no collector address in {}", parts.uri).into());
    };
    parts.uri = http::Uri::builder()
        .scheme(scheme.clone())
        .authority(authority.clone())
        .path_and_query(signal.grpc_path())
        .build()?;
    parts.version = http::Version::HTTP_2;
    let headers = &mut parts.headers;
    headers.remove(http::header::CONTENT_LENGTH);
    headers.remove(http::header::CONTENT_ENCODING);
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    let length = u32::try_from(message.len())?;
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(length);
    framed.extend_from_slice(&message);
    Ok(http::Request::from_parts(parts, Full::new(framed.freeze())))
}

/// A gRPC answer as the OTLP/HTTP answer the SDK reads: 200 with the response message when
/// the status is OK; otherwise an error status (the retryable gRPC codes as their HTTP
/// equivalents) with the status's message as the body.
fn grpc_answer(
    parts: http::response::Parts,
    trailers: Option<&http::HeaderMap>,
    body: Bytes,
) -> http::Response<Bytes> {
    let answer = |status: http::StatusCode, body: Bytes| {
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        response
    };
    if parts.status != http::StatusCode::OK {
        return answer(parts.status, body);
    }
    // A trailers-only answer (an error at once) carries the status in its headers.
    let field = |name: &str| {
        trailers
            .and_then(|t| t.get(name))
            .or_else(|| parts.headers.get(name))
            .and_then(|v| v.to_str().ok())
    };
    let Some(code) = field("grpc-status") else {
        return answer(
            http::StatusCode::BAD_GATEWAY,
            Bytes::from_static(b"a gRPC answer without grpc-status"),
        );
    };
    match code.trim() {
        "0" => answer(http::StatusCode::OK, unframed(body)),
        code => {
            let status = match code {
                // RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED: worth a later try.
                "8" => http::StatusCode::TOO_MANY_REQUESTS,
                "14" => http::StatusCode::SERVICE_UNAVAILABLE,
                "4" => http::StatusCode::GATEWAY_TIMEOUT,
                _ => http::StatusCode::INTERNAL_SERVER_ERROR,
            };
            let message = field("grpc-message").unwrap_or_default();
            answer(
                status,
                Bytes::from(format!("gRPC status {code}: {message}")),
            )
        }
    }
}

/// The one message of a unary gRPC answer, without its prefix; empty when the body is not
/// exactly one uncompressed message (the SDK reads the answer only for partial successes).
fn unframed(body: Bytes) -> Bytes {
    match body.get(..5) {
        Some([0, a, b, c, d])
            if u32::from_be_bytes([*a, *b, *c, *d]) as usize == body.len() - 5 =>
        {
            body.slice(5..)
        }
        _ => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::test_env::env;

    #[test]
    fn grpc_is_chosen_per_signal_and_keeps_the_base_url() {
        let export = Signal::Traces
            .configured(
                None,
                env(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ]),
            )
            .unwrap()
            .unwrap();
        assert_eq!(export.protocol, OtlpProtocol::Grpc);
        assert_eq!(export.endpoint, "http://c:4317");
        // The signal's own protocol wins over the shared one.
        const MIXED: &[(&str, &str)] = &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
        ];
        let metrics = Signal::Metrics
            .configured(None, env(MIXED))
            .unwrap()
            .unwrap();
        assert_eq!(metrics.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(metrics.endpoint, "http://c:4318/v1/metrics");
        let traces = Signal::Traces
            .configured(None, env(MIXED))
            .unwrap()
            .unwrap();
        assert_eq!(traces.protocol, OtlpProtocol::Grpc);
    }

    #[test]
    fn endpoints_follow_the_standard_precedence() {
        // --otlp wins; a signal's own endpoint is used whole; the shared one gets the path.
        let export = Signal::Traces
            .configured(
                Some("http://flag:4318/"),
                env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://own:1/x")]),
            )
            .unwrap()
            .unwrap();
        assert_eq!(export.endpoint, "http://flag:4318/v1/traces");
        let export = Signal::Traces
            .configured(
                None,
                env(&[
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://own:1/x"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://shared:2"),
                ]),
            )
            .unwrap()
            .unwrap();
        assert_eq!(export.endpoint, "http://own:1/x");
        for bad in ["c:4318", "ftp://c", "http://"] {
            assert!(
                Signal::Traces.configured(Some(bad), env(&[])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn https_endpoints_take_the_certificate_variables() {
        let export = Signal::Metrics
            .configured(
                Some("https://collector:4318"),
                env(&[
                    ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/shared.pem"),
                    ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "/metrics.pem"),
                ]),
            )
            .unwrap()
            .unwrap();
        assert_eq!(export.endpoint, "https://collector:4318/v1/metrics");
        assert_eq!(export.certificate, Some(PathBuf::from("/metrics.pem")));
        let err = Signal::Traces
            .configured(
                Some("https://collector:4318"),
                env(&[("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem")]),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("mutual TLS"), "{err}");
    }

    #[test]
    fn json_is_refused_saying_what_to_use() {
        let err = Signal::Metrics
            .configured(
                Some("http://c:4318"),
                env(&[("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json")]),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL=http/json"),
            "{err}"
        );
        assert!(err.contains("grpc"), "{err}");
    }

    #[test]
    fn a_certificate_file_without_a_certificate_is_a_start_up_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let export = Export {
            endpoint: "https://c:4318/v1/traces".into(),
            protocol: OtlpProtocol::HttpProtobuf,
            certificate: Some(path.clone()),
        };
        let err = format!("{:#}", export.roots().unwrap_err());
        assert!(err.contains("no certificate"), "{err}");
        let missing = Export {
            certificate: Some(dir.path().join("absent.pem")),
            ..export
        };
        let err = format!("{:#}", missing.roots().unwrap_err());
        assert!(err.contains("absent.pem"), "{err}");
    }

    #[test]
    fn a_grpc_call_carries_the_message_behind_its_prefix_to_the_service() {
        let request = http::Request::builder()
            .method("POST")
            .uri("https://c:4317/v1/traces")
            .header("content-type", "application/x-protobuf")
            .header("authorization", "Bearer t")
            .body(Bytes::from_static(b"\x0a\x01x"))
            .unwrap();
        let call = grpc_request(request, Signal::Traces).unwrap();
        assert_eq!(
            call.uri(),
            "https://c:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        assert_eq!(call.headers()["content-type"], "application/grpc");
        assert_eq!(call.headers()["te"], "trailers");
        assert_eq!(call.headers()["authorization"], "Bearer t");
        assert_eq!(call.version(), http::Version::HTTP_2);
    }

    #[test]
    fn grpc_statuses_become_the_answers_the_sdk_reads() {
        let ok = http::Response::new(()).into_parts().0;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let answer = grpc_answer(
            ok.clone(),
            Some(&trailers),
            Bytes::from_static(b"\0\0\0\0\x02ab"),
        );
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.body().as_ref(), b"ab");
        trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        let answer = grpc_answer(ok.clone(), Some(&trailers), Bytes::new());
        assert_eq!(answer.status(), 503);
        // No status at all is not a success.
        assert_eq!(grpc_answer(ok.clone(), None, Bytes::new()).status(), 502);
        // Trailers-only: the status in the headers.
        let mut only = http::Response::new(()).into_parts().0;
        only.headers
            .insert("grpc-status", http::HeaderValue::from_static("12"));
        assert_eq!(grpc_answer(only, None, Bytes::new()).status(), 500);
        assert_eq!(
            unframed(Bytes::from_static(b"\0\0\0\0\x09ab")),
            Bytes::new()
        );
    }
}
