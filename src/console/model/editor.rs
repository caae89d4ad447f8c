//! The rule editor: one `tools` entry as a form — action, reason, approval timeout, limits
//! (counter, window, max, scope) and conditions (require / deny if, path, op, value).
//!
//! Every change rebuilds the rule and asks the draft whether the policy would still be
//! valid ([`Draft::check`], i.e. the policy module), so the problems `toolgate check` would
//! report show under the form as the operator types. Condition paths are offered from the
//! tool's `inputSchema` (its `properties`, one level of nesting). Saving (`Ctrl-S`) puts the
//! rule in the draft and opens the usual diff and `y`/`n`. Members of the rule the form does
//! not show (`rate_limit`, for instance) are kept as written.

use serde_json::{Map, Value, json};
use tui_input::{Input, InputRequest};

use super::draft::{Draft, Edit, EditError, parse_window};

pub(crate) const ACTIONS: [&str; 3] = ["allow", "deny", "require_approval"];
pub(crate) const SCOPES: [&str; 3] = ["grant", "session", "global"];
pub(crate) const KINDS: [&str; 2] = ["require", "deny_if"];
/// The condition ops, in the policy module's order (it is the one that defines them).
pub const OPS: &[&str] = crate::policy::Op::NAMES;

/// One limit's fields.
#[derive(Debug, Clone, Default)]
pub struct LimitForm {
    pub counter: Input,
    pub window: Input,
    pub max: Input,
    pub scope: usize,
}

/// One condition's fields.
#[derive(Debug, Clone, Default)]
pub struct ConditionForm {
    pub kind: usize,
    pub path: Input,
    pub op: usize,
    pub value: Input,
}

/// A field of the form, in the order Tab visits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Action,
    Reason,
    Timeout,
    LimitCounter(usize),
    LimitWindow(usize),
    LimitMax(usize),
    LimitScope(usize),
    AddLimit,
    CondKind(usize),
    CondPath(usize),
    CondOp(usize),
    CondValue(usize),
    AddCondition,
}

/// The form.
#[derive(Debug, Clone)]
pub struct RuleEditor {
    /// The rule's key in `tools`.
    pub key: String,
    pub action: usize,
    pub reason: Input,
    pub timeout: Input,
    pub limits: Vec<LimitForm>,
    pub conditions: Vec<ConditionForm>,
    /// Index into [`RuleEditor::fields`].
    pub focus: usize,
    /// `args.…` paths from the tool's `inputSchema`.
    pub paths: Vec<String>,
    /// The candidate's problems (empty: valid).
    pub problems: Vec<String>,
    /// Members the form does not show, kept as written.
    extra: Map<String, Value>,
    /// Whether the rule wrote `action` (so an unchanged `allow` is not added).
    wrote_action: bool,
    /// Which of `reason`/`on_deny` the rule used.
    reason_key: &'static str,
}

fn input(text: impl Into<String>) -> Input {
    let text = text.into();
    let n = text.chars().count();
    Input::new(text).with_cursor(n)
}

