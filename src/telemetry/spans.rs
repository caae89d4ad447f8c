//! What a traced request leaves on the call path, and how it reaches the collector.
//!
//! The call path records a small fixed record per request ([`CallRecord`]: ids, times,
//! the decision as an enum and the few strings the spans name) and, when the request ends,
//! pushes it into [`SpanQueue`], a bounded `Mutex<Vec<_>>`. Nothing is formatted there and no
//! thread is woken per call: the export task on the `toolgate-otlp` thread takes the whole
//! queue on its timer (`OTEL_BSP_SCHEDULE_DELAY`), or once per batch when the queue reaches
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans, and only there builds the SDK's `SpanData` (names,
//! attribute lists, events) for the SDK's OTLP exporter to encode. A full queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE` spans) drops the record and counts it; a call never waits.
//!
//! Why not the SDK's spans: per request they cost the call path a span builder, attribute
//! vectors built and cloned for the CLIENT span, names formatted and a `SpanData` assembled
//! on end. With those and the `traceparent` splice (`super::trace`), tracing's own work on
//! the call path was 19.2k instructions per call; with this record, 7.0k (callgrind, release;
//! docs/performance.md, "Traces").

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};

use crate::policy::Verdict;

/// How many spans wait for export and how often they go, from the standard `OTEL_BSP_*`
/// variables (the SDK's defaults when unset or not a number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    /// Spans queued at most; more are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048).
    pub(crate) max_queue: usize,
    /// Spans per export request at most, and the queue length that starts one before the
    /// timer (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512; at most `max_queue`).
    pub(crate) max_batch: usize,
    /// The timer (`OTEL_BSP_SCHEDULE_DELAY`, 5 s).
    pub(crate) delay: Duration,
    /// The longest one export may take (`OTEL_BSP_EXPORT_TIMEOUT`, 30 s).
    pub(crate) timeout: Duration,
}

impl BatchLimits {
    pub(crate) fn from_env(env: impl Fn(&str) -> Option<String>) -> BatchLimits {
        use opentelemetry_sdk::trace::{
            OTEL_BSP_EXPORT_TIMEOUT, OTEL_BSP_EXPORT_TIMEOUT_DEFAULT,
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT,
            OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT, OTEL_BSP_SCHEDULE_DELAY,
            OTEL_BSP_SCHEDULE_DELAY_DEFAULT,
        };
        let number = |name: &str| {
            env(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|n| *n > 0)
        };
        let max_queue = number(OTEL_BSP_MAX_QUEUE_SIZE)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT);
        let max_batch = number(OTEL_BSP_MAX_EXPORT_BATCH_SIZE)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT)
            .min(max_queue);
        BatchLimits {
            max_queue,
            max_batch,
            delay: number(OTEL_BSP_SCHEDULE_DELAY)
                .map_or(OTEL_BSP_SCHEDULE_DELAY_DEFAULT, Duration::from_millis),
            timeout: number(OTEL_BSP_EXPORT_TIMEOUT)
                .map_or(OTEL_BSP_EXPORT_TIMEOUT_DEFAULT, Duration::from_millis),
        }
    }
}

/// The ids of one request's spans, fixed when it arrives.
#[derive(Debug, Clone)]
pub(crate) struct Ids {
    pub(crate) trace: TraceId,
    pub(crate) server: SpanId,
    /// The CLIENT span's id, drawn with the others (used only if the request goes upstream).
    pub(crate) client: SpanId,
    /// The SERVER span's parent: the client's span when a `traceparent` came, else invalid.
    pub(crate) parent: SpanId,
    pub(crate) flags: TraceFlags,
    pub(crate) state: TraceState,
}

impl Ids {
    pub(crate) fn sampled(&self) -> bool {
        self.flags.is_sampled()
    }
}

