//! The event websocket end to end, in process: a real hub, the real server on a loopback
//! port, the real client. What the gateway core does with a resolution is its own business;
//! here the test plays the gateway (publishes calls, takes hold tickets).

mod support;

use std::sync::Arc;

use serde_json::json;
use support::ANSWER_WITHIN;
use support::events::gateway_info;
use support::wait::within;
use toolgate::testing::control::{
    self, ClientError, Connection, EventsOptions, Hub, Operators, OperatorsHandle,
    OperatorsWatcher, Role,
};
use toolgate::testing::wire::{
    CallEvent, ClientMsg, Event, EventKind, Hello, PROTOCOL_VERSION, Reply, ResolvedBy, Upstream,
    Verdict,
};

fn new_hub(id: &str) -> Arc<Hub> {
    Hub::new(gateway_info(id, "/tmp/policy.json"))
}

async fn serve(hub: &Arc<Hub>) -> control::ControlHandle {
    control::start(
        hub.clone(),
        EventsOptions {
            discovery: false,
            ..EventsOptions::default()
        },
    )
    .await
    .expect("the event websocket starts")
}

/// A client of `server`, connected with its token.
async fn connect(server: &control::ControlHandle) -> Connection {
    within(
        "a connection to the event websocket",
        ANSWER_WITHIN,
        control::connect(server.url(), server.token()),
    )
    .await
    .unwrap()
}

/// A client of `server` that has read its hello.
async fn connected(server: &control::ControlHandle) -> Connection {
    let mut conn = connect(server).await;
    hello(&mut conn).await;
    conn
}

/// A raw websocket to `server` with the bearer token, for what the client would not send.
async fn raw_socket(
    server: &control::ControlHandle,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = server.url().into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", server.token()).parse().unwrap(),
    );
    let connecting = tokio_tungstenite::connect_async(request);
    let (ws, _) = within("a raw websocket connection", ANSWER_WITHIN, connecting)
        .await
        .unwrap();
    ws
}

fn call(hub: &Hub, decision: Verdict, args: serde_json::Value) -> CallEvent {
    CallEvent {
        call_id: hub.next_call_id(),
        tool: "create_api_key".into(),
        grant: "ci-bot".into(),
        session: "s1".into(),
        server: "everything".into(),
        decision,
        rule: "/tools/create_api_key".into(),
        reason: "needs a person".into(),
        args: args.into(),
        args_truncated: false,
        retry_after_ms: None,
        hold_deadline: None,
        shadow: None,
    }
}

/// Publishes a held call the way the gateway does: event first, then the ticket.
fn held_call(hub: &Hub) -> (CallEvent, control::HoldTicket) {
    let held = call(hub, Verdict::Hold, json!({"keyName": "staging"}));
    hub.publish(EventKind::Call(held.clone()));
    let ticket = hub.hold(&held);
    (held, ticket)
}

async fn next(conn: &mut Connection) -> Event {
    within("the next event", ANSWER_WITHIN, conn.next_event())
        .await
        .expect("the connection stays open")
        .expect("the gateway sends valid events")
}

async fn hello(conn: &mut Connection) -> (u64, Hello) {
    let event = next(conn).await;
    match event.kind {
        EventKind::Hello(hello) => (event.seq, *hello),
        other => panic!("expected a hello first, got {other:?}"),
    }
}

/// Reads events until the reply to command `id`, returning it and the events before it.
async fn reply_to(conn: &mut Connection, id: u64) -> (Reply, Vec<Event>) {
    let mut seen = Vec::new();
    loop {
        let event = next(conn).await;
        match event.kind {
            EventKind::Reply(reply) if reply.id == id => return (reply, seen),
            _ => seen.push(event),
        }
    }
}

/// Publishes a marker and reads up to it: every event published before it has arrived.
async fn read_until_marker(hub: &Hub, conn: &mut Connection, marker: &str) -> Vec<Event> {
    hub.publish(EventKind::Upstream(Upstream {
        server: marker.into(),
        up: true,
        detail: None,
    }));
    let mut seen = Vec::new();
    loop {
        let event = next(conn).await;
        if matches!(&event.kind, EventKind::Upstream(u) if u.server == marker) {
            return seen;
        }
        seen.push(event);
    }
}

