//! The event hub: numbers and timestamps events, fans them out to subscribers, keeps the
//! state a (re)connecting client starts from, and owns the registry of held calls, where the
//! first resolution wins.
//!
//! Fan-out is a bounded `tokio::sync::broadcast` channel: publishing never waits for a
//! subscriber, and a subscriber that falls behind learns how many events it missed. Until
//! the first subscriber of a channel (a console, `tail`, metrics), events skip it: a gateway
//! no one watches pays for the snapshot only.
//!
//! The snapshot state (recent calls, open holds, counters, policy, tools, totals) is built
//! only by observing the events published, under the same lock that numbers them. A
//! [`Hub::subscribe_with_snapshot`] therefore returns a snapshot that reflects exactly the
//! events up to its `seq`, and a receiver that yields exactly the events after it.
//!
//! Held calls are capped ([`HoldCaps`]): per grant, so one grant cannot take every other
//! grant's holds, and per gateway process, so memory and the `hello` stay bounded. The caps
//! are checked by [`Hub::reserve_hold`] before a call's decision is published, so a call
//! beyond them is published (and audited) as the denial it is.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Utc};
use smol_str::{SmolStr, SmolStrBuilder};
use tokio::sync::{broadcast, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::wire::{
    CallEvent, CallRecord, CounterState, Event, EventKind, GatewayInfo, HoldResolved, PinChange,
    ResolvedBy, Snapshot, ToolChanged, ToolInfo, Totals, Verdict,
};

/// Most open tool-pin reviews a snapshot carries (as many as a console keeps per gateway).
pub(crate) const MAX_OPEN_REVIEWS: usize = 1000;

/// How many events a subscriber may fall behind before it misses some.
pub const SUBSCRIBER_QUEUE: usize = 4096;

/// How many recent calls the snapshot keeps (the open holds are sent besides, however old).
pub const RECENT_CALLS: usize = 500;

/// Default of `--max-holds-per-grant`.
pub const DEFAULT_MAX_HOLDS_PER_GRANT: usize = 100;

/// Default of `--max-holds`.
pub const DEFAULT_MAX_HOLDS: usize = 1000;

/// How many calls may wait for an operator at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldCaps {
    /// Per grant (`--max-holds-per-grant`).
    pub per_grant: usize,
    /// In the whole gateway process (`--max-holds`).
    pub total: usize,
}

impl Default for HoldCaps {
    fn default() -> Self {
        HoldCaps {
            per_grant: DEFAULT_MAX_HOLDS_PER_GRANT,
            total: DEFAULT_MAX_HOLDS,
        }
    }
}

/// Why a call the policy would hold is denied instead; the text is the call's deny reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldRefused {
    #[error(
        "too many held calls: grant {grant} already has {cap} calls waiting for an operator \
         (--max-holds-per-grant {cap}); approve or deny some, or try again later"
    )]
    GrantFull { grant: String, cap: usize },
    #[error(
        "too many held calls: this gateway already has {cap} calls waiting for an operator \
         (--max-holds {cap}); approve or deny some, or try again later"
    )]
    GatewayFull { cap: usize },
}

/// How many resolved call ids are remembered, so a late second resolution is told "already
/// resolved" rather than "unknown". Older ones are forgotten (and then called unknown).
pub(crate) const REMEMBERED_RESOLUTIONS: usize = 10_000;

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub approved: bool,
    pub by: ResolvedBy,
    pub operator: Option<String>,
    pub reason: Option<String>,
}

/// Why a resolution was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no held call {0} on this gateway")]
    UnknownCall(String),
    #[error("call {0} was already resolved")]
    AlreadyResolved(String),
}

/// Who answers the `accept_pin` command: the gateway's tool pins
/// ([`crate::gateway::pinning::ToolPins`]). A hub without one refuses the command.
pub(crate) trait PinReview: Send + Sync {
    /// Accepts the offered definition of `tool` of `server` whose fingerprint is given; an
    /// error says why nothing was accepted.
    fn accept_pin<'a>(
        &'a self,
        server: &'a str,
        tool: &'a str,
        fingerprint: &'a str,
        operator: Option<String>,
    ) -> futures_util::future::BoxFuture<'a, Result<(), String>>;
}

/// The hub of one gateway.
#[derive(Debug)]
pub struct Hub {
    info: GatewayInfo,
    /// `info.id` as every event carries it (inline: no allocation per event).
    gateway: SmolStr,
    /// Set once by a gateway that pins tools; weak, since the pins publish through the hub.
    pin_review: OnceLock<std::sync::Weak<dyn PinReview>>,
    next_call: AtomicU64,
    state: Mutex<HubState>,
    /// Every event, for in-process subscribers ([`Hub::subscribe`]).
    events: broadcast::Sender<Arc<Event>>,
    /// The same events with their shared JSON text, for websocket clients.
    frames: broadcast::Sender<Arc<Published>>,
}

/// One published event, as every subscriber receives it. Dereferences to the [`Event`]; its
/// JSON text is made once, by the first websocket client that sends it, and shared.
#[derive(Debug)]
pub struct Published {
    event: Arc<Event>,
    json: OnceLock<Utf8Bytes>,
}

