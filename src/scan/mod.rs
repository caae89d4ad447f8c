//! `toolgate scan`: read a server's tools, classify each by risk, suggest a starting policy.
//!
//! Plain functions over plain data; the command line ([`crate::cli`]'s `scan`) does the I/O
//! through [`crate::gateway::upstream_client`], and the console calls the same two
//! functions to show a tool's class and apply its suggested rule:
//!
//! - [`classify`] — a tool's [`RiskClass`] (read, write, destructive; from annotations, or
//!   guessed from its name and description) and flags (handles secrets, open world).
//! - [`suggested_rule`] — the policy rule suggested for it, as policy JSON with a `reason`.
//! - [`starting_policy`] — `default: deny` and one suggested rule per tool, server order.
//! - [`compare`] — `--against`: what an existing policy leaves open.
//! - [`report`] — the summary table and the `--json` form.

pub(crate) mod against;
pub mod classify;
pub(crate) mod report;
pub(crate) mod suggest;

pub(crate) use against::compare;
pub use classify::classify;
pub(crate) use classify::{Classification, RiskClass};
pub(crate) use suggest::starting_policy;
pub use suggest::suggested_rule;

use crate::wire::ToolInfo;

/// A tool as offered, with its classification.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScannedTool {
    pub info: ToolInfo,
    pub classification: Classification,
}

impl ScannedTool {
    pub(crate) fn new(info: ToolInfo) -> ScannedTool {
        ScannedTool {
            classification: classify(&info),
            info,
        }
    }
}
