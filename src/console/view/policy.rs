//! The Policy view (`3`): the draft's rules, and the tools the upstream servers offer that
//! no rule names (they fall to the default).
//!
//! A rule that matches no offered tool is flagged: a typo in a tool name must not silently
//! leave the real tool unguarded. The header says whether the draft differs from the file,
//! whether it is valid (with `toolgate check`'s diagnostics when not), and which gateways
//! applied which version. A shadow rule's action is marked `◐` (decided, not enforced), and
//! its row says how many calls it would have changed since the file was loaded or written.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Widget};

use super::cell;
use crate::console::model::{RowKind, State, short_hash, tool_class};
use crate::console::theme::Theme;
use crate::sanitize::terminal_string;
use crate::scan::{Classification, RiskClass};

/// The CLASS cell: `write`, or `write?` when the class was guessed from the tool's name or
/// description (the legend above the table says so), so it reads without colour.
fn class_cell(c: &Classification) -> String {
    format!("{}{}", c.class.as_str(), if c.guessed { "?" } else { "" })
}

const MARK_W: u16 = 2;
const KEY_W: u16 = 24;
/// `destructive?`.
const CLASS_W: u16 = 12;
/// `secrets open-world`.
const FLAGS_W: u16 = 18;
const ACTION_W: u16 = 20;
const LIMITS_W: u16 = 34;

/// Column widths for a table `w` wide: mark, tool, class, flags, action, limits, rest.
/// On a narrow terminal the wide columns give way first (limits, then the tool name, the
/// action, then limits again), each down to a floor that keeps `destructive?`,
/// `secrets open-world` and `require_approval` whole; past that, cells are cut with `…`
/// but every row keeps the same columns.
fn column_widths(w: u16) -> [u16; 7] {
    let mut cols = [MARK_W, KEY_W, CLASS_W, FLAGS_W, ACTION_W, LIMITS_W];
    // (column, narrowest it gets)
    let give = [(5, 12), (1, 14), (4, 16), (5, 10), (3, 8), (1, 10), (4, 8)];
    let gaps = cols.len() as u16;
    let total = |c: &[u16; 6]| c.iter().sum::<u16>() + gaps;
    for (i, floor) in give {
        let over = total(&cols).saturating_sub(w);
        if over == 0 {
            break;
        }
        cols[i] -= over.min(cols[i].saturating_sub(floor));
    }
    let rest = w.saturating_sub(total(&cols));
    let mut out = [cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], rest];
    // Narrower than every floor: the columns on the right are cut at the edge, not drawn
    // over the border.
    let mut room = w;
    for c in &mut out {
        *c = (*c).min(room);
        room = room.saturating_sub(*c + 1);
    }
    out
}