impl Published {
    /// The event as a JSON text frame's payload.
    pub fn json(&self) -> Utf8Bytes {
        self.json
            .get_or_init(|| {
                // Events are plain data with string keys; serialising cannot fail.
                serde_json::to_string(&*self.event)
                    .unwrap_or_default()
                    .into()
            })
            .clone()
    }

    pub fn event(&self) -> &Event {
        &self.event
    }
}

impl Deref for Published {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

#[derive(Debug, Default)]
struct HubState {
    seq: u64,
    /// Open holds by call id. Registered when the hold's `call` event is published, so an
    /// operator who answers that event at once finds the hold even if the gateway has not
    /// called [`Hub::hold`] yet; `hold` then picks up the receiving end.
    holds: HashMap<String, OpenHold>,
    /// Order of the open holds: registration number → call id (oldest first).
    hold_order: BTreeMap<u64, String>,
    next_hold: u64,
    /// Open holds per grant, for [`HoldCaps::per_grant`]; a grant with none has no entry.
    held_by_grant: HashMap<String, usize>,
    caps: HoldCaps,
    resolved: HashSet<String>,
    resolved_order: VecDeque<String>,
    /// Resolutions that came before the gateway asked for the hold's ticket, waiting for it.
    /// Bounded with `resolved`: forgotten together.
    early: HashMap<String, oneshot::Receiver<Resolution>>,
    recent: RecentCalls,
    counters: BTreeMap<(String, String, String), CounterState>,
    policy_hash: Option<String>,
    policy_error: Option<Vec<String>>,
    tools: Vec<ToolInfo>,
    upstream_up: bool,
    totals: Totals,
    /// Open tool-pin reviews by (server, tool): each tool's latest `changed` event, removed
    /// by its `accepted`.
    tool_changes: BTreeMap<(String, String), ToolChanged>,
    /// Changes left out of `tool_changes` because it was full.
    reviews_left_out: u64,
    /// The counter store's identity ([`Hub::set_counter_store`]).
    counter_store: Option<String>,
    /// Whether anyone ever subscribed to `Hub::events` (resp. `Hub::frames`). Set under this
    /// lock, as each subscription is taken, and read by the publisher under it: until then
    /// an event skips the channel, whose every send (and `receiver_count`) locks the
    /// channel's own mutex even when no one listens, as in a gateway no console has joined.
    events_subscribed: bool,
    frames_subscribed: bool,
}

#[derive(Debug)]
struct OpenHold {
    order: u64,
    grant: String,
    /// False while only reserved ([`Hub::reserve_hold`]): such a hold is neither listed nor
    /// resolvable until its `call` event is published.
    published: bool,
    /// The hold's `call` event: kept so a snapshot carries every open hold, also those older
    /// than the recent calls.
    event: Option<Arc<Event>>,
    tx: oneshot::Sender<Resolution>,
    /// Taken by [`Hub::hold`]; `None` once taken.
    rx: Option<oneshot::Receiver<Resolution>>,
}

/// The recent calls, oldest first, findable by call id so resolutions and outcomes attach.
///
/// A record keeps the published event itself (shared, not copied: publishing stays cheap);
/// a snapshot copies the records under the lock and builds the calls outside it.
#[derive(Debug, Default)]
struct RecentCalls {
    records: VecDeque<RecentCall>,
    /// Call id → absolute position (`first + index`), hashed cheaply ([`crate::hashing`]):
    /// the ids are the gateway's own, at most [`RECENT_CALLS`] of them.
    positions: crate::hashing::FastMap<SmolStr, u64>,
    /// Absolute position of `records[0]`.
    first: u64,
}

#[derive(Debug, Clone)]
struct RecentCall {
    /// A `call` event.
    event: Arc<Event>,
    /// Boxed: only held calls have one, and a record of three words keeps the 500 records
    /// in 12 KiB (96 bytes a record unboxed: the slot a new call is written to had mostly
    /// left the cache since its last call, 500 calls ago).
    resolution: Option<Box<HoldResolved>>,
    /// The call's `outcome` event, shared like the call's (copied only into a snapshot).
    outcome: Option<Arc<Event>>,
}

impl RecentCall {
    fn record(&self) -> Option<CallRecord> {
        match &self.event.kind {
            EventKind::Call(call) => Some(CallRecord {
                ts: Some(self.event.ts),
                call: call.clone(),
                resolution: self.resolution.as_deref().cloned(),
                outcome: self.outcome.as_ref().and_then(|e| match &e.kind {
                    EventKind::Outcome(outcome) => Some(outcome.clone()),
                    _ => None,
                }),
            }),
            _ => None,
        }
    }
}

impl RecentCalls {
    fn push(&mut self, call_id: &SmolStr, event: Arc<Event>) {
        if self.records.len() == RECENT_CALLS
            && let Some(old) = self.records.pop_front()
        {
            if let EventKind::Call(call) = &old.event.kind {
                self.positions.remove(&call.call_id);
            }
            self.first += 1;
        }
        let position = self.first + self.records.len() as u64;
        self.positions.insert(call_id.clone(), position);
        self.records.push_back(RecentCall {
            event,
            resolution: None,
            outcome: None,
        });
    }

