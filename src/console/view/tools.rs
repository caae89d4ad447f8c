//! The Tools view (`5`): tools whose definition changed since it was pinned, and for the
//! selected one what changed.
//!
//! The list names the server and tool, whether the gateway quarantines it or only warns,
//! whether the risk class changed (`read → destructive`, in capitals in the detail: the one to
//! look at), and the description checks' flags. The detail is the word diff of the description
//! and the structural diff of the schemas and annotations, one JSON Pointer per line. Every
//! change reads without colour: removed words are `[-like this-]` and added ones
//! `{+like this+}` (struck through and underlined too, in colour and under `NO_COLOR`), and
//! structural lines start with `+`, `-` or `~`. The diff was computed when the change arrived
//! (`model::pins`); drawing only lays it out for the width at hand.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Widget};
use unicode_width::UnicodeWidthChar;

use super::cell;
use crate::console::model::pins::ReviewDiff;
use crate::console::model::{State, ToolReview};
use crate::console::theme::Theme;
use crate::pins::diff::WordKind;

const SERVER_W: u16 = 16;
const TOOL_W: u16 = 24;
const STATE_W: u16 = 12;
const RISK_W: u16 = 22;

pub(super) fn draw(buf: &mut Buffer, area: Rect, state: &State, t: &Theme) {
    let reviews = state.open_reviews();
    let title = match reviews.len() {
        0 => " Tools · no changed definitions ".to_string(),
        1 => " Tools · 1 changed definition to review ".to_string(),
        n => format!(" Tools · {n} changed definitions to review "),
    };
    if reviews.is_empty() {
        let block = block(t, title);
        let inner = block.inner(area);
        block.render(area, buf);
        cell(
            buf,
            inner.x,
            inner.y,
            inner.width,
            "No changed tool definitions reported. A tool whose definition changes after it was pinned shows here for review.",
            t.muted,
        );
        return;
    }
    let list_rows = (reviews.len() as u16 + 1).min(area.height / 3).max(2);
    let [top, bottom] =
        Layout::vertical([Constraint::Length(list_rows + 2), Constraint::Min(3)]).areas(area);
    let block = block(t, title);
    let inner = block.inner(top);
    block.render(top, buf);
    list(buf, inner, state, t, &reviews);
    if let Some((conn, r)) = reviews.get(state.tools_view.selected) {
        detail(buf, bottom, state, t, *conn, r);
    }
}

fn block(t: &Theme, title: String) -> Block<'static> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(t.border)
        .title(Span::styled(title, t.accent))
}

fn list(buf: &mut Buffer, area: Rect, state: &State, t: &Theme, reviews: &[(usize, &ToolReview)]) {
    if area.height == 0 {
        return;
    }
    let (x0, w) = (area.x, area.width);
    let mut x = x0;
    let mut col = |buf: &mut Buffer, y: u16, cw: u16, text: &str, style: Style| {
        let cw = cw.min((x0 + w).saturating_sub(x));
        cell(buf, x, y, cw, text, style);
        x = x.saturating_add(cw + 1);
    };
    let head = t.muted.add_modifier(Modifier::BOLD);
    col(buf, area.y, 2, "", head);
    col(buf, area.y, SERVER_W, "SERVER", head);
    col(buf, area.y, TOOL_W, "TOOL", head);
    col(buf, area.y, STATE_W, "STATE", head);
    col(buf, area.y, RISK_W, "RISK CLASS", head);
    col(buf, area.y, w, "FLAGS", head);
    let rows = area.height.saturating_sub(1) as usize;
    let selected = state
        .tools_view
        .selected
        .min(reviews.len().saturating_sub(1));
    let first = selected.saturating_sub(rows.saturating_sub(1));
    for (i, (_, r)) in reviews.iter().enumerate().skip(first).take(rows) {
        let y = area.y + 1 + (i - first) as u16;
        let chosen = i == selected;
        if chosen {
            buf.set_style(Rect::new(x0, y, w, 1), t.selection);
        }
        x = x0;
        let mut col = |buf: &mut Buffer, cw: u16, text: &str, style: Style| {
            let cw = cw.min((x0 + w).saturating_sub(x));
            cell(buf, x, y, cw, text, style);
            x = x.saturating_add(cw + 1);
        };
        col(buf, 2, if chosen { "▶" } else { " " }, t.accent);
        col(buf, SERVER_W, &r.server, t.text);
        col(buf, TOOL_W, &r.tool, t.text);
        let (state_word, state_style) = if r.quarantined {
            ("quarantined", t.deny)
        } else {
            ("warned", t.rate_limited)
        };
        col(buf, STATE_W, state_word, state_style);
        match r.risk {
            Some(risk) => col(
                buf,
                RISK_W,
                &format!("⚠ {} → {}", risk.before.as_str(), risk.after.as_str()),
                t.deny.add_modifier(Modifier::BOLD),
            ),
            None => col(buf, RISK_W, "same", t.muted),
        }
        let mut flags: Vec<&str> = Vec::new();
        for f in &r.flags {
            if !flags.contains(&f.word.as_str()) {
                flags.push(&f.word);
            }
        }
        let flags = if flags.is_empty() {
            "none".to_string()
        } else {
            flags.join(" ")
        };
        let style = if r.flags.is_empty() { t.muted } else { t.hold };
        col(buf, w, &flags, style);
    }
}

