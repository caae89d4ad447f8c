//! The console with several operators and several gateways (issue 17): a hold resolved by
//! another operator, remote gateways' hosts, replicas seen through two connections, counters
//! of a shared store, and the remote policy write. Driven through the real `update` and
//! drawn on a `TestBackend`.

mod console_support;

use console_support::*;
use crossterm::event::KeyCode;
use toolgate::console::testing::{AppEvent, Effect, Link, View, update};
use toolgate::testing::wire::{ClientMsg, EventKind, HoldResolved, ResolvedBy};

/// Another console (alice's) approves the hold this operator has selected.
fn alice_approves(s: &mut toolgate::console::testing::State, call_id: &str, gw: &str) {
    let now = s.now;
    update(
        s,
        net(
            gw,
            40,
            now,
            EventKind::HoldResolved(HoldResolved {
                call_id: call_id.into(),
                approved: true,
                by: ResolvedBy::Operator,
                operator: Some("alice".into()),
                reason: None,
            }),
        ),
        now,
    );
}

#[test]
fn a_hold_approved_on_another_console_stays_selected_says_who_and_the_approve_key_sends_nothing() {
    let mut s = populated();
    key(&mut s, KeyCode::Char('2'));
    assert_eq!(s.view, View::Holds);
    let first = s.holds[0].call.call_id.clone();
    let second = s.holds[1].call.call_id.clone();
    let gw = first.split('-').next().unwrap().to_owned();
    alice_approves(&mut s, &first, &gw);
    assert!(!s.is_held(&first));
    let m = s.message.clone().expect("a message");
    assert!(m.text.contains("approved by alice"), "{m:?}");

    // Three seconds later the operator, who was looking at it, presses a.
    s.now += chrono::TimeDelta::seconds(3);
    key(&mut s, KeyCode::Char('a'));
    assert!(
        !s.effects.iter().any(|e| matches!(
            e,
            Effect::Send {
                msg: ClientMsg::Approve { .. },
                ..
            }
        )),
        "nothing is sent: {:?}",
        s.effects
    );
    let m = s.message.clone().expect("a message");
    assert!(m.error, "{m:?}");
    assert!(
        m.text
            .contains("was already approved by alice 3 s ago: nothing done"),
        "{m:?}"
    );
    let screen = text(&render(&s, 110, 26)).join("\n");
    assert!(screen.contains("approved by alice 3 s ago"), "{screen}");
    insta::assert_snapshot!("hold_approved_elsewhere", screen);

    // Moving on selects the holds still waiting; a then approves the one selected.
    key(&mut s, KeyCode::Up);
    s.effects.clear();
    key(&mut s, KeyCode::Char('a'));
    let sent: Vec<_> = s
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send {
                msg: ClientMsg::Approve { call_id, .. },
                ..
            } => Some(call_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(sent, [second]);
}

#[test]
fn a_hold_resolved_elsewhere_while_the_operator_is_in_the_live_view_pins_nothing() {
    let mut s = populated();
    assert_eq!(s.view, View::Live);
    let first = s.holds[0].call.call_id.clone();
    let gw = first.split('-').next().unwrap().to_owned();
    alice_approves(&mut s, &first, &gw);
    assert_eq!(s.holds_view.resolved_elsewhere, None);
    assert_eq!(s.holds_view.detail, None);
}

#[test]
fn a_hold_this_console_approved_is_not_pinned_as_resolved_elsewhere() {
    let mut s = populated();
    key(&mut s, KeyCode::Char('2'));
    let first = s.holds[0].call.call_id.clone();
    let second = s.holds[1].call.call_id.clone();
    let gw = first.split('-').next().unwrap().to_owned();
    key(&mut s, KeyCode::Char('a'));
    alice_approves(&mut s, &first, &gw);
    assert_eq!(s.holds_view.resolved_elsewhere, None);
    assert_eq!(
        s.selected_call().map(|c| c.call_id.clone()),
        Some(second),
        "the next hold is selected, as before"
    );
}

const GW1: &str = "wss://gw1.example:8787/control";
const GW2: &str = "wss://gw2.example:8787/control";

/// A console following two replicas (`r1` on gw1, `r2` on gw2) by URL, and `r1` a second
/// time under its local discovery key (the operator's console runs on gw1 too).
fn replicas() -> toolgate::console::testing::State {
    replicas_counting_in(["redis://10.0.0.9:6379/0", "redis://10.0.0.9:6379/0"])
}

/// [`replicas`], `r1` and `r2` saying they count in `stores`.
fn replicas_counting_in(stores: [&str; 2]) -> toolgate::console::testing::State {
    let mut s = toolgate::console::testing::State::new(t0(), 1000);
    s.remote_hosts.insert(GW1.into(), "gw1.example:8787".into());
    s.remote_hosts.insert(GW2.into(), "gw2.example:8787".into());
    let now = at_ms(60_000);
    for (key, id) in [(GW1, "r1"), (GW2, "r2"), ("r1", "r1")] {
        update(&mut s, up(key), now);
        let mut hello = hello(id, "*", vec![], vec![]);
        if let EventKind::Hello(h) = &mut hello {
            // The same Redis budget, reported by each replica at its own moment.
            h.snapshot.counters[0].used = if id == "r2" { 29 } else { 28 };
            h.snapshot.counter_store = Some(stores[usize::from(id == "r2")].into());
        }
        let seq = if key == GW2 { 1 } else { 2 };
        let received = now + chrono::TimeDelta::milliseconds(if id == "r2" { 500 } else { 0 });
        update(&mut s, net(key, seq, t0(), hello), received);
    }
    // The same call reaches the console through both connections to r1.
    for key in [GW1, "r1"] {
        update(
            &mut s,
            net(
                key,
                3,
                at_ms(59_000),
                EventKind::Call(call(
                    "r1",
                    1,
                    "send_message",
                    "ci-bot",
                    toolgate::testing::wire::Verdict::Hold,
                )),
            ),
            now,
        );
    }
    update(
        &mut s,
        net(
            GW2,
            2,
            at_ms(59_500),
            EventKind::Call(call(
                "r2",
                1,
                "create_api_key",
                "ci-bot",
                toolgate::testing::wire::Verdict::Allow,
            )),
        ),
        now + chrono::TimeDelta::seconds(1),
    );
    s.effects.clear();
    s.message = None;
    s
}

#[test]
fn replicas_show_as_one_stream_with_their_hosts_and_a_gateway_reached_twice_counts_once() {
    let s = replicas();
    assert_eq!(s.gateways.len(), 3, "three connections");
    assert!(
        s.is_duplicate(2),
        "the local connection to r1 repeats the remote one"
    );
    assert_eq!(s.distinct_gateways().count(), 2);
    assert_eq!(s.connected(), 2);
    assert_eq!(s.history.len(), 2, "one row per call");
    assert_eq!(
        s.holds.len(),
        1,
        "one hold, however many connections report it"
    );
    let totals = s.totals();
    assert_eq!((totals.allow, totals.hold), (1, 1), "counted once");
    let screen = text(&render(&s, 110, 8)).join("\n");
    assert!(screen.contains("2 gateways ●"), "{screen}");
    assert!(screen.contains("r1@gw1.example:8787/ci-bot"), "{screen}");
    assert!(screen.contains("r2@gw2.example:8787/ci-bot"), "{screen}");
    insta::assert_snapshot!("replicas_live", screen);
}

#[test]
fn a_budget_shared_through_redis_is_one_limits_row_with_the_latest_report() {
    let s = replicas();
    let rows = toolgate::console::testing::limit_rows(&s);
    let shared: Vec<_> = rows
        .iter()
        .filter(|r| r.counter == "create_api_key" && r.key == "*")
        .collect();
    assert_eq!(shared.len(), 1, "{rows:?}");
    assert_eq!(shared[0].used, Some(29), "r2 reported last");
}

#[test]
fn the_same_budget_name_in_two_stores_is_two_limits_rows_each_saying_where() {
    let s = replicas_counting_in(["redis://10.0.0.9:6379/0", "redis://10.0.0.7:6379/0"]);
    let rows = toolgate::console::testing::limit_rows(&s);
    let shown: Vec<_> = rows
        .iter()
        .filter(|r| r.counter == "create_api_key")
        .map(|r| (r.used, r.store.clone()))
        .collect();
    assert_eq!(
        shown,
        [
            (Some(29), Some("redis://10.0.0.7:6379/0".to_owned())),
            (Some(28), Some("redis://10.0.0.9:6379/0".to_owned())),
        ]
    );
    let mut s = s;
    key(&mut s, KeyCode::Char('4'));
    let screen = text(&render(&s, 160, 8)).join("\n");
    assert!(
        screen.contains("has room · counted in redis://10.0.0.7:6379/0"),
        "{screen}"
    );
}

#[test]
fn the_holds_view_names_the_gateway_and_host_of_each_hold() {
    let mut s = replicas();
    key(&mut s, KeyCode::Char('2'));
    let screen = text(&render(&s, 110, 6)).join("\n");
    assert!(screen.contains("gateway@host/grant"), "{screen}");
    assert!(screen.contains("r1@gw1.example:8787/ci-bot"), "{screen}");
}

// ---- The remote policy write -------------------------------------------------------------

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "send_message": { "action": "require_approval" },
    "create_api_key": {}
  }
}
"#;

