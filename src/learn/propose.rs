//! From observations to a least-privilege policy: pure functions over plain data.
//!
//! [`propose`] groups the calls by tool and, for each, proposes a rule that allows what was
//! seen and little more:
//! - one `scope: grant` limit a margin above the highest per-grant rolling peak (the window
//!   picked from the traffic: a minute, or an hour for steady traffic over hours);
//! - per argument path: `in` for a small set of values (at most [`MAX_SET`] distinct
//!   strings or booleans), `gte`/`lte` around the numbers seen (with a margin), `under` the
//!   longest common directory of absolute paths, `exists` for keys present in every call.
//!   Keys present in every call are checked in `require`; the others in `deny_if` by the
//!   negated op (`not_in`, `lt`, `gt`), so that a call without them still passes;
//! - `require_approval` for a tool `scan` classes as destructive, unless a person approved
//!   every observed call of it.
//!
//! Every rule's `reason` says what evidence made it. With a base policy (`--against`),
//! [`against`] proposes changes to it instead: a rule looser than the traffic needs is
//! tightened, a tool allowed but never called is removed. [`what_if`] re-decides the
//! recorded calls against a policy through [`Policy::decide`] (the path `explain`, `toolgate
//! test` and the console's what-if take), on a scratch counter store and the calls' own
//! times.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::{Draft, Observation, Proposal, ProposalKind, marked_type};
use crate::policy::{Call, MemoryStore, Policy, Verdict};
use crate::scan::RiskClass;

/// The most distinct values an `in` lists.
pub(crate) const MAX_SET: usize = 32;
/// The policy a draft starts from when there is no `--against`.
pub(crate) const FRESH_BASE: &str = "{\"version\": \"1\", \"default\": \"deny\", \"tools\": {}}";
/// The grant of an observation that has none (as `wrap` names calls by default).
const NO_GRANT: &str = "default";

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// Proposes a rule per observed tool ([`ProposalKind::Add`]), in tool-name order, over a
/// fresh `default: deny` base. `class` says how `scan` classes a tool.
pub(crate) fn propose(observations: &[Observation], class: &dyn Fn(&str) -> RiskClass) -> Draft {
    let proposals = by_tool(observations)
        .into_iter()
        .map(|(tool, calls)| {
            let learned = learn_rule(tool, &calls, class(tool));
            Proposal {
                kind: ProposalKind::Add,
                tool: tool.to_owned(),
                rule: Some(learned.rule),
                current: None,
                reason: learned.reason,
                evidence: learned.evidence,
            }
        })
        .collect();
    Draft {
        proposals,
        base: FRESH_BASE.to_owned(),
        observations: observations.to_vec(),
    }
}

/// `--against`: proposals that change `base` (a valid policy's text) to what the traffic
/// needs. A tool with an exact rule is tightened when that rule is looser than the learned
/// one (no limit, or a higher `max`; fewer conditions; allowed where approval is proposed),
/// a rule that denies is left alone, an observed tool without an exact rule is added, and a
/// tool the base allows by an exact rule that no call used is proposed for removal.
pub(crate) fn against(
    base: &str,
    observations: &[Observation],
    class: &dyn Fn(&str) -> RiskClass,
) -> Result<Draft, String> {
    let doc: Value =
        serde_json::from_str(base).map_err(|e| format!("the base policy is not JSON: {e}"))?;
    let empty = Map::new();
    let tools = doc
        .get("tools")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let observed = by_tool(observations);
    let mut proposals = Vec::new();
    for (tool, calls) in &observed {
        let mut learned = learn_rule(tool, calls, class(tool));
        let current = tools.get(*tool);
        // Tightening never loosens: a tool a person approves stays so.
        if current.is_some_and(|rule| rule_action(rule) == "require_approval")
            && let Some(rule) = learned.rule.as_object_mut()
            && rule.get("action") != Some(&json!("require_approval"))
        {
            rule.insert("action".into(), json!("require_approval"));
            learned
                .evidence
                .push("the policy holds it for a person: kept".to_owned());
        }
        let kind = match current {
            None => ProposalKind::Add,
            Some(rule) if rule_action(rule) == "deny" => continue,
            Some(rule) if looser(rule, &learned.rule) => ProposalKind::Tighten,
            Some(_) => continue,
        };
        proposals.push(Proposal {
            kind,
            tool: (*tool).to_owned(),
            rule: Some(learned.rule),
            current: current.cloned(),
            reason: learned.reason,
            evidence: learned.evidence,
        });
    }
    for (tool, rule) in tools {
        let is_glob = tool.contains('*') || tool.contains('?');
        if observed.contains_key(tool.as_str()) || is_glob || rule_action(rule) == "deny" {
            continue;
        }
        if rule.get("shadow").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let reason = format!("no call of {tool} in the observed traffic: allowed but never used");
        proposals.push(Proposal {
            kind: ProposalKind::Remove,
            tool: tool.clone(),
            rule: None,
            current: Some(rule.clone()),
            reason: reason.clone(),
            evidence: vec![reason],
        });
    }
    proposals.sort_by(|a, b| a.tool.cmp(&b.tool));
    Ok(Draft {
        proposals,
        base: base.to_owned(),
        observations: observations.to_vec(),
    })
}

