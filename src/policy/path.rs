//! File paths for the `under` op: lexical normalisation and "is this path inside that one".
//!
//! Everything here reads the text of a path and nothing else: no filesystem access, no
//! symlinks resolved, no current directory. `.` segments, repeated slashes and a trailing
//! slash are dropped, and `..` removes the segment before it. Containment is decided segment
//! by segment, so `/home/me/notes2` is not inside `/home/me/notes`.
//!
//! A path is refused (the condition is *unknown*, which fails closed) when its text does not
//! say for certain where it leads:
//! - it is not absolute (relative paths depend on the server's working directory; `~` on
//!   its shell),
//! - a `..` climbs above `/` (POSIX reads `/..` as `/`, other code raises an error or joins
//!   it to a base: the servers disagree, so the policy does not guess),
//! - it holds a NUL byte (C code stops reading there; the rest is invisible to the server),
//! - it holds a backslash (a separator on Windows, an ordinary character on POSIX),
//! - it holds a percent-encoded dot, slash, backslash or NUL (`%2e`, `%2f`, `%5c`, `%00`):
//!   no URL-decoding happens here, and a server that decodes once would see `..` or `/`
//!   where this reading sees a name. Other escapes (`%20`) are compared as written.
//!
//! Comparison is byte for byte: case-insensitive filesystems (macOS, Windows) and Unicode
//! normalisation are not folded, which matters for `deny_if` (an allow-list with `require`
//! fails closed instead).

/// Why a path's text cannot be placed. Shown as "`args.path` is {description}".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathProblem {
    Relative,
    ClimbsAboveRoot,
    Nul,
    Backslash,
    PercentEncoded,
}

impl PathProblem {
    /// What the path is, after "is": `a relative path`.
    pub(crate) fn description(self) -> &'static str {
        match self {
            PathProblem::Relative => "a relative path",
            PathProblem::ClimbsAboveRoot => "a path whose .. climbs above /",
            PathProblem::Nul => "a path holding a NUL byte",
            PathProblem::Backslash => "a path holding a backslash",
            PathProblem::PercentEncoded => {
                "a path holding a percent-encoded dot, slash, backslash or NUL"
            }
        }
    }
}

/// An absolute directory, normalised once when the policy loads: the value of `under`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Root {
    segments: Vec<String>,
}

impl Root {
    /// Normalises `text`; refuses what [`Root::contains`] would refuse in an argument.
    pub(crate) fn parse(text: &str) -> Result<Root, PathProblem> {
        let mut segments = Vec::new();
        walk(text, |step| match step {
            Step::Down(s) => segments.push(s.to_string()),
            Step::Up => {
                segments.pop();
            }
        })?;
        Ok(Root { segments })
    }

    /// Whether `path`, normalised, is this directory or inside it. Memory stays bounded by
    /// the root's depth, whatever the length of `path`: only the first segments of the
    /// normalised path are kept, deeper ones are counted.
    pub(crate) fn contains(&self, path: &str) -> Result<bool, PathProblem> {
        let depth_kept = self.segments.len();
        let mut head: Vec<&str> = Vec::with_capacity(depth_kept);
        let mut depth = 0usize;
        walk(path, |step| match step {
            Step::Down(s) => {
                if depth < depth_kept {
                    head.push(s);
                }
                depth += 1;
            }
            Step::Up => {
                depth -= 1;
                if depth < depth_kept {
                    head.pop();
                }
            }
        })?;
        Ok(depth >= depth_kept && head.iter().zip(&self.segments).all(|(a, b)| *a == b))
    }
}

enum Step<'a> {
    Down(&'a str),
    Up,
}

/// Checks `text` and feeds its segments to `step` in order; `Up` is only fed when there is
/// a segment to remove.
fn walk<'a>(text: &'a str, mut step: impl FnMut(Step<'a>)) -> Result<(), PathProblem> {
    let Some(rest) = text.strip_prefix('/') else {
        return Err(PathProblem::Relative);
    };
    if text.contains('\0') {
        return Err(PathProblem::Nul);
    }
    if text.contains('\\') {
        return Err(PathProblem::Backslash);
    }
    if has_encoded_separator(text) {
        return Err(PathProblem::PercentEncoded);
    }
    let mut depth = 0usize;
    for segment in rest.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if depth == 0 {
                    return Err(PathProblem::ClimbsAboveRoot);
                }
                depth -= 1;
                step(Step::Up);
            }
            name => {
                depth += 1;
                step(Step::Down(name));
            }
        }
    }
    Ok(())
}

