//! The audit log: one JSON line per decision and one per outcome, in a file only its owner
//! can read (mode 0600).
//!
//! Argument values are not written by default: a record names the argument keys and carries
//! an HMAC-SHA-256 of the canonical argument JSON under the installation's key ([`key`]), so a
//! call can be matched later without the log holding its data, and without anyone who reads
//! the log being able to recover small arguments by guessing. `--audit-args full` adds the
//! values, with whatever looks secret redacted ([`crate::redact`]).
//!
//! Writing happens on a dedicated thread ([`writer`]), so a slow disk never adds latency to a
//! call: a record is appended to an in-memory buffer (no system call, no thread wake-up on the
//! call's path) and the thread writes the buffer out every [`writer::FLUSH_EVERY`], and at
//! close. The same thread follows rotation and `SIGHUP`, and reports a log that cannot be
//! written; while it cannot, [`AuditLog::refuses_calls`] tells the gateway to deny calls
//! (`--audit-fail`).

pub(crate) mod key;
pub(crate) mod writer;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::args::{Out, RawArgs};
use crate::policy::Verdict;

pub(crate) use key::{AuditKey, KeyError};
pub(crate) use writer::HealthSink;
use writer::{LogFile, MAX_QUEUED, Shared};

/// `,"NAME":`, the text before a member's value, made at compile time: a member is then one
/// copy of it and one of its value (each copy of a few bytes is a call to `memcpy`, and a
/// record has a dozen members).
macro_rules! member_key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

/// How much of the arguments the audit log keeps (`--audit-args`, spelled in
/// `cli::audit_values`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditArgs {
    /// Argument keys and a keyed hash (HMAC) of the arguments; no values.
    #[default]
    Keys,
    /// Keys, hash, and the values with whatever looks secret redacted.
    Full,
}

/// What tool calls get while the audit log cannot be written (`--audit-fail`, spelled in
/// `cli::audit_values`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditFail {
    /// Denied, with a reason saying the audit log cannot be written, until it can again.
    #[default]
    Closed,
    /// Decided as usual, their records waiting in memory (up to 16 MiB) until the log can
    /// be written; the outage is reported all the same.
    Open,
}

/// How an audit log is kept.
#[derive(Clone)]
pub struct AuditOptions {
    pub args: AuditArgs,
    pub fail: AuditFail,
    /// The key of the arguments' HMAC.
    pub key: AuditKey,
    /// Told when the log stops being writable and when it is again.
    pub health: Option<HealthSink>,
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no state directory for the default audit log ({0}); pass --audit PATH")]
    NoStateDir(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord<'a> {
    #[serde(serialize_with = "serialize_ts")]
    pub ts: DateTime<Utc>,
    /// `decision` or `outcome`.
    pub kind: &'static str,
    pub call_id: &'a str,
    pub grant: &'a str,
    pub session: &'a str,
    pub server: &'a str,
    pub tool: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arg_keys: Option<ArgKeys<'a>>,
    /// HMAC-SHA-256 (hex) of the canonical arguments under the log's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_hmac: Option<&'a Hex64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<bool>,
    /// The call's trace and its SERVER span (lowercase hex), when tracing is on: a record
    /// and a trace join on these.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<&'a str>,
    /// What a shadow rule or the shadow policy would have decided instead (decision
    /// records whose shadow differs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<&'a crate::wire::ShadowDecision>,
}

/// The top-level keys of a call's arguments (none unless they are an object), in their
/// order: read from the arguments when the record is written, never collected per call.
#[derive(Debug, Clone, Copy)]
pub enum ArgKeys<'a> {
    Of(&'a serde_json::Map<String, Value>),
    /// Read from the arguments' text (the call's path: no tree).
    Raw(&'a RawArgs),
    /// Given as a list (tests).
    Listed(&'a [&'a str]),
}

impl<'a> ArgKeys<'a> {
    pub fn of(args: &'a Value) -> ArgKeys<'a> {
        match args {
            Value::Object(map) => ArgKeys::Of(map),
            _ => ArgKeys::Listed(&[]),
        }
    }

    /// The keys, decoded (borrowed unless a key has escapes).
    pub fn iter(&self) -> impl Iterator<Item = Cow<'a, str>> + use<'a> {
        let (map, raw, listed) = match *self {
            ArgKeys::Of(map) => (Some(map), None, None),
            ArgKeys::Raw(raw) => (None, Some(raw), None),
            ArgKeys::Listed(keys) => (None, None, Some(keys)),
        };
        let from_map = map
            .into_iter()
            .flat_map(|m| m.keys().map(|k| Cow::Borrowed(k.as_str())));
        let from_raw = raw.into_iter().flat_map(RawArgs::keys);
        let listed = listed.into_iter().flatten().map(|k| Cow::Borrowed(*k));
        from_map.chain(from_raw).chain(listed)
    }
}

impl Serialize for ArgKeys<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// An open audit log. Cheap to share behind an `Arc`.
pub struct AuditLog {
    path: PathBuf,
    args: AuditArgs,
    key: AuditKey,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The last record's grant, session and server, already written as JSON. They are the
    /// same for every record of a gateway, so they are escaped once, not twice per call.
    context: Mutex<Context>,
}

#[derive(Debug, Default)]
struct Context {
    grant: String,
    session: String,
    server: String,
    json: Vec<u8>,
    /// The last record's minute (seconds since the epoch / 60) and its
    /// `YYYY-MM-DDTHH:MM:` text: the calendar is most of a timestamp's cost, and every record
    /// of a minute shares it.
    minute: Option<(i64, [u8; 17])>,
}

impl Context {
    /// Writes `ts` as [`serialize_ts`] does (a test keeps the two equal).
    fn ts(&mut self, ts: &DateTime<Utc>, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let seconds = ts.timestamp();
        let nanos = ts.timestamp_subsec_nanos();
        let minute = seconds.div_euclid(60);
        if let Some((cached, prefix)) = &self.minute
            && *cached == minute
            && nanos < 1_000_000_000
        {
            let mut tail = Digits::default();
            // Within 0..60: the cast is exact.
            tail.number(seconds.rem_euclid(60) as u32, 2);
            fraction(&mut tail, nanos);
            tail.byte(b'Z');
            out.push(b'"');
            out.extend_from_slice(prefix);
            out.extend_from_slice(&tail.out[..tail.len]);
            out.push(b'"');
            return Ok(());
        }
        if let Some((text, len)) = rfc3339(ts) {
            let mut prefix = [0u8; 17];
            prefix.copy_from_slice(&text[..17]);
            self.minute = Some((minute, prefix));
            out.push(b'"');
            out.extend_from_slice(&text[..len]);
            out.push(b'"');
            return Ok(());
        }
        serialize_ts(ts, &mut serde_json::Serializer::new(&mut *out))
    }

