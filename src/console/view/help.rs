//! `?`: the keys of the current view, from the key table itself.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget};

use super::centered;
use crate::console::app::{COMMANDS, State};
use crate::console::keys;

pub fn draw(buf: &mut Buffer, body: Rect, state: &State) {
    let t = &state.theme;
    let mut lines: Vec<Line> = keys::active_bindings(state)
        .map(|b| {
            Line::from(vec![
                Span::styled(format!("  {:<8}", b.label), t.accent),
                Span::styled(b.help, t.text),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    for (cmd, what) in COMMANDS {
        lines.push(Line::from(vec![
            Span::styled(format!("  {cmd:<30}"), t.accent),
            Span::styled(*what, t.text),
        ]));
    }
    let area = centered(body, 70, lines.len() as u16 + 2);
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
