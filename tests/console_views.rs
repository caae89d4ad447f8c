//! Snapshots of every view on a `TestBackend`, styles included (insta's debug snapshot of a
//! ratatui `Buffer` lists the style changes cell by cell), plus checks of what a person must
//! be able to rely on: aligned columns, no raw control characters, decisions readable without
//! colour.

mod console_support;

use console_support::*;
use crossterm::event::KeyCode;
use toolgate::console::testing::KeyAction;
use toolgate::console::testing::Theme;
use toolgate::console::testing::{AppEvent, View, update};

#[test]
fn live_view_follows_with_every_decision() {
    let s = populated();
    insta::assert_debug_snapshot!(render(&s, 110, 18));
}

#[test]
fn live_view_paused_with_the_detail_of_a_call() {
    let mut s = populated();
    for _ in 0..9 {
        key(&mut s, KeyCode::Up);
    }
    key(&mut s, KeyCode::Enter);
    insta::assert_debug_snapshot!(render(&s, 110, 30));
}

#[test]
fn live_view_filtered() {
    let mut s = populated();
    key(&mut s, KeyCode::Char('/'));
    typed(&mut s, "decision:deny grant:ci*");
    key(&mut s, KeyCode::Enter);
    insta::assert_debug_snapshot!(render(&s, 110, 12));
}

#[test]
fn holds_view_oldest_first_with_countdowns() {
    let mut s = populated();
    let now = s.now;
    update(&mut s, AppEvent::Act(KeyAction::ShowView(View::Holds)), now);
    insta::assert_debug_snapshot!(render(&s, 110, 12));
}

#[test]
fn holds_view_detail_and_deny_reason_prompt() {
    let mut s = populated();
    key(&mut s, KeyCode::Char('2'));
    key(&mut s, KeyCode::Enter);
    key(&mut s, KeyCode::Char('d'));
    typed(&mut s, "not now");
    insta::assert_debug_snapshot!(render(&s, 110, 26));
}

#[test]
fn help_lists_only_the_keys_of_the_view() {
    let mut s = populated();
    key(&mut s, KeyCode::Char('2'));
    key(&mut s, KeyCode::Char('?'));
    let holds_help = render(&s, 110, 34);
    let rows = text(&holds_help).join("\n");
    assert!(rows.contains("approve the held call"));
    assert!(!rows.contains("filter:"), "the filter key is Live's only");
    insta::assert_debug_snapshot!(holds_help);
}

#[test]
fn quitting_with_held_calls_asks_first() {
    let mut s = populated();
    key(&mut s, KeyCode::Char('q'));
    let screen = text(&render(&s, 110, 10));
    assert!(
        screen
            .last()
            .is_some_and(|l| l.contains("2 calls are held") && l.contains("y/n")),
        "{screen:#?}"
    );
}

#[test]
fn no_color_theme_has_no_colour_and_decisions_still_read() {
    let s = populated();
    let buf = render_with(&s, Theme::builtin_default().without_colour(), 110, 18);
    for c in buf.content.iter() {
        assert_eq!(
            c.fg,
            ratatui::style::Color::Reset,
            "colour at {:?}",
            c.symbol()
        );
        assert_eq!(c.bg, ratatui::style::Color::Reset);
    }
    let rows = text(&buf).join("\n");
    for word in [
        "✓ allow",
        "✗ deny",
        "⏱ rate limited",
        "⏸ held",
        "✗ rejected",
    ] {
        assert!(rows.contains(word), "{word} missing");
    }
    insta::assert_debug_snapshot!(buf);
}

#[test]
fn columns_stay_aligned_with_wide_and_combining_characters() {
    let s = populated();
    let buf = render(&s, 110, 18);
    let w = buf.area.width as usize;
    let mut decision_columns = Vec::new();
    for row in buf.content.chunks(w).skip(2).take(10) {
        let x = row
            .iter()
            .position(|c| ["✓", "✗", "⏸", "⏱"].contains(&c.symbol()))
            .expect("every call row has a decision");
        decision_columns.push(x);
    }
    decision_columns.dedup();
    assert_eq!(
        decision_columns.len(),
        1,
        "decision column moved: {decision_columns:?}"
    );
}

#[test]
fn outside_text_never_reaches_the_screen_as_control_characters() {
    let mut s = populated();
    for _ in 0..1 {
        key(&mut s, KeyCode::Up);
    }
    key(&mut s, KeyCode::Enter);
    let buf = render(&s, 110, 30);
    for c in buf.content.iter() {
        assert!(
            !c.symbol()
                .chars()
                .any(|ch| ch.is_control() || ('\u{202a}'..='\u{202e}').contains(&ch)),
            "raw control in {:?}",
            c.symbol()
        );
    }
    let rows = text(&buf).join("\n");
    assert!(rows.contains("\\x1b[2J"), "the escape is shown escaped");
}

#[test]
fn secrets_in_arguments_are_redacted_in_the_detail() {
    let mut s = populated();
    for _ in 0..9 {
        key(&mut s, KeyCode::Up);
    }
    key(&mut s, KeyCode::Enter);
    let rows = text(&render(&s, 110, 30)).join("\n");
    assert!(rows.contains("[redacted]"));
    assert!(!rows.contains("sk-live-123"));
}

