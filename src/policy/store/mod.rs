//! Counters: the store that limits count against, kept outside the policy.
//!
//! A policy says which budgets a call counts against ([`LimitRequest`]: a counter name, a
//! scope key, a `max` per rolling `window`); the store keeps the admitted calls' times and
//! answers one question atomically: does every one of these budgets have room right now? If
//! so it takes one unit from each and hands back a [`Reservation`]; if not it takes nothing
//! and says which budget was full and when room comes back.
//!
//! Counters live outside [`super::Policy`] so that reloading a policy never resets them, and
//! the budget (`max`, `window`) comes with each request, so a changed budget applies to the
//! calls already counted.
//!
//! The stores, one file each, all with the same semantics (one test suite runs against all
//! three, `tests/counters_semantics.rs`):
//! - [`memory`]: [`MemoryStore`], in process; the reference implementation.
//! - [`sqlite`]: [`SqliteStore`], a file shared by every gateway process of a user on one
//!   machine and kept across restarts; the default for gateways.
//! - [`redis`]: [`RedisStore`], shared by gateways on many machines (atomic Lua scripts).
//! - [`guard`]: [`GuardedStore`] wraps a shared store: fail closed or open when it does not
//!   answer, tell the operators when it goes down and comes back, give back later the units
//!   it could not give back at once.
//! - [`spec`]: [`StoreSpec`] and [`spec::open`], the one place every gateway command turns
//!   its `--counters` options (parsed in `src/cli/counter_args.rs`) into a store.
//! - [`worker`]: [`StoreWorker`], the thread a gateway's store work runs on, off the async
//!   runtime; admissions that queue up while a transaction runs are decided together in the
//!   next one ([`CounterStore::admit_many`]).
//!
//! Exactness: a unit counted at time `t` is inside a window of length `w` at `now` when
//! `now - w < t`. A call is admitted at `now` only when fewer than `max` counted units lie
//! within `w` of `now` on either side, which guarantees that no span of length `w` ever holds
//! more than `max` units, even when callers' clocks arrive slightly out of order. (With
//! in-order times this is the ordinary rolling window.)

pub(crate) mod guard;
pub(crate) mod memory;
pub(crate) mod redis;
pub(crate) mod spec;
pub(crate) mod sqlite;
pub(crate) mod worker;

use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;
use smol_str::SmolStr;

pub use guard::{FailMode, GuardedStore};
pub use memory::MemoryStore;
pub use redis::RedisStore;
pub(crate) use spec::StoreSpec;
pub use sqlite::SqliteStore;
pub(crate) use worker::Answer;
pub use worker::StoreWorker;

/// Whose budget a counter is: one per grant, one per MCP session, or one for everybody.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Grant,
    Session,
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Grant => "grant",
            Scope::Session => "session",
            Scope::Global => "global",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One budget: a counter name in one scope, for one scope key (the grant, the session, or
/// `""` for global). Owned, for reservations that outlive the call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// Shared with the policy, so a reservation does not copy the name.
    pub counter: Arc<str>,
    pub scope: Scope,
    /// Inline when short (a [`SmolStr`]), as grant and session ids are: a reservation made on
    /// the store's thread and dropped on the runtime's allocates nothing for it.
    pub scope_key: SmolStr,
}

/// "Take one unit from this budget if it has room." Borrows its names from the call and the
/// policy, so asking costs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitRequest<'a> {
    pub counter: &'a Arc<str>,
    pub scope: Scope,
    pub scope_key: &'a str,
    pub max: u64,
    pub window_ms: u64,
}

impl LimitRequest<'_> {
    pub(crate) fn same_budget(&self, other: &LimitRequest<'_>) -> bool {
        self.counter == other.counter
            && self.scope == other.scope
            && self.scope_key == other.scope_key
    }

    /// The owned key of this budget.
    pub fn key(&self) -> CounterKey {
        CounterKey {
            counter: Arc::clone(self.counter),
            scope: self.scope,
            scope_key: SmolStr::new(self.scope_key),
        }
    }
}

/// The budgets of one call, owned: inline for the common one or two, so building, sending
/// and dropping them allocates nothing.
pub(crate) type Limits = SmallVec<[OwnedLimit; 2]>;

/// A [`LimitRequest`] that owns its names, for an admission decided on another thread.
/// The scope key is inline when short (a [`SmolStr`]), as grant and session ids are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedLimit {
    pub counter: Arc<str>,
    pub scope: Scope,
    pub scope_key: SmolStr,
    pub max: u64,
    pub window_ms: u64,
}

