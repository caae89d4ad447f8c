//! The enforcement core and its transports.
//!
//! One core, several transports. [`core::run`] proxies newline-delimited JSON-RPC between a
//! client side and an upstream side given as any async byte streams, deciding every
//! `tools/call` with the policy on the way. `toolgate wrap` ([`stdio`]) runs it over its own
//! stdin/stdout and a child process ([`upstream`]); the demo runs it over in-process pipes.
//! The per-call logic ([`Gateway::decide_call`], [`Gateway::await_resolution`],
//! [`Gateway::filter_tools_list`], [`Gateway::record_outcome`] in [`call`]) does not know
//! about streams, so the HTTP transport reuses it message by message.
//!
//! - [`jsonrpc`] — classify a line by `method` and `id`; build refusals and errors.
//! - [`lines`] — read a peer's lines, none kept beyond `--max-message`.
//! - [`budget`] — byte budgets on the queues between a reader and a writer.
//! - [`call`] — per-call logic shared by every transport: decide, hold, `hide`, outcome.
//! - [`core`] — the stdio-style proxy loop: forwarding, pending requests, holds, faults.
//! - [`audit`] — the JSON-lines audit log.
//! - [`reload`] — watch the policy file and swap in each valid new version.
//! - [`watch`] — follow one file (through symlinks) and call back when it may have changed.
//! - [`upstream`] — spawn and stop an MCP server process.
//! - [`fd_limit`] — the open-file limit, raised to the hard limit at start.
//! - [`upstream_client`] — a small MCP client session over an upstream's line streams
//!   (handshake or `server/discover`, paginated `tools/list`), for `toolgate scan`.
//! - [`startup`] — a gateway's id, hub and watched policy, for every transport.
//! - [`stdio`] — `wrap`: stdin/stdout + a child process around the core.
//! - [`http`] — `serve`: Streamable HTTP in front of several servers, each MCP session a run
//!   of the core; [`grants`] — the bearer tokens that name who calls.

pub mod audit;
pub mod budget;
pub mod call;
pub mod core;
pub mod fd_limit;
pub mod grants;
pub mod http;
pub mod jsonrpc;
pub mod lines;
pub mod reload;
pub mod startup;
pub mod stdio;
pub mod upstream;
pub mod upstream_client;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::control::Hub;
use crate::policy::{CounterStore, Policy};

pub use audit::{AuditArgs, AuditLog};
pub use core::{End, RunOptions, run};

/// The policy in force, swapped atomically by [`reload`] and read lock-free by every call.
pub type PolicyHandle = Arc<ArcSwap<Policy>>;

/// How often a held call with a progress token gets a progress notification. MCP clients
/// commonly time a request out after 60 s without progress; this keeps well inside that.
pub const HOLD_PROGRESS_INTERVAL: Duration = Duration::from_secs(8);

/// Wall-clock time for the policy's rate windows; injectable so decisions are testable.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Everything one gateway needs to decide calls, shared by all its connections.
pub struct Gateway {
    pub policy: PolicyHandle,
    pub store: Arc<dyn CounterStore>,
    pub hub: Arc<Hub>,
    /// Who the calls of this gateway are attributed to (`wrap --grant`).
    pub grant: String,
    /// A human name for the upstream server, as shown in events and audit records.
    pub server: String,
    pub audit: Option<Arc<AuditLog>>,
    pub clock: Arc<dyn Clock>,
    /// See [`HOLD_PROGRESS_INTERVAL`].
    pub hold_progress_interval: Duration,
    /// Spans per call, when tracing is on (`--otlp`, `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub traces: Option<Arc<crate::telemetry::Tracing>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("grant", &self.grant)
            .field("server", &self.server)
            .field("audit", &self.audit)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway with no audit log, the system clock and the default progress interval.
    pub fn new(
        policy: PolicyHandle,
        store: Arc<dyn CounterStore>,
        hub: Arc<Hub>,
        grant: impl Into<String>,
        server: impl Into<String>,
    ) -> Gateway {
        Gateway {
            policy,
            store,
            hub,
            grant: grant.into(),
            server: server.into(),
            audit: None,
            clock: Arc::new(SystemClock),
            hold_progress_interval: HOLD_PROGRESS_INTERVAL,
            traces: None,
        }
    }

    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Gateway {
        self.audit = Some(audit);
        self
    }

    pub fn with_traces(mut self, traces: Option<Arc<crate::telemetry::Tracing>>) -> Gateway {
        self.traces = traces;
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Gateway {
        self.clock = clock;
        self
    }
}

/// A short human form of a duration: `2m`, `90s` → `1m30s`, `1h`.
pub fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    if secs == 0 {
        return format!("{ms}ms");
    }
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_like_the_policy_writes_them() {
        assert_eq!(super::human_duration(120_000), "2m");
        assert_eq!(super::human_duration(90_000), "1m30s");
        assert_eq!(super::human_duration(3_600_000), "1h");
        assert_eq!(super::human_duration(250), "250ms");
    }
}
