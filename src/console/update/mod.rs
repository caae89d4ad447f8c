//! The update: the one place the console's state changes.
//!
//! [`update`] takes one [`AppEvent`] (a key, an action, a message from a gateway, the answer
//! to an effect, a tick) and the current time, and changes the [`State`]. Nothing here
//! touches a socket, a terminal, a file or the system clock: what the console wants done
//! outside is left in [`State::effects`] for the event loop, whose answers come back as
//! events. That is what lets the tests drive every behaviour directly.
//!
//! This layer reads the model and the input layer (to turn a key into a [`KeyAction`]); it
//! never imports the view.

pub(crate) mod authoring;
mod cases;
mod command;
mod ingest;
pub(crate) mod learn;
mod pins;
mod remote_policy;

use chrono::{DateTime, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use tui_input::Input;

use crate::console::input::{KeyAction, keys};
use crate::console::model::draft::{Edit, parse_rate, parse_window};
use crate::console::model::editor::Field;
use crate::console::model::filter::{Filter, Matcher};
use crate::console::model::learn::Choice;
use crate::console::model::{
    Effect, Layout, Link, MESSAGE_TTL, Overlay, Pending, Prompt, SeenGateway, State, View,
    WriteFailure, limit_rows, window_short,
};
use crate::sanitize::terminal_text;
use crate::wire::{ClientMsg, Event};

/// Something that happened, for [`update`].
// Gateway events are nearly all of the traffic and are moved, not copied, through the
// channel; boxing them would add an allocation per event on the hottest path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AppEvent {
    /// A key from the terminal; mapped to a [`KeyAction`] by [`keys::action_for`].
    Key(KeyEvent),
    /// An action (from a key, a command, or a test).
    Act(KeyAction),
    /// A message from the gateway reached through connection `gateway`.
    Net { gateway: String, event: Event },
    /// The connection to `gateway` changed state.
    Link { gateway: String, link: Link },
    /// A command could not be sent to `gateway` (not connected, connection broke).
    SendFailed {
        gateway: String,
        id: u64,
        error: String,
    },
    /// Time passed (countdowns, message expiry).
    Tick,
    /// The policy file was read (for [`Effect::LoadPolicy`]).
    PolicyFile {
        path: String,
        result: Result<String, String>,
    },
    /// The policy file was written, or not (for [`Effect::WritePolicy`]); `text` is what
    /// was to be written, the result the new hash.
    PolicyWritten {
        text: String,
        result: Result<String, WriteFailure>,
    },
    /// A theme asked for with [`Effect::LoadTheme`] now applies (its name), or could not be
    /// loaded (why). The event loop keeps the theme itself: the model holds no styles.
    ThemeLoaded(Result<String, String>),
    /// The case file was appended to, or not (for [`Effect::AppendCase`]): why not.
    CaseWritten {
        path: String,
        name: String,
        fill_in: usize,
        result: Result<(), String>,
    },
    /// The terminal's size: at the start and on every resize.
    Resize { width: u16, height: u16 },
}

/// Applies one event to the state.
pub fn update(state: &mut State, event: AppEvent, now: DateTime<Utc>) {
    state.now = now;
    match event {
        AppEvent::Key(key) => {
            // A terminal reports Esc quickly followed by a key as that key with Alt; no
            // binding uses Alt, so it is taken as the operator meant it: Esc, then the key.
            let alt_char = key.modifiers.contains(KeyModifiers::ALT)
                && !key.modifiers.contains(KeyModifiers::CONTROL)
                && matches!(key.code, KeyCode::Char(_));
            let key = if alt_char {
                apply(state, KeyAction::Back);
                KeyEvent::new(key.code, key.modifiers - KeyModifiers::ALT)
            } else {
                key
            };
            if let Some(action) = keys::action_for(state, key) {
                apply(state, action);
            }
        }
        AppEvent::Act(action) => apply(state, action),
        AppEvent::Net { gateway, event } => ingest::ingest(state, &gateway, event),
        AppEvent::Link { gateway, link } => {
            let (conn, g) = state.gateway_mut(&gateway);
            let was_up = g.is_up();
            g.link = link.clone();
            let label = g.label().to_owned();
            // Its unanswered policy commands end with the connection (said after the loss
            // itself, so that the status line shows what became of the write).
            let lost = match &link {
                Link::Down { error, .. } if was_up => Some(terminal_text(error).into_owned()),
                Link::Gone => Some("the gateway has stopped".to_owned()),
                _ => None,
            };
            match link {
                Link::Down { error, .. } if was_up => state.complain(format!(
                    "lost gateway {label}: {}; reconnecting",
                    terminal_text(&error)
                )),
                Link::Gone => state.say(format!("gateway {label} has stopped")),
                _ => {}
            }
            if let Some(error) = lost {
                remote_policy::connection_lost(state, conn, &error);
            }
            if matches!(
                state
                    .gateways
                    .iter()
                    .find(|g| g.key == gateway)
                    .map(|g| &g.link),
                Some(Link::Gone)
            ) {
                // Its holds can no longer be resolved from here.
                let conn = state.gateway_index.get(&gateway).copied();
                state.holds.retain(|h| Some(h.conn) != conn);
                ingest::clamp_holds_selection(state);
            }
        }
        AppEvent::SendFailed { id, error, .. } => {
            if !pins::send_failed(state, id, &error)
                && !remote_policy::send_failed(state, id, &error)
                && let Some(p) = state.pending.remove(&id)
            {
                let verb = if p.approve { "approve" } else { "deny" };
                state.complain(format!(
                    "could not {verb} {}: {}",
                    p.call_id,
                    terminal_text(&error)
                ));
            }
        }
        AppEvent::Tick => {}
        AppEvent::PolicyFile { path, result } => authoring::loaded(state, path, result),
        AppEvent::PolicyWritten { text, result } => {
            let ok = result.is_ok();
            authoring::written(state, text, result);
            learn::written(state, ok);
        }
        AppEvent::CaseWritten {
            path,
            name,
            fill_in,
            result,
        } => cases::written(state, &path, &name, fill_in, result),
        AppEvent::ThemeLoaded(Ok(name)) => state.say(format!("theme {}", terminal_text(&name))),
        AppEvent::ThemeLoaded(Err(e)) => state.complain(e),
        AppEvent::Resize { width, height } => state.screen = Layout { width, height },
    }
    authoring::ensure_loaded(state);
    pins::prepare_selected(state);
    state.refresh_derived();
    if state
        .message
        .as_ref()
        .is_some_and(|m| now - m.at > MESSAGE_TTL)
    {
        state.message = None;
    }
}

