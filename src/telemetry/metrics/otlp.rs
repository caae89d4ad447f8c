//! The same metrics as `/metrics`, pushed by OTLP (http/protobuf or grpc) to a collector: the only
//! way for `wrap`, which runs once per agent session where no scraper could find it.
//!
//! On when an OTLP endpoint is configured (`--otlp`, `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`; `OTEL_METRICS_EXPORTER=none` turns it off). The
//! SDK's periodic reader collects on its own thread every `OTEL_METRIC_EXPORT_INTERVAL`
//! milliseconds (60 s by default) and once more at stop; the export request runs on the
//! export thread's runtime, like the traces'. Nothing here is on a call's path: counters and
//! gauges are read from the [`Registry`] when the reader collects (observable instruments,
//! cumulative like Prometheus's), and the histograms are recorded by the metrics task as
//! it counts the events.
//!
//! The instruments are named the OpenTelemetry way, so that a collector's Prometheus
//! exporter gives back the `/metrics` names: `toolgate.calls` becomes
//! `toolgate_calls_total`, `toolgate.call.duration` (unit `s`)
//! `toolgate_call_duration_seconds`, and `mcp.server.operation.duration` is the MCP
//! conventions' own name. Attributes are `/metrics`' labels, with the conventions' dotted
//! names where there is one (`mcp.method.name`, `gen_ai.tool.name`, `error.type`).

use std::sync::{Arc, Weak};

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use super::{DURATION_BUCKETS, HOLD_BUCKETS, Metrics, Registry};
use crate::telemetry::exporter::{Export, Signal, resource};

/// Where metrics are exported, from the command line and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetricsConfig {
    /// Where and how the metrics go.
    pub(crate) export: Export,
}

impl MetricsConfig {
    /// Metrics export as configured by `--otlp` (`otlp`) and the environment (`env`); `None`
    /// when off. Errors say which setting is wrong and what to use instead.
    pub(crate) fn from(
        otlp: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<MetricsConfig>> {
        Ok(Signal::Metrics
            .configured(otlp, env)?
            .map(|export| MetricsConfig { export }))
    }
}

/// The histograms the metrics task records into as it counts (counters and gauges are
/// read from the registry instead).
pub(super) struct OtlpHistograms {
    pub(super) call_duration: Histogram<f64>,
    pub(super) operation_duration: Histogram<f64>,
    pub(super) hold_wait: Histogram<f64>,
}

impl std::fmt::Debug for OtlpHistograms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpHistograms").finish_non_exhaustive()
    }
}

/// A running OTLP metrics export; [`MetricsExport::shutdown`] exports once more and stops.
#[derive(Debug)]
pub(crate) struct MetricsExport {
    provider: SdkMeterProvider,
}

impl MetricsExport {
    /// Collects and exports a last time, then stops the reader (at most the exporter's
    /// timeout). Blocking: call it from a thread that may block, at the gateway's stop.
    pub(crate) fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("metrics not exported at stop: {e}");
        }
    }
}

impl Metrics {
    /// Starts exporting these metrics per `config` (export requests run on the export
    /// thread's runtime).
    pub(crate) fn export_otlp(
        self: &Arc<Self>,
        config: &MetricsConfig,
    ) -> anyhow::Result<MetricsExport> {
        use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(config.export.client(Signal::Metrics)?)
            .with_endpoint(config.export.endpoint.clone())
            .build()
            .context("cannot set up the OTLP metrics exporter (--otlp, OTEL_EXPORTER_OTLP_*)")?;
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter)
            .with_resource(resource())
            .build();
        let meter = provider.meter("toolgate");
        self.lock().otlp = Some(histograms(&meter));
        observe(&meter, &Arc::downgrade(self));
        Ok(MetricsExport { provider })
    }
}

fn histograms(meter: &Meter) -> OtlpHistograms {
    OtlpHistograms {
        call_duration: meter
            .f64_histogram("toolgate.call.duration")
            .with_unit("s")
            .with_description(
                "Upstream latency of the tool calls that went upstream (hold time excluded).",
            )
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build(),
        operation_duration: meter
            .f64_histogram("mcp.server.operation.duration")
            .with_unit("s")
            .with_description(
                "MCP tools/call operations the gateway passed upstream, from arrival to answer (hold included).",
            )
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build(),
        hold_wait: meter
            .f64_histogram("toolgate.hold.wait")
            .with_unit("s")
            .with_description("How long held calls waited, by how the hold ended.")
            .with_boundaries(HOLD_BUCKETS.to_vec())
            .build(),
    }
}