impl Draft {
    /// The policy the draft writes when every proposal is accepted: the base with each
    /// proposal's rule set (or, for a removal, its tool taken out), pretty-printed.
    pub(crate) fn policy_text(&self) -> Result<String, String> {
        let mut doc: Value = serde_json::from_str(&self.base)
            .map_err(|e| format!("the base policy is not JSON: {e}"))?;
        let Some(top) = doc.as_object_mut() else {
            return Err("the base policy is not a JSON object".into());
        };
        let tools = top
            .entry("tools")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(tools) = tools.as_object_mut() else {
            return Err("the base policy's `tools` is not an object".into());
        };
        for p in &self.proposals {
            match (&p.kind, &p.rule) {
                (ProposalKind::Remove, _) | (_, None) => {
                    tools.shift_remove(&p.tool);
                }
                (_, Some(rule)) => {
                    tools.insert(p.tool.clone(), rule.clone());
                }
            }
        }
        // Names and values came from agents: escaped in the JSON (same meaning), so the file
        // shows nothing a terminal would interpret when printed.
        crate::sanitize::json_pretty(&doc)
            .map(|mut text| {
                text.push('\n');
                text
            })
            .map_err(|e| e.to_string())
    }
}

/// The recorded calls `policy` would refuse (denied or rate limited), re-decided in time
/// order through [`Policy::decide`] on a fresh counter store, each at its own time and
/// under its own grant; with how many calls were re-decided.
pub(crate) fn what_if(policy: &Policy, observations: &[Observation]) -> WhatIf {
    let store = MemoryStore::new();
    let mut order: Vec<&Observation> = observations.iter().collect();
    order.sort_by_key(|o| o.at);
    let mut refused = Vec::new();
    for o in &order {
        let call = Call {
            tool: &o.tool,
            args: &o.args,
            grant: o.grant.as_deref().unwrap_or(NO_GRANT),
            session: "learn",
        };
        let now_ms = u64::try_from(o.at.timestamp_millis()).unwrap_or(0);
        let decision = policy.decide(&call, &store, now_ms);
        if matches!(decision.verdict, Verdict::Deny | Verdict::RateLimited) {
            refused.push(Refused {
                observation: (*o).clone(),
                rule: decision.rule.into(),
                reason: decision.reason.into(),
            });
        }
    }
    WhatIf {
        total: order.len(),
        refused,
    }
}

/// What [`what_if`] found.
#[derive(Debug, Clone)]
pub(crate) struct WhatIf {
    pub(crate) total: usize,
    pub(crate) refused: Vec<Refused>,
}

/// A recorded call the policy would refuse, and why.
#[derive(Debug, Clone)]
pub(crate) struct Refused {
    pub(crate) observation: Observation,
    pub(crate) rule: String,
    pub(crate) reason: String,
}

/// Whether a policy can name `tool` by a key: a key with `*` or `?` is a glob (there is no
/// escaping), so a rule for a tool named `*` would decide every tool. Such tools are never
/// proposed; their calls stay with the default.
pub(crate) fn nameable(tool: &str) -> bool {
    !tool.contains(['*', '?'])
}

