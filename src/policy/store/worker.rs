//! [`StoreWorker`]: a gateway's counter-store work, off the async runtime.
//!
//! A shared store can make its caller wait: a SQLite transaction waits up to
//! [`super::sqlite::BUSY_TIMEOUT`] for another process's lock, Redis for the network. Asked
//! from a gateway's async tasks, that wait would stop every other call, hold timer, progress
//! note and websocket of the gateway with it. So a gateway asks through a worker: one thread
//! per store, fed by a bounded queue, answering each admission through a oneshot, or into a
//! channel that many admissions share ([`Answers`]: a gateway connection's limited calls,
//! drained by one task, so a batch costs the runtime one wake, not a task and a oneshot per
//! call). While the store is slow, only the calls that need a counter wait.
//!
//! Group commit: admissions that queue up while the thread is in a transaction are handed to
//! [`CounterStore::admit_many`] together (at most [`MAX_BATCH`]), in arrival order. Each call
//! is still all-or-nothing and decided as if alone, one after the other.
//!
//! Publishing: what a gateway publishes about the budgets an admitted call took units from
//! (the `counters` event) runs on the thread right after the batch
//! ([`StoreWorker::admit_then`]), and reads them from what the batch's own transaction noted
//! ([`CounterStore::admit_many_noting`]) instead of a second transaction: a limited call
//! costs the gateway one transaction and one hop to the thread and back, and the states
//! are published in the order they changed.
//!
//! Deadlines: an admission is answered within [`ANSWER_WITHIN`] or fails; a queue that is
//! full refuses at once. Either failure follows the store's failure policy
//! ([`CounterStore::fails_open`]: `--counters-fail`): closed, the call is denied; open, it is
//! admitted uncounted, as the guard admits it when the store itself fails. An admission
//! whose caller stopped waiting is given back by the thread, so a late answer never keeps
//! units nobody uses.
//!
//! A store that never blocks ([`CounterStore::may_block`] is false: [`super::MemoryStore`])
//! is asked in place: a thread hop would cost more than the admission.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::gateway::spin::{Window, look_within};

use super::{
    Admission, CounterKey, CounterStore, KeyUsage, LimitRequest, Limits, NotedUsage, OwnedLimit,
    Reservation, Scope, StoreError, StoreErrorKind,
};

/// Jobs waiting for the store thread, at most; beyond it an admission is refused at once.
pub(crate) const QUEUE: usize = 4096;

/// Admissions decided in one transaction, at most.
pub(crate) const MAX_BATCH: usize = 256;

/// How long a call waits for its admission before it fails closed: longer than a SQLite
/// store's busy timeout, so that the store's own, more precise error is the one seen.
pub(crate) const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Where an admission's answer goes.
enum Reply {
    /// To the one caller waiting for it ([`Answer::Waiting`]).
    Once(oneshot::Sender<Result<Admission, StoreError>>),
    /// Into a channel that many admissions share ([`StoreWorker::admit_into`]).
    Into(Delivery),
}

impl Reply {
    /// Whether nobody waits for the answer any more.
    fn is_closed(&self) -> bool {
        match self {
            Reply::Once(reply) => reply.is_closed(),
            Reply::Into(delivery) => delivery.to.as_ref().is_none_or(|to| to.is_closed()),
        }
    }

    /// Delivers the answer; gives it back when nobody waits for it.
    fn send(
        self,
        answer: Result<Admission, StoreError>,
    ) -> Result<(), Result<Admission, StoreError>> {
        match self {
            Reply::Once(reply) => reply.send(answer),
            Reply::Into(mut delivery) => {
                let ticket = delivery.ticket;
                match delivery.to.take() {
                    Some(to) => to
                        .send(smallvec::smallvec![Answered { ticket, answer }])
                        .map_err(|mut unsent| match unsent.0.pop() {
                            Some(answered) => answered.answer,
                            None => Err(StoreError::new(StoreErrorKind::Other, "no answer")),
                        }),
                    None => Err(answer),
                }
            }
        }
    }
}

/// The answers of one batch into one [`Answers`] channel, in the order asked: inline when
/// one (a call in flight alone), so that case allocates nothing.
pub(crate) type AnsweredBatch = smallvec::SmallVec<[Answered; 1]>;

/// An admission's answer, delivered into the channel of [`Answers`] with its ticket.
#[derive(Debug)]
pub(crate) struct Answered {
    pub(crate) ticket: u64,
    pub(crate) answer: Result<Admission, StoreError>,
}

/// One channel that the admissions of many calls are answered into, in the order they were
/// asked (a connection's limited calls): one task on the runtime drains it, woken once for
/// all the answers a batch delivered instead of once per call, with no task or oneshot per
/// call. A batch's answers into one channel go as one message: sent one by one, a runtime
/// running on the other CPU took the first ones while the rest were still being sent, and
/// each such take cost the store thread another wake of the runtime (an `eventfd` write: up
/// to 4.4 per batch at 64 in flight, measured; docs/performance.md,
/// "Store round 7"). Each admission gets
/// a ticket ([`StoreWorker::admit_into`]); its answer comes back with it, exactly once: if
/// the store thread stops before answering, the admission's [`Delivery`] answers with the
/// error as it is dropped, so no caller waits for nothing.
#[derive(Debug)]
pub(crate) struct Answers {
    to: mpsc::UnboundedSender<AnsweredBatch>,
    next_ticket: AtomicU64,
}

impl Answers {
    /// The channel, and its receiving end to drain.
    pub(crate) fn channel() -> (Answers, mpsc::UnboundedReceiver<AnsweredBatch>) {
        let (to, rx) = mpsc::unbounded_channel();
        let answers = Answers {
            to,
            next_ticket: AtomicU64::new(0),
        };
        (answers, rx)
    }
}

/// The way back of one admission asked through [`Answers`]. Dropped unsent (the store thread
/// stopped, a batch unwound), it answers with the error a stopped thread gives.
struct Delivery {
    /// `None` once sent, or when the admission was never queued.
    to: Option<mpsc::UnboundedSender<AnsweredBatch>>,
    ticket: u64,
    fails_open: bool,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            let stopped = StoreError::new(
                StoreErrorKind::Other,
                "the counter-store thread stopped before answering",
            );
            let _ = to.send(smallvec::smallvec![Answered {
                ticket: self.ticket,
                answer: unanswered(stopped, self.fails_open),
            }]);
        }
    }
}

