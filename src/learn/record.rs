//! The gateway's recorder: each decided `tools/call` becomes an [`Observation`], stored off
//! the call's path.
//!
//! A call pushes its observation (arguments as they came, not yet redacted) onto a bounded
//! queue and goes on: the call never waits for the recorder, and never wakes it (a wake-up
//! is a system call). A thread of its own takes the queue every 50 ms (sooner when it is
//! half full), redacts the arguments ([`super::observed_args`]) and writes the observations
//! to the [`LearnStore`] in one batch. When the queue is full the observation is dropped and
//! counted, and the log says so (the first time, then every 1,000th): under overload
//! learning loses calls, the gateway never slows down for it.
//!
//! A held call is kept by the thread until its resolution arrives, so that its observation
//! says whether a person approved it; one still held when the gateway stops is written
//! unresolved (`approved: None`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::Observation;
use super::store::LearnStore;
use crate::gateway::WallClock as _;

/// Observations that may wait for the thread; beyond it they are dropped (and counted).
pub(crate) const QUEUE: usize = 8192;
/// Held calls whose resolution the thread waits for; beyond it a held call is written at
/// once, unresolved.
const MAX_WAITING_HOLDS: usize = 10_000;
/// How often the thread takes what was queued. A call never wakes it (a wake-up is a system
/// call, several microseconds on a busy machine): it wakes on this tick, or early when the
/// queue is half full.
const TICK: Duration = Duration::from_millis(50);

enum Message {
    Call {
        observation: Observation,
        /// The hub's call id of a held call, whose resolution will follow.
        held: Option<String>,
    },
    Resolved {
        call_id: String,
        approved: Option<bool>,
    },
    /// Write everything queued before this, then answer.
    Flush(SyncSender<()>),
    /// Write everything, held calls unresolved, and end.
    Stop,
}

/// The queue between the calls and the thread.
struct Queue {
    messages: Mutex<Vec<Message>>,
    /// Wakes the thread before its tick (half full, flush, stop).
    wake: Condvar,
    capacity: usize,
}

impl Queue {
    /// Queues `message` unless the queue holds `capacity` messages already; control messages
    /// (flush, stop) always fit.
    fn push(&self, message: Message, control: bool) -> bool {
        let mut messages = crate::sync::lock(&self.messages);
        if !control && messages.len() >= self.capacity {
            return false;
        }
        messages.push(message);
        let wake = control || messages.len() == self.capacity / 2;
        drop(messages);
        if wake {
            self.wake.notify_one();
        }
        true
    }
}

/// One per gateway process: hands observations to the recording thread.
pub(crate) struct Recorder {
    queue: Arc<Queue>,
    /// `--learn`: record whatever the policy says; otherwise only while the policy in force
    /// has `"learn": true`.
    always: bool,
    dropped: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    store: String,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("always", &self.always)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Starts the recording thread writing to `store`; `always` is `--learn`.
    pub(crate) fn start(store: Arc<dyn LearnStore>, always: bool) -> std::io::Result<Recorder> {
        Recorder::with_queue(store, always, QUEUE)
    }

    /// [`Recorder::start`] with a queue of `queue` observations (tests of overload).
    pub(crate) fn with_queue(
        store: Arc<dyn LearnStore>,
        always: bool,
        queue: usize,
    ) -> std::io::Result<Recorder> {
        let queue = Arc::new(Queue {
            messages: Mutex::new(Vec::with_capacity(queue)),
            wake: Condvar::new(),
            capacity: queue.max(1),
        });
        let shown = store.describe();
        let thread = {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("toolgate-learn".into())
                .spawn(move || Writer::new(store).run(&queue))?
        };
        Ok(Recorder {
            queue,
            always,
            dropped: AtomicU64::new(0),
            thread: Mutex::new(Some(thread)),
            store: shown,
        })
    }

