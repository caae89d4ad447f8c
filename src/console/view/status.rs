//! The status bar (top) and the bottom line (views, prompt, message or key hints).

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};

use crate::console::input::keys;
use crate::console::model::{Link, Overlay, Prompt, State, View, short_hash};
use crate::console::theme::Theme;

const SPARK: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// ` toolgate · 2 gateways ● · policy 3f9a21 · ✓ 1204  ✗ 87  ⏱ 31  ⏸ 2 held · 42/min ▁▂▅▇▅▃`
pub(super) fn status_bar(buf: &mut Buffer, area: Rect, state: &State, t: &Theme) {
    if area.is_empty() {
        return;
    }
    let bar = t.status_bar;
    buf.set_style(area, bar);
    let mut spans: Vec<Span> = vec![Span::styled(" toolgate", bar.patch(t.accent))];
    let sep = || Span::styled(" · ", bar.patch(t.muted));

    spans.push(sep());
    let total = state.gateways.len();
    let up = state.connected();
    if total == 0 {
        spans.push(Span::styled("no gateways yet", bar.patch(t.muted)));
    } else {
        let dot_style = if up == total { t.ok } else { t.error };
        let text = if up == total {
            format!("{total} gateway{} ", plural(total))
        } else {
            format!("{up}/{total} gateways ")
        };
        spans.push(Span::styled(text, bar));
        spans.push(Span::styled(
            if up == total { "●" } else { "○" },
            bar.patch(dot_style),
        ));
        if let Some(g) = state
            .gateways
            .iter()
            .find(|g| matches!(g.link, Link::Down { .. }))
            && let Link::Down { retry_in, .. } = &g.link
        {
            spans.push(Span::styled(
                format!(" {} retry {}s", g.label(), retry_in.as_secs()),
                bar.patch(t.error),
            ));
        }
    }

    let hashes: Vec<&str> = {
        let mut h: Vec<&str> = state
            .gateways
            .iter()
            .filter_map(|g| g.policy_hash.as_deref())
            .collect();
        h.sort_unstable();
        h.dedup();
        h
    };
    if state.gateways.iter().any(|g| g.policy_error.is_some()) {
        spans.push(sep());
        spans.push(Span::styled("policy refused ✗", bar.patch(t.error)));
    } else if let [one] = hashes.as_slice() {
        spans.push(sep());
        spans.push(Span::styled(format!("policy {}", short_hash(one)), bar));
        if let Some(at) = state
            .gateways
            .iter()
            .filter_map(|g| g.policy_applied_at)
            .max()
        {
            spans.push(Span::styled(
                format!(
                    " applied {}",
                    at.with_timezone(&state.tz).format("%H:%M:%S")
                ),
                bar.patch(t.muted),
            ));
        }
    } else if hashes.len() > 1 {
        spans.push(sep());
        spans.push(Span::styled(
            format!("{} policies differ", hashes.len()),
            bar.patch(t.rate_limited),
        ));
    }

    let totals = state.totals();
    spans.push(sep());
    spans.push(Span::styled(
        format!("✓ {}", totals.allow),
        bar.patch(t.allow),
    ));
    spans.push(Span::styled(
        format!("  ✗ {}", totals.deny),
        bar.patch(t.deny),
    ));
    spans.push(Span::styled(
        format!("  ⏱ {}", totals.rate_limited),
        bar.patch(t.rate_limited),
    ));
    let held = state.holds.len();
    spans.push(Span::styled(
        format!("  ⏸ {held} held"),
        if held > 0 {
            bar.patch(t.hold)
        } else {
            bar.patch(t.muted)
        },
    ));
    // Shown only when there is something to review, so the bar stays short otherwise.
    let changed = state.open_reviews().len();
    if changed > 0 {
        spans.push(Span::styled(
            format!("  ⚠ {changed} tool{} changed", plural(changed)),
            bar.patch(t.deny),
        ));
    }
    spans.push(sep());
    spans.push(Span::styled(
        format!("{}/min ", state.rate.per_minute(state.now)),
        bar,
    ));
    let spark = state.rate.sparkline(state.now);
    let max = spark.iter().copied().max().unwrap_or(0).max(1);
    let line: String = spark
        .iter()
        .map(|n| SPARK[((*n as usize * (SPARK.len() - 1)) / max as usize).min(SPARK.len() - 1)])
        .collect();
    spans.push(Span::styled(line, bar.patch(t.accent)));
    buf.set_line(area.x, area.y, &Line::from(spans), area.width);
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The bottom line: a prompt when one is open, else the views and the message or hints.
pub(super) fn bottom_line(buf: &mut Buffer, area: Rect, state: &State, t: &Theme) {
    if area.is_empty() {
        return;
    }
    if let Some(Overlay::Review(_)) = state.overlays.top() {
        buf.set_stringn(
            area.x,
            area.y,
            " Write the policy file? y writes · n keeps the draft",
            area.width as usize,
            t.hold,
        );
        return;
    }
    match state.overlays.prompt() {
        Some(Prompt::Filter(input)) => prompt(buf, area, t, "/", input.value()),
        Some(Prompt::Command(input)) => prompt(buf, area, t, ":", input.value()),
        Some(Prompt::DenyReason { call_id, input }) => {
            let label = format!("deny {call_id} · reason (Enter sends, Esc cancels): ");
            prompt(buf, area, t, &label, input.value())
        }
        Some(Prompt::Rate { tool, input }) => {
            prompt(buf, area, t, &rate_label(tool), input.value())
        }
        Some(Prompt::CounterEdit {
            counter,
            max,
            input,
        }) => prompt(buf, area, t, &counter_label(counter, *max), input.value()),
        Some(Prompt::ConfirmQuit) => {
            let n = state.holds.len();
            let text = format!(
                " {n} call{} held and waiting for you. Quit anyway? y/n",
                if n == 1 { " is" } else { "s are" }
            );
            buf.set_stringn(area.x, area.y, text, area.width as usize, t.hold);
        }
        Some(Prompt::DropLearned { quit }) => {
            let n = state.overlays.learn().map_or(0, |r| {
                r.items
                    .iter()
                    .filter(|i| i.choice != crate::console::model::learn::Choice::Open)
                    .count()
            });
            let text = format!(
                " {n} choice{} in the learned-policy review not written. Drop {} and {}? y/n",
                if n == 1 { "" } else { "s" },
                if n == 1 { "it" } else { "them" },
                if *quit { "quit" } else { "close the review" }
            );
            buf.set_stringn(area.x, area.y, text, area.width as usize, t.hold);
        }
        None => {
            let mut spans = Vec::new();
            let changed = state.open_reviews().len();
            for v in View::ALL {
                let mut label = format!(" {} {}", v.number(), v.title());
                if v == View::Holds && !state.holds.is_empty() {
                    label.push_str(&format!(" ({})", state.holds.len()));
                }
                if v == View::Tools && changed > 0 {
                    label.push_str(&format!(" ({changed})"));
                }
                let style = if v == state.view {
                    t.accent
                } else if v == View::Holds && !state.holds.is_empty() {
                    t.hold
                } else if v == View::Tools && changed > 0 {
                    t.deny
                } else {
                    t.muted
                };
                spans.push(Span::styled(label, style));
                spans.push(Span::raw(" "));
            }
            spans.push(Span::raw("   "));
            if let Some(m) = &state.message {
                spans.push(Span::styled(
                    m.text.clone(),
                    if m.error { t.error } else { t.ok },
                ));
            } else {
                for b in keys::active_bindings(state) {
                    if let Some(word) = b.hint {
                        spans.push(Span::styled(b.label, t.accent));
                        spans.push(Span::styled(format!(" {word}  "), t.muted));
                    }
                }
            }
            buf.set_line(area.x, area.y, &Line::from(spans), area.width);
        }
    }
}

fn prompt(buf: &mut Buffer, area: Rect, t: &Theme, label: &str, value: &str) {
    let (x, _) = buf.set_stringn(area.x, area.y, label, area.width as usize, t.accent);
    let room = area.right().saturating_sub(x) as usize;
    // Typed text is the operator's own, but it is shown through the same door.
    let value = crate::sanitize::terminal_text(value);
    buf.set_stringn(x, area.y, value, room, Style::default().patch(t.text));
}

/// Where the terminal cursor goes (in a text prompt).
pub(super) fn cursor(area: Rect, state: &State) -> Option<(u16, u16)> {
    let (label_w, input) = match state.overlays.prompt()? {
        Prompt::Filter(i) | Prompt::Command(i) => (1, i),
        Prompt::DenyReason { call_id, input } => (
            super::width(&format!(
                "deny {call_id} · reason (Enter sends, Esc cancels): "
            )),
            input,
        ),
        Prompt::Rate { tool, input } => (super::width(&rate_label(tool)), input),
        Prompt::CounterEdit {
            counter,
            max,
            input,
        } => (super::width(&counter_label(counter, *max)), input),
        Prompt::ConfirmQuit | Prompt::DropLearned { .. } => return None,
    };
    let x = area.x as usize + label_w + input.visual_cursor();
    Some((
        (x.min(area.right().saturating_sub(1) as usize)) as u16,
        area.y,
    ))
}

fn rate_label(tool: &str) -> String {
    format!(
        "limit {} to MAX/WINDOW (e.g. 30/minute; Enter, Esc cancels): ",
        crate::sanitize::terminal_text(tool)
    )
}

fn counter_label(counter: &str, max: bool) -> String {
    format!(
        "counter {} · new {} (Enter, Esc cancels): ",
        crate::sanitize::terminal_text(counter),
        if max {
            "max"
        } else {
            "window (minute, 90s, 10m, 3600)"
        }
    )
}
