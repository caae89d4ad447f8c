//! The review of a learned policy (`toolgate console --review-learned DRAFT.json`): the
//! proposals of a [`Learned`] draft walked one by one, as AppArmor's `aa-logprof` walks
//! observed events, then what the chosen policy would refuse of the recorded calls.
//!
//! Each proposal is accepted, rejected, edited (the rule editor, then accepted), widened
//! (the tool name made a glob, numeric bounds loosened) or skipped (not in this write;
//! decided on a later review). The resulting policy is the draft's `base` with the accepted
//! proposals put in, written back into the base's text by [`super::splice`] so its key order
//! and formatting stay, and validated by [`Policy::parse`]. The what-if replays the recorded
//! observations through [`whatif::replay`], the code the write review uses, against a policy
//! that allows everything: what changes is exactly what the result would not allow.
//!
//! Outside text (tool names, reasons, evidence, argument values) is sanitised here, when it
//! enters the state, as everywhere in the console; the raw values are kept only to build the
//! policy.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::whatif::{self, WhatIf};
use crate::learn::{Draft as Learned, Observation, Proposal, ProposalKind};
use crate::policy::{Policy, RuleMatch, Verdict};
use crate::sanitize::{json_pretty, terminal_string, terminal_text};
use crate::wire::CallEvent;

/// How many refused calls the summary lists.
pub(crate) const LISTED_REFUSALS: usize = 12;

/// What the operator decided for one proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Not decided yet.
    Open,
    Accepted,
    Rejected,
    /// Decide later: not in this write.
    Skipped,
}

/// One proposal under review.
#[derive(Debug, Clone)]
pub struct Item {
    /// As the draft has it (raw: only used to build the policy).
    pub(crate) proposal: Proposal,
    /// The key the rule is written under: the proposal's tool, or the glob widening made.
    pub key: String,
    /// The rule written if accepted: the proposal's, widened or edited.
    pub rule: Option<Value>,
    pub choice: Choice,
    pub widened: bool,
    pub edited: bool,
    /// The same, made safe for the terminal.
    pub shown: Shown,
}

/// An item's text for the screen, sanitised.
#[derive(Debug, Clone, Default)]
pub struct Shown {
    pub tool: String,
    pub key: String,
    pub reason: String,
    pub evidence: Vec<String>,
    /// The rule as it will be written, pretty JSON, one line each.
    pub rule: Vec<String>,
    /// The policy's rule now (a tighten's "before").
    pub current: Vec<String>,
}

/// Where the walk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Showing proposal `at`.
    Proposals,
    /// Every proposal decided: the summary and the what-if.
    Summary,
}

/// Why a recorded call would be refused by the resulting policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The operator rejected the proposal for its tool.
    Rejected,
    /// The operator skipped the proposal for its tool.
    Skipped,
    /// The operator edited or widened the rule that now refuses it.
    Edited,
    /// The operator accepted the removal of its tool's rule.
    Removed,
    /// An argument was recorded as its type only (it looked secret): the replay cannot
    /// compare its value, and a condition on it fails closed.
    Redacted,
    /// The proposal as made refuses a call it was made from.
    Proposal,
    /// No proposal names its tool: the base policy refuses it.
    Unproposed,
    /// The gateway refused it when it was recorded too (the draft keeps what was refused).
    RefusedThen,
}

impl Cause {
    /// Whether the refusal is expected: the operator chose it, or the call was refused when
    /// it was recorded as well.
    pub fn chosen(self) -> bool {
        matches!(
            self,
            Cause::Rejected | Cause::Skipped | Cause::Edited | Cause::Removed | Cause::RefusedThen
        )
    }

    pub fn words(self) -> &'static str {
        match self {
            Cause::Rejected => "you rejected its tool's proposal",
            Cause::Skipped => "you skipped its tool's proposal",
            Cause::Edited => "the rule you edited or widened",
            Cause::Removed => "you accepted the removal of its rule",
            Cause::Redacted => "a secret argument was recorded as its type only",
            Cause::Proposal => "the proposal as made (check it)",
            Cause::Unproposed => "no proposal for this tool: the base policy decides",
            Cause::RefusedThen => "refused when it was recorded too",
        }
    }
}