fn text_of(v: Option<&Value>) -> String {
    match v {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn index_of(list: &[&str], v: Option<&Value>, default: usize) -> usize {
    v.and_then(Value::as_str)
        .and_then(|s| list.iter().position(|x| *x == s))
        .unwrap_or(default)
}

/// The `args.…` paths an `inputSchema` offers.
pub(crate) fn schema_paths(schema: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(props) = schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
    else {
        return out;
    };
    for (name, prop) in props {
        out.push(format!("args.{name}"));
        if let Some(inner) = prop.get("properties").and_then(Value::as_object) {
            for sub in inner.keys() {
                out.push(format!("args.{name}.{sub}"));
            }
        }
    }
    out
}

impl RuleEditor {
    /// A form for `tools[key]` as the draft has it (empty if the rule is new).
    pub fn open(key: &str, rule: Option<&Value>, paths: Vec<String>) -> RuleEditor {
        let empty = Map::new();
        let obj = rule.and_then(Value::as_object).unwrap_or(&empty);
        let mut extra = obj.clone();
        for k in [
            "action",
            "reason",
            "on_deny",
            "approval_timeout",
            "limits",
            "require",
            "deny_if",
        ] {
            extra.remove(k);
        }
        let limits = obj
            .get("limits")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|l| LimitForm {
                        counter: input(text_of(l.get("counter"))),
                        window: input(text_of(l.get("window"))),
                        max: input(text_of(l.get("max"))),
                        scope: index_of(&SCOPES, l.get("scope"), 0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut conditions = Vec::new();
        for (kind, field) in KINDS.iter().enumerate() {
            for c in obj
                .get(*field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                conditions.push(ConditionForm {
                    kind,
                    path: input(text_of(c.get("path"))),
                    op: index_of(OPS, c.get("op"), 0),
                    value: input(c.get("value").map(|v| v.to_string()).unwrap_or_default()),
                });
            }
        }
        RuleEditor {
            key: key.to_owned(),
            action: index_of(&ACTIONS, obj.get("action"), 0),
            reason: input(text_of(obj.get("reason").or_else(|| obj.get("on_deny")))),
            timeout: input(text_of(obj.get("approval_timeout"))),
            limits,
            conditions,
            focus: 0,
            paths,
            problems: Vec::new(),
            extra,
            wrote_action: obj.contains_key("action"),
            reason_key: if obj.contains_key("on_deny") {
                "on_deny"
            } else {
                "reason"
            },
        }
    }

    /// The fields in Tab order.
    pub fn fields(&self) -> Vec<Field> {
        let mut f = vec![Field::Action, Field::Reason, Field::Timeout];
        for i in 0..self.limits.len() {
            f.extend([
                Field::LimitCounter(i),
                Field::LimitWindow(i),
                Field::LimitMax(i),
                Field::LimitScope(i),
            ]);
        }
        f.push(Field::AddLimit);
        for i in 0..self.conditions.len() {
            f.extend([
                Field::CondKind(i),
                Field::CondPath(i),
                Field::CondOp(i),
                Field::CondValue(i),
            ]);
        }
        f.push(Field::AddCondition);
        f
    }

    pub fn focused(&self) -> Field {
        let f = self.fields();
        f[self.focus.min(f.len() - 1)]
    }

    /// Moves the focus by `by` fields (wrapping).
    pub fn move_focus(&mut self, by: isize) {
        let n = self.fields().len() as isize;
        self.focus = (self.focus as isize + by).rem_euclid(n) as usize;
    }

    /// The text input of the focused field, if it is a text field.
    pub fn focused_input(&mut self) -> Option<&mut Input> {
        Some(match self.focused() {
            Field::Reason => &mut self.reason,
            Field::Timeout => &mut self.timeout,
            Field::LimitCounter(i) => &mut self.limits.get_mut(i)?.counter,
            Field::LimitWindow(i) => &mut self.limits.get_mut(i)?.window,
            Field::LimitMax(i) => &mut self.limits.get_mut(i)?.max,
            Field::CondPath(i) => &mut self.conditions.get_mut(i)?.path,
            Field::CondValue(i) => &mut self.conditions.get_mut(i)?.value,
            _ => return None,
        })
    }

    /// Types into the focused text field. Returns whether the form changed.
    pub fn type_text(&mut self, req: InputRequest) -> bool {
        match self.focused_input() {
            Some(i) => i.handle(req).is_some_and(|r| r.value),
            None => false,
        }
    }

    /// ←/→: the next or previous choice of a choice field, or the cursor in a text field.
    pub fn choose(&mut self, by: isize) -> bool {
        let step = |i: &mut usize, n: usize| {
            *i = (*i as isize + by).rem_euclid(n as isize) as usize;
            true
        };
        match self.focused() {
            Field::Action => step(&mut self.action, ACTIONS.len()),
            Field::LimitScope(i) => step(&mut self.limits[i].scope, SCOPES.len()),
            Field::CondKind(i) => step(&mut self.conditions[i].kind, KINDS.len()),
            Field::CondOp(i) => step(&mut self.conditions[i].op, OPS.len()),
            _ => {
                let req = if by < 0 {
                    InputRequest::GoToPrevChar
                } else {
                    InputRequest::GoToNextChar
                };
                self.type_text(req);
                false
            }
        }
    }

    /// Adds a limit (on the rule's own counter when it has none yet) and focuses it.
    pub fn add_limit(&mut self) {
        // The rule's own counter, unless `rate_limit` (which names it) or a limit has it.
        let taken = self.extra.contains_key("rate_limit") as usize + self.limits.len();
        let counter = if taken == 0 {
            self.key.clone()
        } else {
            format!("{}_{}", self.key, taken + 1)
        };
        self.limits.push(LimitForm {
            counter: input(counter),
            window: input("minute"),
            max: input("30"),
            scope: 0,
        });
        let i = self.limits.len() - 1;
        self.focus_on(Field::LimitMax(i));
    }

    /// Adds a condition (on the first offered path) and focuses its path.
    pub fn add_condition(&mut self) {
        self.conditions.push(ConditionForm {
            kind: 0,
            path: input(
                self.paths
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "args.".into()),
            ),
            op: 0,
            value: input(""),
        });
        let i = self.conditions.len() - 1;
        self.focus_on(Field::CondPath(i));
    }

    /// Removes the limit or condition under the focus. Returns whether one was removed.
    pub fn remove_focused(&mut self) -> bool {
        let removed = match self.focused() {
            Field::LimitCounter(i)
            | Field::LimitWindow(i)
            | Field::LimitMax(i)
            | Field::LimitScope(i) => {
                self.limits.remove(i);
                true
            }
            Field::CondKind(i) | Field::CondPath(i) | Field::CondOp(i) | Field::CondValue(i) => {
                self.conditions.remove(i);
                true
            }
            _ => false,
        };
        self.focus = self.focus.min(self.fields().len() - 1);
        removed
    }

    /// On a condition's path: the next path the tool's `inputSchema` offers.
    pub fn complete_path(&mut self) -> bool {
        let Field::CondPath(i) = self.focused() else {
            return false;
        };
        if self.paths.is_empty() {
            return false;
        }
        let now = self.conditions[i].path.value().to_owned();
        let next = match self.paths.iter().position(|p| *p == now) {
            Some(k) => (k + 1) % self.paths.len(),
            None => self
                .paths
                .iter()
                .position(|p| p.starts_with(&now))
                .unwrap_or(0),
        };
        self.conditions[i].path = input(self.paths[next].clone());
        true
    }

    fn focus_on(&mut self, field: Field) {
        if let Some(i) = self.fields().iter().position(|f| *f == field) {
            self.focus = i;
        }
    }

    /// The rule the form describes.
    pub fn rule(&self) -> Value {
        let mut m = Map::new();
        let action = ACTIONS[self.action];
        if self.wrote_action || action != "allow" {
            m.insert("action".into(), json!(action));
        }
        let reason = self.reason.value().trim();
        if !reason.is_empty() {
            m.insert(self.reason_key.into(), json!(reason));
        }
        if !self.limits.is_empty() {
            let limits: Vec<Value> = self
                .limits
                .iter()
                .map(|l| {
                    let mut o = Map::new();
                    o.insert("counter".into(), json!(l.counter.value().trim()));
                    o.insert(
                        "window".into(),
                        parse_window(l.window.value()).unwrap_or_else(|| json!("")),
                    );
                    let max = l.max.value().trim();
                    o.insert(
                        "max".into(),
                        max.parse::<u64>().map_or_else(|_| json!(max), |n| json!(n)),
                    );
                    if l.scope != 0 {
                        o.insert("scope".into(), json!(SCOPES[l.scope]));
                    }
                    Value::Object(o)
                })
                .collect();
            m.insert("limits".into(), Value::Array(limits));
        }
        for (kind, field) in KINDS.iter().enumerate() {
            let conds: Vec<Value> = self
                .conditions
                .iter()
                .filter(|c| c.kind == kind)
                .map(|c| {
                    let mut o = Map::new();
                    o.insert("path".into(), json!(c.path.value().trim()));
                    o.insert("op".into(), json!(OPS[c.op]));
                    let v = c.value.value().trim();
                    if !v.is_empty() {
                        // JSON when it reads as JSON (10000, ["a","b"], true), else a string.
                        let value = serde_json::from_str(v).unwrap_or_else(|_| json!(v));
                        o.insert("value".into(), value);
                    }
                    Value::Object(o)
                })
                .collect();
            if !conds.is_empty() {
                m.insert((*field).into(), Value::Array(conds));
            }
        }
        let timeout = self.timeout.value().trim();
        if !timeout.is_empty() {
            m.insert("approval_timeout".into(), json!(timeout));
        }
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }

    /// The edit that saves the form.
    pub fn edit(&self) -> Edit {
        Edit::SetRule {
            key: self.key.clone(),
            rule: self.rule(),
        }
    }

    /// Re-validates the form against the draft (as `toolgate check` would).
    pub fn validate(&mut self, draft: &Draft) {
        self.problems = match draft.check(&self.edit()) {
            Ok(()) => Vec::new(),
            Err(EditError::Invalid(d)) => d.0.iter().map(|d| d.to_string()).collect(),
            Err(e) => vec![e.to_string()],
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "pay": { "action": "require_approval", "on_deny": "ask first", "rate_limit": { "max": 3, "window": "hour" },
             "require": [ { "path": "args.amount", "op": "lte", "value": 100 } ] }
  }
}
"#;

    #[test]
    fn an_unchanged_form_is_the_rule_as_written() {
        let d = Draft::load("p.json", POLICY.into());
        let mut e = RuleEditor::open("pay", d.rule_value("pay"), vec![]);
        assert_eq!(e.rule(), *d.rule_value("pay").unwrap());
        e.validate(&d);
        assert!(e.problems.is_empty(), "{:?}", e.problems);
    }

    #[test]
    fn typing_a_bad_window_shows_checks_problem_and_fixing_it_clears_it() {
        let d = Draft::load("p.json", POLICY.into());
        let mut e = RuleEditor::open("pay", d.rule_value("pay"), vec![]);
        e.add_limit();
        e.focus_on(Field::LimitWindow(0));
        e.type_text(InputRequest::InsertChar('s'));
        e.validate(&d);
        assert!(
            e.problems
                .iter()
                .any(|p| p.contains("unknown window \"minutes\"")),
            "{:?}",
            e.problems
        );
        e.type_text(InputRequest::DeletePrevChar);
        e.validate(&d);
        assert!(e.problems.is_empty(), "{:?}", e.problems);
        assert!(e.remove_focused());
        assert!(e.limits.is_empty());
    }

    #[test]
    fn condition_paths_come_from_the_input_schema() {
        let schema = json!({"type": "object", "properties": {
            "amount": {"type": "number"},
            "to": {"type": "object", "properties": {"iban": {"type": "string"}}}
        }});
        let paths = schema_paths(Some(&schema));
        assert_eq!(paths, ["args.amount", "args.to", "args.to.iban"]);
        let mut e = RuleEditor::open("pay", None, paths);
        e.add_condition();
        assert_eq!(e.conditions[0].path.value(), "args.amount");
        e.complete_path();
        assert_eq!(e.conditions[0].path.value(), "args.to");
        e.focus_on(Field::CondOp(0));
        e.choose(5);
        e.focus_on(Field::CondValue(0));
        for c in "[1,2]".chars() {
            e.type_text(InputRequest::InsertChar(c));
        }
        assert_eq!(
            e.rule(),
            json!({"require": [{"path": "args.to", "op": "lte", "value": [1, 2]}]})
        );
    }
}
