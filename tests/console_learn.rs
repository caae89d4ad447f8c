//! The console's review of a learned policy (`--review-learned`), driven through the real
//! update with keys: accept, reject, edit, widen, skip, the what-if count over the recorded
//! calls, the write through the usual review; and snapshots of each step (TestBackend).

mod console_support;

use console_support::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde_json::{Value, json};
use toolgate::console::testing::{
    AppEvent, Cause, Choice, Effect, Stage, State, review_learned, update,
};

const TARGET: &str = "/home/op/policy.json";

const BASE: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "notes_search": {
      "limits": [ { "counter": "notes_search", "window": "minute", "max": 1000 } ]
    },
    "notes_export": {}
  }
}
"#;

fn obs(secs: i64, tool: &str, grant: &str, args: Value) -> Value {
    json!({
        "at": (t0() + chrono::TimeDelta::seconds(secs)).to_rfc3339(),
        "server": "notes",
        "tool": tool,
        "grant": grant,
        "decision": "allow",
        "approved": null,
        "args": args,
    })
}

/// Five proposals (add, remove, add, tighten, add) and the calls they were made from.
fn draft() -> Value {
    json!({
        "base": BASE,
        "proposals": [
            {
                "kind": "add", "tool": "get_time",
                "rule": {
                    "reason": "3 calls from 1 grant; peak 2 a minute",
                    "limits": [ { "counter": "get_time", "window": "minute", "max": 4, "scope": "grant" } ],
                    "require": [ { "path": "args.timezone", "op": "in", "value": ["UTC", "Europe/Paris"] } ]
                },
                "current": null,
                "reason": "3 calls from 1 grant; peak 2 a minute",
                "evidence": ["ci: 3 calls, 12-06 09:00 to 12-06 09:02", "args.timezone: UTC, Europe/Paris"]
            },
            {
                "kind": "remove", "tool": "notes_export", "rule": null, "current": {},
                "reason": "allowed, never called in 7 days", "evidence": []
            },
            {
                "kind": "add", "tool": "notes_read",
                "rule": {
                    "reason": "3 calls; paths under /srv/notes",
                    "limits": [ { "counter": "notes_read", "window": "minute", "max": 5, "scope": "grant" } ],
                    "require": [
                        { "path": "args.path", "op": "under", "value": "/srv/notes" },
                        { "path": "args.max_bytes", "op": "lte", "value": 4096 }
                    ]
                },
                "current": null,
                "reason": "3 calls; paths under /srv/notes",
                "evidence": ["args.path: under /srv/notes", "args.max_bytes: 512 to 4096"]
            },
            {
                "kind": "tighten", "tool": "notes_search",
                "rule": { "limits": [ { "counter": "notes_search", "window": "minute", "max": 6 } ] },
                "current": { "limits": [ { "counter": "notes_search", "window": "minute", "max": 1000 } ] },
                "reason": "peak 3 a minute; the limit allows 1000",
                "evidence": ["ci: 2 calls"]
            },
            {
                "kind": "add", "tool": "notes_write",
                "rule": { "action": "require_approval", "reason": "destructive: a person approves" },
                "current": null,
                "reason": "1 call, approved by a person",
                "evidence": ["ci: 1 call, approved"]
            }
        ],
        "observations": [
            obs(0, "get_time", "ci", json!({"timezone": "UTC"})),
            obs(20, "get_time", "ci", json!({"timezone": "Europe/Paris"})),
            obs(90, "get_time", "ci", json!({"timezone": "UTC"})),
            obs(5, "notes_read", "ci", json!({"path": "/srv/notes/a.md", "max_bytes": 512})),
            obs(6, "notes_read", "ci", json!({"path": "/srv/notes/b/c.md", "max_bytes": 4096})),
            obs(7, "notes_read", "ci", json!({"path": "/srv/notes/d\u{1b}[2J.md", "max_bytes": 1024})),
            obs(8, "notes_search", "ci", json!({"query": "plan"})),
            obs(9, "notes_search", "ci", json!({"query": "q3"})),
            obs(30, "notes_write", "ci", json!({"path": "/srv/notes/a.md"})),
        ],
    })
}