fn approve(id: u64, call_id: &str) -> ClientMsg {
    ClientMsg::Approve {
        id,
        call_id: call_id.into(),
        operator: Some("alice".into()),
    }
}

/// A server that also accepts the accounts of `operators`.
async fn serve_with_operators(
    hub: &Arc<Hub>,
    operators: &OperatorsHandle,
) -> control::ControlHandle {
    control::start(
        hub.clone(),
        EventsOptions {
            discovery: false,
            operators: Some(operators.clone()),
            ..EventsOptions::default()
        },
    )
    .await
    .expect("the event websocket starts")
}

/// A client that connected with `token` and read its hello.
async fn connected_as(server: &control::ControlHandle, token: &str) -> Connection {
    let connecting = control::connect(server.url(), token);
    let mut conn = within("an operator's connection", ANSWER_WITHIN, connecting)
        .await
        .unwrap();
    hello(&mut conn).await;
    conn
}

#[tokio::test]
async fn each_role_may_do_what_it_allows_and_decisions_name_the_account_not_the_client() {
    let hub = new_hub("roles");
    let mut accounts = Operators::empty();
    let viewer = accounts.add("bob", Role::Viewer).unwrap();
    let approver = accounts.add("alice", Role::Approver).unwrap();
    let operators = OperatorsHandle::new(accounts);
    let server = serve_with_operators(&hub, &operators).await;
    let (held, ticket) = held_call(&hub);

    let mut bob = connected_as(&server, &viewer).await;
    bob.send(&approve(1, &held.call_id)).await.unwrap();
    let (reply, _) = reply_to(&mut bob, 1).await;
    assert!(!reply.ok, "a viewer approved a held call");
    let error = reply.error.unwrap();
    assert!(
        error.contains("operator bob has the viewer role"),
        "{error}"
    );
    assert!(error.contains("approver"), "{error}");
    let pin = ClientMsg::AcceptPin {
        id: 2,
        server: "s".into(),
        tool: "t".into(),
        fingerprint: "00".into(),
        operator: None,
    };
    bob.send(&pin).await.unwrap();
    assert!(
        reply_to(&mut bob, 2)
            .await
            .0
            .error
            .unwrap()
            .contains("admin")
    );

    // Alice may approve; the record names her account whatever name the client claims.
    let mut alice = connected_as(&server, &approver).await;
    let claimed = ClientMsg::Approve {
        id: 3,
        call_id: held.call_id.to_string(),
        operator: Some("mallory".into()),
    };
    alice.send(&claimed).await.unwrap();
    let (reply, _) = reply_to(&mut alice, 3).await;
    assert!(reply.ok, "{reply:?}");
    let resolution = within("the resolution", ANSWER_WITHIN, ticket.wait()).await;
    assert!(resolution.approved);
    assert_eq!(resolution.operator.as_deref(), Some("alice"));
    // Not an admin either.
    alice
        .send(&ClientMsg::AcceptPin {
            id: 4,
            server: "s".into(),
            tool: "t".into(),
            fingerprint: "00".into(),
            operator: None,
        })
        .await
        .unwrap();
    assert!(!reply_to(&mut alice, 4).await.0.ok);

    // The gateway's own token keeps every right.
    let mut local = connected(&server).await;
    let (second, _ticket) = held_call(&hub);
    local.send(&approve(5, &second.call_id)).await.unwrap();
    assert!(reply_to(&mut local, 5).await.0.ok);
}

#[tokio::test]
async fn a_grant_token_or_an_unknown_operator_token_is_refused() {
    let hub = new_hub("notop");
    let mut accounts = Operators::empty();
    let token = accounts.add("alice", Role::Admin).unwrap();
    let operators = OperatorsHandle::new(accounts);
    let server = serve_with_operators(&hub, &operators).await;
    for wrong in [
        format!("tg_{}", &token[5..]),
        // The last digit changed (whatever it was).
        format!(
            "{}{}",
            &token[..token.len() - 1],
            if token.ends_with('0') { '1' } else { '0' }
        ),
        String::new(),
    ] {
        let attempt = within(
            "a refusal",
            ANSWER_WITHIN,
            control::connect(server.url(), &wrong),
        )
        .await;
        assert!(
            matches!(attempt, Err(ClientError::Unauthorized(_))),
            "{wrong}: {attempt:?}"
        );
    }
}

