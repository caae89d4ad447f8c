//! What one waiting HTTP request receives from its link: the messages on the way (progress,
//! server-to-client requests) and then its answer.
//!
//! A request waits for exactly one answer, and most get nothing else, so this is one shared
//! allocation with a slot for the answer, a queue (allocated only when something comes on
//! the way) and the waiting task's waker, instead of a general bounded channel per request
//! (whose 32-slot block, semaphore and list cost more than the rest of the hand-over). The
//! rules are the channel's: messages on the way are bounded ([`MAX_INTERIM`]; more are
//! dropped, as a full channel dropped them), the answer always finds its place, whatever a
//! closed receiver is sent is dropped at once (its charge goes back to the core's budget),
//! and the receiver sees the end once the sender is gone and nothing is left.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use super::link::Delivery;
use crate::gateway::budget::Charge;
use crate::sync::lock;

/// Messages on the way queued for one waiting request; more are dropped.
pub(crate) const MAX_INTERIM: usize = 256;

#[derive(Default)]
struct State {
    interim: VecDeque<(Vec<u8>, Charge)>,
    /// The answer, taken after everything that came before it.
    answer: Option<(Vec<u8>, Charge)>,
    waker: Option<Waker>,
    /// The sender is gone: nothing more will come.
    closed: bool,
    /// The receiver is gone: nothing sent is kept.
    gone: bool,
}

/// The link's end: dropping it tells the request that nothing more will come.
pub(crate) struct InboxSender {
    shared: Arc<Mutex<State>>,
}

/// The waiting request's end.
pub(crate) struct Inbox {
    shared: Arc<Mutex<State>>,
}

/// A new inbox: the link keeps the sender, the request waits on the receiver.
pub(crate) fn inbox() -> (InboxSender, Inbox) {
    let shared = Arc::new(Mutex::new(State::default()));
    (
        InboxSender {
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

impl InboxSender {
    /// Queues a message on the way; dropped when [`MAX_INTERIM`] already wait or the
    /// receiver is gone.
    pub(crate) fn interim(&self, message: Vec<u8>, charge: Charge) {
        let waker = {
            let mut state = lock(&self.shared);
            if state.gone || state.interim.len() >= MAX_INTERIM {
                return;
            }
            state.interim.push_back((message, charge));
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Hands over the answer (after what is queued); dropped when the receiver is gone.
    pub(crate) fn answer(self, message: Vec<u8>, charge: Charge) {
        let waker = {
            let mut state = lock(&self.shared);
            if state.gone {
                return;
            }
            state.answer = Some((message, charge));
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for InboxSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.shared);
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Inbox {
    /// The next delivery, in the order sent, the answer last; `None` once the sender is
    /// gone and nothing is left. Cancel-safe: nothing is taken until it is returned.
    pub(crate) async fn recv(&mut self) -> Option<Delivery> {
        poll_fn(|cx| {
            let mut state = lock(&self.shared);
            if let Some((message, _charge)) = state.interim.pop_front() {
                return Poll::Ready(Some(Delivery::Interim(message)));
            }
            if let Some((message, _charge)) = state.answer.take() {
                return Poll::Ready(Some(Delivery::Final(message)));
            }
            if state.closed {
                return Poll::Ready(None);
            }
            match &mut state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // What was queued goes now (and its charges with it), not when the sender goes.
        let (interim, answer) = {
            let mut state = lock(&self.shared);
            state.gone = true;
            state.waker = None;
            (std::mem::take(&mut state.interim), state.answer.take())
        };
        drop((interim, answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::budget::ByteBudget;

    fn charged(budget: &ByteBudget, text: &str) -> (Vec<u8>, Charge) {
        let charge = budget.try_charge(text.len()).expect("room in the budget");
        (text.as_bytes().to_vec(), charge)
    }

    fn text(delivery: Option<Delivery>) -> String {
        match delivery {
            Some(Delivery::Interim(m)) => format!("interim {}", String::from_utf8_lossy(&m)),
            Some(Delivery::Final(m)) => format!("final {}", String::from_utf8_lossy(&m)),
            None => "end".into(),
        }
    }

    #[tokio::test]
    async fn messages_on_the_way_come_in_order_then_the_answer_then_the_end() {
        let budget = ByteBudget::new(100);
        let (tx, mut rx) = inbox();
        let (m, c) = charged(&budget, "a");
        tx.interim(m, c);
        let (m, c) = charged(&budget, "b");
        tx.interim(m, c);
        let (m, c) = charged(&budget, "answer");
        tx.answer(m, c);
        assert_eq!(text(rx.recv().await), "interim a");
        assert_eq!(text(rx.recv().await), "interim b");
        assert_eq!(text(rx.recv().await), "final answer");
        assert_eq!(text(rx.recv().await), "end");
        assert_eq!(
            budget.available(),
            100,
            "every charge went back as it was taken"
        );
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_the_answer_and_by_a_sender_that_goes() {
        let budget = ByteBudget::new(100);
        let (tx, mut rx) = inbox();
        let waiting = tokio::spawn(async move { text(rx.recv().await) });
        tokio::task::yield_now().await;
        let (m, c) = charged(&budget, "late");
        tx.answer(m, c);
        assert_eq!(waiting.await.expect("receiver task"), "final late");

        let (tx, mut rx) = inbox();
        let waiting = tokio::spawn(async move { text(rx.recv().await) });
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(waiting.await.expect("receiver task"), "end");
    }

    #[tokio::test]
    async fn messages_on_the_way_beyond_the_cap_are_dropped_but_the_answer_is_not() {
        let budget = ByteBudget::new(10_000);
        let (tx, mut rx) = inbox();
        for _ in 0..MAX_INTERIM + 5 {
            let (m, c) = charged(&budget, "p");
            tx.interim(m, c);
        }
        assert_eq!(
            budget.available(),
            10_000 - MAX_INTERIM,
            "the dropped ones gave their bytes back"
        );
        let (m, c) = charged(&budget, "answer");
        tx.answer(m, c);
        let mut interim = 0;
        loop {
            match rx.recv().await {
                Some(Delivery::Interim(_)) => interim += 1,
                Some(Delivery::Final(m)) => {
                    assert_eq!(m, b"answer");
                    break;
                }
                None => panic!("the end came before the answer"),
            }
        }
        assert_eq!(interim, MAX_INTERIM);
    }

    #[tokio::test]
    async fn what_a_gone_receiver_is_sent_or_had_queued_gives_its_bytes_back_at_once() {
        let budget = ByteBudget::new(100);
        let (tx, rx) = inbox();
        let (m, c) = charged(&budget, "queued");
        tx.interim(m, c);
        drop(rx);
        assert_eq!(budget.available(), 100, "the queued message was dropped");
        let (m, c) = charged(&budget, "after");
        tx.interim(m, c);
        let (m, c) = charged(&budget, "answer");
        tx.answer(m, c);
        assert_eq!(budget.available(), 100, "nothing is kept for no one");
    }
}
