//! The command line against remote gateways (`--connect URL|@NAME`): `approve` finds the
//! replica that holds a call, a role that may not is told so at once, `gateways` lists each
//! remote from its hello, and `remotes.toml` mistakes are clear errors. The gateways are in
//! process (hubs and event websockets with operator accounts); the CLI is the built binary.

mod support;

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use support::ANSWER_WITHIN;
use support::events::gateway_info;
use support::wait::within;
use toolgate::testing::control::{
    self, EventsOptions, HoldTicket, Hub, Operators, OperatorsHandle, Role,
};
use toolgate::testing::wire::{CallEvent, EventKind, Verdict};

struct Replica {
    hub: Arc<Hub>,
    server: control::ControlHandle,
}

async fn replica(id: &str, operators: &OperatorsHandle) -> Replica {
    let hub = Hub::new(gateway_info(id, "/srv/policy.json"));
    let server = control::start(
        hub.clone(),
        EventsOptions {
            discovery: false,
            operators: Some(operators.clone()),
            ..EventsOptions::default()
        },
    )
    .await
    .expect("the event websocket starts");
    Replica { hub, server }
}

fn held(hub: &Hub) -> (String, HoldTicket) {
    let call = CallEvent {
        call_id: hub.next_call_id(),
        tool: "send_message".into(),
        grant: "agent".into(),
        session: "s".into(),
        server: "notes".into(),
        decision: Verdict::Hold,
        rule: "/tools/send_message".into(),
        reason: "a person decides".into(),
        args: json!({"to": "all"}).into(),
        args_truncated: false,
        retry_after_ms: None,
        hold_deadline: None,
        shadow: None,
    };
    hub.publish(EventKind::Call(call.clone()));
    let ticket = hub.hold(&call);
    (call.call_id.to_string(), ticket)
}

/// Runs the CLI with `config` as `XDG_CONFIG_HOME` and `token` as the operator token.
async fn cli(args: &[&str], config: &Path, token: &str) -> std::process::Output {
    let run = tokio::process::Command::new(support::toolgate())
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env("XDG_RUNTIME_DIR", config)
        .env("TOOLGATE_OPERATOR_TOKEN", token)
        .output();
    within("the CLI to finish", ANSWER_WITHIN, run)
        .await
        .unwrap()
}

#[tokio::test]
async fn approve_asks_each_replica_until_the_one_holding_the_call_and_a_viewer_is_told_why_not() {
    let mut accounts = Operators::empty();
    let pat = accounts.add("pat", Role::Approver).unwrap();
    let vic = accounts.add("vic", Role::Viewer).unwrap();
    let operators = OperatorsHandle::new(accounts);
    let a = replica("repa", &operators).await;
    let b = replica("repb", &operators).await;
    let (call_id, ticket) = held(&b.hub);
    let config = tempfile::tempdir().unwrap();
    let (ua, ub) = (a.server.url(), b.server.url());

    let refused = cli(
        &["approve", &call_id, "--connect", ua, "--connect", ub],
        config.path(),
        &vic,
    )
    .await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("operator vic has the viewer role"), "{said}");

    let approved = cli(
        &["approve", &call_id, "--connect", ua, "--connect", ub],
        config.path(),
        &pat,
    )
    .await;
    assert!(approved.status.success(), "{approved:?}");
    let resolution = within("the resolution", ANSWER_WITHIN, ticket.wait()).await;
    assert!(resolution.approved);
    assert_eq!(
        resolution.operator.as_deref(),
        Some("pat"),
        "the account, not $USER"
    );
    drop(a);
}

#[tokio::test]
async fn gateways_lists_each_remote_of_a_named_remote_and_a_bad_remotes_file_is_a_clear_error() {
    let mut accounts = Operators::empty();
    let vic = accounts.add("vic", Role::Viewer).unwrap();
    let operators = OperatorsHandle::new(accounts);
    let a = replica("gwla", &operators).await;
    let b = replica("gwlb", &operators).await;
    let config = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(config.path().join("toolgate")).unwrap();
    let remotes = config.path().join("toolgate/remotes.toml");
    std::fs::write(
        &remotes,
        format!(
            "[team]\nurls = [{:?}, {:?}]\n",
            a.server.url(),
            b.server.url()
        ),
    )
    .unwrap();
    let listed = cli(
        &["gateways", "--connect", "@team", "--json"],
        config.path(),
        &vic,
    )
    .await;
    assert!(listed.status.success(), "{listed:?}");
    let found: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let ids: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["info"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gwla", "gwlb"]);
    assert!(found[0]["host"].as_str().unwrap().starts_with("127.0.0.1:"));

    std::fs::write(
        &remotes,
        "[team]\nurls = [\"ws://127.0.0.1:1/\"]\ntoken-file = \"t\"\n",
    )
    .unwrap();
    let bad = cli(&["gateways", "--connect", "@team"], config.path(), &vic).await;
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        said.contains(&format!(
            "{}:3:1: unknown field `token-file`",
            remotes.display()
        )),
        "{said}"
    );
    std::fs::write(&remotes, "[team]\nurls = [\"ws://127.0.0.1:1/\"]\n").unwrap();
    let unknown = cli(&["tail", "--connect", "@prod"], config.path(), &vic).await;
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        said.contains("no remote named prod in") && said.contains("(it has @team)"),
        "{said}"
    );
}
