//! Policy authoring in the console: the command line's edits and refusals, the write flow
//! (diff, what-if, y/n, atomic write, "applied by N gateways"), a file changed on disk,
//! `:undo`, the keys from the other views, the Limits view's edits, and snapshots of the
//! Policy and Limits views and of the write review.

mod console_support;

use console_support::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde_json::Value;
use toolgate::console::testing;
use toolgate::console::testing::WriteFailure;
use toolgate::console::testing::{AppEvent, Effect, Prompt, State, View, update};
use toolgate::console::testing::{Draft, Edit};
use toolgate::testing::policy::Policy;
use toolgate::testing::wire::{EventKind, PolicyApplied, PolicyRejected, ToolInfo, Tools};

const PATH: &str = "/home/op/policy.json";

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "approval_timeout": "2m",
  "tools": {
    "create_api_key": {
      "limits": [ { "counter": "create_api_key", "window": "minute", "max": 30, "scope": "grant" } ]
    },
    "list_meetings": {},
    "delete_*": { "action": "deny", "reason": "deleting accounts is not allowed for agents" },
    "send_message": { "action": "require_approval", "reason": "sending messages needs a person" },
    "book_meting": { "action": "require_approval" }
  }
}
"#;

/// Types `:LINE` and Enter.
fn command(s: &mut State, line: &str) {
    key(s, KeyCode::Char(':'));
    typed(s, line);
    key(s, KeyCode::Enter);
}

fn message(s: &State) -> (String, bool) {
    let m = s.message.clone().expect("a message");
    (m.text, m.error)
}

fn draft(s: &State) -> &Draft {
    s.authoring.draft.as_ref().expect("a draft")
}

/// The populated console with the policy file loaded and the upstream's tools known.
fn authoring() -> State {
    let mut s = populated();
    let now = s.now;
    update(
        &mut s,
        AppEvent::PolicyFile {
            path: PATH.into(),
            result: Ok(POLICY.into()),
        },
        now,
    );
    let tools = [
        "create_api_key",
        "list_meetings",
        "delete_account",
        "send_message",
        "book_meeting",
        "export_data",
    ]
    .into_iter()
    .map(|name| ToolInfo {
        name: name.into(),
        description: None,
        input_schema: None,
        output_schema: None,
        annotations: None,
    })
    .collect();
    update(
        &mut s,
        net(
            "a1b2",
            40,
            now,
            EventKind::Tools(Tools {
                server: "meetings".into(),
                tools,
            }),
        ),
        now,
    );
    s.message = None;
    s.effects.clear();
    s
}

fn rule(s: &State, key: &str) -> Value {
    let doc: Value = serde_json::from_str(draft(s).text()).expect("draft is JSON");
    doc["tools"][key].clone()
}

#[test]
fn the_policy_file_is_asked_for_once_its_path_is_known() {
    let s = {
        let mut s = State::new(t0(), 100);
        update(&mut s, up("gw"), t0());
        update(
            &mut s,
            net("gw", 1, t0(), hello("gw", "ci", vec![], vec![])),
            t0(),
        );
        s
    };
    assert_eq!(s.effects, vec![Effect::LoadPolicy(PATH.into())]);
}

#[test]
fn allow_block_and_hold_set_the_tools_action() {
    let mut s = authoring();
    command(&mut s, "allow export_data");
    assert_eq!(
        message(&s),
        ("draft: export_data allowed · :w writes".into(), false)
    );
    assert_eq!(rule(&s, "export_data"), serde_json::json!({}));
    command(&mut s, "block send_message not during the freeze");
    assert_eq!(rule(&s, "send_message")["action"], "deny");
    assert_eq!(rule(&s, "send_message")["reason"], "not during the freeze");
    command(&mut s, "hold list_meetings");
    assert_eq!(rule(&s, "list_meetings")["action"], "require_approval");
    assert!(draft(&s).is_modified());
    assert!(draft(&s).compiled().is_ok());
}

#[test]
fn deny_of_a_held_call_id_still_resolves_the_hold() {
    let mut s = authoring();
    command(&mut s, "deny c3d4-1 too late");
    assert!(
        matches!(s.effects.as_slice(), [Effect::Send { .. }]),
        "{:?}",
        s.effects
    );
    assert!(!draft(&s).is_modified());
}

#[test]
fn deny_of_a_call_that_is_not_held_drafts_nothing_and_points_to_block() {
    let mut s = authoring();
    // A tool's name, and the id of a hold that has just timed out: neither is held now.
    for line in ["deny list_meetings", "deny a1b2-4 too late"] {
        command(&mut s, line);
        let (text, error) = message(&s);
        assert!(error && text.contains("no held call"), "{line}: {text}");
        assert!(text.contains(":block TOOL"), "{line}: {text}");
        assert!(s.effects.is_empty(), "{line}: {:?}", s.effects);
        assert!(!draft(&s).is_modified(), "{line} changed the draft");
    }
}