/// An admission asked through [`Answers`]: answered at once, or queued with its ticket.
#[derive(Debug)]
pub(crate) enum Posted {
    Ready(Result<Admission, StoreError>),
    Queued(u64),
}

/// What runs with the store, on the worker's thread, right after an admission that took
/// units: a gateway publishes the state of the budgets the call took them from. Shared, not
/// made per call: a gateway makes its publisher once and each admission carries a clone
/// (one reference count, no allocation made on the runtime's thread and freed on this one).
pub(crate) type Then = Arc<dyn Fn(&dyn CounterStore, &Reservation) + Send + Sync>;

/// What the store thread does first for an admission that carries it and is admitted (with
/// or without units), before any answer of its batch is sent: `wrap` writes the call's line
/// to its upstream's pipe there ([`crate::gateway::handover`]), so the server starts on the
/// call while the runtime is still being woken with the answer. It must never wait: it
/// runs between a batch's commit and its answers, for every gateway sharing the thread.
pub(crate) trait OnAdmitted: Send + Sync {
    /// For each admitted call of a batch that carries one, in the batch's order.
    fn admitted(&self);

    /// Then once more for each of them, once every `admitted` of the batch ran (`wrap`
    /// writes what the batch added to a pipe in one write, not one per call).
    fn flush(&self) {}
}

/// An [`OnAdmitted`] an admission carries (one per call that may be handed over).
pub(crate) type FirstThing = Arc<dyn OnAdmitted>;

enum Job {
    Admit {
        limits: Limits,
        now_ms: u64,
        reply: Reply,
        then: Option<Then>,
        first: Option<FirstThing>,
    },
    /// Anything else a gateway does with its store (give units back and publish the state
    /// after).
    Run(Work),
}

type Work = Box<dyn FnOnce(&dyn CounterStore) + Send>;

/// A store and the thread that asks it. Cloning shares the thread; it ends when the last
/// clone is dropped and its queue is empty.
#[derive(Clone)]
pub struct StoreWorker {
    store: Arc<dyn CounterStore>,
    /// `None` for a store asked in place.
    queue: Option<mpsc::Sender<Job>>,
    /// See [`CounterStore::fails_open`].
    fails_open: bool,
    /// [`ANSWER_WITHIN`] (shorter in tests).
    answer_within: Duration,
}

impl std::fmt::Debug for StoreWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWorker")
            .field("threaded", &self.queue.is_some())
            .finish_non_exhaustive()
    }
}

impl From<Arc<dyn CounterStore>> for StoreWorker {
    fn from(store: Arc<dyn CounterStore>) -> StoreWorker {
        StoreWorker::new(store)
    }
}

impl<S: CounterStore + 'static> From<Arc<S>> for StoreWorker {
    fn from(store: Arc<S>) -> StoreWorker {
        StoreWorker::new(store)
    }
}

impl StoreWorker {
    /// Starts the thread for `store` when it may block. Without a thread (none could be
    /// started), the store is asked in place, as before, and a warning says so.
    pub fn new(store: Arc<dyn CounterStore>) -> StoreWorker {
        StoreWorker::spinning(store, Window::new(Duration::ZERO))
    }

