//! The audit log's writer thread, and what the gateway does when the log cannot be written.
//!
//! Records are queued in memory on the call path and handed to the kernel by one thread every
//! [`FLUSH_EVERY`], on a fixed beat (a slow write shortens the next wait rather than adding
//! to it; with nothing to write it sleeps until a record comes, and that record starts the
//! beat again). The thread also keeps the log where the operator expects it:
//!
//! - **Failure.** A write or an open that fails (disk full, permissions, the directory gone)
//!   is seen at once: from then on [`Shared::refusing`] is set (with `--audit-fail closed`,
//!   the default), the one atomic flag every call checks, and the operators hear of it once
//!   (a log line and an [`AuditStatus`] event). Nothing is dropped: what could not be written
//!   stays queued here ([`MAX_PENDING`]) and is written, in order, as soon as a retry (every
//!   beat) succeeds; then calls are admitted again and a second event says so. A record cut
//!   short by a full disk is taken back (the file truncated to its last whole line), so the
//!   log holds whole lines only, even if the gateway stops before the disk has room again. A writer that
//!   hangs in a write instead of failing is noticed by the call path: a record waiting for
//!   longer than [`STALL_AFTER`], or a queue over [`MAX_QUEUED`], counts as a failure too.
//! - **Rotation.** Before each write the path is checked: when it no longer names the open
//!   file (renamed away by logrotate, or deleted), a new file is opened there. `SIGHUP`
//!   ([`super::AuditLog::reopen`]) reopens at the next beat whatever the check says.
//! - **Permissions.** Every file opened is made mode 0600 if group or others could read it,
//!   with a warning.
//!
//! Records that had to be dropped (more than [`MAX_PENDING`] waiting during a long outage, or
//! a queue over [`MAX_QUEUED`]) leave a `{"kind":"gap","lost":N}` line where they were
//! missing, so a reader of the log knows.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::AuditFail;
use crate::wire::AuditStatus;

/// How often queued records are written out.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(5);

/// Bytes of records queued on the call path, at most; beyond it records are dropped and the
/// log counts as failing (the writer is stuck). Room for several of the largest records
/// (`--audit-args full` of a 4 MiB HTTP body) in one beat.
pub(crate) const MAX_QUEUED: usize = 16 << 20;

/// Bytes the writer keeps while the log cannot be written, at most; beyond it newer records
/// are dropped (and counted in a `gap` line).
pub(crate) const MAX_PENDING: usize = 16 << 20;

/// Buffers that grew past this for a burst are given back to the allocator once written.
const KEEP_CAPACITY: usize = 1 << 20;

/// A record queued for longer than this means the writer is stuck in a write. Far above any
/// scheduling delay of the writer thread on a loaded machine, so only a disk that hangs
/// trips it.
pub(crate) const STALL_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// Told of every change of the log's health (a gateway publishes it as an event).
pub(crate) type HealthSink = Arc<dyn Fn(&AuditStatus) + Send + Sync>;

/// What the call path and the writer thread share.
pub(super) struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer early: at close, and for a reopen.
    wake: Condvar,
    pub(super) closed: AtomicBool,
    reopen: AtomicBool,
    /// Set while the log cannot be written and `--audit-fail closed`: calls are refused.
    refusing: AtomicBool,
    health: Mutex<Health>,
    fail: AuditFail,
    sink: Option<HealthSink>,
    /// The log's path, for messages.
    shown: String,
}

#[derive(Default)]
pub(super) struct Queue {
    pub(super) buffer: Vec<u8>,
    /// When the records in `buffer` count as stuck: the oldest one's time and
    /// [`STALL_AFTER`] (added once per buffer, so each record only compares).
    pub(super) stuck_after: Option<DateTime<Utc>>,
    /// Records dropped because `buffer` was full.
    pub(super) dropped: u64,
    /// The writer sleeps with no beat: it had nothing to write, and the next record must
    /// wake it (see [`Queue::note_record`]).
    parked: bool,
}

impl Queue {
    /// Called by the call path with the queue locked, after adding a record: whether the
    /// writer sleeps without a beat and must be woken (once) to start one.
    pub(super) fn note_record(&mut self) -> bool {
        std::mem::take(&mut self.parked)
    }

