//! The rule `toolgate scan` suggests for a tool, and the starting policy made of them.
//!
//! read → allowed; write → allowed under a per-grant rate limit; destructive → held for a
//! person (`require_approval`). A tool that takes or returns secrets, or reaches outside,
//! gets a stricter limit. Every rule carries a `reason` that says, in words, why it was
//! suggested, so the person reviewing the file (and an agent whose call is held) reads why.
//! The policy is `default: deny` and `pins: enforce` with one rule per tool, in the server's order; it is
//! checked with [`crate::policy::Policy::parse`] before anyone sees it.

use serde_json::{Map, Value, json};

use super::ScannedTool;
use super::classify::{Classification, Evidence, RiskClass};
use crate::wire::ToolInfo;

/// Calls a minute a `write` tool is allowed per grant.
pub(crate) const WRITE_PER_MINUTE: u64 = 30;
/// Calls a minute a tool that handles secrets or reaches outside is allowed per grant.
pub(crate) const SENSITIVE_PER_MINUTE: u64 = 10;

/// How much a rule lets through without a person: the order `--against` compares by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Permission {
    Denied,
    Approval,
    Limited,
    Unlimited,
}

impl Permission {
    pub(crate) fn words(self) -> &'static str {
        match self {
            Permission::Denied => "denies it",
            Permission::Approval => "holds each call for a person",
            Permission::Limited => "allows it under a rate limit",
            Permission::Unlimited => "allows it without any limit",
        }
    }
}

/// The rule suggested for `tool`, as policy JSON (`{"action": ..., "rate_limit": ...,
/// "reason": ...}`). Pure, for the console's "apply the suggestion" as much as for `scan`.
/// The classification decides everything; the tool is taken so callers pass the pair they
/// show, and the suggestion may grow to use it.
pub fn suggested_rule(_tool: &ToolInfo, classification: &Classification) -> Value {
    let mut rule = Map::new();
    let why = because(classification);
    let sensitive = classification.handles_secrets() || classification.open_world;
    let flags = flag_sentence(classification);
    match (classification.class, per_minute(classification)) {
        (RiskClass::Destructive, _) => {
            rule.insert("action".into(), json!("require_approval"));
            rule.insert(
                "reason".into(),
                json!(format!(
                    "can destroy what cannot be undone ({why}){flags}: a person approves each call"
                )),
            );
        }
        (class, Some(max)) => {
            rule.insert("action".into(), json!("allow"));
            rule.insert("rate_limit".into(), json!({"max": max, "window": "minute"}));
            let what = if class == RiskClass::Read {
                "only reads"
            } else {
                "changes things"
            };
            let stricter = if sensitive && class == RiskClass::Write {
                " (stricter than the usual 30)"
            } else {
                ""
            };
            rule.insert(
                "reason".into(),
                json!(format!(
                    "{what} ({why}){flags}: allowed, at most {max} calls a minute per grant{stricter}"
                )),
            );
        }
        (_, None) => {
            rule.insert("action".into(), json!("allow"));
            rule.insert(
                "reason".into(),
                json!(format!("only reads ({why}){flags}: allowed")),
            );
        }
    }
    Value::Object(rule)
}

/// The per-grant limit a minute the suggestion sets, if any.
fn per_minute(c: &Classification) -> Option<u64> {
    let sensitive = c.handles_secrets() || c.open_world;
    match c.class {
        RiskClass::Destructive => None,
        RiskClass::Write if sensitive => Some(SENSITIVE_PER_MINUTE),
        RiskClass::Write => Some(WRITE_PER_MINUTE),
        // A read that hands out secrets is allowed, but not in bulk.
        RiskClass::Read if c.handles_secrets() => Some(SENSITIVE_PER_MINUTE),
        RiskClass::Read => None,
    }
}

/// How permissive the suggestion for `c` is.
pub(crate) fn suggested_permission(c: &Classification) -> Permission {
    match (c.class, per_minute(c)) {
        (RiskClass::Destructive, _) => Permission::Approval,
        (_, Some(_)) => Permission::Limited,
        (_, None) => Permission::Unlimited,
    }
}

/// The suggestion in a few words, for the summary table: `allow`, `allow 30/minute`,
/// `require_approval`.
pub(crate) fn short_rule(c: &Classification) -> String {
    match (c.class, per_minute(c)) {
        (RiskClass::Destructive, _) => "require_approval".into(),
        (_, Some(max)) => format!("allow {max}/minute"),
        (_, None) => "allow".into(),
    }
}

/// Why the class: what the server said, or what the guess rests on.
pub(crate) fn because(c: &Classification) -> String {
    match (&c.evidence, c.class) {
        (Evidence::Annotations { .. }, RiskClass::Read) => "the server marks it read-only".into(),
        (Evidence::Annotations { .. }, RiskClass::Write) => {
            "the server marks it as changing things, not destructively".into()
        }
        (Evidence::Annotations { hint }, RiskClass::Destructive)
            if hint.starts_with("destructiveHint") =>
        {
            "the server marks it destructive".into()
        }
        (Evidence::Annotations { .. }, RiskClass::Destructive) => {
            "the server says it is not read-only and does not say it is harmless".into()
        }
        (Evidence::Name { word }, _) => format!("guessed from \"{word}\" in its name"),
        (Evidence::Description { word }, _) => {
            format!("guessed from \"{word}\" in its description")
        }
        (Evidence::Nothing, _) => {
            "guessed: neither its name nor its description says what it does".into()
        }
    }
}