/// Why a span ended in error: its `error.type` and its status's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorType {
    /// A word: `deny`, `rate_limited`, `hold_denied`, `tool_error`, `upstream_gone`.
    Named(&'static str),
    /// A JSON-RPC error answer's code (also `rpc.response.status_code`).
    Code(i64),
}

impl ErrorType {
    fn text(self) -> StringValue {
        match self {
            ErrorType::Named(word) => StringValue::from(word),
            ErrorType::Code(code) => StringValue::from(code.to_string()),
        }
    }
}

/// The policy's decision, as the SERVER span states it.
#[derive(Debug)]
pub(crate) struct Decided {
    pub(crate) verdict: Verdict,
    /// Shared with the decision and the gateway (a [`smol_str::SmolStr`] clones without
    /// allocating); made a `String` on the export thread.
    pub(crate) rule: smol_str::SmolStr,
    pub(crate) grant: smol_str::SmolStr,
    pub(crate) counter: Option<String>,
}

/// How a hold ended.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) at: SystemTime,
    pub(crate) approved: bool,
    pub(crate) by: &'static str,
    pub(crate) operator: Option<String>,
}

/// Everything one request's spans say, as recorded on the call path. The span name is
/// `method` then `target` when there is one (`tools/call echo`), joined on the export thread.
#[derive(Debug)]
pub(crate) struct CallRecord {
    pub(crate) method: StringValue,
    /// The tool of a `tools/call`, the prompt of a `prompts/get`.
    pub(crate) target: Option<StringValue>,
    pub(crate) tool_call: bool,
    pub(crate) uri: Option<String>,
    pub(crate) request_id: String,
    pub(crate) session: String,
    pub(crate) version: Option<String>,
    pub(crate) start: SystemTime,
    /// When the CLIENT span started: the request went upstream.
    pub(crate) forwarded: Option<SystemTime>,
    pub(crate) end: Option<SystemTime>,
    pub(crate) decided: Option<Decided>,
    pub(crate) held: Option<SystemTime>,
    pub(crate) resolved: Option<Resolved>,
    /// The SERVER span's error; the CLIENT span's is `client_error`.
    pub(crate) error: Option<ErrorType>,
    pub(crate) client_error: Option<ErrorType>,
}

impl CallRecord {
    fn span_count(&self) -> usize {
        1 + usize::from(self.forwarded.is_some())
    }

