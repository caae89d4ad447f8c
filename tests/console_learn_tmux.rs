//! The review of a learned policy in a real terminal: the real `toolgate console
//! --review-learned` in tmux, on a draft the test writes (five proposals: three adds, a
//! removal, a tighten). Accept two, reject two, edit one (its limit), look at the what-if,
//! then the diff and `y`; the written policy is exactly what was chosen, in the base's key
//! order, and `toolgate check` accepts it.
//!
//! Needs `tmux`; without it the test fails, it does not skip. The deadlines only keep a
//! broken build from hanging.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::ANSWER_WITHIN;
use support::tmux::Tmux;

const BASE: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "notes_search": {
      "limits": [ { "counter": "notes_search", "window": "minute", "max": 1000 } ]
    },
    "notes_export": {}
  }
}
"#;

fn obs(at: &str, tool: &str, args: Value) -> Value {
    json!({
        "at": at, "server": "notes", "tool": tool, "grant": null,
        "decision": "allow", "approved": null, "args": args
    })
}

fn draft() -> Value {
    let get_time = json!({
        "reason": "3 calls; peak 2 a minute",
        "limits": [ { "counter": "get_time", "window": "minute", "max": 4, "scope": "grant" } ],
        "require": [ { "path": "args.timezone", "op": "in", "value": ["UTC", "Europe/Paris"] } ]
    });
    let notes_read = json!({
        "reason": "3 calls; paths under /srv/notes",
        "limits": [ { "counter": "notes_read", "window": "minute", "max": 5, "scope": "grant" } ],
        "require": [ { "path": "args.path", "op": "under", "value": "/srv/notes" } ]
    });
    json!({
        "base": BASE,
        "proposals": [
            { "kind": "add", "tool": "get_time", "rule": get_time, "current": null,
              "reason": "3 calls; peak 2 a minute", "evidence": ["args.timezone: UTC, Europe/Paris"] },
            { "kind": "remove", "tool": "notes_export", "rule": null, "current": {},
              "reason": "allowed, never called in 7 days", "evidence": [] },
            { "kind": "add", "tool": "notes_read", "rule": notes_read, "current": null,
              "reason": "3 calls; paths under /srv/notes", "evidence": ["args.path: under /srv/notes"] },
            { "kind": "tighten", "tool": "notes_search",
              "rule": { "limits": [ { "counter": "notes_search", "window": "minute", "max": 6 } ] },
              "current": { "limits": [ { "counter": "notes_search", "window": "minute", "max": 1000 } ] },
              "reason": "peak 3 a minute; the limit allows 1000", "evidence": [] },
            { "kind": "add", "tool": "notes_write",
              "rule": { "action": "require_approval" }, "current": null,
              "reason": "1 call, approved by a person", "evidence": [] }
        ],
        "observations": [
            obs("2026-12-06T09:00:00Z", "get_time", json!({"timezone": "UTC"})),
            obs("2026-12-06T09:00:20Z", "get_time", json!({"timezone": "Europe/Paris"})),
            obs("2026-12-06T09:02:00Z", "get_time", json!({"timezone": "UTC"})),
            obs("2026-12-06T09:00:05Z", "notes_read", json!({"path": "/srv/notes/a.md"})),
            obs("2026-12-06T09:00:06Z", "notes_read", json!({"path": "/srv/notes/b.md"})),
            obs("2026-12-06T09:00:07Z", "notes_read", json!({"path": "/srv/notes/c.md"})),
            obs("2026-12-06T09:00:08Z", "notes_search", json!({"query": "plan"})),
            obs("2026-12-06T09:00:30Z", "notes_write", json!({"path": "/srv/notes/a.md"}))
        ]
    })
}

