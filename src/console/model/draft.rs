//! The policy draft: the policy file's text as a JSON document the console edits.
//!
//! A [`Draft`] holds the file as loaded (the base the diff is against), the document being
//! edited, and that document compiled by [`Policy::parse`] — the same validation
//! `toolgate check` runs, so the console never judges a policy on its own. Every [`Edit`]
//! is applied to a copy, re-serialised and re-validated; an edit that would make the policy
//! invalid is refused and the draft stays as it was.
//!
//! The draft's text is the file's text with only the changed values rewritten
//! ([`super::splice`]): untouched rules keep their formatting and key order byte for byte,
//! and the diff the operator confirms shows just the change. (If a change cannot be spliced,
//! the whole document is pretty printed with 2 spaces; key order is still kept, through
//! serde_json's `preserve_order`.) A draft the console has not changed is the file, byte
//! for byte.

use serde_json::{Map, Value, json};

use crate::policy::{Diagnostics, Policy, RuleMatch};

/// One change the operator asks for (from the command line, a key, or the Limits view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// `:allow TOOL`: the tool's rule allows it.
    Allow(String),
    /// `:deny TOOL [REASON...]`: the tool's rule denies it, with a reason for the agent.
    Deny(String, Option<String>),
    /// `:hold TOOL`: the tool's calls wait for an operator.
    Hold(String),
    /// `:limit TOOL MAX/WINDOW [SCOPE]`: the tool's own counter (named after it).
    Limit {
        tool: String,
        max: u64,
        window: Value,
        scope: Option<String>,
    },
    /// `:unlimit TOOL`: the tool's rule counts against no limit.
    Unlimit(String),
    /// `:default allow|deny|require_approval`.
    Default(String),
    /// `:hide TOOL`.
    Hide(String),
    /// `:shadow TOOL`: a shadow rule that would deny the tool, for a tool without a rule of
    /// its own (one key has one rule: a shadow rule in its place would stop enforcing it).
    ShadowDeny(String),
    /// Policy view `P`: the shadow rule `tools[key]` is enforced from now on (its `shadow`
    /// removed).
    Promote(String),
    /// The rule editor: `tools[key]` becomes `rule` (in place if it exists, else last).
    SetRule { key: String, rule: Value },
    /// Limits view: a new `max` and/or `window` for every limit naming `counter`.
    SetCounter {
        counter: String,
        max: Option<u64>,
        window: Option<Value>,
    },
}

/// Why an edit was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EditError {
    /// The edit made an invalid policy; these are `toolgate check`'s diagnostics.
    #[error("refused, the policy would be invalid: {}", first_line(.0))]
    Invalid(Diagnostics),
    /// The file as loaded is not a JSON object, so there is nothing safe to edit.
    #[error("the policy file does not parse as a JSON object; fix it in an editor first")]
    NotAnObject,
    /// The edit names something the policy does not have.
    #[error("{0}")]
    Nothing(String),
}

fn first_line(d: &Diagnostics) -> String {
    let n = d.0.len();
    let first = d.0.first().map(|d| d.to_string()).unwrap_or_default();
    if n > 1 {
        format!("{first} (and {} more)", n - 1)
    } else {
        first
    }
}

/// A command-line word that is not an edit the draft understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);

/// `30/minute`, `5/10m`, `100/3600`: a max and a window as the policy writes them.
pub(crate) fn parse_rate(rate: &str) -> Result<(u64, Value), UsageError> {
    let bad = || {
        UsageError(format!(
            "'{}' is not MAX/WINDOW (e.g. 30/minute, 5/10m, 100/3600)",
            crate::sanitize::terminal_text(rate)
        ))
    };
    let (max, window) = rate.split_once('/').ok_or_else(bad)?;
    let max: u64 = max.trim().parse().map_err(|_| bad())?;
    Ok((max, parse_window(window).ok_or_else(bad)?))
}

/// A window as typed: a whole number of seconds becomes a JSON number, anything else a
/// string (the policy module decides whether it is a window).
pub(crate) fn parse_window(window: &str) -> Option<Value> {
    let window = window.trim();
    if window.is_empty() {
        return None;
    }
    Some(match window.parse::<u64>() {
        Ok(secs) => json!(secs),
        Err(_) => json!(window),
    })
}