    /// The record's spans as the SDK's exporter takes them (SERVER first).
    fn spans(self, ids: &Ids, scope: &InstrumentationScope, out: &mut Vec<SpanData>) {
        let end = self.end.unwrap_or_else(SystemTime::now);
        let name: Cow<'static, str> = match &self.target {
            Some(target) => Cow::Owned(format!("{} {}", self.method.as_str(), target.as_str())),
            None => Cow::Owned(self.method.as_str().to_owned()),
        };
        let mut base = Vec::with_capacity(12);
        base.push(KeyValue::new("mcp.method.name", self.method.clone()));
        if let Some(target) = &self.target {
            if self.tool_call {
                base.push(KeyValue::new("gen_ai.tool.name", target.clone()));
            } else {
                base.push(KeyValue::new("gen_ai.prompt.name", target.clone()));
            }
        }
        if self.tool_call {
            base.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
        }
        if let Some(uri) = self.uri {
            base.push(KeyValue::new("mcp.resource.uri", uri));
        }
        base.push(KeyValue::new("jsonrpc.request.id", self.request_id));
        base.push(KeyValue::new("mcp.session.id", self.session));
        if let Some(version) = self.version {
            base.push(KeyValue::new("mcp.protocol.version", version));
        }
        let span = |kind: SpanKind,
                    id: SpanId,
                    parent: SpanId,
                    remote: bool,
                    start: SystemTime,
                    attributes: Vec<KeyValue>,
                    events: Vec<opentelemetry::trace::Event>,
                    error: Option<ErrorType>| {
            let mut attributes = attributes;
            let status = match error {
                Some(error) => {
                    let text = error.text();
                    attributes.push(KeyValue::new("error.type", text.clone()));
                    if matches!(error, ErrorType::Code(_)) {
                        attributes.push(KeyValue::new("rpc.response.status_code", text.clone()));
                    }
                    Status::error(text.to_string())
                }
                None => Status::Unset,
            };
            let mut span_events = SpanEvents::default();
            span_events.events = events;
            SpanData {
                span_context: SpanContext::new(ids.trace, id, ids.flags, false, ids.state.clone()),
                parent_span_id: parent,
                parent_span_is_remote: remote,
                span_kind: kind,
                name: name.clone(),
                start_time: start,
                end_time: end,
                attributes,
                dropped_attributes_count: 0,
                events: span_events,
                links: SpanLinks::default(),
                status,
                instrumentation_scope: scope.clone(),
            }
        };
        let client_span = self.forwarded.map(|start| {
            span(
                SpanKind::Client,
                ids.client,
                ids.server,
                false,
                start,
                base.clone(),
                Vec::new(),
                self.client_error,
            )
        });
        let mut attributes = base;
        if let Some(decided) = self.decided {
            attributes.push(KeyValue::new("toolgate.decision", decided.verdict.as_str()));
            attributes.push(KeyValue::new("toolgate.rule", decided.rule.to_string()));
            attributes.push(KeyValue::new("toolgate.grant", decided.grant.to_string()));
            if let Some(counter) = decided.counter {
                attributes.push(KeyValue::new("toolgate.counter", counter));
            }
        }
        let mut events = Vec::new();
        if let Some(at) = self.held {
            events.push(opentelemetry::trace::Event::new(
                "toolgate.hold",
                at,
                Vec::new(),
                0,
            ));
        }
        if let Some(resolved) = self.resolved {
            let mut attributes = vec![
                KeyValue::new("toolgate.approved", resolved.approved),
                KeyValue::new("toolgate.resolved_by", resolved.by),
            ];
            if let Some(operator) = resolved.operator {
                attributes.push(KeyValue::new("toolgate.operator", operator));
            }
            events.push(opentelemetry::trace::Event::new(
                "toolgate.hold_resolved",
                resolved.at,
                attributes,
                0,
            ));
        }
        out.push(span(
            SpanKind::Server,
            ids.server,
            ids.parent,
            ids.parent != SpanId::INVALID,
            self.start,
            attributes,
            events,
            self.error,
        ));
        out.extend(client_span);
    }
}

/// The records of ended requests waiting for the export task. Bounded; never blocks a call.
#[derive(Debug)]
pub(crate) struct SpanQueue {
    pending: Mutex<Pending>,
    limits: BatchLimits,
    /// Wakes the export task when a batch is full: once per batch, never per record.
    batch_full: tokio::sync::Notify,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    records: Vec<(Ids, CallRecord)>,
    spans: usize,
    /// The export task was told about this batch already.
    woken: bool,
}

impl SpanQueue {
    pub(crate) fn new(limits: BatchLimits) -> SpanQueue {
        SpanQueue {
            pending: Mutex::new(Pending::default()),
            limits,
            batch_full: tokio::sync::Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues an ended request's spans, or drops them (counted) when the queue is full.
    pub(crate) fn push(&self, ids: Ids, record: CallRecord) {
        let spans = record.span_count();
        let mut pending = self.lock();
        if pending.spans + spans > self.limits.max_queue {
            drop(pending);
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    "the trace export queue is full ({} spans, OTEL_BSP_MAX_QUEUE_SIZE): spans \
                     are being dropped",
                    self.limits.max_queue
                );
            }
            return;
        }
        pending.records.push((ids, record));
        pending.spans += spans;
        if pending.spans >= self.limits.max_batch && !pending.woken {
            pending.woken = true;
            drop(pending);
            self.batch_full.notify_one();
        }
    }

