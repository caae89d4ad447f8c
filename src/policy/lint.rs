//! The policy linter (`toolgate check --lint`): what is valid but almost certainly a mistake.
//!
//! A pure function of a policy's text and its compiled [`Policy`], so the console can show the
//! same warnings in its Policy view. Each [`Warning`] names the rule by JSON Pointer and is
//! placed at that value's line and column, like a diagnostic, and says what to do. What it
//! finds:
//! - a glob rule that can never decide a call: every name it matches is matched by a glob of
//!   higher precedence (more literal characters, or as many and written first);
//! - a rule for a hidden tool: `hide` names every tool the key matches, so the rule is never
//!   read;
//! - when the tools are known (`--tools`, from `toolgate scan --json`): a glob rule that
//!   decides none of the offered tools it matches (each has a more specific key), and a
//!   destructive tool the policy allows with no limit at all; with their input schemas, a
//!   `deny_if` or `require` condition that can never hold, or never fail, because the schema
//!   says its argument is never there (not a property, no others allowed) or always there
//!   (required) — a misspelt key, most often.
//!
//! A counter named with two different windows is not a warning: the policy's validation
//! refuses it as an error (`compile.rs`).
//!
//! Glob coverage is decided on the patterns themselves (no tool list needed): pattern A
//! covers pattern B when every name B matches, A matches. The test is sufficient, never a
//! guess: a warning is only given when the rule can never win.

use super::Policy;
use super::glob::Glob;
use super::json::{self, Node, Value};

/// Longest pattern compared for coverage (a quadratic comparison): real keys are short.
const MAX_COMPARED_PATTERN: usize = 256;

/// Most glob rules compared pairwise; beyond it the glob check is skipped, not guessed.
const MAX_COMPARED_GLOBS: usize = 2_000;

/// One finding, placed like a diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Warning {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// JSON Pointer of the rule (or entry) the warning is about.
    pub pointer: String,
    pub hint: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: warning: {} (at {})",
            self.file, self.line, self.column, self.message, self.pointer
        )?;
        if !self.hint.is_empty() {
            write!(f, "; {}", self.hint)?;
        }
        Ok(())
    }
}

/// A tool a server offers, as far as the linter needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnownTool {
    pub name: String,
    /// `toolgate scan`'s risk class (`read`, `write`, `destructive`), when known.
    pub class: Option<String>,
    /// The tool's `inputSchema`, when known.
    pub input_schema: Option<serde_json::Value>,
}

/// Every warning for `policy`, parsed from `text` (reported as `file`), in document order.
/// `tools`: the tools a server offers, when known (empty: the checks that need them are not
/// made).
pub(crate) fn lint(policy: &Policy, text: &str, file: &str, tools: &[KnownTool]) -> Vec<Warning> {
    let mut found: Vec<(String, String, String)> = Vec::new();
    hidden_rules(policy, &mut found);
    dominated_globs(policy, &mut found);
    globs_behind_keys(policy, tools, &mut found);
    unlimited_destructive(policy, tools, &mut found);
    conditions_against_schemas(policy, tools, &mut found);

    let root = json::parse(text).ok().map(|d| d.root);
    let locator = json::Locator::new(text);
    let mut out: Vec<(usize, Warning)> = found
        .into_iter()
        .map(|(pointer, message, hint)| {
            let offset = root
                .as_ref()
                .and_then(|r| offset_of(r, &pointer))
                .unwrap_or(0);
            let (line, column) = locator.locate(offset);
            (
                offset,
                Warning {
                    file: file.to_string(),
                    line,
                    column,
                    message,
                    pointer,
                    hint,
                },
            )
        })
        .collect();
    out.sort_by_key(|(offset, _)| *offset);
    out.into_iter().map(|(_, w)| w).collect()
}

/// Rules whose every tool `hide` names: never read.
fn hidden_rules(policy: &Policy, found: &mut Vec<(String, String, String)>) {
    for rule in &policy.rules {
        let by = if Glob::is_glob(&rule.key) {
            policy
                .hide_globs
                .iter()
                .find(|(h, _)| covers(h.as_str(), &rule.key))
                .map(|(_, i)| *i)
        } else {
            policy.hidden_by(&rule.key)
        };
        if let Some(i) = by {
            found.push((
                rule.pointer.to_string(),
                format!(
                    "the rule for {} is never read: /hide/{i} hides every tool it names",
                    quote(&rule.key)
                ),
                "a hidden tool is refused as unknown whatever its rule says; remove the rule, or the hide entry if the tool should be callable".to_string(),
            ));
        }
    }
}

