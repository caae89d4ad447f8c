//! The Live view: every call as it is decided, newest at the bottom, with an optional detail
//! pane for the selected call.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout as Split, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget};

use super::{cell, cell_right, decision_style, detail};
use crate::console::model::{Layout, State, decision_label, latency_label, shadow_label};
use crate::console::theme::Theme;

/// Where the Live list's window was last drawn: it moves only when the selection leaves it.
/// The event loop owns this with the rest of the [`super::ViewState`]; the model never
/// reads it.
#[derive(Debug, Default)]
pub(crate) struct LiveScroll {
    /// Index (in the visible list) of the top row last drawn.
    top: usize,
    /// The filter the window was drawn under (a new filter starts from the top).
    filter_revision: u64,
}

const TIME_W: u16 = 12;
const WHO_W: u16 = 20;
/// The "who" column when a remote gateway is followed: `id@HOST:PORT/grant`.
const WHO_REMOTE_W: u16 = 34;
const TOOL_W: u16 = 22;
const DECISION_W: u16 = 15;
const LATENCY_W: u16 = 9;

pub(crate) fn draw(
    buf: &mut Buffer,
    area: Rect,
    state: &State,
    t: &Theme,
    scroll: &mut LiveScroll,
) {
    let (list_area, detail_area) = match (
        state.live.detail.as_deref(),
        Layout::detail_rows(area.height),
    ) {
        (Some(_), Some(detail_h)) => {
            let [a, b] =
                Split::vertical([Constraint::Min(3), Constraint::Length(detail_h)]).areas(area);
            (a, Some(b))
        }
        _ => (area, None),
    };
    list(buf, list_area, state, t, scroll);
    if let (Some(d), Some(id)) = (detail_area, state.live.detail.as_deref()) {
        detail::draw(buf, d, state, t, id, state.live.detail_scroll);
    }
}

fn list(buf: &mut Buffer, area: Rect, state: &State, t: &Theme, scroll: &mut LiveScroll) {
    let mode = if state.following() {
        Span::styled("following", t.ok)
    } else {
        Span::styled("paused · F resumes", t.rate_limited)
    };
    let mut block = Block::default()
        .borders(Borders::ALL)
        .border_style(t.border)
        .title(Line::from(vec![
            Span::styled(" Live", t.accent),
            Span::styled(" · ", t.muted),
            mode,
            Span::raw(" "),
        ]));
    if !state.live.filter.is_empty() {
        block = block.title_top(
            Line::from(vec![
                Span::styled(" filter: ", t.muted),
                Span::styled(state.live.filter.source.clone(), t.accent),
                Span::styled(format!(" ({}) ", state.live_len()), t.muted),
            ])
            .right_aligned(),
        );
    }
    let inner = block.inner(area);
    block.render(area, buf);
    if inner.height == 0 || inner.width == 0 {
        return;
    }

    let len = state.live_len();
    if len == 0 {
        let text = if state.history.is_empty() {
            if state.gateways.is_empty() {
                "No gateway found yet. Start one (toolgate wrap, toolgate demo); it appears here by itself."
            } else {
                "Waiting for calls…"
            }
        } else {
            "No call matches the filter. Esc clears it."
        };
        Paragraph::new(Span::styled(text, t.muted)).render(inner, buf);
        return;
    }

    let h = inner.height as usize;
    if scroll.filter_revision != state.live.filter_revision {
        scroll.top = 0;
        scroll.filter_revision = state.live.filter_revision;
    }
    let sel = state.live_selected_index().unwrap_or(len - 1);
    let top = if state.following() {
        len.saturating_sub(h)
    } else {
        let mut top = scroll.top.min(len.saturating_sub(h));
        if sel < top {
            top = sel;
        } else if sel >= top + h {
            top = sel + 1 - h;
        }
        top
    };
    scroll.top = top;

    let many_gateways = state.gateways.len() > 1;
    let x0 = inner.x;
    let w = inner.width;
    // Columns: time, who, tool, decision, rule (what is left), latency.
    let who_w = if state.any_remote() {
        WHO_REMOTE_W
    } else {
        WHO_W
    };
    let fixed = TIME_W + who_w + TOOL_W + DECISION_W + LATENCY_W + 5;
    let rule_w = w.saturating_sub(fixed);
    for (row_i, i) in (top..len.min(top + h)).enumerate() {
        let Some(pos) = state.live_pos(i) else { break };
        let Some(row) = state.history.get(pos) else {
            continue;
        };
        let y = inner.y + row_i as u16;
        let selected = !state.following() && i == sel;
        if selected {
            buf.set_style(Rect::new(x0, y, w, 1), t.selection);
        }
        let mut x = x0;
        let time = row
            .ts
            .with_timezone(&state.tz)
            .format("%H:%M:%S%.3f")
            .to_string();
        cell(buf, x, y, TIME_W.min(w), &time, t.muted);
        x += TIME_W + 1;
        let who = if many_gateways {
            format!("{}/{}", state.gateway_place(row.conn), row.call.grant)
        } else {
            row.call.grant.to_string()
        };
        cell(buf, x, y, who_w.min(right(x0, w, x)), &who, t.text);
        x += who_w + 1;
        cell(
            buf,
            x,
            y,
            TOOL_W.min(right(x0, w, x)),
            &row.call.tool,
            t.text,
        );
        x += TOOL_W + 1;
        let held = row.call.decision == crate::wire::Verdict::Hold
            && row.resolution.is_none()
            && state.is_held(&row.call.call_id);
        let (label, ds) = decision_label(row, state.now, held);
        cell(
            buf,
            x,
            y,
            DECISION_W.min(right(x0, w, x)),
            &label,
            decision_style(t, ds),
        );
        x += DECISION_W + 1;
        // A shadow decision is marked before the rule, so a call it would have changed stands
        // out in a list of ordinary ones.
        let mut rule_x = x;
        if let Some(mark) = shadow_label(row) {
            let mark_w = (mark.chars().count() as u16 + 1).min(rule_w);
            cell(
                buf,
                rule_x,
                y,
                mark_w.min(right(x0, w, rule_x)),
                &mark,
                t.rate_limited,
            );
            rule_x += mark_w;
        }
        cell(
            buf,
            rule_x,
            y,
            (x + rule_w)
                .saturating_sub(rule_x)
                .min(right(x0, w, rule_x)),
            &row.call.rule,
            t.muted,
        );
        x += rule_w + 1;
        let (lat, lat_style) = match &row.outcome {
            Some(o) if o.error => (format!("✗ {}", latency_label(o.latency_us)), t.error),
            Some(o) => (latency_label(o.latency_us), t.text),
            None => (String::new(), t.muted),
        };
        cell_right(buf, x, y, LATENCY_W.min(right(x0, w, x)), &lat, lat_style);
    }
}

/// Columns left from `x` to the right edge of a `w`-wide area starting at `x0`.
fn right(x0: u16, w: u16, x: u16) -> u16 {
    (x0 + w).saturating_sub(x)
}
