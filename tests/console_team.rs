//! The console with several operators and several gateways (issue 17): a hold resolved by
//! another operator, remote gateways' hosts, replicas seen through two connections, counters
//! of a shared store, and the remote policy write. Driven through the real `update` and
//! drawn on a `TestBackend`.

mod console_support;

use console_support::*;
use crossterm::event::KeyCode;
use toolgate::console::testing::{Effect, View, update};
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
