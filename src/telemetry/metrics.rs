//! The gateway's metrics, kept from its own events and rendered in the Prometheus text
//! format for `serve`'s `/metrics`.
//!
//! The metrics are a subscriber of the [`Hub`], like the console: every number here is
//! read from an event the gateway publishes anyway, on a task of its own, so a call pays
//! nothing for them and the decision path has no hook. The price is that a scrape may lag
//! the last calls by the time that task takes to read them (microseconds), and that events
//! lost because the task fell more than the hub's queue behind are counted, not guessed
//! (`toolgate_metrics_events_missed_total`).
//!
//! Names are in base units, counters end in `_total` (OpenTelemetry's Prometheus naming);
//! every label an agent or a session can choose is a [`BoundedLabel`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Weak};

use chrono::{DateTime, Utc};
use opentelemetry::KeyValue;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

mod otlp;

pub(crate) use otlp::{MetricsConfig, MetricsExport};

use super::labels::BoundedLabel;
use crate::control::Hub;
use crate::hashing::FastMap;
use crate::policy::Verdict;
use crate::wire::{
    CallEvent, CounterState, Event, EventKind, HoldResolved, Outcome, PinChange, ResolvedBy,
};

/// Calls remembered between their decision and their outcome (to label the outcome with
/// the tool). Beyond it the oldest is forgotten, and its outcome is labelled `other`.
const MAX_IN_FLIGHT: usize = 8192;

/// Upper bounds of the buckets of call and operation durations, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Upper bounds of the buckets of hold waits, in seconds: people answer in seconds to hours.
const HOLD_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The metrics of one gateway process.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    /// For the number of open holds, read from the hub at each scrape. Weak: the hub's
    /// subscriber task must not keep the hub alive.
    hub: Weak<Hub>,
}