#[test]
fn every_view_draws_on_tiny_terminals_without_panicking() {
    let mut s = populated();
    key(&mut s, KeyCode::Up);
    key(&mut s, KeyCode::Enter);
    for view in ['1', '2', '3', '4'] {
        key(&mut s, KeyCode::Char(view));
        for (w, h) in [(1, 1), (10, 3), (20, 5), (40, 8), (200, 2)] {
            let buf = render(&s, w, h);
            assert_eq!(buf.area.width, w);
        }
        key(&mut s, KeyCode::Char('?'));
        for (w, h) in [(1, 1), (15, 4), (30, 6)] {
            render(&s, w, h);
        }
        key(&mut s, KeyCode::Esc);
    }
}

#[test]
fn help_on_a_short_screen_uses_two_columns_and_keeps_every_key() {
    let mut s = populated();
    key(&mut s, KeyCode::Char('?'));
    let rows = text(&render(&s, 120, 22)).join("\n");
    for must in ["F End", "quit now", ":theme NAME", ":q  :q!"] {
        assert!(rows.contains(must), "{must} missing:\n{rows}");
    }
}

/// `populated()` with `extra` more allowed calls, on a terminal `w`×`h` (as the event loop
/// reports its size).
fn many_calls(extra: u32, w: u16, h: u16) -> toolgate::console::testing::State {
    let mut s = populated();
    let now = s.now;
    for n in 0..extra {
        update(
            &mut s,
            net(
                "a1b2",
                100 + n as u64,
                at_ms(59_000),
                toolgate::testing::wire::EventKind::Call(call(
                    "a1b2",
                    100 + n,
                    "list_meetings",
                    "ci-bot",
                    toolgate::testing::wire::Verdict::Allow,
                )),
            ),
            now,
        );
    }
    update(
        &mut s,
        AppEvent::Resize {
            width: w,
            height: h,
        },
        now,
    );
    s
}

#[test]
fn page_keys_move_by_the_rows_the_live_list_shows_whether_or_not_a_frame_was_drawn() {
    let (w, h) = (110, 16);
    let mut undrawn = many_calls(40, w, h);
    let mut drawn = many_calls(40, w, h);
    let len = undrawn.history.len();
    for s in [&mut undrawn, &mut drawn] {
        key(s, KeyCode::Up);
    }
    // The rows the Live list shows on this screen, counted on the screen itself.
    let screen = text(&render(&drawn, w, h));
    let shown = screen
        .iter()
        .filter(|r| r.contains("list_meetings") || r.contains("create_api_key"))
        .count();
    key(&mut undrawn, KeyCode::PageUp);
    key(&mut drawn, KeyCode::PageUp);
    assert_eq!(shown, 12, "{screen:#?}");
    assert_eq!(undrawn.live_selected_index(), Some(len - 2 - shown));
    assert_eq!(
        drawn.live_selected_index(),
        undrawn.live_selected_index(),
        "drawing a frame changed what PageUp does"
    );
    key(&mut undrawn, KeyCode::PageDown);
    assert_eq!(undrawn.live_selected_index(), Some(len - 2));
}

#[test]
fn j_and_k_scroll_a_detail_and_the_write_review_by_the_same_amount_help_shows() {
    use toolgate::console::testing::{SCROLL_STEP, active_bindings};
    let mut s = populated();
    let now = s.now;
    update(&mut s, AppEvent::Act(KeyAction::ShowView(View::Holds)), now);
    key(&mut s, KeyCode::Enter);
    key(&mut s, KeyCode::Char('J'));
    assert_eq!(s.holds_view.detail_scroll, SCROLL_STEP as u16);
    let help = active_bindings(&s)
        .find(|b| b.label == "J")
        .expect("J is in the help of an open detail");
    assert_eq!(
        help.action,
        KeyAction::ScrollDetail(SCROLL_STEP),
        "help's J is the key's J"
    );
    key(&mut s, KeyCode::Char('K'));
    assert_eq!(s.holds_view.detail_scroll, 0);
}

#[test]
fn esc_closes_the_layer_opened_last_and_help_lets_the_views_keys_through() {
    use toolgate::console::testing::Prompt;
    let mut s = populated();
    key(&mut s, KeyCode::Char('?'));
    assert!(s.overlays.has_help());
    key(&mut s, KeyCode::Char('k'));
    assert!(!s.following(), "k reached the Live view under help");
    key(&mut s, KeyCode::Char(':'));
    assert!(matches!(s.overlays.prompt(), Some(Prompt::Command(_))));
    key(&mut s, KeyCode::Char('?'));
    assert!(
        matches!(s.overlays.prompt(), Some(Prompt::Command(i)) if i.value() == "?"),
        "the command line on top takes ? as text"
    );
    key(&mut s, KeyCode::Esc);
    assert!(s.overlays.prompt().is_none(), "Esc closed the command line");
    assert!(s.overlays.has_help(), "and only it");
    key(&mut s, KeyCode::Esc);
    assert!(s.overlays.is_empty(), "then help");
    assert!(!s.following(), "the pause is the view's, under the layers");
    key(&mut s, KeyCode::Esc);
    assert!(s.following());
}
