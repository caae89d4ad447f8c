//! The console's network layer against the real control plane, in process: a gateway's hub
//! and event websocket with its discovery file in a private runtime directory. The console
//! finds the gateway by itself, receives its hello and live calls, approves a hold on it, and
//! notices when it goes away.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use toolgate::console::testing::{AppEvent, Link};
use toolgate::console::testing::{Outgoing, Targets, net};
use toolgate::testing::control::{EventsOptions, Hub};
use toolgate::testing::wire::{CallEvent, ClientMsg, EventKind, GatewayInfo, Verdict};

/// Only so that a broken build fails instead of hanging; nothing asserts on speed.
const WITHIN: Duration = Duration::from_secs(30);

async fn next_matching(
    rx: &mut mpsc::Receiver<AppEvent>,
    what: &str,
    ok: impl Fn(&AppEvent) -> bool,
) -> AppEvent {
    let find = async {
        while let Some(ev) = rx.recv().await {
            if ok(&ev) {
                return ev;
            }
        }
        panic!("event channel closed before {what}");
    };
    tokio::time::timeout(WITHIN, find)
        .await
        .unwrap_or_else(|_| panic!("never got {what}"))
}

fn held_call(id: impl Into<smol_str::SmolStr>) -> CallEvent {
    CallEvent {
        call_id: id.into(),
        tool: "send_message".into(),
        grant: "ci-bot".into(),
        session: "s1".into(),
        server: "meetings".into(),
        decision: Verdict::Hold,
        rule: "/tools/send_message".into(),
        reason: "needs a person".into(),
        args: serde_json::json!({"to": "all"}).into(),
        args_truncated: false,
        retry_after_ms: None,
        hold_deadline: Some(chrono::Utc::now() + chrono::TimeDelta::minutes(5)),
        shadow: None,
    }
}

#[tokio::test]
async fn discovers_a_gateway_follows_it_approves_on_it_and_sees_it_go() {
    let runtime = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(
        runtime.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    // SAFETY: this test binary has this one test; nothing else reads the environment while
    // it is changed, before any thread of ours starts.
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", runtime.path()) };

    let hub = Hub::new(GatewayInfo {
        id: "feed01".into(),
        pid: std::process::id(),
        version: "test".into(),
        grant: "ci-bot".into(),
        server: "meetings".into(),
        policy: "/p/policy.json".into(),
        started_at: chrono::Utc::now(),
    });
    let control = toolgate::testing::control::start(Arc::clone(&hub), EventsOptions::default())
        .await
        .expect("event websocket");

    let (tx, mut rx) = mpsc::channel(1024);
    let commands = net::spawn(Targets::Discover, tx);

    next_matching(
        &mut rx,
        "the link up",
        |e| matches!(e, AppEvent::Link { gateway, link: Link::Up { .. } } if gateway == "feed01"),
    )
    .await;
    next_matching(
        &mut rx,
        "the hello",
        |e| matches!(e, AppEvent::Net { event, .. } if matches!(event.kind, EventKind::Hello(_))),
    )
    .await;

    let call = held_call(hub.next_call_id());
    let call_id = call.call_id.clone();
    hub.publish(EventKind::Call(call.clone()));
    let ticket = hub.hold(&call);
    next_matching(&mut rx, "the held call", |e| {
        matches!(e, AppEvent::Net { event, .. }
            if matches!(&event.kind, EventKind::Call(c) if c.call_id == call_id))
    })
    .await;

    commands
        .send(Outgoing {
            gateway: "feed01".into(),
            msg: ClientMsg::Approve {
                id: 7,
                call_id: call_id.to_string(),
                operator: Some("test".into()),
            },
        })
        .expect("network task running");
    next_matching(&mut rx, "the reply", |e| {
        matches!(e, AppEvent::Net { event, .. }
            if matches!(&event.kind, EventKind::Reply(r) if r.id == 7 && r.ok))
    })
    .await;
    let resolution = tokio::time::timeout(WITHIN, ticket.wait())
        .await
        .expect("the hold was resolved");
    assert!(resolution.approved);

    // A command for a gateway the console does not know comes back as a failure.
    commands
        .send(Outgoing {
            gateway: "nobody".into(),
            msg: ClientMsg::Approve {
                id: 8,
                call_id: "nobody-1".into(),
                operator: None,
            },
        })
        .expect("network task running");
    next_matching(&mut rx, "the send failure", |e| {
        matches!(e, AppEvent::SendFailed { id: 8, .. })
    })
    .await;

    // The gateway stops: its discovery file goes, the console retires the connection.
    control.shutdown().await;
    next_matching(
        &mut rx,
        "the gateway gone",
        |e| matches!(e, AppEvent::Link { gateway, link: Link::Gone } if gateway == "feed01"),
    )
    .await;
}
