//! A call the operator saw, as a `toolgate test` case (`console --cases FILE`, key `T`).
//!
//! The case is the call with the decision it got (`expect`: decision and rule), in the format
//! of `docs/policy-tests.md`. What the console only has redacted or cut is not guessed: each
//! such argument becomes a [`FILL_IN`] placeholder that `toolgate check` and `toolgate test`
//! refuse until a person writes the value, and the case's `note` lists where they are.
//!
//! A rate-limited or held call depends on the calls before it. The case then carries, as
//! `calls`, the earlier calls the console remembers that counted against the same budgets
//! within the longest of their windows, found by asking the policy (`Policy::judge`) which
//! budgets each call takes, so shared counters and `all_tools` limits are followed too. The
//! policy is the file as the console loaded it (the Policy view's base); without one, the
//! case has only the call, and its note says so. Times become whole seconds from the first
//! call, as case files write them.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::State;
use super::history::CallRow;
use crate::policy::cases::FILL_IN;
use crate::policy::{Call, Judgement, Policy, Verdict};
use crate::redact::REDACTED;

/// A case made from a call, ready to be appended to the case file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewCase {
    /// Unique per call: it names the call id.
    pub(crate) name: String,
    /// The case object, keys in the order the format documents them.
    pub(crate) case: Value,
    /// How many placeholders a person must fill in.
    pub(crate) fill_in: usize,
}

/// One call of the case, before times are made relative and repeats are folded.
struct Step<'r> {
    row: &'r CallRow,
    args: Value,
}

/// The case for the call at history position `pos`.
pub(crate) fn case_for(state: &State, pos: u64) -> Result<NewCase, String> {
    let row = state
        .history
        .get(pos)
        .ok_or("that call is no longer in the console's history")?;
    let c = &row.call;
    // Names are sanitised on arrival: one with control characters is shown escaped, and a
    // case written with the escaped form would be about another tool (or grant, or session).
    if [&c.tool, &c.grant, &c.session]
        .iter()
        .any(|s| s.contains('\\'))
    {
        return Err(
            "its tool, grant or session has control characters; write this case by hand".into(),
        );
    }
    let mut holes: Vec<String> = Vec::new();
    let policy = state
        .authoring
        .draft
        .as_ref()
        .map(|d| Policy::parse(&d.base, &d.path));
    let mut earlier_note = None;
    let mut steps: Vec<Step<'_>> = Vec::new();
    if matches!(c.decision, Verdict::RateLimited | Verdict::Hold) {
        match &policy {
            Some(Ok(policy)) => {
                let (rows, window_ms) = earlier_calls(state, policy, pos, row);
                if window_ms > 0 {
                    earlier_note = Some(format!(
                        "The calls before it are the {} this console saw within {} s before it that counted against the same budgets (with its grant and session); calls it did not see are not included.",
                        rows.len(),
                        window_ms / 1000
                    ));
                }
                steps.extend(rows.into_iter().map(|r| Step {
                    row: r,
                    args: Value::Null,
                }));
            }
            Some(Err(_)) => {
                earlier_note = Some(
                    "The policy file the console loaded is invalid, so the calls before this one are not included.".to_string(),
                )
            }
            None => {
                earlier_note = Some(
                    "The console had no policy file loaded, so the calls before this one are not included.".to_string(),
                )
            }
        }
    }
    steps.push(Step {
        row,
        args: Value::Null,
    });
    let several = steps.len() > 1;
    for (i, step) in steps.iter_mut().enumerate() {
        let at = if several {
            format!("/calls/{i}/args")
        } else {
            "/call/args".to_string()
        };
        step.args = case_args(step.row, &at, &mut holes);
    }
    let first_ts = steps.first().map_or(row.ts, |s| s.row.ts);
    let mut calls: Vec<(Map<String, Value>, u64)> = Vec::new();
    for step in &steps {
        let at = whole_seconds(first_ts, step.row.ts);
        let mut call = Map::new();
        call.insert("tool".into(), json!(step.row.call.tool));
        call.insert("args".into(), step.args.clone());
        call.insert("grant".into(), json!(step.row.call.grant));
        call.insert("session".into(), json!(step.row.call.session));
        if at > 0 {
            call.insert("at".into(), json!(at));
        }
        // The same call at the same second is one entry with `repeat`.
        match calls.last_mut() {
            Some((last, n)) if *last == call => *n += 1,
            _ => calls.push((call, 1)),
        }
    }
    let calls: Vec<Value> = calls
        .into_iter()
        .map(|(mut call, n)| {
            if n > 1 {
                call.insert("repeat".into(), json!(n));
            }
            Value::Object(call)
        })
        .collect();
    let name = format!(
        "{} by {} is {} ({})",
        c.tool,
        c.grant,
        verdict_word(c.decision),
        c.call_id
    );
    let mut note = format!(
        "Written by toolgate console from call {} of gateway {} at {}: {} by {}{}.",
        c.call_id,
        state.gateway_label(row.conn),
        row.ts.to_rfc3339_opts(SecondsFormat::Millis, true),
        verdict_word(c.decision),
        c.rule,
        if c.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", c.reason)
        }
    );
    if let Some(e) = earlier_note {
        note.push(' ');
        note.push_str(&e);
    }
    if !holes.is_empty() {
        note.push_str(&format!(
            " To fill in before it runs ({} redacted or cut by the gateway): {}.",
            holes.len(),
            holes.join(", ")
        ));
    }
    let mut case = Map::new();
    case.insert("name".into(), json!(name));
    case.insert("note".into(), json!(note));
    if let [one] = calls.as_slice() {
        case.insert("call".into(), one.clone());
    } else {
        case.insert("calls".into(), Value::Array(calls));
    }
    case.insert(
        "expect".into(),
        json!({"decision": verdict_word(c.decision), "rule": c.rule}),
    );
    Ok(NewCase {
        name,
        case: Value::Object(case),
        fill_in: holes.len(),
    })
}