    /// `,"grant":..,"session":..,"server":..` for this record.
    fn json(&mut self, record: &AuditRecord<'_>) -> Result<&[u8], serde_json::Error> {
        if self.json.is_empty()
            || self.grant != record.grant
            || self.session != record.session
            || self.server != record.server
        {
            self.json.clear();
            for (key, value) in [
                (member_key!("grant"), record.grant),
                (member_key!("session"), record.session),
                (member_key!("server"), record.server),
            ] {
                member_str(&mut self.json, key, value);
            }
            record.grant.clone_into(&mut self.grant);
            record.session.clone_into(&mut self.session);
            record.server.clone_into(&mut self.server);
        }
        Ok(&self.json)
    }
}

/// Writes one record as `serde_json` would serialise it (same members, same order, same
/// escaping), a little faster: see [`Context`]. `audit_lines_match_serde` keeps the two equal.
fn write_record(
    out: &mut Vec<u8>,
    record: &AuditRecord<'_>,
    context: &mut Context,
) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b"{\"ts\":");
    context.ts(&record.ts, out)?;
    member_static(out, member_key!("kind"), record.kind);
    member_str(out, member_key!("call_id"), record.call_id);
    out.extend_from_slice(context.json(record)?);
    member_str(out, member_key!("tool"), record.tool);
    if let Some(decision) = record.decision {
        // The wire name, as serde writes it.
        member_static(out, member_key!("decision"), decision.as_str());
    }
    if let Some(rule) = record.rule {
        member_str(out, member_key!("rule"), rule);
    }
    if let Some(reason) = record.reason {
        member_str(out, member_key!("reason"), reason);
    }
    if let Some(keys) = &record.arg_keys {
        out.extend_from_slice(b",\"arg_keys\":[");
        for (i, key) in keys.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, &key);
        }
        out.push(b']');
    }
    if let Some(hmac) = record.args_hmac {
        member_hex(out, member_key!("args_hmac"), hmac);
    }
    if let Some(args) = &record.args {
        member(out, member_key!("args"), args)?;
    }
    if let Some(latency) = record.latency_us {
        out.extend_from_slice(member_key!("latency_us").as_bytes());
        out.extend_from_slice(itoa::Buffer::new().format(latency).as_bytes());
    }
    if let Some(error) = record.error {
        out.extend_from_slice(member_key!("error").as_bytes());
        out.extend_from_slice(if error { b"true" } else { b"false" });
    }
    if let Some(trace_id) = record.trace_id {
        member_str(out, member_key!("trace_id"), trace_id);
    }
    if let Some(span_id) = record.span_id {
        member_str(out, member_key!("span_id"), span_id);
    }
    if let Some(shadow) = record.shadow {
        member(out, member_key!("shadow"), shadow)?;
    }
    out.push(b'}');
    Ok(())
}