    fn get_mut(&mut self, call_id: &str) -> Option<&mut RecentCall> {
        let position = *self.positions.get(call_id)?;
        let index = usize::try_from(position - self.first).ok()?;
        self.records.get_mut(index)
    }
}

/// A registered hold; resolves with the winning [`Resolution`].
#[derive(Debug)]
pub struct HoldTicket {
    pub call_id: String,
    rx: oneshot::Receiver<Resolution>,
}

impl Hub {
    pub fn new(info: GatewayInfo) -> Arc<Hub> {
        let (events, _) = broadcast::channel(SUBSCRIBER_QUEUE);
        let (frames, _) = broadcast::channel(SUBSCRIBER_QUEUE);
        Arc::new(Hub {
            gateway: SmolStr::new(&info.id),
            info,
            pin_review: OnceLock::new(),
            next_call: AtomicU64::new(1),
            state: Mutex::new(HubState::default()),
            events,
            frames,
        })
    }

    pub fn info(&self) -> &GatewayInfo {
        &self.info
    }

    /// Says which counter store this gateway's counters are in (the snapshot's
    /// `counter_store`): the same text for every gateway sharing the store.
    pub(crate) fn set_counter_store(&self, identity: String) {
        crate::sync::lock(&self.state).counter_store = Some(identity);
    }

    /// Makes `review` answer `accept_pin` (the first one set stays).
    pub(crate) fn set_pin_review(&self, review: std::sync::Weak<dyn PinReview>) {
        let _ = self.pin_review.set(review);
    }

    /// Who answers `accept_pin`, if this gateway pins tools.
    pub(crate) fn pin_review(&self) -> Option<Arc<dyn PinReview>> {
        self.pin_review.get()?.upgrade()
    }

    /// A fresh call id, `<gateway id>-<n>`.
    pub fn next_call_id(&self) -> SmolStr {
        let n = self.next_call.fetch_add(1, Ordering::Relaxed);
        // Once per call: written directly rather than through `format!`, and held inline
        // (a gateway's own id is 6 characters), so the id, its copies in the events and the
        // recent calls' index allocate nothing.
        let mut number = itoa::Buffer::new();
        let number = number.format(n);
        let mut id = SmolStrBuilder::new();
        id.push_str(&self.gateway);
        id.push('-');
        id.push_str(number);
        id.finish()
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        let mut state = self.lock();
        // Under the lock that numbers events, so no event publishes past the flag.
        state.events_subscribed = true;
        self.events.subscribe()
    }

    /// The state now, the `seq` it reflects, and a receiver of exactly the events after it.
    pub fn subscribe_with_snapshot(&self) -> (Snapshot, u64, broadcast::Receiver<Arc<Published>>) {
        let (parts, seq, rx) = {
            let mut state = self.lock();
            // Subscribing under the lock that numbers events: no event falls between.
            let rx = self.frames.subscribe();
            state.frames_subscribed = true;
            (SnapshotParts::copy(&state), state.seq, rx)
        };
        (parts.build(), seq, rx)
    }

    /// The state now (see [`Hub::subscribe_with_snapshot`]).
    pub fn snapshot(&self) -> (Snapshot, u64) {
        let (parts, seq) = {
            let state = self.lock();
            (SnapshotParts::copy(&state), state.seq)
        };
        (parts.build(), seq)
    }

    /// The `seq` of the latest event published (0 before the first).
    pub fn latest_seq(&self) -> u64 {
        self.lock().seq
    }

    /// Numbers, stamps and fans out one event, and folds it into the snapshot state.
    pub fn publish(&self, kind: EventKind) {
        self.publish_at(kind, Utc::now());
    }

    /// [`Hub::publish`] stamped with a time the publisher has read already: a call's decision
    /// and its outcome read the gateway's clock once, for their audit record and their event.
    #[inline]
    pub(crate) fn publish_at(&self, kind: EventKind, ts: DateTime<Utc>) {
        let mut state = self.lock();
        self.publish_locked(&mut state, kind, ts);
    }

    /// This gateway's id, as its events carry it. A call's decision and its outcome build
    /// their event in one expression inside `Arc::new` (`seq` 0) for [`Hub::publish_made`]:
    /// the event (a few hundred bytes) is then copied fewer times on its way into its
    /// allocation than as an [`EventKind`] handed to [`Hub::publish_at`].
    pub(crate) fn gateway_id(&self) -> SmolStr {
        self.gateway.clone()
    }

    /// Numbers (its `seq`) and publishes an event built by its publisher (see
    /// [`Hub::gateway_id`]) and not shared since.
    pub(crate) fn publish_made(&self, mut event: Arc<Event>) {
        let mut state = self.lock();
        state.seq += 1;
        match Arc::get_mut(&mut event) {
            Some(unshared) => unshared.seq = state.seq,
            // Shared by its maker after all: numbered on a copy.
            None => {
                let mut copy = Event::clone(&event);
                copy.seq = state.seq;
                event = Arc::new(copy);
            }
        }
        self.fan_out(&mut state, event);
    }

    // Inlined into its callers: an event (a call's is a few hundred bytes) is then moved
    // once fewer on its way into its `Arc`.
    #[inline]
    fn publish_locked(&self, state: &mut HubState, kind: EventKind, ts: DateTime<Utc>) {
        state.seq += 1;
        let event = Event {
            seq: state.seq,
            ts,
            gateway: self.gateway.clone(),
            kind,
        };
        self.fan_out(state, Arc::new(event));
    }