/// A recorded call the result would not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub at: DateTime<Utc>,
    /// Sanitised.
    pub tool: String,
    /// Sanitised.
    pub grant: String,
    pub verdict: Verdict,
    pub cause: Cause,
    /// The arguments as compact JSON, sanitised.
    pub args: String,
}

/// The policy the choices make, and what it does to the recorded calls.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The policy's text, or `toolgate check`'s diagnostics (sanitised).
    pub text: Result<String, Vec<String>>,
    /// The replay (empty when the text is invalid).
    pub whatif: WhatIf,
    /// The replayed calls the result denies or rate limits, in time order.
    pub refused: Vec<Refused>,
    /// The replayed calls the result would hold for a person.
    pub held: usize,
    /// Tools whose proposal was rejected or skipped that a widened glob now decides
    /// (sanitised lines): widening `notes_read` to `notes_*` lets `notes_write` through too.
    pub widened_over: Vec<String>,
}

impl Outcome {
    /// Refused calls the operator did not choose.
    pub fn unchosen(&self) -> usize {
        self.refused.iter().filter(|r| !r.cause.chosen()).count()
    }
}

/// The review.
#[derive(Debug, Clone)]
pub struct LearnReview {
    /// The draft file, sanitised (for the title).
    pub source: String,
    /// The file the result is written to (`--policy`, or the shadow candidate).
    pub target: String,
    /// Written as a `--shadow-policy` candidate rather than the enforced policy.
    pub shadow: bool,
    pub items: Vec<Item>,
    /// The proposal shown (in [`Stage::Proposals`]).
    pub at: usize,
    pub stage: Stage,
    /// The summary's outcome, worked out when the summary opens.
    pub outcome: Option<Outcome>,
    /// Lines the proposal or the summary is scrolled by.
    pub scroll: u16,
    /// The `y` of the write review was pressed for this review's result.
    pub writing: bool,
    base: String,
    /// The recorded calls, as the what-if replays them.
    observations: Vec<CallEvent>,
    /// Per observation: when it was decided.
    times: Vec<DateTime<Utc>>,
    /// Per observation: whether an argument was recorded as its type only.
    redacted: Vec<bool>,
}

/// The placeholder the recorder writes for a value that looked secret.
const TYPE_ONLY: &str = "$toolgate_type";

fn has_type_only(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key(TYPE_ONLY) || m.values().any(has_type_only),
        Value::Array(a) => a.iter().any(has_type_only),
        _ => false,
    }
}

