//! What a decision is: the verdict, the rule that made it, and the units it took.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::store::Reservation;

/// One tool call as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub tool: &'a str,
    pub args: &'a Value,
    /// Who is calling (`wrap --grant`, or the HTTP bearer token's grant).
    pub grant: &'a str,
    /// The MCP session the call belongs to.
    pub session: &'a str,
}

/// The four outcomes of a decision. Serialised as on the wire and in `explain --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    RateLimited,
    Hold,
}

/// The result of [`super::Policy::decide`].
#[derive(Debug)]
pub struct Decision {
    pub verdict: Verdict,
    /// JSON Pointer into the policy of the rule that decided (`/tools/x`, `/default`, `/hide/2`).
    pub rule: String,
    /// Why, in words a person (and a model) can act on.
    pub reason: String,
    /// For [`Verdict::RateLimited`]: when room comes back.
    pub retry_after_ms: Option<u64>,
    /// The call was refused because `hide` names the tool.
    pub hidden: bool,
    /// For [`Verdict::Hold`]: how long the call may wait for an operator.
    pub approval_timeout_ms: Option<u64>,
    /// Units taken from the counters (allowed and held calls); give them back with
    /// [`super::CounterStore::release`] when the call ends denied, timed out or never reached
    /// the upstream.
    pub reservation: Reservation,
}

impl Decision {
    /// The text an agent reads in the refused call's result.
    pub fn agent_text(&self) -> String {
        todo!("issue 2")
    }
}
