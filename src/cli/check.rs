//! `toolgate check`: validate policy files, compiler-style.
//!
//! A thin shell over [`crate::policy::Policy::load`]: one summary line per valid file, every
//! diagnostic of an invalid one, exit 1 when any file is invalid or unreadable. Diagnostics
//! quote the policy's own text (tool names, keys, values), so every line goes through
//! [`crate::sanitize`].

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use crate::policy::{LoadError, Policy};
use crate::sanitize::{self, terminal_text};

/// Validate policy files: every problem at once, with FILE:LINE:COL and a JSON Pointer.
///
/// Exit status 0 when every file is valid, 1 when any is invalid or cannot be read.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  toolgate check policy.json
      policy.json: ok — default deny, 1 rule, 1 counter, hash 3f9a21
  toolgate check --json policy.json staging.json      one JSON object per file, per line

Windows: second, minute, hour, day, a whole number of seconds (60), or \"90s\", \"10m\",
\"1h\", \"1d\". `hide` entries and `tools` keys with * or ? are globs (no escaping).

Condition ops: eq, neq, in, not_in, lt, lte, gt, gte, regex, contains, exists, not_exists,
and under (the value an absolute directory: {\"path\": \"args.path\", \"op\": \"under\",
\"value\": \"/home/me/notes\"}). A condition that cannot be evaluated on the value a call
sends (an array where a number is needed) denies the call, in deny_if and require alike.")]
pub struct Args {
    /// Policy files to check.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// One JSON object per file (`{"file", "ok", ...}`), for tools.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut all_ok = true;
    for path in &args.files {
        let shown = path.display().to_string();
        let result = Policy::load(path);
        all_ok &= result.is_ok();
        if args.json {
            println!("{}", sanitize::json(&json_report(&shown, &result))?);
        } else {
            let lines = match &result {
                Ok(policy) => vec![format!("{shown}: ok — {}", summary(policy))],
                Err(LoadError::Invalid(diags)) => diags.0.iter().map(|d| d.to_string()).collect(),
                Err(e @ LoadError::Io { .. }) => vec![format!("{shown}: error: {e}")],
            };
            for line in lines {
                println!("{}", terminal_text(&line));
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `default deny, 1 rule, 1 counter, hash 3f9a21`.
pub fn summary(policy: &Policy) -> String {
    let mut parts = vec![
        format!("default {}", policy.default_action().as_str()),
        count(policy.rule_count(), "rule", "rules"),
        count(policy.counters().len(), "counter", "counters"),
    ];
    if policy.hide_count() > 0 {
        parts.push(count(policy.hide_count(), "hidden entry", "hidden entries"));
    }
    parts.push(format!("hash {}", &policy.hash()[..6]));
    parts.join(", ")
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn json_report(file: &str, result: &Result<Policy, LoadError>) -> serde_json::Value {
    match result {
        Ok(p) => json!({
            "file": file,
            "ok": true,
            "hash": p.hash(),
            "default": p.default_action().as_str(),
            "rules": p.rule_count(),
            "counters": p.counters().len(),
            "hide": p.hide_count(),
        }),
        Err(LoadError::Invalid(diags)) => json!({
            "file": file,
            "ok": false,
            "diagnostics": diags.0.iter().map(|d| json!({
                "line": d.line,
                "column": d.column,
                "pointer": d.pointer,
                "message": d.message,
                "hint": d.hint,
                "text": d.to_string(),
            })).collect::<Vec<_>>(),
        }),
        Err(e) => json!({"file": file, "ok": false, "error": e.to_string()}),
    }
}