fn pretty_lines(v: &Value) -> Vec<String> {
    json_pretty(v)
        .unwrap_or_else(|e| format!("(cannot show the rule: {e})"))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The observation as a call event for [`whatif::replay`].
fn as_call(n: usize, o: &Observation) -> CallEvent {
    let decision = serde_json::from_value::<Verdict>(Value::String(o.decision.clone()))
        .unwrap_or(Verdict::Allow);
    CallEvent {
        call_id: smol_str::format_smolstr!("observation-{n}"),
        tool: o.tool.as_str().into(),
        grant: o.grant.as_deref().unwrap_or_default().into(),
        session: Default::default(),
        server: o.server.as_str().into(),
        decision,
        rule: Default::default(),
        reason: Default::default(),
        args: o.args.clone().into(),
        args_truncated: false,
        retry_after_ms: None,
        hold_deadline: None,
        shadow: None,
    }
}

/// `notes_read` → `notes_*`: the name up to its last separator, then `*`. `None` for a
/// name with no prefix to keep, or one that already is a glob.
pub(crate) fn widen_name(name: &str) -> Option<String> {
    if name.contains(['*', '?']) {
        return None;
    }
    let cut = name.rfind(['_', '-', '.', '/'])?;
    (cut > 0).then(|| format!("{}*", &name[..=cut]))
}

/// A looser bound: an upper bound doubled, a lower one halved (towards zero, or doubled away
/// from it below zero). Integers stay integers.
fn loosen(v: &Value, up: bool) -> Option<Value> {
    let n = v.as_f64()?;
    let out = match (up, n >= 0.0) {
        (true, true) => n * 2.0,
        (true, false) => n / 2.0,
        (false, true) => n / 2.0,
        (false, false) => n * 2.0,
    };
    if v.is_i64() || v.is_u64() {
        let rounded = if up { out.ceil() } else { out.floor() };
        Some(Value::from(rounded as i64))
    } else {
        serde_json::Number::from_f64(out).map(Value::Number)
    }
}

/// The rule with its numeric ranges loosened: `require` bounds (`lte`, `lt`, `gte`, `gt`)
/// move outwards, `deny_if` bounds too (a `deny_if gt` denies from higher up). Whether
/// anything changed.
pub(crate) fn widen_ranges(rule: &mut Value) -> bool {
    let mut changed = false;
    for (field, require) in [("require", true), ("deny_if", false)] {
        let Some(conds) = rule.get_mut(field).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in conds {
            let op = c.get("op").and_then(Value::as_str).unwrap_or_default();
            // Which way the allowed range ends: an upper end moves up, a lower one down.
            let up = match (op, require) {
                ("lte" | "lt", true) | ("gte" | "gt", false) => true,
                ("gte" | "gt", true) | ("lte" | "lt", false) => false,
                _ => continue,
            };
            if let Some(new) = c.get("value").and_then(|v| loosen(v, up))
                && let Some(slot) = c.get_mut("value")
                && *slot != new
            {
                *slot = new;
                changed = true;
            }
        }
    }
    changed
}

impl Item {
    fn new(proposal: Proposal) -> Item {
        let mut item = Item {
            key: proposal.tool.clone(),
            rule: proposal.rule.clone(),
            choice: Choice::Open,
            widened: false,
            edited: false,
            shown: Shown::default(),
            proposal,
        };
        item.shown = Shown {
            tool: terminal_text(&item.proposal.tool).into_owned(),
            reason: terminal_text(&item.proposal.reason).into_owned(),
            evidence: item
                .proposal
                .evidence
                .iter()
                .map(|e| terminal_text(e).into_owned())
                .collect(),
            current: item
                .proposal
                .current
                .as_ref()
                .map(pretty_lines)
                .unwrap_or_default(),
            ..Shown::default()
        };
        item.refresh();
        item
    }

    /// Re-makes the shown key and rule after a change.
    fn refresh(&mut self) {
        self.shown.key = terminal_text(&self.key).into_owned();
        self.shown.rule = self.rule.as_ref().map(pretty_lines).unwrap_or_default();
    }

    /// Sets the rule from the editor: accepted, as edited.
    pub(crate) fn set_edited(&mut self, key: String, rule: Value) {
        self.key = key;
        self.rule = Some(rule);
        self.edited = true;
        self.choice = Choice::Accepted;
        self.refresh();
    }

    /// Widens (glob the name, loosen ranges), or, when widened, goes back to the proposal.
    /// Says what happened.
    pub(crate) fn toggle_widen(&mut self) -> Result<String, String> {
        if self.proposal.kind == ProposalKind::Remove {
            return Err("a removal has no rule to widen".into());
        }
        if self.widened {
            self.key = self.proposal.tool.clone();
            self.rule = self.proposal.rule.clone();
            self.widened = false;
            self.edited = false;
            self.refresh();
            return Ok(format!("{}: back to the rule as proposed", self.shown.tool));
        }
        let mut said = Vec::new();
        // A tighten keeps its key: the rule it tightens is that key's.
        if self.proposal.kind == ProposalKind::Add
            && let Some(glob) = widen_name(&self.key)
        {
            said.push(format!("key {}", terminal_text(&glob)));
            // The rule's own counter follows its key: one budget for the glob's tools.
            if let Some(limits) = self
                .rule
                .as_mut()
                .and_then(|r| r.get_mut("limits"))
                .and_then(Value::as_array_mut)
            {
                for l in limits {
                    if l.get("counter").and_then(Value::as_str) == Some(self.key.as_str()) {
                        l["counter"] = Value::String(glob.clone());
                    }
                }
            }
            self.key = glob;
        }
        if let Some(rule) = self.rule.as_mut()
            && widen_ranges(rule)
        {
            said.push("numeric ranges loosened".into());
        }
        if said.is_empty() {
            return Err(format!(
                "{}: nothing to widen (no name prefix to glob, no numeric range)",
                self.shown.tool
            ));
        }
        self.widened = true;
        self.refresh();
        Ok(format!(
            "{} widened: {} (w again undoes it)",
            self.shown.tool,
            said.join(", ")
        ))
    }
}

impl LearnReview {
    /// A review of `learned`, whose result goes to `target` (as a shadow candidate when
    /// `shadow`).
    pub(crate) fn new(source: &str, learned: Learned, target: &str, shadow: bool) -> LearnReview {
        // Oldest first, so a replay capped at the newest calls takes the newest.
        let mut recorded: Vec<&Observation> = learned.observations.iter().collect();
        recorded.sort_by_key(|o| o.at);
        let times = recorded.iter().map(|o| o.at).collect();
        let redacted = recorded.iter().map(|o| has_type_only(&o.args)).collect();
        let observations = recorded
            .iter()
            .enumerate()
            .map(|(n, o)| as_call(n, o))
            .collect();
        LearnReview {
            source: terminal_text(source).into_owned(),
            target: target.to_owned(),
            shadow,
            items: learned.proposals.into_iter().map(Item::new).collect(),
            at: 0,
            stage: Stage::Proposals,
            outcome: None,
            scroll: 0,
            writing: false,
            base: learned.base,
            observations,
            times,
            redacted,
        }
    }

    /// How many recorded calls the review has.
    pub fn observed(&self) -> usize {
        self.observations.len()
    }

    /// The proposal shown, in [`Stage::Proposals`].
    pub fn current(&self) -> Option<&Item> {
        match self.stage {
            Stage::Proposals => self.items.get(self.at),
            Stage::Summary => None,
        }
    }

    pub(crate) fn current_mut(&mut self) -> Option<&mut Item> {
        match self.stage {
            Stage::Proposals => self.items.get_mut(self.at),
            Stage::Summary => None,
        }
    }

    /// Whether any choice has been made (so leaving would lose it).
    pub fn has_choices(&self) -> bool {
        self.items.iter().any(|i| i.choice != Choice::Open)
    }

    /// How many items have `choice`.
    pub fn count(&self, choice: Choice) -> usize {
        self.items.iter().filter(|i| i.choice == choice).count()
    }

    /// Records `choice` for the shown proposal and moves to the next one (or the summary).
    pub(crate) fn decide(&mut self, choice: Choice) {
        if let Some(item) = self.current_mut() {
            item.choice = choice;
            self.advance();
        }
    }

    /// The next proposal, or the summary after the last.
    pub(crate) fn advance(&mut self) {
        self.scroll = 0;
        if self.at + 1 < self.items.len() {
            self.at += 1;
        } else {
            self.open_summary();
        }
    }

    /// One step back: the previous proposal, or from the summary the last one.
    pub(crate) fn back(&mut self) -> bool {
        self.scroll = 0;
        match self.stage {
            Stage::Summary if !self.items.is_empty() => {
                self.stage = Stage::Proposals;
                self.at = self.items.len() - 1;
                self.outcome = None;
                true
            }
            Stage::Proposals if self.at > 0 => {
                self.at -= 1;
                true
            }
            _ => false,
        }
    }

    /// Shows the summary, with the outcome worked out.
    pub(crate) fn open_summary(&mut self) {
        self.stage = Stage::Summary;
        self.scroll = 0;
        self.outcome = Some(self.outcome_now());
    }

    /// The policy document the accepted proposals make, leaving out item `except` (the one
    /// being edited, so the editor validates its rule against the rest).
    fn result_doc(&self, except: Option<usize>) -> Result<(Value, Value), String> {
        let old: Value = serde_json::from_str(&self.base)
            .map_err(|e| format!("the draft's base policy is not JSON: {e}"))?;
        if !old.is_object() {
            return Err("the draft's base policy is not a JSON object".into());
        }
        let mut doc = old.clone();
        let root = doc
            .as_object_mut()
            .ok_or("the draft's base policy is not a JSON object")?;
        for (i, item) in self.items.iter().enumerate() {
            if item.choice != Choice::Accepted || Some(i) == except {
                continue;
            }
            let tools = root
                .entry("tools")
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(tools) = tools else {
                return Err("the base policy's tools is not an object".into());
            };
            match (&item.proposal.kind, &item.rule) {
                (ProposalKind::Remove, _) => {
                    // Shift, not swap: the other rules keep their order.
                    tools.shift_remove(&item.proposal.tool);
                }
                (_, Some(rule)) => {
                    if item.key != item.proposal.tool {
                        tools.shift_remove(&item.proposal.tool);
                    }
                    tools.insert(item.key.clone(), rule.clone());
                }
                (_, None) => {}
            }
        }
        Ok((old, doc))
    }

    /// The result as text: the base's text with only the changed values rewritten.
    fn result_text(&self, except: Option<usize>) -> Result<String, String> {
        let (old, new) = self.result_doc(except)?;
        Ok(match super::splice::splice(&self.base, &old, &new) {
            Some(text) => text,
            None => {
                let mut text = serde_json::to_string_pretty(&new)
                    .map_err(|e| format!("cannot write the policy as JSON: {e}"))?;
                text.push('\n');
                text
            }
        })
    }

    /// The policy the choices so far make, without item `except`, as a console draft of
    /// the target (what the rule editor validates an edited rule against).
    pub(crate) fn check_draft(&self, except: usize) -> Result<super::draft::Draft, String> {
        let text = self.result_text(Some(except))?;
        Ok(super::draft::Draft::load(&self.target, text))
    }

    /// The policy the choices make, and the replay of the recorded calls under it.
    pub fn outcome_now(&self) -> Outcome {
        let text = match self.result_text(None) {
            Ok(t) => t,
            Err(e) => {
                return Outcome {
                    text: Err(vec![terminal_string(e)]),
                    whatif: WhatIf::default(),
                    refused: Vec::new(),
                    held: 0,
                    widened_over: Vec::new(),
                };
            }
        };
        let policy = match Policy::parse(&text, &self.target) {
            Ok(p) => p,
            Err(d) => {
                return Outcome {
                    text: Err(d
                        .0
                        .iter()
                        .map(|d| terminal_text(&d.to_string()).into_owned())
                        .collect()),
                    whatif: WhatIf::default(),
                    refused: Vec::new(),
                    held: 0,
                    widened_over: Vec::new(),
                };
            }
        };
        let widened_over = self.widened_over(&policy);
        let allow_all = Policy::parse(r#"{"version":"1","default":"allow"}"#, "allow-all").ok();
        let whatif = whatif::replay(
            allow_all.as_ref(),
            &policy,
            self.observations.iter().map(|c| (self.time_of(c), c)),
        );
        let mut refused = Vec::new();
        let mut held = 0;
        for c in &whatif.changed {
            match c.after {
                Verdict::Hold => held += 1,
                Verdict::Deny | Verdict::RateLimited => {
                    let n = c
                        .call_id
                        .strip_prefix("observation-")
                        .and_then(|n| n.parse::<usize>().ok());
                    let call = n.and_then(|n| self.observations.get(n));
                    let redacted = n.and_then(|n| self.redacted.get(n)).copied() == Some(true);
                    refused.push(Refused {
                        at: c.ts,
                        tool: terminal_text(&c.tool).into_owned(),
                        grant: terminal_text(&c.grant).into_owned(),
                        verdict: c.after,
                        cause: match self.cause(&c.tool, redacted) {
                            Cause::Proposal | Cause::Unproposed
                                if matches!(c.decided, Verdict::Deny | Verdict::RateLimited) =>
                            {
                                Cause::RefusedThen
                            }
                            cause => cause,
                        },
                        args: call
                            .and_then(|c| crate::sanitize::json(&c.args).ok())
                            .unwrap_or_default(),
                    });
                }
                Verdict::Allow => {}
            }
        }
        Outcome {
            text: Ok(text),
            whatif,
            refused,
            held,
            widened_over,
        }
    }

    /// The tools not accepted that a glob made by widening decides in `policy` (the policy
    /// module says which rule decides each).
    fn widened_over(&self, policy: &Policy) -> Vec<String> {
        let globs: Vec<&str> = self
            .items
            .iter()
            .filter(|i| i.choice == Choice::Accepted && i.widened && i.key != i.proposal.tool)
            .map(|i| i.key.as_str())
            .collect();
        let mut out = Vec::new();
        for item in &self.items {
            if item.choice == Choice::Accepted || item.proposal.kind == ProposalKind::Remove {
                continue;
            }
            if let RuleMatch::Glob { pattern, .. } = policy.rule_match(&item.proposal.tool)
                && globs.contains(&pattern.as_str())
            {
                let choice = if item.choice == Choice::Rejected {
                    "rejected"
                } else {
                    "did not accept"
                };
                out.push(format!(
                    "{} (widened) also decides {}, whose proposal you {choice}: its calls get the glob's rule",
                    terminal_text(&pattern),
                    item.shown.tool
                ));
            }
        }
        out
    }

    fn time_of(&self, call: &CallEvent) -> DateTime<Utc> {
        // The observation's time travels in its index (call events carry none).
        call.call_id
            .strip_prefix("observation-")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| self.times.get(n).copied())
            .unwrap_or_default()
    }

    fn cause(&self, tool: &str, redacted: bool) -> Cause {
        let Some(item) = self.items.iter().find(|i| i.proposal.tool == tool) else {
            return if redacted {
                Cause::Redacted
            } else {
                Cause::Unproposed
            };
        };
        match item.choice {
            Choice::Rejected => Cause::Rejected,
            Choice::Skipped | Choice::Open => Cause::Skipped,
            Choice::Accepted if item.edited || item.widened => Cause::Edited,
            Choice::Accepted if redacted => Cause::Redacted,
            Choice::Accepted if item.proposal.kind == ProposalKind::Remove => Cause::Removed,
            Choice::Accepted => Cause::Proposal,
        }
    }

    /// The `args.…` paths seen in the recorded calls of `tool` (for the editor's `C-p`).
    pub fn observed_paths(&self, tool: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in self.observations.iter().filter(|c| c.tool == tool) {
            if let Some(m) = c.args.tree().as_object() {
                for k in m.keys() {
                    let p = format!("args.{k}");
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_name_widens_to_its_prefix_up_to_the_last_separator() {
        assert_eq!(widen_name("notes_read").as_deref(), Some("notes_*"));
        assert_eq!(widen_name("fs.read-file").as_deref(), Some("fs.read-*"));
        assert_eq!(widen_name("echo"), None, "no prefix to keep");
        assert_eq!(widen_name("_x"), None, "nothing before the separator");
        assert_eq!(widen_name("notes_*"), None, "already a glob");
    }

    #[test]
    fn ranges_widen_outwards_in_require_and_in_deny_if() {
        let mut rule = json!({
            "require": [
                { "path": "args.n", "op": "lte", "value": 100 },
                { "path": "args.n", "op": "gte", "value": 10 },
                { "path": "args.x", "op": "gt", "value": -3 },
                { "path": "args.t", "op": "in", "value": [1, 2] }
            ],
            "deny_if": [ { "path": "args.size", "op": "gt", "value": 2.5 } ]
        });
        assert!(widen_ranges(&mut rule));
        assert_eq!(rule["require"][0]["value"], 200);
        assert_eq!(rule["require"][1]["value"], 5);
        assert_eq!(rule["require"][2]["value"], -6);
        assert_eq!(
            rule["require"][3]["value"],
            json!([1, 2]),
            "a set is not a range"
        );
        assert_eq!(rule["deny_if"][0]["value"], 5.0);
        let mut none =
            json!({ "require": [ { "path": "args.p", "op": "under", "value": "/srv" } ] });
        assert!(!widen_ranges(&mut none));
    }
}
