//! `toolgate test` (policy test cases on a virtual clock, JUnit output) and `toolgate check`
//! on case files, run as the built binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
        .display()
        .to_string()
}

fn policy() -> String {
    fixture("policy_tests/policy.json")
}

fn toolgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(args)
        .output()
        .expect("run toolgate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a case file");
    path.display().to_string()
}

/// Validates `xml` against the public JUnit schema (Jenkins' xunit plugin's `junit-10.xsd`)
/// that `scripts/setup-test-peers` puts in `tests/peers/junit/`, with Debian's `xmllint`
/// (installed by the same script); a missing schema or xmllint fails.
fn assert_valid_junit(xml: &Path) {
    let schema: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/junit/junit-10.xsd");
    assert!(
        schema.is_file(),
        "the JUnit schema is missing: run scripts/setup-test-peers ({})",
        schema.display()
    );
    let o = Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(&schema)
        .arg(xml)
        .output()
        .expect("xmllint is missing: run scripts/setup-test-peers (Debian libxml2-utils)");
    assert!(
        o.status.success(),
        "the JUnit report does not validate against {}:\n{}\n{}",
        schema.display(),
        stderr(&o),
        std::fs::read_to_string(xml).unwrap_or_default()
    );
}

#[test]
fn passing_cases_exit_zero_with_a_summary_line() {
    let o = toolgate(&["test", &policy(), &fixture("policy_tests/cases")]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("8 cases against {}: 8 passed, 0 failed\n", policy())
    );
}

#[test]
fn limits_are_decided_on_a_virtual_clock_not_by_sleeping() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Thirty calls fill the minute; the 31st at +59 s is limited, one at +61 s is allowed
    // again: both only hold if `at` moves the clock the limits are counted on.
    let cases = write(
        dir.path(),
        "clock.json",
        r#"{"cases": [
  {"name": "31st within the minute", "calls": [
     {"tool": "create_api_key", "repeat": 30},
     {"tool": "create_api_key", "at": "59s"}],
   "expect": {"decision": "rate_limited", "rule": "/tools/create_api_key/limits/0", "reason_contains": "30 calls per minute"}},
  {"name": "room again after the window", "calls": [
     {"tool": "create_api_key", "repeat": 30},
     {"tool": "create_api_key", "at": "59s"},
     {"tool": "create_api_key", "at": 61}],
   "expect": {"decision": "allow"}},
  {"name": "wrongly expects room at +59 s", "calls": [
     {"tool": "create_api_key", "repeat": 30},
     {"tool": "create_api_key", "at": "59s"}],
   "expect": {"decision": "allow"}}
]}"#,
    );
    let started = std::time::Instant::now();
    let o = toolgate(&["test", &policy(), &cases]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(59),
        "a minute of virtual time must not be waited for"
    );
    assert!(out.contains("FAIL "), "{out}");
    assert!(out.contains("wrongly expects room at +59 s"), "{out}");
    assert!(!out.contains("31st within the minute"), "{out}");
    assert!(!out.contains("room again after the window"), "{out}");
    assert!(
        out.ends_with(&format!(
            "3 cases against {}: 2 passed, 1 failed\n",
            policy()
        )),
        "{out}"
    );
}

#[test]
fn a_failure_shows_expected_and_actual_with_the_deciding_rule_and_exits_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = write(
        dir.path(),
        "wrong.json",
        "{\"cases\": [\n  {\"name\": \"deletes are allowed\", \"call\": {\"tool\": \"delete_account\"},\n   \"expect\": {\"decision\": \"allow\", \"rule\": \"/tools/delete_account\", \"reason_contains\": \"fine\"}}\n]}\n",
    );
    let o = toolgate(&["test", &policy(), &cases]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let expected = format!(
        "FAIL {cases}:2:3: deletes are allowed (at /cases/0)
  expected: allow by /tools/delete_account, reason containing \"fine\"
  actual:   deny by /tools/delete_account: deleting accounts needs a person
  decision: expected allow, got deny
  reason: expected it to contain \"fine\", got \"deleting accounts needs a person\"
1 case against {}: 0 passed, 1 failed
",
        policy()
    );
    assert_eq!(stdout(&o), expected);
}