/// A console opened on the review, the target file loaded.
fn reviewing() -> State {
    let mut s = State::new(t0(), 1000);
    review_learned(
        &mut s,
        "draft.json",
        &draft().to_string(),
        TARGET,
        false,
        true,
    )
    .expect("the draft reads");
    let now = s.now;
    update(
        &mut s,
        AppEvent::PolicyFile {
            path: TARGET.into(),
            result: Ok(BASE.into()),
        },
        now,
    );
    s
}

fn ctrl(s: &mut State, c: char) {
    let now = s.now;
    update(
        s,
        AppEvent::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)),
        now,
    );
}

fn press(s: &mut State, c: char) {
    key(s, KeyCode::Char(c));
}

fn at(s: &State) -> usize {
    s.overlays.learn().expect("the review is open").at
}

fn stage(s: &State) -> Stage {
    s.overlays.learn().expect("the review is open").stage
}

fn choices(s: &State) -> Vec<Choice> {
    s.overlays
        .learn()
        .expect("the review is open")
        .items
        .iter()
        .map(|i| i.choice)
        .collect()
}

/// The text the summary's write would put in the file.
fn result_text(s: &State) -> String {
    let outcome = s
        .overlays
        .learn()
        .and_then(|r| r.outcome.clone())
        .expect("the summary's outcome");
    outcome.text.expect("a valid result")
}

/// Tabs to the first limit's max in the editor, and types `max` there.
fn edit_first_max(s: &mut State, max: &str) {
    for _ in 0..5 {
        key(s, KeyCode::Tab);
    }
    ctrl(s, 'u');
    typed(s, max);
}

#[test]
fn the_review_walks_the_proposals_one_by_one_and_says_how_far_it_is() {
    let mut s = reviewing();
    assert_eq!((at(&s), stage(&s)), (0, Stage::Proposals));
    let screen = text(&render(&s, 120, 30)).join("\n");
    assert!(screen.contains("proposal 1 of 5"), "{screen}");
    assert!(screen.contains("1 of 5 · add a rule get_time"), "{screen}");
    assert!(
        screen.contains("args.timezone: UTC, Europe/Paris"),
        "{screen}"
    );
    press(&mut s, 'J');
    let scrolled = text(&render(&s, 120, 30)).join("\n");
    assert!(
        !scrolled.contains("why  3 calls") && scrolled.contains("\"Europe/Paris\""),
        "J scrolls a long proposal: {scrolled}"
    );
    press(&mut s, 'a');
    assert_eq!(at(&s), 1);
    press(&mut s, 'b');
    assert_eq!(at(&s), 0, "b goes back to the previous proposal");
    assert_eq!(choices(&s)[0], Choice::Accepted, "and keeps its choice");
    key(&mut s, KeyCode::Right);
    assert_eq!(at(&s), 1, "→ moves on, the choice kept");
    key(&mut s, KeyCode::Right);
    assert_eq!(at(&s), 1, "not past an undecided proposal");
    assert!(s.message.clone().unwrap().error);
}

#[test]
fn accept_reject_and_skip_decide_and_move_on_and_the_result_has_only_the_accepted() {
    let mut s = reviewing();
    press(&mut s, 'a'); // get_time
    press(&mut s, 's'); // notes_export: decide later
    press(&mut s, 'a'); // notes_read
    press(&mut s, 'a'); // notes_search: tightened
    press(&mut s, 'r'); // notes_write
    assert_eq!(stage(&s), Stage::Summary);
    assert_eq!(
        choices(&s),
        [
            Choice::Accepted,
            Choice::Skipped,
            Choice::Accepted,
            Choice::Accepted,
            Choice::Rejected
        ]
    );
    let result: Value = serde_json::from_str(&result_text(&s)).unwrap();
    let tools = result["tools"].as_object().unwrap();
    let keys: Vec<&str> = tools.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["notes_search", "notes_export", "get_time", "notes_read"],
        "the base's order, then the added rules"
    );
    assert_eq!(tools["notes_search"]["limits"][0]["max"], 6);
    assert!(tools.get("notes_write").is_none(), "rejected: not written");
}