#[test]
fn limit_adds_the_tools_own_counter_and_unlimit_removes_it() {
    let mut s = authoring();
    command(&mut s, "limit list_meetings 2/minute");
    assert_eq!(
        rule(&s, "list_meetings")["limits"],
        serde_json::json!([{"counter": "list_meetings", "window": "minute", "max": 2}])
    );
    command(&mut s, "limit list_meetings 5/90s session");
    assert_eq!(
        rule(&s, "list_meetings")["limits"],
        serde_json::json!([{"counter": "list_meetings", "window": "90s", "max": 5, "scope": "session"}])
    );
    command(&mut s, "unlimit list_meetings");
    assert_eq!(rule(&s, "list_meetings"), serde_json::json!({}));
}

#[test]
fn default_and_hide_change_the_top_level() {
    let mut s = authoring();
    command(&mut s, "default require_approval");
    command(&mut s, "hide export_data");
    let doc: Value = serde_json::from_str(draft(&s).text()).unwrap();
    assert_eq!(doc["default"], "require_approval");
    assert_eq!(doc["hide"], serde_json::json!(["export_data"]));
}

#[test]
fn an_edit_that_makes_the_policy_invalid_is_refused_with_checks_message() {
    let mut s = authoring();
    let before = draft(&s).text().to_owned();
    for (line, says) in [
        ("default maybe", "error: "),
        (
            "limit list_meetings 2/minutes",
            "unknown window \"minutes\"",
        ),
        ("limit list_meetings 0/minute", "error: "),
        ("limit list_meetings 2/minute galaxy", "error: "),
    ] {
        command(&mut s, line);
        let (text, error) = message(&s);
        assert!(error && text.contains(says), "{line}: {text}");
        assert!(text.contains("policy.json:"), "names the file: {text}");
        assert_eq!(draft(&s).text(), before, "{line} left the draft alone");
    }
    // The Policy view lists every problem of the refused edit, in check's words.
    key(&mut s, KeyCode::Char('3'));
    let screen = console_support::text(&render(&s, 160, 14)).join("\n");
    assert!(
        screen.contains("the last edit was refused")
            && screen.contains("policy.json:")
            && screen.contains("(at /tools/list_meetings/limits/0/scope)"),
        "{screen}"
    );
}

#[test]
fn malformed_commands_are_refused_with_their_usage() {
    let mut s = authoring();
    for (line, usage) in [
        ("allow", ":allow TOOL"),
        ("hold a b", ":hold TOOL"),
        ("limit x", ":limit TOOL MAX/WINDOW"),
        ("limit x thirty", "is not MAX/WINDOW"),
        ("unlimit", ":unlimit TOOL"),
        ("default", ":default allow|deny|require_approval"),
        ("hide", ":hide TOOL"),
        ("block", ":block TOOL"),
        ("deny", ":deny ID"),
    ] {
        command(&mut s, line);
        let (text, error) = message(&s);
        assert!(error && text.contains(usage), "{line}: {text}");
    }
    command(&mut s, "unlimit list_meetings");
    assert_eq!(message(&s), ("list_meetings has no limits".into(), true));
    command(&mut s, "unlimit nosuch");
    assert_eq!(message(&s), ("no rule named nosuch".into(), true));
    command(&mut s, "hide x");
    command(&mut s, "hide x");
    assert_eq!(message(&s), ("x is already hidden".into(), true));
    assert!(!draft(&s).text().contains("nosuch"));
}

#[test]
fn edits_without_a_policy_file_say_where_to_get_one() {
    let mut s = State::new(t0(), 100);
    command(&mut s, "allow x");
    let (text, error) = message(&s);
    assert!(error && text.contains("--policy"), "{text}");
}

