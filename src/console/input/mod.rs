//! Input: what an operator can ask for, and which key asks for it.
//!
//! [`KeyAction`] names every request; [`keys`] is the one binding table (view keys, the rule
//! editor's keys and the keys of every prompt), and [`COMMANDS`] lists the `:` commands.
//! This layer reads the model (a key's meaning depends on what is selected) and nothing
//! above it: the update turns keys into actions through it, the view lists its bindings in
//! help and on the hint line.

pub(crate) mod action;
mod commands;
pub(crate) mod keys;

pub use action::KeyAction;
pub(crate) use commands::COMMANDS;