/// The calls grouped by tool name, tools in name order, calls in the order given; tools a
/// key cannot name ([`nameable`]) are left out.
fn by_tool(observations: &[Observation]) -> BTreeMap<&str, Vec<&Observation>> {
    let mut tools: BTreeMap<&str, Vec<&Observation>> = BTreeMap::new();
    for o in observations.iter().filter(|o| nameable(&o.tool)) {
        tools.entry(o.tool.as_str()).or_default().push(o);
    }
    tools
}

fn rule_action(rule: &Value) -> &str {
    rule.get("action")
        .and_then(Value::as_str)
        .unwrap_or("allow")
}

/// Whether `current` lets through more than `learned` would: no limit where one is
/// learned, a higher `max` (or a longer window), fewer conditions, or allowed where approval
/// is learned.
fn looser(current: &Value, learned: &Value) -> bool {
    let conditions = |rule: &Value| {
        ["require", "deny_if"]
            .iter()
            .map(|k| rule.get(*k).and_then(Value::as_array).map_or(0, Vec::len))
            .sum::<usize>()
    };
    let limit = |rule: &Value| -> Option<(u64, String)> {
        let first = rule
            .get("limits")
            .and_then(Value::as_array)
            .and_then(|l| l.first())
            .or_else(|| rule.get("rate_limit"))?;
        Some((
            first.get("max")?.as_u64()?,
            first.get("window")?.to_string(),
        ))
    };
    let approval = |rule: &Value| rule_action(rule) == "require_approval";
    let limit_looser = match (limit(current), limit(learned)) {
        (None, Some(_)) => true,
        (Some((cur_max, cur_window)), Some((max, window))) => cur_max > max || cur_window != window,
        _ => false,
    };
    limit_looser
        || conditions(current) < conditions(learned)
        || (approval(learned) && !approval(current))
}

/// A learned rule and what it was learned from.
struct Learned {
    rule: Value,
    reason: String,
    evidence: Vec<String>,
}

