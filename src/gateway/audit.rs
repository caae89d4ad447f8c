//! The audit log: one JSON line per decision and one per outcome, in a file only its owner
//! can read (mode 0600).
//!
//! Argument values are not written by default: a record names the argument keys and carries
//! a SHA-256 of the canonical argument JSON, so a call can be matched later without the log
//! holding its data. `--audit-args full` adds the values with secret-looking keys redacted.
//!
//! Writing happens on a dedicated thread, so a slow disk never adds latency to a call: a
//! record is appended to an in-memory buffer (no system call, no thread wake-up on the call's
//! path) and the thread writes the buffer out every [`FLUSH_EVERY`], and at close.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::policy::Verdict;

/// How often queued records are written out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(5);

/// How much of the arguments the audit log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuditArgs {
    /// Argument keys and a SHA-256 of the arguments; no values.
    #[default]
    Keys,
    /// Keys, hash, and the values with secret-looking keys redacted.
    Full,
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
    pub arg_keys: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<bool>,
}

/// An open audit log. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    args: AuditArgs,
    queue: Arc<Queue>,
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
}

impl Context {
    /// `,"grant":..,"session":..,"server":..` for this record.
    fn json(&mut self, record: &AuditRecord<'_>) -> Result<&[u8], serde_json::Error> {
        if self.json.is_empty()
            || self.grant != record.grant
            || self.session != record.session
            || self.server != record.server
        {
            self.json.clear();
            for (key, value) in [
                ("grant", record.grant),
                ("session", record.session),
                ("server", record.server),
            ] {
                member(&mut self.json, key, value)?;
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
    serialize_ts(&record.ts, &mut serde_json::Serializer::new(&mut *out))?;
    member(out, "kind", record.kind)?;
    member(out, "call_id", record.call_id)?;
    out.extend_from_slice(context.json(record)?);
    member(out, "tool", record.tool)?;
    if let Some(decision) = &record.decision {
        member(out, "decision", decision)?;
    }
    if let Some(rule) = record.rule {
        member(out, "rule", rule)?;
    }
    if let Some(reason) = record.reason {
        member(out, "reason", reason)?;
    }
    if let Some(keys) = &record.arg_keys {
        member(out, "arg_keys", keys)?;
    }
    if let Some(sha) = &record.args_sha256 {
        member(out, "args_sha256", sha)?;
    }
    if let Some(args) = &record.args {
        member(out, "args", args)?;
    }
    if let Some(latency) = &record.latency_us {
        member(out, "latency_us", latency)?;
    }
    if let Some(error) = &record.error {
        member(out, "error", error)?;
    }
    out.push(b'}');
    Ok(())
}

/// `,"key":value` (keys here never need escaping).
fn member<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    key: &str,
    value: &T,
) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    serde_json::to_writer(out, value)
}

/// Records waiting for the writer thread.
#[derive(Debug, Default)]
struct Queue {
    buffer: Mutex<Vec<u8>>,
    closed: AtomicBool,
    /// Wakes the writer at close, so closing does not wait for the next tick.
    wake: Condvar,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl AuditLog {
    /// Opens (creating with mode 0600, appending) the log at `path`, creating its directory
    /// (mode 0700) if needed.
    pub fn open(path: &Path, args: AuditArgs) -> Result<AuditLog, AuditError> {
        let open_err = |source| AuditError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(open_err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        let queue = Arc::new(Queue::default());
        let shown = path.display().to_string();
        let thread_queue = queue.clone();
        let writer = std::thread::Builder::new()
            .name("toolgate-audit".into())
            .spawn(move || write_lines(BufWriter::new(file), &thread_queue, &shown))
            .map_err(open_err)?;
        Ok(AuditLog {
            path: path.to_owned(),
            args,
            queue,
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

    pub fn args_mode(&self) -> AuditArgs {
        self.args
    }

    /// Queues one record. Never blocks on the disk.
    pub fn record(&self, record: &AuditRecord<'_>) {
        if self.queue.closed.load(Ordering::Acquire) {
            return;
        }
        let mut context = self.context.lock().unwrap_or_else(|p| p.into_inner());
        let mut buffer = self.queue.lock();
        let before = buffer.len();
        match write_record(&mut buffer, record, &mut context) {
            Ok(()) => buffer.push(b'\n'),
            Err(e) => {
                buffer.truncate(before);
                tracing::error!("audit record not serialisable: {e}");
            }
        }
    }

    /// Writes everything queued and stops the writer. Later records are dropped.
    pub fn close(&self) {
        self.queue.closed.store(true, Ordering::Release);
        self.queue.wake.notify_all();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }

    /// The argument fields of a decision record for `args`, as this log's mode wants them.
    pub fn describe_args<'v>(&self, args: &'v Value) -> ArgsDigest<'v> {
        ArgsDigest {
            keys: match args {
                Value::Object(map) => map.keys().map(String::as_str).collect(),
                _ => Vec::new(),
            },
            sha256: args_sha256(args),
            values: (self.args == AuditArgs::Full).then(|| crate::redact::redact(args)),
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
    pub keys: Vec<&'v str>,
    pub sha256: String,
    pub values: Option<Value>,
}

fn write_lines(mut out: BufWriter<std::fs::File>, queue: &Queue, path: &str) {
    let mut failed = false;
    let mut batch = Vec::new();
    loop {
        let closed = {
            let buffer = queue.lock();
            let (mut buffer, _) = queue
                .wake
                .wait_timeout_while(buffer, FLUSH_EVERY, |_| {
                    !queue.closed.load(Ordering::Acquire)
                })
                .unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *buffer, &mut batch);
            queue.closed.load(Ordering::Acquire)
        };
        if !batch.is_empty() {
            let result = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            if let Err(e) = result {
                if !failed {
                    tracing::error!("cannot write audit log {path}: {e}");
                }
                failed = true;
            }
        }
        if closed {
            // Records queued between the swap and `closed` being seen are written too.
            let rest = std::mem::take(&mut *queue.lock());
            let _ = out.write_all(&rest).and_then(|()| out.flush());
            return;
        }
    }
}

/// SHA-256 (hex) of the canonical JSON of `args`: object keys sorted, no whitespace.
///
/// The canonical text is streamed into the hash rather than built first: this runs once per
/// decided call, and the intermediate string and its per-key allocations were a measurable
/// share of the gateway's per-call work.
pub fn args_sha256(args: &Value) -> String {
    let mut hasher = HashWriter(Sha256::new());
    canonical(args, &mut hasher);
    hex_lower(&hasher.0.finalize())
}

/// Feeds JSON text straight into the hash.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn canonical(value: &Value, out: &mut HashWriter) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.0.update(b"{");
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.0.update(b",");
                }
                // The same escaping as `Value::String(key).to_string()`.
                json_text(key.as_str(), out);
                out.0.update(b":");
                canonical(&map[key], out);
            }
            out.0.update(b"}");
        }
        Value::Array(items) => {
            out.0.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.0.update(b",");
                }
                canonical(item, out);
            }
            out.0.update(b"]");
        }
        scalar => json_text(scalar, out),
    }
}

