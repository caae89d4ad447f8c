//! Colour themes: `themes/*.toml`, helix style.
//!
//! A theme file has an optional `inherits = "NAME"`, a `[palette]` of named colours, and one
//! key per semantic slot (`allow`, `deny`, `hold`, `selection`, ...). A slot is either a colour
//! (`deny = "red"`) or a table (`deny = { fg = "red", bg = "#101010", modifiers = ["bold"] }`);
//! colours are palette names, ANSI names or `#rrggbb`. A theme states only what differs from
//! the one it inherits. The built-in themes (`dark`, `light`, `high-contrast`) are compiled in;
//! user themes come from `<config dir>/toolgate/themes/NAME.toml` and may shadow them.
//!
//! With `NO_COLOR` set, every colour is dropped and only modifiers remain; the views never
//! rely on colour alone (a decision is always a word and a symbol).

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;

use ratatui::style::{Color, Modifier, Style};

/// The built-in themes, by name.
const BUILTIN: &[(&str, &str)] = &[
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    (
        "high-contrast",
        include_str!("../../themes/high-contrast.toml"),
    ),
];

/// The theme used when none is named.
pub(crate) const DEFAULT_THEME: &str = "dark";

/// A resolved theme: one style per semantic slot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Theme {
    pub name: String,
    /// Ordinary text.
    pub text: Style,
    /// Secondary text: times, rule pointers, hints.
    pub muted: Style,
    /// Emphasis: titles, the active view, key names in help.
    pub accent: Style,
    pub border: Style,
    /// The selected row.
    pub selection: Style,
    pub allow: Style,
    pub deny: Style,
    pub rate_limited: Style,
    pub hold: Style,
    /// Errors: failed calls, refused commands, lost connections.
    pub error: Style,
    /// Good news: applied, connected, approved.
    pub ok: Style,
    /// The status bar line.
    pub status_bar: Style,
}

/// Why a theme could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ThemeError {
    #[error("no theme named '{0}' (built in: dark, light, high-contrast; or add {1})")]
    NotFound(String, String),
    #[error("theme '{name}': {message}")]
    Invalid { name: String, message: String },
    #[error("theme '{0}' inherits from itself")]
    Cycle(String),
}

impl Theme {
    /// Loads a theme by name: a user theme file first, then the built-in ones.
    pub fn load(name: &str) -> Result<Theme, ThemeError> {
        Theme::load_from(name, user_theme_dir().as_ref())
    }

    /// Loads a theme by name, looking for user themes in `user_dir`.
    pub fn load_from(name: &str, user_dir: Option<&PathBuf>) -> Result<Theme, ThemeError> {
        let mut chain = Vec::new();
        let mut next = Some(name.to_owned());
        while let Some(n) = next {
            if chain
                .iter()
                .any(|(seen, _): &(String, toml::Table)| *seen == n)
            {
                return Err(ThemeError::Cycle(n));
            }
            let table = read_theme(&n, user_dir)?;
            next = match table.get("inherits") {
                Some(toml::Value::String(parent)) => Some(parent.clone()),
                Some(_) => {
                    return Err(ThemeError::Invalid {
                        name: n,
                        message: "`inherits` must be a theme name".into(),
                    });
                }
                None => None,
            };
            chain.push((n, table));
        }
        // Merge root first, each child over it: palette entries, then slot values; slots are
        // resolved against the final palette, so a child that only changes colours recolours
        // every slot it inherits.
        let mut palette: HashMap<String, Color> = HashMap::new();
        let mut slot_values: HashMap<String, (String, toml::Value)> = HashMap::new();
        for (n, table) in chain.iter().rev() {
            if let Some(p) = table.get("palette") {
                let p = p
                    .as_table()
                    .ok_or_else(|| invalid(n, "[palette] must be a table"))?;
                for (k, v) in p {
                    let text = v.as_str().ok_or_else(|| {
                        invalid(n, &format!("palette colour '{k}' must be a string"))
                    })?;
                    let colour = parse_color(text, &palette).map_err(|m| invalid(n, &m))?;
                    palette.insert(k.clone(), colour);
                }
            }
            for (k, v) in table {
                if k == "palette" || k == "inherits" {
                    continue;
                }
                if !SLOTS.contains(&k.as_str()) {
                    return Err(invalid(
                        n,
                        &format!("unknown slot '{k}' (slots: {})", SLOTS.join(", ")),
                    ));
                }
                slot_values.insert(k.clone(), (n.clone(), v.clone()));
            }
        }
        let mut slots: HashMap<String, Style> = HashMap::new();
        for (k, (n, v)) in &slot_values {
            let style = parse_style(v, &palette).map_err(|m| invalid(n, &format!("{k}: {m}")))?;
            slots.insert(k.clone(), style);
        }
        let get = |k: &str| slots.get(k).copied().unwrap_or_default();
        Ok(Theme {
            name: name.to_owned(),
            text: get("text"),
            muted: get("muted"),
            accent: get("accent"),
            border: get("border"),
            selection: get("selection"),
            allow: get("allow"),
            deny: get("deny"),
            rate_limited: get("rate_limited"),
            hold: get("hold"),
            error: get("error"),
            ok: get("ok"),
            status_bar: get("status_bar"),
        })
    }