fn learn_rule(tool: &str, calls: &[&Observation], class: RiskClass) -> Learned {
    let mut evidence = Vec::new();
    let grants: BTreeSet<&str> = calls
        .iter()
        .map(|o| o.grant.as_deref().unwrap_or(NO_GRANT))
        .collect();
    let first = calls.iter().map(|o| o.at).min().unwrap_or_else(Utc::now);
    let last = calls.iter().map(|o| o.at).max().unwrap_or(first);
    let span = last - first;
    let mut summary = format!(
        "{} call{} from {} grant{} over {}",
        calls.len(),
        plural(calls.len()),
        grants.len(),
        plural(grants.len()),
        human_span(span.num_milliseconds())
    );
    evidence.push(format!(
        "{summary}: first {}, last {}",
        first.format("%Y-%m-%d %H:%M:%S UTC"),
        last.format("%Y-%m-%d %H:%M:%S UTC")
    ));

    // The limit: per grant, the rolling peak.
    let peaks = |window_ms: i64| -> BTreeMap<&str, usize> {
        grants
            .iter()
            .map(|g| {
                let mut times: Vec<i64> = calls
                    .iter()
                    .filter(|o| o.grant.as_deref().unwrap_or(NO_GRANT) == *g)
                    .map(|o| o.at.timestamp_millis())
                    .collect();
                times.sort_unstable();
                (*g, rolling_peak(&times, window_ms))
            })
            .collect()
    };
    let minute = peaks(MINUTE_MS);
    let hour = peaks(HOUR_MS);
    let hour_peak = hour.values().copied().max().unwrap_or(0);
    // Steady traffic over hours is better bounded per hour; bursts and short spans per
    // minute.
    let (window, window_name, chosen) = if span.num_milliseconds() >= 2 * HOUR_MS && hour_peak >= 30
    {
        ("hour", "an hour", hour)
    } else {
        ("minute", "a minute", minute)
    };
    let peak = chosen.values().copied().max().unwrap_or(1).max(1);
    let max = peak + (peak / 2).max(2);
    let per_grant: Vec<String> = chosen.iter().map(|(g, p)| format!("{g} {p}")).collect();
    summary.push_str(&format!(
        "; peak {peak} {window_name} ({})",
        per_grant.join(", ")
    ));
    evidence.push(format!(
        "rolling peak per grant, {window_name}: {}; limit {max} per grant",
        per_grant.join(", ")
    ));

    // The conditions: per argument path.
    let mut paths: BTreeMap<String, PathStats> = BTreeMap::new();
    let mut non_objects = 0usize;
    for o in calls {
        match &o.args {
            Value::Object(map) => collect(map, "args", &mut paths),
            Value::Null => {}
            _ => non_objects += 1,
        }
    }
    let mut require = Vec::new();
    let mut deny_if = Vec::new();
    let mut notes = Vec::new();
    for (path, stats) in &paths {
        let always = stats.present == calls.len();
        let (conditions, note) = conditions_for(path, stats, always);
        if let Some(note) = note {
            evidence.push(format!("{path}: {note}"));
        }
        let constrained = !conditions.is_empty();
        for (op, value) in conditions {
            let condition = json!({"path": path, "op": op, "value": value});
            if always {
                require.push(condition);
            } else {
                deny_if.push(condition);
            }
            if let Some(short) = short_note(path, op, stats) {
                notes.push(short);
            }
        }
        // A key present in every call is required; a value condition in `require` already
        // fails without it.
        if always && !constrained {
            require.push(json!({"path": path, "op": "exists"}));
        }
    }
    if non_objects > 0 {
        evidence.push(format!(
            "{non_objects} call(s) had arguments that are not an object: no argument conditions from them"
        ));
    }
    if !notes.is_empty() {
        summary.push_str("; ");
        summary.push_str(&notes.join("; "));
    }

    let destructive = class == RiskClass::Destructive;
    let all_approved = calls.iter().all(|o| o.approved == Some(true));
    let action = if destructive && !all_approved {
        summary.push_str("; destructive (scan): held for a person");
        evidence.push(format!(
            "scan classes {tool} as destructive and {} of {} calls were approved by a person: require_approval",
            calls.iter().filter(|o| o.approved == Some(true)).count(),
            calls.len()
        ));
        "require_approval"
    } else {
        if destructive {
            evidence.push(format!(
                "scan classes {tool} as destructive, but a person approved every observed call: allow"
            ));
        }
        "allow"
    };

    let mut rule = Map::new();
    rule.insert("action".into(), json!(action));
    rule.insert("reason".into(), json!(summary));
    rule.insert(
        "limits".into(),
        json!([{"counter": tool, "window": window, "max": max, "scope": "grant"}]),
    );
    if !require.is_empty() {
        rule.insert("require".into(), Value::Array(require));
    }
    if !deny_if.is_empty() {
        rule.insert("deny_if".into(), Value::Array(deny_if));
    }
    Learned {
        rule: Value::Object(rule),
        reason: summary,
        evidence,
    }
}

/// The most calls inside any span of `window_ms` (times sorted).
fn rolling_peak(times: &[i64], window_ms: i64) -> usize {
    let mut peak = 0;
    let mut start = 0;
    for (i, t) in times.iter().enumerate() {
        while t - times[start] >= window_ms {
            start += 1;
        }
        peak = peak.max(i - start + 1);
    }
    peak
}

/// What was seen at one argument path.
#[derive(Default)]
struct PathStats {
    /// Calls in which the path was present.
    present: usize,
    types: BTreeSet<&'static str>,
    strings: BTreeSet<String>,
    /// More distinct strings than [`MAX_SET`] were seen (the set stopped growing).
    strings_overflow: bool,
    /// Every string seen is an absolute path that normalises (no climbing above `/`).
    all_absolute: bool,
    /// The longest common directory of the absolute paths seen so far.
    common_dir: Option<Vec<String>>,
    numbers: Option<(f64, f64)>,
    all_integers: bool,
    bools: BTreeSet<bool>,
    array_lengths: Option<(usize, usize)>,
    /// Secret-looking values, recorded as their type only.
    secret_types: BTreeSet<String>,
}

