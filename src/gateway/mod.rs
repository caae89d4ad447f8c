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
//! - [`line_writer`] — write a queue of lines to a peer, giving their bytes back as written.
//! - [`budget`] — byte budgets on the queues between a reader and a writer.
//! - [`call`] — per-call logic shared by every transport: decide, hold, `hide`, outcome.
//! - [`pinning`] — tool pins: fingerprint each listed tool, compare with its pin, quarantine.
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

pub(crate) mod args;
pub(crate) mod audit;
pub(crate) mod budget;
pub(crate) mod call;
pub(crate) mod core;
pub(crate) mod fd_limit;
pub(crate) mod grants;
pub(crate) mod handover;
pub(crate) mod http;
pub(crate) mod jsonrpc;
pub(crate) mod line_writer;
pub(crate) mod lines;
pub(crate) mod pinning;
pub(crate) mod reload;
pub(crate) mod spin;
pub(crate) mod startup;
pub(crate) mod stdio;
pub(crate) mod upstream;
pub(crate) mod upstream_client;
pub(crate) mod watch;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use smol_str::SmolStr;

use crate::control::Hub;
use crate::policy::{Policy, StoreWorker};

pub(crate) use audit::{AuditArgs, AuditLog};
pub use core::{End, RunOptions, run};

/// The policy in force, swapped atomically by [`reload`] and read lock-free by every call.
pub(crate) type PolicyHandle = Arc<ArcSwap<Policy>>;
/// The candidate policy of `--shadow-policy`: decided beside the enforced one, never
/// enforced; empty while its file is missing or has never been valid.
pub(crate) type ShadowPolicyHandle = Arc<arc_swap::ArcSwapOption<Policy>>;

/// How often a held call with a progress token gets a progress notification. MCP clients
/// commonly time a request out after 60 s without progress; this keeps well inside that.
pub(crate) const HOLD_PROGRESS_INTERVAL: Duration = Duration::from_secs(8);

/// The gateway's wall-clock time: the policy's rate windows, hold deadlines, audit records
/// and the `call` and `outcome` events all read it, so one injected clock moves them together
/// in tests (a call's record and its event share one reading).
pub trait WallClock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// The same time as a timestamp (a time beyond chrono's range reads as its last instant).
    fn now(&self) -> DateTime<Utc> {
        timestamp_from_ms(self.now_ms())
    }
}

