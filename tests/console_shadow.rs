//! Shadow decisions in the console: the Live view's mark and the `shadow:` filter, the
//! detail's line, the Policy view's count per shadow rule (snapshots), `P` promoting a shadow
//! rule into the write review, and `:shadow TOOL`.

mod console_support;

use console_support::*;
use crossterm::event::KeyCode;
use serde_json::Value;
use toolgate::console::testing::{AppEvent, State, active_bindings, update};
use toolgate::testing::wire::{EventKind, ShadowDecision, ShadowSource, Verdict};

const PATH: &str = "/home/op/policy.json";

const POLICY: &str = r#"{
  "version": "1",
  "default": "allow",
  "tools": {
    "send_message": {
      "shadow": true,
      "action": "deny",
      "reason": "agents stop sending messages next week"
    },
    "list_meetings": {}
  }
}
"#;

/// One gateway, the policy file loaded, and `shadowed` calls of `send_message` that its
/// shadow rule would deny, between two ordinary calls.
fn state(shadowed: u32) -> State {
    let mut s = State::new(t0(), 1000);
    let now = at_ms(60_000);
    update(&mut s, up("a1b2"), now);
    update(
        &mut s,
        net("a1b2", 1, t0(), hello("a1b2", "ci-bot", vec![], vec![])),
        now,
    );
    update(
        &mut s,
        AppEvent::PolicyFile {
            path: PATH.into(),
            result: Ok(POLICY.into()),
        },
        now,
    );
    let mut seq = 10;
    let mut push = |s: &mut State, n: u32, tool: &str, shadow: bool| {
        let mut c = call("a1b2", n, tool, "ci-bot", Verdict::Allow);
        c.rule = "/default".into();
        if shadow {
            c.shadow = Some(Box::new(ShadowDecision {
                decision: Verdict::Deny,
                rule: "/tools/send_message".into(),
                reason: "agents stop sending messages next week".into(),
                source: ShadowSource::Rule,
            }));
        }
        seq += 1;
        update(
            s,
            net(
                "a1b2",
                seq,
                at_ms(50_000 + i64::from(n) * 100),
                EventKind::Call(c),
            ),
            now,
        );
    };
    push(&mut s, 1, "list_meetings", false);
    for n in 0..shadowed {
        push(&mut s, 2 + n, "send_message", true);
    }
    push(&mut s, 2 + shadowed, "list_meetings", false);
    s.effects.clear();
    s.message = None;
    s
}

fn command(s: &mut State, line: &str) {
    key(s, KeyCode::Char(':'));
    typed(s, line);
    key(s, KeyCode::Enter);
}

fn rule(s: &State, key: &str) -> Value {
    let draft = s.authoring.draft.as_ref().expect("a draft");
    let doc: Value = serde_json::from_str(draft.text()).expect("draft is JSON");
    doc["tools"][key].clone()
}

#[test]
fn live_view_marks_calls_a_shadow_rule_would_have_changed() {
    let s = state(2);
    let buf = render(&s, 110, 8);
    let screen = text(&buf);
    insta::assert_debug_snapshot!("live_shadow_mark", screen);
    let marked: Vec<&String> = screen
        .iter()
        .filter(|l| l.contains("◐ would deny"))
        .collect();
    assert_eq!(marked.len(), 2, "{screen:#?}");
    assert!(
        marked
            .iter()
            .all(|l| l.contains("send_message") && l.contains("✓ allow"))
    );
    // The mark is drawn in the rate-limited (amber) slot, apart from the muted rule text.
    let row = screen
        .iter()
        .position(|l| l.contains("◐ would deny"))
        .expect("a marked row");
    let col = screen[row]
        .chars()
        .position(|c| c == '◐')
        .expect("the mark");
    let mark = &buf[(u16::try_from(col).unwrap(), u16::try_from(row).unwrap())];
    let rule_col = screen[row]
        .find("/default")
        .map(|b| screen[row][..b].chars().count());
    let rule_cell = &buf[(
        u16::try_from(rule_col.expect("the rule")).unwrap(),
        u16::try_from(row).unwrap(),
    )];
    assert_ne!(mark.fg, rule_cell.fg, "the mark stands out from the rule");
}