    /// Folds a numbered event into the snapshot state and sends it to the subscribers.
    #[inline]
    fn fan_out(&self, state: &mut HubState, event: Arc<Event>) {
        state.observe(&event);
        // Sent under the lock so subscribers see events in seq order. No subscriber is fine.
        if state.frames_subscribed && self.frames.receiver_count() > 0 {
            let _ = self.frames.send(Arc::new(Published {
                event: event.clone(),
                json: OnceLock::new(),
            }));
        }
        if state.events_subscribed {
            let _ = self.events.send(event);
        }
    }

    /// Registers a held call (its `call` event is published by the caller first).
    pub fn hold(&self, call: &CallEvent) -> HoldTicket {
        self.hold_call(&call.call_id)
    }

    /// [`Hub::hold`] by the call's id.
    pub fn hold_call(&self, call_id: &str) -> HoldTicket {
        let mut state = self.lock();
        if let Some(rx) = state.early.remove(call_id) {
            return HoldTicket {
                call_id: call_id.to_owned(),
                rx,
            };
        }
        let already_resolved = state.resolved.contains(call_id);
        let rx = match state.holds.get_mut(call_id) {
            Some(open) => open
                .rx
                .take()
                .unwrap_or_else(|| refused(format!("call {call_id} is already held once"))),
            // Resolved before this ticket was asked for, and the resolution went to an
            // earlier ticket: fail closed for this one.
            None if already_resolved => refused(format!("call {call_id} was already resolved")),
            // Held without a published event (nothing to show), so resolvable at once.
            None => {
                let rx = state.open_hold(call_id, "");
                if let Some(open) = state.holds.get_mut(call_id) {
                    open.published = true;
                }
                rx
            }
        };
        HoldTicket {
            call_id: call_id.to_owned(),
            rx,
        }
    }

    /// Call ids of the open holds, oldest first.
    pub fn open_holds(&self) -> Vec<String> {
        self.lock().published_holds().cloned().collect()
    }

    /// Sets the caps on held calls (default [`HoldCaps::default`]); holds already open stay.
    pub fn set_hold_caps(&self, caps: HoldCaps) {
        self.lock().caps = caps;
    }

    /// Registers call `call_id` of `grant` as held if the caps leave room: called once the
    /// policy says hold and before the call's event is published, so a call beyond the caps
    /// is published as denied. The hold is resolvable once its `call` event is published.
    pub fn reserve_hold(&self, call_id: &str, grant: &str) -> Result<(), HoldRefused> {
        let mut state = self.lock();
        let caps = state.caps;
        if state.holds.len() >= caps.total {
            return Err(HoldRefused::GatewayFull { cap: caps.total });
        }
        if state.held_by_grant.get(grant).copied().unwrap_or(0) >= caps.per_grant {
            return Err(HoldRefused::GrantFull {
                grant: grant.to_owned(),
                cap: caps.per_grant,
            });
        }
        let rx = state.open_hold(call_id, grant);
        if let Some(open) = state.holds.get_mut(call_id) {
            open.rx = Some(rx);
        }
        Ok(())
    }

