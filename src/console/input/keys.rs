//! Key bindings: which key means which [`KeyAction`], in which context.
//!
//! One table ([`bindings`]) is the source of truth: [`action_for`] looks keys up in it and the
//! help screen and the hint line list it, so a key cannot work without being documented or be
//! documented without working. Keys are scoped (mitmproxy style): a binding applies in its
//! view, and `a`/`d` only where a held call is selected. The keys of the prompts (a text
//! prompt's Enter and Esc, a confirmation's y/n, the write review's scrolling) are in the
//! same table; a text prompt and the rule editor take every other key as text.

use std::sync::LazyLock;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tui_input::InputRequest;

use super::action::KeyAction;
use crate::console::model::learn::Stage;
use crate::console::model::{Overlay, Prompt, RowKind, State, View, tool_class};

/// How many lines `J`/`K` scroll a detail pane or the write review, everywhere.
pub const SCROLL_STEP: i16 = 3;

/// How many lines `PgDn`/`PgUp` scroll the write review.
const REVIEW_PAGE: i16 = 10;

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every view.
    Global,
    /// The Live view.
    Live,
    /// The Holds view.
    Holds,
    /// Live or Holds, when the selected call is held now.
    HeldCall,
    /// Live or Holds, when a call is selected.
    Call,
    /// Live or Holds, when a call is selected and the console has a case file (`--cases`).
    CaseCall,
    /// Live or Holds, when the detail pane is open.
    Detail,
    /// The Policy view.
    Policy,
    /// The Limits view.
    Limits,
    /// The Policy view, when the selected row is a tool an upstream server offers (so it has
    /// a risk class and a suggested rule).
    OfferedTool,
    /// The Policy view, when the selected row is a shadow rule.
    ShadowRule,
    /// The Tools view.
    Tools,
    /// The Tools view, when a changed tool is selected.
    ToolChange,
    /// Policy or Limits (where the draft is edited).
    Draft,
    /// The rule editor is open (only these keys apply; others type text).
    Editor,
    /// A text prompt is open on the bottom line (only these keys apply; others type text).
    TextPrompt,
    /// `q` with calls held is asking: quit anyway?
    ConfirmQuit,
    /// The write review (diff and what-if) is asking: write it?
    Review,
    /// The learned-policy review shows a proposal.
    LearnProposal,
    /// The learned-policy review shows its summary and what-if.
    LearnSummary,
}

/// One key binding.
#[derive(Debug, Clone)]
pub struct Binding {
    pub scope: Scope,
    pub keys: Vec<(KeyCode, KeyModifiers)>,
    /// How the keys are written in help, e.g. `j ↓`.
    pub label: &'static str,
    pub action: KeyAction,
    /// What it does, for help.
    pub help: &'static str,
    /// Its word on the hint line at the bottom, if it is shown there.
    pub hint: Option<&'static str>,
}

fn b(
    scope: Scope,
    keys: &[KeyCode],
    label: &'static str,
    action: KeyAction,
    help: &'static str,
    hint: Option<&'static str>,
) -> Binding {
    Binding {
        scope,
        keys: keys.iter().map(|k| (*k, KeyModifiers::NONE)).collect(),
        label,
        action,
        help,
        hint,
    }
}