#[test]
fn the_what_if_refuses_none_of_the_recorded_calls_when_every_proposal_is_accepted() {
    let mut s = reviewing();
    for _ in 0..5 {
        press(&mut s, 'a');
    }
    let outcome = s.overlays.learn().unwrap().outcome.clone().unwrap();
    assert_eq!(outcome.whatif.replayed, 9);
    assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
    assert_eq!(outcome.held, 1, "notes_write is held for a person");
    let screen = text(&render(&s, 120, 30)).join("\n");
    assert!(
        screen.contains("re-decides the 9 recorded calls") && screen.contains("0 would be refused"),
        "{screen}"
    );
}

#[test]
fn rejecting_a_used_tool_refuses_its_calls_and_says_the_operator_chose_it() {
    let mut s = reviewing();
    press(&mut s, 'r'); // get_time: its three calls are now refused
    for _ in 0..4 {
        press(&mut s, 'a');
    }
    let outcome = s.overlays.learn().unwrap().outcome.clone().unwrap();
    let refused: Vec<(&str, Cause)> = outcome
        .refused
        .iter()
        .map(|r| (r.tool.as_str(), r.cause))
        .collect();
    assert_eq!(refused, [("get_time", Cause::Rejected); 3]);
    assert_eq!(outcome.unchosen(), 0);
    let screen = text(&render(&s, 140, 30)).join("\n");
    assert!(
        screen.contains("3 would be refused, each as you chose"),
        "{screen}"
    );
    assert!(
        screen.contains("you rejected its tool's proposal"),
        "{screen}"
    );
}

#[test]
fn an_edit_with_a_lower_limit_refuses_calls_past_it_and_counts_as_the_operators_choice() {
    let mut s = reviewing();
    press(&mut s, 'e');
    edit_first_max(&mut s, "1");
    ctrl(&mut s, 's');
    assert_eq!(at(&s), 1, "saving accepts the edited rule and moves on");
    let item = &s.overlays.learn().unwrap().items[0];
    assert!(item.edited && item.choice == Choice::Accepted);
    for _ in 0..4 {
        press(&mut s, 'a');
    }
    let outcome = s.overlays.learn().unwrap().outcome.clone().unwrap();
    // get_time at 0 s and 20 s share a minute: the second is past a limit of 1.
    let refused: Vec<(&str, Cause)> = outcome
        .refused
        .iter()
        .map(|r| (r.tool.as_str(), r.cause))
        .collect();
    assert_eq!(refused, [("get_time", Cause::Edited)]);
    let result: Value = serde_json::from_str(&result_text(&s)).unwrap();
    assert_eq!(result["tools"]["get_time"]["limits"][0]["max"], 1);
}

#[test]
fn an_invalid_edit_cannot_be_saved_and_esc_leaves_the_proposal_as_it_was() {
    let mut s = reviewing();
    press(&mut s, 'e');
    edit_first_max(&mut s, "0");
    ctrl(&mut s, 's');
    let m = s.message.clone().unwrap();
    assert!(m.error && m.text.contains("cannot be saved"), "{}", m.text);
    key(&mut s, KeyCode::Esc);
    assert_eq!(at(&s), 0);
    assert_eq!(choices(&s)[0], Choice::Open);
    assert!(!s.overlays.learn().unwrap().items[0].edited);
}

