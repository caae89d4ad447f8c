//! Who may hold a connection to the event websocket, and for how long without a token.
//!
//! Two pools, so that sockets nobody authenticated cannot crowd out operators: at most
//! [`MAX_HANDSHAKING`] connections may be in their handshake at once, and at most
//! [`MAX_OPERATORS`] may be open after presenting the token. A connection gets
//! [`AUTH_DEADLINE`] to present it (see `server.rs`).
//!
//! A new connection always gets a handshake slot: when all are taken, the oldest handshake is
//! shed (its socket closed). Another local user holding idle or half-sent sockets therefore
//! only ever holds the oldest slots, and an operator's handshake, which completes in a moment
//! on loopback, is not kept waiting behind them. Refusing the newcomer instead would let a
//! few idle sockets, renewed every [`AUTH_DEADLINE`], lock every operator out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Most connections served at once after presenting the token; more are answered 503.
pub const MAX_OPERATORS: usize = 128;

/// Most connections in their handshake at once; a new one beyond this sheds the oldest.
pub const MAX_HANDSHAKING: usize = 32;

/// How long a connection has to complete its handshake with the token before it is closed.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(2);

/// At most one warning about shed handshakes per this long: a flood must not flood the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The two pools of one event websocket.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    handshaking: Arc<Mutex<Handshaking>>,
    operators: Arc<Semaphore>,
    max_handshaking: usize,
}

#[derive(Debug, Default)]
struct Handshaking {
    next: u64,
    /// Handshakes in progress, oldest first; dropping a sender sheds that connection.
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
    /// Handshakes shed since the last warning, and when that was.
    shed_since_warning: u64,
    warned_at: Option<Instant>,
}

/// A connection's handshake slot; given back when dropped.
#[derive(Debug)]
pub(crate) struct Handshake {
    id: u64,
    shed: oneshot::Receiver<()>,
    handshaking: Arc<Mutex<Handshaking>>,
}

impl Admission {
    pub(crate) fn new(max_handshaking: usize, max_operators: usize) -> Admission {
        Admission {
            handshaking: Arc::default(),
            operators: Arc::new(Semaphore::new(max_operators)),
            max_handshaking: max_handshaking.max(1),
        }
    }

    /// A handshake slot for a new connection, shedding the oldest handshake if all are taken.
    pub(crate) fn handshake(&self) -> Handshake {
        let (tx, rx) = oneshot::channel();
        let mut pool = lock(&self.handshaking);
        while pool.queue.len() >= self.max_handshaking {
            // Dropping its sender wakes the shed connection, which closes its socket.
            if pool.queue.pop_front().is_some() {
                pool.shed_since_warning += 1;
            }
        }
        if pool.shed_since_warning > 0 && pool.warned_at.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                "all {} handshake slots of the event websocket are taken by connections that \
                 have not authenticated (a local process opening sockets it does not use?); \
                 closing the oldest ({} since the last warning)",
                self.max_handshaking,
                pool.shed_since_warning
            );
            pool.shed_since_warning = 0;
            pool.warned_at = Some(Instant::now());
        }
        let id = pool.next;
        pool.next += 1;
        pool.queue.push_back((id, tx));
        Handshake {
            id,
            shed: rx,
            handshaking: self.handshaking.clone(),
        }
    }

    /// An operator slot, when one is free; held for as long as the connection is open.
    pub(crate) fn operator(&self) -> Option<OwnedSemaphorePermit> {
        self.operators.clone().try_acquire_owned().ok()
    }

    /// How many handshakes are in progress.
    #[cfg(test)]
    pub(crate) fn handshaking(&self) -> usize {
        lock(&self.handshaking).queue.len()
    }
}

impl Handshake {
    /// Resolves when this handshake was shed to make room for a newer one.
    pub(crate) async fn shed(&mut self) {
        // Only a dropped sender completes it: nothing is ever sent.
        let _ = (&mut self.shed).await;
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut pool = lock(&self.handshaking);
        if let Some(at) = pool.queue.iter().position(|(id, _)| *id == self.id) {
            pool.queue.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_handshake_beyond_the_cap_sheds_the_oldest() {
        let admission = Admission::new(2, 1);
        let mut first = admission.handshake();
        let _second = admission.handshake();
        let _third = admission.handshake();
        assert_eq!(admission.handshaking(), 2);
        tokio::time::timeout(Duration::from_secs(5), first.shed())
            .await
            .expect("the oldest handshake is shed");
    }

    #[test]
    fn a_finished_handshake_gives_its_slot_back() {
        let admission = Admission::new(2, 1);
        let first = admission.handshake();
        assert_eq!(admission.handshaking(), 1);
        drop(first);
        assert_eq!(admission.handshaking(), 0);
    }

    #[test]
    fn operator_slots_are_capped_and_given_back() {
        let admission = Admission::new(1, 2);
        let a = admission.operator().expect("first slot");
        let _b = admission.operator().expect("second slot");
        assert!(admission.operator().is_none(), "a third is refused");
        drop(a);
        assert!(
            admission.operator().is_some(),
            "a slot given back is free again"
        );
    }
}
