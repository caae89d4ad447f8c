//! The review of a learned policy: the keys of [`Overlay::Learn`], from the first proposal
//! to the write.
//!
//! `a`/`r`/`s` decide the proposal shown and move on; `e` opens the rule editor on its rule
//! (validated against the policy the other choices make; `C-s` accepts it as edited); `w`
//! widens it; `b` goes back one. After the last comes the summary with the what-if over the
//! recorded calls; `Enter` there puts the result in the policy draft and opens the usual
//! write review (diff, what-if over the recent calls, `y`). Nothing is written without that
//! `y`; leaving or quitting with choices made asks first.

use crate::console::model::draft::Draft;
use crate::console::model::editor::RuleEditor;
use crate::console::model::learn::{Choice, LearnReview, Stage};
use crate::console::model::{Effect, Overlay, Prompt, State};
use crate::learn::ProposalKind;
use crate::sanitize::terminal_text;

use super::authoring;

/// Opens `review` over the console (`--review-learned`): its target becomes the policy file
/// the console edits; one that does not exist yet is the empty text, so the write creates it.
pub(crate) fn start(state: &mut State, review: LearnReview, target_exists: bool) {
    state.policy_path = Some(review.target.clone());
    if !target_exists {
        state.authoring.draft = Some(Draft::load(&review.target, String::new()));
    }
    let n = review.items.len();
    let observed = review.observed();
    state.overlays.push(Overlay::Learn(Box::new(review)));
    if n == 0
        && let Some(r) = state.overlays.learn_mut()
    {
        r.open_summary();
    }
    state.say(format!(
        "{n} proposal{} from {observed} recorded call{}",
        if n == 1 { "" } else { "s" },
        if observed == 1 { "" } else { "s" }
    ));
}

/// `a`, `r`, `s`: decides the proposal shown, then shows the next (or the summary).
pub(crate) fn decide(state: &mut State, choice: Choice) {
    let Some(review) = state.overlays.learn_mut() else {
        return;
    };
    let Some(item) = review.current() else {
        return;
    };
    let tool = item.shown.key.clone();
    let removal = item.proposal.kind == ProposalKind::Remove;
    review.decide(choice);
    let said = match (choice, removal) {
        (Choice::Accepted, false) => format!("{tool}: accepted"),
        (Choice::Accepted, true) => format!("{tool}: its rule will be removed"),
        (Choice::Rejected, false) => format!("{tool}: rejected (its calls stay refused)"),
        (Choice::Rejected, true) => format!("{tool}: rejected (its rule stays)"),
        (Choice::Skipped, _) => format!("{tool}: skipped (not in this write)"),
        (Choice::Open, _) => return,
    };
    state.say(said);
}

/// `w`: widens the proposal shown, or undoes the widening.
pub(crate) fn widen(state: &mut State) {
    let Some(item) = state.overlays.learn_mut().and_then(|r| r.current_mut()) else {
        return;
    };
    match item.toggle_widen() {
        Ok(said) => state.say(said),
        Err(why) => state.complain(why),
    }
}

/// `b`: the previous proposal (from the summary, the last).
pub(crate) fn previous(state: &mut State) {
    if let Some(review) = state.overlays.learn_mut()
        && !review.back()
    {
        state.say("this is the first proposal");
    }
}

/// `→`: the next proposal, once this one is decided.
pub(crate) fn next(state: &mut State) {
    let Some(review) = state.overlays.learn_mut() else {
        return;
    };
    match review.current().map(|i| i.choice) {
        Some(Choice::Open) => state.complain("decide this proposal first (s skips it)"),
        Some(_) => review.advance(),
        None => {}
    }
}

/// `e`: the rule editor on the proposed rule.
pub(crate) fn open_editor(state: &mut State) {
    let Some(review) = state.overlays.learn() else {
        return;
    };
    let Some(item) = review.current() else {
        return;
    };
    let Some(rule) = item.rule.as_ref() else {
        state.complain("a removal has no rule to edit: a accepts it, r keeps the rule");
        return;
    };
    let check = match review.check_draft(review.at) {
        Ok(d) => d,
        Err(e) => {
            state.complain(terminal_text(&e).into_owned());
            return;
        }
    };
    let paths = review.observed_paths(&item.proposal.tool);
    let mut editor = RuleEditor::open(&item.key, Some(rule), paths);
    editor.validate(&check);
    state.overlays.push(Overlay::Editor(Box::new(editor)));
}