/// A counter without attributes: its name, its description and where the registry keeps it.
type Total = (&'static str, &'static str, fn(&Registry) -> u64);

/// Registers the counters and gauges, each read from the registry when the reader
/// collects. Their callbacks hold the metrics weakly: after the gateway stops they report
/// nothing.
fn observe(meter: &Meter, metrics: &Weak<Metrics>) {
    let m = metrics.clone();
    meter
        .u64_observable_counter("toolgate.calls")
        .with_unit("{call}")
        .with_description("Tool calls decided, by decision.")
        .with_callback(move |o| {
            let Some(m) = m.upgrade() else { return };
            for ((decision, tool, grant, server), n) in &m.lock().calls {
                o.observe(
                    *n,
                    &[
                        KeyValue::new("decision", *decision),
                        KeyValue::new("tool", tool.clone()),
                        KeyValue::new("grant", grant.clone()),
                        KeyValue::new("server", server.clone()),
                    ],
                );
            }
        })
        .build();
    let m = metrics.clone();
    meter
        .u64_observable_gauge("toolgate.held_calls")
        .with_unit("{call}")
        .with_description("Calls waiting for an operator now.")
        .with_callback(move |o| {
            if let Some(m) = m.upgrade() {
                o.observe(m.held() as u64, &[]);
            }
        })
        .build();
    for (name, description, used) in [
        (
            "toolgate.counter.used",
            "Units used in a counter's window, by counter and scope key.",
            true,
        ),
        (
            "toolgate.counter.max",
            "A counter's budget per window, by counter and scope key.",
            false,
        ),
    ] {
        let m = metrics.clone();
        meter
            .u64_observable_gauge(name)
            .with_unit("{unit}")
            .with_description(description)
            .with_callback(move |o| {
                let Some(m) = m.upgrade() else { return };
                for ((counter, scope, key), (n_used, max)) in &m.lock().counters {
                    let attributes = [
                        KeyValue::new("counter", counter.clone()),
                        KeyValue::new("scope", scope.clone()),
                        KeyValue::new("key", key.clone()),
                    ];
                    o.observe(if used { *n_used } else { *max }, &attributes);
                }
            })
            .build();
    }
    let m = metrics.clone();
    meter
        .u64_observable_counter("toolgate.policy.reloads")
        .with_description("Policy versions applied or refused.")
        .with_callback(move |o| {
            let Some(m) = m.upgrade() else { return };
            let registry = m.lock();
            o.observe(
                registry.reloads.applied,
                &[KeyValue::new("result", "applied")],
            );
            o.observe(
                registry.reloads.rejected,
                &[KeyValue::new("result", "rejected")],
            );
        })
        .build();
    let totals: [Total; 3] = [
        (
            "toolgate.store.errors",
            "Times the counter store stopped answering.",
            |r| r.store_errors,
        ),
        (
            "toolgate.tool_changes",
            "Times a server's tool list changed.",
            |r| r.tool_changes,
        ),
        (
            "toolgate.metrics.events_missed",
            "Events the metrics fell too far behind to count (the numbers above then undercount).",
            |r| r.missed,
        ),
    ];
    for (name, description, read) in totals {
        let m = metrics.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |o| {
                if let Some(m) = m.upgrade() {
                    o.observe(read(&m.lock()), &[]);
                }
            })
            .build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::test_env::env;

    #[test]
    fn metrics_go_to_v1_metrics_and_follow_their_own_variables() {
        let config = MetricsConfig::from(Some("http://127.0.0.1:4318/"), env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(config.export.endpoint, "http://127.0.0.1:4318/v1/metrics");
        assert_eq!(MetricsConfig::from(None, env(&[])).unwrap(), None);
        assert_eq!(
            MetricsConfig::from(
                None,
                env(&[(
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    "http://c:4318/v1/metrics"
                )])
            )
            .unwrap()
            .map(|c| c.export.endpoint),
            Some("http://c:4318/v1/metrics".to_owned())
        );
        // Traces on, metrics off: each signal has its own `none`.
        const BOTH: &[(&str, &str)] = &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ];
        assert_eq!(MetricsConfig::from(None, env(BOTH)).unwrap(), None);
        assert!(
            crate::telemetry::TraceConfig::from(None, env(BOTH))
                .unwrap()
                .is_some()
        );
    }
}
