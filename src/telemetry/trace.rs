//! OpenTelemetry traces of the calls the gateway handles, exported by OTLP in batches, off
//! the call path.
//!
//! Off unless configured: `--otlp URL`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_EXPORTER_OTLP_PROTOCOL` picks http/protobuf
//! (the default) or grpc, and an `https://` endpoint is spoken to over TLS
//! (`super::exporter` reads those settings and carries the requests). The SDK reads
//! `OTEL_SERVICE_NAME` (default here `toolgate`), `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`(`_ARG`) and `OTEL_EXPORTER_OTLP_HEADERS` / `_TIMEOUT`;
//! `OTEL_BSP_*` size the queue here (`super::spans`).
//!
//! Each `tools/call` gets, following the OpenTelemetry conventions for MCP, a SERVER span
//! (toward the client) and, when it goes upstream, a CLIENT span (toward the server), both
//! named `tools/call {tool}`. A `traceparent`/`tracestate` in the request's `params._meta`
//! is continued, and the request passes upstream untouched. A sampled request without one
//! gets the CLIENT span's `traceparent` written into the `_meta` it is forwarded with: the
//! one change the gateway makes to a message it does not refuse, and only with tracing on.
//!
//! Spans are not the SDK's: the call path fills one small record per request
//! (`super::spans`), queued when the request ends without waking anyone; the export task on
//! the export thread builds the SDK's `SpanData` from it and the SDK's OTLP exporter encodes
//! them, sent through [`super::exporter::ExportClient`] with a deadline per request. A full
//! queue (2048 spans by default) drops spans, never waits, so a slow or absent collector
//! costs a call nothing. The sampler is the SDK's, as `OTEL_TRACES_SAMPLER` configures it; the
//! ids come from the SDK's per-thread generator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use opentelemetry::StringValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, SamplingDecision, ShouldSample,
};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::exporter::{Export, Signal, export_runtime, resource};
use super::spans::{
    BatchLimits, CallRecord, Decided, ErrorType, Ids, Resolved, SpanQueue, Traceparent,
    export_queued,
};
use crate::control::Resolution;
use crate::policy::{Decision, Verdict};
use crate::wire::ResolvedBy;

/// The two `_meta` keys of W3C trace context.
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// Where and how traces are exported, from the command line and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceConfig {
    /// Where and how the spans go.
    pub(crate) export: Export,
}

impl TraceConfig {
    /// Tracing as configured by `--otlp` (`otlp`) and the environment (`env`); `None` when
    /// tracing is off. Errors say which setting is wrong and what to use instead.
    pub fn from(
        otlp: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<TraceConfig>> {
        Ok(Signal::Traces
            .configured(otlp, env)?
            .map(|export| TraceConfig { export }))
    }
}

/// The tracer of one gateway process.
pub struct Tracing {
    sampler: Box<dyn ShouldSample>,
    ids: RandomIdGenerator,
    propagator: TraceContextPropagator,
    queue: Arc<SpanQueue>,
    /// Asks the export task to export what is left and stop; it answers on the channel given.
    stop: tokio::sync::mpsc::UnboundedSender<std::sync::mpsc::SyncSender<()>>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

/// The longest the gateway's stop waits for the last spans to be exported.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Tracing {
    /// Starts exporting per `config`: the export task runs on the export thread
    /// (`toolgate-otlp`), with the SDK's OTLP exporter and our client.
    pub fn start(config: &TraceConfig) -> anyhow::Result<Tracing> {
        use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
        use opentelemetry_sdk::trace::SpanExporter as _;
        // The SDK's OTLP/HTTP exporter encodes; our client carries it as HTTP or gRPC.
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(config.export.client(Signal::Traces)?)
            .with_endpoint(config.export.endpoint.clone())
            .build()
            .context("cannot set up the OTLP exporter (--otlp, OTEL_EXPORTER_OTLP_*)")?;
        exporter.set_resource(&resource());
        let queue = Arc::new(SpanQueue::new(BatchLimits::from_env(|name| {
            std::env::var(name).ok()
        })));
        let (stop, stopped) = tokio::sync::mpsc::unbounded_channel();
        export_runtime()?.spawn(export_queued(queue.clone(), exporter, stopped));
        Ok(Tracing {
            // The SDK's reading of OTEL_TRACES_SAMPLER(_ARG), default parentbased_always_on.
            sampler: opentelemetry_sdk::trace::Config::default().sampler,
            ids: RandomIdGenerator::default(),
            propagator: TraceContextPropagator::new(),
            queue,
            stop,
        })
    }