#[test]
fn write_shows_the_diff_then_y_writes_and_the_gateways_confirm() {
    let mut s = authoring();
    command(&mut s, "w");
    assert_eq!(message(&s).0, "the draft is the file: nothing to write");
    command(&mut s, "limit list_meetings 2/minute");
    command(&mut s, "w");
    assert!(s.overlays.review().is_some());
    let review = s.overlays.review().expect("review");
    assert!(
        review
            .diff
            .iter()
            .any(|l| l.starts_with('+') && l.contains("\"max\": 2"))
    );
    assert!(review.diff[0].starts_with("--- /home/op/policy.json"));
    let base_hash = draft(&s).base_hash.clone();
    let new_text = draft(&s).text().to_owned();
    key(&mut s, KeyCode::Char('y'));
    let [
        Effect::WritePolicy {
            path,
            text,
            expected_hash,
            force,
        },
    ] = s.effects.as_slice()
    else {
        panic!("expected a write, got {:?}", s.effects);
    };
    assert_eq!(
        (path.as_str(), text, expected_hash, *force),
        (PATH, &new_text, &base_hash, false)
    );
    s.effects.clear();
    let hash = testing::hash_bytes(new_text.as_bytes());
    assert_eq!(hash, Policy::parse(&new_text, PATH).unwrap().hash());
    let now = s.now;
    update(
        &mut s,
        AppEvent::PolicyWritten {
            text: new_text.clone(),
            result: Ok(hash.clone()),
        },
        now,
    );
    assert!(
        message(&s).0.contains("waiting for 2 gateways"),
        "{:?}",
        s.message
    );
    assert!(!draft(&s).is_modified(), "the written text is the new base");
    for (i, gw) in ["a1b2", "c3d4"].into_iter().enumerate() {
        update(
            &mut s,
            net(
                gw,
                50,
                now,
                EventKind::PolicyApplied(PolicyApplied {
                    path: PATH.into(),
                    hash: hash.clone(),
                }),
            ),
            now,
        );
        assert_eq!(
            message(&s),
            (
                format!(
                    "policy {} applied by {} gateway{}",
                    &hash[..6],
                    i + 1,
                    if i == 0 { "" } else { "s" }
                ),
                false
            )
        );
    }
}

#[test]
fn n_keeps_the_draft_and_writes_nothing() {
    let mut s = authoring();
    command(&mut s, "allow export_data");
    command(&mut s, "w");
    key(&mut s, KeyCode::Char('n'));
    assert!(s.overlays.prompt().is_none());
    assert!(s.effects.is_empty());
    assert!(draft(&s).is_modified());
}

#[test]
fn j_and_k_scroll_the_write_review_as_far_as_they_scroll_a_detail() {
    let mut s = authoring();
    command(&mut s, "allow export_data");
    command(&mut s, "w");
    let scroll = |s: &State| s.overlays.review().expect("a review").scroll;
    key(&mut s, KeyCode::Char('J'));
    assert_eq!(scroll(&s), testing::SCROLL_STEP as u16);
    key(&mut s, KeyCode::Char('j'));
    assert_eq!(scroll(&s), testing::SCROLL_STEP as u16 + 1);
    key(&mut s, KeyCode::Char('K'));
    assert_eq!(scroll(&s), 1);
}

#[test]
fn an_invalid_draft_cannot_be_written() {
    let mut s = authoring();
    let now = s.now;
    update(
        &mut s,
        AppEvent::PolicyFile {
            path: PATH.into(),
            result: Ok("{\"version\": \"2\", \"default\": \"deny\"}".into()),
        },
        now,
    );
    command(&mut s, "w");
    // Unchanged: nothing to write; an edit on an invalid base is refused with check's words.
    command(&mut s, "allow x");
    let (text, error) = message(&s);
    assert!(error && text.contains("version"), "{text}");
    assert!(s.overlays.review().is_none());
}

#[test]
fn a_gateway_that_refuses_the_write_is_named_with_its_diagnostics() {
    let mut s = authoring();
    command(&mut s, "allow export_data");
    command(&mut s, "w");
    key(&mut s, KeyCode::Char('y'));
    let now = s.now;
    let text = draft(&s).text().to_owned();
    update(
        &mut s,
        AppEvent::PolicyWritten {
            text: text.clone(),
            result: Ok(testing::hash_bytes(text.as_bytes())),
        },
        now,
    );
    update(
        &mut s,
        net(
            "c3d4",
            60,
            now,
            EventKind::PolicyRejected(PolicyRejected {
                path: PATH.into(),
                diagnostics: vec!["policy.json:1:1: error: cannot read".into()],
                kept_hash: None,
            }),
        ),
        now,
    );
    let (said, error) = message(&s);
    assert!(
        error && said.contains("c3d4") && said.contains("cannot read"),
        "{said}"
    );
    assert_eq!(s.authoring.awaiting.as_ref().unwrap().rejected.len(), 1);
    key(&mut s, KeyCode::Char('3'));
    let screen = console_support::text(&render(&s, 130, 14)).join("\n");
    assert!(
        screen.contains("refused by c3d4")
            && screen.contains("policy.json:1:1: error: cannot read"),
        "{screen}"
    );
}