#[test]
fn widen_globs_the_name_and_loosens_the_numeric_range_and_again_undoes_it() {
    let mut s = reviewing();
    press(&mut s, 'a');
    press(&mut s, 'a');
    press(&mut s, 'w'); // notes_read
    let item = &s.overlays.learn().unwrap().items[2];
    assert_eq!(item.key, "notes_*");
    assert_eq!(
        item.rule.as_ref().unwrap()["limits"][0]["counter"],
        "notes_*",
        "the rule's own counter follows its key"
    );
    assert_eq!(item.rule.as_ref().unwrap()["require"][1]["value"], 8192);
    assert_eq!(
        item.rule.as_ref().unwrap()["require"][0]["value"],
        "/srv/notes",
        "a path is not a numeric range"
    );
    press(&mut s, 'w');
    let item = &s.overlays.learn().unwrap().items[2];
    assert_eq!(item.key, "notes_read");
    assert_eq!(item.rule.as_ref().unwrap()["require"][1]["value"], 4096);
    press(&mut s, 'w');
    press(&mut s, 'a');
    press(&mut s, 'a');
    press(&mut s, 'a');
    let result: Value = serde_json::from_str(&result_text(&s)).unwrap();
    assert!(result["tools"].get("notes_*").is_some(), "{result}");
    assert!(result["tools"].get("notes_read").is_none(), "{result}");
    let outcome = s.overlays.learn().unwrap().outcome.clone().unwrap();
    assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
}

#[test]
fn a_widened_glob_that_lets_a_rejected_tool_through_is_shown() {
    let mut s = reviewing();
    press(&mut s, 'a');
    press(&mut s, 'a');
    press(&mut s, 'w'); // notes_read → notes_*
    press(&mut s, 'a');
    press(&mut s, 'a');
    press(&mut s, 'r'); // notes_write: but notes_* matches it
    let outcome = s.overlays.learn().unwrap().outcome.clone().unwrap();
    assert_eq!(
        outcome.widened_over,
        [
            "notes_* (widened) also decides notes_write, whose proposal you rejected: its calls get the glob's rule"
        ]
    );
    let screen = text(&render(&s, 140, 30)).join("\n");
    assert!(
        screen.contains("⚠ notes_* (widened) also decides notes_write"),
        "{screen}"
    );
}

#[test]
fn nothing_is_written_without_y_and_y_writes_the_result_over_the_file_loaded() {
    let mut s = reviewing();
    for _ in 0..5 {
        press(&mut s, 'a');
    }
    key(&mut s, KeyCode::Enter);
    assert!(s.overlays.review().is_some(), "the usual diff and y/n");
    assert!(
        !s.effects
            .iter()
            .any(|e| matches!(e, Effect::WritePolicy { .. })),
        "nothing written before y"
    );
    key(&mut s, KeyCode::Esc);
    assert!(s.overlays.review().is_none());
    assert_eq!(
        stage(&s),
        Stage::Summary,
        "Esc on the diff backs out to the summary"
    );
    key(&mut s, KeyCode::Enter);
    press(&mut s, 'y');
    let written = s.effects.iter().find_map(|e| match e {
        Effect::WritePolicy {
            path,
            text,
            expected_hash,
            ..
        } => Some((path.clone(), text.clone(), expected_hash.clone())),
        _ => None,
    });
    let (path, text, expected) = written.expect("y writes");
    assert_eq!(path, TARGET);
    assert_eq!(
        expected,
        toolgate::console::testing::hash_bytes(BASE.as_bytes())
    );
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(
        doc["tools"].get("notes_export").is_none(),
        "the removal is in"
    );
    let now = s.now;
    update(
        &mut s,
        AppEvent::PolicyWritten {
            text,
            result: Ok("h".into()),
        },
        now,
    );
    assert!(s.overlays.learn().is_none(), "written: the review closes");
}

#[test]
fn leaving_or_quitting_with_choices_made_asks_first() {
    let mut s = reviewing();
    key(&mut s, KeyCode::Esc);
    assert!(
        s.overlays.learn().is_none(),
        "no choice made: Esc just closes"
    );

    let mut s = reviewing();
    press(&mut s, 'a');
    press(&mut s, 'q');
    assert!(!s.quit);
    let screen = text(&render(&s, 120, 30)).join("\n");
    assert!(
        screen.contains("1 choice in the learned-policy review not written. Drop it and quit? y/n"),
        "{screen}"
    );
    press(&mut s, 'n');
    assert!(!s.quit && s.overlays.learn().is_some());
    key(&mut s, KeyCode::Esc);
    press(&mut s, 'y');
    assert!(
        !s.quit && s.overlays.learn().is_none(),
        "Esc then y closes the review only"
    );
}