/// Records every path of an arguments object (objects walked into, arrays not).
fn collect(map: &Map<String, Value>, prefix: &str, paths: &mut BTreeMap<String, PathStats>) {
    for (key, value) in map {
        // A key with a dot, or an empty one, cannot be named by a condition's path.
        if key.is_empty() || key.contains('.') {
            continue;
        }
        let path = format!("{prefix}.{key}");
        let stats = paths.entry(path.clone()).or_insert_with(|| PathStats {
            all_absolute: true,
            all_integers: true,
            ..PathStats::default()
        });
        stats.present += 1;
        if let Some(kind) = marked_type(value) {
            stats.types.insert("secret");
            stats.secret_types.insert(kind.to_owned());
            continue;
        }
        stats.types.insert(super::json_type(value));
        match value {
            Value::String(s) => {
                if !stats.strings_overflow {
                    stats.strings.insert(s.clone());
                    if stats.strings.len() > MAX_SET {
                        stats.strings_overflow = true;
                        stats.strings.clear();
                    }
                }
                match normalise(s) {
                    Some(segments) if stats.all_absolute => {
                        let common = match stats.common_dir.take() {
                            None => segments,
                            Some(common) => common
                                .into_iter()
                                .zip(segments)
                                .take_while(|(a, b)| a == b)
                                .map(|(a, _)| a)
                                .collect(),
                        };
                        stats.common_dir = Some(common);
                    }
                    _ => stats.all_absolute = false,
                }
            }
            Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    stats.all_integers &= n.is_i64() || n.is_u64();
                    stats.numbers = Some(match stats.numbers {
                        None => (x, x),
                        Some((lo, hi)) => (lo.min(x), hi.max(x)),
                    });
                }
            }
            Value::Bool(b) => {
                stats.bools.insert(*b);
            }
            Value::Array(items) => {
                let n = items.len();
                stats.array_lengths = Some(match stats.array_lengths {
                    None => (n, n),
                    Some((lo, hi)) => (lo.min(n), hi.max(n)),
                });
            }
            Value::Object(inner) => collect(inner, &path, paths),
            Value::Null => {}
        }
    }
}

/// The segments of an absolute path, normalised lexically as the policy's `under` does
/// (`.` and `..` resolved, repeated and trailing slashes removed); `None` for a relative
/// path or one that climbs above `/`.
fn normalise(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    let mut segments: Vec<String> = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            other => segments.push(other.to_owned()),
        }
    }
    Some(segments)
}