#[test]
fn a_file_changed_on_disk_is_never_overwritten_without_w_bang() {
    let mut s = authoring();
    command(&mut s, "allow export_data");
    command(&mut s, "w");
    key(&mut s, KeyCode::Char('y'));
    s.effects.clear();
    let now = s.now;
    let text = draft(&s).text().to_owned();
    update(
        &mut s,
        AppEvent::PolicyWritten {
            text,
            result: Err(WriteFailure::ChangedOnDisk("{}".into())),
        },
        now,
    );
    let (said, error) = message(&s);
    assert!(
        error && said.contains("changed on disk") && said.contains(":w!"),
        "{said}"
    );
    command(&mut s, "w");
    assert!(s.overlays.review().is_none(), "plain :w refuses");
    command(&mut s, "w!");
    key(&mut s, KeyCode::Char('y'));
    assert!(matches!(
        s.effects.as_slice(),
        [Effect::WritePolicy { force: true, .. }]
    ));
    s.effects.clear();
    command(&mut s, "reload");
    assert_eq!(s.effects, vec![Effect::LoadPolicy(PATH.into())]);
}

#[test]
fn a_change_applied_from_elsewhere_reloads_a_clean_draft_and_warns_an_edited_one() {
    let mut s = authoring();
    let now = s.now;
    let applied = |hash: &str| {
        net(
            "a1b2",
            70,
            now,
            EventKind::PolicyApplied(PolicyApplied {
                path: PATH.into(),
                hash: hash.into(),
            }),
        )
    };
    update(&mut s, applied("feedface"), now);
    assert_eq!(s.effects, vec![Effect::LoadPolicy(PATH.into())]);
    s.effects.clear();
    command(&mut s, "allow export_data");
    update(&mut s, applied("c0ffee"), now);
    assert!(s.effects.is_empty(), "an edited draft is not thrown away");
    assert!(message(&s).0.contains("changed on disk"));
    assert!(s.authoring.conflict.is_some());
}

#[test]
fn undo_offers_the_version_before_the_last_write() {
    let mut s = authoring();
    command(&mut s, "undo");
    assert!(message(&s).1, "nothing written yet");
    command(&mut s, "block list_meetings");
    let written = draft(&s).text().to_owned();
    let now = s.now;
    update(
        &mut s,
        AppEvent::PolicyWritten {
            text: written.clone(),
            result: Ok(testing::hash_bytes(written.as_bytes())),
        },
        now,
    );
    command(&mut s, "undo");
    assert!(s.overlays.review().is_some());
    assert_eq!(draft(&s).text(), POLICY);
    assert_eq!(draft(&s).base, written);
}

#[test]
fn what_if_counts_the_recent_calls_the_draft_decides_differently() {
    let mut s = authoring();
    command(&mut s, "block list_meetings");
    command(&mut s, "w");
    let review = s.overlays.review().unwrap();
    assert!(
        review
            .whatif
            .summary()
            .contains(&"1 call allowed before would now be denied".to_string()),
        "{:?}",
        review.whatif
    );
    let changed = review
        .whatif
        .changed
        .iter()
        .find(|c| c.tool == "list_meetings")
        .expect("list_meetings changed");
    assert_eq!(changed.rule, "/tools/list_meetings");
}

#[test]
fn r_on_a_call_asks_for_a_rate_then_reviews_the_write() {
    let mut s = authoring();
    // Live, paused on create_api_key's first call.
    for _ in 0..10 {
        key(&mut s, KeyCode::Up);
    }
    assert_eq!(s.selected_call().unwrap().tool, "create_api_key");
    key(&mut s, KeyCode::Char('r'));
    assert!(
        matches!(s.overlays.prompt(), Some(Prompt::Rate { tool, .. }) if tool == "create_api_key")
    );
    typed(&mut s, "nonsense");
    key(&mut s, KeyCode::Enter);
    assert!(
        matches!(s.overlays.prompt(), Some(Prompt::Rate { .. })),
        "a bad rate asks again"
    );
    key(&mut s, KeyCode::Esc);
    key(&mut s, KeyCode::Char('r'));
    typed(&mut s, "10/minute");
    key(&mut s, KeyCode::Enter);
    assert!(s.overlays.review().is_some());
    assert_eq!(rule(&s, "create_api_key")["limits"][0]["max"], 10);
    assert_eq!(rule(&s, "create_api_key")["limits"][0]["scope"], "grant");
}

#[test]
fn b_on_a_call_blocks_its_tool_and_a_in_holds_approves_and_allows() {
    let mut s = authoring();
    for _ in 0..10 {
        key(&mut s, KeyCode::Up);
    }
    key(&mut s, KeyCode::Char('b'));
    assert!(s.overlays.review().is_some());
    assert_eq!(rule(&s, "create_api_key")["action"], "deny");
    key(&mut s, KeyCode::Char('n'));
    s.effects.clear();

    key(&mut s, KeyCode::Char('2'));
    let held = s.selected_call().unwrap().clone();
    update(
        &mut s,
        AppEvent::Key(KeyEvent::new(KeyCode::Char('A'), KeyModifiers::SHIFT)),
        t0(),
    );
    assert!(
        matches!(s.effects.as_slice(), [Effect::Send { .. }]),
        "approved: {:?}",
        s.effects
    );
    assert!(s.overlays.review().is_some());
    assert_eq!(rule(&s, &held.tool)["action"], "allow");
}

