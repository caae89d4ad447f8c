//! What a decision is: the verdict, the rule that made it, and the units it took.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use smol_str::SmolStr;

use super::store::Reservation;

/// One tool call as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub tool: &'a str,
    /// A `Value`, or the gateway's arguments as text whose tree is built only when a
    /// condition reads it.
    pub args: &'a dyn ArgsTree,
    /// Who is calling (`wrap --grant`, or the HTTP bearer token's grant).
    pub grant: &'a str,
    /// The MCP session the call belongs to.
    pub session: &'a str,
}

/// A call's arguments as the policy's conditions read them: a JSON tree, which a reader
/// may build only when it is asked for (a rule without conditions never asks).
pub trait ArgsTree: std::fmt::Debug + Sync {
    /// The tree, or `None` when the arguments cannot be read into one: every condition is
    /// then unknown, so the call is denied (fail closed).
    fn tree(&self) -> Option<&Value>;
}

impl ArgsTree for Value {
    fn tree(&self) -> Option<&Value> {
        Some(self)
    }
}

/// The four outcomes of a decision. Serialised as on the wire and in `explain --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    RateLimited,
    Hold,
}

impl Verdict {
    /// The wire name: `allow`, `deny`, `rate_limited`, `hold`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::RateLimited => "rate_limited",
            Verdict::Hold => "hold",
        }
    }
}

/// The result of [`super::Policy::decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// JSON Pointer into the policy of the rule that decided (`/tools/x`, `/default`, `/hide/2`).
    pub rule: SmolStr,
    /// Why, in words a person (and a model) can act on. For holds, written for the operator.
    /// Rule pointers and reasons are the compiled policy's own, shared (see [`SmolStr`]).
    pub reason: SmolStr,
    /// For [`Verdict::RateLimited`]: when room comes back.
    pub retry_after_ms: Option<u64>,
    /// The call was refused because `hide` names the tool.
    pub hidden: bool,
    /// For [`Verdict::Hold`]: how long the call may wait for an operator.
    pub approval_timeout_ms: Option<u64>,
    /// Units taken from the counters (allowed and held calls); give them back with
    /// [`super::CounterStore::release`] when the call ends denied, timed out or never reached
    /// the upstream.
    pub reservation: Reservation,
    /// The tool the call named (a hidden tool's refusal repeats it, as for an unknown tool).
    pub tool: SmolStr,
    /// What a shadow rule (or a `--shadow-policy`) would have decided instead, when that
    /// differs from this decision; recorded, never enforced.
    pub shadow: Option<Shadow>,
}

/// Where a shadow decision comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowSource {
    /// A rule marked `"shadow": true` in the enforced policy.
    Rule,
    /// The candidate policy of `--shadow-policy`.
    Policy,
}

impl ShadowSource {
    /// The wire name: `rule`, `policy`.
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowSource::Rule => "rule",
            ShadowSource::Policy => "policy",
        }
    }
}

/// A decision that was made but not enforced: what a shadow rule or the shadow policy would
/// have done with a call, kept only when it differs from what was enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    pub verdict: Verdict,
    /// JSON Pointer of the deciding rule, in the policy it comes from.
    pub rule: String,
    pub reason: String,
    pub source: ShadowSource,
}

impl Shadow {
    /// The shadow side of a call when it differs from what was enforced, else `None`.
    ///
    /// Only the verdict is compared: a shadow rule that denies a call the enforced policy also
    /// denies changes nothing a person would see. A call refused by an `all_tools` limit would
    /// have been refused under the shadow rule too (the shadow decision leaves `all_tools` to
    /// the enforced one, which counts it once), so it is no difference either.
    pub fn between(enforced: &Decision, shadow: Decision, source: ShadowSource) -> Option<Shadow> {
        if shadow.verdict == enforced.verdict {
            return None;
        }
        let refused_by_all_tools = enforced.verdict == Verdict::RateLimited
            && enforced.rule.starts_with("/all_tools/")
            && source == ShadowSource::Rule
            && matches!(shadow.verdict, Verdict::Allow | Verdict::Hold);
        if refused_by_all_tools {
            return None;
        }
        Some(Shadow {
            verdict: shadow.verdict,
            rule: shadow.rule.into(),
            reason: shadow.reason.into(),
            source,
        })
    }

    /// `would deny`, `would rate limit`, `would hold`, `would allow`.
    pub fn would(&self) -> &'static str {
        would(self.verdict)
    }
}

/// `would deny`, `would rate limit`, `would hold`, `would allow`: a shadow verdict in words.
pub(crate) fn would(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Allow => "would allow",
        Verdict::Deny => "would deny",
        Verdict::RateLimited => "would rate limit",
        Verdict::Hold => "would hold",
    }
}

impl Decision {
    /// The text an agent reads in the refused call's result, e.g.
    /// `Denied by policy (/tools/delete_account): deleting accounts needs a human` or
    /// `Rate limit reached: 30 calls per minute on counter create_api_key_rate. Retry in 12s.`
    /// A hidden tool reads exactly like one the server does not have.
    pub fn agent_text(&self) -> String {
        match self.verdict {
            Verdict::Deny if self.hidden => format!("Unknown tool: {}", self.tool),
            Verdict::Deny => format!("Denied by policy ({}): {}", self.rule, self.reason),
            Verdict::RateLimited => format!(
                "Rate limit reached: {}. Retry in {}.",
                self.reason,
                human_duration(self.retry_after_ms.unwrap_or(1000))
            ),
            Verdict::Hold => format!(
                "Waiting for an operator's approval ({}): {}",
                self.rule, self.reason
            ),
            Verdict::Allow => format!("Allowed by policy ({}): {}", self.rule, self.reason),
        }
    }
}

/// A wait in words for people: `12s`, `2m 5s`, `1h 3m`, `2d 4h`; rounded up to the second.
pub(crate) fn human_duration(ms: u64) -> String {
    let s = ms.div_ceil(1000).max(1);
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        join(s / 60, "m", s % 60, "s")
    } else if s < 2 * 86_400 {
        let m = s.div_ceil(60);
        join(m / 60, "h", m % 60, "m")
    } else {
        let h = s.div_ceil(3600);
        join(h / 24, "d", h % 24, "h")
    }
}

fn join(big: u64, big_unit: &str, small: u64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit} {small}{small_unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_read_in_the_largest_sensible_units_rounded_up() {
        assert_eq!(human_duration(11_001), "12s");
        assert_eq!(human_duration(1), "1s");
        assert_eq!(human_duration(0), "1s");
        assert_eq!(human_duration(125_000), "2m 5s");
        assert_eq!(human_duration(120_000), "2m");
        assert_eq!(human_duration(3_780_000 * 2), "2h 6m");
        assert_eq!(human_duration(3 * 86_400_000), "3d");
        assert_eq!(human_duration(10_799_000), "3h");
    }
}
