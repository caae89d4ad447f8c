//! `toolgate test`: run a policy's test cases, for CI and for people changing a policy.
//!
//! A thin shell over [`crate::policy::cases`] (the case file) and
//! [`crate::policy::case_run`] (decided by `Policy::decide` on a virtual clock). Prints each
//! failure with expected and actual decision and the rule that decided, then a summary line;
//! `--junit` writes the same results as JUnit XML ([`super::junit`]). Case names, reasons and
//! file names are outside text, so every line goes through [`crate::sanitize`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use crate::policy::case_run::{CaseOutcome, run_case};
use crate::policy::cases::{Case, CaseFile};
use crate::policy::{LoadError, Policy, read_source};
use crate::sanitize::terminal_text;

use super::junit;

/// Most case files one directory may give: far above a real suite, a bound on a wrong path.
const MAX_CASE_FILES: usize = 10_000;

/// Most calls one run decides, all cases added up (each case has its own bound): a few
/// seconds of work, so a case file cannot make a CI job run for hours.
const MAX_CALLS_PER_RUN: u64 = 10_000_000;

/// Test a policy against a table of cases: each a call (or a sequence of calls at virtual
/// times) and the decision expected for the last one.
///
/// Exit status 0 when every case passes, 1 when any fails, 2 when the policy or a case file
/// is invalid or cannot be read (nothing is run then).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  toolgate test policy.json cases.json
  toolgate test policy.json tests/policy/ --junit policy-tests.xml