pub(super) fn draw(buf: &mut Buffer, area: Rect, state: &State, t: &Theme) {
    let Some(draft) = &state.authoring.draft else {
        let text = match (&state.authoring.load_error, &state.policy_path) {
            (Some(e), _) => format!("cannot read the policy: {e}"),
            _ => "No policy file yet: start the console with --policy P, or connect to a gateway (it reports its file).".into(),
        };
        let block = block(t, " Policy ".into());
        let inner = block.inner(area);
        block.render(area, buf);
        cell(buf, inner.x, inner.y, inner.width, &text, t.muted);
        return;
    };
    let status = if !draft.is_modified() {
        "draft = file".to_string()
    } else if draft.compiled().is_ok() {
        "draft modified · valid · w writes".to_string()
    } else {
        "draft modified · INVALID".to_string()
    };
    let block = block(
        t,
        format!(
            " Policy · {} · {status} ",
            terminal_string(draft.path.clone())
        ),
    );
    let inner = block.inner(area);
    block.render(area, buf);
    if inner.height == 0 || inner.width == 0 {
        return;
    }
    let (x0, w) = (inner.x, inner.width);
    let mut y = inner.y;
    let bottom = inner.bottom();
    let line = |buf: &mut Buffer, y: &mut u16, text: &str, style: Style| {
        if *y < bottom {
            cell(buf, x0, *y, w, text, style);
            *y += 1;
        }
    };

    // Header: file, gateways, problems.
    let mut applied: Vec<String> = Vec::new();
    for (_, g) in state.distinct_gateways() {
        let hash = g.policy_hash.as_deref().map(short_hash).unwrap_or("none");
        let mark = if g.policy_hash.as_deref() == Some(draft.base_hash.as_str()) {
            "✓"
        } else {
            "≠"
        };
        applied.push(format!("{} {mark} {hash}", g.label()));
    }
    let gateways = if applied.is_empty() {
        "no gateway".to_string()
    } else {
        applied.join("  ")
    };
    let from = match state
        .authoring
        .remote
        .source
        .as_ref()
        .and_then(|k| state.gateway_index.get(k))
    {
        Some(conn) if state.authoring.remote.writable => {
            format!(" on {}", state.gateway_place(*conn))
        }
        Some(conn) => format!(
            " on {} (read-only: managed elsewhere)",
            state.gateway_place(*conn)
        ),
        None => String::new(),
    };
    line(
        buf,
        &mut y,
        &format!(
            "file {}{from}  ·  gateways: {gateways}",
            short_hash(&draft.base_hash)
        ),
        t.muted,
    );
    if let Some(a) = &state.authoring.awaiting {
        // A remote write: applied by N of the M gateways it was sent to, and who refused it.
        let remote = state
            .authoring
            .remote
            .write
            .as_ref()
            .filter(|w| w.hash == a.hash);
        let of = remote
            .map(|w| format!(" of {}", w.total()))
            .unwrap_or_default();
        let mut text = format!(
            "wrote {}: applied by {}{of} gateway{}",
            short_hash(&a.hash),
            a.applied.len(),
            if a.applied.len() == 1 && of.is_empty() {
                ""
            } else {
                "s"
            }
        );
        for (conn, _) in &a.rejected {
            text.push_str(&format!(" · refused by {}", state.gateway_label(*conn)));
        }
        let refused_write = remote.map_or(&[][..], |w| w.refused.as_slice());
        for (conn, _, why) in refused_write {
            text.push_str(&format!(
                " · not written by {}: {why}",
                state.gateway_place(*conn)
            ));
        }
        line(
            buf,
            &mut y,
            &text,
            if a.rejected.is_empty() && refused_write.is_empty() {
                t.ok
            } else {
                t.error
            },
        );
    }
    if let Some(a) = &state.authoring.awaiting {
        // Every problem the refusing gateways reported, as `toolgate check` words them.
        for d in a.rejected.iter().flat_map(|(_, d)| d).take(6) {
            line(buf, &mut y, &format!("  {d}"), t.error);
        }
    }
    if state.authoring.conflict.is_some() {
        line(
            buf,
            &mut y,
            if state.authoring.remote.source.is_some() {
                "the policy changed on the gateway: :reload takes it (drops the draft), :w! overwrites it"
            } else {
                "the file changed on disk: :reload takes it (drops the draft), :w! overwrites it"
            },
            t.error,
        );
    }
    if !state.authoring.refused.is_empty() {
        line(buf, &mut y, "the last edit was refused:", t.error);
        for d in state.authoring.refused.iter().take(6) {
            line(buf, &mut y, &format!("  {d}"), t.error);
        }
    }
    if let Err(diags) = draft.compiled() {
        for d in diags.0.iter().take(6) {
            line(buf, &mut y, &terminal_string(d.to_string()), t.error);
        }
    }
    let policy = draft.compiled().ok();
    if let Some(p) = policy {
        let hidden = draft.hidden();
        let mut text = format!(
            "default: {}  ·  approval timeout {}",
            p.default_action().as_str(),
            crate::policy::human_duration(p.approval_timeout_ms())
        );
        if !hidden.is_empty() {
            text.push_str(&format!(
                "  ·  hide: {}",
                terminal_string(hidden.join(", "))
            ));
        }
        line(buf, &mut y, &text, t.text);
    }
    // Shadow rules in the header, so their counts read at any width: trying a rule on live
    // traffic is what decides whether to promote it.
    let shadows: Vec<String> = state
        .policy_rows()
        .iter()
        .filter_map(|r| match &r.kind {
            RowKind::Rule { rule, .. } if rule.shadow => Some(format!(
                "{} {}",
                terminal_string(rule.key.clone()),
                changed_calls(state.authoring.shadow_tally.for_rule(&rule.key))
            )),
            _ => None,
        })
        .collect();
    if !shadows.is_empty() {
        line(
            buf,
            &mut y,
            &format!(
                "◐ shadow, not enforced: {} · P on its row promotes it",
                shadows.join(" · ")
            ),
            t.rate_limited,
        );
    }
    if y >= bottom {
        return;
    }

    // The table.
    let rows = state.policy_rows();
    if rows
        .iter()
        .any(|r| tool_class(state, &r.tool).is_some_and(|c| c.guessed))
    {
        line(
            buf,
            &mut y,
            "class? = guessed from name or description, no annotations · s: suggested rule",
            t.muted,
        );
    }
    if y >= bottom {
        return;
    }
    let widths = column_widths(w);
    let titles = [
        "",
        "TOOL",
        "CLASS",
        "FLAGS",
        "ACTION",
        "LIMITS",
        "REASON · CONDITIONS",
    ];
    let mut x = x0;
    for (cw, title) in widths.into_iter().zip(titles) {
        cell(buf, x, y, cw, title, t.muted);
        x += cw + 1;
    }
    y += 1;
    if rows.is_empty() {
        line(
            buf,
            &mut y,
            "No rules yet, and no tools known: :allow TOOL, :limit TOOL 30/minute …",
            t.muted,
        );
        return;
    }
    let room = bottom.saturating_sub(y) as usize;
    let selected = state.authoring.selected.min(rows.len() - 1);
    let top = selected.saturating_sub(room.saturating_sub(1));
    for (i, row) in rows.iter().enumerate().skip(top).take(room) {
        let base = if i == selected {
            t.selection
        } else {
            Style::default()
        };
        buf.set_style(Rect::new(x0, y, w, 1), base);
        let (mark, key_style, action, action_style, limits, rest, rest_style) = match &row.kind {
            RowKind::Rule { rule, unmatched } => {
                let mut rest: Vec<String> = Vec::new();
                if rule.shadow {
                    // What trying it on live traffic has shown so far, first: it is what
                    // decides whether to promote it.
                    let n = state.authoring.shadow_tally.for_rule(&rule.key);
                    rest.push(format!("shadow: {} · P promotes", changed_calls(n)));
                }
                if *unmatched {
                    rest.push("⚠ matches no offered tool (typo?)".into());
                }
                if let Some(r) = &rule.reason {
                    rest.push(format!("\"{r}\""));
                }
                rest.extend(rule.conditions.iter().cloned());
                if let Some(a) = &rule.approval_timeout {
                    rest.push(format!("timeout {a}"));
                }
                let action_style = match rule.action.as_str() {
                    "deny" => t.deny,
                    "require_approval" => t.hold,
                    _ => t.allow,
                };
                (
                    if *unmatched { "⚠" } else { " " },
                    t.text,
                    if rule.shadow {
                        format!("◐ {}", rule.action)
                    } else {
                        rule.action.clone()
                    },
                    if rule.shadow { t.muted } else { action_style },
                    rule.limits.join("; "),
                    rest.join(" · "),
                    if *unmatched { t.error } else { t.text },
                )
            }
            RowKind::Unruled { default } => (
                "·",
                t.muted,
                format!("→ default ({default})"),
                t.muted,
                String::new(),
                "no rule names it".to_string(),
                t.muted,
            ),
            RowKind::Hidden { pointer } => (
                "·",
                t.muted,
                "hidden".to_string(),
                t.deny,
                String::new(),
                format!("by {pointer}"),
                t.muted,
            ),
        };
        let class = tool_class(state, &row.tool);
        let (class_text, class_style) = match class {
            Some(c) => (
                class_cell(c),
                match c.class {
                    RiskClass::Read => t.allow,
                    RiskClass::Write => t.hold,
                    RiskClass::Destructive => t.deny,
                },
            ),
            None => (String::new(), t.muted),
        };
        let flags = class.map(|c| c.flag_words().join(" ")).unwrap_or_default();
        let mut x = x0;
        let texts = [
            (mark.to_string(), t.error),
            (terminal_string(row.tool.clone()), key_style),
            (class_text, class_style),
            (flags, t.text),
            (action, action_style),
            (terminal_string(limits), t.text),
            (terminal_string(rest), rest_style),
        ];
        for (cw, (text, style)) in widths.into_iter().zip(texts) {
            cell(buf, x, y, cw, &text, base.patch(style));
            x += cw + 1;
        }
        y += 1;
    }
}