fn detail(buf: &mut Buffer, area: Rect, state: &State, t: &Theme, conn: usize, r: &ToolReview) {
    let short = |f: &Option<String>| {
        f.as_deref()
            .map_or("?".to_string(), |f| f.chars().take(8).collect())
    };
    let title = format!(
        " {} · {} · gateway {} · pinned {} → offered {} · J/K scroll ",
        r.tool,
        r.server,
        state.gateway_label(conn),
        short(&r.pinned_fingerprint),
        short(&r.offered_fingerprint)
    );
    let block = block(t, title);
    let inner = block.inner(area);
    block.render(area, buf);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    let lines = detail_lines(r, t, inner.width as usize);
    for (i, line) in lines
        .iter()
        .skip(state.tools_view.scroll as usize)
        .take(inner.height as usize)
        .enumerate()
    {
        buf.set_line(inner.x, inner.y + i as u16, line, inner.width);
    }
}

/// The detail of a change, laid out for `width` columns.
fn detail_lines(r: &ToolReview, t: &Theme, width: usize) -> Vec<Line<'static>> {
    let mut out: Vec<Line<'static>> = Vec::new();
    let heading = |text: &str| Line::from(Span::styled(text.to_string(), t.accent));
    let Some(d) = r.diff.as_deref() else {
        // The update makes the selected change's diff before any frame is drawn.
        return vec![Line::from(Span::styled("No diff yet.", t.muted))];
    };
    if let Some(why) = &d.unreadable {
        out.push(Line::from(Span::styled(format!("No diff: {why}"), t.error)));
    }
    if let Some(risk) = r.risk {
        out.push(Line::from(Span::styled(
            format!(
                "⚠ RISK CLASS CHANGED: {} → {} (as toolgate scan classifies it)",
                risk.before.as_str(),
                risk.after.as_str()
            ),
            t.deny.add_modifier(Modifier::BOLD | Modifier::REVERSED),
        )));
    }
    out.push(Line::from(Span::styled(
        if r.quarantined {
            "Quarantined: left out of tools/list and its calls refused until accepted (p)."
        } else {
            "Warned only (\"pins\": \"warn\"): calls still go through under the old rule."
        },
        if r.quarantined {
            t.deny
        } else {
            t.rate_limited
        },
    )));
    if !r.flags.is_empty() {
        out.push(heading("Description checks"));
        for f in &r.flags {
            let mut spans = vec![
                Span::styled(format!("  ! {}", f.word), t.hold),
                Span::styled(
                    if f.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", f.detail)
                    },
                    t.text,
                ),
            ];
            if !f.excerpt.is_empty() {
                spans.push(Span::styled(format!(": “{}”", f.excerpt), t.muted));
            }
            out.push(Line::from(spans));
        }
    }
    if !d.description.is_empty() {
        out.push(heading("Description ([-removed-] {+added+})"));
        out.extend(word_lines(d, t, width.saturating_sub(2)));
    }
    if !d.parts.is_empty() {
        out.push(heading(
            "Schemas and annotations (JSON Pointer: before → after)",
        ));
        for p in &d.parts {
            let (mark, style) = match (&p.before, &p.after) {
                (None, _) => ("+", t.allow),
                (_, None) => ("-", t.deny),
                _ => ("~", t.hold),
            };
            let mut spans = vec![
                Span::styled(format!("  {mark} "), style),
                Span::styled(format!("{}: ", p.pointer), t.text),
            ];
            match (&p.before, &p.after) {
                (Some(b), Some(a)) => {
                    spans.push(Span::styled(b.clone(), removed(t)));
                    spans.push(Span::styled(" → ", t.muted));
                    spans.push(Span::styled(a.clone(), added(t)));
                }
                (Some(b), None) => {
                    spans.push(Span::styled(b.clone(), removed(t)));
                    spans.push(Span::styled(" → (removed)", t.muted));
                }
                (None, Some(a)) => {
                    spans.push(Span::styled("(absent) → ", t.muted));
                    spans.push(Span::styled(a.clone(), added(t)));
                }
                (None, None) => {}
            }
            out.push(Line::from(spans));
        }
        if d.truncated {
            out.push(Line::from(Span::styled(
                "  … more changes than are listed",
                t.muted,
            )));
        }
    }
    if d.description.is_empty() && d.parts.is_empty() && d.unreadable.is_none() {
        out.push(Line::from(Span::styled(
            "The definitions differ only in what the diff does not show (key order, numbers written differently).",
            t.muted,
        )));
    }
    out
}

