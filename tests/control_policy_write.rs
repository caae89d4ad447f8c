//! `read_policy` and `write_policy` over the real event websocket, in process: a hub whose
//! policy file is a real file, the real server with operator accounts, the real client.
//! Which role may do what, and what each refusal says (the file-level cases are unit tests
//! of `control::remote_policy`).

mod support;

use std::sync::Arc;

use support::ANSWER_WITHIN;
use support::events::gateway_info;
use support::wait::within;
use toolgate::testing::control::{
    self, Connection, EventsOptions, Hub, Operators, OperatorsHandle, Role,
};
use toolgate::testing::wire::{ClientMsg, EventKind, Reply, ReplyCode};

const V1: &str =
    "{\n  \"version\": \"1\",\n  \"default\": \"deny\",\n  \"tools\": { \"echo\": {} }\n}\n";

fn sha(text: &str) -> String {
    toolgate::console::testing::hash_bytes(text.as_bytes())
}

/// A gateway whose policy file holds `V1`, accepting a viewer, an approver and an admin;
/// returns what the test needs: the file, the server, and each account's token.
async fn gateway(
    dir: &std::path::Path,
) -> (std::path::PathBuf, control::ControlHandle, [String; 3]) {
    let path = dir.join("policy.json");
    std::fs::write(&path, V1).unwrap();
    let hub: Arc<Hub> = Hub::new(gateway_info("rw", &path.display().to_string()));
    let mut accounts = Operators::empty();
    let tokens = [
        accounts.add("vic", Role::Viewer).unwrap(),
        accounts.add("pat", Role::Approver).unwrap(),
        accounts.add("ada", Role::Admin).unwrap(),
    ];
    let server = control::start(
        hub,
        EventsOptions {
            discovery: false,
            operators: Some(OperatorsHandle::new(accounts)),
            ..EventsOptions::default()
        },
    )
    .await
    .expect("the event websocket starts");
    (path, server, tokens)
}

/// Sends `msg` as the holder of `token` and returns the gateway's reply to it.
async fn ask(server: &control::ControlHandle, token: &str, msg: ClientMsg) -> Reply {
    let mut conn: Connection = within(
        "a connection",
        ANSWER_WITHIN,
        control::connect(server.url(), token),
    )
    .await
    .expect("the operator connects");
    conn.send(&msg).await.expect("the command is sent");
    loop {
        let event = within("the reply", ANSWER_WITHIN, conn.next_event())
            .await
            .expect("the connection stays open")
            .expect("a valid event");
        if let EventKind::Reply(reply) = event.kind
            && reply.id == msg.id()
        {
            return reply;
        }
    }
}

fn write(text: &str, base: &str, force: bool) -> ClientMsg {
    ClientMsg::WritePolicy {
        id: 7,
        text: text.into(),
        base_hash: base.into(),
        force,
    }
}

#[tokio::test]
async fn any_role_reads_the_policy_file_with_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (path, server, tokens) = gateway(dir.path()).await;
    for token in &tokens {
        let reply = ask(&server, token, ClientMsg::ReadPolicy { id: 3 }).await;
        assert!(reply.ok, "{reply:?}");
        let policy = reply.policy.expect("the file in the reply");
        assert_eq!(policy.text, V1);
        assert_eq!(policy.hash, sha(V1));
        assert_eq!(policy.path, path.display().to_string());
        assert!(policy.writable);
    }
}

#[tokio::test]
async fn only_an_admin_writes_and_the_file_is_then_the_text_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (path, server, [vic, pat, ada]) = gateway(dir.path()).await;
    let v2 = V1.replace(
        "\"echo\": {}",
        "\"echo\": { \"rate_limit\": { \"max\": 1, \"window\": \"minute\" } }",
    );
    for (who, token) in [("vic", &vic), ("pat", &pat)] {
        let reply = ask(&server, token, write(&v2, &sha(V1), false)).await;
        assert!(!reply.ok);
        assert_eq!(reply.code, Some(ReplyCode::Forbidden), "{reply:?}");
        let error = reply.error.unwrap();
        assert!(
            error.contains(&format!("operator {who} has the")),
            "{error}"
        );
        assert!(
            error.contains("writing the policy needs the admin role"),
            "{error}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            V1,
            "nothing written for {who}"
        );
    }
    let reply = ask(&server, &ada, write(&v2, &sha(V1), false)).await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), v2);
}

#[tokio::test]
async fn an_admins_write_is_refused_when_invalid_or_based_on_an_old_file_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (path, server, [_, _, ada]) = gateway(dir.path()).await;
    let invalid = V1.replace("\"deny\"", "\"maybe\"");
    let reply = ask(&server, &ada, write(&invalid, &sha(V1), true)).await;
    assert_eq!(reply.code, Some(ReplyCode::Invalid), "{reply:?}");
    assert!(reply.error.unwrap().contains("policy.json:3:14: error:"));

    let edited = V1.replace("\"deny\"", "\"allow\"");
    std::fs::write(&path, &edited).unwrap();
    let mine = V1.replace("\"echo\"", "\"echo2\"");
    let reply = ask(&server, &ada, write(&mine, &sha(V1), false)).await;
    assert_eq!(reply.code, Some(ReplyCode::Conflict), "{reply:?}");
    assert_eq!(reply.policy.map(|p| p.text), Some(edited.clone()));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), edited);
    let reply = ask(&server, &ada, write(&mine, &sha(V1), true)).await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), mine);
}