    /// Exports what is queued and stops the exporter (at most [`SHUTDOWN_WAIT`]). Blocking:
    /// call it from a thread that may block, at the gateway's stop.
    pub fn shutdown(&self) {
        let (reply, done) = std::sync::mpsc::sync_channel(1);
        if self.stop.send(reply).is_err() {
            return;
        }
        if done.recv_timeout(SHUTDOWN_WAIT).is_err() {
            tracing::warn!("traces not all exported at stop: no answer within {SHUTDOWN_WAIT:?}");
        }
        let dropped = self.queue.dropped();
        if dropped > 0 {
            tracing::warn!(
                "the spans of {dropped} requests were dropped: the export queue was full \
                 (OTEL_BSP_MAX_QUEUE_SIZE)"
            );
        }
    }

    /// Starts the SERVER span of a `tools/call` of `tool` (request `id`) in `session`,
    /// continuing the trace of a `traceparent` in its `_meta`. `version` is the protocol
    /// version the connection's `initialize` settled on, when known.
    pub(crate) fn start_call(
        &self,
        session: &str,
        id: &impl std::fmt::Display,
        tool: &str,
        meta: Option<&Map<String, Value>>,
        version: Option<&str>,
    ) -> CallSpans {
        let target = StringValue::from(tool.to_owned());
        self.open_spans(
            (StringValue::from("tools/call"), Some(target), true, None),
            (session, id),
            meta,
            version,
        )
    }

    /// Starts the SERVER span of any other request the client sends (`initialize`,
    /// `tools/list`, `resources/read`, `prompts/get`...), named as the MCP conventions say:
    /// `{mcp.method.name} {target}` where the target is a prompt's name, the method alone
    /// otherwise (a resource's URI is an attribute, never in the name: too many values).
    /// A method outside MCP's plain spelling is named `_OTHER` (clients choose methods).
    pub(crate) fn start_request(
        &self,
        session: &str,
        id: &impl std::fmt::Display,
        method: &str,
        params: Option<&RawValue>,
        version: Option<&str>,
    ) -> CallSpans {
        let params: RequestParams = params
            .filter(|p| p.get().starts_with('{'))
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or_default();
        let plain = method.len() <= 64
            && method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.'));
        let method_name = StringValue::from(if plain {
            method.to_owned()
        } else {
            "_OTHER".to_owned()
        });
        let version = match (method, &params.protocol_version) {
            // The version the client asks for; its answer says the one settled on.
            ("initialize", Some(asked)) => Some(asked.as_str()),
            _ => version,
        };
        let target = match (method, params.name) {
            ("prompts/get", Some(prompt)) => Some(StringValue::from(prompt)),
            _ => None,
        };
        let uri = params.uri.filter(|_| method.starts_with("resources/"));
        let mut spans = self.open_spans(
            (method_name, target, false, uri),
            (session, id),
            params.meta.as_ref(),
            version,
        );
        spans.initialize = method == "initialize";
        spans
    }

