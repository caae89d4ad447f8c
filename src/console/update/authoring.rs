//! Policy authoring: the draft's life in the console, from the first load to "applied by N
//! gateways".
//!
//! The flow: the policy file (from `--policy`, else the path the first gateway reports) is
//! loaded through an [`Effect::LoadPolicy`]; edits (`:allow`, `:limit`, keys in the Policy
//! and Limits views, `r`/`b`/`A` on calls) change the [`Draft`], each re-validated by the
//! policy module; `:w` opens a [`Review`] — the diff of the file and the what-if replay —
//! and `y` asks the event loop to write ([`Effect::WritePolicy`]). When the write is done
//! the console waits for each gateway's `policy_applied` with the new hash, or shows the
//! `policy_rejected` diagnostics. A file changed on disk meanwhile is never overwritten
//! without the operator saying so (`:w!`); `:reload` takes the file instead.
//!
//! Like the rest of [`super`], nothing here does I/O: it changes [`State`] and leaves effects.

use crate::sanitize::terminal_text;

use crate::console::model::draft::{Draft, Edit, unified_diff};
use crate::console::model::editor::{RuleEditor, schema_paths};
use crate::console::model::whatif;
use crate::console::model::{
    Awaiting, Effect, Overlay, PolicyRow, Review, RowKind, State, View, WriteFailure, short_hash,
    tool_class,
};
use crate::policy::RuleMatch;

/// The policy file the console edits: `--policy`, else the first gateway's.
pub(crate) fn policy_path(state: &State) -> Option<String> {
    state.policy_path.clone().or_else(|| {
        state
            .gateways
            .iter()
            .filter_map(|g| g.info.as_ref())
            .map(|i| i.policy.clone())
            .find(|p| !p.is_empty())
    })
}

/// Asks for the policy file once its path is known.
pub(crate) fn ensure_loaded(state: &mut State) {
    if state.authoring.load_requested || state.authoring.draft.is_some() {
        return;
    }
    if let Some(path) = policy_path(state) {
        state.authoring.load_requested = true;
        state.effects.push(Effect::LoadPolicy(path));
    }
}

/// The file was read (first load or `:reload`): it becomes the draft's base.
pub(crate) fn loaded(state: &mut State, path: String, result: Result<String, String>) {
    match result {
        Ok(text) => {
            match &mut state.authoring.draft {
                Some(d) if d.path == path => d.rebase(text),
                _ => state.authoring.draft = Some(Draft::load(&path, text)),
            }
            if let Some(d) = &state.authoring.draft {
                state.authoring.shadow_tally.policy_is(&d.base_hash);
            }
            state.authoring.load_error = None;
            state.authoring.conflict = None;
        }
        Err(e) => {
            let e = terminal_text(&e).into_owned();
            state.complain(format!("cannot read the policy: {e}"));
            state.authoring.load_error = Some(e);
        }
    }
}

/// Applies an edit to the draft; says what changed or why it was refused.
pub(crate) fn edit(state: &mut State, edit: &Edit) -> bool {
    let Some(draft) = state.authoring.draft.as_mut() else {
        let why = state.authoring.load_error.clone().unwrap_or_else(|| {
            "no policy file known: start the console with --policy P, or connect to a gateway"
                .into()
        });
        state.complain(why);
        return false;
    };
    match draft.apply(edit) {
        Ok(said) => {
            state.authoring.refused.clear();
            state.say(format!("draft: {} · :w writes", terminal_text(&said)));
            true
        }
        Err(e) => {
            state.authoring.refused = match &e {
                crate::console::model::draft::EditError::Invalid(d) => {
                    d.0.iter()
                        .map(|d| terminal_text(&d.to_string()).into_owned())
                        .collect()
                }
                _ => Vec::new(),
            };
            state.complain(terminal_text(&e.to_string()));
            false
        }
    }
}

/// `:w` (`force` for `:w!`): shows the diff and the what-if, and asks.
pub(crate) fn review(state: &mut State, force: bool) {
    let Some(draft) = &state.authoring.draft else {
        state.complain("no policy file loaded");
        return;
    };
    if !draft.is_modified() {
        state.say("the draft is the file: nothing to write");
        return;
    }
    let policy = match draft.compiled() {
        Ok(p) => p,
        Err(d) => {
            state.complain(format!(
                "the draft is invalid and cannot be written: {}",
                d.0.first().map(|d| d.to_string()).unwrap_or_default()
            ));
            return;
        }
    };
    if state.authoring.conflict.is_some() && !force {
        state.complain(conflict_text(&draft.path));
        return;
    }
    let diff = unified_diff(&draft.path, &draft.base, draft.text());
    let file = crate::policy::Policy::parse(&draft.base, &draft.path).ok();
    let whatif = whatif::replay(
        file.as_ref(),
        policy,
        state.history.iter().map(|(_, r)| (r.ts, &r.call)),
    );
    // One review at a time: a new one replaces any still open.
    state.overlays.take_review();
    state.overlays.push(Overlay::Review(Review {
        diff: diff
            .into_iter()
            .map(|l| terminal_text(&l).into_owned())
            .collect(),
        whatif,
        force,
        scroll: 0,
    }));
}