impl OwnedLimit {
    /// The borrowed request the stores take.
    pub fn request(&self) -> LimitRequest<'_> {
        LimitRequest {
            counter: &self.counter,
            scope: self.scope,
            scope_key: &self.scope_key,
            max: self.max,
            window_ms: self.window_ms,
        }
    }
}

impl From<LimitRequest<'_>> for OwnedLimit {
    fn from(l: LimitRequest<'_>) -> OwnedLimit {
        OwnedLimit {
            counter: Arc::clone(l.counter),
            scope: l.scope,
            scope_key: SmolStr::new(l.scope_key),
            max: l.max,
            window_ms: l.window_ms,
        }
    }
}

/// One unit taken: which budget, and the time it was counted at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedUnit {
    pub key: CounterKey,
    pub at_ms: u64,
    /// Store-specific identity of the unit (e.g. a sorted-set member); 0 if unused.
    pub token: u64,
}

/// The units of one reservation: inline for the common one (a call with one limit), so such
/// a reservation, made on the store's thread and dropped on the runtime's, costs neither a
/// `malloc` nor a `free` across threads. One, not two: a reservation travels inside every
/// admission's answer and every call in flight, and two inline units would double what
/// each of those moves copies.
pub(crate) type Units = SmallVec<[ReservedUnit; 1]>;

/// Units a decision took, to give back with [`CounterStore::release`] if the call does not
/// go through (a hold denied or timed out, a transport failure). Release it at most once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reservation {
    units: Units,
}

impl Reservation {
    pub fn new(units: impl IntoIterator<Item = ReservedUnit>) -> Reservation {
        Reservation {
            units: units.into_iter().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    pub fn units(&self) -> &[ReservedUnit] {
        &self.units
    }
}

/// The answer to [`CounterStore::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Every budget had room; one unit was taken from each.
    Admitted(Reservation),
    /// `limits[index]` was the first without room; nothing was taken. Room comes back in
    /// `retry_after_ms` (at least 1).
    Refused { index: usize, retry_after_ms: u64 },
}

/// How full one budget is, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    pub scope_key: String,
    /// Units counted within the window.
    pub used: u64,
    /// When the oldest of them leaves the window; `None` when `used` is 0.
    pub next_free_in_ms: Option<u64>,
}

/// How long until a unit counted at `oldest_ms` leaves a window of `window_ms` (at least 1 ms:
/// a unit still counted never reads as already free). Every store reports `next_free_in_ms`
/// through it.
pub(crate) fn leaves_in(oldest_ms: u64, window_ms: u64, now_ms: u64) -> u64 {
    oldest_ms
        .saturating_add(window_ms)
        .saturating_sub(now_ms)
        .max(1)
}

/// How a budget stood right after an admission took a unit from it, read in the admission's
/// own transaction ([`CounterStore::admit_many_noting`]): what a gateway publishes about the
/// budget, without a second read, while it is still exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotedUsage {
    pub key: CounterKey,
    /// The window the budget was asked with.
    pub window_ms: u64,
    /// The time the admission's unit was counted at.
    pub at_ms: u64,
    /// Units counted after `at_ms - window_ms`, the admission's own included.
    pub used: u64,
    /// The time of the oldest of them; `None` when `used` is 0.
    pub oldest_ms: Option<u64>,
}

impl NotedUsage {
    /// What [`CounterStore::usage_of`] would answer for this budget at `now_ms` in a window of
    /// `window_ms`, if nothing but time has passed since the admission: `None` when that is
    /// not certain (another window, a clock behind the admission's, or a unit that has left
    /// the window since, which a fresh read must count out).
    pub fn usage_at(&self, window_ms: u64, now_ms: u64) -> Option<KeyUsage> {
        if window_ms != self.window_ms || now_ms < self.at_ms {
            return None;
        }
        // Units leave the window oldest first: while the oldest is inside, all are.
        let still_inside = self
            .oldest_ms
            .is_none_or(|oldest| oldest.saturating_add(window_ms) > now_ms);
        if !still_inside {
            return None;
        }
        Some(KeyUsage {
            scope_key: self.key.scope_key.to_string(),
            used: self.used,
            next_free_in_ms: self
                .oldest_ms
                .filter(|_| self.used > 0)
                .map(|oldest| leaves_in(oldest, window_ms, now_ms)),
        })
    }
}

