//! The wire protocol between a gateway and its operators (consoles, `tail`, `approve`).
//!
//! JSON text frames over a websocket. The gateway sends [`Event`]s; a client sends
//! [`ClientMsg`]s and gets a [`EventKind::Reply`] for each. These types are the only
//! definition of the protocol: the gateway and every client use them. `docs/wire-protocol.md`
//! documents them with examples.
//!
//! Sequence numbers: every event that reports something that happened (`call`,
//! `hold_resolved`, `outcome`, `policy_applied`, ...) takes the next `seq` of its gateway, so
//! they are strictly increasing. The per-client messages `hello`, `missed` and `reply` carry
//! the `seq` of the latest event at the time they were sent: a `hello`'s snapshot reflects
//! every event up to and including its `seq`, and the live stream continues after it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use smol_str::SmolStr;

pub use crate::policy::{ShadowSource, Verdict};

mod args;
pub use args::CallArgs;

/// The protocol version, sent in every `hello`. A client refuses versions it does not know.
pub const PROTOCOL_VERSION: u32 = 1;

/// One message from a gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub ts: DateTime<Utc>,
    /// The id of the gateway that sent it ([`GatewayInfo::id`]). A [`SmolStr`], as are the
    /// names a call event repeats: short ones are held inline and long ones shared, so
    /// publishing a call allocates none of them.
    pub gateway: SmolStr,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// How much of an unknown event type's name [`DecodeError::UnknownType`] keeps.
const MAX_TYPE_SHOWN: usize = 64;

/// Why a gateway's message could not be read as an [`Event`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A well-formed event (`seq`, `ts`, `gateway`, `type`) of a type this version does not
    /// know: a newer gateway's. A client skips it.
    #[error("an event of type {0:?}, which this toolgate does not know (the gateway is newer)")]
    UnknownType(String),
    /// Not JSON, not an event, or an event of a known type that does not read as that type.
    #[error(transparent)]
    Invalid(#[from] serde_json::Error),
}

impl Event {
    /// Reads one message from a gateway. A newer gateway sends event types this version
    /// does not know; they come back as [`DecodeError::UnknownType`], apart from messages that
    /// are broken, so that a client can skip the first and still refuse the second.
    pub fn decode(text: &str) -> Result<Event, DecodeError> {
        let error = match serde_json::from_str::<Event>(text) {
            Ok(event) => return Ok(event),
            Err(e) => e,
        };
        /// What every event has, whatever its type.
        #[derive(Deserialize)]
        struct Envelope {
            #[serde(rename = "seq")]
            _seq: u64,
            #[serde(rename = "ts")]
            _ts: DateTime<Utc>,
            #[serde(rename = "gateway")]
            _gateway: String,
            #[serde(rename = "type")]
            kind: String,
        }
        match serde_json::from_str::<Envelope>(text) {
            Ok(envelope) if !EventKind::knows(&envelope.kind) => {
                // The name is a hostile gateway's text: kept short for the logs it reaches.
                let mut kind: String = envelope.kind.chars().take(MAX_TYPE_SHOWN).collect();
                if kind.len() < envelope.kind.len() {
                    kind.push('…');
                }
                Err(DecodeError::UnknownType(kind))
            }
            _ => Err(DecodeError::Invalid(error)),
        }
    }
}

/// The error [`EventKind::knows`] reads serde's verdict on a tag with: whether the tag named
/// no variant.
#[derive(Debug)]
enum TagProbe {
    UnknownVariant(String),
    Other,
}

impl std::fmt::Display for TagProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for TagProbe {}

impl serde::de::Error for TagProbe {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        TagProbe::Other
    }

    fn unknown_variant(variant: &str, _expected: &'static [&'static str]) -> Self {
        TagProbe::UnknownVariant(variant.to_owned())
    }
}

impl EventKind {
    /// Whether `kind` is the `type` of an event this version knows. Asked of serde's own
    /// reading of the tag (an object holding only the tag: a known type then fails on a
    /// missing field, an unknown one on the tag), so there is no second list of type names
    /// to fall out of step with the enum.
    pub fn knows(kind: &str) -> bool {
        let tag_only =
            serde::de::value::MapDeserializer::<_, TagProbe>::new(std::iter::once(("type", kind)));
        !matches!(
            EventKind::deserialize(tag_only),
            Err(TagProbe::UnknownVariant(v)) if v == kind
        )
    }
}