A case file (the top level has \"cases\"; `toolgate check` validates it too):
  {\"cases\": [
    {\"name\": \"keys are limited\",
     \"calls\": [{\"tool\": \"create_api_key\", \"grant\": \"ci\", \"repeat\": 30},
               {\"tool\": \"create_api_key\", \"grant\": \"ci\", \"at\": \"10s\"}],
     \"expect\": {\"decision\": \"rate_limited\", \"rule\": \"/tools/create_api_key/limits/0\"}},
    {\"name\": \"no deletes\", \"call\": {\"tool\": \"delete_account\", \"args\": {\"id\": \"a1\"}},
     \"expect\": {\"decision\": \"deny\", \"reason_contains\": \"person\"}}
  ]}

A call: tool, args (default {}), grant and session (default \"default\"), at (seconds or
\"61s\", \"2m\", \"1h\" after the case's first call; default: with the call before), repeat
(default 1). The expectation is about the last call: decision (allow, deny, rate_limited,
hold), optionally rule (the deciding rule's JSON Pointer) and reason_contains.

Limits run on a virtual clock, nothing sleeps: each case starts with empty counters at a
fixed instant, and a call's `at` moves the clock. Allowed and held calls keep their units.
The format in full: docs/policy-tests.md; JSON Schema: docs/policy-cases.schema.json.")]
pub(super) struct Args {
    /// The policy to test.
    #[arg(value_name = "POLICY")]
    policy: PathBuf,
    /// Case files, or directories whose `*.json` files are case files.
    #[arg(required = true, value_name = "CASES")]
    cases: Vec<PathBuf>,
    /// Also write the results as JUnit XML to FILE (for CI test reports).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let policy = match Policy::load(&args.policy) {
        Ok(p) => p,
        Err(LoadError::Invalid(diags)) => {
            for d in &diags.0 {
                println!("{}", terminal_text(&d.to_string()));
            }
            println!(
                "{}",
                terminal_text(&format!(
                    "{}: the policy is invalid; no case was run",
                    args.policy.display()
                ))
            );
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e).context("the policy to test"),
    };

    let mut files: Vec<(String, CaseFile)> = Vec::new();
    let mut invalid = false;
    for path in case_paths(&args.cases)? {
        let shown = path.display().to_string();
        let text = read_source(&path).with_context(|| format!("cannot read case file {shown}"))?;
        match CaseFile::parse(&text, &shown) {
            Ok(file) => files.push((shown, file)),
            Err(diags) => {
                invalid = true;
                for d in &diags {
                    println!("{}", terminal_text(&d.to_string()));
                }
            }
        }
    }
    if invalid {
        println!("a case file is invalid; no case was run");
        return Ok(ExitCode::from(2));
    }
    let calls: u64 = files
        .iter()
        .flat_map(|(_, f)| &f.cases)
        .flat_map(|c| &c.calls)
        .fold(0u64, |sum, c| sum.saturating_add(c.repeat));
    if calls > MAX_CALLS_PER_RUN {
        println!(
            "the cases make {calls} calls in all, more than the {MAX_CALLS_PER_RUN} one run decides; no case was run (a limit is tested with max + 1 calls: lower the repeats, or run the files separately)"
        );
        return Ok(ExitCode::from(2));
    }

    let mut suites = Vec::new();
    let (mut passed, mut failed) = (0usize, 0usize);
    for (shown, file) in &files {
        let started = Instant::now();
        let mut cases = Vec::new();
        for case in &file.cases {
            let case_started = Instant::now();
            let outcome = run_case(&policy, case);
            let failure = (!outcome.passed()).then(|| {
                let text = failure_text(shown, case, &outcome);
                for line in text.lines() {
                    println!("{}", terminal_text(line));
                }
                (outcome.mismatches.join("; "), text)
            });
            if failure.is_some() {
                failed += 1;
            } else {
                passed += 1;
            }
            cases.push(junit::TestCase {
                name: case.name.clone(),
                failure,
                seconds: case_started.elapsed().as_secs_f64(),
            });
        }
        suites.push(junit::Suite {
            name: shown.clone(),
            file: shown.clone(),
            cases,
            seconds: started.elapsed().as_secs_f64(),
        });
    }

    println!(
        "{}",
        terminal_text(&format!(
            "{} against {}: {passed} passed, {failed} failed",
            count(passed + failed, "case", "cases"),
            args.policy.display()
        ))
    );
    if let Some(path) = &args.junit {
        std::fs::write(path, junit::render(&suites)).with_context(|| {
            format!(
                "cannot write the JUnit report to {}; check that its directory exists and is writable",
                path.display()
            )
        })?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// ```text
/// FAIL cases.json:3:5: keys are limited (at /cases/0)
///   expected: rate_limited by /tools/create_api_key/limits/0
///   actual:   allow by /tools/create_api_key: allowed by its rule
///   decision: expected rate_limited, got allow
/// ```
fn failure_text(file: &str, case: &Case, outcome: &CaseOutcome) -> String {
    let e = &case.expect;
    let mut expected = e.decision.as_str().to_string();
    if let Some(rule) = &e.rule {
        expected.push_str(&format!(" by {rule}"));
    }
    if let Some(part) = &e.reason_contains {
        expected.push_str(&format!(
            ", reason containing {}",
            serde_json::Value::String(part.clone())
        ));
    }
    let a = &outcome.actual;
    let mut text = format!(
        "FAIL {file}:{}:{}: {} (at {})\n  expected: {expected}\n  actual:   {} by {}: {}",
        case.line,
        case.column,
        case.name,
        case.pointer,
        a.verdict.as_str(),
        a.rule,
        a.reason
    );
    for m in &outcome.mismatches {
        text.push_str("\n  ");
        text.push_str(m);
    }
    text
}

/// The case files named: files as given, directories' `*.json` files sorted by name.
fn case_paths(given: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in given {
        if path.is_dir() {
            out.extend(json_files(path)?);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn json_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let context = || format!("cannot read the case directory {}", dir.display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(context)? {
        let path = entry.with_context(context)?.path();
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            files.push(path);
            anyhow::ensure!(
                files.len() <= MAX_CASE_FILES,
                "{} has more than {MAX_CASE_FILES} .json files; name the case files or a smaller directory",
                dir.display()
            );
        }
    }
    anyhow::ensure!(
        !files.is_empty(),
        "{} has no .json case files; name case files, or a directory that holds some",
        dir.display()
    );
    files.sort();
    Ok(files)
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