    /// Everything queued, leaving the queue empty.
    fn take(&self) -> Vec<(Ids, CallRecord)> {
        let mut pending = self.lock();
        pending.spans = 0;
        pending.woken = false;
        std::mem::take(&mut pending.records)
    }

    /// How many requests' spans were dropped because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The export task: takes the queue on the timer or when a batch is full, builds the spans
/// and has `exporter` send them, a batch at a time. A message on `stop` exports what is
/// left, shuts the exporter down and is answered.
pub(crate) async fn export_queued<E: SpanExporter>(
    queue: Arc<SpanQueue>,
    exporter: E,
    mut stop: tokio::sync::mpsc::UnboundedReceiver<std::sync::mpsc::SyncSender<()>>,
) {
    let scope = InstrumentationScope::builder("toolgate").build();
    let limits = queue.limits;
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(limits.delay) => None,
            () = queue.batch_full.notified() => None,
            reply = stop.recv() => Some(reply),
        };
        let records = queue.take();
        let mut batch = Vec::with_capacity(limits.max_batch.min(records.len() * 2));
        for (ids, record) in records {
            record.spans(&ids, &scope, &mut batch);
            if batch.len() >= limits.max_batch {
                send(&exporter, std::mem::take(&mut batch), limits.timeout).await;
            }
        }
        if !batch.is_empty() {
            send(&exporter, batch, limits.timeout).await;
        }
        if let Some(reply) = stopping {
            if let Err(e) = exporter.shutdown() {
                tracing::debug!("the trace exporter's shutdown: {e}");
            }
            if let Some(reply) = reply {
                let _ = reply.send(());
            }
            return;
        }
    }
}

async fn send<E: SpanExporter>(exporter: &E, batch: Vec<SpanData>, timeout: Duration) {
    let spans = batch.len();
    match tokio::time::timeout(timeout, exporter.export(batch)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("{spans} spans not exported: {e}"),
        Err(_) => tracing::warn!("{spans} spans not exported: no answer within {timeout:?}"),
    }
}

/// A W3C `traceparent` (`00-{trace}-{span}-{flags}`), written on the stack.
pub(crate) struct Traceparent([u8; 55]);

impl Traceparent {
    pub(crate) fn new(trace: TraceId, span: SpanId, flags: TraceFlags) -> Traceparent {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        // Each slice is exactly twice its bytes' length: the encoding cannot fail.
        let _ = hex::encode_to_slice(trace.to_bytes(), &mut out[3..35]);
        let _ = hex::encode_to_slice(span.to_bytes(), &mut out[36..52]);
        let _ = hex::encode_to_slice([flags.to_u8()], &mut out[53..]);
        Traceparent(out)
    }

    /// Always `Some`: the bytes are ASCII hex digits and dashes.
    pub(crate) fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::test_env::env;