    /// Notes that a record made at `ts` is in `buffer`: the first one sets when they count
    /// as stuck.
    pub(super) fn note_made(&mut self, ts: DateTime<Utc>) {
        if self.stuck_after.is_none() {
            let at = ts.checked_add_signed(STALL_AFTER);
            self.stuck_after = Some(at.unwrap_or(DateTime::<Utc>::MAX_UTC));
        }
    }
}

#[derive(Default)]
struct Health {
    failing: bool,
    /// What is wrong, while `failing`.
    problem: String,
}

impl Shared {
    pub(super) fn new(path: &Path, fail: AuditFail, sink: Option<HealthSink>) -> Shared {
        Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
            reopen: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            health: Mutex::new(Health::default()),
            fail,
            sink,
            shown: path.display().to_string(),
        }
    }

    pub(super) fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        crate::sync::lock(&self.queue)
    }

    fn lock_health(&self) -> MutexGuard<'_, Health> {
        crate::sync::lock(&self.health)
    }

    /// Whether calls must be refused now. One atomic load: this runs on every call.
    pub(super) fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    /// What is wrong with the log, while it is failing.
    pub(super) fn problem(&self) -> Option<String> {
        let health = self.lock_health();
        health.failing.then(|| health.problem.clone())
    }

    /// Wakes the writer for a record added to a queue it had found empty.
    pub(super) fn wake_writer(&self) {
        self.wake.notify_one();
    }

    pub(super) fn request_reopen(&self) {
        // Set with the queue locked: the writer checks it with the queue locked before it
        // sleeps without a beat, so the wake cannot come between its check and its sleep.
        let queue = self.lock_queue();
        self.reopen.store(true, Ordering::Release);
        drop(queue);
        self.wake.notify_all();
    }

    pub(super) fn close(&self) {
        let queue = self.lock_queue();
        self.closed.store(true, Ordering::Release);
        drop(queue);
        self.wake.notify_all();
    }

    /// The log cannot be written: refuse calls (fail closed) and, once per outage, say so.
    pub(super) fn failed(&self, problem: String) {
        let mut health = self.lock_health();
        if self.fail == AuditFail::Closed {
            self.refusing.store(true, Ordering::Release);
        }
        let first = !health.failing;
        health.failing = true;
        health.problem.clone_from(&problem);
        drop(health);
        if first {
            let then = match self.fail {
                AuditFail::Closed => "tool calls are denied until it can be written again",
                AuditFail::Open => {
                    "tool calls go on, their records kept in memory until it can (--audit-fail open)"
                }
            };
            let detail = format!("{problem}; {then}");
            tracing::error!("audit log {}: {detail}", self.shown);
            self.report(false, Some(detail));
        }
    }

    /// A write succeeded: if the log was failing, it is not any more.
    fn succeeded(&self, recovered: Option<String>) {
        let mut health = self.lock_health();
        if !health.failing {
            return;
        }
        health.failing = false;
        health.problem.clear();
        self.refusing.store(false, Ordering::Release);
        drop(health);
        let detail = recovered.unwrap_or_else(|| "records are written again".to_owned());
        tracing::warn!("audit log {}: {detail}", self.shown);
        self.report(true, Some(detail));
    }

    fn report(&self, ok: bool, detail: Option<String>) {
        if let Some(sink) = &self.sink {
            sink(&AuditStatus {
                path: self.shown.clone(),
                ok,
                detail,
            });
        }
    }

    /// Whether the queued records have waited so long that the writer must be stuck.
    pub(super) fn stalled(queue: &Queue, now: DateTime<Utc>) -> bool {
        queue.stuck_after.is_some_and(|at| now > at)
    }
}

/// The open log file and the records not yet written to it.
pub(super) struct LogFile {
    path: PathBuf,
    file: Option<File>,
    /// Device and inode of `file`, to notice when the path names another file.
    id: (u64, u64),
    /// Records not yet (completely) written, oldest first; whole lines.
    pending: Vec<u8>,
    /// Bytes at the start of `pending` already written to `file` (a write cut short).
    written: usize,
    /// Records dropped and not yet marked by a `gap` line.
    lost: u64,
    /// The last write or open failed: retry at every beat, even with nothing new to write.
    failing: bool,
}

