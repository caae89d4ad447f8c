//! The policy language (`policy.json`, format version "1"): parse, validate, decide, count.
//!
//! This module tree is the single source of truth for what a policy means. The gateway
//! enforces [`Policy::decide`], the console edits and validates through it, and the CLI's
//! `check` and `explain` are thin shells over it. Nothing outside this tree interprets any
//! part of a policy.
//!
//! SKELETON: the signatures below are the contract other modules build against; the
//! implementation lands with issue 2.

mod decision;
mod store;

pub use decision::{Call, Decision, Verdict};
pub use store::{CounterStore, MemoryStore, Reservation, StoreError};

use std::path::Path;

/// A parsed, validated, compiled policy. Immutable; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Policy {
    hash: String,
}

/// Everything wrong with a policy text, every problem at once.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct Diagnostics(pub Vec<Diagnostic>);

/// One problem, compiler-style: `FILE:LINE:COL: error: MESSAGE (at /json/pointer)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based line of the offending value.
    pub line: usize,
    /// 1-based column (in characters) of the offending value.
    pub column: usize,
    pub message: String,
    /// JSON Pointer of the offending value; empty for a syntax error before any value.
    pub pointer: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )?;
        if !self.pointer.is_empty() {
            write!(f, " (at {})", self.pointer)?;
        }
        Ok(())
    }
}

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] Diagnostics),
}

impl Policy {
    /// Parses and validates `source`; `file` is the name diagnostics are reported under.
    pub fn parse(source: &str, file: &str) -> Result<Policy, Diagnostics> {
        let _ = (source, file);
        todo!("issue 2")
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy, LoadError> {
        let _ = path;
        todo!("issue 2")
    }

    /// SHA-256 (hex) of the source text this policy was parsed from.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Whether `hide` removes this tool from `tools/list`.
    pub fn is_hidden(&self, tool: &str) -> bool {
        let _ = tool;
        todo!("issue 2")
    }

    /// Decides one call at `now_ms` (milliseconds since the Unix epoch), taking units from
    /// `store` when the call is admitted or held. Never panics, whatever the arguments.
    pub fn decide(&self, call: &Call<'_>, store: &dyn CounterStore, now_ms: u64) -> Decision {
        let _ = (call, store, now_ms);
        todo!("issue 2")
    }
}