/// Every binding, most specific scopes first.
pub(crate) fn bindings() -> &'static [Binding] {
    static BINDINGS: LazyLock<Vec<Binding>> = LazyLock::new(|| {
        use KeyCode::*;
        use Scope::*;
        let mut v = vec![
            b(
                Detail,
                &[Char('J')],
                "J",
                KeyAction::ScrollDetail(SCROLL_STEP),
                "scroll the detail down",
                None,
            ),
            b(
                Detail,
                &[Char('K')],
                "K",
                KeyAction::ScrollDetail(-SCROLL_STEP),
                "scroll the detail up",
                None,
            ),
            b(
                HeldCall,
                &[Char('a')],
                "a",
                KeyAction::Approve,
                "approve the held call",
                Some("approve"),
            ),
            b(
                HeldCall,
                &[Char('d')],
                "d",
                KeyAction::Deny,
                "deny the held call (asks for a reason)",
                Some("deny"),
            ),
            b(
                HeldCall,
                &[Char('A')],
                "A",
                KeyAction::ApproveAndAllow,
                "approve, and write an allow rule for its tool (diff, y/n)",
                None,
            ),
            b(
                CaseCall,
                &[Char('T')],
                "T",
                KeyAction::WriteCase,
                "append this call, with its decision, to the --cases file as a test case",
                Some("case"),
            ),
            b(
                ToolChange,
                &[Char('J')],
                "J",
                KeyAction::ScrollDetail(SCROLL_STEP),
                "scroll the change down",
                None,
            ),
            b(
                ToolChange,
                &[Char('K')],
                "K",
                KeyAction::ScrollDetail(-SCROLL_STEP),
                "scroll the change up",
                None,
            ),
            b(
                ToolChange,
                &[Char('a'), Char('p')],
                "a p",
                KeyAction::AcceptPin,
                "accept the new definition: pin it on its gateway (calls go through again)",
                Some("accept+pin"),
            ),
            b(
                ToolChange,
                &[Char('x')],
                "x",
                KeyAction::KeepQuarantined,
                "keep it quarantined; hide it here until it changes again",
                Some("keep"),
            ),
            b(
                Tools,
                &[Char('g'), Home],
                "g Home",
                KeyAction::SelectFirst,
                "first changed tool",
                None,
            ),
            b(
                Call,
                &[Char('r')],
                "r",
                KeyAction::LimitTool,
                "rate-limit this call's tool (asks MAX/WINDOW, then diff, y/n)",
                Some("limit"),
            ),
            b(
                Call,
                &[Char('b')],
                "b",
                KeyAction::BlockTool,
                "block this call's tool: a deny rule (diff, y/n)",
                Some("block"),
            ),
            b(
                Policy,
                &[Char('a')],
                "a",
                KeyAction::AllowTool,
                "draft: allow the selected tool",
                Some("allow"),
            ),
            b(
                Policy,
                &[Char('d')],
                "d",
                KeyAction::DenyTool,
                "draft: deny the selected tool (:block TOOL REASON for a reason)",
                Some("deny"),
            ),
            b(
                Policy,
                &[Char('h')],
                "h",
                KeyAction::HoldTool,
                "draft: hold the selected tool's calls for approval",
                Some("hold"),
            ),
            b(
                Policy,
                &[Char('l')],
                "l",
                KeyAction::LimitTool,
                "draft: limit the selected tool (asks MAX/WINDOW)",
                Some("limit"),
            ),
            b(
                Policy,
                &[Char('u')],
                "u",
                KeyAction::UnlimitTool,
                "draft: remove the selected tool's limits",
                None,
            ),
            b(
                ShadowRule,
                &[Char('P')],
                "P",
                KeyAction::PromoteShadow,
                "promote the shadow rule: enforce it (diff, y/n)",
                Some("promote"),
            ),
            b(
                OfferedTool,
                &[Char('s')],
                "s",
                KeyAction::SuggestRule,
                "draft: the rule suggested for the tool's risk class (a rule of its own: s twice)",
                Some("suggest"),
            ),
            b(
                Limits,
                &[Char('m')],
                "m",
                KeyAction::EditCounterMax,
                "edit the selected counter's max",
                Some("max"),
            ),
            b(
                Limits,
                &[Char('t')],
                "t",
                KeyAction::EditCounterWindow,
                "edit the selected counter's window",
                Some("window"),
            ),
            b(
                Draft,
                &[Char('w')],
                "w",
                KeyAction::ReviewWrite,
                "write the draft: diff and what-if, then y/n (also :w)",
                Some("write"),
            ),
            b(
                Call,
                &[Enter],
                "⏎",
                KeyAction::OpenDetail,
                "detail of the selected call",
                Some("detail"),
            ),
            b(
                Live,
                &[Char('/')],
                "/",
                KeyAction::OpenFilter,
                "filter: tool:create_* decision:deny grant:ci text",
                Some("filter"),
            ),
            b(
                Live,
                &[Char('F'), End],
                "F End",
                KeyAction::Follow,
                "follow the newest call",
                Some("follow"),
            ),
            b(
                Live,
                &[Char('g'), Home],
                "g Home",
                KeyAction::SelectFirst,
                "oldest call",
                None,
            ),
            b(
                Holds,
                &[Char('g'), Home],
                "g Home",
                KeyAction::SelectFirst,
                "oldest hold",
                None,
            ),
            b(
                Draft,
                &[Char('g'), Home],
                "g Home",
                KeyAction::SelectFirst,
                "first row",
                None,
            ),
            b(
                Global,
                &[Char('k'), Up],
                "k ↑",
                KeyAction::SelectUp,
                "move up (in Live: pauses following)",
                None,
            ),
            b(
                Global,
                &[Char('j'), Down],
                "j ↓",
                KeyAction::SelectDown,
                "move down",
                None,
            ),
            b(
                Global,
                &[PageUp],
                "PgUp",
                KeyAction::PageUp,
                "page up",
                None,
            ),
            b(
                Global,
                &[PageDown],
                "PgDn",
                KeyAction::PageDown,
                "page down",
                None,
            ),
            b(
                Global,
                &[Char('1')],
                "1",
                KeyAction::ShowView(View::Live),
                "Live view",
                None,
            ),
            b(
                Global,
                &[Char('2')],
                "2",
                KeyAction::ShowView(View::Holds),
                "Holds view",
                None,
            ),
            b(
                Global,
                &[Char('3')],
                "3",
                KeyAction::ShowView(View::Policy),
                "Policy view",
                None,
            ),
            b(
                Global,
                &[Char('4')],
                "4",
                KeyAction::ShowView(View::Limits),
                "Limits view",
                None,
            ),
            b(
                Global,
                &[Char('5')],
                "5",
                KeyAction::ShowView(View::Tools),
                "Tools view: changed tool definitions to review",
                None,
            ),
            b(
                Global,
                &[Tab],
                "Tab",
                KeyAction::NextView,
                "next view",
                None,
            ),
            b(
                Global,
                &[BackTab],
                "S-Tab",
                KeyAction::PrevView,
                "previous view",
                None,
            ),
            b(
                Global,
                &[Char(':')],
                ":",
                KeyAction::OpenCommandLine,
                "command line (:theme NAME, :q, ...)",
                Some("command"),
            ),
            b(
                Global,
                &[Char('?')],
                "?",
                KeyAction::ToggleHelp,
                "this help",
                Some("help"),
            ),
            b(
                Global,
                &[Esc],
                "Esc",
                KeyAction::Back,
                "back out: help, detail, filter, pause",
                None,
            ),
            b(
                Global,
                &[Char('q')],
                "q",
                KeyAction::Quit,
                "quit (asks if calls are held)",
                Some("quit"),
            ),
        ];
        let ctrl =
            |c: char, label: &'static str, action: KeyAction, help: &'static str, hint| Binding {
                scope: Editor,
                keys: vec![(Char(c), KeyModifiers::CONTROL)],
                label,
                action,
                help,
                hint,
            };
        let editor = [
            b(
                Editor,
                &[Tab, Down],
                "Tab ↓",
                KeyAction::EditorNext,
                "next field",
                None,
            ),
            b(
                Editor,
                &[BackTab, Up],
                "S-Tab ↑",
                KeyAction::EditorPrev,
                "previous field",
                None,
            ),
            b(
                Editor,
                &[Left],
                "←",
                KeyAction::EditorChoose(-1),
                "previous choice (action, scope, kind, op) / cursor left",
                None,
            ),
            b(
                Editor,
                &[Right],
                "→",
                KeyAction::EditorChoose(1),
                "next choice / cursor right",
                Some("choose"),
            ),
            b(
                Editor,
                &[Enter],
                "⏎",
                KeyAction::EditorEnter,
                "on a + row: add; else next field",
                None,
            ),
            ctrl(
                'l',
                "C-l",
                KeyAction::EditorAddLimit,
                "add a limit",
                Some("+limit"),
            ),
            ctrl(
                'n',
                "C-n",
                KeyAction::EditorAddCondition,
                "add a condition",
                Some("+condition"),
            ),
            ctrl(
                'd',
                "C-d",
                KeyAction::EditorRemove,
                "remove the limit or condition under the cursor",
                Some("remove"),
            ),
            ctrl(
                'p',
                "C-p",
                KeyAction::EditorCompletePath,
                "condition path: next one from the tool's inputSchema",
                Some("path"),
            ),
            ctrl(
                's',
                "C-s",
                KeyAction::EditorSave,
                "save the rule into the draft, then diff and y/n",
                Some("save+write"),
            ),
            b(
                Editor,
                &[Esc],
                "Esc",
                KeyAction::Back,
                "close the editor (unsaved changes are dropped)",
                Some("close"),
            ),
        ];
        let prompts = [
            b(TextPrompt, &[Enter], "⏎", KeyAction::Submit, "accept", None),
            b(TextPrompt, &[Esc], "Esc", KeyAction::Back, "cancel", None),
            b(
                ConfirmQuit,
                &[Char('y'), Char('Y')],
                "y",
                KeyAction::Confirm,
                "quit",
                None,
            ),
            b(
                ConfirmQuit,
                &[Char('n'), Char('N'), Esc],
                "n Esc",
                KeyAction::Cancel,
                "stay",
                None,
            ),
            b(
                Review,
                &[Char('y'), Char('Y')],
                "y",
                KeyAction::Confirm,
                "write the draft",
                None,
            ),
            b(
                Review,
                &[Char('n'), Char('N'), Esc],
                "n Esc",
                KeyAction::Cancel,
                "keep the draft, write nothing",
                None,
            ),
            b(
                Review,
                &[Char('j'), Down],
                "j ↓",
                KeyAction::ScrollDetail(1),
                "scroll down a line",
                None,
            ),
            b(
                Review,
                &[Char('k'), Up],
                "k ↑",
                KeyAction::ScrollDetail(-1),
                "scroll up a line",
                None,
            ),
            b(
                Review,
                &[Char('J')],
                "J",
                KeyAction::ScrollDetail(SCROLL_STEP),
                "scroll down",
                None,
            ),
            b(
                Review,
                &[Char('K')],
                "K",
                KeyAction::ScrollDetail(-SCROLL_STEP),
                "scroll up",
                None,
            ),
            b(
                Review,
                &[PageDown],
                "PgDn",
                KeyAction::ScrollDetail(REVIEW_PAGE),
                "scroll down a page",
                None,
            ),
            b(
                Review,
                &[PageUp],
                "PgUp",
                KeyAction::ScrollDetail(-REVIEW_PAGE),
                "scroll up a page",
                None,
            ),
        ];
        let learn = [
            b(
                LearnProposal,
                &[Char('a')],
                "a",
                KeyAction::LearnAccept,
                "accept the proposed rule",
                Some("accept"),
            ),
            b(
                LearnProposal,
                &[Char('r')],
                "r",
                KeyAction::LearnReject,
                "reject it (its tool's calls stay refused)",
                Some("reject"),
            ),
            b(
                LearnProposal,
                &[Char('e')],
                "e",
                KeyAction::LearnEdit,
                "edit the rule in the rule editor (C-s accepts it as edited)",
                Some("edit"),
            ),
            b(
                LearnProposal,
                &[Char('w')],
                "w",
                KeyAction::LearnWiden,
                "widen: glob the tool name, loosen numeric ranges (again: undo)",
                Some("widen"),
            ),
            b(
                LearnProposal,
                &[Char('s')],
                "s",
                KeyAction::LearnSkip,
                "skip: decide on a later review (not in this write)",
                Some("skip"),
            ),
            b(
                LearnProposal,
                &[Char('b'), Left],
                "b ←",
                KeyAction::LearnPrevious,
                "back to the previous proposal",
                Some("back"),
            ),
            b(
                LearnProposal,
                &[Right],
                "→",
                KeyAction::LearnNext,
                "on to the next proposal, keeping this one's choice",
                None,
            ),
            b(
                LearnProposal,
                &[Char('J')],
                "J",
                KeyAction::ScrollDetail(SCROLL_STEP),
                "scroll the proposal down",
                None,
            ),
            b(
                LearnProposal,
                &[Char('K')],
                "K",
                KeyAction::ScrollDetail(-SCROLL_STEP),
                "scroll the proposal up",
                None,
            ),
            b(
                LearnProposal,
                &[Esc],
                "Esc",
                KeyAction::Back,
                "leave the review (asks if choices would be lost)",
                None,
            ),
            b(
                LearnProposal,
                &[Char('q')],
                "q",
                KeyAction::Quit,
                "quit (asks if choices would be lost)",
                Some("quit"),
            ),
            b(
                LearnSummary,
                &[Enter, Char('w')],
                "⏎ w",
                KeyAction::LearnWrite,
                "the diff of the result, then y writes it",
                Some("diff+write"),
            ),
            b(
                LearnSummary,
                &[Char('b'), Left, Esc],
                "b ← Esc",
                KeyAction::LearnPrevious,
                "back to the last proposal",
                Some("back"),
            ),
            b(
                LearnSummary,
                &[Char('j'), Down],
                "j ↓",
                KeyAction::ScrollDetail(1),
                "scroll down a line",
                None,
            ),
            b(
                LearnSummary,
                &[Char('k'), Up],
                "k ↑",
                KeyAction::ScrollDetail(-1),
                "scroll up a line",
                None,
            ),
            b(
                LearnSummary,
                &[Char('J')],
                "J",
                KeyAction::ScrollDetail(SCROLL_STEP),
                "scroll down",
                None,
            ),
            b(
                LearnSummary,
                &[Char('K')],
                "K",
                KeyAction::ScrollDetail(-SCROLL_STEP),
                "scroll up",
                None,
            ),
            b(
                LearnSummary,
                &[Char('q')],
                "q",
                KeyAction::Quit,
                "quit (asks if choices would be lost)",
                Some("quit"),
            ),
        ];
        v.splice(0..0, learn);
        v.splice(0..0, editor);
        v.splice(0..0, prompts);
        v.insert(
            v.iter().position(|b| b.scope == Policy).unwrap_or(0),
            b(
                Policy,
                &[Enter, Char('e')],
                "⏎ e",
                KeyAction::OpenRuleEditor,
                "edit the selected rule in a form",
                Some("edit"),
            ),
        );
        v.push(Binding {
            scope: Global,
            keys: vec![(Char('c'), KeyModifiers::CONTROL)],
            label: "C-c",
            action: KeyAction::ForceQuit,
            help: "quit now",
            hint: None,
        });
        v
    });
    &BINDINGS
}