/// `,"key":"value"` for a string value; `key` is [`member_key!`]'s (keys here never need escaping).
// This and the two below are inlined into `write_record`, so each key, a constant there, is
// copied by a few moves of known length rather than a `memcpy` of a length read at run time.
#[inline(always)]
fn member_str(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    string(out, value);
}

/// `,"key":"value"` for a value written in this program (a record's kind, a verdict's wire
/// name), which never needs escaping: not checked byte by byte on every record.
#[inline(always)]
fn member_static(out: &mut Vec<u8>, key: &str, value: &'static str) {
    debug_assert_eq!(super::jsonrpc::plain_prefix(value.as_bytes()), value.len());
    out.extend_from_slice(key.as_bytes());
    out.reserve(value.len() + 2);
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// `,"key":"digits"` for hex digits this program wrote, which never need escaping: not
/// checked byte by byte on every record.
#[inline(always)]
fn member_hex(out: &mut Vec<u8>, key: &str, hex: &Hex64) {
    out.extend_from_slice(key.as_bytes());
    out.reserve(hex.0.len() + 2);
    out.push(b'"');
    out.extend_from_slice(&hex.0);
    out.push(b'"');
}

/// A JSON string escaped exactly as `serde_json` escapes it: only `"`, `\` and control
/// characters are; text without them (almost every value here) is copied as it is.
fn string(out: &mut Vec<u8>, value: &str) {
    if super::jsonrpc::plain_prefix(value.as_bytes()) == value.len() {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

/// `,"key":value`; `key` is [`member_key!`]'s.
fn member<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    key: &str,
    value: &T,
) -> Result<(), serde_json::Error> {
    out.extend_from_slice(key.as_bytes());
    serde_json::to_writer(out, value)
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("args", &self.args)
            .field("key", &self.key)
            .field("refusing", &self.shared.refusing())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating with mode 0600, appending) the log at `path`, creating its directory
    /// (mode 0700) if needed; an existing file others can read is made 0600, with a warning.
    pub fn open(path: &Path, options: AuditOptions) -> Result<AuditLog, AuditError> {
        let open_err = |source| AuditError::Open {
            path: path.display().to_string(),
            source,
        };
        let file = LogFile::open(path).map_err(open_err)?;
        let shared = Arc::new(Shared::new(path, options.fail, options.health));
        let thread_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("toolgate-audit".into())
            .spawn(move || writer::run(file, &thread_shared))
            .map_err(open_err)?;
        Ok(AuditLog {
            path: path.to_owned(),
            args: options.args,
            key: options.key,
            shared,
            writer: Mutex::new(Some(writer)),
            context: Mutex::new(Context::default()),
        })
    }

    /// `$XDG_STATE_HOME/toolgate/audit.jsonl` (usually `~/.local/state/toolgate/audit.jsonl`).
    pub fn default_path() -> Result<PathBuf, AuditError> {
        use etcetera::BaseStrategy;
        let base =
            etcetera::choose_base_strategy().map_err(|e| AuditError::NoStateDir(e.to_string()))?;
        let dir = base
            .state_dir()
            .unwrap_or_else(|| base.data_dir())
            .join("toolgate");
        Ok(dir.join("audit.jsonl"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn key(&self) -> &AuditKey {
        &self.key
    }

    /// Queues one record. Never blocks on the disk.
    pub fn record(&self, record: &AuditRecord<'_>) {
        if self.shared.closed.load(Ordering::Acquire) {
            return;
        }
        let mut context = crate::sync::lock(&self.context);
        let mut queue = self.shared.lock_queue();
        if queue.buffer.len() >= MAX_QUEUED {
            queue.dropped += 1;
            drop(queue);
            self.shared.failed(format!(
                "records are not being written ({} MiB wait in memory; the disk does not answer)",
                MAX_QUEUED >> 20
            ));
            return;
        }
        let before = queue.buffer.len();
        match write_record(&mut queue.buffer, record, &mut context) {
            Ok(()) => queue.buffer.push(b'\n'),
            Err(e) => {
                queue.buffer.truncate(before);
                tracing::error!("audit record not serialisable: {e}");
                return;
            }
        }
        // The record's own time is the clock: no second clock read on the call path.
        let stalled = Shared::stalled(&queue, record.ts);
        queue.note_made(record.ts);
        let wake = queue.note_record();
        drop(queue);
        if wake {
            self.shared.wake_writer();
        }
        if stalled && !self.shared.refusing() {
            self.shared.failed(format!(
                "no record has been written for over {} s (the disk does not answer)",
                writer::STALL_AFTER.num_seconds()
            ));
        }
    }

    /// Whether tool calls must be denied now: the log cannot be written and `--audit-fail`
    /// is `closed`. One atomic load.
    pub fn refuses_calls(&self) -> bool {
        self.shared.refusing()
    }

    /// Why calls are refused, for the refusal (what an agent and an operator read).
    pub fn refusal_reason(&self) -> String {
        let problem = self
            .shared
            .problem()
            .unwrap_or_else(|| "it failed".to_owned());
        format!("the audit log cannot be written ({problem}); calls are denied until it can be")
    }

    /// Reopens the file at the log's path at the writer's next beat (`SIGHUP`).
    pub fn reopen(&self) {
        self.shared.request_reopen();
    }

    /// Writes everything queued and stops the writer. Later records are dropped.
    pub fn close(&self) {
        self.shared.close();
        let writer = crate::sync::lock(&self.writer).take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }

    /// The argument fields of a decision record for `args`, as this log's mode wants them.
    pub fn describe_args<'v>(&self, args: &'v Value) -> ArgsDigest<'v> {
        ArgsDigest {
            keys: ArgKeys::of(args),
            hmac: self.key.args_hmac_hex(args),
            values: (self.args == AuditArgs::Full).then(|| crate::redact::redact(args)),
        }
    }
}

impl AuditLog {
    /// [`AuditLog::describe_args`] from the arguments' text: keys and HMAC without a tree
    /// (one is built for `--audit-args full` only).
    pub(crate) fn describe_raw_args<'v>(&self, args: &'v RawArgs) -> ArgsDigest<'v> {
        ArgsDigest {
            keys: ArgKeys::Raw(args),
            hmac: self.key.raw_args_hmac_hex(args),
            values: (self.args == AuditArgs::Full)
                .then(|| crate::policy::ArgsTree::tree(args).map(crate::redact::redact))
                .flatten(),
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// What a decision record says about the arguments.
#[derive(Debug)]
pub struct ArgsDigest<'v> {
    pub keys: ArgKeys<'v>,
    /// See [`AuditRecord::args_hmac`].
    pub hmac: Hex64,
    pub values: Option<Value>,
}

/// SHA-256 (hex) of the canonical JSON of `args`: object keys sorted, no whitespace.
///
/// Unkeyed, so not for the audit log (see [`AuditKey::args_hmac`]): the gateway uses it to
/// recognise the retry of a call in memory, where no one can read it.
///
/// The canonical text is streamed into the hash rather than built first: this runs once per
/// decided call, and the intermediate string and its per-key allocations were a measurable
/// share of the gateway's per-call work.
#[cfg(test)]
pub(crate) fn args_sha256(args: &Value) -> String {
    let mut hasher = Sha256::new();
    canonical(args, &mut hasher);
    hex::encode(hasher.finalize())
}

/// [`args_sha256`] from the arguments' text: the same hex for the same arguments.
pub(crate) fn raw_args_sha256(args: &RawArgs) -> String {
    hex::encode(raw_canonical_hash(&Sha256::new(), args).finalize())
}

/// `fresh` (a hash or a keyed MAC) with the canonical JSON of `args` streamed into it, read
/// from their text: the bytes [`canonical`] streams for their tree. A text the walk cannot
/// follow (the call's arrival refused any such text: not reached) is hashed from its tree
/// instead, from a fresh start; with no tree either, nothing.
pub(crate) fn raw_canonical_hash<H: sha2::digest::Update + Clone>(fresh: &H, args: &RawArgs) -> H {
    let mut hash = fresh.clone();
    if args.canonical(&mut HashOut(&mut hash)).is_ok() {
        return hash;
    }
    let mut hash = fresh.clone();
    if let Some(tree) = crate::policy::ArgsTree::tree(args) {
        canonical(tree, &mut hash);
    }
    hash
}

/// Hands the walks of [`RawArgs`] to a hash or MAC.
struct HashOut<'h, H>(&'h mut H);

impl<H: sha2::digest::Update> Out for HashOut<'_, H> {
    fn put(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Feeds JSON text straight into a hash or MAC.
struct HashWriter<'h, H>(&'h mut H);

impl<H: sha2::digest::Update> std::io::Write for HashWriter<'_, H> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams the canonical JSON of `value` (object keys sorted, no whitespace) into `out`.
fn canonical<H: sha2::digest::Update>(value: &Value, out: &mut H) {
    match value {
        Value::Object(map) => {
            out.update(b"{");
            if map.keys().is_sorted() {
                // Most arguments (one member, or written in order): no sorted copy to make.
                members(map.iter(), out);
            } else {
                // Sorted with their values: no lookup (a hash of the key) per member.
                let mut sorted: Vec<(&String, &Value)> = map.iter().collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                members(sorted.into_iter(), out);
            }
            out.update(b"}");
        }
        Value::Array(items) => {
            out.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.update(b",");
                }
                canonical(item, out);
            }
            out.update(b"]");
        }
        scalar => json_text(scalar, out),
    }
}