fn sha(text: &str) -> String {
    toolgate::console::testing::hash_bytes(text.as_bytes())
}

/// Types `:LINE` and Enter.
fn command(s: &mut toolgate::console::testing::State, line: &str) {
    key(s, KeyCode::Char(':'));
    typed(s, line);
    key(s, KeyCode::Enter);
}

/// The commands the console asked to send, as (connection key, message).
fn sent(s: &toolgate::console::testing::State) -> Vec<(String, ClientMsg)> {
    s.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { gateway, msg } => Some((gateway.clone(), msg.clone())),
            _ => None,
        })
        .collect()
}

fn reply(s: &mut toolgate::console::testing::State, key: &str, r: toolgate::testing::wire::Reply) {
    let now = s.now;
    update(s, net(key, 90, now, EventKind::Reply(r)), now);
}

/// Two remote replicas running `POLICY`; the console has read it from the first.
fn remote_authoring(writable: bool) -> toolgate::console::testing::State {
    let mut s = toolgate::console::testing::State::new(t0(), 1000);
    s.remote_hosts.insert(GW1.into(), "gw1.example:8787".into());
    s.remote_hosts.insert(GW2.into(), "gw2.example:8787".into());
    let now = at_ms(60_000);
    for (key, id) in [(GW1, "r1"), (GW2, "r2")] {
        update(&mut s, up(key), now);
        let mut hello = hello(id, "*", vec![], vec![]);
        if let EventKind::Hello(h) = &mut hello {
            h.snapshot.policy_hash = Some(sha(POLICY));
            h.info.policy = "/etc/toolgate/policy.json".into();
        }
        update(&mut s, net(key, 1, t0(), hello), now);
    }
    let asked = sent(&s);
    assert_eq!(asked.len(), 1, "the policy is asked for once: {asked:?}");
    let (to, ClientMsg::ReadPolicy { id }) = &asked[0] else {
        panic!("expected read_policy, got {asked:?}");
    };
    assert_eq!(to, GW1, "from the first remote gateway");
    let id = *id;
    s.effects.clear();
    reply(
        &mut s,
        GW1,
        toolgate::testing::wire::Reply {
            id,
            ok: true,
            policy: Some(toolgate::testing::wire::PolicyText {
                path: "/etc/toolgate/policy.json".into(),
                text: POLICY.into(),
                hash: sha(POLICY),
                writable,
            }),
            ..Default::default()
        },
    );
    assert_eq!(
        s.authoring.draft.as_ref().map(|d| d.base_hash.clone()),
        Some(sha(POLICY)),
        "the draft is the gateway's text"
    );
    s
}

