//! The view: draws a [`State`] on a ratatui frame.
//!
//! This is the top layer: it reads the model (and the input layer's bindings, for help and
//! the hint line) and writes nothing in it. What only drawing needs lives in the
//! [`ViewState`] the event loop owns: the theme, and where the Live list's window was drawn.
//! So a key does the same whether or not a frame was drawn since the last one.
//!
//! The screen is the status bar (one line), the current view, and the bottom line (prompt,
//! message or key hints); help and confirmations are drawn over it. Views draw only the rows
//! that fit, so a frame costs the same with 100 calls remembered as with 100,000. Every string
//! drawn here was sanitised when it entered the state; cells are written at fixed columns so
//! wide and combining characters cannot shift the columns after them.

mod detail;
mod diff;
mod editor;
mod help;
mod holds;
mod learn;
mod limits;
mod live;
mod policy;
mod status;
mod tools;

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use unicode_width::UnicodeWidthChar;

use super::model::{DecisionStyle, Layout as Screen, Overlay, State, View};
use super::theme::Theme;

/// What drawing keeps between frames, owned by the event loop beside the [`State`].
#[derive(Debug)]
pub struct ViewState {
    /// The colours; `:theme` replaces it (the event loop loads it off the key loop).
    pub theme: Theme,
    live: live::LiveScroll,
}

impl ViewState {
    pub fn new(theme: Theme) -> ViewState {
        ViewState {
            theme,
            live: live::LiveScroll::default(),
        }
    }
}

/// Draws the whole console.
pub fn draw(frame: &mut Frame, state: &State, view: &mut ViewState) {
    let t = &view.theme;
    let area = frame.area();
    let screen = Screen {
        width: area.width,
        height: area.height,
    };
    if screen.body_rows() == 0 {
        // No room for a view: the status bar alone, so the held count still shows.
        let top = Rect {
            height: area.height.min(1),
            ..area
        };
        status::status_bar(frame.buffer_mut(), top, state, t);
        return;
    }
    let [top, body, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let buf = frame.buffer_mut();
    status::status_bar(buf, top, state, t);
    match state.view {
        View::Live => live::draw(buf, body, state, t, &mut view.live),
        View::Holds => holds::draw(buf, body, state, t),
        View::Policy => policy::draw(buf, body, state, t),
        View::Limits => limits::draw(buf, body, state, t),
        View::Tools => tools::draw(buf, body, state, t),
    }
    status::bottom_line(buf, bottom, state, t);
    // The layers over the view, bottom first: each draws itself over what is below it.
    let mut editor_cursor = None;
    for overlay in state.overlays.iter() {
        match overlay {
            Overlay::Help => help::draw(buf, body, state, t),
            Overlay::Learn(l) => learn::draw(buf, body, state, t, l),
            Overlay::Editor(e) => {
                let learned = state.overlays.learn().is_some();
                editor_cursor = editor::draw(buf, body, t, e, learned);
            }
            Overlay::Review(r) => diff::draw(buf, body, state, t, r),
            // A prompt is the bottom line, drawn with it.
            Overlay::Prompt(_) => {}
        }
    }
    if let Some((x, y)) = status::cursor(bottom, state).or(editor_cursor) {
        frame.set_cursor_position((x, y));
    }
}

/// The style of a decision in this theme.
pub(crate) fn decision_style(theme: &Theme, d: DecisionStyle) -> Style {
    match d {
        DecisionStyle::Allow => theme.allow,
        DecisionStyle::Deny => theme.deny,
        DecisionStyle::RateLimited => theme.rate_limited,
        DecisionStyle::Hold => theme.hold,
    }
}

/// Display width of `text` as the buffer counts it (controls never reach here).
pub(crate) fn width(text: &str) -> usize {
    text.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// `text` cut to `max` columns, with `…` when cut.
pub(crate) fn fit(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if width(text) <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    if max == 0 {
        return std::borrow::Cow::Borrowed("");
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > max - 1 {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    std::borrow::Cow::Owned(out)
}

/// Writes `text` in the cell starting at column `x` of row `y`, `w` columns wide, patching
/// `style` over what is there (so a selected row keeps its background).
pub(crate) fn cell(buf: &mut Buffer, x: u16, y: u16, w: u16, text: &str, style: Style) {
    if w == 0 {
        return;
    }
    buf.set_stringn(x, y, fit(text, w as usize), w as usize, style);
}

/// Like [`cell`], right-aligned.
pub(crate) fn cell_right(buf: &mut Buffer, x: u16, y: u16, w: u16, text: &str, style: Style) {
    let text = fit(text, w as usize);
    let pad = (w as usize).saturating_sub(width(&text)) as u16;
    buf.set_stringn(x + pad, y, text, (w - pad) as usize, style);
}

/// A rectangle `percent_x` by up to `height` rows, centred in `area`.
pub(crate) fn centered(area: Rect, percent_x: u16, height: u16) -> Rect {
    let w = (area.width as u32 * percent_x as u32 / 100) as u16;
    let w = w.max(20).min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_cuts_by_display_width_not_bytes() {
        assert_eq!(fit("create_api_key", 8), "create_…");
        assert_eq!(fit("日本語テキスト", 5), "日本…");
        assert_eq!(
            fit("e\u{301}e\u{301}e\u{301}", 3),
            "e\u{301}e\u{301}e\u{301}"
        );
        assert_eq!(fit("short", 10), "short");
        assert_eq!(fit("x", 0), "");
    }
}