/// What an [`Event`] says; serialised as its `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// First message on every connection, and again after `missed`.
    Hello(Box<Hello>),
    /// A tool call was decided.
    Call(CallEvent),
    /// A held call was approved or denied.
    HoldResolved(HoldResolved),
    /// A call that went upstream came back (or failed).
    Outcome(Outcome),
    /// The gateway now enforces this policy file version.
    PolicyApplied(PolicyApplied),
    /// A policy file change was refused; the previous policy stays in force.
    PolicyRejected(PolicyRejected),
    /// Counter state after a change.
    Counters(Counters),
    /// The upstream server came up or went down.
    Upstream(Upstream),
    /// The tools the upstream offers (from its `tools/list` answers).
    Tools(Tools),
    /// The counter store stopped answering, or answers again.
    Store(StoreStatus),
    /// `serve` refused to open MCP sessions for a grant: a session cap was reached.
    SessionRefused(SessionRefused),
    /// `serve`'s grants file changed: applied, refused (the grants in force stay), or
    /// deleted (every token revoked).
    Grants(GrantsChanged),
    /// The audit log stopped being writable, or is written again.
    Audit(AuditStatus),
    /// A tool's definition no longer matches its pin, or an operator accepted it (tool
    /// pinning: `pins` in the policy).
    ToolChanged(ToolChanged),
    /// This client fell behind and events were dropped for it; a fresh `hello` follows.
    Missed(Missed),
    /// The answer to a [`ClientMsg`].
    Reply(Reply),
}

/// Who a gateway is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayInfo {
    /// Short random id, unique per gateway start; prefixes its call ids.
    pub id: String,
    pub pid: u32,
    pub version: String,
    /// The grant calls are attributed to (`wrap --grant`); for HTTP gateways, `*`.
    pub grant: String,
    /// A human name for the upstream server (its command, or its name in SERVERS.json).
    pub server: String,
    /// Absolute path of the policy file.
    pub policy: String,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub info: GatewayInfo,
    pub snapshot: Snapshot,
}

/// The state a (re)connecting client starts from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Recent calls, oldest first, each with what became of it so far.
    pub calls: Vec<CallRecord>,
    /// Call ids of the calls held now, oldest first.
    pub holds: Vec<String>,
    pub counters: Vec<CounterState>,
    /// Hash of the policy in force; `None` only before the first policy loaded.
    pub policy_hash: Option<String>,
    /// When the latest policy file change was refused: its diagnostics.
    pub policy_error: Option<Vec<String>>,
    pub tools: Vec<ToolInfo>,
    pub upstream_up: bool,
    pub totals: Totals,
    /// Tools whose definition changed since it was pinned and that no operator has accepted
    /// yet (each as its latest `tool_changed` event). Absent from older gateways.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_changes: Vec<ToolChanged>,
    /// Which counter store `counters` are kept in, the same text for every gateway sharing
    /// it (`redis://HOST:PORT/DB` without a password, `sqlite:HOST:PATH`, `memory:GATEWAY`),
    /// so that a client shows a budget replicas share once. Absent from older gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter_store: Option<String>,
}

/// Counts of decisions since the gateway started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Totals {
    pub allow: u64,
    pub deny: u64,
    pub rate_limited: u64,
    pub hold: u64,
}

/// A call and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// When the call was decided (its `call` event's `ts`). Absent from gateways before this
    /// field existed; clients then place the call at the time they received the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<DateTime<Utc>>,
    pub call: CallEvent,
    pub resolution: Option<HoldResolved>,
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallEvent {
    /// `<gateway id>-<n>`: unique on this machine, so `toolgate approve ID` finds its gateway.
    pub call_id: SmolStr,
    pub tool: SmolStr,
    pub grant: SmolStr,
    pub session: SmolStr,
    pub server: SmolStr,
    pub decision: Verdict,
    /// JSON Pointer of the deciding rule.
    pub rule: SmolStr,
    pub reason: SmolStr,
    /// The arguments, secret-looking keys redacted, cut to a size cap.
    pub args: CallArgs,
    /// The arguments were larger than the cap and `args` is a truncated preview.
    #[serde(default)]
    pub args_truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// For holds: when the approval times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_deadline: Option<DateTime<Utc>>,
    /// What a shadow rule or the shadow policy would have decided instead, when that
    /// differs from `decision` (recorded, not enforced). Boxed: most calls have none, and
    /// the console keeps 100,000 of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Box<ShadowDecision>>,
}

/// A decision made beside the enforced one and not enforced (a call event's `shadow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowDecision {
    /// What the shadow side would have done: `deny`, `rate_limited`, `hold` or `allow`.
    pub decision: Verdict,
    /// JSON Pointer of its deciding rule, in the policy named by `source`.
    pub rule: String,
    pub reason: String,
    /// `rule`: a `"shadow": true` rule of the enforced policy; `policy`: `--shadow-policy`.
    pub source: ShadowSource,
}

