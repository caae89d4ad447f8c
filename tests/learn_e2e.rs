//! Learn mode end to end, with real peers: the pinned Python `mcp` client calls the npm
//! `server-filesystem` through `toolgate wrap --learn` (and through `toolgate serve --learn`
//! under two grants); `toolgate learn` then proposes a draft from what was recorded, which
//! `toolgate check` accepts, which allows every recorded call (what-if: zero refused), and
//! which `toolgate explain` shows refusing a tool never used, a number far outside the
//! observed range and a path outside the observed directory. Secrets are recorded as their
//! type only, and `--forget` erases the records.
//!
//! The peers are installed by `scripts/setup-test-peers`; without them these tests fail
//! (they never skip).

mod counters_support;
#[path = "serve_support/running.rs"]
mod running;

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use counters_support::{RedisServer, unique_prefix};
use running::{Serve, Setup};
use serde_json::{Value, json};
use support::agent::Agent;
use support::peers::peer;
use support::tmux::Tmux;
use support::wait::wait_for;
use support::{ANSWER_WITHIN, toolgate};

/// Lets every call through: what is learned is what the agent did.
const ALLOW_ALL: &str = r#"{"version":"1","default":"allow"}"#;
/// A credential-shaped value sent in an argument: it must never be stored.
const SECRET: &str = "sk-live0123456789abcdefghijklmnop";

/// The notes directory the server may read, with a few files.
fn notes(dir: &Path) -> PathBuf {
    let notes = dir.join("notes");
    std::fs::create_dir_all(notes.join("2026")).unwrap();
    for (name, text) in [
        ("a.md", "one\ntwo\nthree\n"),
        ("b.md", "alpha\nbeta\n"),
        ("2026/c.md", "december\n"),
    ] {
        std::fs::write(notes.join(name), text).unwrap();
    }
    // The server resolves symlinks (a temporary directory may be behind one).
    notes.canonicalize().unwrap()
}

fn filesystem(root: &Path) -> Vec<String> {
    vec![
        "node".into(),
        peer("node_modules/.bin/mcp-server-filesystem")
            .display()
            .to_string(),
        root.display().to_string(),
    ]
}

fn run(args: &[&str]) -> Output {
    Command::new(toolgate())
        .args(args)
        .output()
        .expect("run toolgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `toolgate explain` of one call against `policy` as `grant`: the decision's verdict.
fn verdict(policy: &Path, grant: &str, tool: &str, args: Value) -> String {
    let out = run(&[
        "explain",
        "--policy",
        &policy.display().to_string(),
        "--tool",
        tool,
        "--args",
        &args.to_string(),
        "--grant",
        grant,
        "--json",
    ]);
    let line = text(&out.stdout);
    let decided: Value = serde_json::from_str(line.lines().next().unwrap_or_default())
        .unwrap_or_else(|_| panic!("explain answered {line:?}; stderr {}", text(&out.stderr)));
    decided["decision"].as_str().unwrap_or_default().to_owned()
}

/// Waits until `toolgate learn` reads `calls` recorded calls from `counters`, and answers
/// its proposals file (the draft, its base and the observations used).
fn learned(counters: &[String], server: &str, calls: usize, out: &Path) -> (Output, Value) {
    let proposals = out.with_extension("proposals.json");
    wait_for(
        &format!("{calls} recorded calls of {server} read by toolgate learn"),
        ANSWER_WITHIN,
        || {
            let mut args = vec!["learn"];
            args.extend(counters.iter().map(String::as_str));
            let output = run(&[
                &args[..],
                &[
                    "--server",
                    server,
                    "--force",
                    "--output",
                    &out.display().to_string(),
                    "--proposals",
                    &proposals.display().to_string(),
                ],
            ]
            .concat());
            let draft: Value = std::fs::read_to_string(&proposals)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null);
            let seen = draft["observations"].as_array().map_or(0, Vec::len);
            if output.status.success() && seen == calls {
                Ok((output, draft))
            } else {
                Err(format!(
                    "{seen} observations; exit {:?}; stderr:\n{}",
                    output.status.code(),
                    text(&output.stderr)
                ))
            }
        },
    )
}

#[test]
fn wrap_learn_records_calls_and_learn_proposes_a_draft_that_allows_them_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let counters = dir.path().join("counters.sqlite3");
    wrap_learn_then_learn(
        &dir,
        &["--counters".into(), counters.display().to_string()],
        Mode::Flag,
    );
    // Beside the counter file, private.
    let file = dir.path().join("counters.learn.sqlite3");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn with_redis_counters_the_observations_live_in_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    wrap_learn_then_learn(
        &dir,
        &[
            "--counters".into(),
            redis.url(),
            "--counters-prefix".into(),
            unique_prefix("learn"),
        ],
        Mode::Policy,
    );
    assert!(
        !dir.path().join("counters.learn.sqlite3").exists()
            && !dir
                .path()
                .join("toolgate")
                .join("counters.learn.sqlite3")
                .exists(),
        "nothing recorded on disk"
    );
}