/// The calls before `row` (at `pos`) that took units of a budget `row` asks for, oldest
/// first, and the longest window among those budgets (0 when the call has no limits).
fn earlier_calls<'s>(
    state: &'s State,
    policy: &Policy,
    pos: u64,
    row: &CallRow,
) -> (Vec<&'s CallRow>, u64) {
    let budgets = budgets_of(policy, row);
    let Some(window_ms) = budgets.iter().map(|(_, _, w)| *w).max() else {
        return (Vec::new(), 0);
    };
    // Windows are at most days long (the policy's validation); a longer one reaches back to
    // the oldest call remembered.
    let since = chrono::TimeDelta::try_milliseconds(i64::try_from(window_ms).unwrap_or(i64::MAX))
        .and_then(|w| row.ts.checked_sub_signed(w))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut rows: Vec<&CallRow> = state
        .history
        .iter()
        .filter(|(p, r)| *p < pos && r.ts > since && r.ts <= row.ts)
        .map(|(_, r)| r)
        .filter(|r| took_units(r))
        .filter(|r| {
            budgets_of(policy, r)
                .iter()
                .any(|(counter, key, _)| budgets.iter().any(|(c, k, _)| c == counter && k == key))
        })
        .collect();
    rows.sort_by_key(|r| r.ts);
    (rows, window_ms)
}

/// Whether a call kept the units it was admitted with: allowed, or held and not refused.
fn took_units(r: &CallRow) -> bool {
    match r.call.decision {
        Verdict::Allow => true,
        Verdict::Hold => r.resolution.as_ref().is_none_or(|res| res.approved),
        Verdict::Deny | Verdict::RateLimited => false,
    }
}

/// The budgets (counter, scope key, window) a call asks the store for, by the policy.
fn budgets_of(policy: &Policy, r: &CallRow) -> Vec<(String, String, u64)> {
    let args = r.args_value();
    let call = Call {
        tool: &r.call.tool,
        args: &args,
        grant: &r.call.grant,
        session: &r.call.session,
    };
    match policy.judge(&call) {
        Judgement::Admit(a) => a
            .limits()
            .iter()
            .map(|l| (l.counter.to_string(), l.scope_key.to_string(), l.window_ms))
            .collect(),
        Judgement::Decided(_) => Vec::new(),
    }
}

/// The arguments for the case: redacted values and cut arguments become placeholders, each
/// recorded in `holes` by its pointer in the case.
fn case_args(row: &CallRow, at: &str, holes: &mut Vec<String>) -> Value {
    let args = row.args_value();
    if row.call.args_truncated {
        let start = args.as_str().unwrap_or_default();
        holes.push(at.to_string());
        let mut cut = Map::new();
        cut.insert(
            format!("{FILL_IN}: the arguments"),
            json!(format!(
                "the gateway sent only the start of these arguments; write them all here. The start: {start}"
            )),
        );
        return Value::Object(cut);
    }
    let mut args = match args {
        Value::Object(_) => args,
        // Not an object (a broken gateway): the case needs an object.
        _ => {
            holes.push(at.to_string());
            let mut map = Map::new();
            map.insert(
                format!("{FILL_IN}: the arguments"),
                json!("the gateway sent arguments that are not an object; write them here"),
            );
            return Value::Object(map);
        }
    };
    mark_redacted(&mut args, &mut at.to_string(), holes);
    args
}

fn mark_redacted(value: &mut Value, pointer: &mut String, holes: &mut Vec<String>) {
    match value {
        Value::String(s) if s.contains(REDACTED) => {
            holes.push(pointer.clone());
            *s = format!("{FILL_IN}: redacted by the gateway (it read {s:?})");
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                mark_redacted(item, pointer, holes);
                pointer.truncate(len);
            }
        }
        Value::Object(members) => {
            for (k, v) in members.iter_mut() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                mark_redacted(v, pointer, holes);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

/// Whole seconds from `first` to `ts` (never negative).
fn whole_seconds(first: DateTime<Utc>, ts: DateTime<Utc>) -> u64 {
    u64::try_from((ts - first).num_seconds()).unwrap_or(0)
}

fn verdict_word(v: Verdict) -> &'static str {
    v.as_str()
}