/// Carries out one operator action.
pub(crate) fn apply(state: &mut State, action: KeyAction) {
    // Rows the action may read are made from what the event so far left.
    state.refresh_derived();
    // A suggestion waiting for its second `s` is forgotten once the operator does anything
    // else, so a later `s` never replaces a rule on the strength of an old warning.
    if action != KeyAction::SuggestRule {
        state.authoring.suggest_armed = None;
    }
    match action {
        KeyAction::ShowView(v) => {
            state.view = v;
            state.overlays.close_help();
        }
        KeyAction::NextView => state.view = state.view.step(1),
        KeyAction::PrevView => state.view = state.view.step(-1),
        KeyAction::ToggleHelp => match state.overlays.top() {
            Some(Overlay::Help) => {
                state.overlays.pop();
            }
            _ => state.overlays.push(Overlay::Help),
        },
        KeyAction::OpenCommandLine => state
            .overlays
            .open_prompt(Prompt::Command(Input::default())),
        KeyAction::Quit => {
            if learn::quit(state) {
                return;
            }
            if state.holds.is_empty() {
                state.quit = true;
            } else {
                state.overlays.open_prompt(Prompt::ConfirmQuit);
            }
        }
        KeyAction::ForceQuit => state.quit = true,
        KeyAction::Back => back(state),
        KeyAction::SelectUp => move_selection(state, -1),
        KeyAction::SelectDown => move_selection(state, 1),
        KeyAction::PageUp => move_selection(state, -page(state)),
        KeyAction::PageDown => move_selection(state, page(state)),
        KeyAction::SelectFirst => match state.view {
            View::Live => {
                state.live.selected = state.live_pos(0);
            }
            View::Holds => {
                state.holds_view.selected = 0;
                state.holds_view.resolved_elsewhere = None;
            }
            View::Policy => state.authoring.selected = 0,
            View::Limits => state.authoring.limits_selected = 0,
            View::Tools => {
                state.tools_view.selected = 0;
                state.tools_view.scroll = 0;
            }
        },
        KeyAction::Follow => {
            if state.view == View::Live {
                state.live.selected = None;
            }
        }
        KeyAction::OpenFilter => {
            state.view = View::Live;
            let text = state.live.filter.source.clone();
            let cursor = text.chars().count();
            state
                .overlays
                .open_prompt(Prompt::Filter(Input::new(text).with_cursor(cursor)));
        }
        KeyAction::ClearFilter => set_filter(state, ""),
        KeyAction::OpenDetail => {
            let id = state.selected_call().map(|c| c.call_id.to_string());
            match state.view {
                View::Live => {
                    state.live.detail = id;
                    state.live.detail_scroll = 0;
                    // Looking at a call pins it: new arrivals must not change what is shown.
                    if state.live.selected.is_none() {
                        state.live.selected =
                            state.live_selected_index().and_then(|i| state.live_pos(i));
                    }
                }
                View::Holds => {
                    state.holds_view.detail = id;
                    state.holds_view.detail_scroll = 0;
                }
                _ => {}
            }
        }
        KeyAction::Approve => {
            if let Some(call_id) = selected_hold(state) {
                send_resolution(state, &call_id, true, None);
            } else {
                already_resolved(state);
            }
        }
        KeyAction::Deny => {
            if let Some(call_id) = selected_hold(state) {
                state.overlays.open_prompt(Prompt::DenyReason {
                    call_id,
                    input: Input::default(),
                });
            } else {
                already_resolved(state);
            }
        }
        KeyAction::Edit(req) if matches!(state.overlays.top(), Some(Overlay::Editor(_))) => {
            authoring::with_editor(state, |e| e.type_text(req));
        }
        KeyAction::Edit(req) => edit_prompt(state, req),
        KeyAction::Submit => submit(state),
        KeyAction::Confirm => match state.overlays.top() {
            Some(Overlay::Prompt(Prompt::ConfirmQuit)) => state.quit = true,
            Some(Overlay::Prompt(Prompt::DropLearned { quit })) => {
                let quit = *quit;
                learn::drop_choices(state, quit);
            }
            Some(Overlay::Review(_)) => {
                authoring::confirm(state);
                learn::confirmed(state);
            }
            _ => {}
        },
        KeyAction::Cancel => match state.overlays.top() {
            Some(Overlay::Prompt(Prompt::ConfirmQuit | Prompt::DropLearned { .. })) => {
                state.overlays.pop();
            }
            Some(Overlay::Review(_)) => authoring::cancel(state),
            _ => {}
        },
        KeyAction::LimitTool => {
            if let Some(tool) = acted_on_tool(state) {
                state.overlays.open_prompt(Prompt::Rate {
                    tool,
                    input: Input::default(),
                });
            }
        }
        KeyAction::BlockTool => {
            if let Some(tool) = acted_on_tool(state) {
                authoring::edit_and_review(state, &Edit::Deny(tool, None));
            }
        }
        KeyAction::ApproveAndAllow => {
            if let Some(call_id) = selected_hold(state) {
                let tool = acted_on_tool(state);
                send_resolution(state, &call_id, true, None);
                if let Some(tool) = tool {
                    authoring::edit_and_review(state, &Edit::Allow(tool));
                }
            } else {
                already_resolved(state);
            }
        }
        KeyAction::AllowTool
        | KeyAction::DenyTool
        | KeyAction::HoldTool
        | KeyAction::UnlimitTool => {
            if let Some(tool) = authoring::selected_tool(state) {
                let edit = match action {
                    KeyAction::AllowTool => Edit::Allow(tool),
                    KeyAction::DenyTool => Edit::Deny(tool, None),
                    KeyAction::HoldTool => Edit::Hold(tool),
                    _ => Edit::Unlimit(tool),
                };
                authoring::edit(state, &edit);
            }
        }
        KeyAction::SuggestRule => authoring::suggest(state),
        KeyAction::PromoteShadow => {
            if let Some(tool) = authoring::selected_tool(state) {
                authoring::edit_and_review(state, &Edit::Promote(tool));
            }
        }
        KeyAction::AcceptPin => pins::accept(state),
        KeyAction::KeepQuarantined => pins::keep(state),
        KeyAction::WriteCase => cases::write_case(state),
        KeyAction::ReviewWrite => authoring::review(state, false),
        KeyAction::OpenRuleEditor => authoring::open_editor(state),
        KeyAction::EditorNext
        | KeyAction::EditorPrev
        | KeyAction::EditorChoose(_)
        | KeyAction::EditorEnter
        | KeyAction::EditorAddLimit
        | KeyAction::EditorAddCondition
        | KeyAction::EditorRemove
        | KeyAction::EditorCompletePath => edit_rule(state, action),
        KeyAction::EditorSave => {
            if !learn::save_editor(state) {
                authoring::save_editor(state);
            }
        }
        KeyAction::LearnAccept => learn::decide(state, Choice::Accepted),
        KeyAction::LearnReject => learn::decide(state, Choice::Rejected),
        KeyAction::LearnSkip => learn::decide(state, Choice::Skipped),
        KeyAction::LearnEdit => learn::open_editor(state),
        KeyAction::LearnWiden => learn::widen(state),
        KeyAction::LearnPrevious => learn::previous(state),
        KeyAction::LearnNext => learn::next(state),
        KeyAction::LearnWrite => learn::write(state),
        KeyAction::EditCounterMax => open_counter_edit(state, true),
        KeyAction::EditCounterWindow => open_counter_edit(state, false),
        KeyAction::SetTheme(name) => state.effects.push(Effect::LoadTheme(name)),
        KeyAction::ScrollDetail(by) => {
            if let Some(Overlay::Review(_)) = state.overlays.top()
                && let Some(r) = state.overlays.review_mut()
            {
                r.scroll = r.scroll.saturating_add_signed(by);
                return;
            }
            if let Some(Overlay::Learn(_)) = state.overlays.top()
                && let Some(l) = state.overlays.learn_mut()
            {
                l.scroll = l.scroll.saturating_add_signed(by);
                return;
            }
            let scroll = match state.view {
                View::Live => &mut state.live.detail_scroll,
                View::Holds => &mut state.holds_view.detail_scroll,
                View::Tools => &mut state.tools_view.scroll,
                _ => return,
            };
            *scroll = scroll.saturating_add_signed(by);
        }
    }
}

