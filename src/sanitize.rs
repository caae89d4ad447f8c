//! The one entry point through which text from outside (agents, servers, policy files, the
//! websocket) reaches a terminal.
//!
//! Control characters (C0, DEL, C1), and with them every escape sequence, are shown as
//! visible escapes (`\x1b`, `\u{202e}`) instead of being interpreted by the terminal. Bidi
//! controls are neutralised the same way, so text cannot reorder what is shown around it.
//! Line breaks and tabs are escaped too: callers lay out lines themselves. Invisible
//! characters are escaped as well (zero-width spaces and joiners, word joiners, the byte-order
//! mark, Unicode tag characters): they make two different names look identical on screen
//! (`send\u{200b}mail` is not the `sendmail` a rule names) and tags carry hidden text.
//!
//! Output meant for programs (`--json`) goes through [`json`] or [`json_pretty`]: the same
//! characters are written as `\u` escapes, so the JSON means the same and a terminal that
//! shows it interprets nothing.

use std::borrow::Cow;
use std::fmt::Write;

use serde::Serialize;

/// Whether `c` must not reach a terminal as itself.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200e}' | '\u{200f}'            // LRM, RLM
            | '\u{202a}'..='\u{202e}'          // LRE RLE PDF LRO RLO
            | '\u{2066}'..='\u{2069}'          // LRI RLI FSI PDI
            | '\u{061c}'                       // ALM
            | '\u{fff9}'..='\u{fffb}'          // interlinear annotations
            | '\u{200b}'..='\u{200d}'          // zero-width space, non-joiner, joiner
            | '\u{2028}' | '\u{2029}'          // line and paragraph separators
            | '\u{2060}'..='\u{2065}'          // word joiner, invisible operators
            | '\u{206a}'..='\u{206f}'          // deprecated format controls
            | '\u{feff}'                       // zero-width no-break space (BOM)
            | '\u{e0000}'..='\u{e007f}'        // tag characters
        )
}

/// `text` with everything a terminal would interpret replaced by a visible escape.
/// Borrows when nothing needs replacing (the common case).
pub(crate) fn terminal_text(text: &str) -> Cow<'_, str> {
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
pub(crate) fn terminal_string(text: String) -> String {
    match terminal_text(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(escaped) => escaped,
    }
}

/// [`terminal_string`] for the shared names of the wire's call events.
pub(crate) fn terminal_smol(text: smol_str::SmolStr) -> smol_str::SmolStr {
    match terminal_text(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(escaped) => escaped.into(),
    }
}

/// `value` as one line of JSON, with every character [`terminal_text`] would escape written
/// as a `\u` escape (serde_json already escapes C0 controls; this adds DEL, C1, bidi and
/// invisible characters). The JSON is equal to serde_json's.
pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string(value).map(escape_json)
}

/// [`json`], indented.
pub(crate) fn json_pretty<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string_pretty(value).map(escape_json)
}

/// Escapes what serde_json leaves raw. Outside strings serde_json writes only ASCII (and C0
/// only as indentation), so every character at or above DEL found here is inside a string,
/// where a `\u` escape (a surrogate pair above the BMP) means the same character.
fn escape_json(text: String) -> String {
    let unsafe_here = |c: char| (c as u32) >= 0x7f && is_unsafe(c);
    if !text.chars().any(unsafe_here) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_here(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
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
    fn invisible_characters_become_visible() {
        assert_eq!(terminal_text("send\u{200b}mail"), "send\\u{200b}mail");
        assert_eq!(terminal_text("a\u{feff}b\u{2028}"), "a\\u{feff}b\\u{2028}");
        assert_eq!(terminal_text("x\u{e0041}"), "x\\u{e0041}");
        assert!(matches!(terminal_text("naïve café 👍"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_escapes_what_a_terminal_would_interpret_and_means_the_same() {
        let hostile = serde_json::json!({
            "tool\u{9b}": "a\x1b]52;c;aGk=\x07b\u{85}c\u{202e}d\u{7f}e\u{200b}f\u{e0041}g",
            "plain": "日本 ✓",
            "list": ["\u{2066}x\u{2069}"]
        });
        for text in [json(&hostile).unwrap(), json_pretty(&hostile).unwrap()] {
            assert!(
                !text
                    .chars()
                    .any(|c| is_unsafe(c) && !matches!(c, '\n' | ' ')),
                "{text:?}"
            );
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back, hostile);
            assert!(text.contains("\\u001b]52"), "{text}");
            assert!(text.contains("\\u009b"), "{text}");
            assert!(text.contains("\\u202e"), "{text}");
            assert!(text.contains("\\udb40\\udc41"), "{text}");
            assert!(text.contains("日本 ✓"), "{text}");
        }
        assert_eq!(json("ok").unwrap(), "\"ok\"");
    }

    #[test]
    fn bidi_overrides_are_neutralised() {
        assert_eq!(terminal_text("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(terminal_text("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
    }
}