/// Why a counter store could not answer, so that a caller can tell a failure that passes by
/// itself from one that needs a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Another process holds the store's lock (SQLite `database is locked`).
    Busy,
    /// The store did not answer in time (a Redis timeout, the store thread behind).
    Timeout,
    /// More admissions wait for the store than its queue holds.
    Overloaded,
    /// The file is not a counter store this version understands (a newer schema, not a
    /// database, corrupt). Does not pass by itself.
    Schema,
    /// Reading or writing failed (disk full, permissions, connection refused).
    Io,
    /// The options name no usable store (a bad URL, a prefix without Redis). Does not pass
    /// by itself.
    Config,
    /// Anything else the store said.
    Other,
}

impl StoreErrorKind {
    /// Whether retrying later may succeed without anyone changing anything.
    pub fn is_transient(self) -> bool {
        !matches!(self, StoreErrorKind::Schema | StoreErrorKind::Config)
    }
}

/// The counter store could not answer; limited calls fail closed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("counter store unavailable: {detail}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    /// What failed, where, and what to do, for people.
    pub detail: String,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, detail: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            detail: detail.into(),
        }
    }

    /// See [`StoreErrorKind::is_transient`].
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }
}

/// Where limits are counted. Thread-safe; admission of all of a call's limits is atomic.
pub trait CounterStore: Send + Sync {
    /// Takes one unit from every budget in `limits` if all have room at `now_ms`, else none.
    /// A budget named twice in `limits` is counted once.
    fn admit(&self, limits: &[LimitRequest<'_>], now_ms: u64) -> Result<Admission, StoreError>;

    /// [`CounterStore::admit`] for several calls, in order, each all-or-nothing as if admitted
    /// alone one after the other. A shared store decides them in one transaction (group
    /// commit); the default admits them one by one.
    fn admit_many(
        &self,
        calls: &[(&[LimitRequest<'_>], u64)],
    ) -> Vec<Result<Admission, StoreError>> {
        calls
            .iter()
            .map(|(limits, now_ms)| self.admit(limits, *now_ms))
            .collect()
    }

    /// [`CounterStore::admit_many`], also noting in `noted` how each budget an admitted call
    /// took a unit from stood after the last such call of the batch, when the store can tell
    /// from the batch's own transaction (a gateway's [`StoreWorker`] publishes that instead of
    /// reading the budget again). The default notes nothing.
    fn admit_many_noting(
        &self,
        calls: &[(&[LimitRequest<'_>], u64)],
        noted: &mut Vec<NotedUsage>,
    ) -> Vec<Result<Admission, StoreError>> {
        let _ = noted;
        self.admit_many(calls)
    }

    /// Whether calls may wait on this store (files, locks, the network): then a gateway asks
    /// it from its [`StoreWorker`] thread, never from the async runtime. An in-memory store
    /// answers in a few hundred nanoseconds and is asked in place.
    fn may_block(&self) -> bool {
        true
    }

    /// Whether a call whose admission gets no answer at all (the worker's deadline passed,
    /// its queue is full) is admitted uncounted rather than denied: `--counters-fail open`,
    /// which only [`GuardedStore`] carries.
    fn fails_open(&self) -> bool {
        false
    }

    /// Gives back the units of a reservation (those not yet out of their window), saying
    /// whether the store answered, so that a caller can give them back later
    /// ([`GuardedStore`] does). Releasing a unit already out of its window does nothing; so
    /// does releasing twice in the shared stores, whose units carry tokens (a retry after a
    /// lost answer is safe there).
    fn try_release(&self, reservation: &Reservation) -> Result<(), StoreError>;

    /// [`CounterStore::try_release`] for callers with nothing better to do when the store
    /// does not answer than to log it.
    fn release(&self, reservation: &Reservation) {
        if let Err(e) = self.try_release(reservation) {
            tracing::warn!("cannot give back counted units: {e}");
        }
    }

    /// Usage of one budget (its own scope key only) within `window_ms`: what a gateway
    /// publishes after a call touched it. Zero units are `used: 0`.
    fn usage_of(
        &self,
        key: &CounterKey,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<KeyUsage, StoreError> {
        let found = self
            .usage(&key.counter, key.scope, window_ms, now_ms)?
            .into_iter()
            .find(|u| u.scope_key == key.scope_key);
        Ok(found.unwrap_or_else(|| KeyUsage {
            scope_key: key.scope_key.to_string(),
            used: 0,
            next_free_in_ms: None,
        }))
    }

    /// Usage of every scope key of `counter` in `scope` that has units within `window_ms`.
    fn usage(
        &self,
        counter: &str,
        scope: Scope,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<KeyUsage>, StoreError>;
}