/// Re-validates the open editor against the policy the review's other choices make, after
/// `f` changed the form (it says whether it did). Whether a review is open.
pub(crate) fn with_editor(state: &mut State, f: impl FnOnce(&mut RuleEditor) -> bool) -> bool {
    let Some(review) = state.overlays.learn() else {
        return false;
    };
    let check = review.check_draft(review.at);
    if let Some(editor) = state.overlays.editor_mut()
        && f(editor)
    {
        match check {
            Ok(d) => editor.validate(&d),
            Err(e) => editor.problems = vec![terminal_text(&e).into_owned()],
        }
    }
    true
}

/// `C-s` in the editor opened from the review: the proposal is accepted as edited. Whether
/// a review is open.
pub(crate) fn save_editor(state: &mut State) -> bool {
    if state.overlays.learn().is_none() {
        return false;
    }
    let Some(editor) = state.overlays.editor() else {
        return true;
    };
    if let Some(first) = editor.problems.first() {
        let first = terminal_text(first).into_owned();
        state.complain(format!("the rule cannot be saved: {first}"));
        return true;
    }
    let (key, rule) = (editor.key.clone(), editor.rule());
    state.overlays.close_editor();
    if let Some(review) = state.overlays.learn_mut()
        && let Some(item) = review.current_mut()
    {
        item.set_edited(key, rule);
        let tool = item.shown.key.clone();
        review.advance();
        state.say(format!("{tool}: accepted as edited"));
    }
    true
}

/// `Enter` at the summary: the result becomes the policy draft, then the write review.
pub(crate) fn write(state: &mut State) {
    let Some(review) = state.overlays.learn_mut() else {
        return;
    };
    if review.stage != Stage::Summary {
        return;
    }
    // Worked out again: the file may have been loaded, or choices changed, since.
    review.open_summary();
    let target = review.target.clone();
    let text = match review.outcome.as_ref().map(|o| &o.text) {
        Some(Ok(text)) => text.clone(),
        Some(Err(problems)) => {
            let first = problems.first().cloned().unwrap_or_default();
            state.complain(format!("the result is not a valid policy: {first}"));
            return;
        }
        None => return,
    };
    if state.authoring.conflict.is_some() {
        // The file changed on disk since it was read: read it again, and diff against that
        // (the result is made from the learned draft's base, not from the file).
        state.effects.push(Effect::LoadPolicy(target.clone()));
        state.complain(format!(
            "{} changed on disk: reading it again; ⏎ then shows the diff against it",
            terminal_text(&target)
        ));
        return;
    }
    let Some(draft) = state.authoring.draft.as_mut().filter(|d| d.path == target) else {
        let why = state
            .authoring
            .load_error
            .clone()
            .unwrap_or_else(|| format!("{} is not read yet", terminal_text(&target)));
        state.complain(format!("cannot write: {why}"));
        return;
    };
    match draft.replace_text(text) {
        Ok(()) => authoring::review(state, false),
        Err(e) => state.complain(terminal_text(&e.to_string()).into_owned()),
    }
}

/// Esc on a proposal: leaves the review, asking first if choices would be lost.
pub(crate) fn leave(state: &mut State) {
    let Some(review) = state.overlays.learn() else {
        return;
    };
    if review.has_choices() {
        state
            .overlays
            .open_prompt(Prompt::DropLearned { quit: false });
    } else {
        state.overlays.close_learn();
        state.say("learned-policy review closed; nothing was written");
    }
}

/// `q` during the review: asks first if choices would be lost. Whether it asked.
pub(crate) fn quit(state: &mut State) -> bool {
    if state.overlays.learn().is_some_and(|r| r.has_choices()) {
        state
            .overlays
            .open_prompt(Prompt::DropLearned { quit: true });
        return true;
    }
    false
}

/// `y` on the drop question.
pub(crate) fn drop_choices(state: &mut State, quit: bool) {
    state.overlays.take_prompt();
    if quit {
        state.quit = true;
    } else {
        state.overlays.close_learn();
        state.say("learned-policy review closed; its choices were dropped, nothing was written");
    }
}

/// `y` on the write review: if it shows the review's result, the write is the review's.
pub(crate) fn confirmed(state: &mut State) {
    if let Some(review) = state.overlays.learn_mut() {
        review.writing = review.stage == Stage::Summary;
    }
}

/// The write finished (`ok`): the review's choices are in the file, so the review closes;
/// after a failure it stays, with the message saying why.
pub(crate) fn written(state: &mut State, ok: bool) {
    let Some(review) = state.overlays.learn_mut() else {
        return;
    };
    if !review.writing {
        return;
    }
    review.writing = false;
    if !ok {
        return;
    }
    let shadow = review.shadow;
    let target = terminal_text(&review.target).into_owned();
    state.overlays.close_learn();
    if shadow {
        state.say(format!(
            "wrote the learned policy to {target}: run the gateway with --shadow-policy {target} to try it; promote it by renaming it over the policy"
        ));
    }
}
