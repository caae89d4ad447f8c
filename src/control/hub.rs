//! The event hub: numbers and timestamps events, keeps the snapshot state (recent calls, open
//! holds, counters, policy, tools, totals), fans events out to subscribers, and owns the
//! registry of held calls, where the first resolution wins.

use std::sync::Arc;

use crate::wire::{CallEvent, EventKind, GatewayInfo, ResolvedBy};

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
}

/// A registered hold; resolves with the winning [`Resolution`].
#[derive(Debug)]
pub struct HoldTicket {
    pub call_id: String,
}

impl Hub {
    pub fn new(info: GatewayInfo) -> Arc<Hub> {
        Arc::new(Hub { info })
    }

    pub fn info(&self) -> &GatewayInfo {
        &self.info
    }

    /// A fresh call id, `<gateway id>-<n>`.
    pub fn next_call_id(&self) -> String {
        todo!("issue 4")
    }

    /// Numbers, stamps, records and fans out one event.
    pub fn publish(&self, kind: EventKind) {
        let _ = kind;
        todo!("issue 4")
    }

    /// Registers a held call (its `call` event is published by the caller first).
    pub fn hold(&self, call: &CallEvent) -> HoldTicket {
        let _ = call;
        todo!("issue 4")
    }

    /// Resolves a held call; the first resolution wins and is published as `hold_resolved`.
    pub fn resolve(&self, call_id: &str, resolution: Resolution) -> Result<(), ResolveError> {
        let _ = (call_id, resolution);
        todo!("issue 4")
    }
}

impl HoldTicket {
    /// Waits for the resolution.
    pub async fn wait(self) -> Resolution {
        todo!("issue 4")
    }
}