    /// [`StoreWorker::new`], with a thread that, when its queue is empty, looks again for at
    /// most `spin`'s window (yielding the CPU between looks) before it sleeps (a gateway's
    /// `--spin-us`; the window adapts to how soon the next batch came, as the runtime's does).
    /// On a machine whose idle CPUs halt, waking a sleeping thread costs tens of
    /// microseconds, once per batch: with one call in flight that is on every limited
    /// call's path, and with many the next admission usually comes within the spin. An
    /// idle gateway spins once after its last batch, then sleeps.
    pub(crate) fn spinning(store: Arc<dyn CounterStore>, spin: Window) -> StoreWorker {
        let fails_open = store.fails_open();
        if !store.may_block() {
            return StoreWorker {
                store,
                queue: None,
                fails_open,
                answer_within: ANSWER_WITHIN,
            };
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let served = Arc::clone(&store);
        let started = std::thread::Builder::new()
            .name("counters".into())
            .spawn(move || serve(served.as_ref(), rx, spin));
        match started {
            Ok(_) => StoreWorker {
                store,
                queue: Some(tx),
                fails_open,
                answer_within: ANSWER_WITHIN,
            },
            Err(e) => {
                tracing::warn!("no counter-store thread ({e}); the store is asked in place");
                StoreWorker {
                    store,
                    queue: None,
                    fails_open,
                    answer_within: ANSWER_WITHIN,
                }
            }
        }
    }

    /// The same worker, failing an admission not answered within `within` instead of
    /// [`ANSWER_WITHIN`] (for tests: a deadline that passes in milliseconds).
    pub fn answering_within(mut self, within: Duration) -> StoreWorker {
        self.answer_within = within;
        self
    }

    /// The store itself, for callers that are not on an async runtime (`explain`, tests).
    pub fn store(&self) -> &Arc<dyn CounterStore> {
        &self.store
    }

    /// Queues an admission now (so admissions are decided in the order they were asked) and
    /// returns its answer to wait for.
    pub fn admit(&self, limits: Limits, now_ms: u64) -> Answer {
        self.admit_then(limits, now_ms, None)
    }

    /// [`StoreWorker::admit`], and if the call is admitted with units, `then` runs with the
    /// store and its reservation on the worker's thread right after its batch, before any job
    /// queued after it (in place, right away, for a store asked in place). So what `then`
    /// reads of the store is the state the admission left (from what the batch noted, see
    /// [`serve`]), and what it publishes comes in the order the state changed. Of several
    /// admissions of one batch that took units from the same budgets, only the last one's
    /// `then` runs: it sees what the earlier ones would have (if that one's caller stopped
    /// waiting, its units are given back first and its `then` publishes the state after).
    pub fn admit_then(&self, limits: Limits, now_ms: u64, then: Option<Then>) -> Answer {
        if self.queue.is_none() {
            return Answer::Ready(self.admit_in_place(limits, now_ms, then));
        }
        let (reply, answer) = oneshot::channel();
        match self.queue_admission(limits, now_ms, then, None, Reply::Once(reply)) {
            Ok(()) => Answer::Waiting {
                answer,
                within: self.answer_within,
                fails_open: self.fails_open,
            },
            Err(failed) => Answer::Ready(failed),
        }
    }

    /// [`StoreWorker::admit_then`], answered into `into` with the ticket returned (in place,
    /// or when the queue refuses it, answered at once). Admissions through one [`Answers`]
    /// are answered in the order they were asked. `first` runs on the thread if the call is
    /// admitted, before the batch's answers go out (see [`OnAdmitted`]); never for an
    /// admission answered at once.
    pub(crate) fn admit_into(
        &self,
        limits: Limits,
        now_ms: u64,
        then: Option<Then>,
        first: Option<FirstThing>,
        into: &Answers,
    ) -> Posted {
        if self.queue.is_none() {
            return Posted::Ready(self.admit_in_place(limits, now_ms, then));
        }
        let ticket = into.next_ticket.fetch_add(1, Ordering::Relaxed);
        let delivery = Delivery {
            to: Some(into.to.clone()),
            ticket,
            fails_open: self.fails_open,
        };
        match self.queue_admission(limits, now_ms, then, first, Reply::Into(delivery)) {
            Ok(()) => Posted::Queued(ticket),
            Err(failed) => Posted::Ready(failed),
        }
    }

    /// Whether admissions are answered from the store's thread (not in place).
    pub(crate) fn is_threaded(&self) -> bool {
        self.queue.is_some()
    }

    /// How long a call waits for its admission's answer ([`ANSWER_WITHIN`]).
    pub(crate) fn answer_within(&self) -> Duration {
        self.answer_within
    }

    /// What a call gets whose admission was not answered within [`ANSWER_WITHIN`]: the
    /// timeout's error, or under `--counters-fail open` admitted uncounted.
    pub(crate) fn timed_out(&self) -> Result<Admission, StoreError> {
        unanswered(timeout_error(self.answer_within), self.fails_open)
    }

    fn admit_in_place(
        &self,
        limits: Limits,
        now_ms: u64,
        then: Option<Then>,
    ) -> Result<Admission, StoreError> {
        let requests: Vec<LimitRequest<'_>> = limits.iter().map(OwnedLimit::request).collect();
        let answer = self.store.admit(&requests, now_ms);
        if let (Ok(Admission::Admitted(reservation)), Some(then)) = (&answer, then)
            && !reservation.is_empty()
        {
            then(self.store.as_ref(), reservation);
        }
        answer
    }

    /// Queues an admission for the thread, or says at once (as the failure policy gives)
    /// why it could not be.
    fn queue_admission(
        &self,
        limits: Limits,
        now_ms: u64,
        then: Option<Then>,
        first: Option<FirstThing>,
        reply: Reply,
    ) -> Result<(), Result<Admission, StoreError>> {
        let Some(queue) = &self.queue else {
            return Err(Err(StoreError::new(
                StoreErrorKind::Other,
                "no counter-store thread",
            )));
        };
        let job = Job::Admit {
            limits,
            now_ms,
            reply,
            then,
            first,
        };
        let (failed, job) = match queue.try_send(job) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => (
                StoreError::new(
                    StoreErrorKind::Overloaded,
                    format!("{QUEUE} admissions already wait for the counter store"),
                ),
                job,
            ),
            Err(mpsc::error::TrySendError::Closed(job)) => (
                StoreError::new(
                    StoreErrorKind::Other,
                    "the counter-store thread has stopped",
                ),
                job,
            ),
        };
        // Answered here, not through its way back.
        if let Job::Admit {
            reply: Reply::Into(mut delivery),
            ..
        } = job
        {
            delivery.to = None;
        }
        Err(unanswered(failed, self.fails_open))
    }

    /// Runs `work` with the store on the worker's thread, after what is already queued (in
    /// place for a store that does not block). Dropped, with a warning, when the queue is
    /// full: what it would have given back leaves its window by itself.
    pub fn run(&self, work: impl FnOnce(&dyn CounterStore) + Send + 'static) {
        let Some(queue) = &self.queue else {
            work(self.store.as_ref());
            return;
        };
        if queue.try_send(Job::Run(Box::new(work))).is_err() {
            tracing::warn!("the counter store is {QUEUE} jobs behind; skipped a release");
        }
    }
}

/// An admission's answer: at once, or later from the worker's thread.
#[derive(Debug)]
pub enum Answer {
    Ready(Result<Admission, StoreError>),
    Waiting {
        answer: oneshot::Receiver<Result<Admission, StoreError>>,
        /// How long the answer is waited for ([`ANSWER_WITHIN`]).
        within: Duration,
        /// What a call gets when no answer comes ([`unanswered`]).
        fails_open: bool,
    },
}

/// What a call gets when the worker cannot have its admission answered (queue full, thread
/// gone, deadline passed): the error under `--counters-fail closed`; admitted uncounted, with
/// a warning, under `open`.
fn unanswered(error: StoreError, fails_open: bool) -> Result<Admission, StoreError> {
    if fails_open {
        tracing::warn!("admitting a call uncounted: {error}");
        return Ok(Admission::Admitted(super::Reservation::default()));
    }
    Err(error)
}

impl Answer {
    /// Whether the answer is already here.
    pub fn is_ready(&self) -> bool {
        matches!(self, Answer::Ready(_))
    }

    /// The answer, or once [`ANSWER_WITHIN`] has passed what the failure policy gives
    /// ([`unanswered`]).
    pub async fn get(self) -> Result<Admission, StoreError> {
        let (rx, within, fails_open) = match self {
            Answer::Ready(answer) => return answer,
            Answer::Waiting {
                answer,
                within,
                fails_open,
            } => (answer, within, fails_open),
        };
        let failed = match tokio::time::timeout(within, rx).await {
            Ok(Ok(answer)) => return answer,
            Ok(Err(_)) => StoreError::new(
                StoreErrorKind::Other,
                "the counter-store thread stopped before answering",
            ),
            Err(_) => timeout_error(within),
        };
        unanswered(failed, fails_open)
    }
}