#[test]
fn a_draft_that_is_not_a_draft_is_refused() {
    let mut s = State::new(t0(), 10);
    let e = review_learned(&mut s, "x.json", r#"{"proposals": 3}"#, TARGET, false, true)
        .expect_err("refused");
    assert!(e.contains("invalid type"), "{e}");
    assert!(s.overlays.learn().is_none());
}

#[test]
fn a_new_policy_file_is_written_only_over_no_file() {
    let mut s = State::new(t0(), 10);
    review_learned(&mut s, "d.json", &draft().to_string(), TARGET, false, false).unwrap();
    for _ in 0..5 {
        press(&mut s, 'a');
    }
    key(&mut s, KeyCode::Enter);
    press(&mut s, 'y');
    let expected = s.effects.iter().find_map(|e| match e {
        Effect::WritePolicy { expected_hash, .. } => Some(expected_hash.clone()),
        _ => None,
    });
    assert_eq!(
        expected.as_deref(),
        Some(toolgate::console::testing::hash_bytes(b"").as_str()),
        "the file must still be missing (the empty text) when written"
    );
}

#[test]
fn outside_text_in_evidence_and_arguments_reaches_the_screen_escaped() {
    let mut d = draft();
    d["proposals"][0]["evidence"][0] = json!("bad \u{1b}]0;pwned\u{7} \u{202e}evil");
    d["proposals"][0]["tool"] = json!("get\u{1b}[31mtime");
    let mut s = State::new(t0(), 10);
    review_learned(&mut s, "d.json", &d.to_string(), TARGET, false, true).unwrap();
    let screen = text(&render(&s, 160, 30)).join("\n");
    assert!(
        !screen.contains('\u{1b}') && !screen.contains('\u{202e}'),
        "{screen}"
    );
    assert!(screen.contains("get\\x1b[31mtime"), "{screen}");
    // Reject everything: the summary lists the refused calls, arguments escaped.
    for _ in 0..5 {
        press(&mut s, 'r');
    }
    let screen = text(&render(&s, 200, 40)).join("\n");
    assert!(!screen.contains('\u{1b}'), "{screen}");
    assert!(screen.contains("/srv/notes/d\\u001b[2J.md"), "{screen}");
}

#[test]
fn snapshot_a_proposal() {
    let mut s = reviewing();
    s.message = None;
    insta::assert_debug_snapshot!(text(&render(&s, 110, 32)));
}

#[test]
fn snapshot_a_tighten_with_before_and_after() {
    let mut s = reviewing();
    for _ in 0..3 {
        press(&mut s, 'a');
    }
    s.message = None;
    insta::assert_debug_snapshot!(text(&render(&s, 110, 32)));
}

#[test]
fn snapshot_the_rule_editor_over_a_proposal() {
    let mut s = reviewing();
    press(&mut s, 'e');
    s.message = None;
    insta::assert_debug_snapshot!(text(&render(&s, 110, 32)));
}

#[test]
fn snapshot_the_summary_with_a_rejected_tool_refused() {
    let mut s = reviewing();
    press(&mut s, 'a');
    press(&mut s, 's');
    press(&mut s, 'w');
    press(&mut s, 'a');
    press(&mut s, 'a');
    press(&mut s, 'r');
    s.message = None;
    insta::assert_debug_snapshot!(text(&render(&s, 130, 32)));
}

#[test]
fn with_shadow_the_result_is_written_as_a_candidate_and_the_message_says_how_to_try_it() {
    let shadow = "/home/op/policy.shadow.json";
    let mut s = State::new(t0(), 10);
    review_learned(&mut s, "d.json", &draft().to_string(), shadow, true, false).unwrap();
    for _ in 0..5 {
        press(&mut s, 'a');
    }
    key(&mut s, KeyCode::Enter);
    press(&mut s, 'y');
    let (path, text) = s
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::WritePolicy { path, text, .. } => Some((path.clone(), text.clone())),
            _ => None,
        })
        .expect("y writes");
    assert_eq!(path, shadow);
    let now = s.now;
    update(
        &mut s,
        AppEvent::PolicyWritten {
            text,
            result: Ok("h".into()),
        },
        now,
    );
    let m = s.message.clone().unwrap();
    assert!(
        m.text
            .contains("--shadow-policy /home/op/policy.shadow.json"),
        "{}",
        m.text
    );
}