impl ShadowDecision {
    /// `would deny`, `would rate limit`, `would hold`, `would allow`.
    pub fn would(&self) -> &'static str {
        crate::policy::would(self.decision)
    }
}

impl From<crate::policy::Shadow> for ShadowDecision {
    fn from(s: crate::policy::Shadow) -> Self {
        ShadowDecision {
            decision: s.verdict,
            rule: s.rule,
            reason: s.reason,
            source: s.source,
        }
    }
}

/// Who or what ended a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolvedBy {
    Operator,
    Timeout,
    Cancellation,
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldResolved {
    pub call_id: String,
    pub approved: bool,
    pub by: ResolvedBy,
    /// The operator's name, when one resolved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub call_id: SmolStr,
    /// From the call's arrival to its answer leaving the gateway, hold time included.
    pub latency_us: u64,
    /// The upstream answered with an error, or with `isError: true`, or did not answer.
    pub error: bool,
    /// A short preview of the result or error, size-capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SmolStr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyApplied {
    pub path: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRejected {
    pub path: String,
    /// One compiler-style line per problem (or why the file could not be read).
    pub diagnostics: Vec<String>,
    /// Hash of the policy still in force.
    pub kept_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub counters: Vec<CounterState>,
}

/// One counter budget for one scope key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterState {
    pub counter: String,
    /// `grant`, `session` or `global`.
    pub scope: String,
    /// The grant or session the budget belongs to; empty for `global`.
    pub key: String,
    pub used: u64,
    pub max: u64,
    pub window_ms: u64,
    /// When the oldest counted call leaves the window (room comes back); `None` when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_free_in_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upstream {
    pub server: String,
    pub up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The health of the counter store (`--counters`), sent when it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// The store as configured (`sqlite:PATH`, `redis://HOST:PORT/DB`; never a password).
    pub store: String,
    pub ok: bool,
    /// Why it is down, and what calls with limits get meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Which session cap of `serve` refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionCap {
    /// The grant has as many sessions as one grant may (`--max-sessions-per-grant`).
    Grant,
    /// The gateway has as many sessions as it may (`--max-sessions`).
    Gateway,
}

impl SessionCap {
    /// Which cap of `max` sessions was reached and where it is set, for a person.
    pub fn explain(self, max: u64) -> String {
        match self {
            SessionCap::Grant => format!(
                "the grant has {max} open sessions, as many as one grant may \
                 (--max-sessions-per-grant)"
            ),
            SessionCap::Gateway => {
                format!("the gateway has {max} open sessions, as many as it may (--max-sessions)")
            }
        }
    }
}

/// MCP sessions refused for one grant. Sent at the first refusal, then at most once every
/// few seconds per grant and cap while refusals go on, counting those in between.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRefused {
    pub grant: String,
    /// The server the latest refused session was for.
    pub server: String,
    pub cap: SessionCap,
    /// The cap's value.
    pub max: u64,
    /// Sessions refused for this grant and cap since the previous such event, this one's
    /// included.
    pub refused: u64,
}

/// What became of a change to `serve`'s grants file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantsChange {
    /// A valid file: its grants are the ones in force now.
    Applied,
    /// An empty, invalid or unreadable file: the grants in force stay.
    Refused,
    /// No file at the path any more: every token is revoked until a valid file is back.
    Deleted,
}

/// `serve`'s grants file changed (sent once per state the file goes through).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantsChanged {
    /// Absolute path of the grants file.
    pub path: String,
    pub change: GrantsChange,
    /// How many grants are in force now.
    pub grants: u64,
    /// For a person: what changed, or why the file was refused and what to do.
    pub detail: String,
}

/// The health of the audit log (`--audit`), sent when it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditStatus {
    /// The audit log's path.
    pub path: String,
    pub ok: bool,
    /// What went wrong and what tool calls get meanwhile (`--audit-fail`); on recovery, what
    /// was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What happened to a tool's pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinChange {
    /// The server offers a definition that differs from the pinned one: awaiting review.
    Changed,
    /// An operator accepted the offered definition: it is the pin now; the review is over.
    Accepted,
}