fn timeout_error(within: Duration) -> StoreError {
    StoreError::new(
        StoreErrorKind::Timeout,
        format!(
            "the counter store did not answer within {} s",
            within.as_secs_f64()
        ),
    )
}

/// Budgets whose state after this thread's last admission is remembered, at most; beyond it
/// the memory starts again empty.
const KNOWN: usize = 1024;

/// The store thread: one job at a time, admissions in batches. Other jobs that queued up
/// among a batch's admissions (releases) run right after it, in order: they never split a
/// batch (a release that waited behind admissions can only make them stricter).
///
/// What runs right after an admission ([`StoreWorker::admit_then`]: a gateway publishing
/// the budgets' state) reads a budget's usage, where it can, from what the batch noted of
/// it in its own transaction ([`CounterStore::admit_many_noting`]): the state the last
/// admission through this thread left it in, as long as only time has passed since (see
/// [`NotedUsage::usage_at`]), so a limited call costs one transaction, not two. A release
/// may change any budget, so the thread forgets what it noted before one runs; a read it
/// cannot answer asks the store. Read this way, a budget does not show another process's
/// admissions since this thread's last one (a read a moment earlier would not either); the
/// states are published in the order they changed here.
fn serve(store: &dyn CounterStore, mut rx: mpsc::Receiver<Job>, mut spin: Window) {
    let mut batch: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
    let mut after: Vec<Work> = Vec::new();
    let mut known = Known::default();
    let mut scratch = Scratch::default();
    while let Some(job) = next_job(&mut rx, &mut spin) {
        let mut next = Some(job);
        // Everything that queued up meanwhile goes into the same transaction.
        while let Some(job) = next.take() {
            match job {
                Job::Run(work) => after.push(work),
                Job::Admit {
                    limits,
                    now_ms,
                    reply,
                    then,
                    first,
                } => batch.push(Queued {
                    limits,
                    now_ms,
                    reply,
                    then,
                    first,
                }),
            }
            if batch.len() < MAX_BATCH && after.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        admit_batch(store, &mut batch, &mut known, &mut scratch);
        for (reservation, then) in scratch.thens.drain(..) {
            remembering(store, &mut known, |view| then(view, &reservation));
        }
        for work in after.drain(..) {
            known.forget();
            work(store);
        }
    }
}

/// The next job: taken at once if one is queued, else looked for again for at most `spin`'s
/// window ([`StoreWorker::spinning`]), else waited for asleep; a wait after a spin that ran
/// out teaches the window ([`Window::missed`]). `None` once every sender is gone.
fn next_job(rx: &mut mpsc::Receiver<Job>, spin: &mut Window) -> Option<Job> {
    let budget = spin.budget();
    if budget.is_zero() {
        return rx.blocking_recv();
    }
    let start = std::time::Instant::now();
    // Between looks the runtime this thread answers, or the server, runs first.
    let taken = look_within(start, budget, || match rx.try_recv() {
        Ok(job) => Some(Some(job)),
        Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
        Err(mpsc::error::TryRecvError::Empty) => None,
    });
    if let Some(job) = taken {
        return job;
    }
    let job = rx.blocking_recv();
    spin.missed(start.elapsed());
    job
}

/// The lists a batch is decided with, kept from one batch to the next so that a batch
/// allocates none of its own (the store thread's `malloc`s were about a sixth of its
/// samples at 64 in flight: docs/performance.md, "Store round 9"). Those that borrow from
/// a batch are kept empty, with `'static` in place of the batch's lifetime ([`recycle`]).
#[derive(Default)]
struct Scratch {
    requests: Vec<LimitRequest<'static>>,
    calls: Vec<(&'static [LimitRequest<'static>], u64)>,
    ends: Vec<usize>,
    runs: Vec<bool>,
    /// The `then`s to run after the batch ([`admit_batch`]'s result).
    thens: Vec<(Reservation, Then)>,
    into: Vec<(mpsc::UnboundedSender<AnsweredBatch>, AnsweredBatch)>,
    unsent: Vec<Result<Admission, StoreError>>,
}

/// `list` emptied, as a list of another type of the same layout (the same type with
/// another lifetime): collected in place, so its allocation is kept.
fn recycle<T, U>(mut list: Vec<T>) -> Vec<U> {
    list.clear();
    list.into_iter().filter_map(|_| None).collect()
}

/// An admission waiting in a batch.
struct Queued {
    limits: Limits,
    now_ms: u64,
    reply: Reply,
    then: Option<Then>,
    first: Option<FirstThing>,
}

/// Runs `work` with the store as the batches noted it ([`Remembered`]).
fn remembering(store: &dyn CounterStore, known: &mut Known, work: impl FnOnce(&dyn CounterStore)) {
    let view = Remembered {
        store,
        known,
        asked_store: AtomicBool::new(false),
    };
    work(&view);
    if view.asked_store.load(Ordering::Relaxed) {
        // What the store did while answering (a guard giving back units it kept for later)
        // is not in what was noted.
        known.forget();
    }
}

/// What the batches noted of each budget (see [`serve`]).
#[derive(Default)]
struct Known {
    usage: std::collections::HashMap<CounterKey, NotedUsage>,
    noted: Vec<NotedUsage>,
}

impl Known {
    fn forget(&mut self) {
        self.usage.clear();
    }

    fn learn(&mut self) {
        for note in self.noted.drain(..) {
            if self.usage.len() >= KNOWN && !self.usage.contains_key(&note.key) {
                self.usage.clear();
            }
            self.usage.insert(note.key.clone(), note);
        }
    }

    fn forget_units_of(&mut self, reservation: &Reservation) {
        for unit in reservation.units() {
            self.usage.remove(&unit.key);
        }
    }
}

/// The store as a usage read on the store thread sees it: a budget's usage from what the
/// batches noted when that is still exact, anything else from the store.
struct Remembered<'a> {
    store: &'a dyn CounterStore,
    known: &'a Known,
    /// Whether anything was asked of the store itself.
    asked_store: AtomicBool,
}