/// A key typed into the prompt on top (the filter applies as it changes).
fn edit_prompt(state: &mut State, req: tui_input::InputRequest) {
    let filter_changed = match state.overlays.prompt_mut() {
        Some(Prompt::Filter(input)) => {
            input.handle(req);
            Some(input.value().to_owned())
        }
        Some(
            Prompt::Command(input)
            | Prompt::DenyReason { input, .. }
            | Prompt::Rate { input, .. }
            | Prompt::CounterEdit { input, .. },
        ) => {
            input.handle(req);
            None
        }
        Some(Prompt::ConfirmQuit | Prompt::DropLearned { .. }) | None => None,
    };
    if let Some(text) = filter_changed {
        set_filter(state, &text);
    }
}

/// A rule editor action: moves, choices, adding and removing limits and conditions.
fn edit_rule(state: &mut State, action: KeyAction) {
    match action {
        KeyAction::EditorNext => authoring::with_editor(state, |e| {
            e.move_focus(1);
            false
        }),
        KeyAction::EditorPrev => authoring::with_editor(state, |e| {
            e.move_focus(-1);
            false
        }),
        KeyAction::EditorChoose(by) => authoring::with_editor(state, |e| e.choose(by as isize)),
        KeyAction::EditorEnter => authoring::with_editor(state, |e| match e.focused() {
            Field::AddLimit => {
                e.add_limit();
                true
            }
            Field::AddCondition => {
                e.add_condition();
                true
            }
            _ => {
                e.move_focus(1);
                false
            }
        }),
        KeyAction::EditorAddLimit => authoring::with_editor(state, |e| {
            e.add_limit();
            true
        }),
        KeyAction::EditorAddCondition => authoring::with_editor(state, |e| {
            e.add_condition();
            true
        }),
        KeyAction::EditorRemove => authoring::with_editor(state, |e| e.remove_focused()),
        KeyAction::EditorCompletePath => authoring::with_editor(state, |e| e.complete_path()),
        _ => {}
    }
}

