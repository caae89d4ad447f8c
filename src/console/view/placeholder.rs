//! Views 3 (Policy) and 4 (Limits) until policy authoring is built: they say so, and show
//! what the console already knows.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget, Wrap};

use crate::console::app::{State, View};

pub fn draw(buf: &mut Buffer, area: Rect, state: &State) {
    let t = &state.theme;
    let mut lines = vec![
        Line::from(Span::styled(
            match state.view {
                View::Policy => {
                    "The Policy view is not built yet: editing rules from the console comes with policy authoring."
                }
                _ => "The Limits view is not built yet: it comes with policy authoring.",
            },
            t.text,
        )),
        Line::from(Span::styled(
            "Meanwhile edit the policy file; every gateway reloads it and reports here.",
            t.muted,
        )),
        Line::from(""),
    ];
    for g in &state.gateways {
        let Some(info) = &g.info else { continue };
        let text = match state.view {
            View::Policy => format!(
                "{}  {}  policy {}",
                g.label(),
                info.policy,
                g.policy_hash
                    .as_deref()
                    .map(crate::console::app::short_hash)
                    .unwrap_or("none")
            ),
            _ => format!("{}  {} counters in use", g.label(), g.counters.len()),
        };
        lines.push(Line::from(Span::styled(text, t.muted)));
        if state.view == View::Policy
            && let Some(errors) = &g.policy_error
        {
            for e in errors {
                lines.push(Line::from(Span::styled(format!("  {e}"), t.error)));
            }
        }
    }
    if let (View::Policy, Some(p)) = (state.view, &state.policy_path) {
        lines.push(Line::from(Span::styled(format!("--policy {p}"), t.muted)));
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .block(
            Block::default()
                .borders(Borders::ALL)
                .border_style(t.border)
                .title(Span::styled(format!(" {} ", state.view.title()), t.accent)),
        )
        .render(area, buf);
}
