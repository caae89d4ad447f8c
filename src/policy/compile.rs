//! Validation: turns the parsed JSON tree into a [`Policy`], reporting every problem at once.
//!
//! Each check reports at the offending value's position with its JSON Pointer, and a message
//! that says what is wrong and what to do. Checking goes on after a problem, so one run of
//! `toolgate check` shows everything; the diagnostics are sorted into document order.
//!
//! Choices where the format is silent (documented here and in `toolgate check --help`):
//! - `window` and `approval_timeout` numbers are whole seconds >= 1; durations are a whole
//!   number followed by one unit `s`, `m`, `h` or `d` (`"90s"`, `"10m"`); `approval_timeout`
//!   takes the same forms as `window`.
//! - `max` is a whole number >= 1 written without a fraction or exponent.
//! - `hide` entries and `tools` keys are globs when they contain `*` or `?`; there is no
//!   escaping. A name matched by `hide` is hidden even when a rule names it.
//! - Keys of `tools`, `hide` entries and counter names must not be empty.
//! - A key written twice in one object is an error (a second rule must not silently replace
//!   the first).
//! - A `rate_limit` is a counter named after the rule's key (so a glob rule's tools share it).
//!   When one call would count against the same counter twice (a rule's limit and an
//!   `all_tools` limit naming it), it takes one unit, not two.
//! - `"shadow": true` takes a rule out of enforcement: the rule that decides a tool is looked
//!   up without shadow rules, and a shadow rule is decided beside it (see
//!   [`super::Policy::judge_shadow`]). A shadow rule's limits name counters as any limit does
//!   (the same name must mean the same budget), but are counted apart, as `shadow:NAME`.

use std::collections::HashMap;

use regex::RegexBuilder;
use smol_str::SmolStr;

use super::condition::{Condition, Op};
use super::glob::Glob;
use super::json::{self, Member, Node, Value};
use super::path::{PathProblem, Root};
use super::store::Scope;
use super::{Action, CounterDef, Diagnostic, LimitUse, PinMode, Policy, Rule};

/// Default time a held call waits for an operator.
pub(super) const DEFAULT_APPROVAL_TIMEOUT_MS: u64 = 120_000;

/// Largest compiled regex accepted, to bound load time and memory on hostile files.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

const TOP_FIELDS: &[&str] = &[
    "version",
    "default",
    "hide",
    "approval_timeout",
    "all_tools",
    "tools",
    "pins",
    "quarantine_flagged",
    "learn",
];
const RULE_FIELDS: &[&str] = &[
    "action",
    "reason",
    "on_deny",
    "require",
    "deny_if",
    "limits",
    "rate_limit",
    "approval_timeout",
    "shadow",
];
const LIMIT_FIELDS: &[&str] = &["counter", "window", "max", "scope"];
const RATE_LIMIT_FIELDS: &[&str] = &["max", "window"];
const ALL_TOOLS_FIELDS: &[&str] = &["limits"];
const CONDITION_FIELDS: &[&str] = &["path", "op", "value"];

const WINDOW_HINT: &str = "expected second, minute, hour, day, seconds or a duration like \"10m\"";

pub(super) struct Problem {
    pub(super) offset: usize,
    pub(super) pointer: String,
    pub(super) message: String,
    pub(super) hint: String,
}

struct Compiler {
    problems: Vec<Problem>,
    counters: Vec<CounterDef>,
    counter_index: HashMap<String, usize>,
}

pub(super) fn child(pointer: &str, token: &str) -> String {
    format!("{pointer}/{}", json::escape_token(token))
}

pub(super) fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Parses and validates `text` (reported as `file`).
pub(super) fn compile(text: &str, file: &str) -> Result<Policy, Vec<Diagnostic>> {
    read_document(text, file, |root, _, problems| {
        let mut c = Compiler {
            problems,
            counters: Vec::new(),
            counter_index: HashMap::new(),
        };
        let policy = c.top(root, text);
        (policy, c.problems)
    })
}