/// An object's members, in the order given, for [`canonical`].
fn members<'v, H: sha2::digest::Update>(
    members: impl Iterator<Item = (&'v String, &'v Value)>,
    out: &mut H,
) {
    for (i, (key, value)) in members.enumerate() {
        if i > 0 {
            out.update(b",");
        }
        // The same escaping as `Value::String(key).to_string()`.
        json_text(key.as_str(), out);
        out.update(b":");
        canonical(value, out);
    }
}

/// Compact JSON of a string or scalar, as `Value`'s `Display` writes it.
fn json_text<T: Serialize + ?Sized, H: sha2::digest::Update>(value: &T, out: &mut H) {
    // Writing into a hash cannot fail, and strings and scalars always serialise.
    let _ = serde_json::to_writer(HashWriter(out), value);
}

/// Each byte's two lowercase hex digits, made at compile time.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// The 64 lowercase hex digits of a SHA-256 or HMAC-SHA-256, on the stack: the call's
/// path writes them into the audit record, never into a `String` of their own.
#[derive(Debug, Clone, Copy)]
pub struct Hex64([u8; 64]);

impl Hex64 {
    /// The hex of the first 32 bytes of `bytes` (all of a SHA-256).
    fn of(bytes: &[u8]) -> Hex64 {
        let mut text = [b'0'; 64];
        if let Some(bytes) = bytes.get(..32) {
            // Both digits of a byte in one look-up (about 4 instructions a byte; the `hex`
            // crate's encoder took 8). `hex_digits_are_the_hex_crates` holds them equal.
            for (pair, &byte) in text.chunks_exact_mut(2).zip(bytes) {
                pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
            }
        }
        Hex64(text)
    }

