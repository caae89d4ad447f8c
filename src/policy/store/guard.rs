//! [`GuardedStore`]: what a gateway does when its counter store does not answer.
//!
//! A shared store (SQLite, Redis) can fail: a disk full, a lock held too long, a Redis that
//! went away. The guard sits between the decision and such a store and makes the failure a
//! policy of its own:
//! - [`FailMode::Closed`] (the default): the error reaches [`crate::policy::Policy::decide`],
//!   which denies calls that have limits and says the store is unavailable. A limit is a
//!   promise; an outage must not be a way around it.
//! - [`FailMode::Open`]: calls are admitted uncounted, with a warning in the log.
//!
//! Either way the operators hear of it once per outage: a log line and a
//! [`crate::wire::StoreStatus`] event when the store stops answering, and again when it
//! answers. Recovery needs nothing: every call asks the store again. Units that could not be
//! given back during an outage (a denied hold, a failed transport) are kept and given back
//! after the next call the store answers, so rollbacks keep their meaning.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{
    Admission, CounterKey, CounterStore, KeyUsage, LimitRequest, NotedUsage, Reservation, Scope,
    StoreError,
};
use crate::wire::StoreStatus;

/// Reservations waiting to be given back, at most; older ones are dropped (their units
/// leave their windows on their own).
const MAX_UNRELEASED: usize = 10_000;

/// What calls with limits get while the counter store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Denied, with a reason saying the counter store is unavailable.
    #[default]
    Closed,
    /// Admitted without being counted, with a warning in the log.
    Open,
}

/// Told of every change of the store's health (down with why, or up again).
pub(crate) type HealthSink = Arc<dyn Fn(&StoreStatus) + Send + Sync>;

/// A store with a failure policy, health reporting and deferred releases.
pub struct GuardedStore {
    inner: Arc<dyn CounterStore>,
    shown: String,
    fail: FailMode,
    healthy: AtomicBool,
    sink: Option<HealthSink>,
    unreleased: Mutex<Vec<Reservation>>,
}

impl std::fmt::Debug for GuardedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStore")
            .field("store", &self.shown)
            .field("fail", &self.fail)
            .field("healthy", &self.healthy)
            .finish_non_exhaustive()
    }
}

impl GuardedStore {
    /// Guards `inner`, shown in messages as `shown` (no secrets in it).
    pub fn new(inner: Arc<dyn CounterStore>, shown: impl Into<String>, fail: FailMode) -> Self {
        GuardedStore {
            inner,
            shown: shown.into(),
            fail,
            healthy: AtomicBool::new(true),
            sink: None,
            unreleased: Mutex::new(Vec::new()),
        }
    }

    /// Tells `sink` of every change of health (a gateway publishes it as an event).
    pub fn with_health_sink(mut self, sink: HealthSink) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Whether the latest call to the store got an answer.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records the result of a call to the store made outside the trait (a start-up ping).
    pub fn observe(&self, result: Result<(), &StoreError>) {
        match result {
            Ok(()) => self.up(),
            Err(e) => self.down(e),
        }
    }

