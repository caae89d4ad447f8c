//! `toolgate check` and `toolgate explain`, run as the built binary.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/seed-policy.json"
);

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
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn check_summarises_a_valid_policy_and_exits_zero() {
    let o = toolgate(&["check", SEED]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let hash = toolgate::testing::policy::Policy::load(Path::new(SEED))
        .unwrap()
        .hash()[..6]
        .to_string();
    assert_eq!(
        out,
        format!("{SEED}: ok — default deny, 1 rule, 1 counter, hash {hash}\n")
    );
}

#[test]
fn check_prints_every_diagnostic_and_exits_one_for_an_invalid_policy() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.json",
        "{\n  \"version\": \"1\",\n  \"default\": \"maybe\",\n  \"tools\": {\"x\": {\"acton\": \"deny\"}}\n}\n",
    );
    let o = toolgate(&["check", SEED, &bad]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with(&format!("{SEED}: ok")));
    assert!(
        lines[1].starts_with(&format!(
            "{bad}:3:14: error: unknown default \"maybe\" (at /default)"
        )),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with(&format!("{bad}:4:19: error: unknown field \"acton\"")),
        "{}",
        lines[2]
    );
}

#[test]
fn check_reports_an_unreadable_file_and_exits_one() {
    let o = toolgate(&["check", "/nonexistent/policy.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("cannot read /nonexistent/policy.json"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn check_json_gives_one_object_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.json", "{\"version\": \"1\"}");
    let o = toolgate(&["check", "--json", SEED, &bad]);
    assert_eq!(o.status.code(), Some(1));
    let objects: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[0]["ok"], true);
    assert_eq!(objects[0]["default"], "deny");
    assert_eq!(objects[0]["rules"], 1);
    assert_eq!(objects[1]["ok"], false);
    let d = &objects[1]["diagnostics"][0];
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(d["message"].as_str().unwrap().contains("\"default\""));
}

#[test]
fn check_help_shows_an_example() {
    let o = toolgate(&["check", "--help"]);
    assert!(
        stdout(&o).contains("toolgate check policy.json"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn explain_repeat_json_shows_where_the_limit_starts_refusing() {
    let o = toolgate(&[
        "explain",
        "--policy",
        SEED,
        "--tool",
        "create_api_key",
        "--repeat",
        "31",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let calls: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), 31);
    for c in &calls[..30] {
        assert_eq!(c["decision"], "allow");
        assert_eq!(c["rule"], "/tools/create_api_key");
        assert!(c.get("retry_after_ms").is_none());
    }
    assert_eq!(calls[30]["decision"], "rate_limited");
    assert_eq!(calls[30]["rule"], "/tools/create_api_key/limits/0");
    assert_eq!(calls[30]["retry_after_ms"], 60_000);
    assert!(
        calls[30]["reason"]
            .as_str()
            .unwrap()
            .contains("create_api_key_rate")
    );
}

#[test]
fn explain_says_in_words_which_rule_decided_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "p.json",
        r#"{"version": "1", "default": "allow", "hide": ["secret_*"], "tools": {
            "send_*": {"action": "require_approval", "reason": "messages leave the company"},
            "send_mail_*": {"action": "deny", "reason": "use the outbox"},
            "transfer": {"require": [{"path": "args.amount", "op": "lte", "value": 100}]}
        }}"#,
    );
    let out = stdout(&toolgate(&[
        "explain",
        "--policy",
        &p,
        "--tool",
        "send_mail_now",
    ]));
    assert!(
        out.contains("2 globs match (/tools/send_mail_*, /tools/send_*)"),
        "{out}"
    );
    assert!(
        out.contains("deny, by /tools/send_mail_*: use the outbox"),
        "{out}"
    );
    assert!(
        out.contains("the agent reads: Denied by policy (/tools/send_mail_*): use the outbox"),
        "{out}"
    );

    let out = stdout(&toolgate(&[
        "explain", "--policy", &p, "--tool", "send_sms",
    ]));
    assert!(
        out.contains("hold for an operator's approval, by /tools/send_*"),
        "{out}"
    );
    assert!(out.contains("the call waits"), "{out}");
    assert!(!out.contains("the agent reads"), "{out}");

    let out = stdout(&toolgate(&[
        "explain",
        "--policy",
        &p,
        "--tool",
        "transfer",
        "--args",
        r#"{"amount": 500}"#,
    ]));
    assert!(out.contains("exactly this name (/tools/transfer)"), "{out}");
    assert!(
        out.contains("deny, by /tools/transfer/require/0: require not met: args.amount lte 100"),
        "{out}"
    );

    let out = stdout(&toolgate(&[
        "explain",
        "--policy",
        &p,
        "--tool",
        "secret_keys",
    ]));
    assert!(out.contains("hide entry \"secret_*\" (/hide/0)"), "{out}");
    assert!(
        out.contains("the agent reads: Unknown tool: secret_keys"),
        "{out}"
    );

    let out = stdout(&toolgate(&["explain", "--policy", &p, "--tool", "other"]));
    assert!(
        out.contains("the default decides (/default: allow)"),
        "{out}"
    );
}

#[test]
fn explain_scopes_use_the_given_grant_and_session() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "p.json",
        r#"{"version": "1", "default": "deny", "tools": {"t": {"limits": [
            {"counter": "c", "window": "hour", "max": 1, "scope": "session"}]}}}"#,
    );
    let out = stdout(&toolgate(&[
        "explain",
        "--policy",
        &p,
        "--tool",
        "t",
        "--session",
        "abc",
        "--repeat",
        "2",
    ]));
    assert!(out.contains("call 2: rate_limited"), "{out}");
    assert!(
        out.contains("counter c: 1/1 used per hour (session abc)"),
        "{out}"
    );
}