#[test]
fn policy_view_keys_edit_the_selected_rule() {
    let mut s = authoring();
    key(&mut s, KeyCode::Char('3'));
    key(&mut s, KeyCode::Down); // list_meetings
    key(&mut s, KeyCode::Char('h'));
    assert_eq!(rule(&s, "list_meetings")["action"], "require_approval");
    key(&mut s, KeyCode::Char('d'));
    assert_eq!(rule(&s, "list_meetings")["action"], "deny");
    key(&mut s, KeyCode::Char('a'));
    assert_eq!(rule(&s, "list_meetings")["action"], "allow");
    key(&mut s, KeyCode::Char('l'));
    typed(&mut s, "3/hour");
    key(&mut s, KeyCode::Enter);
    assert_eq!(rule(&s, "list_meetings")["limits"][0]["max"], 3);
    key(&mut s, KeyCode::Char('n'));
    key(&mut s, KeyCode::Char('u'));
    assert!(rule(&s, "list_meetings").get("limits").is_none());
    key(&mut s, KeyCode::Char('w'));
    assert!(s.overlays.review().is_some());
}

#[test]
fn the_policy_view_flags_a_rule_no_offered_tool_matches() {
    let s = authoring();
    let rows = s.policy_rows();
    let flagged: Vec<&str> = rows
        .iter()
        .filter(|r| {
            matches!(
                r.kind,
                toolgate::console::testing::RowKind::Rule {
                    unmatched: true,
                    ..
                }
            )
        })
        .map(|r| r.tool.as_str())
        .collect();
    assert_eq!(flagged, ["book_meting"]);
    let unruled: Vec<&str> = rows
        .iter()
        .filter(|r| matches!(r.kind, toolgate::console::testing::RowKind::Unruled { .. }))
        .map(|r| r.tool.as_str())
        .collect();
    assert_eq!(unruled, ["book_meeting", "export_data"]);
}

#[test]
fn limits_view_edits_max_and_window_in_place() {
    let mut s = authoring();
    key(&mut s, KeyCode::Char('4'));
    let rows = toolgate::console::testing::limit_rows(&s);
    assert_eq!(rows[0].counter, "create_api_key");
    key(&mut s, KeyCode::Char('m'));
    assert!(
        matches!(s.overlays.prompt(), Some(Prompt::CounterEdit { input, .. }) if input.value() == "30")
    );
    for _ in 0..2 {
        key(&mut s, KeyCode::Backspace);
    }
    typed(&mut s, "50");
    key(&mut s, KeyCode::Enter);
    assert!(s.overlays.review().is_some());
    assert_eq!(rule(&s, "create_api_key")["limits"][0]["max"], 50);
    key(&mut s, KeyCode::Char('n'));
    key(&mut s, KeyCode::Char('t'));
    assert!(
        matches!(s.overlays.prompt(), Some(Prompt::CounterEdit { input, .. }) if input.value() == "minute")
    );
    for _ in 0..6 {
        key(&mut s, KeyCode::Backspace);
    }
    typed(&mut s, "10m");
    key(&mut s, KeyCode::Enter);
    assert_eq!(rule(&s, "create_api_key")["limits"][0]["window"], "10m");
    assert!(
        toolgate::console::testing::limit_rows(&s)[0].draft == Some((50, 600_000)),
        "the row shows the draft's new budget"
    );
}

#[test]
fn the_written_file_keeps_untouched_rules_and_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, POLICY).unwrap();
    let mut d = Draft::load(&path.display().to_string(), POLICY.into());
    d.apply(&Edit::Limit {
        tool: "list_meetings".into(),
        max: 2,
        window: serde_json::json!("minute"),
        scope: None,
    })
    .unwrap();
    d.apply(&Edit::Allow("export_data".into())).unwrap();
    testing::write_atomic(&path, d.text(), &d.base_hash, false).unwrap();

    let before: Value = serde_json::from_str(POLICY).unwrap();
    let after: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&after), keys(&before), "top-level order kept");
    let mut expected_tools = keys(&before["tools"]);
    expected_tools.push("export_data".into());
    assert_eq!(
        keys(&after["tools"]),
        expected_tools,
        "rule order kept, new last"
    );
    for untouched in ["create_api_key", "delete_*", "send_message", "book_meting"] {
        assert_eq!(
            after["tools"][untouched], before["tools"][untouched],
            "{untouched}"
        );
        assert_eq!(
            keys(&after["tools"][untouched]),
            keys(&before["tools"][untouched])
        );
    }
    assert_eq!(
        keys(&after["tools"]["create_api_key"]["limits"][0]),
        ["counter", "window", "max", "scope"]
    );
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(Policy::parse(&written, "p").is_ok());
    // Untouched rules keep their text, formatting included.
    for line in POLICY.lines().filter(|l| {
        l.contains("create_api_key\", \"window")
            || l.contains("delete_*")
            || l.contains("send_message")
            || l.contains("book_meting")
    }) {
        assert!(written.contains(line), "{line} kept in:\n{written}");
    }
}