    fn up(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!("counter store {} answers again", self.shown);
            self.tell(StoreStatus {
                store: self.shown.clone(),
                ok: true,
                detail: None,
            });
        }
        self.give_back_unreleased();
    }

    fn down(&self, e: &StoreError) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            let consequence = match self.fail {
                FailMode::Closed => "calls with limits are denied",
                FailMode::Open => "calls with limits are admitted uncounted (--counters-fail open)",
            };
            // A transient failure passes by itself; a permanent one needs a person.
            let until = if e.is_transient() {
                "until it answers again (retried on every such call)"
            } else {
                "until it is fixed: this does not pass by itself"
            };
            tracing::error!("{e}; {consequence} {until}");
            self.tell(StoreStatus {
                store: self.shown.clone(),
                ok: false,
                detail: Some(format!("{e}; {consequence} {until}")),
            });
        }
    }

    fn tell(&self, status: StoreStatus) {
        if let Some(sink) = &self.sink {
            sink(&status);
        }
    }

    fn lock_unreleased(&self) -> std::sync::MutexGuard<'_, Vec<Reservation>> {
        self.unreleased.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give_back_unreleased(&self) {
        let pending = std::mem::take(&mut *self.lock_unreleased());
        if pending.is_empty() {
            return;
        }
        let mut failed = Vec::new();
        for reservation in pending {
            if self.inner.try_release(&reservation).is_err() {
                failed.push(reservation);
            }
        }
        if !failed.is_empty() {
            let mut unreleased = self.lock_unreleased();
            failed.append(&mut unreleased);
            *unreleased = failed;
        }
    }

    fn keep_for_later(&self, reservation: &Reservation) {
        let mut unreleased = self.lock_unreleased();
        if unreleased.len() >= MAX_UNRELEASED {
            unreleased.remove(0);
        }
        unreleased.push(reservation.clone());
    }
}

impl GuardedStore {
    /// Applies the failure policy to one admission's answer (health already recorded).
    fn settle(&self, answer: Result<Admission, StoreError>) -> Result<Admission, StoreError> {
        match (answer, self.fail) {
            (Err(e), FailMode::Open) => {
                tracing::warn!("admitting a call uncounted: {e}");
                Ok(Admission::Admitted(Reservation::default()))
            }
            (answer, _) => answer,
        }
    }

    fn observe_answers(&self, answers: &[Result<Admission, StoreError>]) {
        match answers.iter().find_map(|a| a.as_ref().err()) {
            Some(e) => self.down(e),
            None if !answers.is_empty() => self.up(),
            None => {}
        }
    }
}

impl CounterStore for GuardedStore {
    fn admit(&self, limits: &[LimitRequest<'_>], now_ms: u64) -> Result<Admission, StoreError> {
        let answer = self.inner.admit(limits, now_ms);
        self.observe_answers(std::slice::from_ref(&answer));
        self.settle(answer)
    }

    fn admit_many(
        &self,
        calls: &[(&[LimitRequest<'_>], u64)],
    ) -> Vec<Result<Admission, StoreError>> {
        let answers = self.inner.admit_many(calls);
        self.observe_answers(&answers);
        answers.into_iter().map(|a| self.settle(a)).collect()
    }

    fn admit_many_noting(
        &self,
        calls: &[(&[LimitRequest<'_>], u64)],
        noted: &mut Vec<NotedUsage>,
    ) -> Vec<Result<Admission, StoreError>> {
        let from = noted.len();
        // Units kept for later are given back once the store answers, after the batch: what
        // the batch noted of their budgets would no longer hold.
        let gives_back = !self.lock_unreleased().is_empty();
        let answers = self.inner.admit_many_noting(calls, noted);
        self.observe_answers(&answers);
        if gives_back {
            noted.truncate(from);
        }
        answers.into_iter().map(|a| self.settle(a)).collect()
    }

    fn may_block(&self) -> bool {
        self.inner.may_block()
    }

    fn fails_open(&self) -> bool {
        self.fail == FailMode::Open
    }

    fn try_release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        if reservation.is_empty() {
            return Ok(());
        }
        match self.inner.try_release(reservation) {
            Ok(()) => {
                self.up();
                Ok(())
            }
            Err(e) => {
                self.down(&e);
                self.keep_for_later(reservation);
                Err(e)
            }
        }
    }

    fn usage_of(
        &self,
        key: &CounterKey,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<KeyUsage, StoreError> {
        let result = self.inner.usage_of(key, window_ms, now_ms);
        match &result {
            Ok(_) => self.up(),
            Err(e) => self.down(e),
        }
        result
    }

    fn usage(
        &self,
        counter: &str,
        scope: Scope,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<KeyUsage>, StoreError> {
        let result = self.inner.usage(counter, scope, window_ms, now_ms);
        match &result {
            Ok(_) => self.up(),
            Err(e) => self.down(e),
        }
        result
    }
}
