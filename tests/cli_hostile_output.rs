//! Every command that prints outside text (a policy's tool names and reasons, a server's tool
//! names, events from a gateway, discovery and grants files, the command's own arguments)
//! prints it inert: the real binary is run on hostile input and its raw output bytes are
//! checked for anything a terminal would interpret. JSON output escapes such characters as
//! `\u` sequences and still means the same.

mod support;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use support::events::{Listed as Gateway, listed};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use toolgate::testing::control::{self, Hub};
use toolgate::testing::wire::{CallEvent, Event, EventKind, Verdict};

/// OSC 52 (sets the clipboard), clear screen, a C1 CSI, C1 NEL, a bidi override, DEL and a
/// zero-width space.
const HOSTILE: &str = "\x1b]52;c;aGk=\x07\x1b[2J\u{9b}2J\u{85}\u{202e}\u{7f}\u{200b}";

/// The test's own oracle, independent of `toolgate::sanitize`: a character a terminal would
/// act on, or that hides or reorders text. Newlines between lines are the command's own.
fn interpreted(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            | '\u{061c}' | '\u{feff}')
}

/// Fails naming the first offending character and where it is.
fn assert_inert(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Some((at, c)) = text.char_indices().find(|(_, c)| interpreted(*c)) {
        panic!(
            "{what}: {c:?} reaches the terminal raw at byte {at}:\n{}",
            text.escape_debug()
        );
    }
}

fn assert_output_inert(what: &str, o: &Output) {
    assert_inert(&format!("{what} (stdout)"), &o.stdout);
    assert_inert(&format!("{what} (stderr)"), &o.stderr);
}

fn toolgate(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"));
    cmd.args(args).env_remove("TOOLGATE_TOKEN");
    cmd
}

fn run(args: &[&str]) -> Output {
    toolgate(args).output().expect("run toolgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the file");
    path.display().to_string()
}

/// A policy whose tool names, reasons, hide entries and condition values carry [`HOSTILE`].
fn hostile_policy(dir: &Path) -> String {
    let policy = json!({
        "version": "1",
        "default": "deny",
        "hide": [format!("secret{HOSTILE}*")],
        "tools": {
            format!("evil{HOSTILE}"): {
                "reason": format!("because{HOSTILE}"),
                "deny_if": [
                    {"path": "args.note", "op": "eq", "value": format!("x{HOSTILE}")},
                    {"path": "args.amount", "op": "gt", "value": 1000}
                ]
            },
            format!("glob{HOSTILE}*"): {"action": "deny", "reason": format!("no{HOSTILE}")}
        }
    });
    write(
        dir,
        "hostile.json",
        &serde_json::to_string_pretty(&policy).unwrap(),
    )
}

