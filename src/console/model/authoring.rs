//! What the console knows about the policy draft and its write: the data behind the Policy
//! and Limits views. The flow that changes it is [`crate::console::update`]'s `authoring`.

use std::collections::HashMap;

use super::draft::Draft;
use super::whatif::WhatIf;
use crate::wire::{CallEvent, ShadowSource};

/// The authoring state.
#[derive(Debug, Default)]
pub struct Authoring {
    /// The draft, once the policy file has been read.
    pub draft: Option<Draft>,
    /// The file was asked for (so it is asked for once).
    pub load_requested: bool,
    /// Why the file could not be read, if it could not.
    pub load_error: Option<String>,
    /// A write done, waiting for the gateways to apply it.
    pub awaiting: Option<Awaiting>,
    /// The file changed on disk under an edited draft: its text now.
    pub conflict: Option<String>,
    /// Selected row of the Policy view.
    pub selected: usize,
    /// Selected row of the Limits view.
    pub limits_selected: usize,
    /// Every diagnostic of the last edit refused as invalid (the message shows the first).
    pub refused: Vec<String>,
    /// The tool whose own rule the next `s` replaces with the suggestion, with that rule as
    /// the warning showed it: set by the first `s`, which only says what would change; any
    /// other action clears it, and a rule changed since (a reload) is warned about afresh.
    pub suggest_armed: Option<(String, serde_json::Value)>,
    /// Calls each shadow rule would have changed, for the Policy view.
    pub shadow_tally: ShadowTally,
    /// When the policy is a remote gateway's: where it was read, and the write under way.
    pub remote: super::remote_policy::RemotePolicy,
}

/// How many calls each shadow rule would have decided otherwise, counted from the call
/// events as they arrive (so the Policy view never scans the history) since the policy file
/// was last loaded with different text or written: a count that outlived an edit of its rule
/// would credit the new rule with the old one's differences.
#[derive(Debug, Default)]
pub struct ShadowTally {
    /// SHA-256 of the policy text the counts are for (`None` until a file is loaded).
    base: Option<String>,
    /// By the rule's own pointer (`/tools/KEY`).
    by_rule: HashMap<String, u64>,
}

impl ShadowTally {
    /// Counts a call whose shadow came from a shadow rule.
    pub(crate) fn count(&mut self, call: &CallEvent) {
        if let Some(shadow) = &call.shadow
            && shadow.source == ShadowSource::Rule
        {
            let rule = rule_pointer(&shadow.rule);
            *self.by_rule.entry(rule.to_owned()).or_default() += 1;
        }
    }

    /// The policy file now has the text hashed `hash`: counts made under other text start
    /// again (counts made before any file was loaded are kept for the first).
    pub(crate) fn policy_is(&mut self, hash: &str) {
        match &self.base {
            Some(known) if known == hash => {}
            Some(_) => {
                self.by_rule.clear();
                self.base = Some(hash.to_owned());
            }
            None => self.base = Some(hash.to_owned()),
        }
    }

    /// Calls the rule `tools[key]` would have changed.
    pub fn for_rule(&self, key: &str) -> u64 {
        let pointer = format!("/tools/{}", key.replace('~', "~0").replace('/', "~1"));
        self.by_rule.get(&pointer).copied().unwrap_or(0)
    }
}

/// `/tools/KEY` of a pointer inside a rule (`/tools/KEY/deny_if/0`).
fn rule_pointer(pointer: &str) -> &str {
    match pointer.match_indices('/').nth(2) {
        Some((end, _)) => &pointer[..end],
        None => pointer,
    }
}

/// A write shown for confirmation.
#[derive(Debug, Clone)]
pub struct Review {
    pub diff: Vec<String>,
    pub whatif: WhatIf,
    /// Overwrite even if the file changed on disk (`:w!`).
    pub force: bool,
    pub scroll: u16,
}

/// A written policy the gateways are expected to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaiting {
    pub hash: String,
    /// Connections (indexes into [`State::gateways`]) that applied it.
    pub applied: Vec<usize>,
    /// Connections that refused it, with their diagnostics.
    pub rejected: Vec<(usize, Vec<String>)>,
}

/// Why a write failed, as the event loop reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteFailure {
    /// The file is not what the draft was made from; its text now.
    ChangedOnDisk(String),
    Io(String),
}