/// `%2e`, `%2f`, `%5c` or `%00`, in either case.
fn has_encoded_separator(text: &str) -> bool {
    text.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e') | (b'2', b'f') | (b'5', b'c') | (b'0', b'0')
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn under(root: &str, path: &str) -> Result<bool, PathProblem> {
        Root::parse(root).expect("a valid root").contains(path)
    }

    #[test]
    fn a_path_is_under_itself_and_what_is_inside_it_only() {
        let cases: &[(&str, bool)] = &[
            ("/home/me/notes", true),
            ("/home/me/notes/", true),
            ("/home/me/notes/a/b.txt", true),
            ("/home/me/notes2", false),
            ("/home/me/notes2/a", false),
            ("/home/me/note", false),
            ("/home/me", false),
            ("/", false),
            ("/etc/shadow", false),
            ("/HOME/me/notes/a", false),
        ];
        for (path, want) in cases {
            assert_eq!(under("/home/me/notes", path), Ok(*want), "{path}");
        }
    }

    #[test]
    fn dots_repeated_and_trailing_slashes_are_resolved_before_comparing() {
        let cases: &[(&str, bool)] = &[
            ("/home/me/notes/../../../etc/shadow", false),
            ("/home/me/notes/..", false),
            ("/home/me/notes/a/../..", false),
            ("/home/me/notes/a/../b", true),
            ("/home/me/./notes/./a", true),
            ("//home//me///notes//a", true),
            ("/home/me/x/../notes/a", true),
            ("/home/me/notes/.../a", true),
            ("/home/me/notes/..a", true),
        ];
        for (path, want) in cases {
            assert_eq!(under("/home/me/notes", path), Ok(*want), "{path}");
        }
        assert_eq!(under("/etc", "//etc/passwd"), Ok(true));
        assert_eq!(under("/etc", "/./etc/passwd"), Ok(true));
        assert_eq!(under("/etc", "/tmp/../etc/passwd"), Ok(true));
    }

    #[test]
    fn paths_whose_text_does_not_say_where_they_lead_are_refused() {
        let cases: &[(&str, PathProblem)] = &[
            ("home/me/notes/a", PathProblem::Relative),
            ("", PathProblem::Relative),
            ("~/notes", PathProblem::Relative),
            ("./notes", PathProblem::Relative),
            ("C:/notes", PathProblem::Relative),
            ("file:///home/me/notes", PathProblem::Relative),
            ("/..", PathProblem::ClimbsAboveRoot),
            ("/../home/me/notes/a", PathProblem::ClimbsAboveRoot),
            ("/home/../../home/me/notes", PathProblem::ClimbsAboveRoot),
            ("/home/me/notes/\0/../../../etc", PathProblem::Nul),
            ("/home/me/notes\\..\\..\\etc", PathProblem::Backslash),
            (
                "/home/me/notes/%2e%2e/%2e%2e/etc",
                PathProblem::PercentEncoded,
            ),
            ("/home/me/notes/%2E%2E/x", PathProblem::PercentEncoded),
            ("/home/me/notes/..%2fetc", PathProblem::PercentEncoded),
            ("/home/me/notes/..%5C..", PathProblem::PercentEncoded),
            ("/home/me/notes/a%00.txt", PathProblem::PercentEncoded),
        ];
        for (path, want) in cases {
            assert_eq!(under("/home/me/notes", path), Err(*want), "{path:?}");
        }
    }

    #[test]
    fn other_percent_escapes_and_unicode_are_compared_as_written() {
        assert_eq!(
            under("/home/me/notes", "/home/me/notes/100%25.txt"),
            Ok(true)
        );
        assert_eq!(under("/home/me/notes", "/home/me/notes/a%20b"), Ok(true));
        assert_eq!(under("/home/me/notes", "/home/me/notes/日本/é"), Ok(true));
        // A fullwidth solidus is a character of a name, not a separator.
        assert_eq!(
            under("/home/me/notes", "/home/me/notes/a／..／..／etc"),
            Ok(true)
        );
        assert_eq!(under("/home/me/café", "/home/me/cafe\u{301}/x"), Ok(false));
    }

    #[test]
    fn the_root_holds_every_absolute_path() {
        assert_eq!(under("/", "/"), Ok(true));
        assert_eq!(under("/", "/etc/shadow"), Ok(true));
        assert_eq!(under("/", "relative"), Err(PathProblem::Relative));
    }

    #[test]
    fn roots_are_normalised_when_read() {
        assert_eq!(
            Root::parse("//home/./me/x/../notes/"),
            Root::parse("/home/me/notes")
        );
        assert_eq!(Root::parse("/.//"), Root::parse("/"));
        assert_ne!(Root::parse("/home/me"), Root::parse("/home/me/notes"));
        assert_eq!(Root::parse("notes"), Err(PathProblem::Relative));
        assert_eq!(Root::parse("/a/../.."), Err(PathProblem::ClimbsAboveRoot));
    }

    #[test]
    fn very_long_and_very_deep_paths_are_placed() {
        let deep = "/home/me/notes".to_string() + &"/a".repeat(200_000);
        assert_eq!(under("/home/me/notes", &deep), Ok(true));
        let back = deep.clone() + &"/..".repeat(200_000) + "/../x";
        assert_eq!(under("/home/me/notes", &back), Ok(false));
        let long_name = format!("/home/me/notes/{}", "n".repeat(1 << 20));
        assert_eq!(under("/home/me/notes", &long_name), Ok(true));
    }

    /// The reference: the whole normalised path kept, then compared segment by segment.
    fn reference(root: &str, path: &str) -> Result<bool, PathProblem> {
        let normalise = |text: &str| -> Result<Vec<String>, PathProblem> {
            let mut kept: Vec<String> = Vec::new();
            walk(text, |step| match step {
                Step::Down(s) => kept.push(s.to_string()),
                Step::Up => {
                    kept.pop();
                }
            })?;
            Ok(kept)
        };
        let root = normalise(root)?;
        let path = normalise(path)?;
        Ok(path.len() >= root.len() && path[..root.len()] == root[..])
    }

    fn spelled() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        proptest::collection::vec(
            prop_oneof![
                Just("a"),
                Just("b"),
                Just("ab"),
                Just("."),
                Just(".."),
                Just(""),
                Just("..."),
            ],
            0..12,
        )
        .prop_map(|segments| format!("/{}", segments.join("/")))
    }

    proptest::proptest! {
        #[test]
        fn containment_with_bounded_memory_agrees_with_the_whole_path_kept(
            root in spelled(),
            path in spelled(),
        ) {
            if let Ok(r) = Root::parse(&root) {
                proptest::prop_assert_eq!(r.contains(&path), reference(&root, &path));
            }
        }
    }
}