impl LogFile {
    /// Opens (creating with mode 0600, appending) the log at `path`, creating its directory
    /// (mode 0700) if needed, and tightening an existing file others could read.
    pub(super) fn open(path: &Path) -> std::io::Result<LogFile> {
        let (file, id) = open_private(path)?;
        Ok(LogFile {
            path: path.to_owned(),
            file: Some(file),
            id,
            pending: Vec::new(),
            written: 0,
            lost: 0,
            failing: false,
        })
    }

    /// Takes a batch of queued records (and how many were dropped on the way).
    fn take(&mut self, batch: &mut Vec<u8>, dropped: u64) {
        if !batch.is_empty() {
            // Only a log that is failing has records pending; a healthy one takes any batch.
            if !self.pending.is_empty() && self.pending.len() + batch.len() > MAX_PENDING {
                self.lost += count_lines(batch);
            } else if self.pending.is_empty() && self.lost == 0 {
                // The healthy case: the batch becomes what is pending without a copy, and
                // the queue gets the emptied buffer back (its capacity kept).
                std::mem::swap(&mut self.pending, batch);
            } else {
                if self.lost > 0 {
                    self.pending.extend_from_slice(&gap_line(self.lost));
                    self.lost = 0;
                }
                self.pending.extend_from_slice(batch);
            }
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch.shrink_to(KEEP_CAPACITY);
            }
        }
        self.lost += dropped;
    }

    /// Nothing waits to be written or retried: the writer may sleep until a record comes.
    fn idle(&self) -> bool {
        self.pending.is_empty() && self.lost == 0 && !self.failing
    }

    /// Writes what is pending, reopening first when asked to or when the path moved.
    fn flush(&mut self, shared: &Shared) {
        let asked = shared.reopen.swap(false, Ordering::AcqRel);
        if self.pending.is_empty() && self.lost == 0 && !asked && !self.failing {
            return;
        }
        if (asked || self.file.is_none() || self.moved())
            && let Err(e) = self.reopen()
        {
            self.failing = true;
            shared.failed(format!("cannot open {}: {e}", self.path.display()));
            return;
        }
        if self.lost > 0 {
            // The dropped records came after everything pending.
            self.pending.extend_from_slice(&gap_line(self.lost));
            self.lost = 0;
        }
        let backlog = self.pending.len() - self.written;
        match self.write_pending() {
            Ok(()) => {
                // Counted only when recovering from an outage (the note is for that alone): on
                // every healthy beat it would be a pass over every byte written.
                let note = (self.failing && backlog > 0).then(|| {
                    let lines = count_lines(&self.pending);
                    format!("records are written again ({lines} waiting records written)")
                });
                self.pending.clear();
                if self.pending.capacity() > KEEP_CAPACITY {
                    self.pending.shrink_to(KEEP_CAPACITY);
                }
                self.written = 0;
                self.failing = false;
                shared.succeeded(note);
            }
            Err(e) => {
                self.keep_whole_lines();
                self.failing = true;
                shared.failed(format!("cannot write {}: {e}", self.path.display()));
            }
        }
    }

    /// Writes `pending` from `written` on, remembering how far it got.
    fn write_pending(&mut self) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("the log is not open"));
        };
        while self.written < self.pending.len() {
            match file.write(&self.pending[self.written..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// After a failed write: takes back a record cut short (the file is truncated to the end
    /// of the last whole line), so the log holds only whole lines and that record is written
    /// again in full; forgets the records already written.
    fn keep_whole_lines(&mut self) {
        let done = &self.pending[..self.written];
        let whole = done.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let cut = (self.written - whole) as u64;
        // Only when the file still ends where this write ended: several gateways may append to
        // one log, and another's bytes are not ours to cut.
        if cut > 0
            && let Some(mut file) = self.file.as_ref()
            && let Ok(end) = std::io::Seek::stream_position(&mut file)
            && file.metadata().is_ok_and(|m| m.len() == end)
            && end >= cut
            && file.set_len(end - cut).is_ok()
        {
            self.written = whole;
        }
        // Whatever cannot be taken back stays counted in `written`: the line is finished later.
        let whole = self.pending[..self.written]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        self.pending.drain(..whole);
        self.written -= whole;
    }

    /// Whether the path no longer names the open file (renamed away, deleted, or out of
    /// reach): then records must go to a file opened at the path, or nowhere.
    fn moved(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(meta) => (meta.dev(), meta.ino()) != self.id,
            Err(_) => true,
        }
    }

    /// Opens the file at the path again (after rotation, `SIGHUP` or a failed open).
    fn reopen(&mut self) -> std::io::Result<()> {
        let (file, id) = open_private(&self.path)?;
        if self.written > 0 && id != self.id {
            // A record was cut short in the old file: end that line there, and write the
            // whole record again in the new file.
            if let Some(old) = self.file.as_mut() {
                let _ = old.write_all(b"\n");
            }
            self.written = 0;
        }
        self.file = Some(file);
        self.id = id;
        Ok(())
    }
}

/// Opens `path` for appending, creating it (0600) and its directory (0700); an existing file
/// that group or others can read is made 0600, with a warning.
fn open_private(path: &Path) -> std::io::Result<(File, (u64, u64))> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let meta = file.metadata()?;
    // Only regular files: a device such as /dev/null is not ours to change.
    if meta.is_file() && meta.mode() & 0o077 != 0 {
        let was = meta.mode() & 0o7777;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        tracing::warn!(
            "audit log {} was readable by group or others (mode {was:04o}); made it 0600",
            path.display()
        );
    }
    Ok((file, (meta.dev(), meta.ino())))
}

fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

/// The line that marks records missing from the log.
fn gap_line(lost: u64) -> Vec<u8> {
    let ts = serde_json::to_string(&Utc::now()).unwrap_or_else(|_| "null".to_owned());
    format!("{{\"ts\":{ts},\"kind\":\"gap\",\"lost\":{lost}}}\n").into_bytes()
}

/// The writer thread: every [`FLUSH_EVERY`] (or at once for a close or a reopen), takes the
/// queued records and writes them; at close, writes what is left and says what could not be.
///
/// With nothing queued and nothing waiting to be written (or retried), it sleeps without a
/// beat until a record comes, which starts one: an idle gateway's writer does not wake 200
/// times a second, and a record still waits at most one beat.
pub(super) fn run(mut log: LogFile, shared: &Shared) {
    let mut batch = Vec::new();
    let mut beat = Instant::now() + FLUSH_EVERY;
    loop {
        let (closed, dropped) = {
            let mut queue = shared.lock_queue();
            loop {
                if shared.closed.load(Ordering::Acquire) || shared.reopen.load(Ordering::Acquire) {
                    break;
                }
                if queue.buffer.is_empty() && queue.dropped == 0 && log.idle() {
                    queue.parked = true;
                    queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                    if !queue.buffer.is_empty() || queue.dropped > 0 {
                        beat = Instant::now() + FLUSH_EVERY;
                    }
                    continue;
                }
                let now = Instant::now();
                if now >= beat {
                    break;
                }
                queue = shared
                    .wake
                    .wait_timeout(queue, beat - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            queue.parked = false;
            std::mem::swap(&mut queue.buffer, &mut batch);
            queue.stuck_after = None;
            (
                shared.closed.load(Ordering::Acquire),
                std::mem::take(&mut queue.dropped),
            )
        };
        // A fixed beat: the time a write took comes off the next wait, unless it took longer
        // than a beat. Woken early (a reopen), the beat stays: no record waits longer.
        let now = Instant::now();
        if now >= beat {
            beat = (beat + FLUSH_EVERY).max(now);
        }
        log.take(&mut batch, dropped);
        log.flush(shared);
        if closed {
            // Records queued between the swap and `closed` being seen are written too.
            let (mut rest, dropped) = {
                let mut queue = shared.lock_queue();
                (
                    std::mem::take(&mut queue.buffer),
                    std::mem::take(&mut queue.dropped),
                )
            };
            log.take(&mut rest, dropped);
            log.flush(shared);
            let unwritten = count_lines(&log.pending[log.written.min(log.pending.len())..]);
            if unwritten > 0 || log.lost > 0 {
                tracing::error!(
                    "audit log {}: {} records could not be written and are lost",
                    shared.shown,
                    unwritten + log.lost
                );
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Voluntary context switches of this process's thread named `name` (Linux).
    fn sleeps_of_thread(name: &str) -> Option<u64> {
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == name {
                let status = std::fs::read_to_string(task.path().join("status")).ok()?;
                return status
                    .lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .and_then(|n| n.trim().parse().ok());
            }
        }
        None
    }

    #[test]
    fn an_idle_writer_sleeps_until_a_record_comes_and_then_writes_it_within_a_beat() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let shared = Arc::new(Shared::new(&path, AuditFail::Open, None));
        let log = LogFile::open(&path).unwrap();
        let thread_shared = Arc::clone(&shared);
        let name = "audit-idle-test";
        let writer = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(log, &thread_shared))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = loop {
            if let Some(n) = sleeps_of_thread(name) {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "the writer thread never showed in /proc"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        // Sixty beats' time: a writer on a fixed beat wakes about sixty times.
        std::thread::sleep(FLUSH_EVERY * 60);
        let idle = sleeps_of_thread(name).unwrap() - first;
        assert!(idle <= 3, "an idle writer woke {idle} times in 60 beats");

        {
            let mut queue = shared.lock_queue();
            queue.buffer.extend_from_slice(b"{\"n\":1}\n");
            if queue.note_record() {
                drop(queue);
                shared.wake_writer();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path).unwrap_or_default() != "{\"n\":1}\n" {
            assert!(Instant::now() < deadline, "the record was never written");
            std::thread::sleep(Duration::from_millis(2));
        }
        // Idle again, then closed: the close wakes it and it ends.
        std::thread::sleep(FLUSH_EVERY * 4);
        shared.close();
        writer.join().unwrap();
    }

    #[test]
    fn records_beyond_what_can_be_kept_leave_a_gap_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut file = LogFile::open(&path).unwrap();
        let shared = Shared::new(&path, AuditFail::Closed, None);
        file.take(&mut b"{\"n\":1}\n".to_vec(), 0);
        file.take(&mut b"{\"n\":2}\n".to_vec(), 3);
        file.take(&mut b"{\"n\":3}\n".to_vec(), 0);
        file.flush(&shared);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0]["n"], 1);
        assert_eq!(lines[1]["n"], 2);
        assert_eq!(lines[2]["kind"], "gap");
        assert_eq!(lines[2]["lost"], 3);
        assert_eq!(lines[3]["n"], 3);
    }

    #[test]
    fn a_healthy_log_takes_a_batch_larger_than_what_an_outage_may_keep() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut file = LogFile::open(&path).unwrap();
        let shared = Shared::new(&path, AuditFail::Closed, None);
        let mut line = vec![b'x'; MAX_PENDING + 1];
        line.push(b'\n');
        file.take(&mut line, 0);
        file.flush(&shared);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            MAX_PENDING as u64 + 2
        );
        assert!(!shared.refusing());
    }

    #[test]
    fn records_queued_for_longer_than_two_seconds_mean_the_writer_is_stuck() {
        let t0 = Utc::now();
        let queue = |oldest: Option<DateTime<Utc>>| {
            let mut queue = Queue::default();
            if let Some(ts) = oldest {
                queue.note_made(ts);
            }
            queue
        };
        assert!(!Shared::stalled(&queue(None), t0));
        assert!(!Shared::stalled(
            &queue(Some(t0)),
            t0 + chrono::TimeDelta::milliseconds(1900)
        ));
        assert!(Shared::stalled(
            &queue(Some(t0)),
            t0 + chrono::TimeDelta::milliseconds(2100)
        ));
    }

    #[test]
    fn records_dropped_after_the_last_batch_are_marked_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut file = LogFile::open(&path).unwrap();
        let shared = Shared::new(&path, AuditFail::Closed, None);
        file.take(&mut b"{\"n\":1}\n".to_vec(), 0);
        file.take(&mut Vec::new(), 2);
        file.flush(&shared);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["n"], 1);
        assert_eq!(lines[1]["kind"], "gap");
        assert_eq!(lines[1]["lost"], 2);
    }
}