    /// Whether every call is recorded (`--learn`) whatever the policy says.
    pub(crate) fn always(&self) -> bool {
        self.always
    }

    /// Where observations go, for the start-up log.
    pub(crate) fn store(&self) -> &str {
        &self.store
    }

    /// Queues one decided call (`held`: its call id, when it is held). Never blocks beyond
    /// the queue's lock, held only to push.
    pub(crate) fn record(&self, observation: Observation, held: Option<String>) {
        if !self.queue.push(Message::Call { observation, held }, false) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped == 1 || dropped.is_multiple_of(1000) {
                tracing::warn!(
                    "learn: {dropped} observation(s) dropped so far: the recorder is behind \
                     (the calls themselves are not affected)"
                );
            }
        }
    }

    /// A held call's resolution: `approved` is whether a person approved it (`None` when
    /// nobody decided: the call was cancelled or the gateway stopped).
    pub(crate) fn resolved(&self, call_id: &str, approved: Option<bool>) {
        // A resolution that does not fit leaves the call unresolved, which is what the
        // review then reads (never "approved").
        self.queue.push(
            Message::Resolved {
                call_id: call_id.to_owned(),
                approved,
            },
            false,
        );
    }

    /// How many observations were dropped because the recorder was behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything queued so far is written (at most `within`).
    pub(crate) fn flush(&self, within: Duration) -> bool {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        self.queue.push(Message::Flush(ack), true);
        done.recv_timeout(within).is_ok()
    }

    /// Writes everything (held calls unresolved) and ends the thread.
    pub(crate) fn close(&self) {
        let Some(thread) = crate::sync::lock(&self.thread).take() else {
            return;
        };
        self.queue.push(Message::Stop, true);
        let _ = thread.join();
        let dropped = self.dropped();
        if dropped > 0 {
            tracing::warn!("learn: {dropped} observation(s) were dropped while recording");
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.close();
    }
}

/// The recording thread's state.
struct Writer {
    store: Arc<dyn LearnStore>,
    batch: Vec<Observation>,
    holds: HashMap<String, Observation>,
    failures: u64,
}

impl Writer {
    fn new(store: Arc<dyn LearnStore>) -> Writer {
        Writer {
            store,
            batch: Vec::new(),
            holds: HashMap::new(),
            failures: 0,
        }
    }

    /// Takes what was queued on each tick (or wake-up) and writes it, until `Stop`.
    fn run(mut self, queue: &Queue) {
        let mut taken = Vec::new();
        loop {
            {
                let mut messages = crate::sync::lock(&queue.messages);
                if messages.is_empty() {
                    messages = match queue.wake.wait_timeout(messages, TICK) {
                        Ok((messages, _)) => messages,
                        Err(poisoned) => poisoned.into_inner().0,
                    };
                }
                std::mem::swap(&mut *messages, &mut taken);
            }
            let mut acks = Vec::new();
            let mut stop = false;
            for message in taken.drain(..) {
                stop |= self.take(message, &mut acks);
            }
            self.write();
            for ack in acks {
                let _ = ack.send(());
            }
            if stop {
                break;
            }
        }
        let unresolved: Vec<Observation> = self.holds.drain().map(|(_, o)| o).collect();
        self.batch.extend(unresolved);
        self.batch.sort_by_key(|o| o.at);
        self.write();
    }

    /// Takes one message; answers whether it asks the thread to stop.
    fn take(&mut self, message: Message, acks: &mut Vec<SyncSender<()>>) -> bool {
        match message {
            Message::Call {
                mut observation,
                held,
            } => {
                observation.args = super::observed_args(&observation.args);
                match held {
                    Some(call_id) if self.holds.len() < MAX_WAITING_HOLDS => {
                        self.holds.insert(call_id, observation);
                    }
                    _ => self.batch.push(observation),
                }
            }
            Message::Resolved { call_id, approved } => {
                if let Some(mut observation) = self.holds.remove(&call_id) {
                    observation.approved = approved;
                    self.batch.push(observation);
                }
            }
            Message::Flush(ack) => acks.push(ack),
            Message::Stop => return true,
        }
        false
    }

