//! The Holds view: calls waiting for a person, oldest first, with the time each has left.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget};

use super::{cell, detail};
use crate::console::model::{State, countdown};
use crate::console::theme::Theme;

const WAIT_W: u16 = 8;
const LEFT_W: u16 = 10;
const WHO_W: u16 = 22;
/// The "who" column when a remote gateway is followed: `id@HOST:PORT/grant`.
const WHO_REMOTE_W: u16 = 34;
const TOOL_W: u16 = 22;

pub(super) fn draw(buf: &mut Buffer, area: Rect, state: &State, t: &Theme) {
    let (list_area, detail_area) = match state.holds_view.detail.as_deref() {
        Some(_) if area.height >= 10 => {
            let detail_h = (area.height * 2 / 3).clamp(6, 24);
            let [a, b] =
                Layout::vertical([Constraint::Min(3), Constraint::Length(detail_h)]).areas(area);
            (a, Some(b))
        }
        _ => (area, None),
    };
    list(buf, list_area, state, t);
    if let (Some(d), Some(id)) = (detail_area, state.holds_view.detail.as_deref()) {
        detail::draw(buf, d, state, t, id, state.holds_view.detail_scroll);
    }
}

fn list(buf: &mut Buffer, area: Rect, state: &State, t: &Theme) {
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(t.border)
        .title(Line::from(vec![
            Span::styled(" Holds", t.accent),
            Span::styled(
                format!(" · {} waiting · oldest first ", state.holds.len()),
                t.muted,
            ),
        ]));
    let inner = block.inner(area);
    block.render(area, buf);
    if inner.height < 2 || inner.width == 0 {
        return;
    }
    if state.holds.is_empty() {
        Paragraph::new(Span::styled(
            "No call is waiting for approval. A new hold rings the bell and shows here.",
            t.muted,
        ))
        .render(inner, buf);
        return;
    }
    let (x0, w) = (inner.x, inner.width);
    let header_y = inner.y;
    let who_w = if state.any_remote() {
        WHO_REMOTE_W
    } else {
        WHO_W
    };
    let args_w = w.saturating_sub(WAIT_W + LEFT_W + who_w + TOOL_W + 4);
    let columns = [
        (WAIT_W, "waited"),
        (LEFT_W, "time left"),
        (
            who_w,
            if state.any_remote() {
                "gateway@host/grant"
            } else if state.gateways.len() > 1 {
                "gateway/grant"
            } else {
                "grant"
            },
        ),
        (TOOL_W, "tool"),
        (args_w, "arguments"),
    ];
    let mut x = x0;
    for (cw, name) in columns {
        cell(
            buf,
            x,
            header_y,
            cw.min((x0 + w).saturating_sub(x)),
            name,
            t.muted,
        );
        x += cw + 1;
    }
    let h = (inner.height - 1) as usize;
    let sel = state.holds_view.selected.min(state.holds.len() - 1);
    let top = sel.saturating_sub(h.saturating_sub(1));
    for (row_i, hold) in state.holds.iter().enumerate().skip(top).take(h) {
        let y = inner.y + 1 + (row_i - top) as u16;
        // A selected hold resolved elsewhere stays selected in the detail; no row here is.
        if row_i == sel && state.holds_view.resolved_elsewhere.is_none() {
            buf.set_style(Rect::new(x0, y, w, 1), t.selection);
        }
        let waited = (state.now - hold.ts).num_seconds().max(0);
        let left = countdown(hold.call.hold_deadline, state.now);
        let urgent = hold
            .call
            .hold_deadline
            .is_some_and(|d| (d - state.now).num_seconds() < 30);
        let who = if state.gateways.len() > 1 {
            format!("{}/{}", state.gateway_place(hold.conn), hold.call.grant)
        } else {
            hold.call.grant.to_string()
        };
        let args = crate::sanitize::terminal_text(&hold.args).into_owned();
        let cells = [
            (
                WAIT_W,
                format!("{}:{:02}", waited / 60, waited % 60),
                t.muted,
            ),
            (
                LEFT_W,
                format!("⏸ {left}"),
                if urgent { t.error } else { t.hold },
            ),
            (who_w, who, t.text),
            (TOOL_W, hold.call.tool.to_string(), t.text),
            (args_w, args, t.muted),
        ];
        let mut x = x0;
        for (cw, text, style) in cells {
            cell(buf, x, y, cw.min((x0 + w).saturating_sub(x)), &text, style);
            x += cw + 1;
        }
    }
}