impl Metrics {
    /// Starts following `hub`'s events on a task of the current runtime.
    pub(crate) fn start(hub: &Arc<Hub>) -> Arc<Metrics> {
        let metrics = Arc::new(Metrics {
            registry: Mutex::new(Registry::default()),
            hub: Arc::downgrade(hub),
        });
        let mut events = hub.subscribe();
        let follower = Arc::downgrade(&metrics);
        tokio::spawn(async move {
            loop {
                let mut event = events.recv().await;
                let Some(metrics) = follower.upgrade() else {
                    return;
                };
                // Every event already queued is counted under one lock: at 64 calls in
                // flight the events come in bursts, and the task then runs once a burst.
                let mut registry = metrics.lock();
                loop {
                    match event {
                        Ok(event) => registry.observe(&event),
                        Err(RecvError::Lagged(n)) => registry.missed += n,
                        Err(RecvError::Closed) => return,
                    }
                    event = match events.try_recv() {
                        Ok(event) => Ok(event),
                        Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                        Err(TryRecvError::Closed) => Err(RecvError::Closed),
                        Err(TryRecvError::Empty) => break,
                    };
                }
            }
        });
        metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one event (the task started by [`Metrics::start`] counts them in bursts).
    #[cfg(test)]
    pub(crate) fn observe(&self, event: &Event) {
        self.lock().observe(event);
    }

    /// Every metric in the Prometheus text exposition format (version 0.0.4).
    pub(crate) fn render(&self) -> String {
        let held = self.held();
        self.lock().render(held)
    }

    /// Calls waiting for an operator now.
    fn held(&self) -> usize {
        self.hub.upgrade().map_or(0, |hub| hub.open_holds().len())
    }

    /// Waits (at most `deadline`) until every event the hub published so far is counted:
    /// at a gateway's stop, before the last export.
    pub(crate) async fn settle(&self, deadline: std::time::Duration) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let published = hub.latest_seq();
        drop(hub);
        let _ = tokio::time::timeout(deadline, async {
            while self.lock().seen < published {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
        .await;
    }
}

/// A histogram with fixed buckets.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations at most each bound (not cumulative; summed when rendered).
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        let value = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += value;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// A label value in the text format: backslash, double quote and line feed escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A call between its decision and its outcome.
#[derive(Debug)]
struct Flight {
    tool: Arc<str>,
    server: Arc<str>,
    decided: DateTime<Utc>,
    /// Seconds it waited for an operator, once approved.
    held_for: f64,
    /// Its number in `Registry::in_flight_order`.
    admitted: u64,
}

#[derive(Debug, Default)]
struct Reloads {
    applied: u64,
    rejected: u64,
}

/// A call series: decision, tool, grant, server.
type CallLabels = (&'static str, Arc<str>, Arc<str>, Arc<str>);
/// A shadow decision series: shadow decision, enforced decision, source, tool, server.
type ShadowLabels = (&'static str, &'static str, &'static str, Arc<str>, Arc<str>);
/// A counter series: counter, scope, key.
type CounterLabels = (Arc<str>, Arc<str>, Arc<str>);

#[derive(Debug, Default)]
struct Registry {
    tools: BoundedLabel,
    grants: BoundedLabel,
    servers: BoundedLabel,
    counter_names: BoundedLabel,
    scope_keys: BoundedLabel,
    /// By decision, tool, grant, server.
    calls: BTreeMap<CallLabels, u64>,
    /// Calls whose shadow (rule or policy) would have decided otherwise.
    shadow_decisions: BTreeMap<ShadowLabels, u64>,
    /// Upstream latency by tool, server and whether it failed.
    call_duration: BTreeMap<(Arc<str>, Arc<str>, bool), Histogram>,
    /// The whole `tools/call` operation (hold included) by tool and whether it failed.
    operation_duration: BTreeMap<(Arc<str>, bool), Histogram>,
    /// By how the hold ended.
    hold_wait: BTreeMap<&'static str, Histogram>,
    /// (used, max) by counter, scope and key.
    counters: BTreeMap<CounterLabels, (u64, u64)>,
    store_errors: u64,
    reloads: Reloads,
    tool_changes: u64,
    missed: u64,
    /// The last event's `seq`.
    seen: u64,
    /// When metrics are exported by OTLP too: the histograms recorded as events come.
    otlp: Option<otlp::OtlpHistograms>,
    in_flight: FastMap<smol_str::SmolStr, Flight>,
    /// The calls in `in_flight` oldest first, each with its [`Flight::admitted`] number. A
    /// call's outcome leaves its entry here (no scan, no shift); an entry whose number is
    /// not its call's in `in_flight` any more is skipped when the oldest is evicted, and
    /// such entries are dropped all at once when the queue grows to twice the cap.
    in_flight_order: VecDeque<(smol_str::SmolStr, u64)>,
    /// Numbers the calls put in `in_flight`.
    admitted: u64,
}

impl Registry {
    /// Counts one event.
    fn observe(&mut self, event: &Event) {
        let registry = self;
        registry.seen = registry.seen.max(event.seq);
        match &event.kind {
            EventKind::Call(call) => registry.call(call, event.ts),
            EventKind::HoldResolved(resolved) => registry.hold_resolved(resolved, event.ts),
            EventKind::Outcome(outcome) => registry.outcome(outcome),
            EventKind::Counters(counters) => {
                for state in &counters.counters {
                    registry.counter(state);
                }
            }
            EventKind::Store(status) if !status.ok => registry.store_errors += 1,
            EventKind::PolicyApplied(_) => registry.reloads.applied += 1,
            EventKind::PolicyRejected(_) => registry.reloads.rejected += 1,
            // One per tool definition found to differ from its pin (tool pinning).
            EventKind::ToolChanged(changed) if changed.change == PinChange::Changed => {
                registry.tool_changes += 1;
            }
            _ => {}
        }
    }

    fn call(&mut self, call: &CallEvent, ts: DateTime<Utc>) {
        let tool = self.tools.value(&call.tool);
        let server = self.servers.value(&call.server);
        let grant = self.grants.value(&call.grant);
        *self
            .calls
            .entry((call.decision.as_str(), tool.clone(), grant, server.clone()))
            .or_default() += 1;
        if let Some(shadow) = &call.shadow {
            *self
                .shadow_decisions
                .entry((
                    shadow.decision.as_str(),
                    call.decision.as_str(),
                    shadow.source.as_str(),
                    tool.clone(),
                    server.clone(),
                ))
                .or_default() += 1;
        }
        if matches!(call.decision, Verdict::Allow | Verdict::Hold) {
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                self.evict_oldest();
            }
            if self.in_flight_order.len() >= 2 * MAX_IN_FLIGHT {
                let in_flight = &self.in_flight;
                self.in_flight_order
                    .retain(|(id, n)| in_flight.get(id).is_some_and(|f| f.admitted == *n));
            }
            self.admitted += 1;
            let admitted = self.admitted;
            self.in_flight_order
                .push_back((call.call_id.clone(), admitted));
            self.in_flight.insert(
                call.call_id.clone(),
                Flight {
                    tool,
                    server,
                    decided: ts,
                    held_for: 0.0,
                    admitted,
                },
            );
        }
    }

    fn hold_resolved(&mut self, resolved: &HoldResolved, ts: DateTime<Utc>) {
        let resolution = match (resolved.by, resolved.approved) {
            (ResolvedBy::Operator, true) => "approved",
            (ResolvedBy::Operator, false) => "denied",
            (ResolvedBy::Timeout, _) => "timeout",
            (ResolvedBy::Cancellation, _) => "cancelled",
            (ResolvedBy::Shutdown, _) => "shutdown",
        };
        let waited = match self.in_flight.get_mut(resolved.call_id.as_str()) {
            Some(flight) => {
                let waited = seconds_between(flight.decided, ts);
                flight.held_for = waited;
                waited
            }
            None => return,
        };
        self.hold_wait
            .entry(resolution)
            .or_insert_with(|| Histogram::new(HOLD_BUCKETS))
            .observe(waited);
        if let Some(otlp) = &self.otlp {
            otlp.hold_wait
                .record(waited, &[KeyValue::new("resolution", resolution)]);
        }
        if !resolved.approved {
            self.forget(&resolved.call_id);
        }
    }

    fn outcome(&mut self, outcome: &Outcome) {
        let flight = self.forget(&outcome.call_id);
        let (tool, server, held_for) = match flight {
            Some(f) => (f.tool, f.server, f.held_for),
            None => {
                let other = self.tools.value(super::labels::OTHER);
                (other.clone(), other, 0.0)
            }
        };
        let whole = outcome.latency_us as f64 / 1e6;
        self.operation_duration
            .entry((tool.clone(), outcome.error))
            .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
            .observe(whole);
        if let Some(otlp) = &self.otlp {
            let mut attributes = vec![
                KeyValue::new("mcp.method.name", "tools/call"),
                KeyValue::new("gen_ai.tool.name", tool.clone()),
            ];
            if outcome.error {
                attributes.push(KeyValue::new("error.type", "tool_error"));
            }
            otlp.operation_duration.record(whole, &attributes);
            otlp.call_duration.record(
                (whole - held_for).max(0.0),
                &[
                    KeyValue::new("tool", tool.clone()),
                    KeyValue::new("server", server.clone()),
                    KeyValue::new("error", outcome.error),
                ],
            );
        }
        self.call_duration
            .entry((tool, server, outcome.error))
            .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
            .observe(whole - held_for);
    }

    /// Takes a call out of `in_flight` (its entry in the order stays, see there).
    fn forget(&mut self, call_id: &str) -> Option<Flight> {
        self.in_flight.remove(call_id)
    }

    /// Forgets the oldest call still in flight.
    fn evict_oldest(&mut self) {
        while let Some((oldest, n)) = self.in_flight_order.pop_front() {
            if self.in_flight.get(&oldest).is_some_and(|f| f.admitted == n) {
                self.in_flight.remove(&oldest);
                return;
            }
        }
    }

    fn counter(&mut self, state: &CounterState) {
        let counter = self.counter_names.value(&state.counter);
        let key = self.scope_keys.value(&state.key);
        let scope: Arc<str> = Arc::from(state.scope.as_str());
        self.counters
            .insert((counter, scope, key), (state.used, state.max));
    }

    fn render(&self, held: usize) -> String {
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "toolgate_calls_total",
            "counter",
            "Tool calls decided, by decision.",
        );
        for ((decision, tool, grant, server), n) in &self.calls {
            let _ = writeln!(
                out,
                "toolgate_calls_total{{decision=\"{decision}\",tool=\"{}\",grant=\"{}\",server=\"{}\"}} {n}",
                escape(tool),
                escape(grant),
                escape(server)
            );
        }
        header(
            &mut out,
            "toolgate_shadow_decisions_total",
            "counter",
            "Tool calls a shadow rule or the shadow policy would have decided otherwise (not enforced), by what it would have decided and what was enforced.",
        );
        for ((decision, enforced, source, tool, server), n) in &self.shadow_decisions {
            let _ = writeln!(
                out,
                "toolgate_shadow_decisions_total{{decision=\"{decision}\",enforced=\"{enforced}\",source=\"{source}\",tool=\"{}\",server=\"{}\"}} {n}",
                escape(tool),
                escape(server)
            );
        }
        header(
            &mut out,
            "toolgate_call_duration_seconds",
            "histogram",
            "Upstream latency of the tool calls that went upstream (hold time excluded).",
        );
        for ((tool, server, error), h) in &self.call_duration {
            let labels = format!(
                "tool=\"{}\",server=\"{}\",error=\"{error}\"",
                escape(tool),
                escape(server)
            );
            h.render(&mut out, "toolgate_call_duration_seconds", &labels);
        }
        header(
            &mut out,
            "mcp_server_operation_duration_seconds",
            "histogram",
            "MCP tools/call operations the gateway passed upstream, from arrival to answer (hold included).",
        );
        for ((tool, error), h) in &self.operation_duration {
            let mut labels = format!(
                "mcp_method_name=\"tools/call\",gen_ai_tool_name=\"{}\"",
                escape(tool)
            );
            if *error {
                labels.push_str(",error_type=\"tool_error\"");
            }
            h.render(&mut out, "mcp_server_operation_duration_seconds", &labels);
        }
        header(
            &mut out,
            "toolgate_held_calls",
            "gauge",
            "Calls waiting for an operator now.",
        );
        let _ = writeln!(out, "toolgate_held_calls {held}");
        header(
            &mut out,
            "toolgate_hold_wait_seconds",
            "histogram",
            "How long held calls waited, by how the hold ended.",
        );
        for (resolution, h) in &self.hold_wait {
            h.render(
                &mut out,
                "toolgate_hold_wait_seconds",
                &format!("resolution=\"{resolution}\""),
            );
        }
        header(
            &mut out,
            "toolgate_counter_used",
            "gauge",
            "Units used in a counter's window, by counter and scope key.",
        );
        for ((counter, scope, key), (used, _)) in &self.counters {
            let _ = writeln!(
                out,
                "toolgate_counter_used{{counter=\"{}\",scope=\"{}\",key=\"{}\"}} {used}",
                escape(counter),
                escape(scope),
                escape(key)
            );
        }
        header(
            &mut out,
            "toolgate_counter_max",
            "gauge",
            "A counter's budget per window, by counter and scope key.",
        );
        for ((counter, scope, key), (_, max)) in &self.counters {
            let _ = writeln!(
                out,
                "toolgate_counter_max{{counter=\"{}\",scope=\"{}\",key=\"{}\"}} {max}",
                escape(counter),
                escape(scope),
                escape(key)
            );
        }
        header(
            &mut out,
            "toolgate_store_errors_total",
            "counter",
            "Times the counter store stopped answering.",
        );
        let _ = writeln!(out, "toolgate_store_errors_total {}", self.store_errors);
        header(
            &mut out,
            "toolgate_policy_reloads_total",
            "counter",
            "Policy versions applied or refused.",
        );
        let _ = writeln!(
            out,
            "toolgate_policy_reloads_total{{result=\"applied\"}} {}",
            self.reloads.applied
        );
        let _ = writeln!(
            out,
            "toolgate_policy_reloads_total{{result=\"rejected\"}} {}",
            self.reloads.rejected
        );
        header(
            &mut out,
            "toolgate_tool_changes_total",
            "counter",
            "Tool definitions found to differ from their pins (tool_changed events).",
        );
        let _ = writeln!(out, "toolgate_tool_changes_total {}", self.tool_changes);
        header(
            &mut out,
            "toolgate_metrics_events_missed_total",
            "counter",
            "Events the metrics fell too far behind to count (the numbers above then undercount).",
        );
        let _ = writeln!(out, "toolgate_metrics_events_missed_total {}", self.missed);
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).to_std().map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Counters, StoreStatus};

    fn event(kind: EventKind) -> Event {
        Event {
            seq: 1,
            ts: Utc::now(),
            gateway: "g".into(),
            kind,
        }
    }

    fn call(call_id: &str, tool: &str, decision: Verdict) -> EventKind {
        EventKind::Call(CallEvent {
            call_id: call_id.into(),
            tool: tool.into(),
            grant: "ci".into(),
            session: "s".into(),
            server: "srv".into(),
            decision,
            rule: "/default".into(),
            reason: Default::default(),
            args: Value::Null.into(),
            args_truncated: false,
            retry_after_ms: None,
            hold_deadline: None,
            shadow: None,
        })
    }

    use serde_json::Value;

    fn registry_after(events: Vec<EventKind>) -> String {
        let mut registry = Registry::default();
        let metrics = Metrics {
            registry: Mutex::new(std::mem::take(&mut registry)),
            hub: Weak::new(),
        };
        for kind in events {
            metrics.observe(&event(kind));
        }
        metrics.render()
    }

    #[test]
    fn tool_changes_count_changed_definitions_not_their_acceptance() {
        let changed = |change| {
            EventKind::ToolChanged(crate::wire::ToolChanged {
                server: "srv".into(),
                tool: "send".into(),
                change,
                pinned_fingerprint: "a".repeat(64),
                offered_fingerprint: "b".repeat(64),
                pinned: Value::Null,
                offered: Value::Null,
                quarantined: true,
                flags: Vec::new(),
                operator: None,
            })
        };
        let text = registry_after(vec![
            changed(PinChange::Changed),
            changed(PinChange::Accepted),
            changed(PinChange::Changed),
        ]);
        assert!(text.contains("\ntoolgate_tool_changes_total 2\n"), "{text}");
    }

    #[test]
    fn calls_are_counted_by_decision_tool_grant_and_server() {
        let text = registry_after(vec![
            call("1", "echo", Verdict::Allow),
            call("2", "echo", Verdict::Allow),
            call("3", "rm", Verdict::Deny),
        ]);
        assert!(
            text.contains(
                "toolgate_calls_total{decision=\"allow\",tool=\"echo\",grant=\"ci\",server=\"srv\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "toolgate_calls_total{decision=\"deny\",tool=\"rm\",grant=\"ci\",server=\"srv\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn shadow_decisions_are_counted_apart_by_what_would_have_been_decided() {
        let mut shadowed = call("2", "echo", Verdict::Allow);
        if let EventKind::Call(c) = &mut shadowed {
            c.shadow = Some(Box::new(crate::wire::ShadowDecision {
                decision: Verdict::Deny,
                rule: "/tools/echo/deny_if/0".into(),
                reason: "deny_if holds".into(),
                source: crate::wire::ShadowSource::Rule,
            }));
        }
        let text = registry_after(vec![call("1", "echo", Verdict::Allow), shadowed]);
        assert!(
            text.contains(
                "toolgate_shadow_decisions_total{decision=\"deny\",enforced=\"allow\",source=\"rule\",tool=\"echo\",server=\"srv\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "toolgate_calls_total{decision=\"allow\",tool=\"echo\",grant=\"ci\",server=\"srv\"} 2\n"
            ),
            "the enforced decision is what calls_total counts: {text}"
        );
    }

    #[test]
    fn an_outcome_is_a_duration_of_the_tool_it_was_decided_for() {
        let text = registry_after(vec![
            call("1", "echo", Verdict::Allow),
            EventKind::Outcome(Outcome {
                call_id: "1".into(),
                latency_us: 20_000,
                error: true,
                summary: None,
            }),
        ]);
        assert!(text.contains(
            "mcp_server_operation_duration_seconds_bucket{mcp_method_name=\"tools/call\",gen_ai_tool_name=\"echo\",error_type=\"tool_error\",le=\"0.025\"} 1\n"
        ), "{text}");
        assert!(text.contains(
            "toolgate_call_duration_seconds_count{tool=\"echo\",server=\"srv\",error=\"true\"} 1\n"
        ), "{text}");
    }

    #[test]
    fn beyond_the_cap_the_oldest_call_still_in_flight_is_forgotten_not_an_answered_one() {
        let done = |id: &str| {
            EventKind::Outcome(Outcome {
                call_id: id.into(),
                latency_us: 1_000,
                error: false,
                summary: None,
            })
        };
        // "answered" leaves an entry behind in the order; "oldest" is then the oldest call
        // in flight, and the one forgotten when the cap is passed.
        let mut events = vec![
            call("answered", "echo", Verdict::Allow),
            call("oldest", "first", Verdict::Allow),
            done("answered"),
        ];
        events.extend((1..MAX_IN_FLIGHT).map(|n| call(&format!("c{n}"), "rest", Verdict::Allow)));
        // Answered again under a reused id: only its newest decision counts.
        events.push(call("answered", "again", Verdict::Allow));
        events.extend([done("oldest"), done("c1"), done("answered")]);
        let text = registry_after(events);
        for (tool, n) in [("other", 1), ("rest", 1), ("again", 1), ("echo", 1)] {
            let line = format!(
                "toolgate_call_duration_seconds_count{{tool=\"{tool}\",server=\"{}\",error=\"false\"}} {n}\n",
                if tool == "other" { "other" } else { "srv" }
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(
            !text.contains("tool=\"first\",server=\"srv\",error"),
            "{text}"
        );
    }

    #[test]
    fn hostile_tool_names_are_escaped_and_capped_at_200_series() {
        let mut events: Vec<EventKind> = (0..1000)
            .map(|n| {
                call(
                    &n.to_string(),
                    &format!("t{n}\"}} 9\n# evil\\"),
                    Verdict::Deny,
                )
            })
            .collect();
        events.push(EventKind::Store(StoreStatus {
            store: "sqlite".into(),
            ok: false,
            detail: None,
        }));
        let text = registry_after(events);
        let series = text
            .lines()
            .filter(|l| l.starts_with("toolgate_calls_total{"))
            .count();
        assert_eq!(series, 201, "200 tools and `other`");
        assert!(
            text.contains("tool=\"other\",grant=\"ci\",server=\"srv\"} 800\n"),
            "{text}"
        );
        assert!(text.contains("tool=\"t0\\\"} 9\\n# evil\\\\\""), "{text}");
        // Every line is a comment or a sample: nothing an agent sent starts a line.
        assert!(
            text.lines().all(|l| l.starts_with("# HELP ")
                || l.starts_with("# TYPE ")
                || l.starts_with("toolgate_")
                || l.starts_with("mcp_")),
            "{text}"
        );
        assert!(text.contains("toolgate_store_errors_total 1\n"));
    }

    #[test]
    fn scope_keys_are_capped_at_200_series() {
        let counters = (0..500)
            .map(|n| CounterState {
                counter: "c".into(),
                scope: "session".into(),
                key: format!("session-{n}"),
                used: 1,
                max: 5,
                window_ms: 1000,
                next_free_in_ms: None,
            })
            .collect();
        let text = registry_after(vec![EventKind::Counters(Counters { counters })]);
        let series = text
            .lines()
            .filter(|l| l.starts_with("toolgate_counter_used{"))
            .count();
        assert_eq!(series, 201, "{text}");
    }
}
