//! Learn mode: what agents really do, recorded by a gateway started with `--learn`, and the
//! least-privilege policy proposed from it (`toolgate learn`, the console's review).
//!
//! This file holds the types the recorder, `toolgate learn` and the console's review share;
//! the console (model layer) reads them as plain data.
//!
//! - [`record`] — the gateway's side: each decided `tools/call` becomes an [`Observation`],
//!   handed to a thread of its own over a bounded channel (never blocking a call; one that
//!   does not fit is dropped and counted), which redacts it and stores it in batches.
//! - [`store`] — where observations live, beside the counters: a SQLite file next to the
//!   counter file (its own schema version), or the counters' Redis; retention (7 days, at
//!   most 100,000 calls per server), `--forget`.
//! - [`propose`] — pure: observations in, a [`Draft`] out (least-privilege rules with their
//!   evidence), and `--against` proposals for an existing policy.

pub(crate) mod propose;
pub(crate) mod record;
pub(crate) mod store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The key of the object that stands for a secret-looking value in recorded arguments.
pub(crate) const TYPE_MARKER: &str = "$toolgate_type";

/// One recorded call, as `toolgate learn` reads it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Observation {
    /// When the call was decided.
    pub(crate) at: DateTime<Utc>,
    /// The server's identity (as tool pins and `--server` name it).
    pub(crate) server: String,
    pub(crate) tool: String,
    /// The grant the call was attributed to (`serve`'s bearer token, `wrap --grant`, whose
    /// default is `default`); `None` in records that never had one.
    pub(crate) grant: Option<String>,
    /// What the gateway decided: `allow`, `deny`, `rate_limited` or `hold`.
    pub(crate) decision: String,
    /// For a held call: whether a person approved it (`None`: not held, or never resolved).
    pub(crate) approved: Option<bool>,
    /// The call's arguments. A value that looks secret under the redaction rules is recorded
    /// as its type only: the object `{"$toolgate_type": "string"}` (or number, ...) in its place.
    pub(crate) args: serde_json::Value,
}

/// What a proposal does to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProposalKind {
    /// Allow (or hold) an observed tool, with the limit and conditions the traffic needs.
    Add,
    /// `--against`: an existing rule is looser than the traffic needs; tighten it.
    Tighten,
    /// `--against`: a tool the policy allows but no call used; remove it.
    Remove,
}

/// One proposed change, with the evidence behind it, reviewed one by one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Proposal {
    pub(crate) kind: ProposalKind,
    /// The key under the policy's `tools` (a tool name, or a glob once widened).
    pub(crate) tool: String,
    /// The rule object as the policy format writes it under `tools.<tool>` (`None` for
    /// [`ProposalKind::Remove`]).
    pub(crate) rule: Option<serde_json::Value>,
    /// The rule under `--against`, if the policy had one (for the review's before/after).
    pub(crate) current: Option<serde_json::Value>,
    /// One line saying what evidence made the rule ("214 calls from 3 grants over 6 days;
    /// peak 12 a minute; paths under /srv/notes"); also the rule's `reason`.
    pub(crate) reason: String,
    /// The evidence in detail, one line each (counts per grant, value sets, ranges, ...).
    pub(crate) evidence: Vec<String>,
}

/// A whole proposal: what `toolgate learn` writes and the review walks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Draft {
    /// The proposals, in the order the review shows them (by tool name).
    pub(crate) proposals: Vec<Proposal>,
    /// The policy text the draft starts from: `--against`'s file, or a fresh
    /// `{"version": "1", "default": "deny", "tools": {}}`.
    pub(crate) base: String,
    /// The observations the draft was made from (what the review's what-if re-decides).
    pub(crate) observations: Vec<Observation>,
}

/// Strings longer than this many bytes are recorded as their type only: no policy lists such
/// values (a file's content, a prompt), and 100,000 calls of them would fill a disk.
pub(crate) const MAX_RECORDED_STRING: usize = 4096;

/// The arguments as an observation keeps them: every value the redaction rules find secret
/// (a secret-looking key's whole value, a string holding a credential shape), and every
/// string longer than [`MAX_RECORDED_STRING`], replaced by `{"$toolgate_type": "<its JSON
/// type>"}`, so that a draft can still require the key and its type without the value ever
/// being stored.
pub(crate) fn observed_args(args: &Value) -> Value {
    if !crate::redact::needs_redaction(args) && !has_long_string(args) {
        return args.clone();
    }
    match args {
        Value::String(s) if s.len() > MAX_RECORDED_STRING => type_marker(args),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if crate::redact::is_secret_key(k) {
                        type_marker(v)
                    } else {
                        observed_args(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(observed_args).collect()),
        // Past the first test, a scalar here is a string holding a credential.
        other => type_marker(other),
    }
}

fn has_long_string(value: &Value) -> bool {
    match value {
        Value::String(s) => s.len() > MAX_RECORDED_STRING,
        Value::Array(items) => items.iter().any(has_long_string),
        Value::Object(map) => map.values().any(has_long_string),
        _ => false,
    }
}

/// `{"$toolgate_type": "<type>"}` for `value`.
fn type_marker(value: &Value) -> Value {
    let mut marker = serde_json::Map::new();
    marker.insert(
        TYPE_MARKER.to_owned(),
        Value::String(json_type(value).to_owned()),
    );
    Value::Object(marker)
}

/// The JSON type of a value, as JSON Schema names it.
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The type a recorded value stands for when it is a type marker.
pub(crate) fn marked_type(value: &Value) -> Option<&str> {
    let map = value.as_object()?;
    if map.len() != 1 {
        return None;
    }
    map.get(TYPE_MARKER)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_values_are_recorded_as_their_type_only_and_the_rest_as_they_are() {
        let args = json!({
            "path": "/srv/notes/a.md",
            "apiKey": "abc123",
            "auth": {"user": "me", "pin": 1234},
            "retries": 3,
            "note": "call with Bearer abcdefghijklmnopqrstuvwxyz0123",
            "items": [{"password": 17}, "plain"],
        });
        let seen = observed_args(&args);
        assert_eq!(
            seen,
            json!({
                "path": "/srv/notes/a.md",
                "apiKey": {"$toolgate_type": "string"},
                "auth": {"$toolgate_type": "object"},
                "retries": 3,
                "note": {"$toolgate_type": "string"},
                "items": [{"password": {"$toolgate_type": "number"}}, "plain"],
            })
        );
        assert!(!seen.to_string().contains("abc123"));
        assert!(!seen.to_string().contains("abcdefghijklmnop"));
        assert_eq!(marked_type(&seen["apiKey"]), Some("string"));
        assert_eq!(marked_type(&seen["path"]), None);
    }

    #[test]
    fn long_strings_are_recorded_as_their_type_only_and_short_ones_beside_them_kept() {
        let content = "x".repeat(MAX_RECORDED_STRING + 1);
        let args = json!({"path": "/srv/a.md", "content": content, "lines": ["a", content]});
        assert_eq!(
            observed_args(&args),
            json!({
                "path": "/srv/a.md",
                "content": {"$toolgate_type": "string"},
                "lines": ["a", {"$toolgate_type": "string"}],
            })
        );
    }
}
