//! toolgate: deterministic rules on every MCP tool call, and a terminal console to watch and
//! steer them.
//!
//! The crate is one library and one binary. The module tree mirrors the architecture
//! (see `ARCHITECTURE.md`):
//!
//! - [`policy`] — the policy language: parse, validate, decide, count. The only place any
//!   part of `policy.json` is interpreted.
//! - [`gateway`] — the enforcement core and its transports (stdio `wrap`, in-process demo).
//! - [`wire`] — the messages between a gateway and its operators (event websocket).
//! - [`control`] — the gateway's control plane: event hub, holds, websocket server, discovery,
//!   and the clients `tail`, `approve`, `deny` use.
//! - [`console`] — the ratatui console.
//! - [`demo`] — the embedded demo: demo MCP server, simulated agents.
//! - `learn` — learn mode: observations recorded by a gateway, and the policy proposed from them.
//! - `pins` — tool pinning: fingerprints, description checks, diffs, the pin store.
//! - [`scan`] — `toolgate scan`: classify a server's tools by risk, suggest a policy.
//! - [`redact`] — which argument keys are secrets, and how they are hidden.
//! - [`hashing`] — the cheap, randomly seeded hasher of the maps on a call's path.
//! - [`sanitize`] — the one way outside text reaches a terminal.
//! - [`telemetry`] — metrics (Prometheus `/metrics`) for observability stacks.
//! - [`cli`] — the command line.
//! - `testing` — the one door for tests, benches, examples and fuzz targets (hidden).

// Everything is crate-private unless the binary (`cli`), the console's own door or the
// testing door needs it: with this lint, a `pub` nobody outside reaches is reported, and so is
// dead code.
#![warn(unreachable_pub)]

pub mod cli;
pub mod console;
mod control;
mod credentials;
mod demo;
mod gateway;
mod hashing;
mod learn;
mod listen;
mod pins;
mod policy;
mod redact;
mod sanitize;
mod scan;
mod sync;
mod telemetry;
#[doc(hidden)]
pub mod testing;
mod tls;
mod wire;