#[test]
fn junit_report_validates_against_the_junit_schema_with_failures_and_hostile_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = write(
        dir.path(),
        "mixed.json",
        r#"{"cases": [
  {"name": "no deletes", "call": {"tool": "delete_account"}, "expect": {"decision": "deny"}},
  {"name": "</testcase><testcase name=\"injected\"/> & \u001b[31m\u0000", "call": {"tool": "format_disk"},
   "expect": {"decision": "allow", "reason_contains": "]]> <x/>"}}
]}"#,
    );
    let report = dir.path().join("report.xml");
    let o = toolgate(&[
        "test",
        &policy(),
        &cases,
        "--junit",
        &report.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert_valid_junit(&report);
    let xml = std::fs::read_to_string(&report).expect("the report was written");
    assert_eq!(xml.matches("<testcase ").count(), 2, "{xml}");
    assert_eq!(xml.matches("<failure ").count(), 1, "{xml}");
    assert!(!xml.contains("name=\"injected\""), "{xml}");
    assert!(
        xml.contains("<testsuites name=\"toolgate test\" tests=\"2\" failures=\"1\""),
        "{xml}"
    );
}

#[test]
fn junit_report_of_a_passing_run_validates_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.xml");
    let o = toolgate(&[
        "test",
        &policy(),
        &fixture("policy_tests/cases"),
        "--junit",
        &report.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_valid_junit(&report);
    let xml = std::fs::read_to_string(&report).expect("the report was written");
    assert_eq!(
        xml.matches("<testsuite ").count(),
        2,
        "one suite per case file: {xml}"
    );
    assert_eq!(xml.matches("<testcase ").count(), 8, "{xml}");
    assert!(!xml.contains("<failure"), "{xml}");
}

#[test]
fn an_invalid_case_file_runs_nothing_and_exits_two() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = write(
        dir.path(),
        "good.json",
        r#"{"cases": [{"name": "x", "call": {"tool": "delete_account"}, "expect": {"decision": "deny"}}]}"#,
    );
    let bad = write(
        dir.path(),
        "bad.json",
        "{\"cases\": [\n  {\"name\": \"x\", \"call\": {\"tool\": \"a\", \"at\": \"soon\"},\n   \"expect\": {\"decision\": \"denied\"}}\n]}\n",
    );
    let o = toolgate(&["test", &policy(), &good, &bad]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("{bad}:2:45: error: \"at\" must be a whole number of seconds or a duration, found \"soon\" (at /cases/0/call/at)")), "{out}");
    assert!(out.contains(&format!("{bad}:3:27: error: unknown decision \"denied\" (at /cases/0/expect/decision); expected one of: allow, deny, rate_limited, hold")), "{out}");
    assert!(!out.contains("passed"), "{out}");
}

#[test]
fn check_validates_case_files_with_positions_and_pointers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = write(
        dir.path(),
        "cases.json",
        "{\"cases\": [\n  {\"name\": \"a\", \"calls\": [{\"tool\": \"t\", \"at\": 10}, {\"tool\": \"t\", \"at\": 5, \"repat\": 2}],\n   \"expect\": {\"decision\": \"allow\", \"rule\": \"tools/t\"}}\n]}\n",
    );
    let o = toolgate(&["check", &fixture("policy_tests/cases/rules.json"), &bad]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    let expected = format!(
        "{}: ok — case file, 5 cases
{bad}:2:72: error: \"at\" is 5 s, before the call it follows (10 s) (at /cases/0/calls/1/at); calls run in order: each one's \"at\" is the same as the one before or later
{bad}:2:75: error: unknown field \"repat\" in a call (at /cases/0/calls/1/repat); expected one of: tool, args, grant, session, at, repeat
{bad}:3:44: error: \"rule\" \"tools/t\" is not a JSON Pointer (at /cases/0/expect/rule); a pointer into the policy starts with /, e.g. \"/tools/create_api_key/limits/0\" or \"/default\"
",
        fixture("policy_tests/cases/rules.json")
    );
    assert_eq!(out, expected);
}

#[test]
fn a_directory_without_case_files_is_an_error_that_says_what_to_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let o = toolgate(&["test", &policy(), &dir.path().display().to_string()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("has no .json case files"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_run_of_more_calls_than_its_bound_runs_nothing_and_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 101 cases of 100,000 calls each: every case within its own bound, the run beyond 10M.
    let case = r#"{"name": "N", "call": {"tool": "create_api_key", "repeat": 100000}, "expect": {"decision": "allow"}}"#;
    let cases: Vec<String> = (0..101)
        .map(|i| case.replace('N', &format!("flood {i}")))
        .collect();
    let file = write(
        dir.path(),
        "flood.json",
        &format!("{{\"cases\": [{}]}}", cases.join(",")),
    );
    let o = toolgate(&["test", &policy(), &file]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("10100000 calls in all"),
        "{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains("passed"), "{}", stdout(&o));
}