    /// Resolves a held call; the first resolution wins and is published as `hold_resolved`.
    pub fn resolve(&self, call_id: &str, resolution: Resolution) -> Result<(), ResolveError> {
        let mut state = self.lock();
        // A hold only reserved is not known to anyone yet: its event comes next.
        let published = state.holds.get(call_id).is_some_and(|h| h.published);
        let Some(mut open) = published.then(|| state.holds.remove(call_id)).flatten() else {
            return Err(if state.resolved.contains(call_id) {
                ResolveError::AlreadyResolved(call_id.to_owned())
            } else {
                ResolveError::UnknownCall(call_id.to_owned())
            });
        };
        state.hold_order.remove(&open.order);
        state.release_grant(&open.grant);
        state.remember_resolved(call_id);
        // Published under the lock that removed the hold: every subscriber sees exactly one
        // `hold_resolved` per call, before anything published after it.
        self.publish_locked(
            &mut state,
            EventKind::HoldResolved(HoldResolved {
                call_id: call_id.to_owned(),
                approved: resolution.approved,
                by: resolution.by,
                operator: resolution.operator.clone(),
                reason: resolution.reason.clone(),
            }),
            Utc::now(),
        );
        // The waiting call may have gone (its task ended); the resolution still stands.
        let _ = open.tx.send(resolution);
        if let Some(rx) = open.rx.take() {
            state.early.insert(call_id.to_owned(), rx);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        crate::sync::lock(&self.state)
    }
}

impl HubState {
    /// Folds one published event into the snapshot state.
    fn observe(&mut self, event: &Arc<Event>) {
        match &event.kind {
            EventKind::Call(call) => {
                match call.decision {
                    Verdict::Allow => self.totals.allow += 1,
                    Verdict::Deny => self.totals.deny += 1,
                    Verdict::RateLimited => self.totals.rate_limited += 1,
                    Verdict::Hold => {
                        self.totals.hold += 1;
                        if !self.holds.contains_key(call.call_id.as_str())
                            && !self.resolved.contains(call.call_id.as_str())
                        {
                            // Published without a reservation (the caps are the publisher's
                            // to check): registered now, kept for the ticket `Hub::hold` hands
                            // out.
                            let rx = self.open_hold(&call.call_id, &call.grant);
                            if let Some(open) = self.holds.get_mut(call.call_id.as_str()) {
                                open.rx = Some(rx);
                            }
                        }
                        if let Some(open) = self.holds.get_mut(call.call_id.as_str()) {
                            open.published = true;
                            open.event = Some(event.clone());
                        }
                    }
                }
                self.recent.push(&call.call_id, event.clone());
            }
            EventKind::HoldResolved(resolved) => {
                if let Some(record) = self.recent.get_mut(&resolved.call_id) {
                    record.resolution = Some(Box::new(resolved.clone()));
                }
            }
            EventKind::Outcome(outcome) => {
                if let Some(record) = self.recent.get_mut(&outcome.call_id) {
                    record.outcome = Some(event.clone());
                }
            }
            EventKind::PolicyApplied(applied) => {
                self.policy_hash = Some(applied.hash.clone());
                self.policy_error = None;
            }
            EventKind::PolicyRejected(rejected) => {
                if rejected.kept_hash.is_some() {
                    self.policy_hash.clone_from(&rejected.kept_hash);
                }
                self.policy_error = Some(rejected.diagnostics.clone());
            }
            EventKind::Counters(counters) => {
                // A `counters` event carries the budgets that changed; the snapshot keeps the
                // latest state of every budget seen.
                for c in &counters.counters {
                    self.counters.insert(
                        (c.counter.clone(), c.scope.clone(), c.key.clone()),
                        c.clone(),
                    );
                }
            }
            EventKind::Upstream(upstream) => self.upstream_up = upstream.up,
            EventKind::ToolChanged(change) => {
                let key = (change.server.clone(), change.tool.clone());
                match change.change {
                    // A server decides how many tools change and how large their
                    // definitions are (up to 256 KiB each): the snapshot keeps a bounded
                    // number; the events themselves still reach every client live.
                    PinChange::Changed
                        if self.tool_changes.len() >= MAX_OPEN_REVIEWS
                            && !self.tool_changes.contains_key(&key) =>
                    {
                        self.reviews_left_out += 1;
                        if self.reviews_left_out == 1 {
                            tracing::warn!(
                                "more than {MAX_OPEN_REVIEWS} tools changed and not reviewed: \
                                 later ones are left out of the snapshot new consoles get \
                                 (`toolgate pins list` shows every pin)"
                            );
                        }
                    }
                    PinChange::Changed => {
                        self.tool_changes.insert(key, change.clone());
                    }
                    PinChange::Accepted => {
                        self.tool_changes.remove(&key);
                    }
                }
            }
            EventKind::Tools(tools) => self.tools.clone_from(&tools.tools),
            EventKind::Store(_)
            | EventKind::SessionRefused(_)
            | EventKind::Grants(_)
            | EventKind::Audit(_)
            | EventKind::Hello(_)
            | EventKind::Missed(_)
            | EventKind::Reply(_) => {}
        }
    }

    /// Registers an open hold of `grant` (not yet published) and returns the receiving end of
    /// its resolution.
    fn open_hold(&mut self, call_id: &str, grant: &str) -> oneshot::Receiver<Resolution> {
        let (tx, rx) = oneshot::channel();
        let order = self.next_hold;
        self.next_hold += 1;
        self.hold_order.insert(order, call_id.to_owned());
        *self.held_by_grant.entry(grant.to_owned()).or_default() += 1;
        self.holds.insert(
            call_id.to_owned(),
            OpenHold {
                order,
                grant: grant.to_owned(),
                published: false,
                event: None,
                tx,
                rx: None,
            },
        );
        rx
    }

    /// One hold of `grant` fewer.
    fn release_grant(&mut self, grant: &str) {
        if let Some(n) = self.held_by_grant.get_mut(grant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.held_by_grant.remove(grant);
            }
        }
    }

    /// Call ids of the published open holds, oldest first.
    fn published_holds(&self) -> impl Iterator<Item = &String> {
        self.hold_order
            .values()
            .filter(|id| self.holds.get(*id).is_some_and(|h| h.published))
    }