#[test]
fn policy_view_snapshot() {
    let mut s = authoring();
    command(&mut s, "limit list_meetings 2/minute");
    key(&mut s, KeyCode::Char('3'));
    s.message = None;
    insta::assert_debug_snapshot!(text(&render(&s, 130, 16)));
}

#[test]
fn limits_view_snapshot() {
    let mut s = authoring();
    command(&mut s, "limit list_meetings 2/minute");
    key(&mut s, KeyCode::Char('4'));
    s.message = None;
    insta::assert_debug_snapshot!(text(&render(&s, 130, 10)));
}

#[test]
fn write_review_snapshot() {
    let mut s = authoring();
    command(&mut s, "block list_meetings");
    command(&mut s, "w");
    assert!(matches!(s.view, View::Live));
    insta::assert_debug_snapshot!(text(&render(&s, 120, 24)));
}

fn ctrl(s: &mut State, c: char) {
    let now = s.now;
    update(
        s,
        AppEvent::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)),
        now,
    );
}

/// The populated console with an inputSchema for send_message, its rule opened in the form.
fn editing_send_message() -> State {
    let mut s = authoring();
    let now = s.now;
    update(
        &mut s,
        net(
            "c3d4",
            41,
            now,
            EventKind::Tools(Tools {
                server: "meetings".into(),
                tools: vec![ToolInfo {
                    name: "send_message".into(),
                    description: None,
                    input_schema: Some(serde_json::json!({"type": "object", "properties": {
                        "to": {"type": "string"}, "body": {"type": "string"}}})),
                    output_schema: None,
                    annotations: None,
                }],
            }),
        ),
        now,
    );
    key(&mut s, KeyCode::Char('3'));
    for _ in 0..3 {
        key(&mut s, KeyCode::Down);
    }
    key(&mut s, KeyCode::Enter);
    s
}

#[test]
fn the_rule_editor_validates_as_you_type_and_saves_into_the_draft() {
    let mut s = editing_send_message();
    let e = s.overlays.editor().expect("editor open");
    assert_eq!(e.key, "send_message");
    assert_eq!(e.paths, ["args.to", "args.body"]);
    assert!(e.problems.is_empty());
    // Digits type into the form; they do not switch views.
    ctrl(&mut s, 'l');
    typed(&mut s, "0");
    assert_eq!(s.view, View::Policy);
    let e = s.overlays.editor().unwrap();
    assert_eq!(e.limits[0].max.value(), "300");
    key(&mut s, KeyCode::Backspace);
    key(&mut s, KeyCode::Backspace);
    key(&mut s, KeyCode::Backspace);
    let e = s.overlays.editor().unwrap();
    assert!(
        e.problems
            .iter()
            .any(|p| p.contains("policy.json:") && p.contains("max")),
        "{:?}",
        e.problems
    );
    ctrl(&mut s, 's');
    assert!(message(&s).1, "a form with problems is not saved");
    assert!(s.overlays.editor().is_some());
    typed(&mut s, "5");
    ctrl(&mut s, 'n');
    ctrl(&mut s, 'p');
    key(&mut s, KeyCode::Tab); // op
    key(&mut s, KeyCode::Right); // neq
    key(&mut s, KeyCode::Tab); // value
    typed(&mut s, "ceo@example.com");
    ctrl(&mut s, 's');
    assert!(s.overlays.editor().is_none());
    assert!(s.overlays.review().is_some());
    assert_eq!(
        rule(&s, "send_message"),
        serde_json::json!({
            "action": "require_approval",
            "reason": "sending messages needs a person",
            "limits": [{"counter": "send_message", "window": "minute", "max": 5}],
            "require": [{"path": "args.body", "op": "neq", "value": "ceo@example.com"}]
        })
    );
}

#[test]
fn esc_closes_the_editor_without_touching_the_draft() {
    let mut s = editing_send_message();
    key(&mut s, KeyCode::Right);
    key(&mut s, KeyCode::Esc);
    assert!(s.overlays.editor().is_none());
    assert!(!draft(&s).is_modified());
}

#[test]
fn rule_editor_snapshot() {
    let mut s = editing_send_message();
    ctrl(&mut s, 'n');
    s.message = None;
    insta::assert_debug_snapshot!(text(&render(&s, 120, 20)));
}

