//! What the console knows about the policy draft and its write: the data behind the Policy
//! and Limits views. The flow that changes it is [`crate::console::update`]'s `authoring`.

use super::draft::Draft;
use super::whatif::WhatIf;

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