    /// Starts a SERVER span named by `method` and `target`, with the session, the request
    /// id and the protocol version.
    fn open_spans(
        &self,
        (method, target, tool_call, uri): (StringValue, Option<StringValue>, bool, Option<String>),
        (session, id): (&str, &impl std::fmt::Display),
        meta: Option<&Map<String, Value>>,
        version: Option<&str>,
    ) -> CallSpans {
        let start = SystemTime::now();
        let incoming = meta.is_some_and(|m| m.get(TRACEPARENT).is_some_and(Value::is_string));
        let parent = match meta {
            Some(meta) if incoming => Some(self.propagator.extract(&MetaExtractor(meta))),
            _ => None,
        };
        let remote = parent
            .as_ref()
            .map(|cx| cx.span().span_context().clone())
            .filter(SpanContext::is_valid);
        let trace = match &remote {
            Some(remote) => remote.trace_id(),
            None => self.ids.new_trace_id(),
        };
        let sampling = self.sampler.should_sample(
            parent.as_ref(),
            trace,
            method.as_str(),
            &SpanKind::Server,
            &[],
            &[],
        );
        let sampled = sampling.decision == SamplingDecision::RecordAndSample;
        let ids = Ids {
            trace,
            server: self.ids.new_span_id(),
            client: self.ids.new_span_id(),
            parent: remote
                .as_ref()
                .map_or(SpanId::INVALID, SpanContext::span_id),
            flags: if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            state: sampling.trace_state,
        };
        // A 2026-07-28 request says its version in every `_meta`.
        let stated = meta
            .and_then(|m| m.get(crate::gateway::jsonrpc::META_PROTOCOL_VERSION))
            .and_then(Value::as_str);
        let record = sampled.then(|| CallRecord {
            method,
            target,
            tool_call,
            uri,
            request_id: id.to_string(),
            session: session.to_owned(),
            version: stated.or(version).map(str::to_owned),
            start,
            forwarded: None,
            end: None,
            decided: None,
            held: None,
            resolved: None,
            error: None,
            client_error: None,
        });
        CallSpans {
            initialize: false,
            incoming,
            ids,
            queue: self.queue.clone(),
            record: Mutex::new(record),
        }
    }

    /// Starts the CLIENT span of a request going upstream, child of its SERVER span.
    /// Returns the request `line` to forward instead, with the CLIENT span's `traceparent`
    /// in its `_meta`, when the trace is sampled and the client sent none; `None` to
    /// forward the line as it is.
    pub(crate) fn forwarded(&self, spans: &CallSpans, line: &[u8]) -> Option<Vec<u8>> {
        if let Some(record) = spans.lock().as_mut() {
            record.forwarded = Some(SystemTime::now());
        }
        let ids = &spans.ids;
        if spans.incoming || !ids.sampled() {
            return None;
        }
        let traceparent = Traceparent::new(ids.trace, ids.client, ids.flags);
        let traceparent = traceparent.as_str()?;
        with_traceparent(line, traceparent).or_else(|| {
            with_meta(
                line,
                HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]),
            )
        })
    }
}

/// The members of a request's params that name its span; the rest is skipped unread.
#[derive(Default, serde::Deserialize)]
struct RequestParams {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uri: Option<String>,
    #[serde(default, rename = "_meta")]
    meta: Option<Map<String, Value>>,
    #[serde(default, rename = "protocolVersion")]
    protocol_version: Option<String>,
}

/// The spans of one MCP request, from its arrival to its answer: a SERVER span, and a
/// CLIENT span once it goes upstream. Ending them (or dropping this) queues them for export.
pub struct CallSpans {
    /// An `initialize`: its answer says the connection's protocol version.
    initialize: bool,
    /// The client sent a `traceparent`: the request goes upstream untouched.
    incoming: bool,
    ids: Ids,
    queue: Arc<SpanQueue>,
    /// What the spans say so far; `None` when not sampled, or once queued.
    record: Mutex<Option<CallRecord>>,
}

impl std::fmt::Debug for CallSpans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (trace, span) = self.ids();
        write!(f, "CallSpans({trace}/{span})")
    }
}

impl Drop for CallSpans {
    fn drop(&mut self) {
        self.end(|_| {});
    }
}

impl CallSpans {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<CallRecord>> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the record, if it is kept.
    fn update(&self, change: impl FnOnce(&mut CallRecord)) {
        if let Some(record) = self.lock().as_mut() {
            change(record);
        }
    }

    /// Ends both spans after `change`, and queues them for export (once).
    fn end(&self, change: impl FnOnce(&mut CallRecord)) {
        let Some(mut record) = self.lock().take() else {
            return;
        };
        change(&mut record);
        record.end = Some(SystemTime::now());
        self.queue.push(self.ids.clone(), record);
    }