/// Compact JSON of a string or scalar, as `Value`'s `Display` writes it.
fn json_text<T: Serialize + ?Sized>(value: &T, out: &mut HashWriter) {
    // Writing into a hash cannot fail, and strings and scalars always serialise.
    let _ = serde_json::to_writer(out, value);
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    text
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
    text.byte(b'Z');
    Some((text.out, text.len))
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
        for s in seconds {
            for n in nanos {
                let ts = base + chrono::Duration::seconds(s) + chrono::Duration::nanoseconds(n);
                let mut ours = Vec::new();
                serialize_ts(&ts, &mut serde_json::Serializer::new(&mut ours)).unwrap();
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    serde_json::to_string(&ts).unwrap()
                );
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
        let keys = vec!["a", "we\"ird"];
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
            arg_keys: Some(keys.clone()),
            args_sha256: Some("ab".repeat(32)),
            args: Some(json!({"a": [1, null, {"b": "c"}]})),
            latency_us: Some(123),
            error: Some(true),
        };
        let bare = AuditRecord {
            kind: "outcome",
            decision: None,
            rule: None,
            reason: None,
            arg_keys: None,
            args_sha256: None,
            args: None,
            latency_us: None,
            error: None,
            ..full.clone()
        };
        let other_session = AuditRecord {
            session: "s2",
            ..full.clone()
        };
        let mut context = Context::default();
        for record in [&full, &bare, &full, &other_session, &bare] {
            let mut ours = Vec::new();
            write_record(&mut ours, record, &mut context).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(record).unwrap()
            );
        }
    }

    #[test]
    fn log_file_is_private_and_holds_one_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let log = AuditLog::open(&path, AuditArgs::Full).unwrap();
        let args = json!({"keyName": "staging", "apiKey": "sk-secret"});
        let digest = log.describe_args(&args);
        for kind in ["decision", "outcome"] {
            log.record(&AuditRecord {
                ts: Utc::now(),
                kind,
                call_id: "g-1",
                grant: "default",
                session: "s",
                server: "srv",
                tool: "create_api_key",
                decision: Some(Verdict::Allow),
                rule: Some("/tools/create_api_key"),
                reason: None,
                arg_keys: Some(digest.keys.clone()),
                args_sha256: Some(digest.sha256.clone()),
                args: digest.values.clone(),
                latency_us: None,
                error: None,
            });
        }
        log.close();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("sk-secret"));
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["args"]["apiKey"], crate::redact::REDACTED);
        assert_eq!(lines[0]["arg_keys"], json!(["keyName", "apiKey"]));
    }
}