    #[test]
    fn a_traceparent_is_the_w3c_spelling_of_the_ids() {
        let trace = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
        let span = SpanId::from_hex("b7ad6b7169203331").unwrap();
        let written = Traceparent::new(trace, span, TraceFlags::SAMPLED);
        assert_eq!(
            written.as_str(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        let unsampled = Traceparent::new(trace, span, TraceFlags::default());
        assert_eq!(
            unsampled.as_str(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
        );
        // A byte below 0x10 keeps its leading zero digit.
        let mut trace = [0u8; 16];
        trace[..2].copy_from_slice(&[0xab, 0x0c]);
        let padded = Traceparent::new(
            TraceId::from_bytes(trace),
            SpanId::from_bytes([0x0c, 0xab, 0, 0, 0, 0, 0, 1]),
            TraceFlags::SAMPLED,
        );
        assert_eq!(
            padded.as_str(),
            Some("00-ab0c0000000000000000000000000000-0cab000000000001-01")
        );
    }

    #[test]
    fn batch_limits_follow_the_bsp_variables_and_their_defaults() {
        let defaults = BatchLimits::from_env(env(&[]));
        assert_eq!(
            defaults,
            BatchLimits {
                max_queue: 2048,
                max_batch: 512,
                delay: Duration::from_secs(5),
                timeout: Duration::from_secs(30),
            }
        );
        let set = BatchLimits::from_env(env(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "not a number"),
        ]));
        assert_eq!(set.max_queue, 100);
        assert_eq!(set.max_batch, 100, "a batch is at most the queue");
        assert_eq!(set.delay, Duration::from_millis(100));
        assert_eq!(set.timeout, Duration::from_secs(30));
    }

    fn record(forwarded: bool) -> CallRecord {
        CallRecord {
            method: StringValue::from("tools/call"),
            target: Some(StringValue::from("echo")),
            tool_call: true,
            uri: None,
            request_id: "7".into(),
            session: "s".into(),
            version: None,
            start: SystemTime::now(),
            forwarded: forwarded.then(SystemTime::now),
            end: None,
            decided: None,
            held: None,
            resolved: None,
            error: None,
            client_error: None,
        }
    }

    fn ids() -> Ids {
        Ids {
            trace: TraceId::from(1),
            server: SpanId::from(2),
            client: SpanId::from(3),
            parent: SpanId::INVALID,
            flags: TraceFlags::SAMPLED,
            state: TraceState::NONE,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_a_full_batch_wakes_the_exporter_once() {
        let queue = SpanQueue::new(BatchLimits {
            max_queue: 5,
            max_batch: 3,
            delay: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
        });
        queue.push(ids(), record(true));
        assert!(!queue.lock().woken, "2 spans: no batch yet");
        queue.push(ids(), record(false));
        assert!(queue.lock().woken, "3 spans: a batch");
        queue.push(ids(), record(true));
        queue.push(ids(), record(true));
        assert_eq!(
            queue.dropped(),
            1,
            "the fourth record's 2 spans would make 7 > 5"
        );
        assert_eq!(queue.take().len(), 3);
        let after = queue.lock();
        assert_eq!(
            (after.spans, after.woken, after.records.len()),
            (0, false, 0)
        );
    }

    #[test]
    fn a_forwarded_request_becomes_a_server_span_and_its_client_child() {
        let mut record = record(true);
        record.decided = Some(Decided {
            verdict: Verdict::Allow,
            rule: "/tools/echo".into(),
            grant: "ci".into(),
            counter: None,
        });
        record.client_error = Some(ErrorType::Code(-32602));
        record.error = Some(ErrorType::Code(-32602));
        let scope = InstrumentationScope::builder("toolgate").build();
        let mut out = Vec::new();
        record.spans(&ids(), &scope, &mut out);
        let [server, client] = &out[..] else {
            panic!("two spans: {out:#?}")
        };
        assert_eq!(server.name, "tools/call echo");
        assert_eq!(server.span_kind, SpanKind::Server);
        assert_eq!(server.parent_span_id, SpanId::INVALID);
        assert_eq!(client.span_kind, SpanKind::Client);
        assert_eq!(client.parent_span_id, server.span_context.span_id());
        assert_eq!(
            client.span_context.trace_id(),
            server.span_context.trace_id()
        );
        let has = |span: &SpanData, key: &str, value: &str| {
            span.attributes
                .iter()
                .any(|kv| kv.key.as_str() == key && kv.value.as_str() == value)
        };
        assert!(has(server, "toolgate.decision", "allow"), "{server:#?}");
        assert!(
            !client
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "toolgate.decision")
        );
        for span in [server, client] {
            assert!(has(span, "gen_ai.tool.name", "echo"));
            assert!(has(span, "gen_ai.operation.name", "execute_tool"));
            assert!(has(span, "error.type", "-32602"));
            assert!(has(span, "rpc.response.status_code", "-32602"));
            assert!(matches!(span.status, Status::Error { .. }));
            assert!(span.end_time >= span.start_time);
        }
    }
}