/// The scope the top layer over the view keeps the keys to, if it keeps them: a prompt,
/// the write review and the rule editor take every key; help lets the view's keys through.
fn overlay_scope(overlay: &Overlay) -> Option<Scope> {
    match overlay {
        Overlay::Prompt(Prompt::ConfirmQuit | Prompt::DropLearned { .. }) => {
            Some(Scope::ConfirmQuit)
        }
        Overlay::Prompt(_) => Some(Scope::TextPrompt),
        Overlay::Review(_) => Some(Scope::Review),
        Overlay::Editor(_) => Some(Scope::Editor),
        Overlay::Learn(l) => Some(match l.stage {
            Stage::Proposals => Scope::LearnProposal,
            Stage::Summary => Scope::LearnSummary,
        }),
        Overlay::Help => None,
    }
}

/// Whether `scope` applies to the state as it is now. The top layer over the view gets the
/// keys first: while a prompt, the review or the editor is on top, only its scope applies.
pub(crate) fn in_scope(state: &State, scope: Scope) -> bool {
    if let Some(kept) = state.overlays.top().and_then(overlay_scope) {
        return scope == kept;
    }
    let call_view = matches!(state.view, View::Live | View::Holds);
    match scope {
        Scope::Editor
        | Scope::TextPrompt
        | Scope::ConfirmQuit
        | Scope::Review
        | Scope::LearnProposal
        | Scope::LearnSummary => false,
        Scope::Global => true,
        Scope::Live => state.view == View::Live,
        Scope::Holds => state.view == View::Holds,
        Scope::Policy => state.view == View::Policy,
        Scope::Limits => state.view == View::Limits,
        Scope::OfferedTool => state
            .policy_rows()
            .get(state.authoring.selected)
            .filter(|_| state.view == View::Policy)
            .is_some_and(|r| tool_class(state, &r.tool).is_some()),
        Scope::ShadowRule => state
            .policy_rows()
            .get(state.authoring.selected)
            .filter(|_| state.view == View::Policy)
            .is_some_and(|r| matches!(&r.kind, RowKind::Rule { rule, .. } if rule.shadow)),
        Scope::Tools => state.view == View::Tools,
        Scope::ToolChange => state.view == View::Tools && state.selected_review().is_some(),
        Scope::Draft => matches!(state.view, View::Policy | View::Limits),
        Scope::Call => call_view && state.selected_call().is_some(),
        Scope::CaseCall => {
            call_view && state.cases_path.is_some() && state.selected_call().is_some()
        }
        Scope::Detail => call_view && state.detail_call_id().is_some(),
        Scope::HeldCall => {
            call_view
                && state
                    .selected_call()
                    .is_some_and(|c| state.is_held(&c.call_id))
        }
    }
}