/// `would have changed 2 calls`: what a shadow rule did since the file was loaded or written.
fn changed_calls(n: u64) -> String {
    format!(
        "would have changed {n} call{}",
        if n == 1 { "" } else { "s" }
    )
}

fn block(t: &Theme, title: String) -> Block<'static> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(t.border)
        .title(Span::styled(title, t.accent))
        .title_bottom(Line::from(Span::styled(
            " :allow :block :hold :limit :unlimit :default :hide · s suggests · :w writes · :undo ",
            t.muted,
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_the_width_and_keep_class_and_flags_whole_on_80_columns() {
        for w in 0..=200u16 {
            let cols = column_widths(w);
            // Drawn as `draw` does: each column one past the previous one's end.
            let mut x = 0u16;
            for c in cols {
                assert!(c == 0 || x + c <= w, "w={w}: {cols:?} runs past the edge");
                x += c + 1;
            }
            let used: u16 = cols.iter().sum::<u16>() + 6;
            if w >= 78 {
                assert_eq!(used, w, "w={w}: the last column takes the rest");
                assert_eq!(cols[2], CLASS_W, "w={w}");
                assert_eq!(cols[3], FLAGS_W, "w={w}");
                assert!(cols[4] >= "require_approval".len() as u16, "w={w}");
            }
        }
    }
}
