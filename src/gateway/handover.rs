//! The hand-over of an admitted call's line: `wrap`'s store thread writes a limited call's
//! request to the upstream's pipe itself, as the counter store admits it, instead of the
//! runtime doing it once woken with the answer. The runtime then publishes the decision,
//! audits it and registers the call as forwarded while the server already works on it:
//! one wake of the runtime (about 12 µs on an idle machine) off the call's critical path.
//!
//! What lies between "admitted" and "forwarded" on the runtime's path, and why none of it
//! can refuse a call handed over here (so the store thread forwards only what the runtime
//! would certainly forward at that moment):
//! - Only a call decided through the connection's [`Answers`](crate::policy::store::worker::Answers)
//!   channel is handed over: one enforced admission and no shadow decision (shadow rules and
//!   `--shadow-policy` keep their own path), on `wrap`'s pipe to the server (`Output::Pipe`),
//!   with a counter store on its own thread. `serve`, the demo and a store asked in place
//!   keep the runtime's path.
//! - The verdict: the policy's judgement before the admission is allow (not hold:
//!   `Policy::judge` made it, `Gateway::step` checks it), and settling an admitted answer
//!   changes nothing but the reservation (`Policy::settle`). A store error, a refusal, or
//!   `--counters-fail open`'s uncounted admission never reaches the hook: the store thread
//!   runs it only for `Ok(Admitted)`.
//! - Hold, the cap on held calls and `no_hold`: only for a held verdict; not handed over.
//! - Pins: a quarantined tool is refused before its admission is asked
//!   (`Gateway::pin_refusal`); today's path does not look again after the admission either.
//! - `--audit-fail closed`: checked when the call is judged (`start_decision_into`);
//!   `publish_decision` writes the record and the event and refuses nothing.
//! - A reload: the call is settled by the policy that judged it (`Queued` keeps it).
//! - A traced call: its line is rewritten with its `traceparent` as it goes; the hand-over
//!   is off whenever tracing is on.
//! - Cancellation, the connection closing, the call's deadline, the id taken by another
//!   request: each first takes the line back ([`HandOver::take`]) under the hand-over's
//!   lock, the one the store thread writes under, so either the line is already in the
//!   pipe's buffer (then the call is treated as forwarded: a cancellation is forwarded to
//!   the server, the decision published as allowed and its outcome recorded as ended, its
//!   units kept as a forwarded call's are) or it never will be.
//! - The call is armed only once its `Forwarded::Deciding` entry is in the connection's
//!   state, so the upstream's answer always finds the call.
//! - Back-pressure: the line is written only when the upstream's queue budget has room now,
//!   in order after every line already buffered ([`PipeHandle::try_append`]), the batch's
//!   lines written at once ([`PipeHandle::flush_now`]: one non-blocking write); a full pipe
//!   leaves them to the writer task, a full budget to the runtime's path.
//!
//! The upstream may answer before the runtime has settled the admission: that answer is
//! kept with the call ([`HandOver::keep_answer`]) and handled once the decision is
//! published, so the audit log and the events keep decision before outcome.

use std::sync::Mutex;

use super::line_writer::PipeHandle;
use crate::policy::store::worker::OnAdmitted;

/// One limited call's line, between its admission being asked and its decision published.
#[derive(Debug)]
pub(crate) struct HandOver {
    pipe: PipeHandle,
    stage: Mutex<Stage>,
}

#[derive(Debug)]
enum Stage {
    /// The call is not in the connection's state yet: the store thread leaves it.
    Unarmed,
    /// In the connection's state, waiting for its admission: the store thread may write it.
    Armed(Vec<u8>),
    /// In the pipe's buffer, in order (written, or left to the writer task), with the
    /// upstream's answer when it came before the decision was published.
    Sent(Option<Vec<u8>>),
    /// Taken back by the runtime, or the call ended: nothing more happens here.
    Closed,
}

/// Where a call's line is once the runtime takes it back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Here: never written; the runtime forwards it (or not) as before.
    Line(Vec<u8>),
    /// Already in the upstream's pipe.
    Sent,
    /// Never armed, or taken already.
    Nothing,
}

impl HandOver {
    pub(crate) fn new(pipe: PipeHandle) -> HandOver {
        HandOver {
            pipe,
            stage: Mutex::new(Stage::Unarmed),
        }
    }

    /// The call is in the connection's state: its `line` may go upstream once admitted.
    pub(crate) fn arm(&self, line: Vec<u8>) {
        let mut stage = crate::sync::lock(&self.stage);
        if matches!(*stage, Stage::Unarmed) {
            *stage = Stage::Armed(line);
        }
    }

    /// The runtime takes the line back (the call is settled, cancelled, closed, or past its
    /// deadline): from now on the store thread writes nothing. A line already sent stays
    /// sent, with any answer kept for [`HandOver::take_answer`].
    pub(crate) fn take(&self) -> Taken {
        let mut stage = crate::sync::lock(&self.stage);
        match std::mem::replace(&mut *stage, Stage::Closed) {
            Stage::Armed(line) => Taken::Line(line),
            sent @ Stage::Sent(_) => {
                *stage = sent;
                Taken::Sent
            }
            Stage::Unarmed | Stage::Closed => Taken::Nothing,
        }
    }

    /// Keeps the upstream's answer to a call sent here whose decision is not published yet;
    /// gives it back when the call was not sent (the upstream cannot be answering it) or
    /// an answer is kept already (a second answer to one request goes nowhere).
    pub(crate) fn keep_answer(&self, answer: Vec<u8>) -> Result<(), Vec<u8>> {
        let mut stage = crate::sync::lock(&self.stage);
        match &mut *stage {
            Stage::Sent(kept @ None) => {
                *kept = Some(answer);
                Ok(())
            }
            _ => Err(answer),
        }
    }

    /// The upstream's answer that came before the decision was published, once it is.
    pub(crate) fn take_answer(&self) -> Option<Vec<u8>> {
        let mut stage = crate::sync::lock(&self.stage);
        match std::mem::replace(&mut *stage, Stage::Closed) {
            Stage::Sent(answer) => answer,
            _ => None,
        }
    }
}

impl OnAdmitted for HandOver {
    /// On the store thread, as the call is admitted: its line into the upstream's pipe's
    /// buffer, if it is still armed and the budget has room now (written by `flush`).
    fn admitted(&self) {
        let mut stage = crate::sync::lock(&self.stage);
        if !matches!(*stage, Stage::Armed(_)) {
            return;
        }
        if let Stage::Armed(line) = std::mem::replace(&mut *stage, Stage::Closed) {
            *stage = match self.pipe.try_append(line) {
                Ok(()) => Stage::Sent(None),
                Err(line) => Stage::Armed(line),
            };
        }
    }

    /// After every call of the batch was added: one write for what they added.
    fn flush(&self) {
        self.pipe.flush_now();
    }
}