/// The frame every file of ours is read in (policies, case files): strict JSON, a problem
/// for each duplicate key, then `read` over the root with those problems (and the locator,
/// for a reader that records positions); the result only
/// when no problem was found, else every problem as a diagnostic in file order.
pub(super) fn read_document<T>(
    text: &str,
    file: &str,
    read: impl FnOnce(&Node, &json::Locator<'_>, Vec<Problem>) -> (Option<T>, Vec<Problem>),
) -> Result<T, Vec<Diagnostic>> {
    let locator = json::Locator::new(text);
    let to_diag = |p: Problem| {
        let (line, column) = locator.locate(p.offset);
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            message: p.message,
            pointer: p.pointer,
            hint: p.hint,
        }
    };
    let doc = match json::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            return Err(vec![to_diag(Problem {
                offset: e.offset,
                pointer: e.pointer,
                message: format!("invalid JSON: {}", e.message),
                hint: String::new(),
            })]);
        }
    };
    let duplicates = doc
        .duplicates
        .iter()
        .map(|d| Problem {
            offset: d.key_offset,
            pointer: d.pointer.clone(),
            message: format!("field {} is written twice in one object", quote(&d.key)),
            hint: "keep one; the first is the one read".to_string(),
        })
        .collect();
    let (read, mut problems) = read(&doc.root, &locator, duplicates);
    if problems.is_empty()
        && let Some(read) = read
    {
        return Ok(read);
    }
    problems.sort_by_key(|p| p.offset);
    Err(problems.into_iter().map(to_diag).collect())
}

impl Compiler {
    fn problem(&mut self, offset: usize, pointer: String, message: String, hint: String) {
        self.problems.push(Problem {
            offset,
            pointer,
            message,
            hint,
        });
    }

    fn error(&mut self, node: &Node, pointer: &str, message: String) {
        self.problem(node.offset, pointer.to_string(), message, String::new());
    }

