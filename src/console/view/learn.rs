//! The review of a learned policy, drawn over the view: one proposal at a time (its
//! evidence, the rule it proposes, the rule it replaces), then the summary of the choices
//! and what the result would refuse of the recorded calls.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Widget};

use crate::console::model::State;
use crate::console::model::learn::{Choice, Item, LISTED_REFUSALS, LearnReview, Stage};
use crate::console::model::whatif::verdict_words;
use crate::console::theme::Theme;
use crate::learn::ProposalKind;

pub(super) fn draw(buf: &mut Buffer, area: Rect, state: &State, t: &Theme, review: &LearnReview) {
    Clear.render(area, buf);
    let n = review.items.len();
    let title = match (review.stage, review.current()) {
        (Stage::Proposals, Some(_)) => format!(
            " Learned policy · {} · proposal {} of {n} ",
            review.source,
            review.at + 1
        ),
        _ => format!(" Learned policy · {} · summary ", review.source),
    };
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(t.accent)
        .title(Span::styled(title, t.accent));
    let inner = block.inner(area);
    block.render(area, buf);
    if inner.height == 0 || inner.width == 0 {
        return;
    }
    let (lines, scroll) = match review.current() {
        Some(item) => (proposal_lines(review, item, t), review.scroll as usize),
        None => (summary_lines(review, state, t), review.scroll as usize),
    };
    for (y, line) in (inner.y..inner.bottom()).zip(lines.iter().skip(scroll)) {
        buf.set_line(inner.x, y, line, inner.width);
    }
}

fn kind_words(item: &Item) -> &'static str {
    match item.proposal.kind {
        ProposalKind::Add => "add a rule",
        ProposalKind::Tighten => "tighten the rule",
        ProposalKind::Remove => "remove the rule (allowed, never used)",
    }
}

fn choice_words(item: &Item) -> (&'static str, &'static str) {
    match item.choice {
        Choice::Open => ("·", "undecided"),
        Choice::Accepted if item.edited => ("✓", "accepted, edited"),
        Choice::Accepted if item.widened => ("✓", "accepted, widened"),
        Choice::Accepted if item.proposal.kind == ProposalKind::Remove => ("✓", "removed"),
        Choice::Accepted => ("✓", "accepted"),
        Choice::Rejected => ("✗", "rejected"),
        Choice::Skipped => ("…", "skipped"),
    }
}

fn choice_style(t: &Theme, c: Choice) -> Style {
    match c {
        Choice::Open => t.muted,
        Choice::Accepted => t.allow,
        Choice::Rejected => t.deny,
        Choice::Skipped => t.hold,
    }
}

fn proposal_lines(review: &LearnReview, item: &Item, t: &Theme) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    let progress = format!(" {} of {} · ", review.at + 1, review.items.len());
    let (mark, words) = choice_words(item);
    out.push(Line::from(vec![
        Span::styled(progress, t.accent),
        Span::styled(format!("{} ", kind_words(item)), t.text),
        Span::styled(item.shown.key.clone(), t.accent),
        Span::styled(
            if item.key != item.proposal.tool {
                format!(" (widened from {})", item.shown.tool)
            } else {
                String::new()
            },
            t.hold,
        ),
        Span::styled(format!("   {mark} {words}"), choice_style(t, item.choice)),
    ]));
    out.push(Line::from(vec![
        Span::styled(" why  ", t.muted),
        Span::styled(item.shown.reason.clone(), t.text),
    ]));
    out.push(Line::default());
    if !item.shown.evidence.is_empty() {
        out.push(Line::styled(" Evidence", t.muted));
        for e in &item.shown.evidence {
            out.push(Line::styled(format!("   • {e}"), t.text));
        }
        out.push(Line::default());
    }
    let before_after =
        item.proposal.kind == ProposalKind::Tighten && !item.shown.current.is_empty();
    if before_after || item.proposal.kind == ProposalKind::Remove {
        out.push(Line::styled(" The policy's rule now", t.muted));
        for l in &item.shown.current {
            out.push(Line::styled(format!("   {l}"), t.deny));
        }
    }
    if item.proposal.kind != ProposalKind::Remove {
        let head = if item.edited {
            " The rule, as you edited it"
        } else if item.widened {
            " The rule, widened"
        } else if before_after {
            " Proposed instead"
        } else {
            " Proposed rule"
        };
        out.push(Line::styled(head, t.muted));
        for l in &item.shown.rule {
            out.push(Line::styled(format!("   {l}"), t.allow));
        }
    }
    out
}

