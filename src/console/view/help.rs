//! `?`: the keys of the current view, from the key table itself, and the `:` commands. When
//! the screen is too short for one column, the list is laid out in two.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget};

use super::{centered, fit};
use crate::console::input::{COMMANDS, keys};
use crate::console::model::State;
use crate::console::theme::Theme;

/// Width of one entry in the two-column layout.
const COLUMN: usize = 52;

pub(super) fn draw(buf: &mut Buffer, body: Rect, state: &State, t: &Theme) {
    let mut entries: Vec<(String, &str)> = keys::active_bindings(state)
        .map(|b| (format!("  {:<8}", b.label), b.help))
        .collect();
    entries.push((String::new(), ""));
    for (cmd, what) in COMMANDS {
        entries.push((format!("  {cmd:<30}"), what));
    }
    let room = body.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = if entries.len() <= room {
        entries
            .iter()
            .map(|(k, what)| {
                Line::from(vec![
                    Span::styled(k.clone(), t.accent),
                    Span::styled(what.to_string(), t.text),
                ])
            })
            .collect()
    } else {
        let half = entries.len().div_ceil(2);
        (0..half)
            .map(|i| {
                let mut spans = Vec::new();
                for (k, what) in [entries.get(i), entries.get(i + half)]
                    .into_iter()
                    .flatten()
                {
                    let what_w = COLUMN.saturating_sub(super::width(k));
                    spans.push(Span::styled(k.clone(), t.accent));
                    spans.push(Span::styled(
                        format!("{:<what_w$}", fit(what, what_w.saturating_sub(1))),
                        t.text,
                    ));
                }
                Line::from(spans)
            })
            .collect()
    };
    let percent = if entries.len() <= room { 70 } else { 95 };
    let area = centered(body, percent, lines.len() as u16 + 2);
    Clear.render(area, buf);
    Paragraph::new(lines)
        .block(
            Block::default()
                .borders(Borders::ALL)
                .border_style(t.accent)
                .title(Span::styled(
                    format!(" Keys · {} · Esc or ? closes ", state.view.title()),
                    t.accent,
                )),
        )
        .render(area, buf);
}
