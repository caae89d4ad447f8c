//! The detail of one call: who, what, the rule that decided and why, the arguments (secrets
//! redacted), and what became of it.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget};

use super::decision_style;
use crate::console::model::{
    CallRow, State, countdown, decision_label, latency_label, resolution_label,
};
use crate::console::theme::Theme;
use crate::redact::redact;
use crate::sanitize::terminal_text;

/// At most this many lines of arguments are laid out; the gateway caps them too, but the
/// console does not trust that.
const MAX_ARG_LINES: usize = 400;

pub(super) fn draw(
    buf: &mut Buffer,
    area: Rect,
    state: &State,
    t: &Theme,
    call_id: &str,
    scroll: u16,
) {
    let row = state.history.find(call_id).cloned().or_else(|| {
        state
            .holds
            .iter()
            .find(|h| h.call.call_id == call_id)
            .map(|h| CallRow {
                conn: h.conn,
                ts: h.ts,
                call: h.call.clone(),
                args: h.args.clone(),
                resolution: None,
                outcome: None,
                keys: Default::default(),
            })
    });
    let Some(row) = row else {
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(t.border)
            .title(Span::styled(" detail ", t.muted));
        Paragraph::new(Span::styled(
            format!("{call_id} is no longer remembered"),
            t.muted,
        ))
        .block(block)
        .render(area, buf);
        return;
    };
    let held = state.is_held(&row.call.call_id);
    let (label, ds) = decision_label(&row, state.now, held);
    let title = Line::from(vec![
        Span::styled(format!(" {} ", row.call.tool), t.accent),
        Span::styled("· ", t.muted),
        Span::styled(format!("{} ", row.call.grant), t.text),
        Span::styled("· ", t.muted),
        Span::styled(format!("{label} "), decision_style(t, ds)),
    ]);
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(t.border)
        .title(title)
        .title_bottom(
            Line::from(Span::styled(
                " Esc closes · j/k move · J/K scroll ",
                t.muted,
            ))
            .right_aligned(),
        );
    Paragraph::new(detail_lines(&row, &state.gateway_place(row.conn), state, t))
        .block(block)
        .scroll((scroll, 0))
        .render(area, buf);
}

/// The detail as lines.
pub(super) fn detail_lines(
    row: &CallRow,
    gateway: &str,
    state: &State,
    t: &Theme,
) -> Vec<Line<'static>> {
    let c = &row.call;
    let mut lines = Vec::new();
    let kv = |k: &str, v: String, style: Style| {
        Line::from(vec![
            Span::styled(format!("{k:<9}"), t.muted),
            Span::styled(v, style),
        ])
    };
    let verb = match c.decision {
        crate::wire::Verdict::Allow => "allowed by",
        crate::wire::Verdict::Deny => "denied by",
        crate::wire::Verdict::RateLimited => "rate limited by",
        crate::wire::Verdict::Hold => "held by",
    };
    lines.push(kv("rule", format!("{verb} {}", c.rule), t.text));
    if !c.reason.is_empty() {
        lines.push(kv("why", c.reason.to_string(), t.text));
    }
    if let Some(s) = &c.shadow {
        let from = match s.source {
            crate::wire::ShadowSource::Rule => "shadow rule",
            crate::wire::ShadowSource::Policy => "shadow policy",
        };
        let mut text = format!("◐ {} by {from} {}", s.would(), s.rule);
        if !s.reason.is_empty() {
            text.push_str(&format!(": {}", s.reason));
        }
        lines.push(kv("shadow", text, t.rate_limited));
    }
    if let Some(ms) = c.retry_after_ms {
        lines.push(kv(
            "retry",
            format!("after {:.1} s", ms as f64 / 1000.0),
            t.rate_limited,
        ));
    }
    if state.is_held(&c.call_id) {
        lines.push(kv(
            "held",
            format!(
                "times out in {} (then denied) · a approve · d deny",
                countdown(c.hold_deadline, state.now)
            ),
            t.hold,
        ));
    }
    if let Some(r) = &row.resolution {
        let at = state.resolved_elsewhere_at(&r.call_id);
        let mut text = resolution_label(r, at, state.now);
        if let Some(reason) = &r.reason {
            text.push_str(&format!(": {reason}"));
        }
        lines.push(kv(
            "resolved",
            text,
            if r.approved { t.allow } else { t.deny },
        ));
    }
    match &row.outcome {
        Some(o) => {
            let mut text = format!(
                "{} · {}",
                if o.error { "error" } else { "ok" },
                latency_label(o.latency_us)
            );
            if let Some(s) = &o.summary {
                text.push_str(&format!(" · {s}"));
            }
            lines.push(kv("outcome", text, if o.error { t.error } else { t.ok }));
        }
        None => lines.push(kv("outcome", "none yet".into(), t.muted)),
    }
    lines.push(kv(
        "call",
        format!(
            "{} · gateway {gateway} · server {} · session {} · {}",
            c.call_id,
            c.server,
            c.session,
            row.ts
                .with_timezone(&state.tz)
                .format("%Y-%m-%d %H:%M:%S%.3f")
        ),
        t.muted,
    ));
    lines.push(Line::from(Span::styled(
        if c.args_truncated {
            "arguments (truncated by the gateway)"
        } else {
            "arguments"
        },
        t.muted,
    )));
    // Redacted again here: the gateway should have done it, but the console does not rely on it.
    let pretty = serde_json::to_string_pretty(&redact(&row.args_value())).unwrap_or_default();
    for (count, l) in pretty.lines().enumerate() {
        if count == MAX_ARG_LINES {
            lines.push(Line::from(Span::styled("  …", t.muted)));
            break;
        }
        lines.push(Line::from(Span::styled(
            format!("  {}", terminal_text(l)),
            t.text,
        )));
    }
    lines
}