    /// Whether these are the spans of an `initialize`.
    pub(crate) fn is_initialize(&self) -> bool {
        self.initialize
    }

    /// The trace id and the SERVER span's id, lowercase hex, for the audit log.
    pub(crate) fn ids(&self) -> (String, String) {
        (
            hex::encode(self.ids.trace.to_bytes()),
            hex::encode(self.ids.server.to_bytes()),
        )
    }

    /// Records the policy's decision.
    pub(crate) fn decided(&self, grant: &smol_str::SmolStr, decision: &Decision) {
        self.update(|record| {
            record.decided = Some(Decided {
                verdict: decision.verdict,
                rule: decision.rule.clone(),
                grant: grant.clone(),
                counter: limited_counter(decision).map(str::to_owned),
            });
            if matches!(decision.verdict, Verdict::Deny | Verdict::RateLimited) {
                record.error = Some(ErrorType::Named(decision.verdict.as_str()));
            }
            if decision.verdict == Verdict::Hold {
                record.held = Some(SystemTime::now());
            }
        });
    }

    /// Records how a hold ended, and by whom.
    pub(crate) fn resolved(&self, resolution: &Resolution) {
        let by = match resolution.by {
            ResolvedBy::Operator => "operator",
            ResolvedBy::Timeout => "timeout",
            ResolvedBy::Cancellation => "cancellation",
            ResolvedBy::Shutdown => "shutdown",
        };
        self.update(|record| {
            record.resolved = Some(Resolved {
                at: SystemTime::now(),
                approved: resolution.approved,
                by,
                operator: resolution.operator.clone(),
            });
            if !resolution.approved {
                record.error = Some(ErrorType::Named("hold_denied"));
            }
        });
    }

    /// Ends both spans; `error` when the upstream answered with an error or did not answer.
    pub(crate) fn answered(&self, error: bool) {
        self.end(|record| {
            if error {
                record.error = Some(ErrorType::Named("tool_error"));
                record.client_error = Some(ErrorType::Named("tool_error"));
            }
        });
    }

    /// Ends both spans of a request other than `tools/call` with its answer: `error`, the
    /// JSON-RPC error's code, when it was refused. `error.type` is that code, as the MCP
    /// conventions say.
    pub(crate) fn answered_with(&self, error: Option<i64>) {
        self.end(|record| {
            if let Some(code) = error {
                record.error = Some(ErrorType::Code(code));
                record.client_error = Some(ErrorType::Code(code));
            }
        });
    }

    /// Ends both spans of a request that will never be answered by the upstream (`kind`
    /// says why, as `error.type`).
    pub(crate) fn failed(&self, kind: &'static str) {
        self.end(|record| {
            record.error = Some(ErrorType::Named(kind));
            record.client_error = Some(ErrorType::Named(kind));
        });
    }
}

/// The counter without room that refused a rate-limited call. The decision's rule is the
/// limit's place (`/tools/x/limits/0`), its reason the policy's words, which name the
/// counter last ("… on counter NAME"); `tests::the_counter_of_a_limited_call_is_named`
/// holds the two together.
fn limited_counter(decision: &Decision) -> Option<&str> {
    if decision.verdict != Verdict::RateLimited {
        return None;
    }
    decision
        .reason
        .rsplit_once(" on counter ")
        .map(|(_, counter)| counter)
}

