//! `toolgate approve`, `deny`, `gateways` and `tail` as a script runs them: the real binary,
//! finding an in-process gateway (hub + event websocket) through its discovery file in a
//! temporary `XDG_RUNTIME_DIR`.

mod support;

use std::process::Stdio;

use chrono::Utc;
use serde_json::json;
use support::ANSWER_WITHIN;
use support::events::{Listed as Gateway, gateway_info, listed};
use support::wait::within;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use toolgate::testing::control::{self, HoldTicket, Hub};
use toolgate::testing::wire::{CallEvent, Event, EventKind, Verdict};

/// A gateway whose discovery file lives in its own runtime dir; the binary is pointed at it
/// through the child's environment, never this process's.
async fn gateway(id: &str) -> Gateway {
    gateway_in(tempfile::tempdir().unwrap(), id).await
}

async fn gateway_in(runtime: tempfile::TempDir, id: &str) -> Gateway {
    let info = gateway_info(id, "/srv/policy.json");
    let entry = control::DiscoveryEntry {
        id: id.into(),
        url: String::new(),
        token: String::new(),
        pid: std::process::id(),
        policy: "/srv/policy.json".into(),
        grant: "ci-bot".into(),
        server: "everything".into(),
        started_at: Utc::now(),
    };
    listed(runtime, Hub::new(info), entry).await
}

impl Gateway {
    fn hold(&self) -> (String, HoldTicket) {
        let call = CallEvent {
            call_id: self.hub.next_call_id(),
            tool: "create_api_key".into(),
            grant: "ci-bot".into(),
            session: "s".into(),
            server: "everything".into(),
            decision: Verdict::Hold,
            rule: "/tools/create_api_key".into(),
            reason: "a person decides".into(),
            args: json!({"keyName": "prod"}).into(),
            args_truncated: false,
            retry_after_ms: None,
            hold_deadline: None,
            shadow: None,
        };
        self.hub.publish(EventKind::Call(call.clone()));
        let ticket = self.hub.hold(&call);
        (call.call_id.to_string(), ticket)
    }

    fn toolgate(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_toolgate"));
        cmd.args(args)
            .env("XDG_RUNTIME_DIR", self.runtime.path())
            .env("USER", "alice")
            .env_remove("TOOLGATE_TOKEN")
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let what = format!("toolgate {args:?} to exit");
        let out = within(&what, ANSWER_WITHIN, self.toolgate(args).output())
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[tokio::test]
async fn approve_finds_the_gateway_by_the_call_id_and_exits_0() {
    let gw = gateway("cliapp").await;
    let (call_id, ticket) = gw.hold();
    let (code, stdout, stderr) = gw.run(&["approve", &call_id]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("approved {call_id}")));
    let resolution = within("the held call's resolution", ANSWER_WITHIN, ticket.wait()).await;
    assert!(resolution.approved);
    assert_eq!(resolution.operator.as_deref(), Some("alice"));
}

#[tokio::test]
async fn deny_passes_the_reason_to_the_held_call() {
    let gw = gateway("clideny").await;
    let (call_id, ticket) = gw.hold();
    let (code, _, stderr) = gw.run(&["deny", &call_id, "--reason", "not from CI"]).await;
    assert_eq!(code, 0, "{stderr}");
    let resolution = within("the held call's resolution", ANSWER_WITHIN, ticket.wait()).await;
    assert!(!resolution.approved);
    assert_eq!(resolution.reason.as_deref(), Some("not from CI"));
}

#[tokio::test]
async fn approving_an_unknown_or_resolved_call_exits_1_with_the_reason() {
    let gw = gateway("cliunk").await;
    let (code, _, stderr) = gw.run(&["approve", "cliunk-999"]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("no held call cliunk-999"), "{stderr}");

    let (call_id, _ticket) = gw.hold();
    assert_eq!(gw.run(&["approve", &call_id]).await.0, 0);
    let (code, _, stderr) = gw.run(&["deny", &call_id]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("already resolved"), "{stderr}");
}

#[tokio::test]
async fn approve_with_no_gateway_running_says_so() {
    let runtime = tempfile::tempdir().unwrap();
    let approving = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["approve", "x-1"])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output();
    let out = within("toolgate approve to exit", ANSWER_WITHIN, approving)
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no toolgate gateway is running"));
}

#[tokio::test]
async fn gateways_lists_the_running_gateway_without_its_token() {
    let gw = gateway("clilist").await;
    let (code, stdout, stderr) = gw.run(&["gateways", "--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let listed: Vec<control::DiscoveryEntry> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "clilist");
    assert!(listed[0].token.is_empty());

    let (code, stdout, _) = gw.run(&["gateways"]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("clilist") && stdout.contains("everything"));
}

#[tokio::test]
async fn tail_json_prints_the_hello_then_each_event_as_one_line() {
    let gw = gateway("clitail").await;
    let mut child = gw
        .toolgate(&["tail", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let first: Event = serde_json::from_str(
        &within("a line from tail", ANSWER_WITHIN, lines.next_line())
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(matches!(first.kind, EventKind::Hello(_)));
    assert_eq!(first.gateway, "clitail");

    let (call_id, _ticket) = gw.hold();
    let next: Event = serde_json::from_str(
        &within("a line from tail", ANSWER_WITHIN, lines.next_line())
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    match next.kind {
        EventKind::Call(call) => assert_eq!(call.call_id, call_id),
        other => panic!("expected the call, got {other:?}"),
    }
    child.kill().await.unwrap();
}

#[tokio::test]
async fn tail_shows_human_lines_with_outside_text_neutralised() {
    let gw = gateway("clihum").await;
    let mut child = gw
        .toolgate(&["tail"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let hello = within("a line from tail", ANSWER_WITHIN, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(hello.contains("clihum connected"), "{hello}");

    gw.hub
        .publish(EventKind::Upstream(toolgate::testing::wire::Upstream {
            server: "srv\x1b]0;pwned\x07".into(),
            up: false,
            detail: None,
        }));
    let line = within("a line from tail", ANSWER_WITHIN, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(
        line.contains("upstream srv\\x1b]0;pwned\\x07 down"),
        "{line}"
    );
    assert!(!line.contains('\x1b'));
    child.kill().await.unwrap();
}

#[tokio::test]
async fn tail_picks_up_a_gateway_that_starts_after_it() {
    let runtime = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .arg("tail")
        .env("XDG_RUNTIME_DIR", runtime.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Tail says it is waiting before any gateway exists.
    let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
    let waiting = within(
        "tail's first line on stderr",
        ANSWER_WITHIN,
        errors.next_line(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(waiting.contains("no gateway is running yet"), "{waiting}");

    let gw = gateway_in(runtime, "clilate").await;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let hello = within("a line from tail", ANSWER_WITHIN, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(hello.contains("clilate connected"), "{hello}");
    let (call_id, _ticket) = gw.hold();
    let call = within("a line from tail", ANSWER_WITHIN, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(call.contains(&call_id) && call.contains("⏸ held"), "{call}");
    child.kill().await.unwrap();
}