    /// The built-in default theme. Never fails: the built-in files are tested.
    pub fn builtin_default() -> Theme {
        Theme::load_from(DEFAULT_THEME, None).unwrap_or_else(|_| Theme::plain(DEFAULT_THEME))
    }

    /// A theme with no colours at all; selection still shows, reversed.
    pub fn plain(name: &str) -> Theme {
        Theme {
            name: name.to_owned(),
            selection: Style::new().add_modifier(Modifier::REVERSED),
            accent: Style::new().add_modifier(Modifier::BOLD),
            status_bar: Style::new().add_modifier(Modifier::REVERSED),
            ..Theme::default()
        }
    }

    /// This theme with every colour removed (for `NO_COLOR`), keeping modifiers so that the
    /// selection and emphasis still show.
    pub fn without_colour(self) -> Theme {
        let strip = |s: Style| Style {
            fg: None,
            bg: None,
            underline_color: None,
            ..s
        };
        let mut t = Theme {
            name: self.name.clone(),
            text: strip(self.text),
            muted: strip(self.muted),
            accent: strip(self.accent),
            border: strip(self.border),
            selection: strip(self.selection),
            allow: strip(self.allow),
            deny: strip(self.deny),
            rate_limited: strip(self.rate_limited),
            hold: strip(self.hold),
            error: strip(self.error),
            ok: strip(self.ok),
            status_bar: strip(self.status_bar),
        };
        // Selection and the status bar are usually made by a background colour alone.
        t.selection = t.selection.add_modifier(Modifier::REVERSED);
        t.status_bar = t.status_bar.add_modifier(Modifier::REVERSED);
        t
    }
}

/// Whether the `NO_COLOR` convention asks for no colour (set and not empty).
pub(crate) fn no_color_requested() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Every semantic slot a theme may set.
pub(crate) const SLOTS: &[&str] = &[
    "text",
    "muted",
    "accent",
    "border",
    "selection",
    "allow",
    "deny",
    "rate_limited",
    "hold",
    "error",
    "ok",
    "status_bar",
];

/// The names of the built-in themes (the tests load each).
#[cfg(test)]
fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _)| *n)
}

/// Where user themes live: `<config dir>/toolgate/themes`.
pub(crate) fn user_theme_dir() -> Option<PathBuf> {
    use etcetera::BaseStrategy;
    etcetera::choose_base_strategy()
        .ok()
        .map(|s| s.config_dir().join("toolgate").join("themes"))
}

fn invalid(name: &str, message: &str) -> ThemeError {
    ThemeError::Invalid {
        name: name.to_owned(),
        message: message.to_owned(),
    }
}

fn read_theme(name: &str, user_dir: Option<&PathBuf>) -> Result<toml::Table, ThemeError> {
    // A theme name is a file name, never a path.
    let safe = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let user_file = user_dir.map(|d| d.join(format!("{name}.toml")));
    let text = match user_file.as_ref().filter(|p| safe && p.is_file()) {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| invalid(name, &format!("cannot read {}: {e}", path.display())))?,
        None => match BUILTIN.iter().find(|(n, _)| *n == name) {
            Some((_, text)) => (*text).to_owned(),
            None => {
                let hint = user_dir
                    .map(|d| d.join(format!("{name}.toml")).display().to_string())
                    .unwrap_or_else(|| "a theme file".into());
                return Err(ThemeError::NotFound(
                    crate::sanitize::terminal_text(name).into_owned(),
                    hint,
                ));
            }
        },
    };
    text.parse::<toml::Table>()
        .map_err(|e| invalid(name, &e.to_string()))
}

