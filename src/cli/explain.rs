//! `toolgate explain`: which rule decides a call, and why, without running a gateway.
//!
//! Decides `--repeat N` identical calls at one instant on a fresh in-memory counter store,
//! so a person can see where a limit starts refusing. Human output explains in words, with
//! every condition of the deciding rule and what it gave (true, false, or unknown and why);
//! with `--json`, one object per call per line. Exit 0 whatever the decision; 2 on bad input
//! (an invalid policy, arguments that are not a JSON object).
//!
//! Tool names, reasons, glob patterns and argument values come from a policy file or the
//! command line, so every line goes through [`crate::sanitize`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::{Value, json};

use crate::policy::{
    Action, Call, Decision, LoadError, MemoryStore, Policy, RuleMatch, Verdict, human_duration,
    window_words,
};
use crate::sanitize::{self, terminal_text};

/// Prints one line of outside text, neutralised.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", terminal_text(&format!($($arg)*)))
    };
}

/// Explain which rule decides a tool call and why.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  toolgate explain --policy policy.json --tool create_api_key
  toolgate explain --policy policy.json --tool transfer --args '{\"amount\": 20000}'
  toolgate explain --policy policy.json --tool create_api_key --repeat 31 --json
  toolgate explain --policy policy.json --tool read_file --args '{\"path\": \"/home/me/notes/../.ssh/id_ed25519\"}'

Every condition of the rule is shown with what it gave: true, false, or unknown (the value
cannot be compared: an array where a number is needed, a relative path for `under`). An
unknown condition denies the call, in `deny_if` and in `require` alike.

