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
        let mut buffer = self.queue.lock();
        let before = buffer.len();
        match serde_json::to_writer(&mut *buffer, record) {
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
pub fn args_sha256(args: &Value) -> String {
    let mut text = String::new();
    canonical(args, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
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