/// `ms` since the Unix epoch as a timestamp, as `DateTime::from_timestamp_millis` makes it
/// (a time beyond chrono's range reads as its last instant). The calendar date of the last
/// day converted is kept per thread: every call's record and events read the clock, and the
/// date, which changes once a day, is most of the conversion.
pub(crate) fn timestamp_from_ms(ms: u64) -> DateTime<Utc> {
    thread_local! {
        static DAY: std::cell::Cell<Option<(u64, chrono::NaiveDate)>> =
            const { std::cell::Cell::new(None) };
    }
    const MS_PER_DAY: u64 = 86_400_000;
    let (day, in_day) = (ms / MS_PER_DAY, ms % MS_PER_DAY);
    if let Some((cached, date)) = DAY.get()
        && cached == day
        // Within a day: both casts are exact.
        && let Some(time) = chrono::NaiveTime::from_num_seconds_from_midnight_opt(
            (in_day / 1000) as u32,
            (in_day % 1000) as u32 * 1_000_000,
        )
    {
        return date.and_time(time).and_utc();
    }
    match i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
    {
        Some(ts) => {
            DAY.set(Some((day, ts.date_naive())));
            ts
        }
        None => DateTime::<Utc>::MAX_UTC,
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SystemWallClock;

impl WallClock for SystemWallClock {
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
    /// The counter store, asked off the runtime when it may block (shared by every
    /// connection and session of the gateway: clone it, do not make another).
    pub store: StoreWorker,
    pub hub: Arc<Hub>,
    /// Who the calls of this gateway are attributed to (`wrap --grant`). Shared with every
    /// call event ([`SmolStr`]: cloned without allocating).
    pub grant: SmolStr,
    /// A human name for the upstream server, as shown in events and audit records.
    pub server: SmolStr,
    pub audit: Option<Arc<AuditLog>>,
    pub clock: Arc<dyn WallClock>,
    /// See [`HOLD_PROGRESS_INTERVAL`].
    pub hold_progress_interval: Duration,
    /// Spans per call, when tracing is on (`--otlp`, `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub traces: Option<Arc<crate::telemetry::Tracing>>,
    /// Tool pins, shared by every connection of the gateway process; `None`: no pinning.
    pub(crate) pins: Option<Arc<pinning::ToolPins>>,
    /// The server identity pins belong to (`--server-id`, the `serve` server name); `None`:
    /// the server's own `serverInfo.name`, once its `initialize` answer is seen.
    pub(crate) server_id: Option<String>,
    /// `--shadow-policy`: every call is also decided by it, and a difference is reported as
    /// the decision's shadow.
    pub shadow_policy: Option<ShadowPolicyHandle>,
    /// Learn mode's recorder (where observations can be kept); a call is recorded when
    /// `--learn` was given or the policy in force says `"learn": true`.
    pub(crate) learn: Option<Arc<crate::learn::record::Recorder>>,
    /// What publishes the budgets' state after an admission, made on first use and shared by
    /// every admission (see [`crate::policy::store::worker::Then`]).
    counters_publisher: std::sync::OnceLock<crate::policy::store::worker::Then>,
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
    /// `store` is a [`StoreWorker`], or a store to start one for.
    pub fn new(
        policy: PolicyHandle,
        store: impl Into<StoreWorker>,
        hub: Arc<Hub>,
        grant: impl Into<SmolStr>,
        server: impl Into<SmolStr>,
    ) -> Gateway {
        Gateway {
            policy,
            store: store.into(),
            hub,
            grant: grant.into(),
            server: server.into(),
            audit: None,
            clock: Arc::new(SystemWallClock),
            hold_progress_interval: HOLD_PROGRESS_INTERVAL,
            traces: None,
            pins: None,
            server_id: None,
            shadow_policy: None,
            learn: None,
            counters_publisher: std::sync::OnceLock::new(),
        }
    }

    /// The same gateway pinning tools in `pins`, under the identity `server_id` when given.
    pub fn with_pins(
        mut self,
        pins: Option<Arc<pinning::ToolPins>>,
        server_id: Option<String>,
    ) -> Gateway {
        self.pins = pins;
        self.server_id = server_id;
        self
    }

    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Gateway {
        self.audit = Some(audit);
        self
    }

    pub fn with_traces(mut self, traces: Option<Arc<crate::telemetry::Tracing>>) -> Gateway {
        self.traces = traces;
        self
    }

    /// The same gateway deciding every call by `shadow` too (`--shadow-policy`).
    pub fn with_shadow_policy(mut self, shadow: Option<ShadowPolicyHandle>) -> Gateway {
        self.shadow_policy = shadow;
        self
    }

    /// The same gateway recording observations through `recorder` (learn mode).
    pub(crate) fn with_learn(
        mut self,
        recorder: Option<Arc<crate::learn::record::Recorder>>,
    ) -> Gateway {
        self.learn = recorder;
        self
    }

    /// The same gateway reading `clock` instead of the system's (tests).
    pub fn with_clock(mut self, clock: Arc<dyn WallClock>) -> Gateway {
        self.clock = clock;
        self
    }
}

/// The hub of a gateway `gw` for the grant `tester` in front of the server `fake`, for the
/// gateway's unit tests.
#[cfg(test)]
fn test_hub() -> Arc<crate::control::Hub> {
    crate::control::Hub::new(crate::wire::GatewayInfo {
        id: "gw".into(),
        pid: 1,
        version: "test".into(),
        grant: "tester".into(),
        server: "fake".into(),
        policy: "/tmp/policy.json".into(),
        started_at: chrono::Utc::now(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{DateTime, Utc};
    use serde_json::{Value, json};

    use super::audit::{AuditArgs, AuditFail, AuditKey, AuditOptions, key::KEY_LEN};
    use super::{AuditLog, Gateway, WallClock, test_hub};
    use crate::policy::{MemoryStore, Policy, Verdict};
    use crate::wire::EventKind;

    /// What `timestamp_from_ms` must give: chrono's own conversion.
    fn chrono_timestamp(ms: u64) -> DateTime<Utc> {
        i64::try_from(ms)
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    proptest::proptest! {
        #[test]
        fn timestamps_from_milliseconds_are_chronos_whatever_day_was_converted_before(
            before in proptest::prelude::any::<u64>(),
            day in 0u64..4_000_000,
            in_day in 0u64..86_400_000,
            step in 0u64..200_000_000,
            anywhere in proptest::prelude::any::<u64>(),
        ) {
            let ms = day * 86_400_000 + in_day;
            // The day kept from an earlier call, the same day, the next ones, any time at all.
            for at in [before, ms, ms, ms + step, ms.saturating_sub(step), anywhere, ms] {
                proptest::prop_assert_eq!(super::timestamp_from_ms(at), chrono_timestamp(at));
            }
        }
    }

    #[test]
    fn timestamps_at_the_edges_of_days_and_of_chronos_range_are_chronos() {
        let last = u64::try_from(DateTime::<Utc>::MAX_UTC.timestamp_millis()).unwrap();
        for at in [
            0,
            1,
            86_399_999,
            86_400_000,
            86_400_001,
            1_767_225_599_999,
            1_767_225_600_000,
            last - 1,
            last,
            last + 1,
            last + 86_400_000,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX,
            1_767_225_600_000,
        ] {
            assert_eq!(
                super::timestamp_from_ms(at),
                chrono_timestamp(at),
                "{at} ms"
            );
        }
    }

    /// A clock that always reads the same instant.
    #[derive(Debug)]
    struct Stopped(u64);

    impl WallClock for Stopped {
        fn now_ms(&self) -> u64 {
            self.0
        }
    }

    #[tokio::test]
    async fn a_held_calls_deadline_its_audit_record_and_its_event_read_the_gateways_clock() {
        // 2001-09-09T01:46:40Z: far from any real "now", so the system clock cannot pass.
        let at = DateTime::<Utc>::from_timestamp_millis(1_000_000_000_000).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = AuditLog::open(
            &path,
            AuditOptions {
                args: AuditArgs::Keys,
                fail: AuditFail::Closed,
                key: AuditKey::fixed([7; KEY_LEN]),
                health: None,
            },
        )
        .unwrap();
        let policy = Policy::parse(
            r#"{"version":"1","default":"deny","tools":{"send":{"action":"require_approval","approval_timeout":"2m"}}}"#,
            "policy.json",
        )
        .unwrap();
        let hub = test_hub();
        let mut events = hub.subscribe();
        let gateway = Gateway::new(
            Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
            Arc::new(MemoryStore::new()),
            hub,
            "tester",
            "fake",
        )
        .with_audit(Arc::new(audit))
        .with_clock(Arc::new(Stopped(1_000_000_000_000)));

        let (_, decision) = gateway.decide_call("s", "send", &json!({})).await;
        assert_eq!(decision.verdict, Verdict::Hold);

        let event = events.try_recv().expect("the decision was published");
        let EventKind::Call(call) = &event.kind else {
            panic!("the first event is not the call: {:?}", event.kind);
        };
        assert_eq!(call.hold_deadline, Some(at + chrono::Duration::minutes(2)));
        assert_eq!(event.ts, at, "the event is stamped with the record's time");

        // Closing writes every queued record before it returns.
        if let Some(audit) = &gateway.audit {
            audit.close();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let record: Value = serde_json::from_str(text.lines().next().expect("one record")).unwrap();
        let ts: DateTime<Utc> = serde_json::from_value(record["ts"].clone()).unwrap();
        assert_eq!(ts, at);
    }
    /// Learn mode is opt-in: a gateway whose counters persist has a recorder, but records
    /// only with `--learn` or while the policy in force says `"learn": true`.
    #[test]
    fn calls_are_observed_only_with_learn_on_the_command_line_or_in_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = |learn_policy: bool, flag: bool| {
            let text = format!(r#"{{"version":"1","default":"allow","learn":{learn_policy}}}"#);
            let policy = Policy::parse(&text, "policy.json").unwrap();
            let hub = test_hub();
            let store = crate::learn::store::SqliteLearn::lazy(&dir.path().join("l.sqlite3"));
            let recorder = crate::learn::record::Recorder::start(Arc::new(store), flag).unwrap();
            Gateway::new(
                Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
                Arc::new(MemoryStore::new()),
                hub,
                "tester",
                "fake",
            )
            .with_learn(Some(Arc::new(recorder)))
        };
        assert!(!gateway(false, false).observing());
        assert!(gateway(true, false).observing());
        assert!(gateway(false, true).observing());
        let without = gateway(false, false).with_learn(None);
        assert!(!without.observing());
    }

    /// Shadow limits through a store that answers on its own thread (SQLite), so the
    /// admissions of the enforced decision and of both shadows are waited for together.
    #[tokio::test]
    async fn shadow_admissions_are_waited_for_apart_from_the_enforced_one_and_never_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::policy::SqliteStore::open(&dir.path().join("c.sqlite3")).unwrap();
        let policy = Policy::parse(
            r#"{"version":"1","default":"allow","tools":{
                "ping":{"limits":[{"counter":"ping","window":"minute","max":5}]},
                "pi*":{"shadow":true,"limits":[{"counter":"tight","window":"minute","max":1}]}}}"#,
            "policy.json",
        )
        .unwrap();
        let candidate = Policy::parse(
            r#"{"version":"1","default":"allow","tools":{"pong":{"action":"deny"}}}"#,
            "candidate.json",
        )
        .unwrap();
        let hub = test_hub();
        let gateway = Gateway::new(
            Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
            Arc::new(store),
            hub,
            "tester",
            "fake",
        )
        .with_shadow_policy(Some(Arc::new(arc_swap::ArcSwapOption::from_pointee(
            candidate,
        ))));
        // `ping` has its own rule: the shadow glob never decides it.
        for _ in 0..2 {
            let (_, d) = gateway.decide_call("s", "ping", &json!({})).await;
            assert_eq!((d.verdict, d.shadow), (Verdict::Allow, None));
        }
        // `pipe` falls to the default, beside the shadow glob's one-a-minute limit.
        let (_, first) = gateway.decide_call("s", "pipe", &json!({})).await;
        assert_eq!((first.verdict, first.shadow), (Verdict::Allow, None));
        let (_, second) = gateway.decide_call("s", "pipe", &json!({})).await;
        assert_eq!(
            second.verdict,
            Verdict::Allow,
            "a full shadow limit never refuses"
        );
        let shadow = second.shadow.expect("would rate limit");
        assert_eq!(shadow.verdict, Verdict::RateLimited);
        assert_eq!(shadow.rule, "/tools/pi*/limits/0");
        // The candidate's difference, where no shadow rule has one.
        let (_, pong) = gateway.decide_call("s", "pong", &json!({})).await;
        assert_eq!(pong.verdict, Verdict::Allow);
        let shadow = pong.shadow.expect("the candidate would deny");
        assert_eq!(
            (shadow.verdict, shadow.source),
            (Verdict::Deny, crate::policy::ShadowSource::Policy)
        );
    }
}
