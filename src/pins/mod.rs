//! Tool pinning: a server cannot change what a tool does behind the policy's back.
//!
//! The parts that stand alone, for the gateway, the console and `scan` to use:
//!
//! - [`canonical`] — RFC 8785 (JSON Canonicalization Scheme): one byte string per JSON value.
//! - [`fingerprint`] — a [`ToolDefinition`] read untrusted from a `tools/list` entry, and its
//!   [`Fingerprint`] (SHA-256 of the canonical definition).
//! - [`checks`] — description checks: invisible Unicode, text addressed to the model,
//!   mentions of other tools and of secrets, as typed [`Flag`]s.
//! - [`diff`] — what changed between a pinned definition and a new one (word diff of the
//!   description, structural diff of the rest, risk class change), as data.
//! - [`store`] — [`PinStore`]: first fingerprint wins, in memory or in the SQLite counter
//!   file; [`redis`] — the same in the counters' Redis.
//!
//! The gateway uses them in `gateway::pinning` (fingerprint every listed tool, quarantine
//! under the policy's `pins` and `quarantine_flagged`); `toolgate pins` (`cli/pins.rs`)
//! lists, accepts and resets pins in the same store.

pub(crate) mod canonical;
pub(crate) mod checks;
pub(crate) mod diff;
pub(crate) mod fingerprint;
pub(crate) mod redis;
pub(crate) mod store;

pub use checks::{Finding, Flag, check_description};
pub use fingerprint::{Fingerprint, ToolDefinition, fingerprint_list};
pub use redis::RedisPins;
pub use store::{MemoryPins, Pin, PinOutcome, PinStore, PinStoreError, SqlitePins};