/// Glob rules that never win: a glob earlier in precedence order covers every name they match.
/// (Only ties can do that: the earlier one has as many literal characters and is written
/// first.) A shadow glob takes nothing from an enforcing one (enforcing, it is not there);
/// any earlier glob silences a shadow glob, which is decided as if it were enforced.
fn dominated_globs(policy: &Policy, found: &mut Vec<(String, String, String)>) {
    if policy.globs.len() > MAX_COMPARED_GLOBS {
        return;
    }
    for (j, (glob, rule)) in policy.globs.iter().enumerate() {
        let shadow = policy.rules[*rule].shadow;
        let winner = policy.globs[..j].iter().find(|(earlier, i)| {
            (shadow || !policy.rules[*i].shadow) && covers(earlier.as_str(), glob.as_str())
        });
        if let Some((earlier, i)) = winner {
            let rule = &policy.rules[*rule];
            let other = &policy.rules[*i];
            // A glob covering another has no more literal characters than it (each of its
            // literals must meet the same literal), so the earlier one won the tie by order.
            found.push((
                rule.pointer.to_string(),
                format!(
                    "the glob rule {} never decides a call: every tool it matches is decided by {} ({}), which is as specific and written first",
                    quote(glob.as_str()),
                    quote(earlier.as_str()),
                    other.pointer
                ),
                "remove it, or make it name tools the other does not".to_string(),
            ));
        }
    }
}

/// Glob rules that match offered tools but decide none of them: each has a more specific key.
fn globs_behind_keys(
    policy: &Policy,
    tools: &[KnownTool],
    found: &mut Vec<(String, String, String)>,
) {
    for (glob, rule) in &policy.globs {
        let rule = &policy.rules[*rule];
        if rule.shadow {
            // It decides no call by design; what it would decide is reported, not enforced.
            continue;
        }
        let matched: Vec<&KnownTool> = tools
            .iter()
            .filter(|t| glob.matches(&t.name) && !policy.is_hidden(&t.name))
            .collect();
        let decides_one = matched.iter().any(|t| {
            matches!(policy.rule_match(&t.name), super::RuleMatch::Glob { pointer, .. } if pointer == rule.pointer)
        });
        if matched.is_empty() || decides_one {
            continue;
        }
        let names: Vec<String> = matched.iter().take(3).map(|t| quote(&t.name)).collect();
        let more = if matched.len() > 3 { ", ..." } else { "" };
        found.push((
            rule.pointer.to_string(),
            format!(
                "the glob rule {} decides none of the server's tools it matches ({}{more}): a more specific key decides each",
                quote(glob.as_str()),
                names.join(", ")
            ),
            "remove it, or check that the more specific keys say what this rule meant".to_string(),
        ));
    }
}

/// Destructive tools the policy allows without any limit: one runaway agent loop away from
/// doing it a thousand times.
fn unlimited_destructive(
    policy: &Policy,
    tools: &[KnownTool],
    found: &mut Vec<(String, String, String)>,
) {
    for tool in tools {
        if tool.class.as_deref() != Some("destructive") {
            continue;
        }
        let Some(t) = policy.treatment(&tool.name) else {
            continue;
        };
        if t.action != super::Action::Allow || t.limited {
            continue;
        }
        let pointer = match policy.rule_match(&tool.name) {
            super::RuleMatch::Exact { pointer } | super::RuleMatch::Glob { pointer, .. } => pointer,
            _ => "/default".to_string(),
        };
        found.push((
            pointer,
            format!(
                "the destructive tool {} is allowed with no limit",
                quote(&tool.name)
            ),
            format!(
                "add a limit (\"rate_limit\": {{\"max\": 10, \"window\": \"minute\"}}), make it require_approval, or give {} a rule of its own",
                quote(&tool.name)
            ),
        ));
    }
}

