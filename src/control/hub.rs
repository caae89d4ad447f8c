//! The event hub: numbers and timestamps events, fans them out to subscribers, and owns the
//! registry of held calls, where the first resolution wins.
//!
//! Fan-out is a bounded `tokio::sync::broadcast` channel: publishing never waits for a
//! subscriber, and a subscriber that falls behind learns how many events it missed.
//!
//! SKELETON (partial): snapshot state (recent calls, counters, policy, tools, totals) lands
//! with issue 4.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use tokio::sync::{broadcast, oneshot};

use crate::wire::{CallEvent, Event, EventKind, GatewayInfo, HoldResolved, ResolvedBy};

/// How many events a subscriber may fall behind before it misses some.
pub const SUBSCRIBER_QUEUE: usize = 4096;

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

/// The hub of one gateway.
#[derive(Debug)]
pub struct Hub {
    info: GatewayInfo,
    next_call: AtomicU64,
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
}

#[derive(Debug, Default)]
struct State {
    seq: u64,
    /// Open holds by call id. A resolved call id stays in `resolved` so a late second
    /// resolution is told "already resolved" rather than "unknown".
    holds: HashMap<String, oneshot::Sender<Resolution>>,
    resolved: std::collections::HashSet<String>,
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
        Arc::new(Hub {
            info,
            next_call: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            events,
        })
    }

    pub fn info(&self) -> &GatewayInfo {
        &self.info
    }

    /// A fresh call id, `<gateway id>-<n>`.
    pub fn next_call_id(&self) -> String {
        let n = self.next_call.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.info.id)
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Numbers, stamps and fans out one event.
    pub fn publish(&self, kind: EventKind) {
        let mut state = self.lock();
        state.seq += 1;
        let event = Event {
            seq: state.seq,
            ts: Utc::now(),
            gateway: self.info.id.clone(),
            kind,
        };
        // Sent under the lock so subscribers see events in seq order. No subscriber is fine.
        let _ = self.events.send(Arc::new(event));
    }

    /// Registers a held call (its `call` event is published by the caller first).
    pub fn hold(&self, call: &CallEvent) -> HoldTicket {
        let (tx, rx) = oneshot::channel();
        self.lock().holds.insert(call.call_id.clone(), tx);
        HoldTicket {
            call_id: call.call_id.clone(),
            rx,
        }
    }

    /// Call ids of the open holds.
    pub fn open_holds(&self) -> Vec<String> {
        self.lock().holds.keys().cloned().collect()
    }

    /// Resolves a held call; the first resolution wins and is published as `hold_resolved`.
    pub fn resolve(&self, call_id: &str, resolution: Resolution) -> Result<(), ResolveError> {
        let tx = {
            let mut state = self.lock();
            match state.holds.remove(call_id) {
                Some(tx) => {
                    state.resolved.insert(call_id.to_owned());
                    tx
                }
                None if state.resolved.contains(call_id) => {
                    return Err(ResolveError::AlreadyResolved(call_id.to_owned()));
                }
                None => return Err(ResolveError::UnknownCall(call_id.to_owned())),
            }
        };
        self.publish(EventKind::HoldResolved(HoldResolved {
            call_id: call_id.to_owned(),
            approved: resolution.approved,
            by: resolution.by,
            operator: resolution.operator.clone(),
            reason: resolution.reason.clone(),
        }));
        // The waiting call may have gone (its task ended); the resolution still stands.
        let _ = tx.send(resolution);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
