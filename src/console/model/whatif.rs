//! What-if: what a draft policy would have decided for the calls the console remembers.
//!
//! The draft re-decides each recent call, in time order, with [`Policy::decide`] and a
//! scratch [`MemoryStore`] (so limits fill up as they would have). So does the policy in the
//! file, the same way, and a call counts as changed when the two replays differ: that
//! isolates what the draft changes from what a replay cannot know (counters that had
//! history before the console connected, secrets redacted from the arguments it holds).
//! What the gateways decided at the time is kept beside each change. Without a valid file
//! policy, the draft is compared with what was decided. The policy module stays the only
//! interpreter of a policy; this module only replays and compares.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::policy::{Call, MemoryStore, Policy, Verdict};
use crate::wire::CallEvent;

/// How many of the most recent calls are replayed.
pub(crate) const REPLAYED: usize = 10_000;

/// One call whose verdict would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub call_id: String,
    pub ts: DateTime<Utc>,
    pub tool: String,
    pub grant: String,
    /// What the gateway decided at the time.
    pub decided: Verdict,
    /// What the file's policy decides in the replay.
    pub before: Verdict,
    pub after: Verdict,
    /// The draft's rule that would decide it.
    pub rule: String,
}

/// The result of a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WhatIf {
    /// How many calls were replayed.
    pub replayed: usize,
    /// The calls decided differently, in time order.
    pub changed: Vec<Changed>,
    /// Calls the draft's shadow rules would have decided otherwise (reported by the gateway
    /// once written, not enforced).
    pub shadowed: usize,
}

/// A verdict as the summary says it.
pub(crate) fn verdict_words(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allowed",
        Verdict::Deny => "denied",
        Verdict::RateLimited => "rate limited",
        Verdict::Hold => "held",
    }
}

impl WhatIf {
    /// One line per kind of change, most calls first, e.g.
    /// `12 calls allowed before would now be rate limited`.
    pub fn summary(&self) -> Vec<String> {
        let mut by: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for c in &self.changed {
            *by.entry((verdict_words(c.before), verdict_words(c.after)))
                .or_default() += 1;
        }
        let mut lines: Vec<(usize, String)> = by
            .into_iter()
            .map(|((b, a), n)| {
                let calls = if n == 1 { "call" } else { "calls" };
                (n, format!("{n} {calls} {b} before would now be {a}"))
            })
            .collect();
        lines.sort_by_key(|l| std::cmp::Reverse(l.0));
        let mut out: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
        if self.shadowed > 0 {
            let n = self.shadowed;
            out.push(format!(
                "{n} {} would be decided otherwise by shadow rules (reported, not enforced)",
                if n == 1 { "call" } else { "calls" }
            ));
        }
        out
    }
}