    fn remember_resolved(&mut self, call_id: &str) {
        if self.resolved_order.len() == REMEMBERED_RESOLUTIONS
            && let Some(old) = self.resolved_order.pop_front()
        {
            self.resolved.remove(&old);
            self.early.remove(&old);
        }
        self.resolved.insert(call_id.to_owned());
        self.resolved_order.push_back(call_id.to_owned());
    }
}

/// A receiver that yields a denial at once.
fn refused(reason: String) -> oneshot::Receiver<Resolution> {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(Resolution {
        approved: false,
        by: ResolvedBy::Operator,
        operator: None,
        reason: Some(reason),
    });
    rx
}

/// What a snapshot is made of, copied cheaply under the lock and built outside it.
struct SnapshotParts {
    /// The open holds older than the recent calls, then the recent calls: oldest first.
    calls: Vec<RecentCall>,
    rest: Snapshot,
}

impl SnapshotParts {
    fn copy(state: &HubState) -> SnapshotParts {
        // Every call outside the recent ones was published before all of them.
        let mut calls: Vec<RecentCall> = state
            .published_holds()
            .filter(|id| !state.recent.positions.contains_key(id.as_str()))
            .filter_map(|id| state.holds.get(id)?.event.clone())
            .map(|event| RecentCall {
                event,
                resolution: None,
                outcome: None,
            })
            .collect();
        // Holds are registered just before their event is published: order by publication.
        calls.sort_by_key(|c| c.event.seq);
        calls.extend(state.recent.records.iter().cloned());
        SnapshotParts {
            calls,
            rest: Snapshot {
                calls: Vec::new(),
                holds: state.published_holds().cloned().collect(),
                counters: state.counters.values().cloned().collect(),
                policy_hash: state.policy_hash.clone(),
                policy_error: state.policy_error.clone(),
                tools: state.tools.clone(),
                upstream_up: state.upstream_up,
                totals: state.totals,
                tool_changes: state.tool_changes.values().cloned().collect(),
                counter_store: state.counter_store.clone(),
            },
        }
    }

