//! The gateway's control plane: the event hub every decision is published to, the registry
//! of held calls, the websocket server operators connect to, the discovery files, and the
//! client side used by `tail`, `approve`, `deny` and the console.
//!
//! SKELETON: the [`hub`] signatures are the contract the gateway core builds against; the
//! implementation lands with issue 4.

pub mod hub;

pub use hub::{HoldTicket, Hub, Resolution, ResolveError};