fn conflict_text(path: &str) -> String {
    format!(
        "{} changed on disk since it was loaded: :reload takes the file (drops the draft), :w! overwrites it",
        terminal_text(path)
    )
}

/// `y` on the review: write.
pub(crate) fn confirm(state: &mut State) {
    let (Some(review), Some(draft)) =
        (state.overlays.take_review(), state.authoring.draft.as_ref())
    else {
        return;
    };
    state.effects.push(Effect::WritePolicy {
        path: draft.path.clone(),
        text: draft.text().to_owned(),
        expected_hash: draft.base_hash.clone(),
        force: review.force,
    });
    state.say(format!("writing {}…", terminal_text(&draft.path)));
}

/// `n`/`Esc` on the review.
pub(crate) fn cancel(state: &mut State) {
    state.overlays.take_review();
    state.say("not written; the draft is kept");
}

/// The event loop's report of a write.
pub(crate) fn written(state: &mut State, text: String, result: Result<String, WriteFailure>) {
    let n = state.connected();
    let Some(draft) = state.authoring.draft.as_mut() else {
        return;
    };
    match result {
        Ok(hash) => {
            let path = terminal_text(&draft.path).into_owned();
            draft.previous = Some(draft.base.clone());
            draft.rebase(text);
            state.authoring.shadow_tally.policy_is(&draft.base_hash);
            state.authoring.conflict = None;
            state.authoring.awaiting = Some(Awaiting {
                hash: hash.clone(),
                applied: Vec::new(),
                rejected: Vec::new(),
            });
            if n == 0 {
                state.say(format!(
                    "wrote {path} ({}); no gateway connected to apply it",
                    short_hash(&hash)
                ));
            } else {
                state.say(format!(
                    "wrote {path} ({}); waiting for {n} gateway{}…",
                    short_hash(&hash),
                    if n == 1 { "" } else { "s" }
                ));
            }
        }
        Err(WriteFailure::ChangedOnDisk(now)) => {
            let path = draft.path.clone();
            state.authoring.conflict = Some(now);
            state.complain(conflict_text(&path));
        }
        Err(WriteFailure::Io(e)) => state.complain(terminal_text(&e)),
    }
}

/// A gateway applied a policy with `hash`.
pub(crate) fn applied(state: &mut State, conn: usize, hash: &str) {
    if let Some(a) = state.authoring.awaiting.as_mut()
        && a.hash == hash
    {
        if !a.applied.contains(&conn) {
            a.applied.push(conn);
        }
        let n = a.applied.len();
        state.say(format!(
            "policy {} applied by {n} gateway{}",
            short_hash(hash),
            if n == 1 { "" } else { "s" }
        ));
        return;
    }
    // Not the console's write: someone changed the file.
    let Some(draft) = &state.authoring.draft else {
        return;
    };
    if draft.base_hash == hash {
        return;
    }
    if draft.is_modified() {
        let path = draft.path.clone();
        state.authoring.conflict = Some(String::new());
        state.complain(conflict_text(&path));
    } else {
        state.effects.push(Effect::LoadPolicy(draft.path.clone()));
    }
}

/// A gateway refused a policy change.
pub(crate) fn rejected(state: &mut State, conn: usize, diagnostics: &[String]) {
    if let Some(a) = state.authoring.awaiting.as_mut() {
        a.rejected.push((conn, diagnostics.to_vec()));
    }
}

/// `:reload`: take the file as it is now, dropping the draft's edits.
pub(crate) fn reload(state: &mut State) {
    match policy_path(state) {
        Some(path) => {
            state.effects.push(Effect::LoadPolicy(path));
            state.say("reloading the policy file");
        }
        None => state.complain("no policy file known"),
    }
}

/// `:undo`: the version before the console's last write becomes the draft, for review.
pub(crate) fn undo(state: &mut State) {
    let Some(draft) = state.authoring.draft.as_mut() else {
        state.complain("no policy file loaded");
        return;
    };
    let Some(previous) = draft.previous.clone() else {
        state.complain("nothing to undo: no policy written from this console yet");
        return;
    };
    match draft.replace_text(previous) {
        Ok(()) => review(state, false),
        Err(e) => state.complain(terminal_text(&e.to_string())),
    }
}

/// An edit asked for from another view (`r`, `b`, `A`): change the draft, then review.
pub(crate) fn edit_and_review(state: &mut State, e: &Edit) {
    if edit(state, e) {
        review(state, false);
    }
}

/// The tool of the Policy view's selected row.
pub fn selected_tool(state: &State) -> Option<String> {
    if state.view != View::Policy {
        return None;
    }
    state
        .policy_rows()
        .get(state.authoring.selected)
        .map(|r| r.tool.clone())
}

