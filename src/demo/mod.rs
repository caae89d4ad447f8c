//! The embedded demo (`toolgate demo`): the real gateway core in front of a built-in MCP
//! server, a demo policy that produces every kind of decision, and simulated agents calling
//! tools under their own grants — all in one process, nothing to configure, no network.

pub mod agents;
pub mod server;

/// The demo policy, written to a temporary directory at start so the console can edit it.
pub const POLICY: &str = include_str!("policy.json");