#[tokio::test]
async fn a_revoked_operator_is_disconnected_as_soon_as_the_file_changes() {
    let hub = new_hub("revoke");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("operators.json");
    let mut accounts = Operators::empty();
    let alice = accounts.add("alice", Role::Approver).unwrap();
    let bob = accounts.add("bob", Role::Viewer).unwrap();
    accounts.save(&path).unwrap();
    let operators = OperatorsHandle::new(Operators::load(&path).unwrap());
    let _watch = OperatorsWatcher::start(&path, operators.clone()).unwrap();
    let server = serve_with_operators(&hub, &operators).await;
    let mut alice_conn = connected_as(&server, &alice).await;
    let mut bob_conn = connected_as(&server, &bob).await;

    accounts.revoke("alice");
    let revoked_at = std::time::Instant::now();
    accounts.save(&path).unwrap();
    // The connection ends (a close frame, then nothing) without anything else to read.
    loop {
        match within(
            "alice's connection to close",
            ANSWER_WITHIN,
            alice_conn.next_event(),
        )
        .await
        {
            None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        }
    }
    eprintln!(
        "revoked operator disconnected {:?} after the file was written",
        revoked_at.elapsed()
    );
    let again = within(
        "a refusal",
        ANSWER_WITHIN,
        control::connect(server.url(), &alice),
    )
    .await;
    assert!(
        matches!(again, Err(ClientError::Unauthorized(_))),
        "{again:?}"
    );
    // Bob's account did not change: still connected.
    let seen = read_until_marker(&hub, &mut bob_conn, "still-here").await;
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn a_connection_without_the_token_is_refused_with_401() {
    let hub = new_hub("tok");
    let server = serve(&hub).await;

    let wrong = within(
        "the answer to a wrong token",
        ANSWER_WITHIN,
        control::connect(server.url(), &"0".repeat(64)),
    )
    .await;
    assert!(
        matches!(wrong, Err(ClientError::Unauthorized(_))),
        "{wrong:?}"
    );

    let without = tokio_tungstenite::connect_async(server.url());
    match within("the answer to no token", ANSWER_WITHIN, without).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected HTTP 401 without a token, got {other:?}"),
    }

    // The token in the URL is not a way in either.
    let in_query = format!("{}?token={}", server.url(), server.token());
    let in_query = tokio_tungstenite::connect_async(in_query);
    assert!(matches!(
        within("the answer to a token in the URL", ANSWER_WITHIN, in_query).await,
        Err(tokio_tungstenite::tungstenite::Error::Http(_))
    ));

    let right = control::connect(server.url(), server.token());
    assert!(
        within("the answer to the right token", ANSWER_WITHIN, right)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn hello_carries_the_snapshot_and_the_latest_seq() {
    let hub = new_hub("snap");
    let server = serve(&hub).await;
    hub.publish(EventKind::Call(call(&hub, Verdict::Allow, json!({"a": 1}))));
    hub.publish(EventKind::Call(call(&hub, Verdict::Deny, json!({}))));
    let (held, _ticket) = held_call(&hub);

    let mut conn = connect(&server).await;
    let (seq, hello) = hello(&mut conn).await;
    assert_eq!(seq, 3);
    assert_eq!(hello.protocol, PROTOCOL_VERSION);
    assert_eq!(hello.info.id, "snap");
    assert_eq!(hello.snapshot.calls.len(), 3);
    assert_eq!(hello.snapshot.holds, vec![held.call_id.clone()]);
    assert_eq!(hello.snapshot.totals.allow, 1);
    assert_eq!(hello.snapshot.totals.deny, 1);
    assert_eq!(hello.snapshot.totals.hold, 1);

    // The live stream continues right after the hello's seq.
    hub.publish(EventKind::Call(call(&hub, Verdict::Allow, json!({}))));
    let live = next(&mut conn).await;
    assert_eq!(live.seq, 4);
    assert!(matches!(live.kind, EventKind::Call(_)));
}

#[tokio::test]
async fn an_operator_approval_releases_the_held_call() {
    let hub = new_hub("appr");
    let server = serve(&hub).await;
    let (held, ticket) = held_call(&hub);
    let mut conn = connected(&server).await;

    conn.send(&approve(1, &held.call_id)).await.unwrap();
    let (reply, _) = reply_to(&mut conn, 1).await;
    assert!(reply.ok, "{reply:?}");

    let resolution = within("the held call's resolution", ANSWER_WITHIN, ticket.wait()).await;
    assert!(resolution.approved);
    assert_eq!(resolution.by, ResolvedBy::Operator);
    assert_eq!(resolution.operator.as_deref(), Some("alice"));

    let seen = read_until_marker(&hub, &mut conn, "m").await;
    assert!(seen.iter().any(|e| matches!(&e.kind,
        EventKind::HoldResolved(r) if r.call_id == held.call_id && r.approved)));
}

#[tokio::test]
async fn a_denial_carries_the_operators_reason() {
    let hub = new_hub("deny");
    let server = serve(&hub).await;
    let (held, ticket) = held_call(&hub);
    let mut conn = connected(&server).await;

    let deny = ClientMsg::Deny {
        id: 9,
        call_id: held.call_id.to_string(),
        reason: Some("not on a Friday".into()),
        operator: None,
    };
    let reply = within("a reply", ANSWER_WITHIN, conn.request(&deny))
        .await
        .unwrap();
    assert!(reply.ok, "{reply:?}");
    let resolution = within("the held call's resolution", ANSWER_WITHIN, ticket.wait()).await;
    assert!(!resolution.approved);
    assert_eq!(resolution.reason.as_deref(), Some("not on a Friday"));
}

#[tokio::test]
async fn unknown_and_already_resolved_calls_are_answered_with_an_error() {
    let hub = new_hub("unk");
    let server = serve(&hub).await;
    let (held, _ticket) = held_call(&hub);
    let mut conn = connected(&server).await;

    let reply = within(
        "a reply",
        ANSWER_WITHIN,
        conn.request(&approve(1, "unk-999")),
    )
    .await
    .unwrap();
    assert!(!reply.ok);
    assert!(reply.error.unwrap().contains("no held call unk-999"));

    assert!(
        within(
            "a reply",
            ANSWER_WITHIN,
            conn.request(&approve(2, &held.call_id))
        )
        .await
        .unwrap()
        .ok
    );
    let again = within(
        "a reply",
        ANSWER_WITHIN,
        conn.request(&approve(3, &held.call_id)),
    )
    .await
    .unwrap();
    assert!(!again.ok);
    assert!(again.error.unwrap().contains("already resolved"));
}

#[tokio::test]
async fn garbage_commands_get_an_error_reply_and_the_connection_stays_usable() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let hub = new_hub("junk");
    let server = serve(&hub).await;
    let (held, _ticket) = held_call(&hub);
    let mut ws = raw_socket(&server).await;
    let read_reply = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        let msg: Message = within("a reply", ANSWER_WITHIN, ws.next())
            .await
            .unwrap()
            .unwrap();
        let event: Event = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        if let EventKind::Reply(reply) = event.kind {
            return reply;
        }
    };

    for junk in [
        "not json",
        r#"{"type":"launch_missiles","id":4}"#,
        r#"{"type":"approve","id":5,"call_id":"x","extra":true}"#,
        "[]",
    ] {
        ws.send(Message::text(junk)).await.unwrap();
        let reply = read_reply(&mut ws).await;
        assert!(!reply.ok, "{junk} was accepted");
        assert!(reply.error.is_some());
    }
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert!(!read_reply(&mut ws).await.ok);

    let good = serde_json::to_string(&approve(6, &held.call_id)).unwrap();
    ws.send(Message::text(good)).await.unwrap();
    let reply = read_reply(&mut ws).await;
    assert_eq!(reply.id, 6);
    assert!(reply.ok);
}

