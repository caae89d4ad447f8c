//! The rule editor form, drawn over the Policy view: one line per field group, the focused
//! field highlighted, the problems `toolgate check` would report (or "valid") at the
//! bottom, and the paths the tool's `inputSchema` offers under a condition being edited.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Clear, Widget};
use tui_input::Input;

use super::cell;
use crate::console::model::editor::{ACTIONS, Field, KINDS, OPS, RuleEditor, SCOPES};
use crate::console::theme::Theme;
use crate::sanitize::{terminal_string, terminal_text};

/// One piece of a line: text, and the field it shows (if any).
struct Piece {
    text: String,
    field: Option<Field>,
    style: Style,
    /// For a text field: its input, for the cursor.
    cursor: Option<usize>,
}

fn label(text: &str, style: Style) -> Piece {
    Piece {
        text: text.to_owned(),
        field: None,
        style,
        cursor: None,
    }
}

fn text_field(input: &Input, field: Field, width: usize, style: Style) -> Piece {
    let value = terminal_text(input.value()).into_owned();
    let shown = format!("[{value:<width$}]");
    Piece {
        text: shown,
        field: Some(field),
        style,
        cursor: Some(1 + input.visual_cursor()),
    }
}

fn choice(value: &str, field: Field, style: Style) -> Piece {
    Piece {
        text: format!("‹ {value} ›"),
        field: Some(field),
        style,
        cursor: None,
    }
}

/// Draws the editor over `area`; returns where the terminal cursor goes.
/// `learned`: opened on a proposal of the learned-policy review, where saving accepts it.
pub(super) fn draw(
    buf: &mut Buffer,
    area: Rect,
    t: &Theme,
    e: &RuleEditor,
    learned: bool,
) -> Option<(u16, u16)> {
    Clear.render(area, buf);
    let save = if learned {
        "C-s accept as edited"
    } else {
        "C-s save+write"
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(t.accent)
        .title(Span::styled(
            format!(
                " Rule {} · {save} · Esc close · Tab next · ←→ choose ",
                terminal_string(e.key.clone())
            ),
            t.accent,
        ));
    let inner = block.inner(area);
    block.render(area, buf);
    if inner.height == 0 || inner.width == 0 {
        return None;
    }
    let focused = e.focused();
    let mut lines: Vec<Vec<Piece>> = vec![
        vec![
            label("action            ", t.muted),
            choice(ACTIONS[e.action], Field::Action, t.text),
        ],
        vec![
            label("reason            ", t.muted),
            text_field(&e.reason, Field::Reason, 40, t.text),
        ],
        vec![
            label("approval timeout  ", t.muted),
            text_field(&e.timeout, Field::Timeout, 8, t.text),
            label("  (empty: the policy's; e.g. 10m)", t.muted),
        ],
        vec![label("limits", t.accent)],
    ];
    for (i, l) in e.limits.iter().enumerate() {
        lines.push(vec![
            label(&format!("  {} counter ", i + 1), t.muted),
            text_field(&l.counter, Field::LimitCounter(i), 18, t.text),
            label(" window ", t.muted),
            text_field(&l.window, Field::LimitWindow(i), 8, t.text),
            label(" max ", t.muted),
            text_field(&l.max, Field::LimitMax(i), 6, t.text),
            label(" scope ", t.muted),
            choice(SCOPES[l.scope], Field::LimitScope(i), t.text),
        ]);
    }
    lines.push(vec![Piece {
        text: "  + add a limit".into(),
        field: Some(Field::AddLimit),
        style: t.muted,
        cursor: None,
    }]);
    lines.push(vec![label("conditions", t.accent)]);
    for (i, c) in e.conditions.iter().enumerate() {
        lines.push(vec![
            label(&format!("  {} ", i + 1), t.muted),
            choice(KINDS[c.kind], Field::CondKind(i), t.text),
            label(" path ", t.muted),
            text_field(&c.path, Field::CondPath(i), 20, t.text),
            label(" op ", t.muted),
            choice(OPS[c.op], Field::CondOp(i), t.text),
            label(" value ", t.muted),
            text_field(&c.value, Field::CondValue(i), 16, t.text),
        ]);
        if focused == Field::CondPath(i) {
            let offered = if e.paths.is_empty() {
                "the tool's inputSchema offers no properties".to_string()
            } else {
                format!("C-p: {}", terminal_string(e.paths.join("  ")))
            };
            lines.push(vec![label(&format!("      {offered}"), t.muted)]);
        }
    }
    lines.push(vec![Piece {
        text: "  + add a condition".into(),
        field: Some(Field::AddCondition),
        style: t.muted,
        cursor: None,
    }]);
    lines.push(Vec::new());
    if e.problems.is_empty() {
        lines.push(vec![label(
            if learned {
                "✓ valid: C-s accepts the proposal with this rule"
            } else {
                "✓ valid: C-s puts it in the draft and shows the diff"
            },
            t.ok,
        )]);
    } else {
        for p in &e.problems {
            lines.push(vec![label(&terminal_string(p.clone()), t.error)]);
        }
    }

    // Keep the focused line in view.
    let focus_line = lines
        .iter()
        .position(|l| l.iter().any(|p| p.field == Some(focused)))
        .unwrap_or(0);
    let room = inner.height as usize;
    let top = focus_line.saturating_sub(room.saturating_sub(3));
    let mut cursor = None;
    for (row, pieces) in lines.iter().skip(top).take(room).enumerate() {
        let y = inner.y + row as u16;
        let mut x = inner.x;
        for p in pieces {
            let w = inner.right().saturating_sub(x);
            let here = p.field == Some(focused);
            let style = if here {
                t.selection.patch(p.style)
            } else {
                p.style
            };
            cell(buf, x, y, w, &p.text, style);
            if here && let Some(c) = p.cursor {
                cursor = Some(((x as usize + c).min(inner.right() as usize - 1) as u16, y));
            }
            x = x.saturating_add(super::width(&p.text) as u16);
        }
    }
    cursor
}