fn summary_lines(review: &LearnReview, state: &State, t: &Theme) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    let edited = review.items.iter().filter(|i| i.edited).count();
    let widened = review
        .items
        .iter()
        .filter(|i| i.widened && !i.edited)
        .count();
    out.push(Line::from(vec![
        Span::styled(
            format!(" {} accepted", review.count(Choice::Accepted)),
            t.allow,
        ),
        Span::styled(format!(" ({edited} edited, {widened} widened)"), t.muted),
        Span::styled(
            format!(" · {} rejected", review.count(Choice::Rejected)),
            t.deny,
        ),
        Span::styled(
            format!(" · {} skipped", review.count(Choice::Skipped)),
            t.hold,
        ),
        Span::styled(
            format!(
                " · the result goes to {}{}",
                crate::sanitize::terminal_text(&review.target),
                if review.shadow {
                    " (shadow candidate)"
                } else {
                    ""
                }
            ),
            t.muted,
        ),
    ]));
    for item in &review.items {
        let (mark, words) = choice_words(item);
        out.push(Line::from(vec![
            Span::styled(format!("   {mark} "), choice_style(t, item.choice)),
            Span::styled(format!("{:<28} ", fit(&item.shown.key, 28)), t.text),
            Span::styled(words, choice_style(t, item.choice)),
        ]));
    }
    if review.count(Choice::Skipped) > 0 {
        out.push(Line::styled(
            "   skipped proposals are not in this write: review the draft again to decide them",
            t.muted,
        ));
    }
    out.push(Line::default());
    let Some(outcome) = &review.outcome else {
        return out;
    };
    if let Err(problems) = &outcome.text {
        out.push(Line::styled(
            " The result is not a valid policy (toolgate check says):",
            t.error,
        ));
        for p in problems {
            out.push(Line::styled(format!("   {p}"), t.error));
        }
        return out;
    }
    let w = &outcome.whatif;
    let of = if w.replayed < review.observed() {
        format!(" (the newest {} of {})", w.replayed, review.observed())
    } else {
        String::new()
    };
    out.push(Line::styled(
        format!(
            " What-if: the result re-decides the {} recorded call{}{of}",
            w.replayed,
            if w.replayed == 1 { "" } else { "s" }
        ),
        t.text,
    ));
    let refused = outcome.refused.len();
    let unchosen = outcome.unchosen();
    let head = if refused == 0 {
        Line::styled("   0 would be refused", t.ok)
    } else if unchosen == 0 {
        Line::styled(
            format!("   {refused} would be refused, each as you chose"),
            t.hold,
        )
    } else {
        Line::styled(
            format!(
                "   {refused} would be refused; {unchosen} of them not by your choice: check them before writing"
            ),
            t.error,
        )
    };
    out.push(head);
    if outcome.held > 0 {
        out.push(Line::styled(
            format!("   {} would wait for a person (held)", outcome.held),
            t.hold,
        ));
    }
    for w in &outcome.widened_over {
        out.push(Line::styled(format!("   ⚠ {w}"), t.error));
    }
    for r in outcome.refused.iter().take(LISTED_REFUSALS) {
        let time =
            r.at.with_timezone(&state.tz)
                .format("%m-%d %H:%M:%S")
                .to_string();
        out.push(Line::from(vec![
            Span::styled(format!("   {time}  "), t.muted),
            Span::styled(
                format!("{:<12} {:<20} ", fit(&r.grant, 12), fit(&r.tool, 20)),
                t.text,
            ),
            Span::styled(
                format!("{:<13}", verdict_words(r.verdict)),
                if r.cause.chosen() { t.hold } else { t.error },
            ),
            Span::styled(format!(" {}  ", r.cause.words()), t.muted),
            Span::styled(fit(&r.args, 60), t.muted),
        ]));
    }
    if refused > LISTED_REFUSALS {
        out.push(Line::styled(
            format!("   … and {} more", refused - LISTED_REFUSALS),
            t.muted,
        ));
    }
    out.push(Line::default());
    out.push(Line::styled(
        " ⏎ shows the diff of the file; y there writes it, nothing is written before",
        t.muted,
    ));
    out
}

fn fit(text: &str, max: usize) -> String {
    super::fit(text, max).into_owned()
}
