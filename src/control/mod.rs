//! The gateway's control plane: the event hub every decision is published to, the registry
//! of held calls, the websocket server operators connect to, the discovery files, and the
//! client side used by `tail`, `approve`, `deny` and the console.
//!
//! Flow: the gateway core publishes to the [`Hub`], which numbers events, keeps the snapshot
//! state and fans them out; [`server`] serves them to each websocket client (a `hello` with a
//! snapshot, then the stream) and turns `approve`/`deny` commands into [`Hub::resolve`];
//! [`discovery`] lets local clients find the server; [`client`] is the other end.
//! The wire format is [`crate::wire`], documented in `docs/wire-protocol.md`.

mod admission;
pub(crate) mod client;
pub(crate) mod discovery;
pub(crate) mod hub;
pub(crate) mod operators;
mod remote_policy;
pub(crate) mod remotes;
pub(crate) mod server;

pub use client::{ClientError, Connection, connect};
pub(crate) use discovery::describe_dirs;
pub use discovery::{DiscoveryEntry, discovery_dir, discovery_dirs, list_gateways};
pub use hub::{HoldTicket, Hub, Resolution};
pub(crate) use operators::{OperatorsHandle, OperatorsWatcher};
pub use server::{ControlHandle, EventsOptions, start};
