//! How the model's values read on screen, as text: decision labels, countdowns, latencies,
//! hashes and windows. Pure functions of plain data (no styles: [`DecisionStyle`] names the
//! theme slot and the view picks the colour), shared by the views and by the messages the
//! update writes.

use chrono::{DateTime, Utc};

use super::history::CallRow;
use crate::wire::{HoldResolved, ResolvedBy, Verdict};

/// The first 6 characters of a policy hash, as shown.
pub(crate) fn short_hash(hash: &str) -> &str {
    let end = hash.char_indices().nth(6).map_or(hash.len(), |(i, _)| i);
    &hash[..end]
}

/// What a call's decision cell says: a symbol and a word, so it reads without colour.
pub(crate) fn decision_label(
    row: &CallRow,
    now: DateTime<Utc>,
    held: bool,
) -> (String, DecisionStyle) {
    match row.call.decision {
        Verdict::Allow => ("✓ allow".into(), DecisionStyle::Allow),
        Verdict::Deny => ("✗ deny".into(), DecisionStyle::Deny),
        Verdict::RateLimited => ("⏱ rate limited".into(), DecisionStyle::RateLimited),
        Verdict::Hold => match &row.resolution {
            Some(r) if r.approved => ("✓ approved".into(), DecisionStyle::Allow),
            Some(r) => (
                match r.by {
                    ResolvedBy::Operator => "✗ rejected",
                    ResolvedBy::Timeout => "✗ timed out",
                    ResolvedBy::Cancellation => "✗ cancelled",
                    ResolvedBy::Shutdown => "✗ shut down",
                }
                .into(),
                DecisionStyle::Deny,
            ),
            None if held => (
                format!("⏸ held {}", countdown(row.call.hold_deadline, now)),
                DecisionStyle::Hold,
            ),
            None => ("⏸ hold".into(), DecisionStyle::Hold),
        },
    }
}

/// Who ended a hold, and when if known: `approved by alice 3 s ago`, `denied by timeout`.
/// The operator's name is the gateway's (from the account), already sanitised on the way in.
pub(crate) fn resolution_label(
    r: &HoldResolved,
    at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> String {
    let what = if r.approved { "approved" } else { "denied" };
    let by = match (&r.operator, r.by) {
        (Some(op), ResolvedBy::Operator) => op.clone(),
        (None, ResolvedBy::Operator) => "an operator".to_owned(),
        (_, ResolvedBy::Timeout) => "timeout".to_owned(),
        (_, ResolvedBy::Cancellation) => "the agent's cancellation".to_owned(),
        (_, ResolvedBy::Shutdown) => "the gateway's shutdown".to_owned(),
    };
    let mut text = format!("{what} by {by}");
    if let Some(at) = at {
        let secs = (now - at).num_seconds().max(0);
        let ago = match secs {
            0..60 => format!("{secs} s"),
            60..3600 => format!("{} min", secs / 60),
            _ => format!("{} h", secs / 3600),
        };
        text.push_str(&format!(" {ago} ago"));
    }
    text
}

/// The Live view's mark for a call a shadow rule or the shadow policy would have decided
/// otherwise: `◐ would deny`, `◐ would hold`, ...; `None` for a call without one.
pub(crate) fn shadow_label(row: &CallRow) -> Option<String> {
    row.call.shadow.as_ref().map(|s| format!("◐ {}", s.would()))
}

/// Which theme slot a decision is drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecisionStyle {
    Allow,
    Deny,
    RateLimited,
    Hold,
}

/// `m:ss` until `deadline`, `0:00` once past, `—` without one.
pub(crate) fn countdown(deadline: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match deadline {
        None => "—".into(),
        Some(d) => {
            let secs = (d - now).num_seconds().max(0);
            format!("{}:{:02}", secs / 60, secs % 60)
        }
    }
}

/// A latency for people: `38 ms`, `1.2 s`.
pub(crate) fn latency_label(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 10_000_000 {
        if us < 1_000_000 {
            format!("{} ms", us / 1_000)
        } else {
            format!("{:.1} s", us as f64 / 1e6)
        }
    } else {
        format!("{} s", us / 1_000_000)
    }
}

/// When room comes back, `ms` from now: `in 12s`, or `now`.
pub(crate) fn room_in(ms: Option<u64>) -> String {
    match ms {
        None | Some(0) => "now".into(),
        Some(ms) => format!("in {}", crate::policy::human_duration(ms)),
    }
}

/// A window as it is typed back into a prompt: `minute`, `90s`, `10m`, `2h`, `3d`.
pub(crate) fn window_short(ms: u64) -> String {
    const UNITS: [(u64, &str, &str); 4] = [
        (86_400_000, "day", "d"),
        (3_600_000, "hour", "h"),
        (60_000, "minute", "m"),
        (1_000, "second", "s"),
    ];
    for (size, one, short) in UNITS {
        if ms.is_multiple_of(size) {
            let n = ms / size;
            return if n == 1 {
                one.to_owned()
            } else {
                format!("{n}{short}")
            };
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        "2026-11-26T12:00:00Z".parse().unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        t0() + chrono::TimeDelta::seconds(secs)
    }

    #[test]
    fn countdown_and_latency_read_like_a_person_wrote_them() {
        assert_eq!(countdown(Some(at(114)), t0()), "1:54");
        assert_eq!(countdown(Some(at(-3)), t0()), "0:00");
        assert_eq!(latency_label(38_000), "38 ms");
        assert_eq!(latency_label(1_250_000), "1.2 s");
        assert_eq!(latency_label(900), "900 µs");
    }

    #[test]
    fn a_window_is_offered_back_in_the_words_the_prompt_accepts() {
        for (ms, text) in [
            (60_000, "minute"),
            (90_000, "90s"),
            (600_000, "10m"),
            (7_200_000, "2h"),
            (86_400_000, "day"),
            (259_200_000, "3d"),
            (1_500, "1500ms"),
        ] {
            assert_eq!(window_short(ms), text);
            assert_eq!(
                window_short(ms).replace(' ', ""),
                crate::policy::window_words(ms)
                    .replace(' ', "")
                    .replace("seconds", "s")
                    .replace("minutes", "m")
                    .replace("hours", "h")
                    .replace("days", "d"),
                "the same text the prompt offered before"
            );
        }
    }
}