fn parse_color(text: &str, palette: &HashMap<String, Color>) -> Result<Color, String> {
    if let Some(c) = palette.get(text) {
        return Ok(*c);
    }
    Color::from_str(text).map_err(|_| format!("'{text}' is not a palette name or a colour"))
}

fn parse_style(v: &toml::Value, palette: &HashMap<String, Color>) -> Result<Style, String> {
    match v {
        toml::Value::String(c) => Ok(Style::new().fg(parse_color(c, palette)?)),
        toml::Value::Table(t) => {
            let mut s = Style::new();
            for (k, v) in t {
                match (k.as_str(), v) {
                    ("fg", toml::Value::String(c)) => s = s.fg(parse_color(c, palette)?),
                    ("bg", toml::Value::String(c)) => s = s.bg(parse_color(c, palette)?),
                    ("modifiers", toml::Value::Array(mods)) => {
                        for m in mods {
                            let m = m.as_str().ok_or("modifiers are strings")?;
                            s = s.add_modifier(parse_modifier(m)?);
                        }
                    }
                    _ => return Err(format!("unexpected key '{k}' (fg, bg, modifiers)")),
                }
            }
            Ok(s)
        }
        _ => Err("expected a colour or a table { fg, bg, modifiers }".into()),
    }
}

fn parse_modifier(m: &str) -> Result<Modifier, String> {
    Ok(match m {
        "bold" => Modifier::BOLD,
        "dim" => Modifier::DIM,
        "italic" => Modifier::ITALIC,
        "underlined" => Modifier::UNDERLINED,
        "reversed" => Modifier::REVERSED,
        "crossed_out" => Modifier::CROSSED_OUT,
        "slow_blink" => Modifier::SLOW_BLINK,
        _ => return Err(format!("unknown modifier '{m}'")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_theme_loads_and_sets_every_slot() {
        for name in builtin_names() {
            let t = Theme::load_from(name, None).unwrap_or_else(|e| panic!("{name}: {e}"));
            for (slot, style) in [
                ("allow", t.allow),
                ("deny", t.deny),
                ("hold", t.hold),
                ("rate_limited", t.rate_limited),
                ("selection", t.selection),
                ("status_bar", t.status_bar),
            ] {
                assert_ne!(style, Style::default(), "{name}.{slot} is unset");
            }
        }
    }

    #[test]
    fn a_user_theme_inherits_and_overrides_one_slot() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mine.toml"),
            "inherits = \"dark\"\ndeny = { fg = \"pink\", modifiers = [\"bold\"] }\n\n[palette]\npink = \"#ff00ff\"\n",
        )
        .unwrap();
        let path = dir.path().to_path_buf();
        let mine = Theme::load_from("mine", Some(&path)).unwrap();
        let dark = Theme::load_from("dark", None).unwrap();
        assert_eq!(mine.deny.fg, Some(Color::Rgb(0xff, 0, 0xff)));
        assert!(mine.deny.add_modifier.contains(Modifier::BOLD));
        assert_eq!(mine.allow, dark.allow);
    }

    #[test]
    fn a_child_palette_recolours_inherited_slots() {
        let light = Theme::load_from("light", None).unwrap();
        let dark = Theme::load_from("dark", None).unwrap();
        assert_ne!(light.allow.fg, dark.allow.fg);
        assert_eq!(light.allow.fg, Some(Color::Rgb(0, 0x7a, 0)));
    }

    #[test]
    fn unknown_slots_missing_themes_and_cycles_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.toml"), "alow = \"red\"\n").unwrap();
        std::fs::write(dir.path().join("a.toml"), "inherits = \"b\"\n").unwrap();
        std::fs::write(dir.path().join("b.toml"), "inherits = \"a\"\n").unwrap();
        let path = dir.path().to_path_buf();
        let err = Theme::load_from("bad", Some(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown slot 'alow'"), "{err}");
        assert!(matches!(
            Theme::load_from("nope", Some(&path)),
            Err(ThemeError::NotFound(..))
        ));
        assert!(matches!(
            Theme::load_from("a", Some(&path)),
            Err(ThemeError::Cycle(_))
        ));
    }

    #[test]
    fn without_colour_keeps_the_selection_visible() {
        let t = Theme::builtin_default().without_colour();
        assert_eq!(t.deny.fg, None);
        assert!(t.selection.add_modifier.contains(Modifier::REVERSED));
    }
}
