//! The console against a newer gateway, spoken to over a real websocket on loopback: events
//! of types this version does not know are skipped and the connection stays up; a message
//! that is not an event, or a known event that does not read, still ends the connection.

use std::time::Duration;

use futures_util::SinkExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use toolgate::console::testing::{AppEvent, Link};
use toolgate::console::testing::{Targets, net};
use toolgate::testing::wire::{
    Event, EventKind, GatewayInfo, Hello, PROTOCOL_VERSION, PolicyApplied, Snapshot,
};

/// Only so that a broken build fails instead of hanging; nothing asserts on speed.
const WITHIN: Duration = Duration::from_secs(30);

const TS: &str = "2026-11-26T12:00:00Z";

fn event(seq: u64, kind: EventKind) -> String {
    serde_json::to_string(&Event {
        seq,
        ts: TS.parse().unwrap(),
        gateway: "feed02".into(),
        kind,
    })
    .unwrap()
}

fn hello() -> String {
    event(
        1,
        EventKind::Hello(Box::new(Hello {
            protocol: PROTOCOL_VERSION,
            info: GatewayInfo {
                id: "feed02".into(),
                pid: 1,
                version: "9.0.0".into(),
                grant: "*".into(),
                server: "meetings".into(),
                policy: "/p/policy.json".into(),
                started_at: TS.parse().unwrap(),
            },
            snapshot: Snapshot::default(),
        })),
    )
}

fn applied(seq: u64, hash: &str) -> String {
    event(
        seq,
        EventKind::PolicyApplied(PolicyApplied {
            path: "/p/policy.json".into(),
            hash: hash.into(),
        }),
    )
}

/// An event of a type this version does not know, as a newer gateway would send it.
fn newer(seq: u64, kind: &str) -> String {
    format!(r#"{{"seq":{seq},"ts":"{TS}","gateway":"feed02","type":"{kind}","grant":"ci-bot"}}"#)
}

/// A gateway that accepts connections one after another and sends each the next list of
/// text frames, then keeps the connection open until the test ends.
async fn fake_gateway(mut scripts: Vec<Vec<String>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    scripts.reverse();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Some(frames) = scripts.pop() {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            for frame in frames {
                if ws.send(Message::text(frame)).await.is_err() {
                    return;
                }
            }
            open.push(ws);
        }
        std::future::pending::<()>().await;
    });
    url
}

/// The next event that is not a link going up or connecting; fails after [`WITHIN`].
async fn next(rx: &mut mpsc::Receiver<AppEvent>, what: &str) -> AppEvent {
    let find = async {
        while let Some(ev) = rx.recv().await {
            match ev {
                AppEvent::Link {
                    link: Link::Connecting { .. } | Link::Up { .. },
                    ..
                } => continue,
                ev => return ev,
            }
        }
        panic!("event channel closed before {what}");
    };
    tokio::time::timeout(WITHIN, find)
        .await
        .unwrap_or_else(|_| panic!("never got {what}"))
}

fn policy_hash(ev: &AppEvent) -> Option<&str> {
    match ev {
        AppEvent::Net { event, .. } => match &event.kind {
            EventKind::PolicyApplied(p) => Some(&p.hash),
            _ => None,
        },
        _ => None,
    }
}

fn down_error(ev: &AppEvent) -> Option<&str> {
    match ev {
        AppEvent::Link {
            link: Link::Down { error, .. },
            ..
        } => Some(error),
        _ => None,
    }
}

#[tokio::test]
async fn events_of_unknown_types_are_skipped_and_the_connection_stays_up() {
    let url = fake_gateway(vec![vec![
        hello(),
        newer(2, "quota_changed"),
        newer(3, "quota_changed"),
        applied(4, "aaa"),
        newer(5, "tool_pinned"),
        applied(6, "bbb"),
    ]])
    .await;
    let (tx, mut rx) = mpsc::channel(64);
    let _commands = net::spawn(
        Targets::Fixed {
            url,
            token: "t".into(),
        },
        tx,
    );
    let first = next(&mut rx, "the hello").await;
    assert!(
        matches!(&first, AppEvent::Net { event, .. } if matches!(event.kind, EventKind::Hello(_))),
        "{first:?}"
    );
    // Right after the hello, with nothing in between: the unknown types were skipped, the
    // link never went down.
    for hash in ["aaa", "bbb"] {
        let ev = next(&mut rx, &format!("policy_applied {hash}")).await;
        assert_eq!(policy_hash(&ev), Some(hash), "{ev:?}");
    }
}

#[tokio::test]
async fn a_frame_that_is_not_an_event_or_a_known_event_that_does_not_read_ends_the_connection() {
    let broken_known =
        format!(r#"{{"seq":2,"ts":"{TS}","gateway":"feed02","type":"grants","path":7}}"#);
    let url = fake_gateway(vec![
        vec![hello(), "not json at all".into(), applied(3, "never")],
        vec![hello(), broken_known, applied(3, "never")],
        vec![hello(), applied(2, "after")],
    ])
    .await;
    let (tx, mut rx) = mpsc::channel(64);
    let _commands = net::spawn(
        Targets::Fixed {
            url,
            token: "t".into(),
        },
        tx,
    );
    for what in [
        "a frame that is not JSON",
        "a grants event that does not read",
    ] {
        let ev = next(&mut rx, "the hello").await;
        assert!(
            matches!(&ev, AppEvent::Net { event, .. } if matches!(event.kind, EventKind::Hello(_))),
            "{ev:?}"
        );
        let ev = next(&mut rx, &format!("the link down after {what}")).await;
        let error = down_error(&ev).unwrap_or_else(|| panic!("after {what}: {ev:?}"));
        assert!(error.contains("does not understand"), "{what}: {error}");
    }
    let ev = next(&mut rx, "the hello of the third connection").await;
    assert!(
        matches!(&ev, AppEvent::Net { event, .. } if matches!(event.kind, EventKind::Hello(_))),
        "{ev:?}"
    );
    let ev = next(&mut rx, "policy_applied after").await;
    assert_eq!(policy_hash(&ev), Some("after"), "{ev:?}");
}