/// The bindings that apply now, in table order (for help and the hint line).
pub fn active_bindings(state: &State) -> impl Iterator<Item = &'static Binding> + '_ {
    bindings().iter().filter(|b| in_scope(state, b.scope))
}

/// The action a key asks for, in the current context.
pub(crate) fn action_for(state: &State, key: KeyEvent) -> Option<KeyAction> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    // Ctrl-C quits from anywhere, a prompt or the editor included.
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && key.code == KeyCode::Char('c') {
        return Some(KeyAction::ForceQuit);
    }
    // Shift arrives with upper-case characters on most terminals; compare without it.
    let mods = key.modifiers - KeyModifiers::SHIFT;
    let bound = active_bindings(state)
        .find(|b| b.keys.iter().any(|(c, m)| *c == key.code && *m == mods))
        .map(|b| b.action.clone());
    let takes_text = match state.overlays.top() {
        Some(Overlay::Editor(_)) => true,
        Some(Overlay::Prompt(p)) => p.takes_text(),
        _ => false,
    };
    if bound.is_none() && takes_text {
        // In a text prompt or the editor every other key is text.
        return text_edit(key).map(KeyAction::Edit);
    }
    bound
}

/// A key typed into a text prompt.
fn text_edit(key: KeyEvent) -> Option<InputRequest> {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let alt = key.modifiers.contains(KeyModifiers::ALT);
    Some(match key.code {
        KeyCode::Char('u') if ctrl => InputRequest::DeleteLine,
        KeyCode::Char('w') if ctrl => InputRequest::DeletePrevWord,
        KeyCode::Char('a') if ctrl => InputRequest::GoToStart,
        KeyCode::Char('e') if ctrl => InputRequest::GoToEnd,
        KeyCode::Char('k') if ctrl => InputRequest::DeleteTillEnd,
        KeyCode::Char(c) if !ctrl && !alt => InputRequest::InsertChar(c),
        KeyCode::Backspace if ctrl || alt => InputRequest::DeletePrevWord,
        KeyCode::Backspace => InputRequest::DeletePrevChar,
        KeyCode::Delete => InputRequest::DeleteNextChar,
        KeyCode::Left if ctrl || alt => InputRequest::GoToPrevWord,
        KeyCode::Right if ctrl || alt => InputRequest::GoToNextWord,
        KeyCode::Left => InputRequest::GoToPrevChar,
        KeyCode::Right => InputRequest::GoToNextChar,
        KeyCode::Home => InputRequest::GoToStart,
        KeyCode::End => InputRequest::GoToEnd,
        _ => return None,
    })
}