/// How learn mode is turned on.
enum Mode {
    /// `--learn`.
    Flag,
    /// `"learn": true` in the policy.
    Policy,
}

/// Allows every call but one tool, which a person approves: its observation says so.
const ONE_HELD: &str = r#""tools": {"list_allowed_directories": {"action": "require_approval"}}"#;

/// The audit log's held calls' ids, once there are `n`.
fn held_calls(dir: &Path, n: usize) -> Vec<String> {
    wait_for(
        &format!("{n} held call(s) in the audit log"),
        ANSWER_WITHIN,
        || {
            let ids: Vec<String> = std::fs::read_to_string(dir.join("audit.jsonl"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|r| r["decision"] == "hold")
                .filter_map(|r| r["call_id"].as_str().map(str::to_owned))
                .collect();
            if ids.len() >= n {
                Ok(ids)
            } else {
                Err(format!("{} so far", ids.len()))
            }
        },
    )
}

/// Calls through `wrap` in learn mode with `counters` (the `--counters` options), one held
/// and approved; then proposes, checks and explains the draft, and forgets the records.
fn wrap_learn_then_learn(dir: &tempfile::TempDir, counters: &[String], mode: Mode) {
    let root = notes(dir.path());
    let policy = match mode {
        Mode::Flag => format!(r#"{{"version":"1","default":"allow",{ONE_HELD}}}"#),
        Mode::Policy => {
            format!(r#"{{"version":"1","default":"allow","learn":true,{ONE_HELD}}}"#)
        }
    };
    std::fs::write(dir.path().join("policy.json"), policy).unwrap();
    let mut gateway = vec![toolgate().display().to_string(), "wrap".into()];
    for (flag, value) in [
        ("--policy", dir.path().join("policy.json")),
        ("--audit", dir.path().join("audit.jsonl")),
    ] {
        gateway.push(flag.into());
        gateway.push(value.display().to_string());
    }
    gateway.extend(counters.iter().cloned());
    gateway.extend(["--grant", "laptop", "--server-id", "fs"].map(String::from));
    if let Mode::Flag = mode {
        gateway.push("--learn".into());
    }
    gateway.push("--".into());
    gateway.extend(filesystem(&root));
    let mut agent = Agent::stdio(
        "legacy",
        &dir.path().join("stderr.log"),
        &gateway,
        &[
            ("XDG_RUNTIME_DIR", dir.path()),
            ("XDG_STATE_HOME", dir.path()),
        ],
    );
    let file = |name: &str| root.join(name).display().to_string();
    let mut calls = 0;
    for (name, head) in [("a.md", 1), ("b.md", 2), ("2026/c.md", 1), ("a.md", 3)] {
        let answer = agent.call("read_text_file", json!({"path": file(name), "head": head}));
        assert_eq!(answer["is_error"], json!(false), "{answer}");
        calls += 1;
    }
    for path in [file(""), file("2026")] {
        let answer = agent.call("list_directory", json!({"path": path}));
        assert_eq!(answer["is_error"], json!(false), "{answer}");
        calls += 1;
    }
    // A secret-looking key and a credential-shaped value: recorded as their type only.
    agent.call(
        "get_file_info",
        json!({"path": file("b.md"), "apiKey": "hunter2-hunter2", "note": SECRET}),
    );
    calls += 1;
    // A held call, approved by a person.
    agent.start_call("list_allowed_directories", json!({}));
    let held = held_calls(dir.path(), 1);
    let approve = Command::new(toolgate())
        .args(["approve", &held[0]])
        .env("XDG_RUNTIME_DIR", dir.path())
        .output()
        .unwrap();
    assert!(approve.status.success(), "{approve:?}");
    let answer = agent.answer();
    assert_eq!(answer["is_error"], json!(false), "{answer}");
    calls += 1;
    assert!(agent.close().success(), "log:\n{}", agent.log());

    let draft_path = dir.path().join("draft.json");
    let (output, draft) = learned(counters, "fs", calls, &draft_path);
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "what-if: 0 of {calls} recorded calls would be refused"
        )),
        "{stderr}"
    );

    // What was stored: values, except the secrets, which are their type only.
    let stored = draft["observations"].to_string();
    assert!(!stored.contains("hunter2"), "{stored}");
    assert!(!stored.contains(SECRET), "{stored}");
    let info = draft["observations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["tool"] == "get_file_info")
        .unwrap();
    assert_eq!(info["args"]["apiKey"], json!({"$toolgate_type": "string"}));
    assert_eq!(info["args"]["note"], json!({"$toolgate_type": "string"}));
    assert_eq!(info["args"]["path"], json!(file("b.md")));
    assert_eq!(info["grant"], json!("laptop"));
    assert_eq!(info["server"], json!("fs"));
    let approved = draft["observations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["tool"] == "list_allowed_directories")
        .unwrap();
    assert_eq!(
        (&approved["decision"], &approved["approved"]),
        (&json!("hold"), &json!(true))
    );

    // The draft passes `check`, and each rule says what it was learned from.
    let check = run(&["check", &draft_path.display().to_string()]);
    assert!(check.status.success(), "{}", text(&check.stdout));
    let policy: Value =
        serde_json::from_str(&std::fs::read_to_string(&draft_path).unwrap()).unwrap();
    assert_eq!(policy["default"], json!("deny"));
    let read = &policy["tools"]["read_text_file"];
    let reason = read["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("4 calls from 1 grant over")
            && reason.contains("(laptop 4)")
            && reason.contains(&format!("path under {}", root.display())),
        "{reason}"
    );

    // It allows what was seen and refuses what was not.
    let allowed = |tool: &str, args: Value| verdict(&draft_path, "laptop", tool, args);
    assert_eq!(
        allowed("read_text_file", json!({"path": file("b.md"), "head": 2})),
        "allow"
    );
    assert_eq!(
        allowed("write_file", json!({"path": file("a.md"), "content": "x"})),
        "deny",
        "a tool never used"
    );
    assert_eq!(
        allowed(
            "read_text_file",
            json!({"path": file("a.md"), "head": 100_000})
        ),
        "deny",
        "a number far outside the observed range"
    );
    assert_eq!(
        allowed("read_text_file", json!({"path": "/etc/passwd", "head": 1})),
        "deny",
        "a path outside the observed directory"
    );
    assert_eq!(
        allowed("list_directory", json!({"path": "/etc"})),
        "deny",
        "a directory outside the observed one"
    );

    let with_counters = |rest: &[&str]| {
        let mut args = vec!["learn"];
        args.extend(counters.iter().map(String::as_str));
        args.extend(rest);
        run(&args)
    };
    // An existing draft is kept unless --force.
    let again = with_counters(&[
        "--server",
        "fs",
        "--output",
        &draft_path.display().to_string(),
    ]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("exists; not overwriting it"),
        "{}",
        text(&again.stderr)
    );
    // Against the policy in force: the tools it leaves to its default are added, as a diff.
    let base = dir.path().join("policy.json").display().to_string();
    let revised = dir.path().join("revised.json").display().to_string();
    let against = with_counters(&["--server", "fs", "--against", &base, "--output", &revised]);
    let diff = text(&against.stderr);
    assert!(against.status.success(), "{diff}");
    assert!(diff.contains(&format!("--- {base}")), "{diff}");
    assert!(diff.contains("+ \"read_text_file\": {"), "{diff}");
    assert!(
        diff.contains(
            "- \"list_allowed_directories\": {\"action\":\"require_approval\"}\n\
             + \"list_allowed_directories\": {\"action\":\"require_approval\","
        ),
        "a held tool stays held when tightened: {diff}"
    );
    assert!(
        diff.contains("note: the policy's default lets tools"),
        "{diff}"
    );
    assert!(
        diff.contains(&format!("what-if: 0 of {calls} recorded calls")),
        "{diff}"
    );
    let check = run(&["check", &revised]);
    assert!(check.status.success(), "{}", text(&check.stdout));

    // `--review`: the console walks the proposals; accepting every one and writing with `y`
    // gives the same policy as the draft written by --output.
    review_accepting_everything(dir.path(), counters, &draft_path);

    // `--forget` erases them.
    let forget = with_counters(&["--forget", "--server", "fs"]);
    assert!(
        text(&forget.stdout).contains(&format!("forgot {calls} recorded call(s) of server fs")),
        "{}",
        text(&forget.stdout)
    );
    let after = with_counters(&["--server", "fs"]);
    assert_eq!(after.status.code(), Some(1));
    assert!(
        text(&after.stderr).contains("no recorded calls"),
        "{}",
        text(&after.stderr)
    );
}

#[test]
fn serve_learn_records_two_grants_whose_peaks_appear_in_each_rules_reason() {
    let scratch = tempfile::tempdir().unwrap();
    let root = notes(scratch.path());
    let serve = Serve::start(Setup {
        policy: ALLOW_ALL,
        servers: json!({ "fs": { "command": "node", "args": [
            peer("node_modules/.bin/mcp-server-filesystem").display().to_string(),
            root.display().to_string(),
        ]}}),
        grants: &["alice", "bob"],
        extra: &["--learn"],
        default_counters: true,
        ..Setup::default()
    });
    let file = |name: &str| root.join(name).display().to_string();
    let mut alice = serve.client("legacy", "fs", &serve.tokens[0]);
    let mut bob = serve.client("legacy", "fs", &serve.tokens[1]);
    for head in 1..=5 {
        let answer = alice.call(
            "read_text_file",
            json!({"path": file("a.md"), "head": head}),
        );
        assert_eq!(answer["is_error"], json!(false), "{answer}");
        let answer = alice.call("list_directory", json!({"path": file("")}));
        assert_eq!(answer["is_error"], json!(false), "{answer}");
    }
    for name in ["b.md", "2026/c.md"] {
        let answer = bob.call("read_text_file", json!({"path": file(name), "head": 2}));
        assert_eq!(answer["is_error"], json!(false), "{answer}");
    }
    let counters = serve.dir.path().join("toolgate/counters.sqlite3");
    let draft_path = scratch.path().join("draft.json");
    let (output, _) = learned(
        &["--counters".into(), counters.display().to_string()],
        "fs",
        12,
        &draft_path,
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("what-if: 0 of 12 recorded calls would be refused"),
        "{stderr}"
    );
    let policy: Value =
        serde_json::from_str(&std::fs::read_to_string(&draft_path).unwrap()).unwrap();
    let read = policy["tools"]["read_text_file"]["reason"]
        .as_str()
        .unwrap();
    assert!(
        read.starts_with("7 calls from 2 grants over") && read.contains("(alice 5, bob 2)"),
        "{read}"
    );
    let list = policy["tools"]["list_directory"]["reason"]
        .as_str()
        .unwrap();
    assert!(
        list.starts_with("5 calls from 1 grant over") && list.contains("(alice 5)"),
        "{list}"
    );
    let check = run(&["check", &draft_path.display().to_string()]);
    assert!(check.status.success(), "{}", text(&check.stdout));
    assert_eq!(
        verdict(
            &draft_path,
            "bob",
            "read_text_file",
            json!({"path": file("b.md"), "head": 2})
        ),
        "allow"
    );
    assert_eq!(
        verdict(
            &draft_path,
            "bob",
            "move_file",
            json!({"source": file("b.md"), "destination": "/tmp/x"})
        ),
        "deny"
    );
}

/// `toolgate learn --review FILE` in tmux: every proposal accepted, the result written with
/// `y`; the file is then the policy `--output` wrote from the same recorded calls.
fn review_accepting_everything(dir: &Path, counters: &[String], draft_path: &Path) {
    let reviewed = dir.join("reviewed.json");
    let state = dir.join("review-state");
    let mut args = vec!["learn".to_owned()];
    args.extend(counters.iter().cloned());
    args.extend(["--server", "fs", "--review"].map(str::to_owned));
    args.push(reviewed.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let term = Tmux::start(
        support::toolgate(),
        &args,
        dir,
        (160, 50),
        &[("XDG_STATE_HOME", &state)],
    );
    let first = term.wait_for("the first proposal", ANSWER_WITHIN, |s| {
        s.contains("proposal 1 of ")
    });
    let total: usize = first
        .split("proposal 1 of ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("the number of proposals");
    for k in 1..=total {
        let shown = format!("proposal {k} of {total}");
        term.wait_for(&shown, ANSWER_WITHIN, |s| s.contains(&shown));
        term.send(&["a"]);
    }
    term.wait_for("the summary", ANSWER_WITHIN, |s| {
        s.contains("summary") && s.contains(&format!("{total} accepted"))
    });
    term.send(&["Enter"]);
    term.wait_for("the diff and the question", ANSWER_WITHIN, |s| {
        s.contains("y writes")
    });
    term.send(&["y"]);
    term.wait_for("the write", ANSWER_WITHIN, |s| s.contains("wrote "));
    term.send(&["q"]);
    let read = |p: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(p).expect("a policy file")).expect("JSON")
    };
    assert_eq!(
        read(&reviewed),
        read(draft_path),
        "accepting every proposal writes the draft"
    );
    let check = run(&["check", &reviewed.display().to_string()]);
    assert!(check.status.success(), "{}", text(&check.stdout));
}
