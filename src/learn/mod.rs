//! Learn mode: what agents really do, recorded by a gateway started with `--learn`, and the
//! least-privilege policy proposed from it (`toolgate learn`, the console's review).
//!
//! This file holds the types the recorder, `toolgate learn` and the console's review share;
//! the console (model layer) reads them as plain data.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One recorded call, as `toolgate learn` reads it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Observation {
    /// When the call was decided.
    pub(crate) at: DateTime<Utc>,
    /// The server's identity (as tool pins and `--server` name it).
    pub(crate) server: String,
    pub(crate) tool: String,
    /// The grant an HTTP agent called under; `None` under `wrap`.
    pub(crate) grant: Option<String>,
    /// What the gateway decided: `allow`, `deny`, `rate_limited` or `hold`.
    pub(crate) decision: String,
    /// For a held call: whether a person approved it (`None`: not held, or never resolved).
    pub(crate) approved: Option<bool>,
    /// The call's arguments. A value that looks secret under the redaction rules is recorded
    /// as its type only: the object `{"$toolgate_type": "string"}` (or number, ...) in its place.
    pub(crate) args: serde_json::Value,
}

/// What a proposal does to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProposalKind {
    /// Allow (or hold) an observed tool, with the limit and conditions the traffic needs.
    Add,
    /// `--against`: an existing rule is looser than the traffic needs; tighten it.
    Tighten,
    /// `--against`: a tool the policy allows but no call used; remove it.
    Remove,
}

/// One proposed change, with the evidence behind it, reviewed one by one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Proposal {
    pub(crate) kind: ProposalKind,
    /// The key under the policy's `tools` (a tool name, or a glob once widened).
    pub(crate) tool: String,
    /// The rule object as the policy format writes it under `tools.<tool>` (`None` for
    /// [`ProposalKind::Remove`]).
    pub(crate) rule: Option<serde_json::Value>,
    /// The rule under `--against`, if the policy had one (for the review's before/after).
    pub(crate) current: Option<serde_json::Value>,
    /// One line saying what evidence made the rule ("214 calls from 3 grants over 6 days;
    /// peak 12 a minute; paths under /srv/notes"); also the rule's `reason`.
    pub(crate) reason: String,
    /// The evidence in detail, one line each (counts per grant, value sets, ranges, ...).
    pub(crate) evidence: Vec<String>,
}

/// A whole proposal: what `toolgate learn` writes and the review walks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Draft {
    /// The proposals, in the order the review shows them (by tool name).
    pub(crate) proposals: Vec<Proposal>,
    /// The policy text the draft starts from: `--against`'s file, or a fresh
    /// `{"version": "1", "default": "deny", "tools": {}}`.
    pub(crate) base: String,
    /// The observations the draft was made from (what the review's what-if re-decides).
    pub(crate) observations: Vec<Observation>,
}