#[test]
fn a_learned_policy_is_reviewed_proposal_by_proposal_and_written_as_chosen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = dir.path().join("run");
    support::private_dir(&runtime);
    let state = dir.path().join("state");
    let policy = dir.path().join("policy.json");
    let draft_path = dir.path().join("draft.json");
    std::fs::write(&policy, BASE).expect("policy");
    std::fs::write(&draft_path, draft().to_string()).expect("draft");
    let log = dir.path().join("console.log");
    let args = [
        "console",
        "--log",
        &log.display().to_string(),
        "--review-learned",
        &draft_path.display().to_string(),
        "--policy",
        &policy.display().to_string(),
    ]
    .map(|a| a.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let term = Tmux::start(
        support::toolgate(),
        &args,
        dir.path(),
        (160, 50),
        &[("XDG_RUNTIME_DIR", &runtime), ("XDG_STATE_HOME", &state)],
    )
    .showing_log(&log);

    term.wait_for("the first proposal", ANSWER_WITHIN, |s| {
        s.contains("proposal 1 of 5") && s.contains("add a rule get_time")
    });
    term.send(&["a"]);
    term.wait_for("the removal", ANSWER_WITHIN, |s| {
        s.contains("proposal 2 of 5") && s.contains("remove the rule")
    });
    term.send(&["r"]);
    term.wait_for("notes_read", ANSWER_WITHIN, |s| {
        s.contains("proposal 3 of 5") && s.contains("notes_read")
    });
    // Edit: the limit's max (Action, Reason, Timeout, Counter, Window, Max) becomes 9.
    term.send(&["e"]);
    term.wait_for("the rule editor", ANSWER_WITHIN, |s| {
        s.contains("Rule notes_read") && s.contains("C-s accept as edited")
    });
    term.send(&["Tab", "Tab", "Tab", "Tab", "Tab", "C-u", "9"]);
    term.wait_for("the new max typed", ANSWER_WITHIN, |s| {
        s.contains("max [9 ") && s.contains("✓ valid")
    });
    term.send(&["C-s"]);
    term.wait_for("the tighten, before and after", ANSWER_WITHIN, |s| {
        s.contains("proposal 4 of 5")
            && s.contains("The policy's rule now")
            && s.contains("Proposed instead")
    });
    term.send(&["a"]);
    term.wait_for("the last proposal", ANSWER_WITHIN, |s| {
        s.contains("proposal 5 of 5") && s.contains("notes_write")
    });
    term.send(&["r"]);
    // The what-if's lines are drawn after its heading: waiting for the heading alone could
    // capture the screen between the two (seen once in CI, under load).
    let summary = term.wait_for("the summary and its what-if", ANSWER_WITHIN, |s| {
        s.contains("summary")
            && s.contains("re-decides the 8 recorded calls")
            && s.contains("would be refused")
    });
    assert!(
        summary.contains("3 accepted (1 edited, 0 widened) · 2 rejected · 0 skipped"),
        "{summary}"
    );
    assert!(
        summary.contains("1 would be refused, each as you chose")
            && summary.contains("you rejected its tool's proposal"),
        "rejecting notes_write refuses its one recorded call, and says so: {summary}"
    );
    assert_eq!(
        std::fs::read_to_string(&policy).expect("policy"),
        BASE,
        "nothing is written before y"
    );

    term.send(&["Enter"]);
    term.wait_for("the diff and the question", ANSWER_WITHIN, |s| {
        s.contains("y writes") && s.contains("+    \"get_time\"")
    });
    term.send(&["y"]);
    term.wait_for("the write", ANSWER_WITHIN, |s| s.contains("wrote "));

    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&policy).expect("policy")).expect("JSON");
    let expected = json!({
        "version": "1",
        "default": "deny",
        "tools": {
            "notes_search": { "limits": [ { "counter": "notes_search", "window": "minute", "max": 6 } ] },
            "notes_export": {},
            "get_time": draft()["proposals"][0]["rule"],
            "notes_read": {
                "reason": "3 calls; paths under /srv/notes",
                "limits": [ { "counter": "notes_read", "window": "minute", "max": 9 } ],
                "require": [ { "path": "args.path", "op": "under", "value": "/srv/notes" } ]
            }
        }
    });
    assert_eq!(written, expected, "the written policy is what was chosen");
    let keys: Vec<&str> = written["tools"]
        .as_object()
        .expect("tools")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["notes_search", "notes_export", "get_time", "notes_read"],
        "the base's order kept, the accepted rules after it"
    );
    let check = Command::new(support::toolgate())
        .arg("check")
        .arg(&policy)
        .output()
        .expect("toolgate check");
    assert!(
        check.status.success(),
        "toolgate check accepts the written policy: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // The choices are written: q quits without asking.
    term.send(&["q"]);
    assert_eq!(
        term.exit_status(ANSWER_WITHIN),
        Some(0),
        "{}",
        term.screen()
    );
}

