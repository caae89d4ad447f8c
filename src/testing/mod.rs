//! The one door from outside the crate into its insides, for the integration tests, benches,
//! examples and fuzz targets, which are separate crates and see only what is `pub` from
//! `lib.rs`.
//!
//! Everything else in the crate is meant to be `pub(crate)`, so that the compiler can report
//! dead code: only `cli` (the binary's entry) and this module are public. What a test needs
//! is re-exported here by name, one sub-module per module of the crate, so that a test's
//! `use toolgate::testing::policy::Policy` reads like the crate's own path. Adding a name here
//! is the way to reach something new from a test; making a module `pub` again is not.
//!
//! The console's insides are reached through `console::testing`, which the console keeps.
//! Nothing here is a stable interface: it changes with the code it exposes.

pub mod screenshot;

/// The policy language: parse, decide, count.
pub mod policy {
    pub use crate::policy::{
        Action, Admission, ArgsTree, Call, CounterStore, Decision, Diagnostic, FailMode,
        GuardedStore, KeyUsage, LimitRequest, MAX_POLICY_BYTES, MemoryStore, NotedUsage,
        OwnedLimit, PinMode, Policy, RedisStore, Reservation, SHADOW_POLICY_COUNTER_PREFIX,
        SHADOW_RULE_COUNTER_PREFIX, Scope, Shadow, ShadowSource, SqliteStore, StoreError,
        StoreErrorKind, StoreWorker, Verdict,
    };
}

/// The enforcement core and the pieces of its transports that tests drive directly.
pub mod gateway {
    pub use crate::gateway::core::MAX_IN_FLIGHT;
    pub use crate::gateway::grants::{Grants, GrantsReloader};
    pub use crate::gateway::http::body::message_line;
    pub use crate::gateway::pinning::ToolPins;
    pub use crate::gateway::reload::{PolicyReloader, load_initial};
    pub use crate::gateway::{End, Gateway, RunOptions, run};
}

/// The control plane: hub, websocket server, clients, discovery, and the caps tests push.
pub mod control {
    pub use crate::control::client::{TlsClientOptions, connect_with};
    pub use crate::control::hub::{
        DEFAULT_MAX_HOLDS, DEFAULT_MAX_HOLDS_PER_GRANT, RECENT_CALLS, SUBSCRIBER_QUEUE,
    };
    pub use crate::control::operators::{Operators, OperatorsHandle, OperatorsWatcher, Role};
    pub use crate::control::remotes::Remote;
    pub use crate::control::server::{
        AUTH_DEADLINE, MAX_CLIENT_MESSAGE, MAX_HANDSHAKING, MAX_OPERATORS,
    };
    pub use crate::control::{
        ClientError, Connection, ControlHandle, DiscoveryEntry, EventsOptions, HoldTicket, Hub,
        Resolution, connect, discovery_dir, discovery_dirs, list_gateways, start,
    };

    /// Discovery files, written and read as gateways and operators do.
    pub mod discovery {
        pub use crate::control::discovery::{
            DiscoveryEntry, ensure_discovery_dir, fallback_dir, write_entry,
        };
    }
}

/// TLS for the gateway's listeners.
pub mod tls {
    pub use crate::tls::{ServerTls, TlsError, TlsFiles, ring_provider};
}

/// The messages between a gateway and its operators.
pub mod wire {
    pub use crate::wire::{
        AuditStatus, CallArgs, CallEvent, CallRecord, ClientMsg, CounterState, Counters, Event,
        EventKind, GatewayInfo, GrantsChange, GrantsChanged, Hello, HoldResolved, Outcome,
        PROTOCOL_VERSION, PinChange, PolicyApplied, PolicyRejected, PolicyText, Reply, ReplyCode,
        ResolvedBy, ShadowDecision, ShadowSource, Snapshot, StoreStatus, ToolChanged, ToolInfo,
        Tools, Totals, Upstream, Verdict,
    };
}

/// Tool pinning: canonical JSON, fingerprints, description checks, diffs, pin stores.
pub mod pins {
    pub use crate::pins::canonical::canonical;
    pub use crate::pins::checks::{Invisible, ToModel};
    pub use crate::pins::diff::{DefinitionDiff, JsonChange, WordKind, definition_diff};
    pub use crate::pins::{
        Finding, Fingerprint, Flag, MemoryPins, Pin, PinOutcome, PinStore, PinStoreError,
        RedisPins, SqlitePins, ToolDefinition, check_description, fingerprint_list,
    };
}

/// `toolgate scan`'s classifier.
pub mod scan {
    pub use crate::scan::{classify, suggested_rule};
}

/// Learn mode: what a gateway does for each call it records, for the bench and tests.
pub mod learn {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::Value;

    use crate::gateway::Gateway;
    use crate::learn::record::Recorder;
    use crate::learn::store::SqliteLearn;
    use crate::policy::Verdict;

    /// `gateway` recording every call (`--learn`) into the observation file `path`, through
    /// a queue of `queue` observations.
    pub fn recording(gateway: Gateway, path: &Path, queue: usize) -> std::io::Result<Gateway> {
        let recorder = Recorder::with_queue(Arc::new(SqliteLearn::lazy(path)), true, queue)?;
        Ok(gateway.with_learn(Some(Arc::new(recorder))))
    }

    /// What the gateway's core adds to an allowed call in learn mode: whether to record it,
    /// a copy of its arguments, and the observation queued.
    pub fn observe_allowed(gateway: &Gateway, server: &str, tool: &str, args: &Value) {
        if gateway.observing() {
            gateway.observe(server, tool, args.clone(), "c-1", Verdict::Allow);
        }
    }

    /// Waits (at most `within`) until what was queued is written; answers how many
    /// observations were dropped because the recorder was behind.
    pub fn settle(gateway: &Gateway, within: Duration) -> Option<u64> {
        let recorder = gateway.learn.as_ref()?;
        recorder.flush(within).then(|| recorder.dropped())
    }

    /// The recorder's queue, in observations.
    pub const QUEUE: usize = crate::learn::record::QUEUE;
}

/// The embedded demo.
pub mod demo {
    pub use crate::demo::{DemoOptions, start};
}