    fn build(self) -> Snapshot {
        Snapshot {
            calls: self.calls.iter().filter_map(RecentCall::record).collect(),
            ..self.rest
        }
    }
}

impl HoldTicket {
    /// Waits for the resolution. If the hub is dropped first, the call is denied (shutdown).
    pub async fn wait(self) -> Resolution {
        self.rx.await.unwrap_or(Resolution {
            approved: false,
            by: ResolvedBy::Shutdown,
            operator: None,
            reason: Some("the gateway shut down".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Outcome, PolicyApplied, PolicyRejected};
    use serde_json::json;

    fn hub() -> Arc<Hub> {
        Hub::new(GatewayInfo {
            id: "g1".into(),
            pid: 1,
            version: "0".into(),
            grant: "ci".into(),
            server: "srv".into(),
            policy: "/p.json".into(),
            started_at: Utc::now(),
        })
    }

    fn call(hub: &Hub, decision: Verdict) -> CallEvent {
        CallEvent {
            call_id: hub.next_call_id(),
            tool: "echo".into(),
            grant: "ci".into(),
            session: "s".into(),
            server: "srv".into(),
            decision,
            rule: "/default".into(),
            reason: Default::default(),
            args: json!({}).into(),
            args_truncated: false,
            retry_after_ms: None,
            hold_deadline: None,
            shadow: None,
        }
    }

    fn by_operator(approved: bool) -> Resolution {
        Resolution {
            approved,
            by: ResolvedBy::Operator,
            operator: None,
            reason: None,
        }
    }

    /// Events published while no one has subscribed skip the channels, but still enter the
    /// snapshot; subscribers that join later get every event after that, in order.
    #[test]
    fn subscribers_joining_after_unheard_events_get_every_later_one() {
        let hub = hub();
        hub.publish(EventKind::Call(call(&hub, Verdict::Allow)));
        hub.publish(EventKind::Call(call(&hub, Verdict::Deny)));
        let mut events = hub.subscribe();
        let (snapshot, seq, mut frames) = hub.subscribe_with_snapshot();
        assert_eq!((seq, snapshot.calls.len()), (2, 2));
        hub.publish(EventKind::Call(call(&hub, Verdict::Allow)));
        hub.publish(EventKind::Call(call(&hub, Verdict::Deny)));
        for expected in [3, 4] {
            assert_eq!(events.try_recv().expect("an event").seq, expected);
            assert_eq!(frames.try_recv().expect("a frame").seq, expected);
        }
        assert!(events.try_recv().is_err() && frames.try_recv().is_err());
        // A subscriber gone and a new one later: still delivered.
        drop(frames);
        let (_, _, mut again) = hub.subscribe_with_snapshot();
        hub.publish(EventKind::Call(call(&hub, Verdict::Allow)));
        assert_eq!(again.try_recv().expect("a frame").seq, 5);
        assert_eq!(events.try_recv().expect("an event").seq, 5);
    }

    /// An event built by its publisher is numbered in turn with the others, and one that
    /// its maker still shares is numbered on a copy: the maker's own stays as it was.
    #[test]
    fn events_built_by_their_publisher_are_numbered_in_turn() {
        let hub = hub();
        let mut events = hub.subscribe();
        let made = |kind| {
            Arc::new(Event {
                seq: 0,
                ts: Utc::now(),
                gateway: hub.gateway_id(),
                kind,
            })
        };
        let first = call(&hub, Verdict::Allow);
        hub.publish_made(made(EventKind::Call(first.clone())));
        hub.publish(EventKind::Call(call(&hub, Verdict::Deny)));
        let kept = made(EventKind::Outcome(Outcome {
            call_id: first.call_id.clone(),
            latency_us: 7,
            error: false,
            summary: None,
        }));
        hub.publish_made(kept.clone());
        assert_eq!(kept.seq, 0, "the maker's shared event was changed");
        let seqs: Vec<(u64, SmolStr)> = (0..3)
            .map(|_| {
                let event = events.try_recv().expect("three events published");
                (event.seq, event.gateway.clone())
            })
            .collect();
        assert_eq!(seqs, [(1, "g1".into()), (2, "g1".into()), (3, "g1".into())]);
        let (snap, seq) = hub.snapshot();
        assert_eq!(seq, 3);
        assert_eq!(snap.calls[0].call, first);
        assert_eq!(
            snap.calls[0].outcome.as_ref().map(|o| o.latency_us),
            Some(7)
        );
    }

    #[test]
    fn snapshot_attaches_resolution_and_outcome_to_their_call() {
        let hub = hub();
        let held = call(&hub, Verdict::Hold);
        hub.publish(EventKind::Call(held.clone()));
        let _ticket = hub.hold(&held);
        hub.resolve(&held.call_id, by_operator(true)).unwrap();
        hub.publish(EventKind::Outcome(Outcome {
            call_id: held.call_id.clone(),
            latency_us: 5,
            error: false,
            summary: None,
        }));
        let (snap, seq) = hub.snapshot();
        assert_eq!(seq, 3);
        assert_eq!(snap.calls.len(), 1);
        assert!(snap.calls[0].resolution.as_ref().unwrap().approved);
        assert_eq!(snap.calls[0].outcome.as_ref().unwrap().latency_us, 5);
        assert!(snap.holds.is_empty());
        assert_eq!(snap.totals.hold, 1);
    }

    #[test]
    fn recent_calls_are_bounded_and_keep_the_newest() {
        let hub = hub();
        for _ in 0..RECENT_CALLS + 10 {
            hub.publish(EventKind::Call(call(&hub, Verdict::Allow)));
        }
        let (snap, _) = hub.snapshot();
        assert_eq!(snap.calls.len(), RECENT_CALLS);
        assert_eq!(snap.calls[0].call.call_id, "g1-11");
        assert_eq!(snap.totals.allow, (RECENT_CALLS + 10) as u64);
    }

    #[test]
    fn a_recent_call_s_record_is_three_words() {
        // Every call writes one into the ring of 500, whose slots left the cache since the
        // call 500 ago: a larger record (a hold's resolution inline) costs cache misses.
        assert_eq!(
            std::mem::size_of::<RecentCall>(),
            3 * std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn open_holds_are_listed_oldest_first() {
        let hub = hub();
        let calls: Vec<_> = (0..3).map(|_| call(&hub, Verdict::Hold)).collect();
        for c in &calls {
            hub.publish(EventKind::Call(c.clone()));
        }
        hub.resolve(&calls[1].call_id, by_operator(false)).unwrap();
        assert_eq!(
            hub.open_holds(),
            vec![calls[0].call_id.clone(), calls[2].call_id.clone()]
        );
        assert_eq!(hub.snapshot().0.holds, hub.open_holds());
    }

    #[tokio::test]
    async fn a_resolution_before_the_ticket_is_taken_reaches_the_ticket() {
        let hub = hub();
        let held = call(&hub, Verdict::Hold);
        hub.publish(EventKind::Call(held.clone()));
        hub.resolve(&held.call_id, by_operator(true)).unwrap();
        let ticket = hub.hold(&held);
        assert!(ticket.wait().await.approved);
    }

    #[test]
    fn second_resolution_is_refused_as_already_resolved() {
        let hub = hub();
        let held = call(&hub, Verdict::Hold);
        hub.publish(EventKind::Call(held.clone()));
        let _ticket = hub.hold(&held);
        hub.resolve(&held.call_id, by_operator(true)).unwrap();
        assert_eq!(
            hub.resolve(&held.call_id, by_operator(false)),
            Err(ResolveError::AlreadyResolved(held.call_id.to_string()))
        );
        assert_eq!(
            hub.resolve("g1-999", by_operator(false)),
            Err(ResolveError::UnknownCall("g1-999".into()))
        );
    }

    #[test]
    fn the_snapshot_says_which_counter_store_the_counters_are_in() {
        let hub = hub();
        assert_eq!(hub.snapshot().0.counter_store, None);
        hub.set_counter_store("redis://10.0.0.9:6379/0".into());
        assert_eq!(
            hub.snapshot().0.counter_store.as_deref(),
            Some("redis://10.0.0.9:6379/0")
        );
    }

    #[test]
    fn policy_rejection_keeps_the_hash_in_force_and_records_the_error() {
        let hub = hub();
        hub.publish(EventKind::PolicyApplied(PolicyApplied {
            path: "/p.json".into(),
            hash: "abc".into(),
        }));
        hub.publish(EventKind::PolicyRejected(PolicyRejected {
            path: "/p.json".into(),
            diagnostics: vec!["bad".into()],
            kept_hash: Some("abc".into()),
        }));
        let (snap, _) = hub.snapshot();
        assert_eq!(snap.policy_hash.as_deref(), Some("abc"));
        assert_eq!(snap.policy_error, Some(vec!["bad".into()]));
        hub.publish(EventKind::PolicyApplied(PolicyApplied {
            path: "/p.json".into(),
            hash: "def".into(),
        }));
        assert_eq!(hub.snapshot().0.policy_error, None);
    }

    /// Decides a held call the way the gateway does: reserve, then publish.
    fn reserve_and_publish(hub: &Hub, grant: &str) -> Result<CallEvent, HoldRefused> {
        let mut held = call(hub, Verdict::Hold);
        held.grant = grant.into();
        hub.reserve_hold(&held.call_id, grant)?;
        hub.publish(EventKind::Call(held.clone()));
        Ok(held)
    }

    #[test]
    fn a_grant_at_its_hold_cap_is_refused_while_another_grant_is_still_held() {
        let hub = hub();
        hub.set_hold_caps(HoldCaps {
            per_grant: 2,
            total: 10,
        });
        let first = reserve_and_publish(&hub, "greedy").unwrap();
        reserve_and_publish(&hub, "greedy").unwrap();
        assert_eq!(
            reserve_and_publish(&hub, "greedy").unwrap_err(),
            HoldRefused::GrantFull {
                grant: "greedy".into(),
                cap: 2
            }
        );
        reserve_and_publish(&hub, "other").expect("another grant still gets its hold");

        // A resolution gives the grant its slot back.
        hub.resolve(&first.call_id, by_operator(false)).unwrap();
        reserve_and_publish(&hub, "greedy").expect("room again after a resolution");
    }

    #[test]
    fn the_gateway_wide_hold_cap_counts_every_grant() {
        let hub = hub();
        hub.set_hold_caps(HoldCaps {
            per_grant: 10,
            total: 3,
        });
        for grant in ["a", "b", "c"] {
            reserve_and_publish(&hub, grant).unwrap();
        }
        assert_eq!(
            reserve_and_publish(&hub, "d").unwrap_err(),
            HoldRefused::GatewayFull { cap: 3 }
        );
        let message = HoldRefused::GatewayFull { cap: 3 }.to_string();
        assert!(message.contains("--max-holds 3"), "{message}");
    }

    #[test]
    fn a_reserved_hold_is_neither_listed_nor_resolvable_before_its_event() {
        let hub = hub();
        let held = call(&hub, Verdict::Hold);
        hub.reserve_hold(&held.call_id, "ci").unwrap();
        assert!(hub.open_holds().is_empty());
        assert!(hub.snapshot().0.holds.is_empty());
        assert_eq!(
            hub.resolve(&held.call_id, by_operator(true)),
            Err(ResolveError::UnknownCall(held.call_id.to_string()))
        );
        hub.publish(EventKind::Call(held.clone()));
        assert_eq!(hub.open_holds(), vec![held.call_id.clone()]);
        hub.resolve(&held.call_id, by_operator(true)).unwrap();
    }

    #[test]
    fn a_snapshot_carries_every_open_hold_and_only_the_recent_calls() {
        let hub = hub();
        let old = reserve_and_publish(&hub, "ci").unwrap();
        for _ in 0..RECENT_CALLS + 50 {
            hub.publish(EventKind::Call(call(&hub, Verdict::Allow)));
        }
        let (snap, _) = hub.snapshot();
        assert_eq!(snap.holds, vec![old.call_id.clone()]);
        assert_eq!(snap.calls.len(), RECENT_CALLS + 1);
        assert_eq!(
            snap.calls[0].call.call_id, old.call_id,
            "the old hold comes first"
        );
        assert!(
            snap.calls[1..]
                .iter()
                .all(|r| r.call.decision == Verdict::Allow)
        );
    }

    #[test]
    fn remembered_resolutions_are_bounded() {
        let hub = hub();
        for _ in 0..REMEMBERED_RESOLUTIONS + 5 {
            let held = call(&hub, Verdict::Hold);
            hub.publish(EventKind::Call(held.clone()));
            hub.resolve(&held.call_id, by_operator(true)).unwrap();
        }
        let state = hub.lock();
        assert_eq!(state.resolved.len(), REMEMBERED_RESOLUTIONS);
        assert_eq!(state.resolved_order.len(), REMEMBERED_RESOLUTIONS);
    }

    #[test]
    fn open_tool_reviews_in_the_snapshot_are_capped_and_acceptance_makes_room() {
        let hub = hub();
        let change = |tool: String, change: PinChange| {
            EventKind::ToolChanged(ToolChanged {
                server: "s".into(),
                tool,
                change,
                pinned_fingerprint: "1".repeat(64),
                offered_fingerprint: "2".repeat(64),
                pinned: serde_json::json!({}),
                offered: serde_json::json!({}),
                quarantined: true,
                flags: vec![],
                operator: None,
            })
        };
        for i in 0..MAX_OPEN_REVIEWS + 5 {
            hub.publish(change(format!("t{i:05}"), PinChange::Changed));
        }
        let open = |hub: &Hub| hub.subscribe_with_snapshot().0.tool_changes.len();
        assert_eq!(open(&hub), MAX_OPEN_REVIEWS);
        // A newer change of a tool already listed replaces it; an acceptance makes room.
        hub.publish(change("t00000".into(), PinChange::Changed));
        assert_eq!(open(&hub), MAX_OPEN_REVIEWS);
        hub.publish(change("t00001".into(), PinChange::Accepted));
        hub.publish(change("late".into(), PinChange::Changed));
        let snapshot = hub.subscribe_with_snapshot().0;
        assert_eq!(snapshot.tool_changes.len(), MAX_OPEN_REVIEWS);
        assert!(snapshot.tool_changes.iter().any(|c| c.tool == "late"));
        assert!(!snapshot.tool_changes.iter().any(|c| c.tool == "t00001"));
    }
}