#[test]
fn the_shadow_filter_selects_calls_with_a_shadow_decision() {
    let mut s = state(3);
    key(&mut s, KeyCode::Char('/'));
    typed(&mut s, "shadow:");
    key(&mut s, KeyCode::Enter);
    assert_eq!(s.live_len(), 3);
    key(&mut s, KeyCode::Esc);
    assert_eq!(s.live_len(), 5);
    key(&mut s, KeyCode::Char('/'));
    typed(&mut s, "shadow:hold");
    key(&mut s, KeyCode::Enter);
    assert_eq!(s.live_len(), 0, "no shadow would hold");
}

#[test]
fn the_detail_says_what_the_shadow_rule_would_have_done_and_why() {
    let mut s = state(1);
    key(&mut s, KeyCode::Up);
    key(&mut s, KeyCode::Enter);
    let screen = text(&render(&s, 110, 24)).join("\n");
    assert!(
        screen.contains(
            "◐ would deny by shadow rule /tools/send_message: agents stop sending messages next week"
        ),
        "{screen}"
    );
}

#[test]
fn policy_view_counts_what_each_shadow_rule_would_have_changed() {
    let mut s = state(2);
    key(&mut s, KeyCode::Char('3'));
    let screen = text(&render(&s, 130, 10));
    insta::assert_debug_snapshot!("policy_shadow_column", screen);
    assert!(
        screen.iter().any(|l| l.contains(
            "◐ shadow, not enforced: send_message would have changed 2 calls · P on its row promotes it"
        )),
        "the count reads at any width: {screen:#?}"
    );
    let row = screen
        .iter()
        .find(|l| l.contains("send_message") && l.contains("◐ deny"))
        .expect("the shadow rule's row");
    let wide = text(&render(&s, 200, 10));
    assert!(
        wide.iter().any(|l| l.contains("◐ deny")
            && l.contains("shadow: would have changed 2 calls · P promotes")),
        "{wide:#?}"
    );
    let plain = screen
        .iter()
        .find(|l| l.contains("list_meetings"))
        .expect("the ordinary rule's row");
    assert!(
        !plain.contains('◐') && !plain.contains("shadow"),
        "{plain} / {row}"
    );
}

#[test]
fn p_on_a_shadow_rule_promotes_it_into_the_write_review_and_only_there() {
    let mut s = state(2);
    key(&mut s, KeyCode::Char('3'));
    assert!(
        active_bindings(&s).any(|b| b.label == "P"),
        "P is offered on the shadow rule"
    );
    key(&mut s, KeyCode::Down); // list_meetings: not a shadow rule
    assert!(!active_bindings(&s).any(|b| b.label == "P"));
    key(&mut s, KeyCode::Char('P'));
    assert!(s.overlays.review().is_none(), "P does nothing here");
    assert_eq!(rule(&s, "list_meetings"), serde_json::json!({}));

    key(&mut s, KeyCode::Up);
    key(&mut s, KeyCode::Char('P'));
    let review = s.overlays.review().expect("the write review");
    assert!(
        review
            .diff
            .iter()
            .any(|l| l.trim_start() == "-      \"shadow\": true,"),
        "{:#?}",
        review.diff
    );
    assert_eq!(
        rule(&s, "send_message"),
        serde_json::json!({"action": "deny", "reason": "agents stop sending messages next week"})
    );
    // The what-if says what promoting changes: the shadowed calls would now be denied.
    assert!(
        review
            .whatif
            .summary()
            .iter()
            .any(|l| l == "2 calls allowed before would now be denied"),
        "{:?}",
        review.whatif.summary()
    );
}

#[test]
fn shadow_command_drafts_a_shadow_deny_rule_only_where_no_rule_is() {
    let mut s = state(0);
    command(&mut s, "shadow export_data");
    assert_eq!(
        rule(&s, "export_data"),
        serde_json::json!({"action": "deny", "shadow": true})
    );
    command(&mut s, "shadow list_meetings");
    let m = s.message.clone().expect("a refusal");
    assert!(m.error && m.text.contains("rule of its own"), "{}", m.text);
    assert_eq!(rule(&s, "list_meetings"), serde_json::json!({}));
}