#[tokio::test]
async fn an_oversized_command_closes_only_that_connection() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let hub = new_hub("big");
    let server = serve(&hub).await;
    let mut ws = raw_socket(&server).await;
    let huge = "x".repeat(control::MAX_CLIENT_MESSAGE + 1);
    let _ = ws.send(Message::text(huge)).await;
    // The server drops that connection: its stream ends (possibly after the hello and a
    // close frame) instead of staying open.
    use futures_util::StreamExt;
    let closing = async {
        while let Some(Ok(frame)) = ws.next().await {
            if frame.is_close() {
                break;
            }
        }
    };
    within(
        "the server to close the connection that sent an oversized command",
        ANSWER_WITHIN,
        closing,
    )
    .await;

    // Another connection still gets its hello.
    connected(&server).await;
}

#[tokio::test]
async fn two_operators_approving_at_once_first_wins_and_both_see_one_resolution() {
    let hub = new_hub("race");
    let server = serve(&hub).await;
    let (held, ticket) = held_call(&hub);
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    hello(&mut a).await;
    hello(&mut b).await;

    let approval = approve(1, &held.call_id);
    let denial = ClientMsg::Deny {
        id: 1,
        call_id: held.call_id.to_string(),
        reason: Some("no".into()),
        operator: Some("bob".into()),
    };
    let (ra, rb) = tokio::join!(a.send(&approval), b.send(&denial));
    ra.unwrap();
    rb.unwrap();
    let ((reply_a, mut seen_a), (reply_b, mut seen_b)) =
        tokio::join!(reply_to(&mut a, 1), reply_to(&mut b, 1));
    assert!(
        reply_a.ok ^ reply_b.ok,
        "exactly one wins: {reply_a:?} {reply_b:?}"
    );
    let loser = if reply_a.ok { &reply_b } else { &reply_a };
    assert!(loser.error.as_deref().unwrap().contains("already resolved"));

    let winner_approved = reply_a.ok;
    assert_eq!(
        within("the held call's resolution", ANSWER_WITHIN, ticket.wait())
            .await
            .approved,
        winner_approved
    );

    seen_a.extend(read_until_marker(&hub, &mut a, "m").await);
    seen_b.extend(read_until_marker(&hub, &mut b, "m2").await);
    for seen in [&seen_a, &seen_b] {
        let resolved: Vec<_> = seen
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::HoldResolved(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0].approved, winner_approved);
    }
}