#[test]
fn check_diagnostics_show_a_hostile_tool_name_inert() {
    let dir = tempfile::tempdir().unwrap();
    let bad = json!({"version": "1", "default": "deny", "tools": {
        format!("evil{HOSTILE}"): {"acton": "deny"},
        "t": {"require": [{"path": "args.p", "op": format!("under{HOSTILE}"), "value": "/"}]}
    }});
    let bad = write(dir.path(), "bad.json", &bad.to_string());
    let good = hostile_policy(dir.path());
    let named = write(
        dir.path(),
        &format!("p{HOSTILE}.json"),
        r#"{"version": "1", "default": "deny"}"#,
    );
    let o = run(&["check", &bad, &good, &named, "/nonexistent/x\x1b[2J.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert_output_inert("check", &o);
    let out = text(&o.stdout);
    assert!(
        out.contains("error: unknown field \"acton\" in a rule (at /tools/evil\\x1b]52;c;aGk=\\x07\\x1b[2J\\x9b2J\\x85\\u{202e}\\x7f\\u{200b}/acton)"),
        "{out}"
    );
    assert!(out.contains("unknown op \"under\\u001b]52"), "{out}");
    assert!(out.contains(&format!("{good}: ok")), "{out}");
    assert!(out.contains("p\\x1b]52;c;aGk=\\x07"), "{out}");
    assert!(
        out.contains("cannot read /nonexistent/x\\x1b[2J.json"),
        "{out}"
    );

    let o = run(&["check", "--json", &bad, &named]);
    assert_output_inert("check --json", &o);
    let reports: Vec<Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let pointer = reports[0]["diagnostics"][0]["pointer"].as_str().unwrap();
    assert_eq!(
        pointer,
        format!("/tools/evil{HOSTILE}/acton"),
        "the JSON means the raw text"
    );
    assert_eq!(reports[1]["file"], json!(named));
}

#[test]
fn explain_shows_hostile_names_reasons_and_values_inert() {
    let dir = tempfile::tempdir().unwrap();
    let p = hostile_policy(dir.path());
    let tool = format!("evil{HOSTILE}");
    let args = json!({"note": format!("x{HOSTILE}"), "amount": [HOSTILE]}).to_string();
    for extra in [&[][..], &["--json"][..]] {
        for (tool, args) in [
            (tool.as_str(), args.as_str()),
            (tool.as_str(), r#"{"amount": [1]}"#),
            ("globby\x1b[2J", "{}"),
            (&format!("secret{HOSTILE}x") as &str, "{}"),
            ("unnamed\u{9b}", "{}"),
        ] {
            let mut argv = vec![
                "explain",
                "--policy",
                &p,
                "--tool",
                tool,
                "--args",
                args,
                "--grant",
                "g\x1b[2J",
                "--session",
                "s\u{202e}",
            ];
            argv.extend_from_slice(extra);
            let o = run(&argv);
            assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
            assert_output_inert(&format!("explain {tool:?} {extra:?}"), &o);
        }
    }
    let o = run(&[
        "explain",
        "--policy",
        &p,
        "--tool",
        &tool,
        "--args",
        r#"{"amount": [1]}"#,
    ]);
    let out = text(&o.stdout);
    assert!(
        out.contains("because\\x1b]52;c;aGk=\\x07"),
        "the rule's reason is shown, escaped:\n{out}"
    );
    assert!(
        out.contains("deny_if args.amount gt 1000 is unknown: args.amount is an array; gt compares numbers: denied"),
        "{out}"
    );

    let o = run(&[
        "explain",
        "--policy",
        &p,
        "--tool",
        &tool,
        "--args",
        r#"{"amount": [1]}"#,
        "--json",
    ]);
    let decision: Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    assert_eq!(decision["rule"], format!("/tools/evil{HOSTILE}/deny_if/1"));
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("because{HOSTILE} ("))
    );
}

#[test]
fn errors_quoting_the_command_line_are_inert() {
    let dir = tempfile::tempdir().unwrap();
    let p = hostile_policy(dir.path());
    let o = run(&["explain", "--policy", &p, "--tool", "x", "--args", HOSTILE]);
    assert_eq!(o.status.code(), Some(2));
    assert_output_inert("explain --args", &o);
    assert!(
        text(&o.stderr).contains("--args is not valid JSON: \\x1b]52"),
        "{}",
        text(&o.stderr)
    );

    let o = run(&[
        "approve",
        &format!("call{HOSTILE}-1"),
        "--connect",
        "ws://127.0.0.1:9/",
        "--token",
        "t",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_output_inert("approve", &o);
    assert!(
        text(&o.stderr).contains("call\\x1b]52"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn grants_commands_show_hostile_names_inert() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grants.json");
    let file_arg = file.display().to_string();
    let o = run(&[
        "grants",
        "add",
        &format!("ci{HOSTILE}"),
        "--file",
        &file_arg,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_output_inert("grants add", &o);

    let stored = json!({"version": "1", "grants": {
        format!("ci{HOSTILE}"): {"sha256": "0".repeat(64), "created_at": "2026-01-01T00:00:00Z"}
    }});
    std::fs::write(&file, stored.to_string()).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    for argv in [
        &["grants", "list", "--file", &file_arg][..],
        &["grants", "revoke", "x", "--file", &file_arg][..],
    ] {
        let o = run(argv);
        assert_eq!(o.status.code(), Some(2), "{argv:?}: {}", text(&o.stderr));
        assert_output_inert(&format!("{argv:?}"), &o);
        assert!(
            text(&o.stderr).contains("]52;c;aGk="),
            "{}",
            text(&o.stderr)
        );
    }
}

#[test]
fn scan_prints_a_hostile_servers_names_inert_and_writes_them_escaped() {
    let server = [
        support::peers::python().display().to_string(),
        support::peers::e2e_script("hostile_names_server.py")
            .display()
            .to_string(),
    ];
    for json_flag in [false, true] {
        let mut cmd = toolgate(&["scan", "--timeout", "60"]);
        if json_flag {
            cmd.arg("--json");
        }
        let o = cmd.arg("--").args(&server).output().expect("run scan");
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        assert_output_inert(&format!("scan json={json_flag}"), &o);
        assert!(
            text(&o.stderr).contains("delete\\x1b]52"),
            "{}",
            text(&o.stderr)
        );
        let out: Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
        let names = if json_flag {
            out.as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        } else {
            out["tools"].as_object().unwrap().keys().cloned().collect()
        };
        assert!(
            names.contains(&format!("delete{HOSTILE}")),
            "the JSON means the server's raw name: {names:?}"
        );
    }
}

/// A hub with an event websocket, found through a discovery file in its own runtime dir
/// that names it with hostile text.
async fn gateway(id: &str) -> Gateway {
    let runtime = tempfile::tempdir().unwrap();
    let hub = Hub::new(support::events::gateway_info(id, "/srv/policy.json"));
    let entry = control::DiscoveryEntry {
        id: id.into(),
        url: String::new(),
        token: String::new(),
        pid: std::process::id(),
        policy: format!("/srv/policy{HOSTILE}.json"),
        grant: format!("ci{HOSTILE}"),
        server: format!("srv{HOSTILE}"),
        started_at: Utc::now(),
    };
    listed(runtime, hub, entry).await
}

impl Gateway {
    fn toolgate(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_toolgate"));
        cmd.args(args)
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env_remove("TOOLGATE_TOKEN")
            .kill_on_drop(true);
        cmd
    }

    fn publish_hostile_call(&self) -> CallEvent {
        let call = CallEvent {
            call_id: self.hub.next_call_id(),
            tool: format!("evil{HOSTILE}").into(),
            grant: format!("ci{HOSTILE}").into(),
            session: format!("s{HOSTILE}").into(),
            server: format!("srv{HOSTILE}").into(),
            decision: Verdict::Deny,
            rule: format!("/tools/evil{HOSTILE}").into(),
            reason: format!("because{HOSTILE}").into(),
            args: json!({ format!("k{HOSTILE}"): [HOSTILE] }).into(),
            args_truncated: false,
            retry_after_ms: None,
            hold_deadline: None,
            shadow: None,
        };
        self.hub.publish(EventKind::Call(call.clone()));
        call
    }
}

async fn next_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    what: &str,
) -> String {
    match tokio::time::timeout(support::ANSWER_WITHIN, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        Ok(other) => panic!("waiting for {what}: the output ended ({other:?})"),
        Err(_) => panic!(
            "waiting for {what}: nothing within {:?}",
            support::ANSWER_WITHIN
        ),
    }
}

#[tokio::test]
async fn tail_json_escapes_c1_bidi_and_invisible_characters_and_means_the_same() {
    let gw = gateway("hostiletail").await;
    let mut child = gw
        .toolgate(&["tail", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let hello = next_line(&mut lines, "the hello").await;
    assert_inert("tail --json hello", hello.as_bytes());

    let sent = gw.publish_hostile_call();
    let line = next_line(&mut lines, "the call event").await;
    assert_inert("tail --json call", line.as_bytes());
    for escaped in [
        "\\u001b]52",
        "\\u009b2J",
        "\\u0085",
        "\\u202e",
        "\\u007f",
        "\\u200b",
    ] {
        assert!(line.contains(escaped), "{escaped} missing from {line}");
    }
    let event: Event = serde_json::from_str(&line).unwrap();
    match event.kind {
        EventKind::Call(call) => assert_eq!(call, sent, "the JSON means the raw text"),
        other => panic!("expected the call, got {other:?}"),
    }
    child.kill().await.unwrap();

    let mut child = gw
        .toolgate(&["tail"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let hello = next_line(&mut lines, "the human hello").await;
    assert_inert("tail hello", hello.as_bytes());
    gw.publish_hostile_call();
    // The hello's snapshot lists the first call; the next line is the new one.
    let line = next_line(&mut lines, "the human call line").await;
    assert_inert("tail call", line.as_bytes());
    assert!(line.contains("evil\\x1b]52"), "{line}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn gateways_lists_hostile_discovery_entries_inert() {
    let gw = gateway("hostilelist").await;
    for argv in [&["gateways"][..], &["gateways", "--json"][..]] {
        let o = tokio::time::timeout(Duration::from_secs(60), gw.toolgate(argv).output())
            .await
            .expect("gateways answers within a minute")
            .unwrap();
        assert_eq!(o.status.code(), Some(0));
        assert_output_inert(&format!("{argv:?}"), &o);
        assert!(
            text(&o.stdout).contains("hostilelist"),
            "{}",
            text(&o.stdout)
        );
    }
    let o = tokio::time::timeout(
        Duration::from_secs(60),
        gw.toolgate(&["gateways", "--json"]).output(),
    )
    .await
    .expect("gateways --json answers within a minute")
    .unwrap();
    let listed: Vec<control::DiscoveryEntry> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed[0].grant, format!("ci{HOSTILE}"));
}