#[test]
fn a_tool_name_shown_escaped_is_not_written_as_a_rule() {
    let mut s = authoring();
    // The newest call is the hostile one ("evil\x1b[2J…"), shown escaped.
    key(&mut s, KeyCode::Up);
    key(&mut s, KeyCode::Down);
    assert!(s.selected_call().unwrap().tool.starts_with("evil"));
    key(&mut s, KeyCode::Char('b'));
    let (text, error) = message(&s);
    assert!(error && text.contains("control characters"), "{text}");
    assert!(!draft(&s).is_modified());
}

#[test]
fn limits_view_counts_down_to_when_room_comes_back() {
    let mut s = authoring();
    let now = s.now;
    update(
        &mut s,
        net(
            "a1b2",
            80,
            now,
            EventKind::Counters(toolgate::testing::wire::Counters {
                counters: vec![toolgate::testing::wire::CounterState {
                    counter: "create_api_key".into(),
                    scope: "grant".into(),
                    key: "ci-bot".into(),
                    used: 30,
                    max: 30,
                    window_ms: 60_000,
                    next_free_in_ms: Some(10_000),
                }],
            }),
        ),
        now,
    );
    let later = now + chrono::TimeDelta::seconds(4);
    update(&mut s, AppEvent::Tick, later);
    let rows = toolgate::console::testing::limit_rows(&s);
    let row = rows
        .iter()
        .find(|r| r.key == "ci-bot" && r.counter == "create_api_key")
        .unwrap();
    assert_eq!((row.used, row.next_free_in_ms), (Some(30), Some(6_000)));
    key(&mut s, KeyCode::Char('4'));
    let screen = text(&render(&s, 130, 8)).join("\n");
    assert!(
        screen.contains("30/30") && screen.contains("in 6s"),
        "{screen}"
    );
}

/// Moves the Policy view's selection to the row of `tool`.
fn select_row(s: &mut State, tool: &str) {
    key(s, KeyCode::Char('3'));
    key(s, KeyCode::Home);
    let at = s
        .policy_rows()
        .iter()
        .position(|r| r.tool == tool)
        .expect("a row for the tool");
    for _ in 0..at {
        key(s, KeyCode::Down);
    }
    assert_eq!(
        toolgate::console::testing::selected_tool(s).as_deref(),
        Some(tool)
    );
}

/// What `toolgate scan` suggests for the offered tool `name`.
fn suggestion(s: &State, name: &str) -> Value {
    let info = s.gateways[0]
        .tools
        .iter()
        .find(|t| t.info.name == name)
        .expect("an offered tool")
        .info
        .clone();
    toolgate::testing::scan::suggested_rule(&info, &toolgate::testing::scan::classify(&info))
}

fn suggest_is_offered(s: &State) -> bool {
    toolgate::console::testing::active_bindings(s)
        .any(|b| b.action == toolgate::console::testing::KeyAction::SuggestRule)
}

#[test]
fn s_gives_a_tool_without_a_rule_the_suggested_rule_then_w_reviews_it() {
    let mut s = authoring();
    select_row(&mut s, "book_meeting");
    assert!(suggest_is_offered(&s));
    assert_eq!(rule(&s, "book_meeting"), Value::Null);
    key(&mut s, KeyCode::Char('s'));
    let r = rule(&s, "book_meeting");
    assert_eq!(r, suggestion(&s, "book_meeting"));
    // "book" guesses a write: allowed under a per-grant limit, with a reason a person reads.
    assert_eq!(r["action"], "allow");
    assert!(r["rate_limit"]["max"].as_u64().is_some());
    assert!(r["reason"].as_str().is_some_and(|t| !t.is_empty()));
    let (text, error) = message(&s);
    assert!(!error, "{text}");
    assert!(
        text.contains("book_meeting") && text.contains(":w"),
        "{text}"
    );
    assert!(draft(&s).compiled().is_ok());
    key(&mut s, KeyCode::Char('w'));
    assert!(s.overlays.review().is_some());
    let review = s.overlays.review().expect("a review");
    assert!(
        review
            .diff
            .iter()
            .any(|l| l.starts_with('+') && l.contains("book_meeting"))
    );
}

#[test]
fn s_on_a_tool_with_its_own_rule_says_what_would_change_and_replaces_it_only_on_a_second_s() {
    let mut s = authoring();
    select_row(&mut s, "send_message");
    let own = rule(&s, "send_message");
    let text_before = draft(&s).text().to_owned();
    key(&mut s, KeyCode::Char('s'));
    assert_eq!(draft(&s).text(), text_before, "the person's rule is kept");
    let (text, error) = message(&s);
    assert!(error, "{text}");
    assert!(
        text.contains("own rule") && text.contains("require_approval") && text.contains("s again"),
        "{text}"
    );
    // Anything else in between disarms it: the next `s` warns again.
    key(&mut s, KeyCode::Down);
    key(&mut s, KeyCode::Up);
    key(&mut s, KeyCode::Char('s'));
    assert_eq!(rule(&s, "send_message"), own);
    key(&mut s, KeyCode::Char('s'));
    assert_eq!(rule(&s, "send_message"), suggestion(&s, "send_message"));
    assert_ne!(rule(&s, "send_message"), own);
    // Once it is the suggestion, `s` has nothing to change.
    key(&mut s, KeyCode::Char('s'));
    let (text, _) = message(&s);
    assert!(text.contains("already has the suggested rule"), "{text}");
}