/// Re-decides `calls` (each with the time it was decided) with `draft`, and with `file`
/// (the policy in the file) when there is one.
pub(crate) fn replay<'a>(
    file: Option<&Policy>,
    draft: &Policy,
    calls: impl IntoIterator<Item = (DateTime<Utc>, &'a CallEvent)>,
) -> WhatIf {
    let mut calls: Vec<(DateTime<Utc>, &CallEvent)> = calls.into_iter().collect();
    if calls.len() > REPLAYED {
        calls.drain(..calls.len() - REPLAYED);
    }
    // Stable: calls decided in the same millisecond keep the order they arrived in.
    calls.sort_by_key(|(ts, _)| *ts);
    let store = MemoryStore::new();
    let file_store = MemoryStore::new();
    let mut out = WhatIf {
        replayed: calls.len(),
        changed: Vec::new(),
        shadowed: 0,
    };
    for (ts, call) in calls {
        let now_ms = u64::try_from(ts.timestamp_millis()).unwrap_or(0);
        let args = call.args.tree();
        let c = Call {
            tool: &call.tool,
            args: &*args,
            grant: &call.grant,
            session: &call.session,
        };
        let d = draft.decide(&c, &store, now_ms);
        out.shadowed += usize::from(d.shadow.is_some());
        let before = file.map_or(call.decision, |f| f.decide(&c, &file_store, now_ms).verdict);
        if d.verdict != before {
            out.changed.push(Changed {
                call_id: call.call_id.to_string(),
                ts,
                tool: call.tool.to_string(),
                grant: call.grant.to_string(),
                decided: call.decision,
                before,
                after: d.verdict,
                rule: d.rule.into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(n: u32, tool: &str, decision: Verdict) -> CallEvent {
        CallEvent {
            call_id: format!("c{n}").into(),
            tool: tool.into(),
            grant: "ci".into(),
            session: "s".into(),
            server: "srv".into(),
            decision,
            rule: Default::default(),
            reason: Default::default(),
            args: serde_json::json!({}).into(),
            args_truncated: false,
            retry_after_ms: None,
            hold_deadline: None,
            shadow: None,
        }
    }

    #[test]
    fn only_what_the_draft_changes_counts_not_what_the_replay_cannot_know() {
        let file = Policy::parse(
            r#"{"version":"1","default":"allow","tools":{"echo":{"rate_limit":{"max":1,"window":"minute"}}}}"#,
            "p",
        )
        .unwrap();
        let draft = Policy::parse(
            r#"{"version":"1","default":"allow","tools":{"echo":{"rate_limit":{"max":1,"window":"minute"}},"add":{"action":"deny"}}}"#,
            "p",
        )
        .unwrap();
        let t0: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
        // The gateway had counted echo before: it rate limited the first call we saw.
        let calls = [
            call(1, "echo", Verdict::RateLimited),
            call(2, "add", Verdict::Allow),
        ];
        let w = replay(Some(&file), &draft, calls.iter().map(|c| (t0, c)));
        let ids: Vec<&str> = w.changed.iter().map(|c| c.call_id.as_str()).collect();
        assert_eq!(ids, ["c2"]);
        assert_eq!(w.summary(), ["1 call allowed before would now be denied"]);
    }

    #[test]
    fn a_shadow_rule_changes_no_verdict_but_counts_the_calls_it_would_change() {
        let file = Policy::parse(r#"{"version":"1","default":"allow"}"#, "p").unwrap();
        let draft = Policy::parse(
            r#"{"version":"1","default":"allow","tools":{"echo":{"shadow":true,"action":"deny"}}}"#,
            "p",
        )
        .unwrap();
        let t0: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
        let calls = [
            call(1, "echo", Verdict::Allow),
            call(2, "add", Verdict::Allow),
            call(3, "echo", Verdict::Allow),
        ];
        let w = replay(Some(&file), &draft, calls.iter().map(|c| (t0, c)));
        assert!(w.changed.is_empty(), "{w:?}");
        assert_eq!(w.shadowed, 2);
        assert_eq!(
            w.summary(),
            ["2 calls would be decided otherwise by shadow rules (reported, not enforced)"]
        );
        // Promoted, the same calls are denied.
        let promoted = Policy::parse(
            r#"{"version":"1","default":"allow","tools":{"echo":{"action":"deny"}}}"#,
            "p",
        )
        .unwrap();
        let w = replay(Some(&draft), &promoted, calls.iter().map(|c| (t0, c)));
        assert_eq!(w.changed.len(), 2);
        assert_eq!(w.shadowed, 0);
    }

    #[test]
    fn a_tighter_limit_rate_limits_the_calls_past_it_in_time_order() {
        let p = Policy::parse(
            r#"{"version":"1","default":"allow","tools":{"echo":{"rate_limit":{"max":2,"window":"minute"}}}}"#,
            "p",
        )
        .unwrap();
        let t0: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
        let calls: Vec<CallEvent> = (0..5).map(|n| call(n, "echo", Verdict::Allow)).collect();
        // Given newest first: the replay still counts them oldest first.
        let w = replay(
            None,
            &p,
            calls
                .iter()
                .rev()
                .enumerate()
                .map(|(i, c)| (t0 - chrono::TimeDelta::seconds(i as i64), c)),
        );
        assert_eq!(w.replayed, 5);
        let ids: Vec<&str> = w.changed.iter().map(|c| c.call_id.as_str()).collect();
        assert_eq!(ids, ["c2", "c3", "c4"]);
        assert_eq!(
            w.summary(),
            ["3 calls allowed before would now be rate limited"]
        );
    }
}
