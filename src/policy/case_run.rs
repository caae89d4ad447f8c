//! Running policy test cases: every call decided by [`Policy::decide`], as the gateway
//! decides it, against a fresh in-memory counter store and a virtual clock.
//!
//! Nothing sleeps: a call's `at` is added to a fixed start time and handed to `decide` as
//! `now`, so "the 31st call within a minute is rate limited; one at +61 s is allowed" is
//! decided exactly as the gateway would, in microseconds. Each case starts with empty
//! counters, so cases do not depend on each other or on their order. An allowed or held call
//! keeps the units it took (a held call as if an operator approved it, or were still
//! deciding); a refused call takes nothing, as in the gateway.
//!
//! `expect.decision` is about the enforced decision, as the agent gets it; what a shadow rule
//! would have decided instead is `expect.shadow` (shadow limits count in their own counters
//! here too).

use super::cases::{Case, Expect};
use super::{Call, Decision, MemoryStore, Policy, Verdict};
use smol_str::SmolStr;

/// The virtual time of every case's first call: a fixed instant, so runs are reproducible
/// (2026-01-01T00:00:00Z in milliseconds).
const START_MS: u64 = 1_767_225_600_000;

/// What the last call of a case was decided, beside what was expected.
#[derive(Debug, Clone)]
pub(crate) struct CaseOutcome {
    pub actual: Decision,
    /// What did not match, in words (`decision: expected deny, got allow`); empty when the
    /// case passed.
    pub mismatches: Vec<String>,
}

impl CaseOutcome {
    pub(crate) fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Runs one case against `policy`.
pub(crate) fn run_case(policy: &Policy, case: &Case) -> CaseOutcome {
    let store = MemoryStore::new();
    let mut last = None;
    for call in &case.calls {
        let now = START_MS.saturating_add(call.at_ms);
        let c = Call {
            tool: &call.tool,
            args: &call.args,
            grant: &call.grant,
            session: &call.session,
        };
        for _ in 0..call.repeat {
            last = Some(policy.decide(&c, &store, now));
        }
    }
    // A case has at least one call, each made at least once (the case file's validation);
    // should that ever not hold, the case fails rather than passes.
    let Some(actual) = last else {
        return CaseOutcome {
            actual: no_call(),
            mismatches: vec!["the case made no call".to_string()],
        };
    };
    let mismatches = compare(&case.expect, &actual);
    CaseOutcome { actual, mismatches }
}

fn compare(expect: &Expect, actual: &Decision) -> Vec<String> {
    let mut out = Vec::new();
    if expect.decision != actual.verdict {
        out.push(format!(
            "decision: expected {}, got {}",
            expect.decision.as_str(),
            actual.verdict.as_str()
        ));
    }
    if let Some(rule) = &expect.rule
        && *rule != actual.rule
    {
        out.push(format!("rule: expected {rule}, got {}", actual.rule));
    }
    if let Some(part) = &expect.reason_contains
        && !actual.reason.contains(part.as_str())
    {
        out.push(format!(
            "reason: expected it to contain {}, got {}",
            serde_json::Value::String(part.clone()),
            serde_json::Value::String(actual.reason.to_string())
        ));
    }
    if let Some(expected) = expect.shadow {
        let actual = actual.shadow.as_ref().map(|s| s.verdict);
        if expected != actual {
            let say = |v: Option<Verdict>| v.map_or("none", Verdict::as_str);
            out.push(format!(
                "shadow: expected {}, got {}",
                say(expected),
                say(actual)
            ));
        }
    }
    out
}

fn no_call() -> Decision {
    Decision {
        verdict: Verdict::Deny,
        rule: SmolStr::default(),
        reason: SmolStr::default(),
        retry_after_ms: None,
        hidden: false,
        approval_timeout_ms: None,
        reservation: Default::default(),
        tool: SmolStr::default(),
        shadow: None,
    }
}