/// `m`/`t` in Limits: asks for the selected counter's new max (`max`) or window.
fn open_counter_edit(state: &mut State, max: bool) {
    let rows = limit_rows(state);
    if let Some(row) = rows.get(state.authoring.limits_selected) {
        let text = if max {
            row.max.to_string()
        } else {
            window_short(row.window_ms)
        };
        let cursor = text.chars().count();
        state.overlays.open_prompt(Prompt::CounterEdit {
            counter: row.counter.clone(),
            max,
            input: Input::new(text).with_cursor(cursor),
        });
    }
}

/// The held call the current view points at, if it is held now.
fn selected_hold(state: &State) -> Option<String> {
    let call = state.selected_call()?;
    state
        .is_held(&call.call_id)
        .then(|| call.call_id.to_string())
}

/// An approve or deny key on a call that is no longer held: nothing is sent, and the
/// operator is told who ended the hold (another console may have been first).
fn already_resolved(state: &mut State) {
    let Some(call) = state.selected_call() else {
        return;
    };
    let Some(row) = state.history.find(&call.call_id) else {
        return;
    };
    let Some(r) = &row.resolution else {
        return;
    };
    let at = state.resolved_elsewhere_at(&r.call_id);
    let text = format!(
        "{} ({}) was already {}: nothing done",
        r.call_id,
        row.call.tool,
        crate::console::model::resolution_label(r, at, state.now)
    );
    state.complain(text);
}

/// Esc: closes the top layer; with none open, backs out of the view (its detail pane, then
/// its filter, then the pause).
fn back(state: &mut State) {
    match state.overlays.top() {
        Some(Overlay::Review(_)) => authoring::cancel(state),
        Some(Overlay::Editor(_)) => {
            state.overlays.pop();
            if state.overlays.learn().is_some() {
                state.say("rule editor closed; the proposal is as it was");
            } else {
                state.say("rule editor closed; the draft keeps only what was saved (C-s)");
            }
        }
        Some(Overlay::Learn(_)) => learn::leave(state),
        // Esc on the filter line keeps the filter typed so far; `ClearFilter` removes it.
        Some(Overlay::Prompt(_) | Overlay::Help) => {
            state.overlays.pop();
        }
        None => {
            if state.view == View::Live && state.live.detail.is_some() {
                state.live.detail = None;
            } else if state.view == View::Holds && state.holds_view.detail.is_some() {
                state.holds_view.detail = None;
                state.holds_view.resolved_elsewhere = None;
            } else if state.view == View::Live && !state.live.filter.is_empty() {
                set_filter(state, "");
            } else if state.view == View::Live && state.live.selected.is_some() {
                state.live.selected = None;
            }
        }
    }
}

/// How far PageUp/PageDown move: the rows the Live list has on this screen, worked out from
/// the terminal's size (not from the last frame drawn).
fn page(state: &State) -> isize {
    let detail_open = state.view == View::Live && state.live.detail.is_some();
    state.screen.live_page(detail_open).max(1) as isize
}

fn move_selection(state: &mut State, by: isize) {
    match state.view {
        View::Live => {
            let Some(cur) = state.live_selected_index() else {
                return;
            };
            let len = state.live_len();
            let next = (cur as isize + by).clamp(0, len as isize - 1) as usize;
            // Moving down onto the newest row keeps the pause: only F/End resumes following.
            state.live.selected = state.live_pos(next);
            if state.live.detail.is_some() {
                state.live.detail = state.selected_call().map(|c| c.call_id.to_string());
                state.live.detail_scroll = 0;
            }
        }
        View::Holds => {
            let len = state.holds.len();
            // Moving on from a hold resolved elsewhere starts from where it stood.
            state.holds_view.resolved_elsewhere = None;
            if len == 0 {
                return;
            }
            let cur = state.holds_view.selected as isize;
            state.holds_view.selected = (cur + by).clamp(0, len as isize - 1) as usize;
            if state.holds_view.detail.is_some() {
                state.holds_view.detail = state.selected_call().map(|c| c.call_id.to_string());
            }
        }
        View::Policy => {
            let len = state.policy_rows().len();
            let cur = state.authoring.selected as isize;
            state.authoring.selected = (cur + by).clamp(0, (len as isize - 1).max(0)) as usize;
        }
        View::Limits => {
            let len = limit_rows(state).len();
            let cur = state.authoring.limits_selected as isize;
            state.authoring.limits_selected =
                (cur + by).clamp(0, (len as isize - 1).max(0)) as usize;
        }
        View::Tools => pins::move_selection(state, by),
    }
}

