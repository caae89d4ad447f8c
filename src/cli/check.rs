//! `toolgate check`: validate policy files and policy test case files, compiler-style.
//!
//! A thin shell over [`crate::policy::Policy::parse`] (and [`CaseFile::parse`] for a file
//! whose top level has `cases`): one summary line per valid file, every diagnostic of an
//! invalid one, exit 1 when any file is invalid or unreadable. Diagnostics
//! quote the policy's own text (tool names, keys, values), so every line goes through
//! [`crate::sanitize`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use crate::policy::cases::{self, CaseFile};
use crate::policy::lint;
use crate::policy::{Diagnostics, LoadError, Policy, read_source};
use crate::sanitize::{self, terminal_text};

/// Validate policy files (and `toolgate test` case files): every problem at once, with
/// FILE:LINE:COL and a JSON Pointer.
///
/// A file whose top level has "cases" is read as a case file (docs/policy-tests.md).
///
/// Exit status 0 when every file is valid, 1 when any is invalid or cannot be read, 3 (with
/// --lint) when every file is valid but there are warnings.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  toolgate check policy.json
      policy.json: ok — default deny, 1 rule, 1 counter, hash 3f9a21
  toolgate check --json policy.json staging.json      one JSON object per file, per line
  toolgate check --lint policy.json cases.json        warnings too; exit 3 if any
  toolgate scan --json -- node server.js > tools.json
  toolgate check --lint --tools tools.json policy.json  the checks that need the server's tools

Windows: second, minute, hour, day, a whole number of seconds (60), or \"90s\", \"10m\",
\"1h\", \"1d\". `hide` entries and `tools` keys with * or ? are globs (no escaping).

Condition ops: eq, neq, in, not_in, lt, lte, gt, gte, regex, contains, exists, not_exists,
and under (the value an absolute directory: {\"path\": \"args.path\", \"op\": \"under\",
\"value\": \"/home/me/notes\"}). A condition that cannot be evaluated on the value a call
sends (an array where a number is needed) denies the call, in deny_if and require alike.")]
pub(super) struct Args {
    /// Policy files (or case files) to check.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// One JSON object per file (`{"file", "ok", ...}`), for tools.
    #[arg(long)]
    json: bool,
    /// Also warn about what is valid but almost certainly a mistake: a glob rule that never
    /// decides a call, a rule for a hidden tool, and with --tools a glob behind exact keys, a
    /// destructive tool allowed with no limit, and a deny_if/require its input schema settles.
    /// Exit status 3 when there are warnings and no errors.
    #[arg(long)]
    lint: bool,
    /// The tools a server offers, as `toolgate scan --json` prints them, for the lint checks
    /// that need them (implies --lint).
    #[arg(long, value_name = "FILE")]
    tools: Option<PathBuf>,
}

/// The largest `--tools` file read: far above any server's tool list.
const MAX_TOOLS_BYTES: u64 = 16 * 1024 * 1024;

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let lint = args.lint || args.tools.is_some();
    let tools = match &args.tools {
        Some(path) => known_tools(path)?,
        None => Vec::new(),
    };
    let mut all_ok = true;
    let mut warned = false;
    for path in &args.files {
        let shown = path.display().to_string();
        let text = read_source(path).map_err(|source| LoadError::Io {
            path: shown.clone(),
            source,
        });
        if let Ok(text) = &text
            && cases::is_case_file(text)
        {
            let result = CaseFile::parse(text, &shown);
            all_ok &= result.is_ok();
            report_cases(&shown, &result, args.json)?;
            continue;
        }
        let (result, source) = match text {
            Ok(text) => (
                Policy::parse(&text, &shown).map_err(LoadError::Invalid),
                text,
            ),
            Err(e) => (Err(e), String::new()),
        };
        all_ok &= result.is_ok();
        let warnings = match &result {
            Ok(policy) if lint => lint::lint(policy, &source, &shown, &tools),
            _ => Vec::new(),
        };
        warned |= !warnings.is_empty();
        if args.json {
            let mut report = json_report(&shown, &result);
            if lint {
                report["warnings"] = warnings
                    .iter()
                    .map(|w| {
                        json!({
                            "line": w.line,
                            "column": w.column,
                            "pointer": w.pointer,
                            "message": w.message,
                            "hint": w.hint,
                            "text": w.to_string(),
                        })
                    })
                    .collect();
            }
            println!("{}", sanitize::json(&report)?);
        } else {
            let lines = match &result {
                Ok(policy) => std::iter::once(format!("{shown}: ok — {}", summary(policy)))
                    .chain(warnings.iter().map(|w| w.to_string()))
                    .collect(),
                Err(LoadError::Invalid(diags)) => diags.0.iter().map(|d| d.to_string()).collect(),
                Err(e @ LoadError::Io { .. }) => vec![format!("{shown}: error: {e}")],
            };
            for line in lines {
                println!("{}", terminal_text(&line));
            }
        }
    }
    Ok(if !all_ok {
        ExitCode::FAILURE
    } else if warned {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// The tools of a `toolgate scan --json` report (an array of `{"name", "class", ...}`).
fn known_tools(path: &std::path::Path) -> anyhow::Result<Vec<lint::KnownTool>> {
    let shown = path.display();
    let bytes = crate::gateway::watch::read_watched_file(path, MAX_TOOLS_BYTES)
        .with_context(|| format!("cannot read the tools file {shown}"))?
        .with_context(|| {
            format!("the tools file {shown} is larger than {MAX_TOOLS_BYTES} bytes; is it the output of toolgate scan --json?")
        })?;
    let doc: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| {
        format!("the tools file {shown} is not JSON; write it with toolgate scan --json -- SERVER > {shown}")
    })?;
    let list = match &doc {
        serde_json::Value::Array(list) => list,
        _ => anyhow::bail!(
            "the tools file {shown} is not a list of tools; write it with toolgate scan --json -- SERVER > {shown}"
        ),
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let name = t.get("name").and_then(|n| n.as_str()).with_context(|| {
                format!("the tools file {shown}: entry {i} has no \"name\" string; is it the output of toolgate scan --json?")
            })?;
            Ok(lint::KnownTool {
                name: name.to_string(),
                class: t.get("class").and_then(|c| c.as_str()).map(str::to_string),
                input_schema: t
                    .get("input_schema")
                    .or_else(|| t.get("inputSchema"))
                    .filter(|s| s.is_object())
                    .cloned(),
            })
        })
        .collect()
}

/// A case file's line (`cases.json: ok — case file, 3 cases`) or diagnostics.
fn report_cases(
    shown: &str,
    result: &Result<CaseFile, Vec<crate::policy::Diagnostic>>,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let report = match result {
            Ok(file) => {
                json!({"file": shown, "ok": true, "kind": "cases", "cases": file.cases.len()})
            }
            Err(diags) => {
                let mut report =
                    json_report(shown, &Err(LoadError::Invalid(Diagnostics(diags.clone()))));
                report["kind"] = json!("cases");
                report
            }
        };
        println!("{}", sanitize::json(&report)?);
        return Ok(());
    }
    let lines = match result {
        Ok(file) => vec![format!(
            "{shown}: ok — case file, {}",
            count(file.cases.len(), "case", "cases")
        )],
        Err(diags) => diags.iter().map(|d| d.to_string()).collect(),
    };
    for line in lines {
        println!("{}", terminal_text(&line));
    }
    Ok(())
}

/// `default deny, 1 rule, 1 counter, hash 3f9a21`.
pub(super) fn summary(policy: &Policy) -> String {
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