#[test]
fn explain_exits_two_on_bad_input() {
    let o = toolgate(&[
        "explain",
        "--policy",
        SEED,
        "--tool",
        "x",
        "--args",
        "{not json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--args is not valid JSON"),
        "{}",
        stderr(&o)
    );

    let o = toolgate(&["explain", "--policy", SEED, "--tool", "x", "--args", "[1]"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--args must be a JSON object"));

    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.json",
        "{\"version\": \"1\", \"default\": \"deny\", \"x\": 1}",
    );
    let o = toolgate(&["explain", "--policy", &bad, "--tool", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!("{bad}:1:37: error: unknown field \"x\"")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn explain_help_shows_an_example() {
    let o = toolgate(&["explain", "--help"]);
    assert!(stdout(&o).contains("toolgate explain --policy policy.json --tool create_api_key"));
}

fn paths_policy(dir: &Path) -> String {
    write(
        dir,
        "paths.json",
        r#"{"version": "1", "default": "deny", "tools": {
            "read_file": {
                "require": [{"path": "args.path", "op": "under", "value": "/home/me/notes"}],
                "deny_if": [{"path": "args.size", "op": "gt", "value": 1000}]
            }
        }}"#,
    )
}

#[test]
fn check_accepts_under_and_names_what_is_wrong_with_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let good = paths_policy(dir.path());
    let o = toolgate(&["check", &good]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let bad = write(
        dir.path(),
        "bad.json",
        "{\"version\": \"1\", \"default\": \"deny\", \"tools\": {\"t\": {\"require\": [\n  {\"path\": \"args.p\", \"op\": \"under\", \"value\": \"notes\"}]}}}",
    );
    let o = toolgate(&["check", &bad]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        format!(
            "{bad}:2:46: error: op \"under\" needs an absolute path as its value, found a relative path (\"notes\") (at /tools/t/require/0/value); write the directory from the root, like \"/home/me/notes\" (no ~, no relative paths: nothing is expanded)\n"
        )
    );
}

#[test]
fn explain_shows_each_condition_true_false_or_unknown_and_which_denies() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths_policy(dir.path());
    let explain = |args: &str, json: bool| {
        let mut argv = vec![
            "explain",
            "--policy",
            &p,
            "--tool",
            "read_file",
            "--args",
            args,
        ];
        if json {
            argv.push("--json");
        }
        let o = toolgate(&argv);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o)
    };

    let out = explain(
        r#"{"path": "/home/me/notes/../.ssh/id_ed25519", "size": "5000"}"#,
        false,
    );
    assert!(
        out.contains("  conditions, in the order they are checked (the first that denies decides):\n    /tools/read_file/deny_if/0: deny_if args.size gt 1000 → true: denies the call\n    /tools/read_file/require/0: require args.path under \"/home/me/notes\" → false: denies the call\n"),
        "{out}"
    );
    assert!(
        out.contains("deny, by /tools/read_file/deny_if/0: deny_if holds: args.size gt 1000"),
        "{out}"
    );

    let out = explain(r#"{"path": "notes/todo.md", "size": [1]}"#, false);
    assert!(
        out.contains("/tools/read_file/deny_if/0: deny_if args.size gt 1000 → unknown (args.size is an array; gt compares numbers): cannot be evaluated, so it denies the call"),
        "{out}"
    );
    assert!(
        out.contains("/tools/read_file/require/0: require args.path under \"/home/me/notes\" → unknown (args.path is a relative path; under needs an absolute path): cannot be evaluated, so it denies the call"),
        "{out}"
    );
    assert!(
        out.contains("the agent reads: Denied by policy (/tools/read_file/deny_if/0): deny_if args.size gt 1000 is unknown: args.size is an array; gt compares numbers: denied"),
        "{out}"
    );

    let out = explain(r#"{"path": "/home/me/notes/todo.md", "size": 10}"#, false);
    assert!(
        out.contains("deny_if args.size gt 1000 → false: passes"),
        "{out}"
    );
    assert!(
        out.contains("require args.path under \"/home/me/notes\" → true: passes"),
        "{out}"
    );
    assert!(out.contains("allow, by /tools/read_file"), "{out}");

    let out = explain(r#"{"path": "/etc/passwd", "size": [1]}"#, true);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(
        v["conditions"],
        serde_json::json!([
            {"pointer": "/tools/read_file/deny_if/0", "list": "deny_if",
             "condition": "args.size gt 1000", "outcome": "unknown", "denies": true,
             "why": "args.size is an array; gt compares numbers"},
            {"pointer": "/tools/read_file/require/0", "list": "require",
             "condition": "args.path under \"/home/me/notes\"", "outcome": "false",
             "denies": true}
        ])
    );
}

#[test]
fn explain_lists_no_conditions_when_the_arguments_are_never_looked_at() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "p.json",
        r#"{"version": "1", "default": "deny", "tools": {
            "t": {"action": "deny", "deny_if": [{"path": "args.a", "op": "exists"}]},
            "u": {}
        }}"#,
    );
    for tool in ["t", "u", "unnamed"] {
        let out = stdout(&toolgate(&["explain", "--policy", &p, "--tool", tool]));
        assert!(!out.contains("conditions"), "{tool}: {out}");
        let out = stdout(&toolgate(&[
            "explain", "--policy", &p, "--tool", tool, "--json",
        ]));
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert!(v.get("conditions").is_none(), "{tool}: {out}");
    }
}