/// The tool an action from a call view (or the Policy view) is about.
fn acted_on_tool(state: &mut State) -> Option<String> {
    let tool = match state.view {
        View::Policy => authoring::selected_tool(state),
        _ => state.selected_call().map(|c| c.tool.to_string()),
    }?;
    // Names are sanitised on arrival: one with control characters is shown escaped, and a
    // rule written for the escaped form would not match the real tool.
    if tool.contains('\\') {
        state.complain(
            "this tool's name has control characters; write its rule in the file by hand",
        );
        return None;
    }
    Some(tool)
}

/// Sets the Live filter and recomputes its matches.
pub fn set_filter(state: &mut State, text: &str) {
    let filter = Filter::parse(text);
    let mut matches = Vec::new();
    if !filter.is_empty() {
        let mut matcher = Matcher::new(&filter, &state.history.strings);
        for (pos, row) in state.history.iter() {
            let label = state.gateways.get(row.conn).map_or("", SeenGateway::label);
            if matcher.matches(row, label) {
                matches.push(pos);
            }
        }
    }
    state.live.filter = filter;
    state.live.filtered = matches;
    state.live.filter_revision += 1;
}

fn submit(state: &mut State) {
    let Some(prompt) = state.overlays.take_prompt() else {
        return;
    };
    match prompt {
        Prompt::ConfirmQuit => state.overlays.open_prompt(Prompt::ConfirmQuit),
        Prompt::DropLearned { quit } => state.overlays.open_prompt(Prompt::DropLearned { quit }),
        Prompt::Filter(input) => set_filter(state, input.value()),
        Prompt::Rate { tool, input } => match parse_rate(input.value()) {
            Ok((max, window)) => authoring::edit_and_review(
                state,
                &Edit::Limit {
                    tool,
                    max,
                    window,
                    scope: None,
                },
            ),
            Err(e) => {
                state.complain(e.to_string());
                state.overlays.open_prompt(Prompt::Rate { tool, input });
            }
        },
        Prompt::CounterEdit {
            counter,
            max,
            input,
        } => {
            let edit = if max {
                match input.value().trim().parse::<u64>() {
                    Ok(m) => Ok(Edit::SetCounter {
                        counter: counter.clone(),
                        max: Some(m),
                        window: None,
                    }),
                    Err(_) => Err("max is a whole number >= 1".to_string()),
                }
            } else {
                match parse_window(input.value()) {
                    Some(w) => Ok(Edit::SetCounter {
                        counter: counter.clone(),
                        max: None,
                        window: Some(w),
                    }),
                    None => Err("a window: minute, 90s, 10m, 1h, 3600…".to_string()),
                }
            };
            match edit {
                Ok(e) => authoring::edit_and_review(state, &e),
                Err(e) => {
                    state.complain(e);
                    state.overlays.open_prompt(Prompt::CounterEdit {
                        counter,
                        max,
                        input,
                    });
                }
            }
        }
        Prompt::DenyReason { call_id, input } => {
            let reason = input.value().trim();
            let reason = (!reason.is_empty()).then(|| reason.to_owned());
            send_resolution(state, &call_id, false, reason);
        }
        Prompt::Command(input) => command::run_command(state, input.value()),
    }
}