#[test]
fn a_file_changed_on_disk_is_read_again_and_the_result_diffed_against_it() {
    let mut s = reviewing();
    for _ in 0..5 {
        press(&mut s, 'a');
    }
    key(&mut s, KeyCode::Enter);
    press(&mut s, 'y');
    let text = s
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::WritePolicy { text, .. } => Some(text.clone()),
            _ => None,
        })
        .expect("y writes");
    s.effects.clear();
    let changed = BASE.replace("\"notes_export\": {}", "\"notes_export\": {}, \"x\": {}");
    let now = s.now;
    update(
        &mut s,
        AppEvent::PolicyWritten {
            text,
            result: Err(toolgate::console::testing::WriteFailure::ChangedOnDisk(
                changed.clone(),
            )),
        },
        now,
    );
    assert_eq!(
        stage(&s),
        Stage::Summary,
        "the review stays, its choices kept"
    );
    key(&mut s, KeyCode::Enter);
    assert!(
        s.effects
            .iter()
            .any(|e| matches!(e, Effect::LoadPolicy(p) if p == TARGET)),
        "{:?}",
        s.effects
    );
    update(
        &mut s,
        AppEvent::PolicyFile {
            path: TARGET.into(),
            result: Ok(changed.clone()),
        },
        now,
    );
    key(&mut s, KeyCode::Enter);
    press(&mut s, 'y');
    let expected = s.effects.iter().find_map(|e| match e {
        Effect::WritePolicy { expected_hash, .. } => Some(expected_hash.clone()),
        _ => None,
    });
    assert_eq!(
        expected,
        Some(toolgate::console::testing::hash_bytes(changed.as_bytes())),
        "written over the file as read again"
    );
}

#[test]
fn a_long_recording_replays_its_newest_calls_and_says_how_many_of_all() {
    let mut observations: Vec<Value> = (1..=10_000)
        .rev()
        .map(|n| obs(n, "ping", "ci", json!({})))
        .collect();
    // The oldest, refused if it were replayed (no proposal names it).
    observations.push(obs(0, "unnamed", "ci", json!({})));
    let d = json!({
        "base": BASE,
        "proposals": [ { "kind": "add", "tool": "ping", "rule": {}, "current": null,
                         "reason": "10000 calls", "evidence": [] } ],
        "observations": observations,
    });
    let mut s = State::new(t0(), 10);
    review_learned(&mut s, "d.json", &d.to_string(), TARGET, false, true).unwrap();
    press(&mut s, 'a');
    let outcome = s.overlays.learn().unwrap().outcome.clone().unwrap();
    assert_eq!(outcome.whatif.replayed, 10_000);
    assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
    let screen = text(&render(&s, 120, 30)).join("\n");
    assert!(
        screen.contains("re-decides the 10000 recorded calls (the newest 10000 of 10001)"),
        "{screen}"
    );
}

#[test]
fn a_call_refused_when_recorded_and_refused_again_is_expected_not_flagged() {
    let mut d = draft();
    let mut denied = obs(40, "drop_table", "ci", json!({}));
    denied["decision"] = json!("deny");
    d["observations"].as_array_mut().unwrap().push(denied);
    d["observations"]
        .as_array_mut()
        .unwrap()
        .push(obs(41, "drop_table", "ci", json!({})));
    let mut s = State::new(t0(), 10);
    review_learned(&mut s, "d.json", &d.to_string(), TARGET, false, true).unwrap();
    for _ in 0..5 {
        press(&mut s, 'a');
    }
    let outcome = s.overlays.learn().unwrap().outcome.clone().unwrap();
    let causes: Vec<Cause> = outcome.refused.iter().map(|r| r.cause).collect();
    assert_eq!(causes, [Cause::RefusedThen, Cause::Unproposed]);
    assert_eq!(outcome.unchosen(), 1, "the one allowed then is flagged");
}