impl Remembered<'_> {
    fn store(&self) -> &dyn CounterStore {
        self.asked_store.store(true, Ordering::Relaxed);
        self.store
    }
}

impl CounterStore for Remembered<'_> {
    fn admit(&self, limits: &[LimitRequest<'_>], now_ms: u64) -> Result<Admission, StoreError> {
        self.store().admit(limits, now_ms)
    }

    fn may_block(&self) -> bool {
        self.store.may_block()
    }

    fn fails_open(&self) -> bool {
        self.store.fails_open()
    }

    fn try_release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        self.store().try_release(reservation)
    }

    fn usage_of(
        &self,
        key: &CounterKey,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<KeyUsage, StoreError> {
        let remembered = self
            .known
            .usage
            .get(key)
            .and_then(|noted| noted.usage_at(window_ms, now_ms));
        match remembered {
            Some(usage) => Ok(usage),
            None => self.store().usage_of(key, window_ms, now_ms),
        }
    }

    fn usage(
        &self,
        counter: &str,
        scope: Scope,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<KeyUsage>, StoreError> {
        self.store().usage(counter, scope, window_ms, now_ms)
    }
}

/// Decides a batch in one call to the store and answers each caller; leaves in
/// `scratch.thens` the `then` of each admitted call to run, of several with the same
/// budgets only the last.
///
/// Per call, nothing is allocated here beyond its answer: the batch's requests are one list
/// (each call a range of it), and only the reservations whose `then` runs are copied (the
/// answer itself goes to the caller). Which `then` runs is known before the answers go out;
/// if the caller of one that runs stopped waiting meanwhile, its units are given back and
/// its `then` still runs, so the state published is the one the batch left.
fn admit_batch(
    store: &dyn CounterStore,
    batch: &mut Vec<Queued>,
    known: &mut Known,
    scratch: &mut Scratch,
) {
    // Callers that stopped waiting are not admitted at all.
    batch.retain(|queued| !queued.reply.is_closed());
    if batch.is_empty() {
        return;
    }
    let mut requests: Vec<LimitRequest<'_>> = recycle(std::mem::take(&mut scratch.requests));
    let ends = &mut scratch.ends;
    ends.clear();
    for queued in batch.iter() {
        requests.extend(queued.limits.iter().map(OwnedLimit::request));
        ends.push(requests.len());
    }
    let mut calls: Vec<(&[LimitRequest<'_>], u64)> = recycle(std::mem::take(&mut scratch.calls));
    calls.extend(
        batch
            .iter()
            .zip(ends.iter())
            .scan(0, |start, (queued, &end)| {
                let call = (&requests[*start..end], queued.now_ms);
                *start = end;
                Some(call)
            }),
    );
    let answers = store.admit_many_noting(&calls, &mut known.noted);
    scratch.calls = recycle(calls);
    scratch.requests = recycle(requests);
    known.learn();
    // Before any answer goes out: what an admitted call does first (`wrap` writing its line
    // upstream) is done for the whole batch, so the server starts on it while the runtime
    // is being woken. Only a call alone in flight on its connection carries one, so with
    // many in flight there is nothing to look for.
    if batch.iter().any(|queued| queued.first.is_some()) {
        let firsts = || {
            batch.iter().zip(&answers).filter_map(|(queued, answer)| {
                match (&queued.first, answer) {
                    (Some(first), Ok(Admission::Admitted(_))) => Some(first),
                    _ => None,
                }
            })
        };
        for first in firsts() {
            first.admitted();
        }
        for first in firsts() {
            first.flush();
        }
    }
    let runs = &mut scratch.runs;
    last_of_their_budgets(batch, &answers, runs);
    let thens = &mut scratch.thens;
    // The answers into each shared channel, sent together once every call is answered.
    let into = &mut scratch.into;
    let unsent = &mut scratch.unsent;
    let total = batch.len();
    for (i, ((queued, answer), &runs)) in batch.drain(..).zip(answers).zip(runs.iter()).enumerate()
    {
        let then = match (&answer, queued.then) {
            (Ok(Admission::Admitted(reservation)), Some(then)) if runs => {
                Some((reservation.clone(), then))
            }
            _ => None,
        };
        match queued.reply {
            Reply::Into(mut delivery) => match delivery.to.take() {
                Some(to) => {
                    let answered = Answered {
                        ticket: delivery.ticket,
                        answer,
                    };
                    match into.iter_mut().find(|(other, _)| other.same_channel(&to)) {
                        Some((_, answers)) => answers.push(answered),
                        None => {
                            // Room for the rest of the batch at once (with many in flight
                            // it all goes into one channel), not grown by doubling.
                            let mut answers = AnsweredBatch::with_capacity(total - i);
                            answers.push(answered);
                            into.push((to, answers));
                        }
                    }
                }
                None => unsent.push(answer),
            },
            once => {
                if let Err(answer) = once.send(answer) {
                    unsent.push(answer);
                }
            }
        }
        thens.extend(then);
    }
    for (to, answers) in into.drain(..) {
        if let Err(gone) = to.send(answers) {
            unsent.extend(gone.0.into_iter().map(|answered| answered.answer));
        }
    }
    for answer in unsent.drain(..) {
        if let Ok(Admission::Admitted(reservation)) = answer {
            // The caller gave up waiting: nobody will use or give back these units.
            store.release(&reservation);
            known.forget_units_of(&reservation);
        }
    }
}

/// For each call of the batch, into `runs`, whether its `then` runs: it has one, it was
/// admitted with units, and no later such call of the batch took units from the same
/// budgets (that one's `then` sees what this one's would have, on the same or a newer
/// state).
fn last_of_their_budgets(
    batch: &[Queued],
    answers: &[Result<Admission, StoreError>],
    runs: &mut Vec<bool>,
) {
    let taken = |i: usize| match (&answers[i], &batch[i].then) {
        (Ok(Admission::Admitted(reservation)), Some(_)) if !reservation.is_empty() => {
            Some(reservation)
        }
        _ => None,
    };
    runs.clear();
    runs.resize(batch.len().min(answers.len()), false);
    for i in (0..runs.len()).rev() {
        let Some(reservation) = taken(i) else {
            continue;
        };
        // Calls of one batch mostly share their budgets: the usual search ends at the next
        // call that runs.
        runs[i] = !(i + 1..runs.len())
            .filter(|&j| runs[j])
            .any(|j| taken(j).is_some_and(|later| same_budgets(reservation, later)));
    }
}

/// Whether two reservations took units from the same budgets, in the same order.
fn same_budgets(a: &Reservation, b: &Reservation) -> bool {
    a.units().len() == b.units().len()
        && a.units().iter().zip(b.units()).all(|(a, b)| a.key == b.key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::store::{MemoryStore, Reservation, Scope};
    use smol_str::SmolStr;
    use std::sync::Mutex;

    /// A store that blocks until told to go on and records the batches it was given.
    struct Gated {
        inner: MemoryStore,
        gate: Mutex<()>,
        entered: std::sync::atomic::AtomicUsize,
        batches: Mutex<Vec<usize>>,
    }

    impl CounterStore for Gated {
        fn admit(&self, limits: &[LimitRequest<'_>], now_ms: u64) -> Result<Admission, StoreError> {
            self.inner.admit(limits, now_ms)
        }
        fn admit_many(
            &self,
            calls: &[(&[LimitRequest<'_>], u64)],
        ) -> Vec<Result<Admission, StoreError>> {
            self.entered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _open = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            self.batches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(calls.len());
            calls.iter().map(|(l, now)| self.admit(l, *now)).collect()
        }
        fn try_release(&self, reservation: &Reservation) -> Result<(), StoreError> {
            self.inner.try_release(reservation)
        }
        fn usage(
            &self,
            counter: &str,
            scope: Scope,
            window_ms: u64,
            now_ms: u64,
        ) -> Result<Vec<super::super::KeyUsage>, StoreError> {
            self.inner.usage(counter, scope, window_ms, now_ms)
        }
    }

    fn limit(max: u64) -> Limits {
        smallvec::smallvec![OwnedLimit {
            counter: Arc::from("c"),
            scope: Scope::Global,
            scope_key: SmolStr::default(),
            max,
            window_ms: 60_000,
        }]
    }

    fn gated() -> Arc<Gated> {
        Arc::new(Gated {
            inner: MemoryStore::new(),
            gate: Mutex::new(()),
            entered: Default::default(),
            batches: Mutex::new(Vec::new()),
        })
    }

    /// Waits (at most 5 s) until the worker is inside the gated store; `what` says which
    /// admission the test expected there.
    fn wait_entered(store: &Gated, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.entered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[tokio::test]
    async fn admissions_queued_behind_a_transaction_are_decided_together_in_order() {
        let store = gated();
        let worker = StoreWorker::new(store.clone());
        let closed = store.gate.lock().unwrap();
        // The first admission takes the thread and waits at the gate; the next ten queue up.
        let first = worker.admit(limit(5), 1);
        wait_entered(&store, "the worker never started the first admission");
        let rest: Vec<Answer> = (0..10).map(|i| worker.admit(limit(5), 2 + i)).collect();
        drop(closed);
        assert!(matches!(first.get().await, Ok(Admission::Admitted(_))));
        let mut verdicts = Vec::new();
        for answer in rest {
            verdicts.push(matches!(answer.get().await, Ok(Admission::Admitted(_))));
        }
        // Exactly max in all, and in arrival order: the first four queued got the room.
        assert_eq!(
            verdicts,
            [
                true, true, true, true, false, false, false, false, false, false
            ]
        );
        let batches = store.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 11, "{batches:?}");
        assert!(batches.len() < 11, "no admission was batched: {batches:?}");
    }

    /// Notes, when it runs, whether its admission's answer had already been sent.
    struct First {
        ran: std::sync::atomic::AtomicUsize,
        answered_before: AtomicBool,
        answers: Mutex<Option<Arc<Mutex<mpsc::UnboundedReceiver<AnsweredBatch>>>>>,
    }

    impl OnAdmitted for First {
        fn admitted(&self) {
            self.ran.fetch_add(1, Ordering::SeqCst);
            let answers = self.answers.lock().unwrap().clone();
            if let Some(answers) = answers
                && !answers.lock().unwrap().is_empty()
            {
                self.answered_before.store(true, Ordering::SeqCst);
            }
        }
    }

    #[tokio::test]
    async fn what_an_admitted_call_does_first_runs_before_its_answer_and_never_for_a_refused_one() {
        let store = gated();
        let worker = StoreWorker::new(store.clone());
        let (answers, rx) = Answers::channel();
        let rx = Arc::new(Mutex::new(rx));
        let first = Arc::new(First {
            ran: std::sync::atomic::AtomicUsize::new(0),
            answered_before: AtomicBool::new(false),
            answers: Mutex::new(Some(rx.clone())),
        });
        let closed = store.gate.lock().unwrap();
        // One admitted, one refused (a budget of one), decided in one batch.
        let posted: Vec<Posted> = (0..2)
            .map(|i| worker.admit_into(limit(1), 1 + i, None, Some(first.clone()), &answers))
            .collect();
        assert!(posted.iter().all(|p| matches!(p, Posted::Queued(_))));
        drop(closed);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < 2 {
            assert!(std::time::Instant::now() < deadline, "both answered");
            match rx.lock().unwrap().try_recv() {
                Ok(batch) => got.extend(batch),
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        assert!(matches!(got[0].answer, Ok(Admission::Admitted(_))));
        assert!(matches!(got[1].answer, Ok(Admission::Refused { .. })));
        assert_eq!(
            first.ran.load(Ordering::SeqCst),
            1,
            "for the admitted call only"
        );
        assert!(
            !first.answered_before.load(Ordering::SeqCst),
            "it ran before any answer of its batch went out"
        );
    }

    #[tokio::test]
    async fn of_admissions_of_the_same_budgets_decided_together_only_the_last_runs_its_then() {
        let store = gated();
        let worker = StoreWorker::new(store.clone());
        let closed = store.gate.lock().unwrap();
        let first = worker.admit(limit(5), 1);
        wait_entered(&store, "the worker never started the admission");
        let of = |k: &str| {
            let mut l = limit(5);
            l[0].scope_key = SmolStr::new(k);
            l
        };
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        let mut answers = Vec::new();
        for (i, k) in ["a", "a", "b", "a", "a"].into_iter().enumerate() {
            let done_tx = done_tx.clone();
            let then: Then = Arc::new(move |_, reservation| {
                let _ = done_tx.send((i, reservation.units()[0].key.scope_key.clone()));
            });
            answers.push(worker.admit_then(of(k), 2, Some(then)));
        }
        drop(done_tx);
        drop(closed);
        assert!(matches!(first.get().await, Ok(Admission::Admitted(_))));
        for answer in answers {
            assert!(matches!(answer.get().await, Ok(Admission::Admitted(_))));
        }
        let mut ran = Vec::new();
        while let Ok(Some(i)) = tokio::time::timeout(Duration::from_secs(5), done.recv()).await {
            ran.push(i);
        }
        // The one of `b`, and of `a` only the last, each with its own reservation.
        assert_eq!(ran, [(2, SmolStr::new("b")), (4, SmolStr::new("a"))]);
    }

    #[test]
    fn of_a_batch_the_then_runs_of_the_last_admitted_call_of_each_set_of_budgets() {
        let of = |k: &str| {
            let mut l = limit(5);
            l[0].scope_key = SmolStr::new(k);
            l
        };
        let queued = |k: &str, then: bool| Queued {
            limits: of(k),
            now_ms: 1,
            reply: Reply::Once(oneshot::channel().0),
            then: then.then(|| -> Then { Arc::new(|_, _| {}) }),
            first: None,
        };
        let admitted = |k: &str| {
            Ok(Admission::Admitted(Reservation::new(vec![
                crate::policy::store::ReservedUnit {
                    key: of(k)[0].request().key(),
                    at_ms: 1,
                    token: 0,
                },
            ])))
        };
        let refused = || {
            Ok(Admission::Refused {
                index: 0,
                retry_after_ms: 1,
            })
        };
        let batch = vec![
            queued("a", true),
            queued("b", true),
            queued("a", true),
            // Later calls of `a` that take nothing, or have no `then`, do not hide it.
            queued("a", true),
            queued("a", false),
            queued("b", true),
            queued("c", true),
        ];
        let answers = vec![
            admitted("a"),
            admitted("b"),
            admitted("a"),
            refused(),
            admitted("a"),
            admitted("b"),
            Err(StoreError::new(StoreErrorKind::Busy, "locked")),
        ];
        let mut runs = vec![true; 2];
        last_of_their_budgets(&batch, &answers, &mut runs);
        assert_eq!(runs, [false, false, true, false, false, true, false]);
    }

    #[tokio::test]
    async fn a_refused_admission_runs_no_then() {
        let worker = StoreWorker::new(gated());
        let (ran_tx, ran) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let ran_tx = ran_tx.clone();
            let ran_tx = std::sync::Mutex::new(ran_tx);
            let then: Then = Arc::new(move |_, _| {
                let _ = ran_tx.lock().map(|tx| tx.send(()));
            });
            let _ = worker.admit_then(limit(1), 1, Some(then)).get().await;
        }
        // The second admission was answered after the first one's `then` had run.
        assert_eq!(ran.try_iter().count(), 1);
    }

    /// A store that does not answer within the deadline: the call is denied under
    /// `--counters-fail closed` and admitted uncounted under `open`.
    #[tokio::test]
    async fn an_admission_past_its_deadline_follows_the_failure_policy() {
        use super::super::guard::{FailMode, GuardedStore};
        for (fail, admitted) in [(FailMode::Closed, false), (FailMode::Open, true)] {
            let store = gated();
            let guarded = Arc::new(GuardedStore::new(store.clone(), "gated", fail));
            let mut worker = StoreWorker::new(guarded);
            worker.answer_within = Duration::from_millis(50);
            // The gate is held by a thread of its own until the answer is in: the store
            // cannot answer in time.
            let (release, released) = std::sync::mpsc::channel::<()>();
            let (held, holding) = std::sync::mpsc::channel::<()>();
            let gate = store.clone();
            let holder = std::thread::spawn(move || {
                let _closed = gate.gate.lock().unwrap();
                let _ = held.send(());
                let _ = released.recv();
            });
            holding.recv().expect("the gate is held");
            let answer = worker.admit(limit(5), 1);
            wait_entered(&store, "the worker never started the admission");
            let got = answer.get().await;
            let _ = release.send(());
            holder.join().expect("the gate's holder");
            match (&got, admitted) {
                (Ok(Admission::Admitted(reservation)), true) => {
                    assert!(reservation.is_empty(), "{fail:?}: counted: {reservation:?}");
                }
                (Err(e), false) => {
                    assert_eq!(e.kind, StoreErrorKind::Timeout, "{fail:?}: {e}");
                }
                _ => panic!("{fail:?}: {got:?}"),
            }
        }
    }

    /// A SQLite store that counts the usage reads asked of it.
    struct CountingReads {
        inner: crate::policy::store::SqliteStore,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl CounterStore for CountingReads {
        fn admit(&self, limits: &[LimitRequest<'_>], now_ms: u64) -> Result<Admission, StoreError> {
            self.inner.admit(limits, now_ms)
        }
        fn admit_many_noting(
            &self,
            calls: &[(&[LimitRequest<'_>], u64)],
            noted: &mut Vec<NotedUsage>,
        ) -> Vec<Result<Admission, StoreError>> {
            self.inner.admit_many_noting(calls, noted)
        }
        fn try_release(&self, reservation: &Reservation) -> Result<(), StoreError> {
            self.inner.try_release(reservation)
        }
        fn usage_of(
            &self,
            key: &CounterKey,
            window_ms: u64,
            now_ms: u64,
        ) -> Result<KeyUsage, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.usage_of(key, window_ms, now_ms)
        }
        fn usage(
            &self,
            counter: &str,
            scope: Scope,
            window_ms: u64,
            now_ms: u64,
        ) -> Result<Vec<KeyUsage>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.inner.usage(counter, scope, window_ms, now_ms)
        }
    }

    /// Admits [`limit`] at `at_ms`; right after, on the worker's thread, reads its budget at
    /// `now_ms` in a window of `window_ms`, as a gateway reads it for its `counters` event.
    async fn admit_and_read(
        worker: &StoreWorker,
        at_ms: u64,
        window_ms: u64,
        now_ms: u64,
    ) -> (Reservation, KeyUsage) {
        let (tx, rx) = oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        let then: Then = Arc::new(move |store, reservation| {
            let key = &reservation.units()[0].key;
            if let Some(tx) = tx.lock().ok().and_then(|mut tx| tx.take()) {
                let _ = tx.send(store.usage_of(key, window_ms, now_ms));
            }
        });
        let reservation = match worker.admit_then(limit(5), at_ms, Some(then)).get().await {
            Ok(Admission::Admitted(reservation)) => reservation,
            other => panic!("not admitted at {at_ms}: {other:?}"),
        };
        let usage = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the usage read ran within 5 s")
            .expect("the usage read answered")
            .expect("the usage read succeeded");
        (reservation, usage)
    }

    #[tokio::test]
    async fn the_usage_read_after_an_admission_is_answered_from_its_transaction_until_a_release() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(CountingReads {
            inner: crate::policy::store::SqliteStore::open(&dir.path().join("c.sqlite3")).unwrap(),
            reads: Default::default(),
        });
        let worker = StoreWorker::new(store.clone());
        let reads = || store.reads.load(Ordering::SeqCst);
        let (first, _) = admit_and_read(&worker, 1_000, 60_000, 1_000).await;
        let (_, usage) = admit_and_read(&worker, 1_500, 60_000, 2_000).await;
        let expected = KeyUsage {
            scope_key: String::new(),
            used: 2,
            next_free_in_ms: Some(59_000),
        };
        assert_eq!((usage, reads()), (expected, 0), "the store was read again");
        // A release may change any budget: a read after it asks the store, and sees it.
        let (released_tx, released) = oneshot::channel();
        worker.run(move |store| {
            store.release(&first);
            let _ = released_tx.send(store.usage_of(&first.units()[0].key, 60_000, 2_000));
        });
        let after = tokio::time::timeout(Duration::from_secs(5), released)
            .await
            .expect("the release ran within 5 s")
            .expect("the release ran")
            .expect("the read after the release succeeded");
        assert_eq!((after.used, reads()), (1, 1));
        // The next admission's note answers again: units at 1,500 and 3,000.
        let (_, usage) = admit_and_read(&worker, 3_000, 60_000, 3_000).await;
        assert_eq!((usage.used, reads()), (2, 1), "the store was read again");
        // Once the oldest unit (1,500) has left the window, the store is asked.
        let (_, usage) = admit_and_read(&worker, 3_500, 60_000, 61_600).await;
        assert_eq!(usage.used, 2);
        assert_eq!(
            reads(),
            2,
            "a unit left the window, yet the store was not asked"
        );
        // So is a read in another window than the admission's.
        let (_, usage) = admit_and_read(&worker, 3_600, 1_000, 3_600).await;
        assert_eq!(
            (usage.used, reads()),
            (3, 3),
            "another window was not asked of the store"
        );
    }

    /// Drops `worker` and the test's `store`, then requires the store thread (the store's
    /// last owner) to end within 5 s; `why` says what it means when it does not.
    fn ends_within_5s(worker: StoreWorker, store: Arc<Gated>, why: &str) {
        let weak = Arc::downgrade(&store);
        drop((worker, store));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while weak.strong_count() > 0 {
            assert!(std::time::Instant::now() < deadline, "{why}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[tokio::test]
    async fn a_spinning_thread_answers_what_comes_while_it_spins_and_after_it_sleeps() {
        let store = gated();
        let worker =
            StoreWorker::spinning(store.clone(), Window::steady(Duration::from_millis(200)));
        let answer = |worker: &StoreWorker, now| {
            let answer = worker.admit(limit(3), now);
            async move { matches!(answer.get().await, Ok(Admission::Admitted(_))) }
        };
        assert!(answer(&worker, 1).await);
        // Within the spin.
        assert!(answer(&worker, 2).await);
        // Long after it: the thread sleeps, and a new admission wakes it.
        std::thread::sleep(Duration::from_millis(400));
        assert!(answer(&worker, 3).await);
        assert!(!answer(&worker, 4).await, "the budget of 3 was not kept");
        // Dropping the worker ends the thread (that it ends a spin at once, not when the
        // spin runs out, is the next test's).
        ends_within_5s(worker, store, "the store thread never ended");
    }

    #[tokio::test]
    async fn a_thread_dropped_while_it_spins_ends_at_once_not_when_the_spin_runs_out() {
        // A spin far longer than the wait below: only seeing its queue closed can end the
        // thread in time.
        let store = gated();
        let worker = StoreWorker::spinning(store.clone(), Window::steady(Duration::from_secs(600)));
        let answer = worker.admit(limit(3), 1);
        assert!(matches!(answer.get().await, Ok(Admission::Admitted(_))));
        ends_within_5s(
            worker,
            store,
            "the store thread spun on with its queue closed",
        );
    }

    #[test]
    fn a_job_that_came_after_the_spin_ran_out_teaches_the_window() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut window = Window::new(Duration::from_millis(200));
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            assert!(tx.blocking_send(Job::Run(Box::new(|_| {}))).is_ok());
            tx
        });
        // The 50 µs look runs out; the job comes 5 ms later, within the cap: it doubles.
        assert!(next_job(&mut rx, &mut window).is_some());
        assert_eq!(window.budget(), Window::START * 2);
        // A job already queued is taken at once: nothing to learn.
        let tx = sender.join().unwrap();
        assert!(tx.blocking_send(Job::Run(Box::new(|_| {}))).is_ok());
        assert!(next_job(&mut rx, &mut window).is_some());
        assert_eq!(window.budget(), Window::START * 2);
    }

    #[tokio::test]
    async fn a_store_that_never_blocks_is_asked_in_place() {
        let worker = StoreWorker::new(Arc::new(MemoryStore::new()));
        let answer = worker.admit(limit(1), 1);
        assert!(answer.is_ready());
        assert!(matches!(answer.get().await, Ok(Admission::Admitted(_))));
    }
}