Exit status 0 whatever the decision; 2 when the policy is invalid or --args is not a JSON
object.")]
pub(super) struct Args {
    /// The policy file.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// The tool name the call names.
    #[arg(long, value_name = "NAME")]
    tool: String,
    /// The call's arguments, a JSON object.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    args: String,
    /// The grant (caller identity) the call comes from.
    #[arg(long, value_name = "G", default_value = "cli")]
    grant: String,
    /// The MCP session the call belongs to.
    #[arg(long, value_name = "S", default_value = "cli")]
    session: String,
    /// Decide this many identical calls at one instant, on fresh counters.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    repeat: u64,
    /// One JSON object per call, per line: decision, rule, reason, retry_after_ms.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let policy = match Policy::load(&args.policy) {
        Ok(p) => p,
        Err(LoadError::Invalid(diags)) => {
            for d in &diags.0 {
                eprintln!("{}", terminal_text(&d.to_string()));
            }
            eprintln!(
                "toolgate: error: {} is not a valid policy; fix the problems above",
                terminal_text(&args.policy.display().to_string())
            );
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let call_args: Value = serde_json::from_str(&args.args)
        .with_context(|| format!("--args is not valid JSON: {}", args.args))?;
    if !call_args.is_object() {
        anyhow::bail!("--args must be a JSON object, like '{{\"amount\": 5}}'");
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let store = MemoryStore::new();
    let call = Call {
        tool: &args.tool,
        args: &call_args,
        grant: &args.grant,
        session: &args.session,
    };
    let decisions: Vec<Decision> = (0..args.repeat)
        .map(|_| policy.decide(&call, &store, now_ms))
        .collect();

    let conditions = conditions(&policy, &args.tool, &call_args);

    if args.json {
        let conditions_json: Vec<Value> = conditions.iter().map(Shown::to_json).collect();
        for (i, d) in decisions.iter().enumerate() {
            let mut v = decision_json(i as u64 + 1, d);
            if !conditions_json.is_empty() {
                v["conditions"] = Value::Array(conditions_json.clone());
            }
            println!("{}", sanitize::json(&v)?);
        }
        return Ok(ExitCode::SUCCESS);
    }

    say!(
        "{} (grant {}, session {}){}",
        args.tool,
        args.grant,
        args.session,
        if args.repeat > 1 {
            format!(", {} identical calls at one instant", args.repeat)
        } else {
            String::new()
        }
    );
    say!("  {}", describe_match(&policy, &args.tool));
    if !conditions.is_empty() {
        say!("  conditions, in the order they are checked (the first that denies decides):");
        for c in &conditions {
            say!("    {}", c.line());
        }
    }
    let mut start = 0;
    while start < decisions.len() {
        let d = &decisions[start];
        let end = decisions[start..]
            .iter()
            .position(|e| {
                e.verdict != d.verdict
                    || e.rule != d.rule
                    || e.reason != d.reason
                    || e.shadow != d.shadow
            })
            .map_or(decisions.len(), |n| start + n);
        let which = if decisions.len() == 1 {
            String::new()
        } else if end - start == 1 {
            format!("call {}: ", start + 1)
        } else {
            format!("calls {}–{}: ", start + 1, end)
        };
        say!("  {which}{}", describe_decision(d));
        if let Some(s) = &d.shadow {
            say!(
                "    shadow rule {}: {} (not enforced): {}",
                s.rule,
                s.would(),
                s.reason
            );
        }
        match d.verdict {
            Verdict::Deny | Verdict::RateLimited => {
                say!("    the agent reads: {}", d.agent_text());
            }
            Verdict::Hold => say!(
                "    the call waits; it goes through if an operator approves, and is denied if one denies it or the time runs out (its counter units are then given back)"
            ),
            Verdict::Allow => {}
        }
        start = end;
    }
    match policy.counter_states(&store, now_ms) {
        Ok(states) => {
            for s in states {
                let whose = if s.scope == "global" {
                    "everybody".to_string()
                } else {
                    format!("{} {}", s.scope, s.key)
                };
                say!(
                    "  counter {}: {}/{} used per {} ({whose})",
                    s.counter,
                    s.used,
                    s.max,
                    window_words(s.window_ms)
                );
            }
        }
        Err(e) => say!("  counters: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// One condition of the deciding rule and what it gave, owned for printing.
struct Shown {
    pointer: String,
    deny_if: bool,
    condition: String,
    outcome: &'static str,
    why: Option<String>,
    denies: bool,
}

impl Shown {
    /// `/tools/t/deny_if/0: deny_if args.amount gt 1000 → unknown (args.amount is an array;
    /// gt compares numbers), so it denies the call`.
    fn line(&self) -> String {
        let list = if self.deny_if { "deny_if" } else { "require" };
        let outcome = match &self.why {
            Some(why) => format!("{} ({why})", self.outcome),
            None => self.outcome.to_string(),
        };
        let effect = match (self.denies, self.outcome) {
            (true, "unknown") => "cannot be evaluated, so it denies the call",
            (true, _) => "denies the call",
            (false, _) => "passes",
        };
        format!(
            "{}: {list} {} → {outcome}: {effect}",
            self.pointer, self.condition
        )
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "pointer": self.pointer,
            "list": if self.deny_if { "deny_if" } else { "require" },
            "condition": self.condition,
            "outcome": self.outcome,
            "denies": self.denies,
        });
        if let Some(why) = &self.why {
            v["why"] = json!(why);
        }
        v
    }
}

/// The deciding rule's conditions evaluated on `args`; none when the rule (or `hide`, or the
/// default) decides without looking at arguments.
fn conditions(policy: &Policy, tool: &str, args: &Value) -> Vec<Shown> {
    if policy
        .treatment(tool)
        .is_none_or(|t| t.action == Action::Deny || !t.conditions)
    {
        return Vec::new();
    }
    policy
        .condition_checks(tool, args)
        .iter()
        .map(|c| {
            let (outcome, why) = c.outcome();
            Shown {
                pointer: c.pointer.to_string(),
                deny_if: c.deny_if,
                condition: c.describe(),
                outcome,
                why,
                denies: c.denies(),
            }
        })
        .collect()
}

fn decision_json(n: u64, d: &Decision) -> Value {
    let mut v = json!({
        "call": n,
        "decision": d.verdict,
        "rule": d.rule,
        "reason": d.reason,
        "hidden": d.hidden,
        "agent_text": d.agent_text(),
    });
    if let Some(ms) = d.retry_after_ms {
        v["retry_after_ms"] = json!(ms);
    }
    if let Some(ms) = d.approval_timeout_ms {
        v["approval_timeout_ms"] = json!(ms);
    }
    if let Some(s) = &d.shadow {
        v["shadow"] = json!({
            "decision": s.verdict,
            "rule": s.rule,
            "reason": s.reason,
            "source": s.source,
        });
    }
    v
}

/// Which entry of the policy the tool falls under, in words.
fn describe_match(policy: &Policy, tool: &str) -> String {
    match policy.rule_match(tool) {
        RuleMatch::Hidden { pointer, entry } => format!(
            "hidden: hide entry \"{entry}\" ({pointer}) names it, so it is refused as an unknown tool (hide wins over any rule)"
        ),
        RuleMatch::Exact { pointer } => {
            format!("rule: tools has an entry for exactly this name ({pointer})")
        }
        RuleMatch::Glob {
            pointer,
            pattern,
            candidates,
        } => {
            if candidates.len() == 1 {
                format!("rule: no exact entry; the glob \"{pattern}\" matches ({pointer})")
            } else {
                format!(
                    "rule: no exact entry; {} globs match ({}), and \"{pattern}\" wins with the most literal characters (ties go to the first written)",
                    candidates.len(),
                    candidates.join(", ")
                )
            }
        }
        RuleMatch::Default { action } => format!(
            "rule: no entry in tools names it, so the default decides (/default: {})",
            action.as_str()
        ),
    }
}

fn describe_decision(d: &Decision) -> String {
    match d.verdict {
        Verdict::Allow => format!("allow, by {}: {}", d.rule, d.reason),
        Verdict::Deny => format!("deny, by {}: {}", d.rule, d.reason),
        Verdict::RateLimited => format!(
            "rate_limited, by {}: {}; room again in {}",
            d.rule,
            d.reason,
            human_duration(d.retry_after_ms.unwrap_or(0))
        ),
        Verdict::Hold => format!(
            "hold for an operator's approval, by {} (times out after {}): {}",
            d.rule,
            human_duration(d.approval_timeout_ms.unwrap_or(0)),
            d.reason
        ),
    }
}