/// One rule as the Policy view lists it, read from the draft document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRow {
    pub key: String,
    pub action: String,
    pub reason: Option<String>,
    /// `30/minute per grant`, or `30/minute per grant (shared_counter)`.
    pub limits: Vec<String>,
    /// `require args.amount lte 10000`.
    pub conditions: Vec<String>,
    pub approval_timeout: Option<String>,
    /// `"shadow": true`: decided and reported, not enforced.
    pub shadow: bool,
}

/// The policy being edited.
#[derive(Debug)]
pub struct Draft {
    /// The policy file.
    pub path: String,
    /// The file's text as loaded or last written: the diff is against it.
    pub base: String,
    /// SHA-256 of `base`: the file must still have it when the draft is written.
    pub base_hash: String,
    /// The document being edited (`None` when the file is not a JSON object).
    doc: Option<Value>,
    /// The draft's text: `base` until the first edit.
    text: String,
    /// The draft compiled, or what is wrong with it.
    compiled: Result<Policy, Diagnostics>,
    /// The text before the last write, for `:undo`.
    pub previous: Option<String>,
    /// Which version of a draft this is: different for every load and every change, so
    /// rows derived from a draft can be kept until it changes.
    revision: u64,
}

/// A fresh draft revision, unique in the process.
fn next_revision() -> u64 {
    static REVISIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    REVISIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Draft {
    /// A draft of the file `path` whose text is `text`.
    pub fn load(path: &str, text: String) -> Draft {
        let doc = serde_json::from_str::<Value>(&text)
            .ok()
            .filter(Value::is_object);
        let compiled = Policy::parse(&text, path);
        Draft {
            path: path.to_owned(),
            base_hash: sha256_hex(&text),
            base: text.clone(),
            doc,
            text,
            compiled,
            previous: None,
            revision: next_revision(),
        }
    }

    /// This version of the draft (see [`Draft`]'s `revision`).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The draft's text, as it would be written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the draft differs from the file as loaded.
    pub fn is_modified(&self) -> bool {
        self.text != self.base
    }

    /// The draft compiled by the policy module, or its diagnostics.
    pub fn compiled(&self) -> Result<&Policy, &Diagnostics> {
        self.compiled.as_ref()
    }

    /// SHA-256 of the draft's text: the hash the gateways will report once they apply it.
    pub fn hash(&self) -> String {
        sha256_hex(&self.text)
    }

    /// Drops every edit: the draft is the file as loaded again.
    pub fn discard(&mut self) {
        *self = Draft {
            previous: self.previous.take(),
            ..Draft::load(&self.path, self.base.clone())
        };
    }

    /// The file now has `text` (it was written, or reloaded): it becomes the base.
    pub fn rebase(&mut self, text: String) {
        *self = Draft {
            previous: self.previous.take(),
            ..Draft::load(&self.path, text)
        };
    }

    /// Makes the draft `text` (for `:undo`), validated like any edit.
    pub fn replace_text(&mut self, text: String) -> Result<(), EditError> {
        let compiled = Policy::parse(&text, &self.path).map_err(EditError::Invalid)?;
        self.doc = serde_json::from_str::<Value>(&text)
            .ok()
            .filter(Value::is_object);
        self.text = text;
        self.compiled = Ok(compiled);
        self.revision = next_revision();
        Ok(())
    }

    /// Applies `edit` if the policy stays valid. Returns what happened, in words.
    pub fn apply(&mut self, edit: &Edit) -> Result<String, EditError> {
        let (doc, text, compiled, said) = self.attempt(edit)?;
        self.doc = Some(doc);
        self.text = text;
        self.compiled = Ok(compiled);
        self.revision = next_revision();
        Ok(said)
    }

    /// Whether `edit` would keep the policy valid, without applying it (the rule editor
    /// validates as the operator types).
    pub fn check(&self, edit: &Edit) -> Result<(), EditError> {
        self.attempt(edit).map(|_| ())
    }

    /// The rule object of `tools[key]` in the draft, if there is one.
    pub fn rule_value(&self, key: &str) -> Option<&Value> {
        self.doc.as_ref()?.get("tools")?.get(key)
    }

    fn attempt(&self, edit: &Edit) -> Result<(Value, String, Policy, String), EditError> {
        let mut doc = self.doc.clone().ok_or(EditError::NotAnObject)?;
        let root = doc.as_object_mut().ok_or(EditError::NotAnObject)?;
        let said = edit_document(root, self.compiled.as_ref().ok(), edit)?;
        let old = self.doc.as_ref().ok_or(EditError::NotAnObject)?;
        let text = match super::splice::splice(&self.text, old, &doc) {
            Some(text) => text,
            None => {
                let mut text = serde_json::to_string_pretty(&doc).map_err(|e| {
                    EditError::Nothing(format!("cannot write the policy as JSON: {e}"))
                })?;
                text.push('\n');
                text
            }
        };
        let compiled = Policy::parse(&text, &self.path).map_err(EditError::Invalid)?;
        Ok((doc, text, compiled, said))
    }

    /// The entries of `tools`, in file order, as the Policy view lists them.
    pub fn rules(&self) -> Vec<RuleRow> {
        let Some(tools) = self
            .doc
            .as_ref()
            .and_then(|d| d.get("tools"))
            .and_then(Value::as_object)
        else {
            return Vec::new();
        };
        tools.iter().map(|(k, r)| rule_row(k, r)).collect()
    }

    /// The `hide` entries, in file order.
    pub fn hidden(&self) -> Vec<String> {
        self.doc
            .as_ref()
            .and_then(|d| d.get("hide"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn rule_row(key: &str, rule: &Value) -> RuleRow {
    let get = |k: &str| rule.get(k);
    let limit_text = |l: &Value, counter: Option<&str>| {
        let max = l.get("max").map(short).unwrap_or_else(|| "?".into());
        let window = l.get("window").map(short).unwrap_or_else(|| "?".into());
        let scope = l
            .get("scope")
            .and_then(Value::as_str)
            .unwrap_or("grant")
            .to_owned();
        let counter = counter
            .map(str::to_owned)
            .or_else(|| l.get("counter").map(short))
            .unwrap_or_default();
        // The counter is named only when it is not the rule's own (shared budgets stand out).
        if counter == key {
            format!("{max}/{window} per {scope}")
        } else {
            format!("{max}/{window} per {scope} ({counter})")
        }
    };
    let mut limits: Vec<String> = get("limits")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|l| limit_text(l, None)).collect())
        .unwrap_or_default();
    if let Some(r) = get("rate_limit") {
        limits.push(limit_text(r, Some(key)));
    }
    let mut conditions = Vec::new();
    for (field, word) in [("require", "require"), ("deny_if", "deny if")] {
        for c in get(field).and_then(Value::as_array).into_iter().flatten() {
            let path = c.get("path").map(short).unwrap_or_default();
            let op = c.get("op").map(short).unwrap_or_default();
            let value = c.get("value").map(|v| format!(" {v}")).unwrap_or_default();
            conditions.push(format!("{word} {path} {op}{value}"));
        }
    }
    RuleRow {
        key: key.to_owned(),
        action: get("action")
            .and_then(Value::as_str)
            .unwrap_or("allow")
            .to_owned(),
        reason: get("reason")
            .or_else(|| get("on_deny"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        limits,
        conditions,
        approval_timeout: get("approval_timeout").map(short),
        shadow: get("shadow").and_then(Value::as_bool) == Some(true),
    }
}

/// The rule object for `tool` in `tools`, created if missing. A new rule keeps what decided
/// the tool until now: a copy of the glob rule that matched it, or the default's action, so
/// that adding a limit does not also quietly allow a tool the default denied. (Edits that
/// set the action overwrite it; `allow` then removes it, as `{}` allows.)
fn rule_for<'a>(
    root: &'a mut Map<String, Value>,
    current: Option<&Policy>,
    tool: &str,
) -> &'a mut Map<String, Value> {
    let start = match current.map(|p| p.rule_match(tool)) {
        Some(RuleMatch::Glob { pattern, .. }) => root
            .get("tools")
            .and_then(|t| t.get(&pattern))
            .cloned()
            .unwrap_or_else(|| json!({})),
        Some(RuleMatch::Default { action }) if action != crate::policy::Action::Allow => {
            json!({ "action": action.as_str() })
        }
        _ => json!({}),
    };
    let tools = root
        .entry("tools")
        .or_insert_with(|| Value::Object(Map::new()));
    if !tools.is_object() {
        *tools = Value::Object(Map::new());
    }
    let Value::Object(tools) = tools else {
        unreachable!("tools was just made an object")
    };
    let rule = tools.entry(tool).or_insert(start);
    if !rule.is_object() {
        *rule = json!({});
    }
    match rule {
        Value::Object(m) => m,
        _ => unreachable!("the rule was just made an object"),
    }
}

fn set_action(rule: &mut Map<String, Value>, action: &str, created: bool) {
    if action == "allow" && (created || rule.get("action").is_none()) {
        // A rule the console just made says nothing it does not need to.
        if created {
            rule.remove("action");
        }
        if rule.get("action").is_none() {
            return;
        }
    }
    rule.insert("action".into(), json!(action));
}

fn has_rule(root: &Map<String, Value>, tool: &str) -> bool {
    root.get("tools").and_then(|t| t.get(tool)).is_some()
}

fn edit_document(
    root: &mut Map<String, Value>,
    current: Option<&Policy>,
    edit: &Edit,
) -> Result<String, EditError> {
    Ok(match edit {
        Edit::Allow(tool) => {
            let created = !has_rule(root, tool);
            set_action(rule_for(root, current, tool), "allow", created);
            format!("{tool} allowed")
        }
        Edit::Deny(tool, reason) => {
            let created = !has_rule(root, tool);
            let rule = rule_for(root, current, tool);
            set_action(rule, "deny", created);
            if let Some(r) = reason {
                // `on_deny` is the other name of `reason`; both at once is an error.
                rule.remove("on_deny");
                rule.insert("reason".into(), json!(r));
            }
            format!("{tool} denied")
        }
        Edit::Hold(tool) => {
            let created = !has_rule(root, tool);
            set_action(rule_for(root, current, tool), "require_approval", created);
            format!("{tool} held for approval")
        }
        Edit::Limit {
            tool,
            max,
            window,
            scope,
        } => {
            let rule = rule_for(root, current, tool);
            // The shorthand names the same counter (the rule's key); one form replaces it.
            let shorthand_scope = rule.remove("rate_limit").map(|_| "grant");
            let limits = rule.entry("limits").or_insert_with(|| json!([]));
            if !limits.is_array() {
                *limits = json!([]);
            }
            let Value::Array(limits) = limits else {
                unreachable!("limits was just made an array")
            };
            let own = limits
                .iter_mut()
                .find(|l| l.get("counter").and_then(Value::as_str) == Some(tool.as_str()));
            let scope = scope.as_deref().or(shorthand_scope);
            match own {
                Some(Value::Object(l)) => {
                    l.insert("window".into(), window.clone());
                    l.insert("max".into(), json!(max));
                    if let Some(s) = scope {
                        l.insert("scope".into(), json!(s));
                    }
                }
                _ => {
                    let mut l = Map::new();
                    l.insert("counter".into(), json!(tool));
                    l.insert("window".into(), window.clone());
                    l.insert("max".into(), json!(max));
                    if let Some(s) = scope {
                        l.insert("scope".into(), json!(s));
                    }
                    limits.push(Value::Object(l));
                }
            }
            format!("{tool} limited to {max}/{}", short(window))
        }
        Edit::Unlimit(tool) => {
            let rule = root
                .get_mut("tools")
                .and_then(|t| t.get_mut(tool.as_str()))
                .and_then(Value::as_object_mut)
                .ok_or_else(|| EditError::Nothing(format!("no rule named {tool}")))?;
            let had = rule.remove("limits").is_some() | rule.remove("rate_limit").is_some();
            if !had {
                return Err(EditError::Nothing(format!("{tool} has no limits")));
            }
            format!("{tool} no longer limited")
        }
        Edit::SetRule { key, rule } => {
            let tools = root
                .entry("tools")
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(tools) = tools else {
                return Err(EditError::Nothing("tools is not an object".into()));
            };
            tools.insert(key.clone(), rule.clone());
            format!("rule {key} updated")
        }
        Edit::ShadowDeny(tool) => {
            if has_rule(root, tool) {
                return Err(EditError::Nothing(format!(
                    "{tool} has a rule of its own: a shadow rule would take its place and stop \
                     enforcing it; edit that rule (e) instead, or shadow a new key"
                )));
            }
            let tools = root
                .entry("tools")
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(tools) = tools else {
                return Err(EditError::Nothing("tools is not an object".into()));
            };
            tools.insert(tool.clone(), json!({"action": "deny", "shadow": true}));
            format!("{tool}: shadow deny rule (reported as would deny, not enforced)")
        }
        Edit::Promote(key) => {
            let rule = root
                .get_mut("tools")
                .and_then(|t| t.get_mut(key.as_str()))
                .and_then(Value::as_object_mut)
                .ok_or_else(|| EditError::Nothing(format!("no rule named {key}")))?;
            if rule.get("shadow") != Some(&Value::Bool(true)) {
                return Err(EditError::Nothing(format!("{key} is not a shadow rule")));
            }
            rule.remove("shadow");
            format!("{key} promoted: enforced once written")
        }
        Edit::Default(d) => {
            root.insert("default".into(), json!(d));
            format!("default is now {d}")
        }
        Edit::Hide(tool) => {
            let hide = root.entry("hide").or_insert_with(|| json!([]));
            if !hide.is_array() {
                *hide = json!([]);
            }
            let Value::Array(hide) = hide else {
                unreachable!("hide was just made an array")
            };
            if hide.iter().any(|h| h.as_str() == Some(tool.as_str())) {
                return Err(EditError::Nothing(format!("{tool} is already hidden")));
            }
            hide.push(json!(tool));
            format!("{tool} hidden")
        }
        Edit::SetCounter {
            counter,
            max,
            window,
        } => {
            let mut found = 0;
            let mut set = |l: &mut Value| {
                if let Value::Object(l) = l {
                    if let Some(m) = max {
                        l.insert("max".into(), json!(m));
                    }
                    if let Some(w) = window {
                        l.insert("window".into(), w.clone());
                    }
                    found += 1;
                }
            };
            let names = |l: &Value| l.get("counter").and_then(Value::as_str) == Some(counter);
            if let Some(Value::Array(ls)) =
                root.get_mut("all_tools").and_then(|a| a.get_mut("limits"))
            {
                ls.iter_mut().filter(|l| names(l)).for_each(&mut set);
            }
            if let Some(Value::Object(tools)) = root.get_mut("tools") {
                for (key, rule) in tools.iter_mut() {
                    if let Some(Value::Array(ls)) = rule.get_mut("limits") {
                        ls.iter_mut().filter(|l| names(l)).for_each(&mut set);
                    }
                    if key == counter
                        && let Some(r) = rule.get_mut("rate_limit")
                    {
                        set(r);
                    }
                }
            }
            if found == 0 {
                return Err(EditError::Nothing(format!(
                    "no limit names counter {counter}"
                )));
            }
            let what = [
                max.map(|m| format!("max {m}")),
                window.as_ref().map(|w| format!("window {}", short(w))),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
            format!("counter {counter}: {what}")
        }
    })
}

/// The unified diff from `old` to `new`, as lines (`---`/`+++` headers, `@@` hunks).
pub(crate) fn unified_diff(path: &str, old: &str, new: &str) -> Vec<String> {
    let diff = similar::TextDiff::from_lines(old, new);
    diff.unified_diff()
        .context_radius(3)
        .header(path, &format!("{path} (draft)"))
        .to_string()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "create_api_key": { "limits": [ { "counter": "create_api_key", "window": "minute", "max": 30 } ] },
    "delete_*": { "action": "deny", "reason": "no deleting" }
  }
}
"#;

    fn draft() -> Draft {
        Draft::load("policy.json", POLICY.into())
    }

    #[test]
    fn an_unchanged_draft_is_the_file_byte_for_byte() {
        let d = draft();
        assert!(!d.is_modified());
        assert_eq!(d.text(), POLICY);
        assert_eq!(d.hash(), d.base_hash);
        assert_eq!(
            d.compiled().map(|p| p.hash().to_owned()).ok(),
            Some(d.base_hash.clone())
        );
    }

    #[test]
    fn a_shadow_rule_is_drafted_only_for_a_tool_without_a_rule_and_promoting_removes_only_shadow() {
        let mut d = draft();
        let refused = d.apply(&Edit::ShadowDeny("create_api_key".into()));
        assert!(
            matches!(&refused, Err(EditError::Nothing(why)) if why.contains("rule of its own")),
            "{refused:?}"
        );
        d.apply(&Edit::ShadowDeny("delete_user".into())).unwrap();
        let rules = d.rules();
        let r = rules.iter().find(|r| r.key == "delete_user").unwrap();
        assert!(r.shadow);
        assert_eq!(r.action, "deny");
        assert_eq!(d.compiled().unwrap().shadow_rule_count(), 1);
        assert!(matches!(
            d.apply(&Edit::Promote("create_api_key".into())),
            Err(EditError::Nothing(_))
        ));
        d.apply(&Edit::Promote("delete_user".into())).unwrap();
        assert_eq!(
            d.rule_value("delete_user"),
            Some(&json!({"action": "deny"}))
        );
        assert_eq!(d.compiled().unwrap().shadow_rule_count(), 0);
    }

    #[test]
    fn a_new_rule_under_a_glob_starts_as_a_copy_of_the_glob() {
        let mut d = draft();
        d.apply(&Edit::Limit {
            tool: "delete_user".into(),
            max: 1,
            window: json!("hour"),
            scope: None,
        })
        .unwrap();
        let rules = d.rules();
        let r = rules.iter().find(|r| r.key == "delete_user").unwrap();
        assert_eq!(r.action, "deny", "the glob's action is kept");
        assert_eq!(r.reason.as_deref(), Some("no deleting"));
    }

    #[test]
    fn limiting_a_tool_the_default_denies_keeps_it_denied() {
        let mut d = draft();
        d.apply(&Edit::Limit {
            tool: "send".into(),
            max: 2,
            window: json!("minute"),
            scope: None,
        })
        .unwrap();
        assert_eq!(d.rules().last().unwrap().action, "deny");
    }

    #[test]
    fn the_rate_limit_shorthand_is_replaced_not_doubled() {
        let mut d = Draft::load(
            "p.json",
            r#"{"version":"1","default":"allow","tools":{"x":{"rate_limit":{"max":5,"window":"hour"}}}}"#
                .into(),
        );
        d.apply(&Edit::Limit {
            tool: "x".into(),
            max: 2,
            window: json!("minute"),
            scope: None,
        })
        .unwrap();
        let r = &d.rules()[0];
        assert_eq!(r.limits, vec!["2/minute per grant".to_string()]);
        assert!(!d.text().contains("rate_limit"));
    }

    #[test]
    fn discard_returns_to_the_file() {
        let mut d = draft();
        d.apply(&Edit::Default("allow".into())).unwrap();
        assert!(d.is_modified());
        d.discard();
        assert!(!d.is_modified());
        assert_eq!(d.text(), POLICY);
    }

    #[test]
    fn a_file_that_is_not_json_cannot_be_edited() {
        let mut d = Draft::load("p.json", "{ nope".into());
        assert!(d.compiled().is_err());
        assert!(matches!(
            d.apply(&Edit::Allow("x".into())),
            Err(EditError::NotAnObject)
        ));
    }

    #[test]
    fn rates_parse_as_the_policy_writes_them() {
        assert_eq!(parse_rate("30/minute").unwrap(), (30, json!("minute")));
        assert_eq!(parse_rate("5/3600").unwrap(), (5, json!(3600)));
        assert!(parse_rate("30").is_err());
        assert!(parse_rate("x/minute").is_err());
        assert!(parse_rate("3/").is_err());
    }
}
