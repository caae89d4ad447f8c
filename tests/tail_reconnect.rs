//! `toolgate tail --connect` following a remote gateway that goes away and comes back: it
//! says it is retrying, resumes from the gateway's fresh `hello`, and ends with an error once
//! the gateway no longer accepts its token (a revoked account). The gateway is in process (a
//! real hub and event websocket with operator accounts); `tail` is the built binary.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;

use support::ANSWER_WITHIN;
use support::events::gateway_info;
use support::wait::within;
use tokio::io::{AsyncBufReadExt, BufReader};
use toolgate::testing::control::{self, EventsOptions, Hub, Operators, OperatorsHandle, Role};
use toolgate::testing::wire::{Event, EventKind, Upstream};

async fn listen(
    hub: &Arc<Hub>,
    addr: SocketAddr,
    operators: &OperatorsHandle,
) -> control::ControlHandle {
    control::start(
        hub.clone(),
        EventsOptions {
            addr,
            discovery: false,
            operators: Some(operators.clone()),
            ..EventsOptions::default()
        },
    )
    .await
    .expect("the event websocket starts")
}

fn marker(hub: &Hub, name: &str) {
    hub.publish(EventKind::Upstream(Upstream {
        server: name.into(),
        up: true,
        detail: None,
    }));
}

#[tokio::test]
async fn tail_retries_a_lost_remote_gateway_resumes_from_its_hello_and_stops_when_revoked() {
    let hub = Hub::new(gateway_info("tailrc", "/tmp/policy.json"));
    let mut accounts = Operators::empty();
    let token = accounts.add("tess", Role::Viewer).unwrap();
    let operators = OperatorsHandle::new(accounts);
    let first = listen(&hub, "127.0.0.1:0".parse().unwrap(), &operators).await;
    let addr = first.local_addr();
    let url = format!("ws://{addr}/");

    let mut child = tokio::process::Command::new(support::toolgate())
        .args(["tail", "--json", "--connect", &url])
        .env("TOOLGATE_OPERATOR_TOKEN", &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next = async || -> Event {
        let line = within("a line from tail", ANSWER_WITHIN, out.next_line())
            .await
            .unwrap()
            .expect("tail is still running");
        serde_json::from_str(&line).unwrap()
    };
    assert!(matches!(next().await.kind, EventKind::Hello(_)));
    marker(&hub, "before");
    assert!(matches!(next().await.kind, EventKind::Upstream(u) if u.server == "before"));

    // The gateway's event websocket stops; what is published meanwhile is in the snapshot.
    first.shutdown().await;
    let line = within("tail saying it retries", ANSWER_WITHIN, err.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(line.contains("retrying in"), "{line}");
    let second = listen(&hub, addr, &operators).await;
    let hello = next().await;
    assert!(matches!(hello.kind, EventKind::Hello(_)), "{hello:?}");
    marker(&hub, "after");
    let after = next().await;
    assert!(
        matches!(&after.kind, EventKind::Upstream(u) if u.server == "after"),
        "the stream goes on after the fresh hello, nothing printed twice: {after:?}"
    );

    // Revoked: the next connection is refused, and tail ends with an error.
    operators.replace(Operators::empty());
    second.shutdown().await;
    let _third = listen(&hub, addr, &operators).await;
    let status = within("tail to end", ANSWER_WITHIN, child.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let mut said = String::new();
    while let Ok(Some(line)) = within("tail's stderr", ANSWER_WITHIN, err.next_line()).await {
        said.push_str(&line);
        said.push('\n');
    }
    assert!(
        said.contains("refused the token (revoked, or the token changed)"),
        "{said}"
    );
}
