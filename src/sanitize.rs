//! The one entry point through which text from outside (agents, servers, policy files, the
//! websocket) reaches a terminal.
//!
//! Control characters (C0, DEL, C1), and with them every escape sequence, are shown as
//! visible escapes (`\x1b`, `\u{202e}`) instead of being interpreted by the terminal. Bidi
//! controls are neutralised the same way, so text cannot reorder what is shown around it.
//! Line breaks and tabs are escaped too: callers lay out lines themselves.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as itself.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200e}' | '\u{200f}'            // LRM, RLM
            | '\u{202a}'..='\u{202e}'          // LRE RLE PDF LRO RLO
            | '\u{2066}'..='\u{2069}'          // LRI RLI FSI PDI
            | '\u{061c}'                       // ALM
            | '\u{fff9}'..='\u{fffb}'          // interlinear annotations
        )
}

/// `text` with everything a terminal would interpret replaced by a visible escape.
/// Borrows when nothing needs replacing (the common case).
pub fn terminal_text(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !is_unsafe(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// Like [`terminal_text`] for an owned string: hands `text` back untouched (no copy) when it
/// is already safe. The console sanitises every string once, when an event arrives.
pub fn terminal_string(text: String) -> String {
    match terminal_text(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(escaped) => escaped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(
            terminal_text("create_api_key ✓ 日本"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn escape_sequences_and_controls_become_visible() {
        assert_eq!(terminal_text("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(terminal_text("x\u{9b}y\u{7f}z\n"), "x\\x9by\\x7fz\\x0a");
    }

    #[test]
    fn owned_text_is_escaped_like_borrowed_text() {
        assert_eq!(terminal_string("ok".into()), "ok");
        assert_eq!(terminal_string("a\x07b".into()), "a\\x07b");
    }

    #[test]
    fn bidi_overrides_are_neutralised() {
        assert_eq!(terminal_text("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(terminal_text("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
    }
}