    fn write(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let now_ms = crate::gateway::SystemWallClock.now_ms();
        if let Err(e) = self.store.append(&self.batch, now_ms) {
            self.failures += 1;
            if self.failures == 1 || self.failures.is_multiple_of(100) {
                tracing::warn!(
                    "learn: {} observation(s) not recorded: {e}",
                    self.batch.len()
                );
            }
        }
        self.batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::store::SqliteLearn;
    use chrono::Utc;
    use serde_json::json;

    fn observation(tool: &str, decision: &str) -> Observation {
        Observation {
            at: Utc::now(),
            server: "fs".into(),
            tool: tool.into(),
            grant: Some("ci".into()),
            decision: decision.into(),
            approved: None,
            args: json!({"path": "/srv/a", "token": "hunter2hunter2"}),
        }
    }

    #[test]
    fn recorded_calls_reach_the_store_redacted_and_held_ones_with_their_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteLearn::lazy(&dir.path().join("l.sqlite3")));
        let recorder = Recorder::start(store.clone(), true).unwrap();
        recorder.record(observation("read", "allow"), None);
        recorder.record(observation("delete", "hold"), Some("c-2".into()));
        recorder.record(observation("drop", "hold"), Some("c-3".into()));
        recorder.resolved("c-2", Some(true));
        assert!(recorder.flush(Duration::from_secs(10)));
        let now = crate::gateway::SystemWallClock.now_ms();
        let seen = store
            .read(None, chrono::DateTime::<Utc>::MIN_UTC, now)
            .unwrap();
        let tools: Vec<(&str, Option<bool>)> =
            seen.iter().map(|o| (o.tool.as_str(), o.approved)).collect();
        assert_eq!(tools, [("read", None), ("delete", Some(true))]);
        assert_eq!(seen[0].args["token"], json!({"$toolgate_type": "string"}));
        // The hold never resolved is written, unresolved, when the recorder closes.
        recorder.close();
        let seen = store
            .read(None, chrono::DateTime::<Utc>::MIN_UTC, now)
            .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!((seen[2].tool.as_str(), seen[2].approved), ("drop", None));
        assert!(!serde_json::to_string(&seen).unwrap().contains("hunter2"));
    }

    /// A store that takes its time, so the queue fills.
    #[derive(Debug)]
    struct Slow(std::sync::Mutex<usize>);

    impl LearnStore for Slow {
        fn append(
            &self,
            batch: &[Observation],
            _: u64,
        ) -> Result<(), super::super::store::LearnStoreError> {
            std::thread::sleep(Duration::from_millis(200));
            *crate::sync::lock(&self.0) += batch.len();
            Ok(())
        }
        fn read(
            &self,
            _: Option<&str>,
            _: chrono::DateTime<Utc>,
            _: u64,
        ) -> Result<Vec<Observation>, super::super::store::LearnStoreError> {
            Ok(Vec::new())
        }
        fn forget(&self, _: Option<&str>) -> Result<usize, super::super::store::LearnStoreError> {
            Ok(0)
        }
        fn describe(&self) -> String {
            "slow".into()
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_observations_without_blocking_the_caller() {
        let store = Arc::new(Slow(std::sync::Mutex::new(0)));
        let recorder = Recorder::with_queue(store.clone(), true, 4).unwrap();
        for _ in 0..100 {
            recorder.record(observation("read", "allow"), None);
        }
        let dropped = recorder.dropped();
        assert!(dropped > 0, "a queue of 4 cannot take 100 at once");
        recorder.close();
        let written = *crate::sync::lock(&store.0);
        assert_eq!(
            written as u64 + dropped,
            100,
            "every call written or counted"
        );
    }
}