#[tokio::test]
async fn a_reconnecting_client_gets_the_state_it_missed_in_the_snapshot() {
    let hub = new_hub("rec");
    let server = serve(&hub).await;
    let (first, _t1) = held_call(&hub);
    let (second, _t2) = held_call(&hub);
    let mut conn = connect(&server).await;
    let (_, before) = hello(&mut conn).await;
    assert_eq!(
        before.snapshot.holds,
        vec![first.call_id.clone(), second.call_id.clone()]
    );
    conn.close().await;

    hub.resolve(
        &first.call_id,
        control::Resolution {
            approved: false,
            by: ResolvedBy::Timeout,
            operator: None,
            reason: Some("approval timed out after 2m".into()),
        },
    )
    .unwrap();
    hub.publish(EventKind::PolicyApplied(
        toolgate::testing::wire::PolicyApplied {
            path: "/tmp/policy.json".into(),
            hash: "3f9a21".into(),
        },
    ));

    let mut again = connect(&server).await;
    let (seq, after) = hello(&mut again).await;
    assert_eq!(seq, hub.latest_seq());
    assert_eq!(after.snapshot.holds, vec![second.call_id.clone()]);
    assert_eq!(after.snapshot.policy_hash.as_deref(), Some("3f9a21"));
    let record = after
        .snapshot
        .calls
        .iter()
        .find(|r| r.call.call_id == first.call_id)
        .unwrap();
    let resolution = record.resolution.as_ref().unwrap();
    assert_eq!(resolution.by, ResolvedBy::Timeout);
    assert!(!resolution.approved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_misses_events_then_gets_a_fresh_hello_while_others_keep_up() {
    let hub = new_hub("stall");
    let server = serve(&hub).await;
    // Connected and never read until the end: the gateway must not wait for it.
    let mut stalled = connect(&server).await;
    let mut fast = connected(&server).await;

    // Far more than the socket buffers and the per-client queue can hold.
    let payload = "x".repeat(4096);
    let total = 20_000u64;
    let batch = 500;
    let mut expected_seq = 1;
    for _ in 0..total / batch {
        for _ in 0..batch {
            hub.publish(EventKind::Call(call(
                &hub,
                Verdict::Allow,
                json!({"blob": payload}),
            )));
        }
        // The fast client reads everything, in order, without a gap.
        while expected_seq <= hub.latest_seq() {
            let event = next(&mut fast).await;
            assert_eq!(event.seq, expected_seq, "{:?}", event.kind);
            assert!(matches!(event.kind, EventKind::Call(_)));
            expected_seq += 1;
        }
    }
    assert_eq!(hub.latest_seq(), total);

    // The stalled client now reads: old events, then `missed`, then a fresh `hello`.
    let (_, first_hello) = hello(&mut stalled).await;
    assert_eq!(first_hello.snapshot.calls.len(), 0);
    let mut last_seq = 0;
    let dropped = loop {
        let event = next(&mut stalled).await;
        match event.kind {
            EventKind::Call(_) => {
                assert_eq!(event.seq, last_seq + 1);
                last_seq = event.seq;
            }
            EventKind::Missed(missed) => break missed.dropped,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(dropped > 0);
    let (hello_seq, fresh) = hello(&mut stalled).await;
    assert_eq!(hello_seq, last_seq + dropped);
    assert_eq!(
        fresh.snapshot.calls.len(),
        toolgate::testing::control::RECENT_CALLS
    );
    assert_eq!(fresh.snapshot.totals.allow, hello_seq);

    // And then the live stream, from right after that hello.
    let seen = read_until_marker(&hub, &mut stalled, "end").await;
    for (i, event) in seen.iter().enumerate() {
        assert_eq!(event.seq, hello_seq + 1 + i as u64);
    }
}

#[tokio::test]
async fn a_non_loopback_address_needs_tls_and_then_speaks_only_tls() {
    use toolgate::testing::control::{TlsClientOptions, connect_with};
    use toolgate::testing::tls::{ServerTls, TlsFiles};

    let hub = new_hub("remote");
    let refused = control::start(
        hub.clone(),
        EventsOptions {
            addr: "0.0.0.0:0".parse().unwrap(),
            discovery: false,
            ..EventsOptions::default()
        },
    )
    .await;
    let err = refused.expect_err("0.0.0.0 without TLS is refused");
    let err = err.to_string();
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(err.contains("--tls-cert PEM --tls-key PEM"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let ca = support::tls::Ca::new("test CA");
    let files = ca.write_server(dir.path(), "gw");
    let tls = ServerTls::start(TlsFiles {
        cert: files.cert.clone(),
        key: files.key.clone(),
    })
    .expect("the pair loads");
    let server = control::start(
        hub,
        EventsOptions {
            addr: "0.0.0.0:0".parse().unwrap(),
            tls: Some(tls),
            discovery: false,
            ..EventsOptions::default()
        },
    )
    .await
    .expect("0.0.0.0 with TLS starts");
    assert!(server.url().starts_with("wss://"), "{}", server.url());
    let port = server.local_addr().port();
    let wss = format!("wss://127.0.0.1:{port}/");
    let trusted = TlsClientOptions {
        ca_file: Some(files.ca.clone()),
    };
    let mut conn = within(
        "a wss connection trusting the private CA",
        ANSWER_WITHIN,
        connect_with(&wss, server.token(), &trusted),
    )
    .await
    .expect("connects over TLS");
    assert!(matches!(
        conn.next_event().await,
        Some(Ok(Event {
            kind: EventKind::Hello(_),
            ..
        }))
    ));

    // Without the CA: not trusted, said so.
    let other = support::tls::Ca::new("another CA");
    std::fs::write(dir.path().join("other.pem"), other.pem()).unwrap();
    let untrusted = TlsClientOptions {
        ca_file: Some(dir.path().join("other.pem")),
    };
    let err = within(
        "a wss connection trusting another CA",
        ANSWER_WITHIN,
        connect_with(&wss, server.token(), &untrusted),
    )
    .await
    .expect_err("a CA that did not sign it");
    assert!(matches!(err, ClientError::Untrusted { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "the certificate of 127.0.0.1:{port} is not trusted"
        )),
        "{err}"
    );
    assert!(err.to_string().contains("--ca-file"), "{err}");

    // Plain ws:// to the TLS port: told to use TLS.
    let err = within(
        "a plain ws connection to the TLS port",
        ANSWER_WITHIN,
        connect_with(&format!("ws://127.0.0.1:{port}/"), server.token(), &trusted),
    )
    .await
    .expect_err("plain text to a TLS port");
    assert!(matches!(err, ClientError::PlainToTls(_)), "{err:?}");
}

#[tokio::test]
async fn wss_to_a_plain_port_says_it_is_not_tls() {
    use toolgate::testing::control::{TlsClientOptions, connect_with};
    let hub = new_hub("plain");
    let server = serve(&hub).await;
    let port = server.local_addr().port();
    let err = within(
        "a wss connection to a plain port",
        ANSWER_WITHIN,
        connect_with(
            &format!("wss://127.0.0.1:{port}/"),
            server.token(),
            &TlsClientOptions::default(),
        ),
    )
    .await
    .expect_err("TLS to a plain port");
    assert!(matches!(err, ClientError::NotTls { .. }), "{err:?}");
    assert!(err.to_string().contains("connect with ws://"), "{err}");
}

#[tokio::test]
async fn shutdown_closes_the_connections() {
    let hub = new_hub("shut");
    let server = serve(&hub).await;
    let mut conn = connected(&server).await;
    server.shutdown().await;
    assert!(conn.next_event().await.is_none());
}

#[tokio::test]
async fn a_hello_with_a_thousand_holds_carries_them_all_and_the_last_calls_within_1_mib() {
    use futures_util::StreamExt;
    use toolgate::testing::control::{
        DEFAULT_MAX_HOLDS, DEFAULT_MAX_HOLDS_PER_GRANT, RECENT_CALLS,
    };

    let hub = new_hub("size");
    let server = serve(&hub).await;
    // Arguments the size of a typical tool call's: a path and a paragraph.
    let args = |n: usize| {
        json!({"path": format!("/home/me/projects/site/src/pages/p{n:05}.tsx"),
                                 "content": "lorem ipsum dolor sit amet ".repeat(8)})
    };
    let grants = DEFAULT_MAX_HOLDS / DEFAULT_MAX_HOLDS_PER_GRANT;
    let mut held = Vec::new();
    for n in 0..DEFAULT_MAX_HOLDS {
        let mut call = call(&hub, Verdict::Hold, args(n));
        call.grant = format!("grant-{}", n % grants).into();
        hub.reserve_hold(&call.call_id, &call.grant)
            .expect("the default caps leave room for 1,000 holds over 10 grants");
        hub.publish(EventKind::Call(call.clone()));
        held.push(call.call_id);
    }
    let mut extra = call(&hub, Verdict::Hold, args(0));
    extra.grant = "grant-0".into();
    assert!(
        hub.reserve_hold(&extra.call_id, &extra.grant).is_err(),
        "the 1,001st hold is refused"
    );
    for n in 0..3 * RECENT_CALLS {
        hub.publish(EventKind::Call(call(&hub, Verdict::Allow, args(n))));
    }

    let mut ws = raw_socket(&server).await;
    let frame = tokio::time::timeout(support::ANSWER_WITHIN, ws.next())
        .await
        .expect("a hello in time")
        .expect("the connection stays open")
        .expect("a valid frame");
    let text = frame.to_text().expect("a text frame");
    eprintln!(
        "hello with {} holds and {} recent calls: {} bytes",
        held.len(),
        RECENT_CALLS,
        text.len()
    );
    assert!(
        text.len() <= 1024 * 1024,
        "the hello is {} bytes, more than 1 MiB",
        text.len()
    );
    let event: Event = serde_json::from_str(text).expect("a hello");
    let EventKind::Hello(hello) = event.kind else {
        panic!("expected a hello first, got {:?}", event.kind);
    };
    assert_eq!(hello.snapshot.holds, held);
    let records = &hello.snapshot.calls;
    assert_eq!(records.len(), held.len() + RECENT_CALLS);
    // Every hold with its record (the console shows what is held), then the last calls.
    assert!(
        records[..held.len()]
            .iter()
            .zip(&held)
            .all(|(r, id)| &r.call.call_id == id)
    );
    assert!(
        records[held.len()..]
            .iter()
            .all(|r| r.call.decision == Verdict::Allow)
    );
    assert_eq!(hello.snapshot.totals.allow, 3 * RECENT_CALLS as u64);
}
