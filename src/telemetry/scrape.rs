//! `serve`'s `/metrics`: who may read the metrics, and the answer in the Prometheus text
//! format.
//!
//! The metrics name grants, servers and tools, and show what agents are doing: they are
//! for operators. Until operator accounts exist, the operator's credential is the event
//! websocket's token (the one `toolgate console`, `tail` and `approve` read from the
//! discovery file). `--metrics-public` drops the token for a Prometheus on the same host,
//! and is refused unless `serve` listens on loopback only (plain HTTP, no TLS yet); even
//! then a request must name a loopback host, so a web page cannot read the metrics by
//! rebinding a domain name to 127.0.0.1.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::metrics::Metrics;

/// Who may scrape.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// Anyone reaching the (loopback) address, through a loopback host name.
    Public,
    /// `Authorization: Bearer <operator token>`.
    Operator(Arc<str>),
    /// Nobody: no operator token exists (`--no-events`) and `--metrics-public` was not given.
    Closed,
}

/// The `/metrics` endpoint of one `serve`.
#[derive(Debug, Clone)]
pub(crate) struct MetricsEndpoint {
    pub metrics: Arc<Metrics>,
    pub access: Access,
}

/// The media type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

impl MetricsEndpoint {
    /// Answers one `GET /metrics`.
    pub(crate) fn answer(&self, headers: &HeaderMap) -> Response {
        match &self.access {
            Access::Closed => {
                return plain(
                    StatusCode::FORBIDDEN,
                    "metrics need the operator token, and this gateway has none (--no-events); \
                     restart with the event websocket, or with --metrics-public on a loopback address",
                );
            }
            Access::Public => {
                if !loopback_host(headers) {
                    return plain(
                        StatusCode::FORBIDDEN,
                        "with --metrics-public, /metrics answers only requests addressed to a \
                         loopback host (127.0.0.1, [::1], localhost)",
                    );
                }
            }
            Access::Operator(token) => {
                if !bearer_is(headers, token) {
                    return plain(
                        StatusCode::UNAUTHORIZED,
                        "metrics need `Authorization: Bearer <operator token>`: the event \
                         websocket's token, in this gateway's discovery file \
                         ($XDG_RUNTIME_DIR/toolgate/); or start serve with --metrics-public \
                         on a loopback address",
                    );
                }
            }
        }
        let mut response = Response::new(Body::from(self.metrics.render()));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
        response
    }
}

fn plain(status: StatusCode, text: &str) -> Response {
    let mut response = Response::new(Body::from(format!("{text}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Whether the request carries exactly `Authorization: Bearer <token>` (constant time in
/// the token's content).
fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, presented)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && crate::credentials::same_secret(presented.trim().as_bytes(), token.as_bytes())
}

/// Whether the `Host` header names a loopback address or `localhost`.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(ip, _)| ip),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("test header"));
        }
        map
    }

    #[test]
    fn only_loopback_host_names_count_as_loopback() {
        for host in [
            "127.0.0.1:9",
            "localhost:8787",
            "[::1]:80",
            "127.1.2.3",
            "LOCALHOST",
        ] {
            assert!(loopback_host(&headers(&[("host", host)])), "{host}");
        }
        for host in [
            "evil.example:8787",
            "10.0.0.1:80",
            "[::2]:80",
            "localhost.evil:1",
        ] {
            assert!(!loopback_host(&headers(&[("host", host)])), "{host}");
        }
        assert!(!loopback_host(&HeaderMap::new()));
    }

    #[test]
    fn only_the_exact_operator_token_is_accepted() {
        let token = "a".repeat(64);
        assert!(bearer_is(
            &headers(&[("authorization", &format!("Bearer {token}"))]),
            &token
        ));
        assert!(!bearer_is(
            &headers(&[("authorization", &format!("Bearer {token}b"))]),
            &token
        ));
        assert!(!bearer_is(&headers(&[("authorization", &token)]), &token));
        assert!(!bearer_is(&HeaderMap::new(), &token));
    }
}