    /// The members of an object, after reporting unknown fields. `None` if not an object.
    fn object<'n>(
        &mut self,
        node: &'n Node,
        pointer: &str,
        what: &str,
        allowed: &[&str],
    ) -> Option<&'n [Member]> {
        let Value::Object(members) = &node.value else {
            self.error(
                node,
                pointer,
                format!("{what} must be an object, found {}", node.kind()),
            );
            return None;
        };
        for m in members {
            if !allowed.contains(&m.key.as_str()) {
                self.problem(
                    m.key_offset,
                    child(pointer, &m.key),
                    format!("unknown field {} in {what}", quote(&m.key)),
                    format!("expected one of: {}", allowed.join(", ")),
                );
            }
        }
        Some(members)
    }

    fn require_field<'n>(
        &mut self,
        members: &'n [Member],
        node: &Node,
        pointer: &str,
        what: &str,
        name: &str,
    ) -> Option<&'n Node> {
        let found = get(members, name);
        if found.is_none() {
            self.error(
                node,
                pointer,
                format!("{what} is missing the required field {}", quote(name)),
            );
        }
        found
    }

    fn string<'n>(&mut self, node: &'n Node, pointer: &str, what: &str) -> Option<&'n str> {
        match &node.value {
            Value::String(s) => Some(s),
            _ => {
                self.error(
                    node,
                    pointer,
                    format!("{what} must be a string, found {}", node.kind()),
                );
                None
            }
        }
    }

    fn array<'n>(&mut self, node: &'n Node, pointer: &str, what: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Array(items) => Some(items),
            _ => {
                self.error(
                    node,
                    pointer,
                    format!("{what} must be an array, found {}", node.kind()),
                );
                None
            }
        }
    }

    fn pin_mode(&mut self, node: &Node, pointer: &str) -> Option<PinMode> {
        match self.string(node, pointer, "pins")? {
            "enforce" => Some(PinMode::Enforce),
            "warn" => Some(PinMode::Warn),
            "off" => Some(PinMode::Off),
            other => {
                self.problem(
                    node.offset,
                    pointer.to_string(),
                    format!("unknown pins mode {}", quote(other)),
                    "expected enforce, warn or off".to_string(),
                );
                None
            }
        }
    }

    fn action(&mut self, node: &Node, pointer: &str, what: &str) -> Option<Action> {
        let s = self.string(node, pointer, what)?;
        match s {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            "require_approval" => Some(Action::RequireApproval),
            other => {
                self.problem(
                    node.offset,
                    pointer.to_string(),
                    format!("unknown {what} {}", quote(other)),
                    "expected allow, deny or require_approval".to_string(),
                );
                None
            }
        }
    }

    fn top(&mut self, root: &Node, text: &str) -> Option<Policy> {
        let members = self.object(root, "", "the policy", TOP_FIELDS)?;
        let version = self.require_field(members, root, "", "the policy", "version");
        let default = self.require_field(members, root, "", "the policy", "default");
        let mut ok = version.is_some() && default.is_some();

        let mut policy = Policy {
            hash: super::sha256_hex(text),
            default: Action::Deny,
            approval_timeout_ms: DEFAULT_APPROVAL_TIMEOUT_MS,
            hide_exact: Default::default(),
            hide_globs: Vec::new(),
            hide_len: 0,
            exact: Default::default(),
            globs: Vec::new(),
            rules: Vec::new(),
            all_tools: Vec::new(),
            counters: Vec::new(),
            counter_names: Vec::new(),
            shadow_rules: 0,
            shadow_rule_counter_names: Vec::new(),
            shadow_policy_counter_names: Vec::new(),
            pins: PinMode::Warn,
            quarantine_flagged: false,
            learn: false,
        };

        // Members in document order, so that "the second definition" of a counter is the
        // second in the file.
        for m in members {
            let ptr = child("", &m.key);
            let node = &m.value;
            match m.key.as_str() {
                "version" => match &node.value {
                    Value::String(s) if s == "1" => {}
                    _ => {
                        let shown = match &node.value {
                            Value::String(s) => quote(s),
                            Value::Number(n) => n.clone(),
                            _ => node.kind().to_string(),
                        };
                        self.problem(
                            node.offset,
                            ptr,
                            format!("unsupported policy version {shown}"),
                            "this toolgate understands version \"1\" (a string)".to_string(),
                        );
                        ok = false;
                    }
                },
                "default" => match self.action(node, &ptr, "default") {
                    Some(a) => policy.default = a,
                    None => ok = false,
                },
                "approval_timeout" => match self.duration(node, &ptr, "approval_timeout", false) {
                    Some(ms) => policy.approval_timeout_ms = ms,
                    None => ok = false,
                },
                "hide" => ok &= self.hide(node, &ptr, &mut policy),
                "all_tools" => {
                    let Some(fields) = self.object(node, &ptr, "all_tools", ALL_TOOLS_FIELDS)
                    else {
                        ok = false;
                        continue;
                    };
                    if let Some(limits) = get(fields, "limits") {
                        match self.limits(limits, &child(&ptr, "limits")) {
                            Some(l) => policy.all_tools = l,
                            None => ok = false,
                        }
                    }
                }
                "tools" => ok &= self.tools(node, &ptr, &mut policy),
                "pins" => match self.pin_mode(node, &ptr) {
                    Some(mode) => policy.pins = mode,
                    None => ok = false,
                },
                "quarantine_flagged" => match &node.value {
                    Value::Bool(b) => policy.quarantine_flagged = *b,
                    _ => {
                        self.error(
                            node,
                            &ptr,
                            format!(
                                "quarantine_flagged must be true or false, found {}",
                                node.kind()
                            ),
                        );
                        ok = false;
                    }
                },
                "learn" => match &node.value {
                    Value::Bool(b) => policy.learn = *b,
                    _ => {
                        self.error(
                            node,
                            &ptr,
                            format!("\"learn\" must be true or false, found {}", shown(node)),
                        );
                        ok = false;
                    }
                },
                _ => ok = false,
            }
        }
        // Globs: most literal characters first, ties in file order (the sort is stable).
        policy
            .globs
            .sort_by_key(|(g, _)| std::cmp::Reverse(g.literal_chars()));
        policy.counters = std::mem::take(&mut self.counters);
        policy.counter_names = policy
            .counters
            .iter()
            .map(|c| std::sync::Arc::from(c.name.as_str()))
            .collect();
        let prefixed = |prefix: &str| {
            policy
                .counters
                .iter()
                .map(|c| std::sync::Arc::from(format!("{prefix}{}", c.name)))
                .collect()
        };
        policy.shadow_rule_counter_names = prefixed(super::SHADOW_RULE_COUNTER_PREFIX);
        policy.shadow_policy_counter_names = prefixed(super::SHADOW_POLICY_COUNTER_PREFIX);
        policy.shadow_rules = policy.rules.iter().filter(|r| r.shadow).count();
        ok.then_some(policy)
    }

    fn hide(&mut self, node: &Node, ptr: &str, policy: &mut Policy) -> bool {
        let Some(items) = self.array(node, ptr, "hide") else {
            return false;
        };
        let mut ok = true;
        policy.hide_len = items.len();
        for (i, item) in items.iter().enumerate() {
            let p = child(ptr, &i.to_string());
            let Some(name) = self.string(item, &p, "a hide entry") else {
                ok = false;
                continue;
            };
            if name.is_empty() {
                self.error(item, &p, "a hide entry must not be empty".to_string());
                ok = false;
            } else if Glob::is_glob(name) {
                policy.hide_globs.push((Glob::new(name), i));
            } else {
                policy.hide_exact.entry(name.to_string()).or_insert(i);
            }
        }
        ok
    }

    fn tools(&mut self, node: &Node, ptr: &str, policy: &mut Policy) -> bool {
        let Value::Object(members) = &node.value else {
            self.error(
                node,
                ptr,
                format!(
                    "tools must be an object from tool names to rules, found {}",
                    node.kind()
                ),
            );
            return false;
        };
        let mut ok = true;
        for m in members {
            let rptr = child(ptr, &m.key);
            if m.key.is_empty() {
                self.problem(
                    m.key_offset,
                    rptr.clone(),
                    "a tool name must not be empty".to_string(),
                    "write the tool's name, or a glob such as \"send_*\"".to_string(),
                );
                ok = false;
            }
            let Some(rule) = self.rule(&m.key, &m.value, &rptr) else {
                ok = false;
                continue;
            };
            let index = policy.rules.len();
            if Glob::is_glob(&m.key) {
                policy.globs.push((Glob::new(&m.key), index));
            } else {
                policy.exact.insert(m.key.clone(), index);
            }
            policy.rules.push(rule);
        }
        ok
    }

    fn rule(&mut self, key: &str, node: &Node, ptr: &str) -> Option<Rule> {
        let members = self.object(node, ptr, "a rule", RULE_FIELDS)?;
        // Unknown fields and fields of later versions were reported by `object`.
        let mut ok = !members
            .iter()
            .any(|m| !RULE_FIELDS.contains(&m.key.as_str()));
        let mut rule = Rule {
            key: key.to_string(),
            pointer: SmolStr::new(ptr),
            action: Action::Allow,
            reason: None,
            deny_if: Vec::new(),
            require: Vec::new(),
            limits: Vec::new(),
            approval_timeout_ms: None,
            shadow: false,
        };
        let mut reason_field: Option<&str> = None;
        for m in members {
            let p = child(ptr, &m.key);
            let node = &m.value;
            match m.key.as_str() {
                "action" => match self.action(node, &p, "action") {
                    Some(a) => rule.action = a,
                    None => ok = false,
                },
                "reason" | "on_deny" => {
                    if let Some(first) = reason_field {
                        self.problem(
                            m.key_offset,
                            p,
                            format!("both {} and {} are set", quote(first), quote(&m.key)),
                            "on_deny is another name for reason; keep one".to_string(),
                        );
                        ok = false;
                        continue;
                    }
                    reason_field = Some(if m.key == "reason" {
                        "reason"
                    } else {
                        "on_deny"
                    });
                    match self.string(node, &p, &m.key) {
                        Some(s) => rule.reason = Some(SmolStr::new(s)),
                        None => ok = false,
                    }
                }
                "require" | "deny_if" => {
                    let Some(items) = self.array(node, &p, &m.key) else {
                        ok = false;
                        continue;
                    };
                    let mut conds = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        let cp = child(&p, &i.to_string());
                        match self.condition(item, &cp) {
                            Some(c) => conds.push((cp, c)),
                            None => ok = false,
                        }
                    }
                    if m.key == "require" {
                        rule.require = conds;
                    } else {
                        rule.deny_if = conds;
                    }
                }
                "limits" => match self.limits(node, &p) {
                    Some(l) => rule.limits.extend(l),
                    None => ok = false,
                },
                "rate_limit" => match self.rate_limit(key, node, &p) {
                    Some(l) => rule.limits.push(l),
                    None => ok = false,
                },
                "approval_timeout" => match self.duration(node, &p, "approval_timeout", false) {
                    Some(ms) => rule.approval_timeout_ms = Some(ms),
                    None => ok = false,
                },
                "shadow" => match &node.value {
                    Value::Bool(b) => rule.shadow = *b,
                    _ => {
                        self.problem(
                            node.offset,
                            p,
                            format!("\"shadow\" must be true or false, found {}", shown(node)),
                            String::new(),
                        );
                        ok = false;
                    }
                },
                _ => {}
            }
        }
        ok.then_some(rule)
    }

    fn condition(&mut self, node: &Node, ptr: &str) -> Option<Condition> {
        let members = self.object(node, ptr, "a condition", CONDITION_FIELDS)?;
        let mut ok = !members
            .iter()
            .any(|m| !CONDITION_FIELDS.contains(&m.key.as_str()));
        let path_node = self.require_field(members, node, ptr, "a condition", "path");
        let op_node = self.require_field(members, node, ptr, "a condition", "op");
        let value_node = get(members, "value");

        let mut segments = Vec::new();
        let mut path = String::new();
        match path_node {
            None => ok = false,
            Some(pn) => {
                let pp = child(ptr, "path");
                match self.string(pn, &pp, "path") {
                    None => ok = false,
                    Some(s) => {
                        path = s.to_string();
                        match s.strip_prefix("args.") {
                            Some(rest) if !rest.split('.').any(str::is_empty) => {
                                segments = rest.split('.').map(String::from).collect();
                            }
                            _ => {
                                self.problem(
                                    pn.offset,
                                    pp,
                                    format!(
                                        "condition path {} is not under \"args.\"",
                                        quote(s)
                                    ),
                                    "write \"args.\" then dot-separated names or indexes, like \"args.amount\" or \"args.items.0\"".to_string(),
                                );
                                ok = false;
                            }
                        }
                    }
                }
            }
        }

        let op = match op_node {
            None => None,
            Some(on) => {
                let op_ptr = child(ptr, "op");
                match self.string(on, &op_ptr, "op") {
                    None => None,
                    Some(s) => match Op::parse(s) {
                        Some(op) => Some(op),
                        None => {
                            self.problem(
                                on.offset,
                                op_ptr,
                                format!("unknown op {}", quote(s)),
                                format!("expected one of: {}", Op::NAMES.join(", ")),
                            );
                            None
                        }
                    },
                }
            }
        };
        let op = op?;

        let vptr = child(ptr, "value");
        let mut value = serde_json::Value::Null;
        let mut regex = None;
        let mut root = None;
        match (op, value_node) {
            (Op::Exists | Op::NotExists, Some(v)) => {
                self.problem(
                    v.offset,
                    vptr,
                    format!("op {} takes no value", quote(op.name())),
                    "remove \"value\"".to_string(),
                );
                ok = false;
            }
            (Op::Exists | Op::NotExists, None) => {}
            (_, None) => {
                self.error(
                    node,
                    ptr,
                    format!("op {} needs a \"value\"", quote(op.name())),
                );
                ok = false;
            }
            (_, Some(v)) => match v.to_serde() {
                Err(offset) => {
                    self.problem(
                        offset,
                        vptr,
                        "number out of range".to_string(),
                        String::new(),
                    );
                    ok = false;
                }
                Ok(converted) => {
                    let fits = match op {
                        Op::In | Op::NotIn => converted.is_array(),
                        Op::Lt | Op::Lte | Op::Gt | Op::Gte => converted.is_number(),
                        Op::Regex | Op::Under => converted.is_string(),
                        _ => true,
                    };
                    if !fits {
                        let want = match op {
                            Op::In | Op::NotIn => "an array of values",
                            Op::Lt | Op::Lte | Op::Gt | Op::Gte => "a number",
                            Op::Under => "a string (an absolute path, like \"/home/me/notes\")",
                            _ => "a string (the regex)",
                        };
                        self.error(
                            v,
                            &vptr,
                            format!(
                                "op {} needs {want} as its value, found {}",
                                quote(op.name()),
                                v.kind()
                            ),
                        );
                        ok = false;
                    } else if let (Op::Regex, Some(pattern)) = (op, converted.as_str()) {
                        match RegexBuilder::new(pattern)
                            .size_limit(REGEX_SIZE_LIMIT)
                            .build()
                        {
                            Ok(re) => regex = Some(re),
                            Err(e) => {
                                self.problem(
                                    v.offset,
                                    vptr,
                                    format!("invalid regex {}: {}", quote(pattern), regex_error(&e)),
                                    "fix the pattern (Rust regex syntax; no look-around or backreferences)".to_string(),
                                );
                                ok = false;
                            }
                        }
                    } else if let (Op::Under, Some(text)) = (op, converted.as_str()) {
                        match Root::parse(text) {
                            Ok(r) => root = Some(r),
                            Err(problem) => {
                                self.problem(
                                    v.offset,
                                    vptr,
                                    format!(
                                        "op \"under\" needs an absolute path as its value, found {} ({})",
                                        problem.description(),
                                        quote(text)
                                    ),
                                    under_hint(problem).to_string(),
                                );
                                ok = false;
                            }
                        }
                    }
                    value = converted;
                }
            },
        }
        ok.then_some(Condition {
            path,
            segments,
            op,
            value,
            regex,
            root,
        })
    }

    fn limits(&mut self, node: &Node, ptr: &str) -> Option<Vec<LimitUse>> {
        let items = self.array(node, ptr, "limits")?;
        let mut ok = true;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = child(ptr, &i.to_string());
            match self.limit(item, &p) {
                Some(l) => out.push(l),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn limit(&mut self, node: &Node, ptr: &str) -> Option<LimitUse> {
        let members = self.object(node, ptr, "a limit", LIMIT_FIELDS)?;
        let mut ok = !members
            .iter()
            .any(|m| !LIMIT_FIELDS.contains(&m.key.as_str()));
        let counter = self.require_field(members, node, ptr, "a limit", "counter");
        let window = self.require_field(members, node, ptr, "a limit", "window");
        let max = self.require_field(members, node, ptr, "a limit", "max");
        let name = counter.and_then(|n| {
            let p = child(ptr, "counter");
            let s = self.string(n, &p, "counter")?;
            if s.is_empty() {
                self.error(n, &p, "a counter name must not be empty".to_string());
                return None;
            }
            Some(s)
        });
        let window_ms =
            window.and_then(|w| self.duration(w, &child(ptr, "window"), "window", true));
        let max = max.and_then(|m| self.max(m, &child(ptr, "max")));
        let scope = match get(members, "scope") {
            None => Some(Scope::Grant),
            Some(s) => self.scope(s, &child(ptr, "scope")),
        };
        ok &= name.is_some() && window_ms.is_some() && max.is_some() && scope.is_some();
        if !ok {
            return None;
        }
        let (name, window_ms, max, scope) = (name?, window_ms?, max?, scope?);
        self.define_counter(name, scope, max, window_ms, node.offset, ptr)
    }

    fn rate_limit(&mut self, key: &str, node: &Node, ptr: &str) -> Option<LimitUse> {
        let members = self.object(node, ptr, "rate_limit", RATE_LIMIT_FIELDS)?;
        let ok = !members
            .iter()
            .any(|m| !RATE_LIMIT_FIELDS.contains(&m.key.as_str()));
        let window = self.require_field(members, node, ptr, "rate_limit", "window");
        let max = self.require_field(members, node, ptr, "rate_limit", "max");
        let window_ms =
            window.and_then(|w| self.duration(w, &child(ptr, "window"), "window", true));
        let max = max.and_then(|m| self.max(m, &child(ptr, "max")));
        if !ok {
            return None;
        }
        self.define_counter(key, Scope::Grant, max?, window_ms?, node.offset, ptr)
    }

    /// Registers a use of a counter; a second definition with another budget is an error.
    fn define_counter(
        &mut self,
        name: &str,
        scope: Scope,
        max: u64,
        window_ms: u64,
        offset: usize,
        ptr: &str,
    ) -> Option<LimitUse> {
        if let Some(&i) = self.counter_index.get(name) {
            let first = &self.counters[i];
            if first.max != max || first.window_ms != window_ms || first.scope != scope {
                let message = format!(
                    "counter {} is given two budgets: {max} per {} ({scope}) here, but {} per {} ({}) at {}",
                    quote(name),
                    super::window_words(window_ms),
                    first.max,
                    super::window_words(first.window_ms),
                    first.scope,
                    first.pointer,
                );
                self.problem(
                    offset,
                    ptr.to_string(),
                    message,
                    "limits naming one counter share one budget: give them the same max, window and scope, or use another counter name".to_string(),
                );
                return None;
            }
            return Some(LimitUse {
                counter: i,
                pointer: SmolStr::new(ptr),
            });
        }
        let i = self.counters.len();
        self.counters.push(CounterDef {
            name: name.to_string(),
            scope,
            max,
            window_ms,
            pointer: ptr.to_string(),
        });
        self.counter_index.insert(name.to_string(), i);
        Some(LimitUse {
            counter: i,
            pointer: SmolStr::new(ptr),
        })
    }

    fn max(&mut self, node: &Node, ptr: &str) -> Option<u64> {
        match whole_number(node) {
            Some(n) if n >= 1 => Some(n),
            _ => {
                let shown = match &node.value {
                    Value::Number(n) => n.clone(),
                    _ => node.kind().to_string(),
                };
                self.problem(
                    node.offset,
                    ptr.to_string(),
                    format!("max must be a whole number >= 1, found {shown}"),
                    if shown == "0" {
                        "to refuse every call use \"action\": \"deny\"".to_string()
                    } else {
                        String::new()
                    },
                );
                None
            }
        }
    }

    fn scope(&mut self, node: &Node, ptr: &str) -> Option<Scope> {
        let s = self.string(node, ptr, "scope")?;
        match s {
            "grant" => Some(Scope::Grant),
            "session" => Some(Scope::Session),
            "global" => Some(Scope::Global),
            other => {
                self.problem(
                    node.offset,
                    ptr.to_string(),
                    format!("unknown scope {}", quote(other)),
                    "expected grant, session or global".to_string(),
                );
                None
            }
        }
    }

    /// A `window` (with the names second..day) or an `approval_timeout`, in milliseconds.
    fn duration(&mut self, node: &Node, ptr: &str, what: &str, named: bool) -> Option<u64> {
        let hint = if named {
            WINDOW_HINT.to_string()
        } else {
            "expected seconds or a duration like \"90s\", \"2m\", \"1h\"".to_string()
        };
        let parsed = match &node.value {
            Value::Number(_) => match whole_number(node) {
                Some(n) if n >= 1 => n.checked_mul(1000),
                _ => {
                    self.problem(
                        node.offset,
                        ptr.to_string(),
                        format!("{what} in seconds must be a whole number >= 1"),
                        hint,
                    );
                    return None;
                }
            },
            Value::String(s) => {
                let by_name = match s.as_str() {
                    "second" if named => Some(1_000),
                    "minute" if named => Some(60_000),
                    "hour" if named => Some(3_600_000),
                    "day" if named => Some(86_400_000),
                    _ => None,
                };
                match by_name {
                    Some(ms) => Some(ms),
                    None => match parse_duration(s) {
                        Some(Some(ms)) if ms > 0 => Some(ms),
                        Some(Some(_)) => {
                            self.problem(
                                node.offset,
                                ptr.to_string(),
                                format!("{what} must be at least one second"),
                                hint,
                            );
                            return None;
                        }
                        Some(None) => None,
                        None => {
                            let label = if named { "window" } else { "duration" };
                            self.problem(
                                node.offset,
                                ptr.to_string(),
                                format!("unknown {label} {}", quote(s)),
                                hint,
                            );
                            return None;
                        }
                    },
                }
            }
            _ => {
                self.problem(
                    node.offset,
                    ptr.to_string(),
                    format!(
                        "{what} must be a string or a number of seconds, found {}",
                        node.kind()
                    ),
                    hint,
                );
                return None;
            }
        };
        if parsed.is_none() {
            self.problem(
                node.offset,
                ptr.to_string(),
                format!("{what} is too long"),
                "use at most a few years".to_string(),
            );
        }
        parsed
    }
}

fn get<'n>(members: &'n [Member], name: &str) -> Option<&'n Node> {
    members.iter().find(|m| m.key == name).map(|m| &m.value)
}