/// `line` (a request) with `"traceparent": traceparent` added last to its
/// `params._meta` (made when absent), spliced into the bytes: nothing else is copied
/// differently, nothing re-encoded. `None` when the line is not that simple (no params
/// object, a `_meta` that is not an object or already has trace context, an escaped
/// key); then [`with_meta`] decides.
///
/// The line is a request the gateway has parsed already, so a structural scan finds the
/// objects (strings skipped, brackets counted) in one pass over the bytes, where parsing
/// the message, its params and its `_meta` with serde cost three.
fn with_traceparent(line: &[u8], traceparent: &str) -> Option<Vec<u8>> {
    let start = skip_space(line, 0);
    let mut params = None;
    object_members(line, start, |key, value| {
        if key == b"params" && params.is_none() {
            params = Some(value);
        }
    })?;
    let params = params?;
    if line.get(params.start) != Some(&b'{') {
        return None;
    }
    let mut meta = None;
    let (params_close, params_empty) = object_members(line, params.start, |key, value| {
        if key == b"_meta" && meta.is_none() {
            meta = Some(value);
        }
    })?;
    let (close, empty, new_meta) = match meta {
        Some(meta) => {
            if line.get(meta.start) != Some(&b'{') {
                return None;
            }
            let mut traced = false;
            let (close, empty) = object_members(line, meta.start, |key, _| {
                traced |= key == TRACEPARENT.as_bytes() || key == TRACESTATE.as_bytes();
            })?;
            if traced {
                return None;
            }
            (close, empty, false)
        }
        None => (params_close, params_empty, true),
    };
    let mut out = Vec::with_capacity(line.len() + traceparent.len() + 32);
    out.extend_from_slice(&line[..close]);
    if !empty {
        out.push(b',');
    }
    if new_meta {
        out.extend_from_slice(b"\"_meta\":{");
    }
    out.extend_from_slice(b"\"traceparent\":\"");
    out.extend_from_slice(traceparent.as_bytes());
    out.push(b'"');
    if new_meta {
        out.push(b'}');
    }
    out.extend_from_slice(&line[close..]);
    Some(out)
}

fn skip_space(text: &[u8], mut at: usize) -> usize {
    while matches!(text.get(at), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        at += 1;
    }
    at
}

/// The end (one past the closing quote) of the string starting at `at`, and whether it has
/// an escape.
fn string_end(text: &[u8], at: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    let mut i = at + 1;
    loop {
        match text.get(i)? {
            b'\\' => {
                escaped = true;
                i += 2;
            }
            b'"' => return Some((i + 1, escaped)),
            _ => i += 1,
        }
    }
}

/// The end (one past its last byte) of the JSON value starting at `at`.
fn value_end(text: &[u8], at: usize) -> Option<usize> {
    match text.get(at)? {
        b'"' => string_end(text, at).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match text.get(i)? {
                    b'"' => {
                        i = string_end(text, i)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = at;
            while let Some(b) = text.get(i) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
                    break;
                }
                i += 1;
            }
            (i > at).then_some(i)
        }
    }
}

/// Calls `member` with each key (its bytes between the quotes) and value (its range in
/// `text`) of the object starting at `at`; answers where its closing brace is and whether
/// it is empty. `None` when it is not an object, or a key has an escape.
fn object_members(
    text: &[u8],
    at: usize,
    mut member: impl FnMut(&[u8], std::ops::Range<usize>),
) -> Option<(usize, bool)> {
    if text.get(at) != Some(&b'{') {
        return None;
    }
    let mut i = skip_space(text, at + 1);
    if text.get(i) == Some(&b'}') {
        return Some((i, true));
    }
    loop {
        if text.get(i) != Some(&b'"') {
            return None;
        }
        let (key_end, escaped) = string_end(text, i)?;
        if escaped {
            return None;
        }
        let key = text.get(i + 1..key_end - 1)?;
        i = skip_space(text, key_end);
        if text.get(i) != Some(&b':') {
            return None;
        }
        let value = skip_space(text, i + 1);
        let end = value_end(text, value)?;
        member(key, value..end);
        i = skip_space(text, end);
        match text.get(i)? {
            b',' => i = skip_space(text, i + 1),
            b'}' => return Some((i, false)),
            _ => return None,
        }
    }
}

/// `line` (a request) with `entries` added to its `params._meta`; `None` when it cannot be
/// re-encoded (then it is forwarded as it is). Every other member keeps its place and its
/// bytes (the arguments are never re-encoded: a number keeps its spelling); only the
/// whitespace between the members of the three objects touched may change.
fn with_meta(line: &[u8], entries: HashMap<String, String>) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(line).ok()?;
    let mut message: Members = serde_json::from_str(text.trim_end()).ok()?;
    let mut params: Members = serde_json::from_str(message.get("params")?.get()).ok()?;
    let mut meta: Members = match params.get("_meta") {
        Some(meta) => serde_json::from_str(meta.get()).ok()?,
        None => Members::default(),
    };
    for (key, value) in entries {
        meta.set(&key, serde_json::value::to_raw_value(&value).ok()?);
    }
    params.set("_meta", serde_json::value::to_raw_value(&meta).ok()?);
    message.set("params", serde_json::value::to_raw_value(&params).ok()?);
    let mut out = serde_json::to_vec(&message).ok()?;
    if line.ends_with(b"\n") {
        out.push(b'\n');
    }
    Some(out)
}

