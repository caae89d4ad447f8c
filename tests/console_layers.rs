//! The console's layers keep their dependency rule (see `src/console/mod.rs` and
//! ARCHITECTURE.md): `model` imports no other layer of the console and nothing of ratatui or
//! crossterm; `input` reads only the model; `update` and `effects` never import the view.
//!
//! The rule is checked on the source text: every line that is not a comment is searched for
//! a path into a layer it may not use, written any of the ways Rust allows (`crate::console::x`,
//! `super::x` from a layer's root, `super::super::x` from below it).

use std::path::{Path, PathBuf};

/// The console's layers that have a rule, and what each may not reach.
const RULES: &[(&str, &[&str])] = &[
    (
        "model",
        &[
            "ratatui",
            "crossterm",
            "input",
            "update",
            "view",
            "effects",
            "theme",
            "launch",
            "terminal",
        ],
    ),
    (
        "input",
        &["update", "view", "effects", "theme", "launch", "terminal"],
    ),
    (
        "update",
        &["view", "effects", "theme", "launch", "terminal"],
    ),
    ("effects", &["view", "launch", "terminal"]),
];

/// Crates (not console modules) that a layer may not use.
const CRATES: &[&str] = &["ratatui", "crossterm"];

fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/console")
}

/// Every `.rs` file under `dir`, with its depth below the layer's root (0 for `x/mod.rs` and
/// `x/y.rs`, 1 for `x/y/z.rs`).
fn sources(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, usize)>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            sources(&path, depth + 1, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((path, depth));
        }
    }
}

/// The ways a file at `depth` below its layer's root (`is_root`: the layer's `mod.rs`) can
/// name the console module `target`.
fn spellings(target: &str, depth: usize, is_root: bool) -> Vec<String> {
    if CRATES.contains(&target) {
        return vec![format!("{target}::")];
    }
    let mut v = vec![format!("console::{target}")];
    // From the layer's mod.rs, `super` is the console; from x/y.rs it is the layer, and one
    // more `super` per directory below.
    let supers = if is_root { 1 } else { depth + 2 };
    v.push(format!("{}{target}", "super::".repeat(supers)));
    v
}

/// Lines of `text` (with their numbers) that name a forbidden module, ignoring comments.
fn violations(text: &str, forbidden: &[&str], depth: usize, is_root: bool) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split(" //").next().unwrap_or(code);
        for target in forbidden {
            for s in spellings(target, depth, is_root) {
                let word = |c: char| c.is_alphanumeric() || c == '_';
                let hit = code.match_indices(&s).any(|(i, _)| {
                    // A whole path segment: not `my_view` for `view`, not `viewer`.
                    let before = code[..i].chars().next_back();
                    let after = code[i + s.len()..].chars().next();
                    !before.is_some_and(word) && (s.ends_with("::") || !after.is_some_and(word))
                });
                if hit {
                    found.push(format!("line {}: `{}` uses {target}", n + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn no_console_layer_imports_a_layer_above_it_and_the_model_draws_nothing() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for (layer, forbidden) in RULES {
        let dir = console_dir().join(layer);
        let mut files = Vec::new();
        sources(&dir, 0, &mut files);
        assert!(
            files.iter().any(|(p, _)| p.ends_with("mod.rs")),
            "layer {layer} has no mod.rs under {}",
            dir.display()
        );
        for (path, depth) in files {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let is_root = depth == 0 && path.ends_with("mod.rs");
            // x/y.rs sits at depth 0 of the walk but one module below the layer's root.
            let depth = if is_root { 0 } else { depth };
            for v in violations(&text, forbidden, depth, is_root) {
                broken.push(format!("{}: {v}", path.display()));
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} files checked: wrong directory?"
    );
    assert!(
        broken.is_empty(),
        "the console's dependency rule is broken (see src/console/mod.rs):\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_layer_check_catches_each_way_of_writing_a_forbidden_import() {
    let forbidden = &["view", "ratatui"];
    for (line, depth, is_root) in [
        ("use crate::console::view::draw;", 0, false),
        ("use super::view::ViewState;", 0, true),
        ("use super::super::view::ViewState;", 0, false),
        ("    let s: ratatui::style::Style = x;", 0, false),
        ("use ratatui::buffer::Buffer;", 1, false),
        ("use super::super::super::view;", 1, false),
    ] {
        assert_eq!(
            violations(line, forbidden, depth, is_root).len(),
            1,
            "not caught: {line}"
        );
    }
    for line in [
        "// use crate::console::view::draw;",
        "/// Drawn by [`crate::console::view`].",
        "use super::preview::x;",
        "let viewer = super::viewport;",
    ] {
        assert!(
            violations(line, forbidden, 0, true).is_empty(),
            "wrongly caught: {line}"
        );
    }
}
