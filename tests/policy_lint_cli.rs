//! `toolgate check --lint` on a corpus of policies (`tests/fixtures/lint/`): each mistake found,
//! placed and explained; clean policies (the seed policy included) give no warning.

use std::path::Path;
use std::process::{Command, Output};

fn lint_fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lint")
        .join(name)
        .display()
        .to_string()
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

/// The warning lines of `check --lint` for one policy, and its exit status.
fn warnings(policy: &str, with_tools: bool) -> (Option<i32>, Vec<String>) {
    let file = lint_fixture(policy);
    let tools = lint_fixture("tools.json");
    let mut args = vec!["check", "--lint", file.as_str()];
    if with_tools {
        args.extend(["--tools", tools.as_str()]);
    }
    let o = toolgate(&args);
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!("{file}: ok — ")),
        "the policy is valid and says so first: {out}{}",
        stderr(&o)
    );
    (
        o.status.code(),
        out.lines()
            .filter(|l| l.contains(": warning: "))
            .map(|l| l.replacen(&format!("{file}:"), "", 1))
            .collect(),
    )
}

#[test]
fn a_glob_that_a_tie_written_first_always_beats_is_reported() {
    let (code, lines) = warnings("glob_never_wins.json", false);
    assert_eq!(code, Some(3));
    assert_eq!(
        lines,
        vec![
            "7:14: warning: the glob rule \"get_?\" never decides a call: every tool it matches is decided by \"get_*\" (/tools/get_*), which is as specific and written first (at /tools/get_?); remove it, or make it name tools the other does not"
        ]
    );
}

#[test]
fn a_glob_behind_exact_keys_for_every_offered_tool_is_reported_when_the_tools_are_known() {
    let (code, lines) = warnings("glob_behind_exact_keys.json", false);
    assert_eq!((code, lines.len()), (Some(0), 0), "{lines:?}");
    let (code, lines) = warnings("glob_behind_exact_keys.json", true);
    assert_eq!(code, Some(3));
    assert_eq!(
        lines,
        vec![
            "5:15: warning: the glob rule \"read_*\" decides none of the server's tools it matches (\"read_file\", \"read_dir\"): a more specific key decides each (at /tools/read_*); remove it, or check that the more specific keys say what this rule meant"
        ]
    );
}

#[test]
fn rules_for_hidden_tools_are_reported() {
    let (code, lines) = warnings("hidden_rule.json", false);
    assert_eq!(code, Some(3));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("6:17: warning: the rule for \"shutdown\" is never read: /hide/1 hides every tool it names (at /tools/shutdown);"), "{lines:?}");
    assert!(lines[1].starts_with("7:21: warning: the rule for \"debug_dump_*\" is never read: /hide/0 hides every tool it names (at /tools/debug_dump_*);"), "{lines:?}");
}

#[test]
fn an_allowed_destructive_tool_without_a_limit_is_reported_when_the_tools_are_known() {
    let (code, lines) = warnings("destructive_unlimited.json", true);
    assert_eq!(code, Some(3));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("5:20: warning: the destructive tool \"delete_file\" is allowed with no limit (at /tools/delete_file); add a limit"),
        "{lines:?}"
    );
}

#[test]
fn clean_policies_give_no_warning_and_exit_zero() {
    for (policy, with_tools) in [("clean.json", true), ("clean.json", false)] {
        let (code, lines) = warnings(policy, with_tools);
        assert_eq!((code, lines), (Some(0), Vec::<String>::new()), "{policy}");
    }
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed-policy.json");
    let tools = lint_fixture("tools.json");
    let o = toolgate(&[
        "check",
        "--lint",
        "--tools",
        &tools,
        &seed.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(!stdout(&o).contains("warning"), "{}", stdout(&o));
}

#[test]
fn errors_win_over_warnings_in_the_exit_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"version": "1", "default": "maybe"}"#).expect("write");
    let o = toolgate(&[
        "check",
        "--lint",
        &lint_fixture("hidden_rule.json"),
        &bad.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains(": warning: "), "{}", stdout(&o));
}

#[test]
fn a_tools_file_that_is_not_a_scan_report_says_how_to_make_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tools = dir.path().join("tools.json");
    std::fs::write(&tools, r#"{"tools": 3}"#).expect("write");
    let o = toolgate(&[
        "check",
        "--tools",
        &tools.display().to_string(),
        &lint_fixture("clean.json"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("toolgate scan --json"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn conditions_the_input_schema_settles_are_reported_when_the_tools_are_known() {
    let (code, lines) = warnings("conditions_schema.json", false);
    assert_eq!((code, lines.len()), (Some(0), 0), "{lines:?}");
    let (code, lines) = warnings("conditions_schema.json", true);
    assert_eq!(code, Some(3));
    assert_eq!(
        lines,
        vec![
            "6:19: warning: deny_if args.ammount gt 10000 can never hold for \"transfer\", so it never denies: its input schema has no property \"ammount\" and allows no other (at /tools/transfer/deny_if/0); check the argument's name against the tool's input schema (toolgate scan --json)",
            "8:9: warning: require args.to exists can never fail for \"transfer\", so it checks nothing: its input schema requires \"to\" (at /tools/transfer/require/0); the server already requires it; remove the condition, or make it test the value",
        ]
    );
}

#[test]
fn json_output_carries_each_warning_with_its_pointer_and_position() {
    let file = lint_fixture("hidden_rule.json");
    let o = toolgate(&["check", "--json", "--lint", &file]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert_eq!(report["ok"], true);
    let warnings = report["warnings"].as_array().expect("a warnings array");
    assert_eq!(warnings.len(), 2, "{report}");
    assert_eq!(warnings[0]["pointer"], "/tools/shutdown");
    assert_eq!(
        (warnings[0]["line"].as_u64(), warnings[0]["column"].as_u64()),
        (Some(6), Some(17))
    );
}