/// A JSON object's members in order, each value's text kept as it was.
#[derive(Default)]
struct Members(Vec<(String, Box<RawValue>)>);

impl Members {
    fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }

    /// Replaces `key`'s value in its place, or adds it last.
    fn set(&mut self, key: &str, value: Box<RawValue>) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, old)) => *old = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Members, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

impl serde::Serialize for Members {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

struct MetaExtractor<'a>(&'a Map<String, Value>);

impl Extractor for MetaExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT | TRACESTATE => self.0.get(key)?.as_str(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::test_env::env;

    #[test]
    fn tracing_is_off_unless_an_endpoint_is_configured() {
        assert_eq!(TraceConfig::from(None, env(&[])).unwrap(), None);
        assert_eq!(
            TraceConfig::from(None, env(&[("OTEL_SERVICE_NAME", "x")])).unwrap(),
            None
        );
        assert!(
            TraceConfig::from(
                None,
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])
            )
            .unwrap()
            .is_some()
        );
        assert_eq!(
            TraceConfig::from(
                Some("http://127.0.0.1:4318/"),
                env(&[("OTEL_SDK_DISABLED", "true")])
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn otlp_flag_names_the_base_url_and_traces_go_to_v1_traces() {
        let config = TraceConfig::from(Some("http://127.0.0.1:4318/"), env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(config.export.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert!(TraceConfig::from(Some("127.0.0.1:4318"), env(&[])).is_err());
        let secure = TraceConfig::from(Some("https://collector:4318"), env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(secure.export.endpoint, "https://collector:4318/v1/traces");
    }

    #[test]
    fn the_counter_of_a_limited_call_is_named() {
        use crate::policy::{Call, MemoryStore, Policy};
        let policy = Policy::parse(
            r#"{"version": "1", "default": "deny", "tools": {"echo": {"limits": [
                {"counter": "echo budget", "window": "minute", "max": 1, "scope": "grant"}]}}}"#,
            "policy.json",
        )
        .expect("a valid policy");
        let store = MemoryStore::new();
        let args = serde_json::json!({});
        let call = Call {
            tool: "echo",
            args: &args,
            grant: "ci",
            session: "s",
        };
        let first = policy.decide(&call, &store, 1_000);
        assert_eq!(limited_counter(&first), None);
        let second = policy.decide(&call, &store, 1_001);
        assert_eq!(second.verdict, Verdict::RateLimited);
        assert_eq!(limited_counter(&second), Some("echo budget"), "{second:?}");
    }

    #[test]
    fn the_spliced_traceparent_goes_last_in_the_meta_and_every_other_byte_stays() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cases: &[(&str, &str)] = &[
            (
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","arguments":{"b":1E2},"_meta":{"progressToken":3}}}"#,
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","arguments":{"b":1E2},"_meta":{"progressToken":3,"traceparent":"TP"}}}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta": { } , "a" : [1, 2]}}"#,
                r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta": { "traceparent":"TP"} , "a" : [1, 2]}}"#,
            ),
            (
                r#"{"params":{"name":"t"},"jsonrpc":"2.0","id":1,"method":"prompts/get"}"#,
                r#"{"params":{"name":"t","_meta":{"traceparent":"TP"}},"jsonrpc":"2.0","id":1,"method":"prompts/get"}"#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"traceparent":"TP"}}}"#,
            ),
        ];
        for (line, want) in cases {
            let want = want.replace("TP", tp);
            let out = with_traceparent(line.as_bytes(), tp).expect(line);
            assert_eq!(String::from_utf8(out).unwrap(), want);
            let mut with_newline = line.as_bytes().to_vec();
            with_newline.push(b'\n');
            let out = with_traceparent(&with_newline, tp).expect(line);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{want}\n"));
        }
        // Strings holding brackets, quotes and escapes do not end an object early.
        let tricky = r#"{"id":1,"params":{"arguments":{"s":"}{\"]","n":[{"a":"\\"}],"t":true},"name":"a}"},"method":"tools/call"}"#;
        let want = r#"{"id":1,"params":{"arguments":{"s":"}{\"]","n":[{"a":"\\"}],"t":true},"name":"a}","_meta":{"traceparent":"TP"}},"method":"tools/call"}"#;
        let out = with_traceparent(tricky.as_bytes(), tp).expect(tricky);
        assert_eq!(String::from_utf8(out).unwrap(), want.replace("TP", tp));
        // Not simple: left to `with_meta` (or forwarded as it is).
        for line in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":null}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"traceparent":5}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_m\u0065ta":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"tracestate":"a=b"}}}"#,
            r#"[{"params":{}}]"#,
        ] {
            assert_eq!(with_traceparent(line.as_bytes(), tp), None, "{line}");
        }
    }

    #[test]
    fn a_traceparent_is_added_to_the_meta_and_nothing_else_changes() {
        let line = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","arguments":{"b":1E2,"a":123456789012345678901234567890},"_meta":{"progressToken":3}}}
"#;
        let entries = HashMap::from([(TRACEPARENT.to_owned(), "00-ab-cd-01".to_owned())]);
        let out = with_meta(line, entries).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"t\",\"arguments\":{\"b\":1E2,\"a\":123456789012345678901234567890},\"_meta\":{\"progressToken\":3,\"traceparent\":\"00-ab-cd-01\"}}}\n"
        );
        let no_meta = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t"}}"#;
        let entries = HashMap::from([(TRACEPARENT.to_owned(), "x".to_owned())]);
        let out = with_meta(no_meta, entries).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains(r#""_meta":{"traceparent":"x"}"#)
        );
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(("\\PC{0,6}", inner), 0..6)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn a_spliced_request_reads_as_the_request_with_the_traceparent_added(
            arguments in any_json(),
            meta in proptest::option::of(proptest::collection::vec(("\\PC{0,6}", any_json()), 0..4)),
            params_first: bool,
            pretty: bool,
        ) {
            let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            let meta: Option<Map<String, Value>> = meta.map(|members| {
                members
                    .into_iter()
                    .filter(|(k, _)| k != TRACEPARENT && k != TRACESTATE)
                    .collect()
            });
            let mut params = Map::new();
            params.insert("name".into(), "t".into());
            params.insert("arguments".into(), arguments);
            if let Some(meta) = &meta {
                params.insert("_meta".into(), Value::Object(meta.clone()));
            }
            let mut message = Map::new();
            if params_first {
                message.insert("params".into(), Value::Object(params.clone()));
            }
            message.insert("jsonrpc".into(), "2.0".into());
            message.insert("id".into(), 1.into());
            message.insert("method".into(), "tools/call".into());
            if !params_first {
                message.insert("params".into(), Value::Object(params.clone()));
            }
            let message = Value::Object(message);
            let text = if pretty {
                serde_json::to_string_pretty(&message).unwrap()
            } else {
                message.to_string()
            };
            // Read back by serde both times, so that floats round alike.
            let mut want: Value = serde_json::from_str(&text).unwrap();
            let mut want_meta = want["params"]["_meta"].as_object().cloned().unwrap_or_default();
            want_meta.insert(TRACEPARENT.into(), tp.into());
            want["params"]["_meta"] = Value::Object(want_meta);
            // A key written with an escape is left to `with_meta`.
            let plain_keys = meta
                .iter()
                .flat_map(|m| m.keys())
                .all(|k| !k.contains(['"', '\\']));
            match with_traceparent(text.as_bytes(), tp) {
                Some(out) => {
                    let read: Value = serde_json::from_slice(&out).expect("the spliced line is JSON");
                    proptest::prop_assert_eq!(read, want);
                }
                None => proptest::prop_assert!(!plain_keys, "not spliced: {}", text),
            }
        }
    }
}
