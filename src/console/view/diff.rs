//! The write review, drawn over the view when `:w` asks `y`/`n`: what the draft would have
//! decided for the recent calls (the what-if, side by side with what was decided), then the
//! diff of the file.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Widget};

use super::cell;
use crate::console::model::whatif::verdict_words;
use crate::console::model::{Review, State};
use crate::console::theme::Theme;
use crate::policy::Verdict;
use crate::sanitize::terminal_string;

/// How many changed calls are listed.
const LISTED: usize = 8;

fn mark(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "✓",
        Verdict::Deny => "✗",
        Verdict::RateLimited => "⏱",
        Verdict::Hold => "⏸",
    }
}

pub(super) fn draw(buf: &mut Buffer, area: Rect, state: &State, t: &Theme, review: &Review) {
    let Some(draft) = &state.authoring.draft else {
        return;
    };
    let style_of = |v: Verdict| match v {
        Verdict::Allow => t.allow,
        Verdict::Deny => t.deny,
        Verdict::RateLimited => t.rate_limited,
        Verdict::Hold => t.hold,
    };
    Clear.render(area, buf);
    let title = format!(
        " Write {}{}? y writes · n keeps the draft · j/k scroll ",
        terminal_string(draft.path.clone()),
        if review.force {
            " (over the file changed on disk)"
        } else {
            ""
        }
    );
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(t.accent)
        .title(Span::styled(title, t.accent));
    let inner = block.inner(area);
    block.render(area, buf);
    if inner.height == 0 || inner.width == 0 {
        return;
    }
    let (x0, w) = (inner.x, inner.width);
    let mut y = inner.y;
    let bottom = inner.bottom();

    let w_if = &review.whatif;
    let head = format!(
        "What-if: the draft re-decides the {} recent call{} the console holds",
        w_if.replayed,
        if w_if.replayed == 1 { "" } else { "s" }
    );
    cell(buf, x0, y, w, &head, t.text);
    y += 1;
    if w_if.changed.is_empty() {
        if y < bottom {
            cell(
                buf,
                x0,
                y,
                w,
                "  none would be decided differently",
                t.muted,
            );
            y += 1;
        }
    } else {
        for s in w_if.summary() {
            if y >= bottom {
                break;
            }
            cell(buf, x0, y, w, &format!("  {s}"), t.hold);
            y += 1;
        }
        for c in w_if.changed.iter().rev().take(LISTED) {
            if y >= bottom {
                break;
            }
            let time =
                c.ts.with_timezone(&state.tz)
                    .format("%H:%M:%S%.3f")
                    .to_string();
            let spans = Line::from(vec![
                Span::styled(format!("  {time}  "), t.muted),
                Span::styled(
                    format!("{:<12} {:<20} ", fit(&c.grant, 12), fit(&c.tool, 20)),
                    t.text,
                ),
                Span::styled("decided ", t.muted),
                Span::styled(
                    format!("{} {:<13}", mark(c.decided), verdict_words(c.decided)),
                    style_of(c.decided),
                ),
                Span::styled("│ file ", t.muted),
                Span::styled(
                    format!("{} {:<13}", mark(c.before), verdict_words(c.before)),
                    style_of(c.before),
                ),
                Span::styled(" → draft ", t.muted),
                Span::styled(
                    format!("{} {:<13}", mark(c.after), verdict_words(c.after)),
                    style_of(c.after),
                ),
                Span::styled(format!(" {}", terminal_string(c.rule.clone())), t.muted),
            ]);
            buf.set_line(x0, y, &spans, w);
            y += 1;
        }
        if w_if.changed.len() > LISTED && y < bottom {
            cell(
                buf,
                x0,
                y,
                w,
                &format!("  … and {} more", w_if.changed.len() - LISTED),
                t.muted,
            );
            y += 1;
        }
    }
    if y >= bottom {
        return;
    }
    y += 1;
    for l in review.diff.iter().skip(review.scroll as usize) {
        if y >= bottom {
            break;
        }
        let style = if l.starts_with("+++") || l.starts_with("---") {
            t.muted
        } else if l.starts_with('+') {
            t.allow
        } else if l.starts_with('-') {
            t.deny
        } else if l.starts_with("@@") {
            t.accent
        } else {
            Style::default().patch(t.text)
        };
        cell(buf, x0, y, w, l, style);
        y += 1;
    }
}

fn fit(text: &str, max: usize) -> String {
    terminal_string(super::fit(text, max).into_owned())
}