/// A JSON number written as plain digits (no sign, fraction or exponent) that fits a u64.
/// A value as a diagnostic shows it: strings and numbers as written, anything else by kind.
fn shown(node: &Node) -> String {
    match &node.value {
        Value::String(s) => quote(s),
        Value::Number(n) => n.clone(),
        _ => node.kind().to_string(),
    }
}

pub(super) fn whole_number(node: &Node) -> Option<u64> {
    match &node.value {
        Value::Number(raw) if raw.bytes().all(|b| b.is_ascii_digit()) => raw.parse().ok(),
        _ => None,
    }
}

/// `"90s"`, `"10m"`, `"1h"`, `"1d"` in milliseconds. `None`: not a duration;
/// `Some(None)`: a duration that overflows.
pub(super) fn parse_duration(s: &str) -> Option<Option<u64>> {
    let unit = s.chars().last()?;
    let digits = &s[..s.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let factor: u64 = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return None,
    };
    Some(
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor)),
    )
}

/// What to do about an `under` value that is not a usable absolute path.
fn under_hint(problem: PathProblem) -> &'static str {
    match problem {
        PathProblem::Relative => {
            "write the directory from the root, like \"/home/me/notes\" (no ~, no relative paths: nothing is expanded)"
        }
        PathProblem::ClimbsAboveRoot => "remove the .. segments that go above /",
        PathProblem::Nul | PathProblem::Backslash | PathProblem::PercentEncoded => {
            "write the directory with / separators and plain names (arguments holding these are refused anyway)"
        }
    }
}

/// The one-line gist of a regex error (the crate's message spans several lines).
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.lines().map(str::trim).collect::<Vec<_>>().join(" "))
}