/// `:limit`, `:w`, `y`: returns the write_policy commands sent.
fn limit_and_write(s: &mut toolgate::console::testing::State, w: &str) -> Vec<(String, ClientMsg)> {
    command(s, "limit create_api_key 3/minute");
    command(s, w);
    s.effects.clear();
    key(s, KeyCode::Char('y'));
    sent(s)
}

#[test]
fn a_remote_write_goes_to_every_replica_running_the_policy_and_reports_n_of_m() {
    let mut s = remote_authoring(true);
    let writes = limit_and_write(&mut s, "w");
    let text = s.authoring.draft.as_ref().unwrap().text().to_owned();
    assert!(text.contains("\"max\": 3"), "{text}");
    assert_eq!(writes.len(), 2, "{writes:?}");
    let mut ids = Vec::new();
    for (to, msg) in &writes {
        let ClientMsg::WritePolicy {
            id,
            text: sent_text,
            base_hash,
            force,
        } = msg
        else {
            panic!("{msg:?}");
        };
        assert_eq!(sent_text, &text, "the text as edited, to {to}");
        assert_eq!(base_hash, &sha(POLICY));
        assert!(!force);
        ids.push((to.clone(), *id));
    }
    // r1 writes it; r2 refuses: its file was changed by someone else meanwhile.
    reply(
        &mut s,
        &ids[0].0,
        toolgate::testing::wire::Reply {
            id: ids[0].1,
            ok: true,
            ..Default::default()
        },
    );
    reply(
        &mut s,
        &ids[1].0,
        toolgate::testing::wire::Reply {
            id: ids[1].1,
            ok: false,
            error: Some(
                "/etc/toolgate/policy.json changed since the text this edit started from".into(),
            ),
            code: Some(toolgate::testing::wire::ReplyCode::Conflict),
            ..Default::default()
        },
    );
    let m = s.message.clone().unwrap();
    assert!(m.text.contains("written by 1 of 2 gateways"), "{m:?}");
    assert!(
        m.text
            .contains("refused by r2@gw2.example:8787 (changed since read)"),
        "{m:?}"
    );
    // r1's watcher applies it.
    let now = s.now;
    update(
        &mut s,
        net(
            GW1,
            5,
            now,
            EventKind::PolicyApplied(toolgate::testing::wire::PolicyApplied {
                path: "/etc/toolgate/policy.json".into(),
                hash: sha(&text),
            }),
        ),
        now,
    );
    let m = s.message.clone().unwrap();
    assert_eq!(
        m.text,
        format!("policy {} applied by 1 of 2 gateways", &sha(&text)[..6])
    );
    key(&mut s, KeyCode::Char('3'));
    let screen = text_of(&s);
    assert!(screen.contains("on r1@gw1.example:8787"), "{screen}");
    assert!(screen.contains("applied by 1 of 2 gateways"), "{screen}");
    assert!(
        screen.contains("not written by r2@gw2.example:8787: /etc/toolgate/policy.json changed"),
        "{screen}"
    );
    insta::assert_snapshot!("remote_policy_applied_by_1_of_2", screen);
}

