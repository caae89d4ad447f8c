//! Telemetry for the observability stacks people already run: metrics in the Prometheus
//! text format (`serve`'s `/metrics`), and OpenTelemetry traces exported by OTLP.
//!
//! - [`metrics`] — the gateway's metrics, counted from its own events off the call path.
//! - [`labels`] — label values with a bounded number of series (tool names come from agents).
//! - [`scrape`] — who may read `/metrics`, and the answer.
//! - [`trace`] — spans per MCP request (off unless configured), `traceparent` in `_meta`.
//! - [`spans`] — what a traced request records on the call path, its queue, and the export
//!   task that builds the spans off the call path.
//! - [`exporter`] — the OTLP settings both signals read, and the client that carries their
//!   export requests: http/protobuf or gRPC, plain or over TLS.
//!
//! Both signals are exported by OTLP when configured (`metrics/otlp.rs` pushes the same
//! metrics as `/metrics`, for `wrap` too).

pub(crate) mod exporter;
pub(crate) mod labels;
pub(crate) mod metrics;
pub(crate) mod scrape;
pub(crate) mod spans;
pub(crate) mod trace;

pub(crate) use metrics::{Metrics, MetricsConfig, MetricsExport};
pub(crate) use scrape::{Access, MetricsEndpoint};
pub(crate) use trace::{CallSpans, TraceConfig, Tracing};

/// The environment as tests give it to the configuration readers (`OTEL_*` variables).
#[cfg(test)]
mod test_env {
    pub(crate) fn env(
        pairs: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }
}
