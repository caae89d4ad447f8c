//! Shadow rules and `--shadow-policy` end to end: the real `toolgate wrap` in front of the
//! real `mcp-server-time`, driven by the pinned Python `mcp` client. A shadow `deny_if` lets
//! the calls through while `toolgate tail` and the audit log say "would deny"; a candidate
//! policy's differences are reported the same way; a broken candidate changes nothing.
//!
//! Needs the peers installed by `scripts/setup-test-peers`; without them it fails, it does
//! not skip. The deadlines only keep a broken build from hanging.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;

use serde_json::{Value, json};
use support::agent::{Agent, wrap};
use support::lines::line_reader;
use support::peers::time_server;
use support::wait::wait_for;
use support::{ANSWER_WITHIN, Stopped, toolgate};

const POLICY: &str = r#"{"version": "1", "default": "allow",
  "tools": {"get_current_time": {"shadow": true, "reason": "UTC only from next week",
    "deny_if": [{"path": "args.timezone", "op": "neq", "value": "UTC"}]}}}"#;

/// A candidate that would hold every call of `get_current_time`.
const CANDIDATE: &str = r#"{"version": "1", "default": "allow",
  "tools": {"get_current_time": {"action": "require_approval"}}}"#;

fn start(dir: &Path, extra: &[&str]) -> Agent {
    Agent::stdio(
        "auto",
        &dir.join("stderr.log"),
        &wrap(dir, "e2e", extra, time_server()),
        &[("XDG_RUNTIME_DIR", dir), ("XDG_STATE_HOME", dir)],
    )
}

/// `toolgate tail` attached to the scenario's gateway (found by its discovery file), once it
/// showed the gateway's hello.
fn tail(dir: &Path) -> (Stopped, Receiver<String>) {
    let mut child: Child = Command::new(toolgate())
        .arg("tail")
        .env("XDG_RUNTIME_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("toolgate tail starts");
    let lines = line_reader(child.stdout.take().expect("tail's stdout"));
    lines
        .recv_timeout(ANSWER_WITHIN)
        .expect("tail shows the gateway first");
    (Stopped(child), lines)
}

/// The next tail line containing `needle`.
fn tail_line(lines: &Receiver<String>, needle: &str) -> String {
    wait_for(
        &format!("a tail line with {needle:?}"),
        ANSWER_WITHIN,
        || match lines.recv_timeout(ANSWER_WITHIN) {
            Ok(line) if line.contains(needle) => Ok(line),
            Ok(other) => Err(format!("last line: {other}")),
            Err(e) => Err(format!("tail ended or was silent: {e}")),
        },
    )
}

fn decisions(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "decision")
        .collect()
}

fn allowed(answer: &Value) -> bool {
    answer["is_error"] == false
}

#[test]
fn a_shadow_deny_if_lets_calls_through_while_tail_and_audit_say_would_deny() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.json"), POLICY).unwrap();
    let mut agent = start(dir.path(), &[]);
    // The first answer means the gateway is up, with its discovery file.
    let utc = agent.call("get_current_time", json!({"timezone": "UTC"}));
    assert!(allowed(&utc), "{utc}");
    let (_tail, lines) = tail(dir.path());

    let paris = agent.call("get_current_time", json!({"timezone": "Europe/Paris"}));
    assert!(allowed(&paris), "the shadow rule is not enforced: {paris}");
    let line = tail_line(&lines, "Europe/Paris");
    assert!(line.contains("✓ allow"), "{line}");
    assert!(
        line.contains(
            "(shadow rule /tools/get_current_time/deny_if/0: would deny: UTC only from next week"
        ),
        "{line}"
    );

    let records = wait_for("both decisions in the audit log", ANSWER_WITHIN, || {
        let d = decisions(dir.path());
        if d.len() >= 2 {
            Ok(d)
        } else {
            Err(format!("{d:?}"))
        }
    });
    assert_eq!(records[0]["decision"], "allow");
    assert!(
        records[0].get("shadow").is_none(),
        "no difference, no shadow: {}",
        records[0]
    );
    assert_eq!(records[1]["decision"], "allow");
    assert_eq!(records[1]["rule"], "/default");
    assert_eq!(
        records[1]["shadow"],
        json!({
            "decision": "deny",
            "rule": "/tools/get_current_time/deny_if/0",
            "reason": "UTC only from next week (deny_if holds: args.timezone neq \"UTC\")",
            "source": "rule"
        })
    );
    assert!(agent.close().success(), "{}", agent.log());
}

#[test]
fn a_shadow_policy_is_decided_beside_the_policy_and_a_broken_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.json"),
        r#"{"version": "1", "default": "allow"}"#,
    )
    .unwrap();
    let candidate = dir.path().join("candidate.json");
    std::fs::write(&candidate, "{ not a policy").unwrap();
    let shadow_arg = candidate.display().to_string();
    let mut agent = start(dir.path(), &["--shadow-policy", &shadow_arg]);

    let first = agent.call("get_current_time", json!({"timezone": "UTC"}));
    assert!(allowed(&first), "a broken candidate never refuses: {first}");
    let log = agent.log();
    assert!(
        log.contains("the shadow policy is not valid") && log.contains("candidate.json"),
        "{log}"
    );
    let (_tail, lines) = tail(dir.path());

    // Fixed, the candidate is watched in and decides beside the policy.
    std::fs::write(&candidate, CANDIDATE).unwrap();
    let line = wait_for("the candidate's would hold", ANSWER_WITHIN, || {
        let answer = agent.call("get_current_time", json!({"timezone": "UTC"}));
        if !allowed(&answer) {
            return Err(format!("the candidate was enforced: {answer}"));
        }
        let line = tail_line(&lines, "get_current_time");
        if line.contains("would hold") {
            Ok(line)
        } else {
            Err(line)
        }
    });
    assert!(line.contains("✓ allow"), "{line}");
    assert!(
        line.contains("(shadow policy /tools/get_current_time: would hold"),
        "{line}"
    );
    let last = decisions(dir.path());
    let shadowed = last
        .iter()
        .rev()
        .find(|r| r.get("shadow").is_some())
        .expect("an audit record with the shadow");
    assert_eq!(shadowed["decision"], "allow");
    assert_eq!(shadowed["shadow"]["source"], "policy");
    assert_eq!(shadowed["shadow"]["decision"], "hold");
    assert!(agent.close().success(), "{}", agent.log());
}
