//! Renders a ratatui [`Buffer`] to SVG, cell for cell, with its colours and modifiers, so the
//! README's screenshots are made from the real console's frames (`cargo run --example screenshots`)
//! rather than drawn by hand. `scripts/screenshots` turns the SVGs into PNGs.

use std::fmt::Write;

use ratatui::buffer::Buffer;
use ratatui::style::{Color, Modifier};

/// Cell size in SVG user units; DejaVu Sans Mono at 14px advances 8.43px.
const CELL_W: f64 = 8.43;
const CELL_H: f64 = 18.0;
const FONT_SIZE: f64 = 14.0;
/// What `Color::Reset` means: the terminal's own colours (a dark terminal).
const DEFAULT_FG: &str = "#d8dee9";
const DEFAULT_BG: &str = "#1b1f27";

/// The xterm colours for the 16 named colours, in ANSI order.
const ANSI: [&str; 16] = [
    "#1b1f27", "#e06c75", "#98c379", "#e5c07b", "#61afef", "#c678dd", "#56b6c2", "#abb2bf",
    "#5c6370", "#ff7b86", "#b5e890", "#ffd580", "#7cc4ff", "#de9bf0", "#7fd6e0", "#ffffff",
];

fn color(c: Color, default: &'static str) -> String {
    let named = |i: usize| ANSI[i].to_owned();
    match c {
        Color::Reset => default.to_owned(),
        Color::Black => named(0),
        Color::Red => named(1),
        Color::Green => named(2),
        Color::Yellow => named(3),
        Color::Blue => named(4),
        Color::Magenta => named(5),
        Color::Cyan => named(6),
        Color::Gray => named(7),
        Color::DarkGray => named(8),
        Color::LightRed => named(9),
        Color::LightGreen => named(10),
        Color::LightYellow => named(11),
        Color::LightBlue => named(12),
        Color::LightMagenta => named(13),
        Color::LightCyan => named(14),
        Color::White => named(15),
        Color::Rgb(r, g, b) => format!("#{r:02x}{g:02x}{b:02x}"),
        Color::Indexed(i) => indexed(i),
    }
}

/// The xterm 256-colour palette.
fn indexed(i: u8) -> String {
    match i {
        0..=15 => ANSI[i as usize].to_owned(),
        16..=231 => {
            let i = i - 16;
            let level = |v: u8| if v == 0 { 0 } else { 55 + 40 * v };
            format!(
                "#{:02x}{:02x}{:02x}",
                level(i / 36),
                level((i / 6) % 6),
                level(i % 6)
            )
        }
        232..=255 => {
            let v = 8 + 10 * (i - 232);
            format!("#{v:02x}{v:02x}{v:02x}")
        }
    }
}

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

/// The whole buffer as a standalone SVG document.
pub fn to_svg(buffer: &Buffer) -> String {
    let area = buffer.area;
    let (w, h) = (area.width as f64 * CELL_W, area.height as f64 * CELL_H);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.2} {h:.2}">"#
    );
    let _ = write!(
        svg,
        r#"<style>text{{font-family:'DejaVu Sans Mono','Symbola',monospace;font-size:{FONT_SIZE}px;white-space:pre}}</style><rect width="100%" height="100%" fill="{DEFAULT_BG}"/>"#
    );
    for y in 0..area.height {
        let top = y as f64 * CELL_H;
        // Backgrounds: one rect per run of equal colour.
        let mut x = 0;
        while x < area.width {
            let cell = &buffer[(area.x + x, area.y + y)];
            let (fg, bg) = swapped(cell.fg, cell.bg, cell.modifier);
            let start = x;
            while x < area.width {
                let c = &buffer[(area.x + x, area.y + y)];
                if swapped(c.fg, c.bg, c.modifier) != (fg, bg) {
                    break;
                }
                x += 1;
            }
            if bg != Color::Reset {
                let _ = write!(
                    svg,
                    r#"<rect x="{:.2}" y="{top:.2}" width="{:.2}" height="{CELL_H}" fill="{}"/>"#,
                    start as f64 * CELL_W,
                    (x - start) as f64 * CELL_W,
                    color(bg, DEFAULT_BG)
                );
            }
        }
        // Text: one element per glyph, placed on its own cell, so fallback fonts and wide
        // characters cannot shift the columns after them.
        let baseline = top + CELL_H * 0.75;
        for x in 0..area.width {
            let cell = &buffer[(area.x + x, area.y + y)];
            let symbol = cell.symbol();
            if symbol.trim().is_empty() {
                continue;
            }
            let (fg, _) = swapped(cell.fg, cell.bg, cell.modifier);
            let mut text = String::new();
            escape(symbol, &mut text);
            let _ = write!(
                svg,
                r#"<text x="{:.2}" y="{baseline:.2}" fill="{}"{}>{text}</text>"#,
                x as f64 * CELL_W,
                color(fg, DEFAULT_FG),
                attributes(cell.modifier)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// SVG attributes for the modifiers a screenshot can show.
fn attributes(modifier: Modifier) -> String {
    let mut attrs = String::new();
    if modifier.contains(Modifier::BOLD) {
        attrs.push_str(r#" font-weight="bold""#);
    }
    if modifier.contains(Modifier::ITALIC) {
        attrs.push_str(r#" font-style="italic""#);
    }
    if modifier.contains(Modifier::UNDERLINED) {
        attrs.push_str(r#" text-decoration="underline""#);
    }
    if modifier.contains(Modifier::DIM) {
        attrs.push_str(r#" opacity="0.6""#);
    }
    attrs
}

/// Foreground and background as shown, with `REVERSED` applied.
fn swapped(fg: Color, bg: Color, modifier: Modifier) -> (Color, Color) {
    if modifier.contains(Modifier::REVERSED) {
        let fg = if fg == Color::Reset {
            Color::Rgb(0xd8, 0xde, 0xe9)
        } else {
            fg
        };
        let bg = if bg == Color::Reset {
            Color::Rgb(0x1b, 0x1f, 0x27)
        } else {
            bg
        };
        (bg, fg)
    } else {
        (fg, bg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::layout::Rect;
    use ratatui::style::Style;

    #[test]
    fn cells_become_positioned_glyphs_with_their_colours() {
        let mut buf = Buffer::empty(Rect::new(0, 0, 6, 1));
        buf.set_string(
            0,
            0,
            "ab",
            Style::default().fg(Color::Green).bg(Color::Blue),
        );
        buf.set_string(3, 0, "<", Style::default().add_modifier(Modifier::BOLD));
        let svg = to_svg(&buf);
        assert!(
            svg.contains(r##"<rect x="0.00" y="0.00" width="16.86" height="18" fill="#61afef"/>"##)
        );
        assert!(svg.contains(r##"<text x="0.00" y="13.50" fill="#98c379">a</text>"##));
        assert!(svg.contains(r##"<text x="8.43" y="13.50" fill="#98c379">b</text>"##));
        assert!(svg.contains(
            r##"<text x="25.29" y="13.50" fill="#d8dee9" font-weight="bold">&lt;</text>"##
        ));
    }

    #[test]
    fn the_256_colour_cube_and_greys_follow_xterm() {
        assert_eq!(indexed(196), "#ff0000");
        assert_eq!(indexed(232), "#080808");
        assert_eq!(indexed(16), "#000000");
    }
}