fn flag_sentence(c: &Classification) -> String {
    let mut parts = Vec::new();
    if let Some(first) = c.secret_fields.first() {
        let more = c.secret_fields.len() - 1;
        let field = first.split_once('.').map_or(first.as_str(), |(_, f)| f);
        let side = if first.starts_with("output.") {
            "returns"
        } else {
            "takes"
        };
        parts.push(if more == 0 {
            format!("it {side} a secret ({field})")
        } else {
            format!("it handles secrets ({field} and {more} more)")
        });
    }
    if c.open_world {
        parts.push("it reaches outside this server".to_string());
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("; {}", parts.join("; "))
    }
}

/// A tool the policy cannot name: its name has `*` or `?` (a policy key with them is a
/// glob, and the format has no escape), or an earlier tool had the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Skipped {
    pub name: String,
    pub why: &'static str,
}

/// The starting policy: `default: deny`, one suggested rule per tool in the server's order.
pub(crate) fn starting_policy(tools: &[ScannedTool]) -> (Value, Vec<Skipped>) {
    let mut rules = Map::new();
    let mut skipped = Vec::new();
    for t in tools {
        let name = &t.info.name;
        if name.contains(['*', '?']) {
            skipped.push(Skipped {
                name: name.clone(),
                why: "its name has * or ?, which a policy reads as a glob; left to the default (deny)",
            });
        } else if rules.contains_key(name) {
            skipped.push(Skipped {
                name: name.clone(),
                why: "the server offers this name twice; the first one's rule is kept",
            });
        } else {
            rules.insert(name.clone(), suggested_rule(&t.info, &t.classification));
        }
    }
    // A tool that changes after this policy was written is quarantined until reviewed.
    let policy = json!({
        "version": "1",
        "default": "deny",
        "pins": "enforce",
        "tools": Value::Object(rules),
    });
    (policy, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::scan::classify::classify;

    fn scanned(name: &str, description: &str, input: Value) -> ScannedTool {
        let info = ToolInfo {
            name: name.into(),
            description: Some(description.into()),
            input_schema: Some(input),
            output_schema: None,
            annotations: None,
        };
        ScannedTool {
            classification: classify(&info),
            info,
        }
    }

    #[test]
    fn each_class_gets_its_rule_and_a_reason_in_words() {
        let read = scanned("get_user", "", json!({}));
        let write = scanned("create_invoice", "", json!({}));
        let gone = scanned("delete_account", "", json!({}));
        let r = suggested_rule(&read.info, &read.classification);
        assert_eq!(r["action"], "allow");
        assert!(r.get("rate_limit").is_none());
        let w = suggested_rule(&write.info, &write.classification);
        assert_eq!(w["rate_limit"], json!({"max": 30, "window": "minute"}));
        assert!(
            w["reason"].as_str().is_some_and(
                |s| s.contains("\"create\" in its name") && s.contains("30 calls a minute")
            ),
            "{w}"
        );
        let d = suggested_rule(&gone.info, &gone.classification);
        assert_eq!(d["action"], "require_approval");
        assert!(
            d["reason"]
                .as_str()
                .is_some_and(|s| s.contains("a person approves"))
        );
    }

    #[test]
    fn secrets_and_open_world_make_the_limit_stricter() {
        let key = scanned(
            "create_api_key",
            "",
            json!({"properties": {"apiKey": {"type": "string"}}}),
        );
        let rule = suggested_rule(&key.info, &key.classification);
        assert_eq!(rule["rate_limit"]["max"], SENSITIVE_PER_MINUTE);
        assert!(
            rule["reason"]
                .as_str()
                .is_some_and(|s| s.contains("apiKey"))
        );
        let mail = scanned("send_email", "Sends an email", json!({}));
        assert_eq!(
            suggested_rule(&mail.info, &mail.classification)["rate_limit"]["max"],
            SENSITIVE_PER_MINUTE
        );
    }

    #[test]
    fn the_starting_policy_is_valid_in_server_order_and_skips_unnameable_tools() {
        let tools = vec![
            scanned("list_users", "", json!({})),
            scanned("create_user", "", json!({})),
            scanned("delete_user", "", json!({})),
            scanned("odd*name", "", json!({})),
            scanned("list_users", "", json!({})),
        ];
        let (policy, skipped) = starting_policy(&tools);
        let text = serde_json::to_string_pretty(&policy).expect("serialises");
        let parsed = Policy::parse(&text, "suggested.json").expect("valid policy");
        assert_eq!(
            parsed.tool_keys().collect::<Vec<_>>(),
            ["list_users", "create_user", "delete_user"]
        );
        assert_eq!(parsed.default_action(), crate::policy::Action::Deny);
        assert_eq!(parsed.pins(), crate::policy::PinMode::Enforce);
        assert_eq!(
            skipped.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["odd*name", "list_users"]
        );
    }
}