#[test]
fn with_shadow_the_result_is_a_new_candidate_beside_the_policy_which_stays_as_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = dir.path().join("run");
    support::private_dir(&runtime);
    let state = dir.path().join("state");
    let policy = dir.path().join("policy.json");
    let draft_path = dir.path().join("draft.json");
    std::fs::write(&policy, BASE).expect("policy");
    std::fs::write(&draft_path, draft().to_string()).expect("draft");
    let log = dir.path().join("console.log");
    let args = [
        "console".to_owned(),
        "--log".to_owned(),
        log.display().to_string(),
        "--review-learned".to_owned(),
        draft_path.display().to_string(),
        "--policy".to_owned(),
        policy.display().to_string(),
        "--shadow".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let term = Tmux::start(
        support::toolgate(),
        &args,
        dir.path(),
        (160, 50),
        &[("XDG_RUNTIME_DIR", &runtime), ("XDG_STATE_HOME", &state)],
    )
    .showing_log(&log);
    term.wait_for("the first proposal", ANSWER_WITHIN, |s| {
        s.contains("proposal 1 of 5")
    });
    for n in 2..=5 {
        term.send(&["a"]);
        term.wait_for("the next proposal", ANSWER_WITHIN, |s| {
            s.contains(&format!("proposal {n} of 5"))
        });
    }
    term.send(&["a"]);
    term.wait_for("the summary", ANSWER_WITHIN, |s| {
        s.contains("policy.shadow.json (shadow candidate)") && s.contains("0 would be refused")
    });
    term.send(&["Enter"]);
    term.wait_for("the diff of a new file", ANSWER_WITHIN, |s| {
        s.contains("y writes") && s.contains("+  \"default\": \"deny\",")
    });
    term.send(&["y"]);
    term.wait_for("the write and how to try it", ANSWER_WITHIN, |s| {
        s.contains("--shadow-policy")
    });
    let candidate = dir.path().join("policy.shadow.json");
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&candidate).expect("candidate"))
            .expect("JSON");
    assert!(written["tools"].get("notes_export").is_none(), "{written}");
    assert_eq!(
        written["tools"]["notes_search"]["limits"][0]["max"], 6,
        "{written}"
    );
    assert_eq!(
        std::fs::read_to_string(&policy).expect("policy"),
        BASE,
        "the enforced policy is untouched"
    );
    let check = Command::new(support::toolgate())
        .arg("check")
        .arg(&candidate)
        .output()
        .expect("toolgate check");
    assert!(check.status.success(), "{check:?}");
    term.send(&["q"]);
    assert_eq!(
        term.exit_status(ANSWER_WITHIN),
        Some(0),
        "{}",
        term.screen()
    );
}

#[test]
fn a_file_that_is_not_a_learned_draft_is_refused_with_a_clear_error_before_the_terminal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("draft.json");
    std::fs::write(&bad, r#"{"proposals": "all of them"}"#).expect("draft");
    let policy = dir.path().join("policy.json");
    let out = Command::new(support::toolgate())
        .arg("console")
        .arg("--log")
        .arg(dir.path().join("console.log"))
        .arg("--review-learned")
        .arg(&bad)
        .arg("--policy")
        .arg(&policy)
        .output()
        .expect("toolgate console");
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a draft written by `toolgate learn --proposals`")
            && stderr.contains("draft.json"),
        "{stderr}"
    );
    assert!(!policy.exists(), "nothing written");

    let without_policy = Command::new(support::toolgate())
        .args(["console", "--review-learned"])
        .arg(&bad)
        .output()
        .expect("toolgate console");
    assert_eq!(
        without_policy.status.code(),
        Some(2),
        "clap refuses it: {without_policy:?}"
    );
    assert!(
        String::from_utf8_lossy(&without_policy.stderr).contains("--policy"),
        "{without_policy:?}"
    );
}
