//! The console writes tests, in a real terminal: `toolgate demo --cases FILE` in tmux, a call
//! picked in the Live view with the filter, `T`, and the file it wrote run through the real
//! `toolgate check` and `toolgate test` with the policy that decided the call.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::tmux::Tmux;

const DEMO_POLICY: &str = include_str!("../src/demo/policy.json");

fn toolgate(args: &[&Path]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(args)
        .output()
        .expect("toolgate runs");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn t_on_a_call_appends_a_case_that_toolgate_test_passes() {
    let home = tempfile::tempdir().expect("temp dir");
    let runtime = home.path().join("run");
    let tmp = home.path().join("tmp");
    let state = home.path().join("state");
    let work = home.path().join("work");
    for dir in [&runtime, &tmp, &state, &work] {
        std::fs::create_dir_all(dir).expect("dir");
    }
    let policy = work.join("policy.json");
    std::fs::write(&policy, DEMO_POLICY).expect("policy written");
    let cases = work.join("cases.json");
    let program = Path::new(env!("CARGO_BIN_EXE_toolgate"));
    let term = Tmux::start(
        program,
        &[
            "demo",
            "--rate",
            "8",
            "--policy",
            "policy.json",
            "--cases",
            "cases.json",
        ],
        &work,
        (160, 40),
        &[
            ("XDG_RUNTIME_DIR", &runtime),
            ("TMPDIR", &tmp),
            ("XDG_STATE_HOME", &state),
            ("HOME", home.path()),
        ],
    );

    term.wait_for(
        "a denied delete_account call in the Live view",
        Duration::from_secs(30),
        |s| {
            s.lines()
                .any(|l| l.contains("delete_account") && l.contains("✗ deny"))
        },
    );
    term.send(&["/"]);
    term.send(&["tool:delete_account", "Enter"]);
    term.wait_for("the filter applied", Duration::from_secs(10), |s| {
        s.contains("filter: tool:delete_account")
    });
    term.send(&["T"]);
    let screen = term.wait_for(
        "the status line saying the case was added",
        Duration::from_secs(10),
        |s| s.contains("added to cases.json"),
    );
    assert!(
        screen.contains("case 'delete_account by "),
        "status line:\n{screen}"
    );
    // Calls may be held (then q would ask first): :q! quits either way.
    term.send(&[":"]);
    term.send(&["q!", "Enter"]);
    assert_eq!(
        term.exit_status(Duration::from_secs(10)),
        Some(0),
        "stderr: {}",
        term.stderr()
    );

    let text = std::fs::read_to_string(&cases).expect("the case file was created");
    let file: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let case = &file["cases"][0];
    assert_eq!(case["call"]["tool"], "delete_account", "{text}");
    assert_eq!(
        case["expect"],
        serde_json::json!({"decision": "deny", "rule": "/tools/delete_account"}),
        "{text}"
    );
    let (code, out) = toolgate(&[Path::new("check"), &cases]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = toolgate(&[Path::new("test"), &policy, &cases]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 passed"), "{out}");
}