fn removed(t: &Theme) -> Style {
    t.deny.add_modifier(Modifier::CROSSED_OUT)
}

fn added(t: &Theme) -> Style {
    t.allow.add_modifier(Modifier::UNDERLINED)
}

/// The description's word diff wrapped to `width` columns, two spaces in; removed runs as
/// `[-…-]`, added ones as `{+…+}`, line breaks kept.
fn word_lines(d: &ReviewDiff, t: &Theme, width: usize) -> Vec<Line<'static>> {
    let width = width.max(10);
    let mut lines: Vec<Line<'static>> = Vec::new();
    let mut current: Vec<Span<'static>> = Vec::new();
    let mut used = 0usize;
    let mut flush = |current: &mut Vec<Span<'static>>, used: &mut usize| {
        let mut spans = vec![Span::raw("  ")];
        spans.append(current);
        lines.push(Line::from(spans));
        *used = 0;
    };
    for run in &d.description {
        let (open, close, style) = match run.kind {
            WordKind::Same => ("", "", t.text),
            WordKind::Removed => ("[-", "-]", removed(t)),
            WordKind::Added => ("{+", "+}", added(t)),
        };
        // Spaces and line breaks around a change stay outside its markers.
        let inner = run.text.trim_matches(char::is_whitespace);
        let (lead, trail) = match run.text.find(inner) {
            Some(at) if !inner.is_empty() => (&run.text[..at], &run.text[at + inner.len()..]),
            _ => (run.text.as_str(), ""),
        };
        let mut segments = vec![(lead.to_string(), t.text)];
        if !inner.is_empty() {
            segments.push((format!("{open}{inner}{close}"), style));
        }
        segments.push((trail.to_string(), t.text));
        for (text, style) in segments {
            let mut piece = String::new();
            for word in words(&text) {
                if word == "\n" {
                    if !piece.is_empty() {
                        current.push(Span::styled(std::mem::take(&mut piece), style));
                    }
                    flush(&mut current, &mut used);
                    continue;
                }
                let ww = super::width(word);
                // A word that does not fit goes to the next line; one longer than a line is cut
                // character by character.
                if used > 0 && used + ww > width && ww <= width {
                    if !piece.is_empty() {
                        current.push(Span::styled(std::mem::take(&mut piece), style));
                    }
                    flush(&mut current, &mut used);
                    if word.trim().is_empty() {
                        continue;
                    }
                }
                for c in word.chars() {
                    let cw = c.width().unwrap_or(0);
                    if used + cw > width {
                        if !piece.is_empty() {
                            current.push(Span::styled(std::mem::take(&mut piece), style));
                        }
                        flush(&mut current, &mut used);
                    }
                    piece.push(c);
                    used += cw;
                }
            }
            if !piece.is_empty() {
                current.push(Span::styled(piece, style));
            }
        }
    }
    if !current.is_empty() {
        flush(&mut current, &mut used);
    }
    lines
}

/// `text` as runs of non-space characters, runs of spaces, and each `\n` on its own.
fn words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let end = if first == '\n' {
            1
        } else {
            let space = first.is_whitespace();
            rest.char_indices()
                .find(|(_, c)| *c == '\n' || c.is_whitespace() != space)
                .map_or(rest.len(), |(i, _)| i)
        };
        let (word, tail) = rest.split_at(end);
        rest = tail;
        Some(word)
    })
}
