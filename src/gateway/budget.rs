//! Byte budgets: what a queue between a reader and a writer may hold, in bytes.
//!
//! A queue bounded only by its count of messages holds count × `--max-message` when a peer
//! stops reading while the other side sends large messages. A [`ByteBudget`] bounds the
//! bytes instead: a line is charged before it is queued ([`ByteBudget::charge`] waits for
//! room, which is the backpressure: the reader that waits stops reading its peer), and the
//! [`Charge`] travels with the line and gives its bytes back when dropped — after the
//! writer wrote it, or when the queue is dropped with it, or when sending it failed.
//!
//! Permits are bytes; a request is a `u32`, so a budget is at most 4 GiB (`--max-message`
//! is at most 1 GiB: a queue's budget at most 2 GiB + 64 KiB). A charge is never larger than
//! the whole budget, so a single line always gets through once the queue has drained:
//! nothing waits forever on its own size. An empty line costs one byte. Cost per line: one
//! semaphore acquire and one release (an atomic on the fast path).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};

/// Room beyond the messages themselves: errors and notes the gateway writes, a re-encoded
/// `tools/list`.
const SLACK: usize = 64 * 1024;

/// The bytes one direction of one connection may hold in its queue.
#[derive(Debug, Clone)]
pub(crate) struct ByteBudget {
    permits: Arc<Semaphore>,
    bytes: u32,
}

/// Bytes taken from a [`ByteBudget`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    permit: OwnedSemaphorePermit,
}

impl Charge {
    /// Takes `other`'s bytes into this charge, so both are given back at once (one lock of
    /// the budget's waiters instead of two); `Err(other)` if it is another budget's.
    pub(crate) fn absorb(&mut self, other: Charge) -> Result<(), Charge> {
        if !Arc::ptr_eq(self.permit.semaphore(), other.permit.semaphore()) {
            return Err(other);
        }
        self.permit.merge(other.permit);
        Ok(())
    }
}

impl ByteBudget {
    /// A budget of `bytes` (at least one).
    pub(crate) fn new(bytes: usize) -> ByteBudget {
        let units = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        let units = units.min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        ByteBudget {
            permits: Arc::new(Semaphore::new(units as usize)),
            bytes: units,
        }
    }

    /// The budget of a queue between peers that send at most `max_message` bytes a line:
    /// two such lines (one being written while the next waits) and a little.
    pub(crate) fn for_messages(max_message: usize) -> ByteBudget {
        ByteBudget::new(max_message.saturating_mul(2).saturating_add(SLACK))
    }

    /// Bytes not charged now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Bytes charged now (to say so in an error).
    pub(crate) fn charged(&self) -> usize {
        (self.bytes as usize).saturating_sub(self.permits.available_permits())
    }

    /// A line's charge: its length, at least one byte, at most the whole budget.
    fn units_for(&self, len: usize) -> u32 {
        let units = u32::try_from(len.max(1)).unwrap_or(u32::MAX);
        units.min(self.bytes)
    }

    /// Charges `len` bytes, waiting until they fit; `None` once the budget is closed (its
    /// writer is gone: nothing would ever give the bytes back).
    pub(crate) async fn charge(&self, len: usize) -> Option<Charge> {
        let units = self.units_for(len);
        let permit = self.permits.clone().acquire_many_owned(units).await.ok()?;
        Some(Charge { permit })
    }

    /// Charges `len` bytes if they fit now.
    pub(crate) fn try_charge(&self, len: usize) -> Option<Charge> {
        let units = self.units_for(len);
        match self.permits.clone().try_acquire_many_owned(units) {
            Ok(permit) => Some(Charge { permit }),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => None,
        }
    }

    /// Wakes everyone waiting for room with `None`: the writer has ended.
    pub(crate) fn close(&self) {
        self.permits.close();
    }
}

/// The receiving end of a queue whose items carry their [`Charge`]: an item's bytes come
/// back as it is taken.
#[derive(Debug)]
pub(crate) struct ChargedReceiver<T> {
    rx: mpsc::Receiver<(T, Charge)>,
}

impl<T> ChargedReceiver<T> {
    pub(crate) fn new(rx: mpsc::Receiver<(T, Charge)>) -> ChargedReceiver<T> {
        ChargedReceiver { rx }
    }

    /// The next item; `None` once every sender is gone and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        self.rx.recv().await.map(|(item, _charge)| item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bytes_come_back_when_the_charge_is_dropped() {
        let budget = ByteBudget::new(10);
        let a = budget.try_charge(3).expect("room for 3 bytes of 10");
        let b = budget.try_charge(2).expect("room for 2 more");
        assert_eq!(budget.available(), 5);
        drop(a);
        assert_eq!(budget.available(), 8);
        drop(b);
        assert_eq!(budget.available(), 10);
    }

    #[test]
    fn absorbed_charges_come_back_together_and_another_budgets_is_refused() {
        let budget = ByteBudget::new(10);
        let mut held = budget.try_charge(3).expect("room for 3 bytes of 10");
        let more = budget.try_charge(4).expect("room for 4 more");
        assert!(held.absorb(more).is_ok());
        assert_eq!(budget.available(), 3);
        let other = ByteBudget::new(5);
        let foreign = other.try_charge(2).expect("room in the other budget");
        let foreign = held.absorb(foreign).expect_err("another budget's charge");
        assert_eq!((budget.available(), other.available()), (3, 3));
        drop(held);
        assert_eq!(budget.available(), 10);
        drop(foreign);
        assert_eq!(other.available(), 5);
    }

    #[test]
    fn a_charge_that_does_not_fit_now_is_refused_and_takes_nothing() {
        let budget = ByteBudget::new(4);
        let _held = budget.try_charge(3).expect("room for 3 bytes of 4");
        assert!(budget.try_charge(2).is_none());
        assert_eq!(budget.available(), 1);
    }

    #[test]
    fn a_line_larger_than_the_budget_takes_all_of_it_instead_of_never_fitting() {
        let budget = ByteBudget::new(4);
        let all = budget
            .try_charge(100)
            .expect("an empty budget fits any one line");
        assert_eq!(budget.available(), 0);
        drop(all);
        assert_eq!(budget.available(), 4);
    }

    #[test]
    fn an_empty_line_still_costs_a_byte() {
        let budget = ByteBudget::new(1);
        let _one = budget.try_charge(0).expect("an empty budget has a byte");
        assert!(budget.try_charge(0).is_none());
    }

    #[tokio::test]
    async fn a_waiting_charge_goes_through_when_room_is_given_back() {
        let budget = ByteBudget::new(2);
        let first = budget.try_charge(2).expect("empty budget");
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.charge(2).await.is_some() })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "the second charge must wait for room"
        );
        drop(first);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiting charge within 5 s of the room coming back")
            .expect("task");
        assert!(got);
    }

    #[tokio::test]
    async fn closing_the_budget_ends_every_wait_with_none() {
        let budget = ByteBudget::new(1);
        let _full = budget.try_charge(1).expect("empty budget");
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.charge(1).await.is_none() })
        };
        tokio::task::yield_now().await;
        budget.close();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiting charge ended within 5 s of the close")
            .expect("task");
        assert!(got);
        assert!(budget.try_charge(1).is_none());
    }
}