/// Sends an approval or denial to the gateway that holds `call_id`.
pub(super) fn send_resolution(
    state: &mut State,
    call_id: &str,
    approve: bool,
    reason: Option<String>,
) {
    let Some(hold) = state.holds.iter().find(|h| h.call.call_id == call_id) else {
        state.complain(format!("{} is no longer held", terminal_text(call_id)));
        return;
    };
    let gateway = state.gateways[hold.conn].key.clone();
    let id = state.next_command_id;
    state.next_command_id += 1;
    let operator = state.operator.clone();
    let msg = if approve {
        ClientMsg::Approve {
            id,
            call_id: call_id.to_owned(),
            operator,
        }
    } else {
        ClientMsg::Deny {
            id,
            call_id: call_id.to_owned(),
            reason,
            operator,
        }
    };
    state.pending.insert(
        id,
        Pending {
            gateway: gateway.clone(),
            call_id: call_id.to_owned(),
            approve,
        },
    );
    state.say(format!(
        "{} {call_id}…",
        if approve { "approving" } else { "denying" }
    ));
    state.effects.push(Effect::Send { gateway, msg });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::model::decision_label;
    use crate::wire::{
        CallEvent, CallRecord, EventKind, GatewayInfo, Hello, HoldResolved, Outcome,
        PROTOCOL_VERSION, Reply, ResolvedBy, Snapshot, Totals, Verdict,
    };

    fn t0() -> DateTime<Utc> {
        "2026-11-26T12:00:00Z".parse().unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        t0() + chrono::TimeDelta::seconds(secs)
    }

    fn state() -> State {
        State::new(t0(), 1000)
    }

    fn call(id: &str, tool: &str, decision: Verdict) -> CallEvent {
        CallEvent {
            call_id: id.into(),
            tool: tool.into(),
            grant: "ci".into(),
            session: "s1".into(),
            server: "meet".into(),
            decision,
            rule: format!("/tools/{tool}").into(),
            reason: Default::default(),
            args: serde_json::json!({"name": "x"}).into(),
            args_truncated: false,
            retry_after_ms: None,
            hold_deadline: (decision == Verdict::Hold).then(|| at(120)),
            shadow: None,
        }
    }

    fn ev(seq: u64, ts: DateTime<Utc>, kind: EventKind) -> AppEvent {
        AppEvent::Net {
            gateway: "gw1".into(),
            event: Event {
                seq,
                ts,
                gateway: "gw1".into(),
                kind,
            },
        }
    }

    /// A `call` event with sequence number `seq`, stamped `ts`, arriving at `now`.
    fn arrive(s: &mut State, seq: u64, ts: DateTime<Utc>, c: CallEvent, now: DateTime<Utc>) {
        update(s, ev(seq, ts, EventKind::Call(c)), now);
    }

    fn hello(calls: Vec<CallRecord>, holds: Vec<&str>) -> EventKind {
        EventKind::Hello(Box::new(Hello {
            protocol: PROTOCOL_VERSION,
            info: GatewayInfo {
                id: "gw1".into(),
                pid: 1,
                version: "0.1.0".into(),
                grant: "ci".into(),
                server: "meet".into(),
                policy: "/p/policy.json".into(),
                started_at: t0(),
            },
            snapshot: Snapshot {
                calls,
                holds: holds.into_iter().map(String::from).collect(),
                policy_hash: Some("3f9a21deadbeef".into()),
                totals: Totals {
                    allow: 10,
                    ..Totals::default()
                },
                upstream_up: true,
                ..Snapshot::default()
            },
        }))
    }

    fn key(c: char) -> AppEvent {
        AppEvent::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
    }

    fn code(k: KeyCode) -> AppEvent {
        AppEvent::Key(KeyEvent::new(k, KeyModifiers::NONE))
    }

    #[test]
    fn a_call_is_remembered_counted_and_rated() {
        let mut s = state();
        arrive(
            &mut s,
            1,
            at(1),
            call("gw1-1", "list", Verdict::Allow),
            at(1),
        );
        arrive(
            &mut s,
            2,
            at(2),
            call("gw1-2", "drop", Verdict::Deny),
            at(2),
        );
        assert_eq!(s.history.len(), 2);
        assert_eq!(s.totals().allow, 1);
        assert_eq!(s.totals().deny, 1);
        assert_eq!(s.rate.per_minute(at(30)), 2);
        assert_eq!(s.rate.per_minute(at(90)), 0);
    }

    #[test]
    fn a_new_hold_rings_once_and_is_listed_oldest_first() {
        let mut s = state();
        arrive(
            &mut s,
            1,
            at(5),
            call("gw1-2", "send", Verdict::Hold),
            at(5),
        );
        arrive(&mut s, 2, at(3), call("gw1-1", "pay", Verdict::Hold), at(5));
        assert_eq!(s.effects.iter().filter(|e| **e == Effect::Bell).count(), 2);
        let ids: Vec<&str> = s.holds.iter().map(|h| h.call.call_id.as_str()).collect();
        assert_eq!(ids, ["gw1-1", "gw1-2"]);
        assert_eq!(s.holds_view.selected, 0, "selection starts on the oldest");
    }

    #[test]
    fn approving_sends_to_the_gateway_holding_the_call_and_shows_the_reply() {
        let mut s = state();
        arrive(&mut s, 1, at(1), call("gw1-1", "pay", Verdict::Hold), at(1));
        s.effects.clear();
        update(&mut s, key('2'), at(2));
        update(&mut s, key('a'), at(2));
        let [Effect::Send { gateway, msg }] = s.effects.as_slice() else {
            panic!("expected one send, got {:?}", s.effects);
        };
        assert_eq!(gateway, "gw1");
        let ClientMsg::Approve { id, call_id, .. } = msg else {
            panic!("expected approve, got {msg:?}");
        };
        assert_eq!(call_id, "gw1-1");
        let id = *id;
        update(
            &mut s,
            ev(
                2,
                at(3),
                EventKind::Reply(Reply {
                    id,
                    ok: false,
                    error: Some("already resolved".into()),
                    ..Reply::default()
                }),
            ),
            at(3),
        );
        let m = s.message.clone().unwrap();
        assert!(m.error && m.text.contains("already resolved"), "{m:?}");
    }

    #[test]
    fn denying_asks_for_a_reason_and_sends_it() {
        let mut s = state();
        arrive(&mut s, 1, at(1), call("gw1-1", "pay", Verdict::Hold), at(1));
        s.effects.clear();
        update(&mut s, key('2'), at(2));
        update(&mut s, key('d'), at(2));
        assert!(matches!(
            s.overlays.prompt(),
            Some(Prompt::DenyReason { .. })
        ));
        for c in "too much".chars() {
            update(&mut s, key(c), at(2));
        }
        update(&mut s, code(KeyCode::Enter), at(2));
        assert!(matches!(
            s.effects.as_slice(),
            [Effect::Send { msg: ClientMsg::Deny { reason: Some(r), .. }, .. }] if r == "too much"
        ));
    }

    #[test]
    fn a_resolution_removes_the_hold_and_marks_the_call() {
        let mut s = state();
        arrive(&mut s, 1, at(1), call("gw1-1", "pay", Verdict::Hold), at(1));
        let r = HoldResolved {
            call_id: "gw1-1".into(),
            approved: false,
            by: ResolvedBy::Timeout,
            operator: None,
            reason: None,
        };
        update(&mut s, ev(2, at(2), EventKind::HoldResolved(r)), at(2));
        assert!(s.holds.is_empty());
        let row = s.history.find("gw1-1").unwrap();
        let (label, _) = decision_label(row, at(2), false);
        assert_eq!(label, "✗ timed out");
    }

    #[test]
    fn scrolling_up_pauses_following_and_f_resumes() {
        let mut s = state();
        for i in 0..5 {
            let id = format!("gw1-{i}");
            update(
                &mut s,
                ev(i, at(1), EventKind::Call(call(&id, "t", Verdict::Allow))),
                at(1),
            );
        }
        assert!(s.following());
        update(&mut s, code(KeyCode::Up), at(2));
        assert!(!s.following());
        assert_eq!(s.live_selected_index(), Some(3));
        arrive(&mut s, 9, at(3), call("gw1-9", "t", Verdict::Allow), at(3));
        assert_eq!(
            s.live_selected_index(),
            Some(3),
            "a paused view keeps its row"
        );
        update(&mut s, key('F'), at(3));
        assert!(s.following());
        assert_eq!(s.live_selected_index(), Some(5));
    }

    #[test]
    fn the_filter_narrows_live_and_keeps_up_with_new_calls() {
        let mut s = state();
        arrive(
            &mut s,
            1,
            at(1),
            call("gw1-1", "create_api_key", Verdict::Allow),
            at(1),
        );
        arrive(
            &mut s,
            2,
            at(1),
            call("gw1-2", "delete_account", Verdict::Deny),
            at(1),
        );
        update(&mut s, key('/'), at(1));
        for c in "tool:create_*".chars() {
            update(&mut s, key(c), at(1));
        }
        update(&mut s, code(KeyCode::Enter), at(1));
        assert_eq!(s.live_len(), 1);
        arrive(
            &mut s,
            3,
            at(2),
            call("gw1-3", "create_meeting", Verdict::Allow),
            at(2),
        );
        arrive(
            &mut s,
            4,
            at(2),
            call("gw1-4", "list", Verdict::Allow),
            at(2),
        );
        assert_eq!(s.live_len(), 2);
        update(&mut s, code(KeyCode::Esc), at(2));
        assert_eq!(s.live_len(), 4, "Esc clears the filter");
    }

    #[test]
    fn a_call_first_seen_in_a_snapshot_keeps_the_time_it_was_decided() {
        let mut s = state();
        let records = vec![
            CallRecord {
                ts: Some(at(3)),
                call: call("gw1-7", "list", Verdict::Allow),
                resolution: None,
                outcome: None,
            },
            CallRecord {
                ts: None,
                call: call("gw1-8", "list", Verdict::Allow),
                resolution: None,
                outcome: None,
            },
        ];
        update(&mut s, ev(9, at(10), hello(records, vec![])), at(10));
        assert_eq!(s.history.find("gw1-7").unwrap().ts, at(3));
        assert_eq!(
            s.history.find("gw1-8").unwrap().ts,
            at(10),
            "without a time, the snapshot's arrival"
        );
    }

    #[test]
    fn a_reconnect_resumes_from_the_snapshot_without_duplicates() {
        let mut s = state();
        arrive(&mut s, 1, at(1), call("gw1-1", "pay", Verdict::Hold), at(1));
        arrive(
            &mut s,
            2,
            at(1),
            call("gw1-2", "list", Verdict::Allow),
            at(1),
        );
        s.effects.clear();
        // While away: gw1-1 was resolved, gw1-3 arrived and is held.
        let records = vec![
            CallRecord {
                ts: None,
                call: call("gw1-1", "pay", Verdict::Hold),
                resolution: Some(HoldResolved {
                    call_id: "gw1-1".into(),
                    approved: true,
                    by: ResolvedBy::Operator,
                    operator: Some("ann".into()),
                    reason: None,
                }),
                outcome: Some(Outcome {
                    call_id: "gw1-1".into(),
                    latency_us: 5000,
                    error: false,
                    summary: None,
                }),
            },
            CallRecord {
                ts: None,
                call: call("gw1-2", "list", Verdict::Allow),
                resolution: None,
                outcome: None,
            },
            CallRecord {
                ts: None,
                call: call("gw1-3", "send", Verdict::Hold),
                resolution: None,
                outcome: None,
            },
        ];
        update(&mut s, ev(9, at(10), hello(records, vec!["gw1-3"])), at(10));
        assert_eq!(s.history.len(), 3);
        let held: Vec<&str> = s.holds.iter().map(|h| h.call.call_id.as_str()).collect();
        assert_eq!(held, ["gw1-3"]);
        assert!(
            s.history
                .find("gw1-1")
                .unwrap()
                .resolution
                .as_ref()
                .unwrap()
                .approved
        );
        assert_eq!(s.totals().allow, 10, "totals come from the snapshot");
        assert_eq!(
            s.effects
                .iter()
                .filter(|e| matches!(e, Effect::Bell))
                .count(),
            1,
            "the hold we did not know rings"
        );
        assert_eq!(s.gateways[0].policy_hash.as_deref(), Some("3f9a21deadbeef"));
    }

    #[test]
    fn quitting_asks_first_when_calls_are_held() {
        let mut s = state();
        update(&mut s, key('q'), at(1));
        assert!(s.quit, "nothing held: quits at once");
        let mut s = state();
        arrive(&mut s, 1, at(1), call("gw1-1", "pay", Verdict::Hold), at(1));
        update(&mut s, key('q'), at(1));
        assert!(!s.quit);
        assert!(matches!(s.overlays.prompt(), Some(Prompt::ConfirmQuit)));
        update(&mut s, key('n'), at(1));
        assert!(!s.quit && s.overlays.prompt().is_none());
        update(&mut s, key('q'), at(1));
        update(&mut s, key('y'), at(1));
        assert!(s.quit);
    }

    #[test]
    fn approve_keys_do_nothing_on_a_call_that_is_not_held() {
        let mut s = state();
        arrive(
            &mut s,
            1,
            at(1),
            call("gw1-1", "list", Verdict::Allow),
            at(1),
        );
        update(&mut s, code(KeyCode::Up), at(1));
        update(&mut s, key('a'), at(1));
        assert!(s.effects.is_empty());
    }

    #[test]
    fn commands_switch_theme_and_refuse_unknown_ones() {
        let mut s = state();
        for c in ":theme light".chars() {
            update(&mut s, key(c), at(1));
        }
        update(&mut s, code(KeyCode::Enter), at(1));
        assert_eq!(s.effects, vec![Effect::LoadTheme("light".into())]);
        for c in ":frobnicate".chars() {
            update(&mut s, key(c), at(1));
        }
        update(&mut s, code(KeyCode::Enter), at(1));
        assert!(
            s.message
                .as_ref()
                .is_some_and(|m| m.error && m.text.contains("unknown command"))
        );
    }

    #[test]
    fn esc_run_together_with_a_key_is_esc_then_the_key() {
        let mut s = state();
        arrive(
            &mut s,
            1,
            at(1),
            call("gw1-1", "list", Verdict::Allow),
            at(1),
        );
        update(&mut s, code(KeyCode::Up), at(1));
        update(&mut s, key('/'), at(1));
        let alt_q = AppEvent::Key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::ALT));
        update(&mut s, alt_q, at(1));
        assert!(s.overlays.prompt().is_none());
        assert!(s.quit, "Esc closed the filter line, then q quit");
    }

    #[test]
    fn an_audit_log_outage_and_its_recovery_show_under_the_view() {
        let mut s = state();
        update(&mut s, ev(1, at(0), hello(Vec::new(), Vec::new())), at(0));
        let status = |ok: bool, detail: &str| {
            EventKind::Audit(crate::wire::AuditStatus {
                path: "/s/audit.jsonl".into(),
                ok,
                detail: Some(detail.into()),
            })
        };
        let down = status(false, "No space left on device; tool calls are denied");
        update(&mut s, ev(2, at(1), down), at(1));
        let message = s.message.as_ref().expect("a message");
        assert!(message.error);
        assert!(
            message
                .text
                .contains("audit log /s/audit.jsonl cannot be written")
                && message.text.contains("tool calls are denied"),
            "{}",
            message.text
        );
        update(
            &mut s,
            ev(3, at(2), status(true, "records are written again")),
            at(2),
        );
        let message = s.message.as_ref().expect("a message");
        assert!(!message.error);
        assert!(message.text.contains("written again"), "{}", message.text);
    }

    #[test]
    fn messages_expire() {
        let mut s = state();
        s.say("hello");
        update(&mut s, AppEvent::Tick, at(5));
        assert!(s.message.is_some());
        update(&mut s, AppEvent::Tick, at(20));
        assert!(s.message.is_none());
    }

    #[test]
    fn a_refused_session_burst_is_shown_with_its_grant_count_and_cap() {
        let mut s = state();
        let refused = crate::wire::SessionRefused {
            grant: "flood\x1b[2J".into(),
            server: "time".into(),
            cap: crate::wire::SessionCap::Grant,
            max: 16,
            refused: 37,
        };
        update(
            &mut s,
            ev(1, at(1), EventKind::SessionRefused(refused)),
            at(1),
        );
        let m = s.message.clone().unwrap();
        assert!(m.error, "{m:?}");
        assert!(m.text.contains("37 MCP session(s)"), "{m:?}");
        assert!(m.text.contains("--max-sessions-per-grant"), "{m:?}");
        assert!(!m.text.contains('\x1b'), "{m:?}");
    }
}