#[test]
fn s_refuses_a_hidden_tool_and_is_not_offered_on_a_glob_rule() {
    let mut s = authoring();
    command(&mut s, "hide export_data");
    select_row(&mut s, "export_data");
    let before = draft(&s).text().to_owned();
    key(&mut s, KeyCode::Char('s'));
    assert_eq!(draft(&s).text(), before);
    let (text, error) = message(&s);
    assert!(
        error && text.contains("hidden") && text.contains("hide"),
        "{text}"
    );

    select_row(&mut s, "delete_*");
    assert!(!suggest_is_offered(&s), "a glob has no single risk class");
    key(&mut s, KeyCode::Char('s'));
    assert_eq!(draft(&s).text(), before);
}

#[test]
fn s_refuses_a_suggestion_that_would_make_the_policy_invalid() {
    let mut s = authoring();
    // Another rule already counts against a budget named `book_meeting` with another size:
    // the suggestion's `rate_limit` (a counter named after the tool) would clash with it.
    s.authoring
        .draft
        .as_mut()
        .expect("a draft")
        .apply(&Edit::SetRule {
            key: "send_message".into(),
            rule: serde_json::json!({
                "limits": [ { "counter": "book_meeting", "window": "day", "max": 2, "scope": "grant" } ]
            }),
        })
        .expect("a valid rule");
    select_row(&mut s, "book_meeting");
    let before = draft(&s).text().to_owned();
    key(&mut s, KeyCode::Char('s'));
    assert_eq!(draft(&s).text(), before);
    let (text, error) = message(&s);
    assert!(error && text.contains("refused"), "{text}");
    assert!(!s.authoring.refused.is_empty());
    assert!(draft(&s).compiled().is_ok());
}

#[test]
fn the_policy_view_shows_risk_classes_and_flags_of_offered_tools() {
    let s = authoring();
    let class = |name: &str| {
        toolgate::console::testing::tool_class(&s, name).map(|c| (c.class.as_str(), c.guessed))
    };
    assert_eq!(class("list_meetings"), Some(("read", true)));
    assert_eq!(class("delete_account"), Some(("destructive", true)));
    assert_eq!(class("delete_*"), None);
}

#[test]
fn policy_view_with_classes_snapshot() {
    let mut s = authoring();
    let secrets = ToolInfo {
        name: "rotate_token".into(),
        description: Some("Rotates the API token and returns the new one".into()),
        input_schema: Some(
            serde_json::json!({"type": "object", "properties": {"token": {"type": "string"}}}),
        ),
        output_schema: None,
        annotations: Some(
            serde_json::json!({"destructiveHint": false, "readOnlyHint": false, "openWorldHint": true}),
        ),
    };
    let mut tools: Vec<ToolInfo> = s.gateways[0].tools.iter().map(|t| t.info.clone()).collect();
    tools.push(secrets);
    let now = s.now;
    update(
        &mut s,
        net(
            "a1b2",
            41,
            now,
            EventKind::Tools(Tools {
                server: "meetings".into(),
                tools,
            }),
        ),
        now,
    );
    select_row(&mut s, "book_meeting");
    key(&mut s, KeyCode::Char('s'));
    s.message = None;
    insta::assert_debug_snapshot!("policy_classes_wide", text(&render(&s, 150, 18)));
    insta::assert_debug_snapshot!("policy_classes_narrow", text(&render(&s, 80, 18)));
}

#[test]
fn a_rule_changed_on_disk_between_the_two_s_presses_is_warned_about_again() {
    let mut s = authoring();
    select_row(&mut s, "send_message");
    key(&mut s, KeyCode::Char('s'));
    assert!(message(&s).1, "the first s only warns");
    let changed = POLICY.replace("sending messages needs a person", "a person reads each one");
    let now = s.now;
    update(
        &mut s,
        AppEvent::PolicyFile {
            path: PATH.into(),
            result: Ok(changed),
        },
        now,
    );
    key(&mut s, KeyCode::Char('s'));
    assert_eq!(
        rule(&s, "send_message")["reason"],
        "a person reads each one"
    );
    let (text, error) = message(&s);
    assert!(error && text.contains("s again"), "{text}");
}