/// `s` in the Policy view: the selected tool's rule becomes the one `toolgate scan` suggests
/// for its risk class. A tool with a rule of its own keeps it until a second `s`: the first
/// says what would change, because the rule may be a person's considered choice.
pub(crate) fn suggest(state: &mut State) {
    let Some(tool) = selected_tool(state) else {
        return;
    };
    let Some(class) = tool_class(state, &tool).cloned() else {
        state.complain(format!(
            "no offered tool is named {}: a suggestion is for one tool the servers offer",
            terminal_text(&tool)
        ));
        return;
    };
    let row = state.policy_rows().get(state.authoring.selected).cloned();
    if let Some(PolicyRow {
        kind: RowKind::Hidden { pointer },
        ..
    }) = row
    {
        state.complain(format!(
            "{} is hidden (by {}): agents never see it, so a rule would change nothing; take it out of hide first",
            terminal_text(&tool),
            terminal_text(&pointer)
        ));
        return;
    }
    let Some(draft) = &state.authoring.draft else {
        return;
    };
    let info = state
        .gateways
        .iter()
        .flat_map(|g| g.tools.iter())
        .find(|t| t.info.name == tool)
        .map(|t| t.info.clone());
    let Some(info) = info else {
        return;
    };
    let suggested = crate::scan::suggested_rule(&info, &class);
    let short = crate::scan::suggest::short_rule(&class);
    let armed = state.authoring.suggest_armed.take();
    if let Some(own) = draft.rule_value(&tool).cloned() {
        if own == suggested {
            state.say(format!(
                "{} already has the suggested rule ({short})",
                terminal_text(&tool)
            ));
            return;
        }
        if armed != Some((tool.clone(), own.clone())) {
            let now = draft
                .rules()
                .into_iter()
                .find(|r| r.key == tool)
                .map(|r| {
                    let mut words = vec![r.action];
                    words.extend(r.limits);
                    words.join(" ")
                })
                .unwrap_or_default();
            state.complain(format!(
                "{} has its own rule ({}); the suggestion for a {} tool is {short}, with its reason: s again replaces the rule, e edits it",
                terminal_text(&tool),
                terminal_text(&now),
                class_words(&class),
            ));
            state.authoring.suggest_armed = Some((tool, own));
            return;
        }
    }
    let e = Edit::SetRule {
        key: tool.clone(),
        rule: suggested,
    };
    if edit(state, &e) {
        state.say(format!(
            "draft: {} → {short} (suggested: {}) · :w writes",
            terminal_text(&tool),
            crate::scan::suggest::because(&class)
        ));
    }
}

/// A class as the Policy view shows it: `write`, or `write (guessed)`.
fn class_words(c: &crate::scan::Classification) -> String {
    if c.guessed {
        format!("{} (guessed)", c.class.as_str())
    } else {
        c.class.as_str().to_owned()
    }
}

/// Opens the rule editor on the Policy view's selected row.
pub(crate) fn open_editor(state: &mut State) {
    let Some(key) = selected_tool(state) else {
        return;
    };
    let Some(draft) = &state.authoring.draft else {
        return;
    };
    let policy = draft.compiled().ok();
    let mut paths: Vec<String> = Vec::new();
    for g in &state.gateways {
        for t in g.tools.iter().map(|t| &t.info) {
            let falls_under = t.name == key
                || matches!(policy.map(|p| p.rule_match(&t.name)),
                    Some(RuleMatch::Glob { pattern, .. }) if pattern == key);
            if falls_under {
                for p in schema_paths(t.input_schema.as_ref()) {
                    if !paths.contains(&p) {
                        paths.push(p);
                    }
                }
            }
        }
    }
    let mut editor = RuleEditor::open(&key, draft.rule_value(&key), paths);
    editor.validate(draft);
    state.overlays.push(Overlay::Editor(Box::new(editor)));
}

/// Runs `f` on the open editor, then re-validates it if `f` says the form changed.
pub(crate) fn with_editor(state: &mut State, f: impl FnOnce(&mut RuleEditor) -> bool) {
    if state.overlays.learn().is_some() {
        // Opened from the learned-policy review: checked against the policy it makes.
        super::learn::with_editor(state, f);
        return;
    }
    let (Some(editor), Some(draft)) = (state.overlays.editor_mut(), &state.authoring.draft) else {
        return;
    };
    if f(editor) {
        editor.validate(draft);
    }
}

/// `C-s` in the editor: the rule goes into the draft, then the write review.
pub(crate) fn save_editor(state: &mut State) {
    let Some(editor) = state.overlays.editor() else {
        return;
    };
    if let Some(first) = editor.problems.first() {
        let first = terminal_text(first).into_owned();
        state.complain(format!("the rule cannot be saved: {first}"));
        return;
    }
    let e = editor.edit();
    if edit(state, &e) {
        state.overlays.close_editor();
        review(state, false);
    }
}
