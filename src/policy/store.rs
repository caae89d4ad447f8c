//! Counters: the store that limits count against, outside the policy.

/// Units a decision took, to give back if the call does not go through.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reservation {
    entries: Vec<(String, u64)>,
}

impl Reservation {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The counter store could not answer; limited calls fail closed.
#[derive(Debug, thiserror::Error)]
#[error("counter store unavailable: {0}")]
pub struct StoreError(pub String);

/// Where limits are counted. Admission of all of a call's limits is atomic.
pub trait CounterStore: Send + Sync {
    /// Gives back the units of a reservation.
    fn release(&self, reservation: &Reservation);
}

/// The in-process store.
#[derive(Debug, Default)]
pub struct MemoryStore {}

impl CounterStore for MemoryStore {
    fn release(&self, reservation: &Reservation) {
        let _ = reservation;
        todo!("issue 2")
    }
}
