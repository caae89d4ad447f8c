//! The Limits view (`4`): every counter and scope key in use, as the gateways report them
//! (`counters` events and snapshots), and the draft's counters not in use yet: used / max,
//! the window, a bar, when room comes back. `m`/`t` edit a counter's max or window in place
//! (the draft changes, then the diff and `y`/`n`).

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Widget};

use super::cell;
use crate::console::model::{State, limit_rows, room_in};
use crate::console::theme::Theme;
use crate::policy::window_words;

const COUNTER_W: u16 = 24;
const SCOPE_W: u16 = 8;
const KEY_W: u16 = 16;
const USED_W: u16 = 10;
const WINDOW_W: u16 = 12;
const BAR_W: u16 = 22;

/// A bar of `width` cells, `used` of `max` filled.
pub(super) fn bar(used: u64, max: u64, width: usize) -> String {
    let filled = if max == 0 {
        width
    } else {
        ((used.min(max) as u128 * width as u128) / max as u128) as usize
    };
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

pub(super) fn draw(buf: &mut Buffer, area: Rect, state: &State, t: &Theme) {
    let rows = limit_rows(state);
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(t.border)
        .title(Line::from(vec![
            Span::styled(" Limits", t.accent),
            Span::styled(format!(" · {} counters ", rows.len()), t.muted),
        ]));
    let inner = block.inner(area);
    block.render(area, buf);
    if inner.height < 2 || inner.width == 0 {
        return;
    }
    let (x0, w) = (inner.x, inner.width);
    let mut y = inner.y;
    if rows.is_empty() {
        cell(
            buf,
            x0,
            y,
            w,
            "No counter in use and none in the policy: :limit TOOL 30/minute adds one.",
            t.muted,
        );
        return;
    }
    let room_w = w.saturating_sub(COUNTER_W + SCOPE_W + KEY_W + USED_W + WINDOW_W + BAR_W + 6);
    let columns = [
        (COUNTER_W, "COUNTER"),
        (SCOPE_W, "SCOPE"),
        (KEY_W, "WHO"),
        (USED_W, "USED/MAX"),
        (WINDOW_W, "WINDOW"),
        (BAR_W, ""),
        (room_w, "ROOM"),
    ];
    let mut x = x0;
    for (cw, title) in columns {
        cell(buf, x, y, cw, title, t.muted);
        x += cw + 1;
    }
    y += 1;
    let room = inner.bottom().saturating_sub(y) as usize;
    let selected = state.authoring.limits_selected.min(rows.len() - 1);
    let top = selected.saturating_sub(room.saturating_sub(1));
    for (i, r) in rows.iter().enumerate().skip(top).take(room) {
        let base = if i == selected {
            t.selection
        } else {
            Style::default()
        };
        buf.set_style(Rect::new(x0, y, w, 1), base);
        let full = r.used.is_some_and(|u| u >= r.max);
        let near = r.used.is_some_and(|u| u * 10 >= r.max * 8);
        let level = if full {
            t.rate_limited
        } else if near {
            t.hold
        } else {
            t.allow
        };
        let used = match r.used {
            Some(u) => format!("{u}/{}", r.max),
            None => format!("—/{}", r.max),
        };
        let mut room_text = match (r.used, r.next_free_in_ms) {
            (None, _) => "not in use".to_string(),
            (Some(_), _) if !full => "has room".to_string(),
            (Some(_), Some(0)) => "room again (until the next report)".to_string(),
            (Some(_), ms) => room_in(ms),
        };
        if let Some((m, wms)) = r.draft {
            room_text.push_str(&format!(" · draft: {m}/{}", window_words(wms)));
        }
        let who = if r.key.is_empty() {
            "—".to_string()
        } else {
            r.key.clone()
        };
        if let Some(store) = &r.store {
            room_text.push_str(&format!(" · counted in {store}"));
        }
        let cells = [
            (COUNTER_W, r.counter.clone(), t.text),
            (SCOPE_W, r.scope.clone(), t.muted),
            (KEY_W, who, t.text),
            (USED_W, used, level),
            (WINDOW_W, window_words(r.window_ms), t.text),
            (
                BAR_W,
                bar(r.used.unwrap_or(0), r.max, BAR_W as usize - 2),
                level,
            ),
            (
                room_w,
                room_text,
                if full { t.rate_limited } else { t.muted },
            ),
        ];
        let mut x = x0;
        for (cw, text, style) in cells {
            cell(buf, x, y, cw, &text, base.patch(style));
            x += cw + 1;
        }
        y += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_in_proportion_and_never_overflows() {
        assert_eq!(bar(0, 4, 4), "░░░░");
        assert_eq!(bar(2, 4, 4), "██░░");
        assert_eq!(bar(9, 4, 4), "████");
    }
}