fn text_of(s: &toolgate::console::testing::State) -> String {
    text(&render(s, 120, 20)).join("\n")
}

#[test]
fn a_remote_conflict_everywhere_offers_reload_and_force() {
    let mut s = remote_authoring(true);
    let writes = limit_and_write(&mut s, "w");
    let changed = POLICY.replace("\"deny\"", "\"allow\"");
    for (to, msg) in &writes {
        reply(
            &mut s,
            to,
            toolgate::testing::wire::Reply {
                id: msg.id(),
                ok: false,
                error: Some("changed since".into()),
                code: Some(toolgate::testing::wire::ReplyCode::Conflict),
                policy: Some(toolgate::testing::wire::PolicyText {
                    path: "/etc/toolgate/policy.json".into(),
                    text: changed.clone(),
                    hash: sha(&changed),
                    writable: true,
                }),
            },
        );
    }
    let m = s.message.clone().unwrap();
    assert!(m.error && m.text.contains(":reload takes it"), "{m:?}");
    assert!(
        s.authoring.draft.as_ref().unwrap().is_modified(),
        "the draft is kept"
    );
    // :w without ! is refused while the conflict stands; :w! sends with force.
    command(&mut s, "w");
    assert!(s.overlays.top().is_none(), "no review opens");
    let forced = limit_and_write(&mut s, "w!");
    assert!(
        forced
            .iter()
            .all(|(_, m)| matches!(m, ClientMsg::WritePolicy { force: true, .. })),
        "{forced:?}"
    );
    // :reload asks the gateway again.
    s.effects.clear();
    command(&mut s, "reload");
    assert!(matches!(sent(&s).as_slice(), [(to, ClientMsg::ReadPolicy { .. })] if to == GW1));
}

#[test]
fn a_read_only_remote_policy_is_managed_elsewhere_and_nothing_is_sent() {
    let mut s = remote_authoring(false);
    let m = s.message.clone().unwrap();
    assert!(m.error && m.text.contains("managed elsewhere"), "{m:?}");
    command(&mut s, "limit create_api_key 3/minute");
    s.effects.clear();
    command(&mut s, "w");
    let m = s.message.clone().unwrap();
    assert!(m.text.contains("managed elsewhere"), "{m:?}");
    assert!(sent(&s).is_empty());
    key(&mut s, KeyCode::Char('3'));
    assert!(text_of(&s).contains("(read-only: managed elsewhere)"));
}