/// The value conditions for one path as (op, value) pairs — the `require` form when the
/// path is always present, else the negated `deny_if` form — and a note for the evidence.
fn conditions_for(
    path: &str,
    stats: &PathStats,
    always: bool,
) -> (Vec<(&'static str, Value)>, Option<String>) {
    let only = |t: &str| stats.types.len() == 1 && stats.types.contains(t);
    let presence = if always {
        "in every call".to_owned()
    } else {
        format!("in {} call(s)", stats.present)
    };
    if stats.types.contains("secret") {
        let types: Vec<&str> = stats.secret_types.iter().map(String::as_str).collect();
        return (
            Vec::new(),
            Some(format!(
                "{presence}; recorded as its type only, secret-looking or long ({})",
                types.join(", ")
            )),
        );
    }
    if stats.types.len() > 1 {
        let types: Vec<&str> = stats.types.iter().copied().collect();
        return (
            Vec::new(),
            Some(format!(
                "{presence}; several types ({}): no value condition",
                types.join(", ")
            )),
        );
    }
    if only("string") {
        if let Some(dir) = stats
            .common_dir
            .as_ref()
            .filter(|d| stats.all_absolute && !d.is_empty())
        {
            let dir = format!("/{}", dir.join("/"));
            // There is no negated `under`: an optional path is described, not constrained.
            if always {
                return (
                    vec![("under", json!(dir))],
                    Some(format!("{presence}; absolute paths, all under {dir}")),
                );
            }
            if stats.strings_overflow {
                return (
                    Vec::new(),
                    Some(format!(
                        "{presence}; absolute paths under {dir} (not always present, and too many to list: not constrained)"
                    )),
                );
            }
        }
        if stats.strings_overflow {
            return (
                Vec::new(),
                Some(format!(
                    "{presence}; more than {MAX_SET} distinct strings: no value condition"
                )),
            );
        }
        let values: Vec<Value> = stats.strings.iter().map(|s| json!(s)).collect();
        let n = values.len();
        let shown: Vec<String> = values.iter().take(5).map(Value::to_string).collect();
        let more = if n > 5 { ", ..." } else { "" };
        let op = if always { "in" } else { "not_in" };
        return (
            vec![(op, Value::Array(values))],
            Some(format!(
                "{presence}; {n} distinct string(s): {}{more}",
                shown.join(", ")
            )),
        );
    }
    if only("number")
        && let Some((lo, hi)) = stats.numbers
    {
        let margin = ((hi - lo) / 2.0).max(lo.abs().max(hi.abs()) / 4.0).max(1.0);
        let (mut low, high) = (lo - margin, hi + margin);
        if lo >= 0.0 {
            low = low.max(0.0);
        }
        let (low, high) = if stats.all_integers {
            (json!(low.floor() as i64), json!(high.ceil() as i64))
        } else {
            (json!(low), json!(high))
        };
        let note = Some(format!(
            "{presence}; numbers from {} to {}: allowed from {low} to {high}",
            shown_number(lo),
            shown_number(hi)
        ));
        return if always {
            (vec![("gte", low), ("lte", high)], note)
        } else {
            (vec![("lt", low), ("gt", high)], note)
        };
    }
    if only("boolean") && stats.bools.len() == 1 {
        let values: Vec<Value> = stats.bools.iter().map(|b| json!(b)).collect();
        let op = if always { "in" } else { "not_in" };
        return (
            vec![(op, Value::Array(values))],
            Some(format!(
                "{presence}; always {}",
                stats.bools.iter().next().copied().unwrap_or_default()
            )),
        );
    }
    let note = match (stats.array_lengths, stats.types.iter().next()) {
        (Some((lo, hi)), _) => format!("{presence}; arrays of {lo} to {hi} item(s)"),
        (None, Some(kind)) => format!("{presence}; {kind}"),
        (None, None) => presence,
    };
    let _ = path;
    (Vec::new(), Some(note))
}

/// A few words for the rule's reason about a condition.
fn short_note(path: &str, op: &str, stats: &PathStats) -> Option<String> {
    let key = path.strip_prefix("args.").unwrap_or(path);
    match op {
        "under" => stats
            .common_dir
            .as_ref()
            .map(|d| format!("{key} under /{}", d.join("/"))),
        "in" | "not_in" if stats.strings.len() == 1 => stats
            .strings
            .iter()
            .next()
            .map(|only| format!("{key} always {}", json!(only))),
        "in" | "not_in" if !stats.strings.is_empty() => {
            Some(format!("{key} one of {} values", stats.strings.len()))
        }
        "in" | "not_in" => Some(format!("{key} as seen")),
        "lte" | "gt" => stats
            .numbers
            .map(|(lo, hi)| format!("{key} {} to {}", shown_number(lo), shown_number(hi))),
        _ => None,
    }
}

fn shown_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// "6 days", "3 hours", "12 minutes", "40 seconds", "under a second".
fn human_span(ms: i64) -> String {
    if ms < 1000 {
        return "under a second".to_owned();
    }
    let (n, unit) = if ms >= 2 * 24 * HOUR_MS {
        (ms / (24 * HOUR_MS), "day")
    } else if ms >= HOUR_MS {
        (ms / HOUR_MS, "hour")
    } else if ms >= 2 * MINUTE_MS {
        (ms / MINUTE_MS, "minute")
    } else {
        (ms / 1000, "second")
    };
    let n = usize::try_from(n).unwrap_or(0);
    format!("{n} {unit}{}", plural(n))
}

/// Parses `--since`: a duration back from `now` (`7d`, `12h`, `30m`, `90s`).
pub(crate) fn since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. 7d, 12h, 30m"))?;
    let seconds = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => {
            return Err(format!(
                "`{text}` is not a duration; write e.g. 7d, 12h, 30m"
            ));
        }
    };
    n.checked_mul(seconds)
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| format!("`{text}` is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn call(at_ms: i64, grant: &str, tool: &str, args: Value) -> Observation {
        Observation {
            at: DateTime::from_timestamp_millis(at_ms).unwrap(),
            server: "fs".into(),
            tool: tool.into(),
            grant: Some(grant.into()),
            decision: "allow".into(),
            approved: None,
            args,
        }
    }

    fn read_only(_: &str) -> RiskClass {
        RiskClass::Read
    }

    fn policy_of(draft: &Draft) -> Policy {
        let text = draft.policy_text().unwrap();
        Policy::parse(&text, "draft.json").unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn decide(policy: &Policy, tool: &str, args: Value) -> Verdict {
        let store = MemoryStore::new();
        policy
            .decide(
                &Call {
                    tool,
                    args: &args,
                    grant: "ci",
                    session: "s",
                },
                &store,
                u64::try_from(T0).unwrap(),
            )
            .verdict
    }

    fn traffic() -> Vec<Observation> {
        let mut calls = Vec::new();
        for i in 0..12 {
            calls.push(call(
                T0 + i * 1000,
                "ci",
                "read_file",
                json!({"path": format!("/srv/notes/{i}.md"), "lines": 10 + i}),
            ));
        }
        for i in 0..3 {
            calls.push(call(
                T0 + 3_600_000 + i * 20_000,
                "ops",
                "read_file",
                json!({"path": "/srv/notes/sub/x.md", "lines": 20, "mode": "fast"}),
            ));
        }
        calls.push(call(
            T0 + 5000,
            "ci",
            "delete_file",
            json!({"path": "/srv/notes/old.md"}),
        ));
        calls
    }

    #[test]
    fn the_draft_allows_every_observed_call_and_passes_validation() {
        let calls = traffic();
        let draft = propose(&calls, &read_only);
        let policy = policy_of(&draft);
        let whatif = what_if(&policy, &calls);
        assert_eq!(whatif.total, calls.len());
        assert!(whatif.refused.is_empty(), "{:?}", whatif.refused);
        assert_eq!(policy.default_action(), crate::policy::Action::Deny);
    }

    #[test]
    fn the_draft_refuses_what_was_never_seen() {
        let policy = policy_of(&propose(&traffic(), &read_only));
        let ok = json!({"path": "/srv/notes/a.md", "lines": 12});
        assert_eq!(decide(&policy, "read_file", ok), Verdict::Allow);
        assert_eq!(
            decide(&policy, "write_file", json!({"path": "/srv/notes/a.md"})),
            Verdict::Deny,
            "a tool never used"
        );
        assert_eq!(
            decide(
                &policy,
                "read_file",
                json!({"path": "/etc/passwd", "lines": 12})
            ),
            Verdict::Deny,
            "a path outside the directory"
        );
        assert_eq!(
            decide(
                &policy,
                "read_file",
                json!({"path": "/srv/notes/../../etc/passwd", "lines": 12})
            ),
            Verdict::Deny,
            "a path climbing out"
        );
        assert_eq!(
            decide(
                &policy,
                "read_file",
                json!({"path": "/srv/notes/a.md", "lines": 100000})
            ),
            Verdict::Deny,
            "a number far outside the range"
        );
        assert_eq!(
            decide(
                &policy,
                "read_file",
                json!({"path": "/srv/notes/a.md", "lines": 12, "mode": "slow"})
            ),
            Verdict::Deny,
            "an optional key with a value never seen"
        );
        assert_eq!(
            decide(&policy, "read_file", json!({"lines": 12})),
            Verdict::Deny,
            "a key present in every call missing"
        );
    }

    #[test]
    fn each_rule_gives_its_evidence_with_the_per_grant_peaks() {
        let draft = propose(&traffic(), &read_only);
        let read = draft
            .proposals
            .iter()
            .find(|p| p.tool == "read_file")
            .unwrap();
        assert_eq!(
            read.reason,
            "15 calls from 2 grants over 1 hour; peak 12 a minute (ci 12, ops 3); \
             lines 10 to 21; mode always \"fast\"; path under /srv/notes",
            "{:#?}",
            read
        );
        let rule = read.rule.as_ref().unwrap();
        assert_eq!(rule["reason"], json!(read.reason));
        assert_eq!(
            rule["limits"],
            json!([{"counter": "read_file", "window": "minute", "max": 18, "scope": "grant"}])
        );
    }

    #[test]
    fn a_destructive_tool_is_held_unless_a_person_approved_every_call() {
        let destructive = |t: &str| {
            if t == "delete_file" {
                RiskClass::Destructive
            } else {
                RiskClass::Read
            }
        };
        let mut calls = traffic();
        let draft = propose(&calls, &destructive);
        let delete = draft
            .proposals
            .iter()
            .find(|p| p.tool == "delete_file")
            .unwrap();
        assert_eq!(
            delete.rule.as_ref().unwrap()["action"],
            json!("require_approval")
        );
        for c in &mut calls {
            if c.tool == "delete_file" {
                c.approved = Some(true);
                c.decision = "hold".into();
            }
        }
        let draft = propose(&calls, &destructive);
        let delete = draft
            .proposals
            .iter()
            .find(|p| p.tool == "delete_file")
            .unwrap();
        assert_eq!(delete.rule.as_ref().unwrap()["action"], json!("allow"));
    }

    #[test]
    fn the_rolling_peak_counts_the_busiest_window() {
        assert_eq!(
            rolling_peak(&[0, 10, 20, 59_999, 60_000, 60_010], 60_000),
            4
        );
        assert_eq!(rolling_peak(&[0, 10, 20, 59_999], 60_000), 4);
        assert_eq!(rolling_peak(&[0, 60_000, 120_000], 60_000), 1);
        assert_eq!(rolling_peak(&[], 60_000), 0);
    }

    #[test]
    fn steady_traffic_over_hours_is_limited_per_hour() {
        let calls: Vec<Observation> = (0..200)
            .map(|i| call(T0 + i * 60_000, "ci", "ping", json!({})))
            .collect();
        let draft = propose(&calls, &read_only);
        let rule = draft.proposals[0].rule.as_ref().unwrap();
        assert_eq!(rule["limits"][0]["window"], json!("hour"));
        assert!(what_if(&policy_of(&draft), &calls).refused.is_empty());
    }

    #[test]
    fn against_tightens_loose_rules_and_removes_unused_ones() {
        let base = r#"{"version": "1", "default": "deny", "tools": {
            "read_file": {},
            "write_file": {"action": "allow"},
            "delete_file": {"action": "deny"}
        }}"#;
        let draft = against(base, &traffic(), &read_only).unwrap();
        let kinds: Vec<(&str, ProposalKind)> = draft
            .proposals
            .iter()
            .map(|p| (p.tool.as_str(), p.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("read_file", ProposalKind::Tighten),
                ("write_file", ProposalKind::Remove)
            ]
        );
        let policy = policy_of(&draft);
        assert_eq!(decide(&policy, "write_file", json!({})), Verdict::Deny);
        assert_eq!(
            decide(&policy, "delete_file", json!({"path": "/srv/notes/old.md"})),
            Verdict::Deny,
            "a deny rule is left alone"
        );
    }

    #[test]
    fn against_never_turns_a_held_tool_into_an_allowed_one() {
        let base = r#"{"version": "1", "default": "deny", "tools": {
            "read_file": {"action": "require_approval"}
        }}"#;
        let draft = against(base, &traffic(), &read_only).unwrap();
        let read = draft
            .proposals
            .iter()
            .find(|p| p.tool == "read_file")
            .unwrap();
        assert_eq!(read.kind, ProposalKind::Tighten);
        assert_eq!(
            read.rule.as_ref().unwrap()["action"],
            json!("require_approval")
        );
    }

    #[test]
    fn a_tool_named_like_a_glob_is_never_proposed() {
        let calls = vec![
            call(T0, "ci", "*", json!({})),
            call(T0, "ci", "read?", json!({})),
            call(T0, "ci", "read", json!({})),
        ];
        let draft = propose(&calls, &read_only);
        let tools: Vec<&str> = draft.proposals.iter().map(|p| p.tool.as_str()).collect();
        assert_eq!(tools, ["read"]);
        assert_eq!(
            decide(&policy_of(&draft), "write", json!({})),
            Verdict::Deny
        );
    }

    /// The proposals file is what the console's review reads back (`--review-learned`).
    #[test]
    fn a_draft_written_as_the_proposals_file_reads_back_the_same() {
        let draft = propose(&traffic(), &read_only);
        let text = crate::sanitize::json_pretty(&draft).unwrap();
        let read: Draft = serde_json::from_str(&text).unwrap();
        assert_eq!(read, draft);
    }

    #[test]
    fn since_reads_durations_back_from_now() {
        let now = DateTime::from_timestamp_millis(T0).unwrap();
        assert_eq!(since("7d", now).unwrap(), now - chrono::Duration::days(7));
        assert!(since("7 days", now).is_err());
        assert!(since("", now).is_err());
    }
}
