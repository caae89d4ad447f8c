//! Tool-name globs: `*` is any run of characters (also none), `?` is exactly one character.
//!
//! There is no escaping: a `*` or `?` in a pattern is always a wildcard, so a tool whose name
//! contains one can be matched only by a pattern. Matching is the classic two-cursor
//! algorithm that backtracks only to the most recent `*`: O(pattern × name) in the worst
//! case, never exponential, and no regex engine.

/// A compiled glob.
#[derive(Debug, Clone)]
pub(super) struct Glob {
    pattern: String,
    literal_chars: usize,
}

impl Glob {
    pub(super) fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.to_string(),
            literal_chars: pattern.chars().filter(|c| !is_wildcard(*c)).count(),
        }
    }

    /// Whether `pattern` has a wildcard, i.e. is a glob rather than an exact name.
    pub(super) fn is_glob(pattern: &str) -> bool {
        pattern.contains(['*', '?'])
    }

    /// How many non-wildcard characters the pattern has: more is more specific.
    pub(super) fn literal_chars(&self) -> usize {
        self.literal_chars
    }

    pub(super) fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the whole of `name` matches the pattern.
    pub(super) fn matches(&self, name: &str) -> bool {
        let p = self.pattern.as_bytes();
        let t = name.as_bytes();
        // Cursors stay on character boundaries: literals are compared byte by byte (UTF-8
        // sequences match only whole), `?` and `*` advance by whole characters.
        let (mut pi, mut ti) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(b'*') => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                Some(b'?') => {
                    pi += 1;
                    ti += char_len(t[ti]);
                    continue;
                }
                Some(&c) if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((sp, st)) => {
                    // Let the last `*` swallow one more character and retry after it.
                    let next = st + char_len(t[st]);
                    star = Some((sp, next));
                    pi = sp + 1;
                    ti = next;
                }
                None => return false,
            }
        }
        p[pi.min(p.len())..].iter().all(|&c| c == b'*')
    }
}

fn is_wildcard(c: char) -> bool {
    c == '*' || c == '?'
}

/// Length of the UTF-8 sequence that starts with `lead`.
fn char_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xff => 4,
        // A continuation byte never starts a character on our cursors; step one to progress.
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).matches(t)
    }

    #[test]
    fn star_matches_any_run_including_none() {
        assert!(m("send_*", "send_"));
        assert!(m("send_*", "send_message"));
        assert!(m("*", ""));
        assert!(m("*_key", "create_api_key"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(!m("send_*", "resend_x"));
    }

    #[test]
    fn question_mark_matches_exactly_one_character() {
        assert!(m("v?", "v1"));
        assert!(!m("v?", "v"));
        assert!(!m("v?", "v12"));
        assert!(m("?é?", "aéb"));
        assert!(m("??", "éü"));
        assert!(!m("?", "éü"));
    }

    #[test]
    fn literals_must_match_whole_name() {
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
        assert!(!m("exact", "exac"));
    }

    #[test]
    fn counts_literal_characters() {
        assert_eq!(Glob::new("send_*").literal_chars(), 5);
        assert_eq!(Glob::new("*_é?").literal_chars(), 2);
    }

    #[test]
    fn pathological_patterns_finish() {
        let p = "*a".repeat(50) + "b";
        let t = "a".repeat(5000);
        assert!(!m(&p, &t));
    }
}