#[test]
fn a_gateway_refusing_for_its_role_is_named_with_its_reason() {
    let mut s = remote_authoring(true);
    let writes = limit_and_write(&mut s, "w");
    for (to, msg) in &writes {
        reply(
            &mut s,
            to,
            toolgate::testing::wire::Reply {
                id: msg.id(),
                ok: false,
                error: Some("refused: operator bob has the approver role, and writing the policy needs the admin role or above".into()),
                code: Some(toolgate::testing::wire::ReplyCode::Forbidden),
                ..Default::default()
            },
        );
    }
    let m = s.message.clone().unwrap();
    assert!(m.error, "{m:?}");
    assert!(m.text.starts_with("the policy was not written: r1@gw1.example:8787 (not allowed): refused: operator bob has the approver role"), "{m:?}");
    assert!(s.authoring.draft.as_ref().unwrap().is_modified());
}

/// The connection to `gw` drops.
fn down(s: &mut toolgate::console::testing::State, gw: &str) {
    let now = s.now;
    let lost = AppEvent::Link {
        gateway: gw.into(),
        link: Link::Down {
            error: "connection reset".into(),
            retry_in: std::time::Duration::from_secs(1),
        },
    };
    update(s, lost, now);
}

#[test]
fn a_gateway_answering_a_write_twice_counts_once() {
    let mut s = remote_authoring(true);
    let writes = limit_and_write(&mut s, "w");
    let (to, msg) = &writes[0];
    let ok = toolgate::testing::wire::Reply {
        id: msg.id(),
        ok: true,
        ..Default::default()
    };
    reply(&mut s, to, ok.clone());
    reply(&mut s, to, ok);
    let write = s
        .authoring
        .remote
        .write
        .as_ref()
        .expect("the write under way");
    assert_eq!(write.written.len(), 1, "{write:?}");
    assert!(!write.answered(), "r2 has not answered: {write:?}");
    assert!(
        !s.message
            .as_ref()
            .is_some_and(|m| m.text.contains("written by")),
        "{:?}",
        s.message
    );
}

#[test]
fn a_write_whose_gateway_drops_before_answering_ends_as_not_known() {
    let mut s = remote_authoring(true);
    let writes = limit_and_write(&mut s, "w");
    let (to, msg) = &writes[0];
    reply(
        &mut s,
        to,
        toolgate::testing::wire::Reply {
            id: msg.id(),
            ok: true,
            ..Default::default()
        },
    );
    // r2 never answers: its connection drops, and an answer is never carried over a
    // reconnect.
    down(&mut s, &writes[1].0);
    let m = s.message.clone().expect("the write's outcome");
    assert!(m.text.contains("written by 1 of 2 gateways"), "{m:?}");
    assert!(
        m.text
            .contains("the connection was lost before it answered"),
        "{m:?}"
    );
}

#[test]
fn a_policy_read_whose_gateway_drops_is_asked_again_of_a_connected_one() {
    let mut s = toolgate::console::testing::State::new(t0(), 1000);
    s.remote_hosts.insert(GW1.into(), "gw1.example:8787".into());
    s.remote_hosts.insert(GW2.into(), "gw2.example:8787".into());
    let now = at_ms(60_000);
    for (key, id) in [(GW1, "r1"), (GW2, "r2")] {
        update(&mut s, up(key), now);
        update(
            &mut s,
            net(key, 1, t0(), hello(id, "*", vec![], vec![])),
            now,
        );
    }
    let asked = sent(&s);
    assert!(
        matches!(&asked[..], [(to, ClientMsg::ReadPolicy { .. })] if to == GW1),
        "{asked:?}"
    );
    s.effects.clear();
    down(&mut s, GW1);
    // The next update after the loss asks the gateway still connected.
    update(&mut s, up(GW2), now);
    let asked = sent(&s);
    assert!(
        matches!(&asked[..], [(to, ClientMsg::ReadPolicy { .. })] if to == GW2),
        "the read is asked again of r2: {asked:?}"
    );
}