/// A tool definition that differs from its pin (`change: changed`), or the end of that
/// review (`change: accepted`).
///
/// Definitions are the pinned fields of a `tools/list` entry as JSON (`name`, `title`,
/// `description`, `inputSchema`, `outputSchema`, `annotations`; absent fields omitted), as the
/// server sent them: outside text, to be sanitised before it reaches a screen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolChanged {
    /// The server identity the pin belongs to (`--server-id`, the `serve` server name, or the
    /// server's `serverInfo.name`).
    pub server: String,
    pub tool: String,
    pub change: PinChange,
    /// The pinned definition's fingerprint: lowercase hex SHA-256 of its RFC 8785 form.
    pub pinned_fingerprint: String,
    /// The offered definition's fingerprint (for `accepted`, the one now pinned).
    pub offered_fingerprint: String,
    /// The pinned definition (for `accepted`, the one it replaced).
    pub pinned: Value,
    /// The definition the server offers now.
    pub offered: Value,
    /// Calls to the tool are refused and it is left out of `tools/list` (`"pins":
    /// "enforce"`, or a flagged description under `quarantine_flagged`); `false` under
    /// `"pins": "warn"`.
    pub quarantined: bool,
    /// Description checks on the offered definition (`pins::Finding` as JSON: `flag`, its
    /// fields, `excerpt`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Value>,
    /// The operator who accepted it (`accepted` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tools {
    pub server: String,
    pub tools: Vec<ToolInfo>,
}

/// A tool as the upstream describes it in `tools/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(
        default,
        rename = "inputSchema",
        skip_serializing_if = "Option::is_none"
    )]
    pub input_schema: Option<Value>,
    /// The schema of the tool's structured result, when it declares one (`toolgate scan`
    /// looks for secrets in it).
    #[serde(
        default,
        rename = "outputSchema",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Missed {
    /// How many events were dropped for this client.
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Reply {
    /// The `id` of the [`ClientMsg`] answered.
    pub id: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why a command was refused, for a client to act on (`error` is for people). Absent
    /// from older gateways and on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ReplyCode>,
    /// The answer to [`ClientMsg::ReadPolicy`], and to a [`ClientMsg::WritePolicy`] refused as
    /// a `conflict` (the file as it is now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyText>,
}

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyCode {
    /// The connection's role does not allow it.
    Forbidden,
    /// `write_policy`: the file changed since the text the edit started from (`base_hash`).
    Conflict,
    /// `write_policy`: the text is not a valid policy (`error` holds the diagnostics).
    Invalid,
    /// `write_policy`: the gateway cannot write its policy file (a read-only mount: the
    /// policy is managed elsewhere).
    ReadOnly,
    /// The gateway does not offer this (no policy file, no pinning, ...).
    Unsupported,
    /// Anything else (the call is unknown or already resolved, an I/O error, ...).
    Failed,
}

/// A gateway's policy file as it is on its disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyText {
    /// Where the gateway reads it (for people; a client never opens it).
    pub path: String,
    /// The file's text.
    pub text: String,
    /// SHA-256 of the file's bytes, lowercase hex: the `base_hash` of a later write.
    pub hash: String,
    /// Whether the gateway can write the file (false: managed elsewhere, read-only).
    pub writable: bool,
}

/// A command from a client. Each carries an `id` its [`Reply`] repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    Approve {
        id: u64,
        call_id: String,
        #[serde(default)]
        operator: Option<String>,
    },
    Deny {
        id: u64,
        call_id: String,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        operator: Option<String>,
    },
    /// Pins the offered definition of `tool` (the one whose fingerprint is given, so that a
    /// definition that changed again after the operator looked is not accepted unseen), and
    /// lifts its quarantine.
    AcceptPin {
        id: u64,
        server: String,
        tool: String,
        fingerprint: String,
        #[serde(default)]
        operator: Option<String>,
    },
    /// Asks for the gateway's policy file (any role); the reply carries it in `policy`.
    ReadPolicy { id: u64 },
    /// Replaces the gateway's policy file (admin role). `base_hash` is the `hash` of the text
    /// the edit started from (a `read_policy` reply); when the file changed since, the write
    /// is refused with code `conflict` unless `force`. The gateway validates `text` as `check`
    /// does (code `invalid`), writes it atomically, and its watcher applies it as any edit.
    WritePolicy {
        id: u64,
        text: String,
        base_hash: String,
        #[serde(default)]
        force: bool,
    },
}