    pub fn as_str(&self) -> &str {
        // Only hex digits were written: never the fallback.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Serialize for Hex64 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Writes `ts` exactly as chrono's own `Serialize` does (RFC 3339, `Z`, the fraction in 0, 3,
/// 6 or 9 digits, whichever is shortest and exact) without going through `fmt`, which
/// was a third of an audit record's cost. Anything chrono would write differently (years
/// outside 0..=9999, leap seconds) goes through chrono.
fn serialize_ts<S: serde::Serializer>(
    ts: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match rfc3339(ts) {
        Some((text, len)) => {
            // Only ASCII digits and punctuation were written.
            let text = std::str::from_utf8(&text[..len]).unwrap_or_default();
            serializer.serialize_str(text)
        }
        None => ts.serialize(serializer),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff[fff[fff]]]Z` in a fixed buffer, with its length.
fn rfc3339(ts: &DateTime<Utc>) -> Option<([u8; 30], usize)> {
    use chrono::{Datelike, Timelike};
    let year = u32::try_from(ts.year()).ok().filter(|y| *y <= 9999)?;
    let nanos = ts.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let mut text = Digits::default();
    text.number(year, 4);
    text.byte(b'-');
    text.number(ts.month(), 2);
    text.byte(b'-');
    text.number(ts.day(), 2);
    text.byte(b'T');
    text.number(ts.hour(), 2);
    text.byte(b':');
    text.number(ts.minute(), 2);
    text.byte(b':');
    text.number(ts.second(), 2);
    fraction(&mut text, nanos);
    text.byte(b'Z');
    Some((text.out, text.len))
}

/// The fraction of a second as chrono writes it: none, or 3, 6 or 9 digits, whichever is
/// shortest and exact (`nanos` below a second).
fn fraction(text: &mut Digits, nanos: u32) {
    if nanos != 0 {
        text.byte(b'.');
        if nanos.is_multiple_of(1_000_000) {
            text.number(nanos / 1_000_000, 3);
        } else if nanos.is_multiple_of(1_000) {
            text.number(nanos / 1_000, 6);
        } else {
            text.number(nanos, 9);
        }
    }
}

/// A small fixed buffer of ASCII for [`rfc3339`] (at most 30 bytes are written).
#[derive(Default)]
struct Digits {
    out: [u8; 30],
    len: usize,
}

impl Digits {
    fn byte(&mut self, b: u8) {
        self.out[self.len] = b;
        self.len += 1;
    }

    /// `value` zero-padded to `width` digits (callers keep it within `width`).
    fn number(&mut self, mut value: u32, width: usize) {
        for i in (0..width).rev() {
            self.out[self.len + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.len += width;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    proptest::proptest! {
        /// The table's digits are the `hex` crate's, for every byte in every place.
        #[test]
        fn hex_digits_are_the_hex_crates(bytes in proptest::array::uniform32(proptest::num::u8::ANY)) {
            let hex = Hex64::of(&bytes);
            proptest::prop_assert_eq!(hex.as_str(), hex::encode(bytes));
        }
    }

    #[test]
    fn hex_digits_of_every_byte() {
        for byte in 0..=255u8 {
            let mut bytes = [0u8; 32];
            bytes[31] = byte;
            bytes[0] = !byte;
            let hex = Hex64::of(&bytes);
            assert_eq!(hex.as_str(), hex::encode(bytes), "byte {byte:#04x}");
        }
    }

    #[test]
    fn argument_hash_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(args_sha256(&a), args_sha256(&b));
        assert_ne!(args_sha256(&a), args_sha256(&json!({"b": 2})));
    }

    /// The canonical text built the plain way, as the hash was first defined.
    fn canonical_text(value: &Value) -> String {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let parts: Vec<String> = keys
                    .into_iter()
                    .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_text(&map[k])))
                    .collect();
                format!("{{{}}}", parts.join(","))
            }
            Value::Array(items) => {
                let parts: Vec<String> = items.iter().map(canonical_text).collect();
                format!("[{}]", parts.join(","))
            }
            scalar => scalar.to_string(),
        }
    }

    #[test]
    fn streamed_hash_equals_the_hash_of_the_canonical_text() {
        let values = [
            json!({}),
            json!(null),
            json!({"b": [1, 2.5, -3e40, true, null], "a": "q\"uote\\ \n \u{0001} é 🦀", "": {}}),
            json!({"z": {"y": {"x": [{"k2": 1, "k1": "v"}]}}, "Z": 18446744073709551615u64}),
            json!(["x", 1, {"\t": "tab key"}]),
            // Written in order already (hashed without a sorted copy), at every depth.
            json!({"a": 1, "b": {"c": [2, {"d": "e", "f": null}], "g": "h"}}),
        ];
        for value in values {
            let text = canonical_text(&value);
            assert_eq!(
                args_sha256(&value),
                hex::encode(Sha256::digest(text.as_bytes())),
                "{text}"
            );
        }
    }

    #[test]
    fn timestamps_are_written_exactly_as_chrono_writes_them() {
        use chrono::TimeZone;
        let base = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let nanos = [
            0,
            1,
            999,
            1_000,
            120_000,
            7_000_000,
            123_456_789,
            999_999_999,
        ];
        let seconds = [
            0i64,
            59,
            86_399,
            40_000_000,
            -1_700_000_000,
            250_000_000_000,
            300_000_000_000,
        ];
        // The record writer's own path keeps the minute's text: asked twice for each time,
        // and across minutes, it writes what serde writes.
        let mut context = Context::default();
        for s in seconds {
            for n in nanos {
                let ts = base + chrono::Duration::seconds(s) + chrono::Duration::nanoseconds(n);
                let mut ours = Vec::new();
                serialize_ts(&ts, &mut serde_json::Serializer::new(&mut ours)).unwrap();
                let theirs = serde_json::to_string(&ts).unwrap();
                assert_eq!(String::from_utf8(ours).unwrap(), theirs);
                for later in [0, 1, 59, 60] {
                    let ts = ts + chrono::Duration::seconds(later);
                    for _ in 0..2 {
                        let mut written = Vec::new();
                        context.ts(&ts, &mut written).unwrap();
                        assert_eq!(
                            String::from_utf8(written).unwrap(),
                            serde_json::to_string(&ts).unwrap()
                        );
                    }
                }
            }
        }
        let now = Utc::now();
        let mut ours = Vec::new();
        serialize_ts(&now, &mut serde_json::Serializer::new(&mut ours)).unwrap();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            serde_json::to_string(&now).unwrap()
        );
    }

    #[test]
    fn audit_lines_match_serde() {
        let keys = vec!["a", "we\"ird", "del\u{7f}", "", "tab\there"];
        let shadow = crate::wire::ShadowDecision {
            decision: Verdict::Deny,
            rule: "/tools/x/deny_if/0".to_owned(),
            reason: "deny_if holds: \"q\"\u{7}".to_owned(),
            source: crate::wire::ShadowSource::Rule,
        };
        let full = AuditRecord {
            ts: Utc::now(),
            kind: "decision",
            call_id: "g-1",
            grant: "gr\"ant",
            session: "s\n1",
            server: "srv é",
            tool: "to\\ol",
            decision: Some(Verdict::RateLimited),
            rule: Some("/tools/x"),
            reason: Some("limit \u{1} reached"),
            arg_keys: Some(ArgKeys::Listed(&keys)),
            args_hmac: Some(&Hex64([b'a'; 64])),
            args: Some(json!({"a": [1, null, {"b": "c"}]})),
            latency_us: Some(123),
            error: Some(true),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            span_id: Some("00f067aa0ba902b7"),
            shadow: Some(&shadow),
        };
        let bare = AuditRecord {
            kind: "outcome",
            decision: None,
            rule: None,
            reason: None,
            arg_keys: None,
            args_hmac: None,
            args: None,
            latency_us: None,
            error: None,
            trace_id: None,
            span_id: None,
            shadow: None,
            ..full.clone()
        };
        let other_session = AuditRecord {
            session: "s2",
            ..full.clone()
        };
        // Every verdict, both answers and the ends of the latency's range, written directly.
        let written_directly: Vec<AuditRecord<'_>> = [
            (Verdict::Allow, 0, false),
            (Verdict::Deny, 1, true),
            (Verdict::RateLimited, 10_000, false),
            (Verdict::Hold, u64::MAX, false),
        ]
        .into_iter()
        .map(|(verdict, latency, error)| AuditRecord {
            decision: Some(verdict),
            latency_us: Some(latency),
            error: Some(error),
            ..full.clone()
        })
        .collect();
        let mut context = Context::default();
        for record in [&full, &bare, &full, &other_session, &bare]
            .into_iter()
            .chain(&written_directly)
        {
            let mut ours = Vec::new();
            write_record(&mut ours, record, &mut context).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(record).unwrap()
            );
        }
    }

    fn options(args: AuditArgs) -> AuditOptions {
        AuditOptions {
            args,
            fail: AuditFail::Closed,
            key: AuditKey::fixed([9; key::KEY_LEN]),
            health: None,
        }
    }

    /// An options' health sink that keeps every status it is told.
    fn watched(args: AuditArgs) -> (AuditOptions, Arc<Mutex<Vec<crate::wire::AuditStatus>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let options = AuditOptions {
            health: Some(Arc::new(move |s: &crate::wire::AuditStatus| {
                sink.lock().unwrap().push(s.clone());
            })),
            ..options(args)
        };
        (options, seen)
    }

    fn decision<'a>(call_id: &'a str, digest: &'a ArgsDigest<'a>) -> AuditRecord<'a> {
        AuditRecord {
            ts: Utc::now(),
            kind: "decision",
            call_id,
            grant: "default",
            session: "s",
            server: "srv",
            tool: "create_api_key",
            decision: Some(Verdict::Allow),
            rule: Some("/tools/create_api_key"),
            reason: None,
            arg_keys: Some(digest.keys),
            args_hmac: Some(&digest.hmac),
            args: digest.values.clone(),
            latency_us: None,
            error: None,
            trace_id: None,
            span_id: None,
            shadow: None,
        }
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Polls `check` until it holds; fails saying `what` was waited for.
    fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !check() {
            assert!(std::time::Instant::now() < deadline, "waited for {what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn log_file_is_private_and_holds_one_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let log = AuditLog::open(&path, options(AuditArgs::Full)).unwrap();
        let args = json!({"keyName": "staging", "apiKey": "sk-secret"});
        let digest = log.describe_args(&args);
        for kind in ["decision", "outcome"] {
            log.record(&AuditRecord {
                kind,
                ..decision("g-1", &digest)
            });
        }
        log.close();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("sk-secret"));
        let lines = lines(&path);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["args"]["apiKey"], crate::redact::REDACTED);
        assert_eq!(lines[0]["arg_keys"], json!(["keyName", "apiKey"]));
        assert_eq!(
            lines[0]["args_hmac"],
            AuditKey::fixed([9; key::KEY_LEN]).args_hmac(&args)
        );
        assert!(lines[0].get("args_sha256").is_none());
    }

    #[test]
    fn an_existing_log_others_can_read_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"kind\":\"earlier\"}\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = AuditLog::open(&path, options(AuditArgs::Keys)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        log.close();
        assert_eq!(lines(&path), vec![json!({"kind": "earlier"})]);
    }

    #[test]
    fn after_a_rename_the_next_record_goes_to_a_new_file_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotated = dir.path().join("audit.jsonl.1");
        let log = AuditLog::open(&path, options(AuditArgs::Keys)).unwrap();
        let args = json!({});
        let digest = log.describe_args(&args);
        log.record(&decision("before", &digest));
        wait_until("the first record on disk", || lines(&path).len() == 1);
        std::fs::rename(&path, &rotated).unwrap();
        log.record(&decision("after", &digest));
        log.close();
        assert_eq!(lines(&rotated).len(), 1);
        assert_eq!(lines(&rotated)[0]["call_id"], "before");
        let fresh = lines(&path);
        assert_eq!(fresh.len(), 1, "{fresh:?}");
        assert_eq!(fresh[0]["call_id"], "after");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn reopen_makes_a_new_file_at_once_and_tightens_a_loosened_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, options(AuditArgs::Keys)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        log.reopen();
        wait_until("the mode made 0600 again", || {
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777 == 0o600
        });
        std::fs::rename(&path, dir.path().join("old")).unwrap();
        log.reopen();
        // No record was written: the reopen alone makes the file.
        wait_until("a new file at the path", || path.exists());
        log.close();
    }

    #[test]
    fn a_log_that_cannot_be_written_refuses_calls_until_it_can_keeping_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let path = logs.join("audit.jsonl");
        let (options, seen) = watched(AuditArgs::Keys);
        let log = AuditLog::open(&path, options).unwrap();
        let args = json!({"n": 1});
        let digest = log.describe_args(&args);
        log.record(&decision("r1", &digest));
        wait_until("the first record on disk", || lines(&path).len() == 1);
        assert!(!log.refuses_calls());

        // The log's directory replaced by a file: the path can be neither opened nor made.
        std::fs::rename(&logs, dir.path().join("logs.old")).unwrap();
        std::fs::write(&logs, "not a directory").unwrap();
        log.record(&decision("r2", &digest));
        wait_until("calls refused", || log.refuses_calls());
        let reason = log.refusal_reason();
        assert!(
            reason.contains("the audit log cannot be written"),
            "{reason}"
        );
        assert!(reason.contains("cannot open"), "{reason}");
        log.record(&decision("r3", &digest));

        std::fs::remove_file(&logs).unwrap();
        wait_until("calls admitted again", || !log.refuses_calls());
        log.close();
        let ids: Vec<Value> = lines(&path)
            .into_iter()
            .map(|l| l["call_id"].clone())
            .collect();
        assert_eq!(ids, vec![json!("r2"), json!("r3")]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(!seen[0].ok);
        assert!(
            seen[0].detail.as_deref().unwrap_or("").contains("denied"),
            "{seen:?}"
        );
        assert!(seen[1].ok);
    }

    #[test]
    fn with_audit_fail_open_a_failing_log_is_reported_but_calls_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let path = logs.join("audit.jsonl");
        let (options, seen) = watched(AuditArgs::Keys);
        let log = AuditLog::open(
            &path,
            AuditOptions {
                fail: AuditFail::Open,
                ..options
            },
        )
        .unwrap();
        let args = json!({});
        let digest = log.describe_args(&args);
        std::fs::rename(&logs, dir.path().join("logs.old")).unwrap();
        std::fs::write(&logs, "not a directory").unwrap();
        log.record(&decision("r1", &digest));
        wait_until("the outage reported", || !seen.lock().unwrap().is_empty());
        assert!(!log.refuses_calls());
        log.close();
    }

    #[test]
    fn a_write_error_is_seen_at_once() {
        // /dev/full answers every write with ENOSPC.
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        let log = AuditLog::open(full, options(AuditArgs::Keys)).unwrap();
        let args = json!({});
        let digest = log.describe_args(&args);
        log.record(&decision("r1", &digest));
        wait_until("calls refused", || log.refuses_calls());
        assert!(
            log.refusal_reason().contains("No space left"),
            "{}",
            log.refusal_reason()
        );
        log.close();
    }
}