/// Conditions whose outcome the tool's input schema settles: on an argument the schema never
/// allows (not among `properties`, `additionalProperties: false`) or always has (`required`).
fn conditions_against_schemas(
    policy: &Policy,
    tools: &[KnownTool],
    found: &mut Vec<(String, String, String)>,
) {
    use super::condition::Op;
    for tool in tools {
        let Some(schema) = &tool.input_schema else {
            continue;
        };
        let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) else {
            continue;
        };
        if policy.is_hidden(&tool.name) {
            continue;
        }
        let Some(rule) = policy.rule_for(&tool.name) else {
            continue;
        };
        let closed = schema.get("additionalProperties") == Some(&serde_json::Value::Bool(false));
        let required = |name: &str| {
            schema
                .get("required")
                .and_then(|r| r.as_array())
                .is_some_and(|r| r.iter().any(|v| v.as_str() == Some(name)))
        };
        let lists = rule
            .deny_if
            .iter()
            .map(|c| (true, c))
            .chain(rule.require.iter().map(|c| (false, c)));
        for (deny_if, (pointer, condition)) in lists {
            let Some(first) = condition.segments.first() else {
                continue;
            };
            let never_there = closed && !properties.contains_key(first);
            let always_there = condition.segments.len() == 1 && required(first);
            // Whether the condition is true, when the schema settles it.
            let truth = match condition.op {
                Op::Exists if always_there => Some(true),
                Op::NotExists if always_there => Some(false),
                Op::NotExists if never_there => Some(true),
                _ if never_there => Some(false),
                _ => None,
            };
            let Some(truth) = truth else {
                continue;
            };
            let (list, verdict, so) = match (deny_if, truth) {
                (true, true) => ("deny_if", "always holds", "every call is denied"),
                (true, false) => ("deny_if", "can never hold", "it never denies"),
                (false, true) => ("require", "can never fail", "it checks nothing"),
                (false, false) => ("require", "can never be met", "every call is denied"),
            };
            let (why, hint) = if never_there {
                (
                    format!(
                        "its input schema has no property {} and allows no other",
                        quote(first)
                    ),
                    "check the argument's name against the tool's input schema (toolgate scan --json)",
                )
            } else {
                (
                    format!("its input schema requires {}", quote(first)),
                    "the server already requires it; remove the condition, or make it test the value",
                )
            };
            found.push((
                pointer.clone(),
                format!(
                    "{list} {} {verdict} for {}, so {so}: {why}",
                    condition.describe(),
                    quote(&tool.name)
                ),
                hint.to_string(),
            ));
        }
    }
}

/// Whether every name pattern `b` matches is matched by pattern `a` (both globs: `*` any run,
/// `?` one character). `a`'s `*` takes any part of `b`; `a`'s `?` one character or `?` of
/// `b`; a literal only the same literal. Sufficient: `true` is always right.
fn covers(a: &str, b: &str) -> bool {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len() > MAX_COMPARED_PATTERN || b.len() > MAX_COMPARED_PATTERN {
        return false;
    }
    // reach[j]: a[..i] can produce b[..j].
    let mut reach = vec![false; b.len() + 1];
    reach[0] = true;
    for &pa in &a {
        let mut next = vec![false; b.len() + 1];
        match pa {
            '*' => {
                let mut any = false;
                for j in 0..=b.len() {
                    any |= reach[j];
                    next[j] = any;
                }
            }
            _ => {
                for j in 0..b.len() {
                    let fits = match (pa, b[j]) {
                        (_, '*') => false,
                        ('?', _) => true,
                        (x, y) => x == y,
                    };
                    next[j + 1] = reach[j] && fits;
                }
            }
        }
        reach = next;
    }
    reach[b.len()]
}

/// The byte offset of the value at `pointer` in the document.
fn offset_of(root: &Node, pointer: &str) -> Option<usize> {
    let mut node = root;
    if pointer.is_empty() {
        return Some(node.offset);
    }
    for raw in pointer.strip_prefix('/')?.split('/') {
        let token = raw.replace("~1", "/").replace("~0", "~");
        node = match &node.value {
            Value::Object(members) => &members.iter().find(|m| m.key == token)?.value,
            Value::Array(items) => items.get(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node.offset)
}

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn shadow_globs_neither_hide_enforcing_globs_nor_count_as_deciding_nothing() {
        use super::{KnownTool, lint};
        let text = r#"{"version": "1", "default": "deny", "tools": {
            "*read*": {"shadow": true, "action": "deny"},
            "read*": {},
            "*send*": {"action": "deny"},
            "send*": {"shadow": true}
        }}"#;
        let policy = crate::policy::Policy::parse(text, "p.json").unwrap();
        let tools = [KnownTool {
            name: "read_file".into(),
            class: None,
            input_schema: None,
        }];
        let warnings = lint(&policy, text, "p.json", &tools);
        let pointers: Vec<&str> = warnings.iter().map(|w| w.pointer.as_str()).collect();
        // `read*` enforces whatever the shadow `*read*` says; the shadow `send*` is never
        // decided, `*send*` being as specific and written first.
        assert_eq!(pointers, ["/tools/send*"], "{warnings:?}");
    }

    #[test]
    fn a_glob_covers_exactly_the_patterns_whose_names_it_all_matches() {
        assert!(covers("*", "read_*"));
        assert!(covers("read_*", "read_file_*"));
        assert!(covers("read_*", "read_?"));
        assert!(covers("read_?", "read_x"));
        assert!(covers("*_file", "read_*_file"));
        assert!(!covers("read_?", "read_*"));
        assert!(!covers("read_*", "*_file"));
        assert!(!covers("read_*_x", "read_*"));
        assert!(!covers("a?", "a"));
    }
}