impl ClientMsg {
    /// The id its [`Reply`] repeats.
    pub fn id(&self) -> u64 {
        match self {
            ClientMsg::Approve { id, .. }
            | ClientMsg::Deny { id, .. }
            | ClientMsg::AcceptPin { id, .. }
            | ClientMsg::ReadPolicy { id }
            | ClientMsg::WritePolicy { id, .. } => *id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_flat_with_their_type() {
        let ev = Event {
            seq: 7,
            ts: "2026-11-26T12:00:00Z".parse().unwrap(),
            gateway: "a1b2c3".into(),
            kind: EventKind::Missed(Missed { dropped: 3 }),
        };
        let text = serde_json::to_string(&ev).unwrap();
        assert_eq!(
            text,
            r#"{"seq":7,"ts":"2026-11-26T12:00:00Z","gateway":"a1b2c3","type":"missed","dropped":3}"#
        );
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn a_session_refused_event_reads_as_documented() {
        let text = r#"{"seq":62,"ts":"2026-11-26T12:00:00Z","gateway":"a1b2c3","type":"session_refused","grant":"ci-bot","server":"time","cap":"grant","max":16,"refused":37}"#;
        let ev: Event = serde_json::from_str(text).unwrap();
        let EventKind::SessionRefused(refused) = &ev.kind else {
            panic!("{ev:?}");
        };
        assert_eq!(refused.cap, SessionCap::Grant);
        assert_eq!(refused.refused, 37);
        assert_eq!(serde_json::to_string(&ev).unwrap(), text);
    }

    #[test]
    fn a_grants_event_reads_as_documented() {
        let text = r#"{"seq":72,"ts":"2026-11-26T12:00:00Z","gateway":"a1b2c3","type":"grants","path":"/srv/toolgate/grants.json","change":"deleted","grants":0,"detail":"every token is revoked"}"#;
        let ev: Event = serde_json::from_str(text).unwrap();
        let EventKind::Grants(grants) = &ev.kind else {
            panic!("{ev:?}");
        };
        assert_eq!(grants.change, GrantsChange::Deleted);
        assert_eq!(serde_json::to_string(&ev).unwrap(), text);
        for change in ["applied", "refused"] {
            let text = text.replace("deleted", change);
            assert!(serde_json::from_str::<Event>(&text).is_ok(), "{change}");
        }
    }

    #[test]
    fn an_event_of_a_type_this_version_does_not_know_is_told_apart_from_a_broken_one() {
        let unknown = r#"{"seq":80,"ts":"2026-11-26T12:00:00Z","gateway":"a1b2c3","type":"quota_changed","grant":"ci-bot","left":3}"#;
        assert!(
            matches!(Event::decode(unknown), Err(DecodeError::UnknownType(k)) if k == "quota_changed")
        );
        let known = r#"{"seq":7,"ts":"2026-11-26T12:00:00Z","gateway":"a1b2c3","type":"missed","dropped":3}"#;
        assert!(matches!(
            Event::decode(known),
            Ok(Event {
                kind: EventKind::Missed(Missed { dropped: 3 }),
                ..
            })
        ));
        let broken = [
            // Not JSON, not an object.
            "hello",
            r#"["type","quota_changed"]"#,
            // A known type that does not read as that type.
            r#"{"seq":7,"ts":"2026-11-26T12:00:00Z","gateway":"a1b2c3","type":"grants","path":1}"#,
            r#"{"seq":7,"ts":"2026-11-26T12:00:00Z","gateway":"a1b2c3","type":"missed"}"#,
            // An unknown type without what every event has.
            r#"{"type":"quota_changed"}"#,
            r#"{"seq":"x","ts":"2026-11-26T12:00:00Z","gateway":"a1b2c3","type":"quota_changed"}"#,
            // A type that is not a string.
            r#"{"seq":7,"ts":"2026-11-26T12:00:00Z","gateway":"a1b2c3","type":7}"#,
        ];
        let long = unknown.replace("quota_changed", &"x".repeat(10_000));
        assert!(
            matches!(Event::decode(&long), Err(DecodeError::UnknownType(k)) if k.chars().count() == MAX_TYPE_SHOWN + 1)
        );
        for text in broken {
            assert!(
                matches!(Event::decode(text), Err(DecodeError::Invalid(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn every_event_type_is_known_and_others_are_not() {
        for kind in [
            "hello",
            "call",
            "hold_resolved",
            "outcome",
            "policy_applied",
            "policy_rejected",
            "counters",
            "upstream",
            "tools",
            "store",
            "session_refused",
            "grants",
            "missed",
            "reply",
        ] {
            assert!(EventKind::knows(kind), "{kind}");
        }
        for kind in ["", "Hello", "policyApplied", "quota_changed", "type"] {
            assert!(!EventKind::knows(kind), "{kind:?}");
        }
    }

    #[test]
    fn client_messages_reject_unknown_fields() {
        let ok: ClientMsg =
            serde_json::from_str(r#"{"type":"approve","id":1,"call_id":"a1-4"}"#).unwrap();
        assert!(matches!(ok, ClientMsg::Approve { id: 1, .. }));
        assert!(
            serde_json::from_str::<ClientMsg>(r#"{"type":"approve","id":1,"call_id":"x","y":1}"#)
                .is_err()
        );
    }
}
