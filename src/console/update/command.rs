//! The `:` command line's grammar: one verb, then its words.
//!
//! Each verb means one thing whatever the state: `:approve ID` and `:deny ID` resolve held
//! calls (and say so when `ID` is not held), the draft's edits have verbs of their own
//! (`:allow`, `:block`, `:hold`, `:limit`, ...). What each does is listed for help in
//! [`crate::console::input::COMMANDS`].

use crate::console::model::draft::{Edit, UsageError, parse_rate};
use crate::console::model::{Overlay, State, View};
use crate::sanitize::terminal_text;

use super::{KeyAction, apply, authoring, send_resolution, set_filter};

/// Carries out the command line `line` (without its `:`).
pub(super) fn run_command(state: &mut State, line: &str) {
    let mut words = line.split_whitespace();
    let Some(cmd) = words.next() else { return };
    let rest: Vec<&str> = words.collect();
    match (cmd, rest.as_slice()) {
        ("q" | "quit", []) => apply(state, KeyAction::Quit),
        ("q!" | "quit!", []) => apply(state, KeyAction::ForceQuit),
        ("theme", [name]) => apply(state, KeyAction::SetTheme((*name).to_owned())),
        ("theme", _) => state.complain(":theme takes one name: dark, light, high-contrast"),
        ("approve", [id]) => {
            if state.is_held(id) {
                send_resolution(state, id, true, None);
            } else {
                state.complain(format!("no held call {}", terminal_text(id)));
            }
        }
        ("deny", [id, reason @ ..]) => {
            if state.is_held(id) {
                let reason = (!reason.is_empty()).then(|| reason.join(" "));
                send_resolution(state, id, false, reason);
            } else {
                state.complain(format!(
                    "no held call {} (a deny rule for a tool is :block TOOL [REASON])",
                    terminal_text(id)
                ));
            }
        }
        ("deny", []) => state.complain("usage: :deny ID [REASON...] (a held call's id)"),
        ("filter", words) => {
            state.view = View::Live;
            set_filter(state, &words.join(" "));
        }
        ("live", []) => apply(state, KeyAction::ShowView(View::Live)),
        ("holds", []) => apply(state, KeyAction::ShowView(View::Holds)),
        ("policy", []) => apply(state, KeyAction::ShowView(View::Policy)),
        ("limits", []) => apply(state, KeyAction::ShowView(View::Limits)),
        ("help", []) => {
            if !state.overlays.has_help() {
                state.overlays.push(Overlay::Help);
            }
        }
        ("w" | "write", []) => authoring::review(state, false),
        ("w!" | "write!", []) => authoring::review(state, true),
        ("undo", []) => authoring::undo(state),
        ("reload", []) => authoring::reload(state),
        (cmd, args) if draft_edit(cmd, args).is_some() => match draft_edit(cmd, args) {
            Some(Ok(edit)) => {
                authoring::edit(state, &edit);
            }
            Some(Err(usage)) => state.complain(usage.to_string()),
            None => {}
        },
        _ => state.complain(format!(
            "unknown command ':{}' (try :limit TOOL 30/minute, :block TOOL, :w, :theme NAME, :q; ? lists them)",
            terminal_text(line.trim())
        )),
    }
}

/// The draft edit a command asks for: `None` if `cmd` is not an editing command.
fn draft_edit(cmd: &str, args: &[&str]) -> Option<Result<Edit, UsageError>> {
    let usage = |u: &str| Err(UsageError(format!("usage: {u}")));
    Some(match (cmd, args) {
        ("allow", [tool]) => Ok(Edit::Allow((*tool).into())),
        ("allow", _) => usage(":allow TOOL"),
        ("block", [tool, reason @ ..]) => Ok(Edit::Deny(
            (*tool).into(),
            (!reason.is_empty()).then(|| reason.join(" ")),
        )),
        ("block", _) => usage(":block TOOL [REASON...]"),
        ("hold", [tool]) => Ok(Edit::Hold((*tool).into())),
        ("hold", _) => usage(":hold TOOL"),
        ("limit", [tool, rate, scope @ ..]) if scope.len() <= 1 => {
            parse_rate(rate).map(|(max, window)| Edit::Limit {
                tool: (*tool).into(),
                max,
                window,
                scope: scope.first().map(|s| (*s).into()),
            })
        }
        ("limit", _) => usage(":limit TOOL MAX/WINDOW [grant|session|global]"),
        ("unlimit", [tool]) => Ok(Edit::Unlimit((*tool).into())),
        ("unlimit", _) => usage(":unlimit TOOL"),
        ("default", [d]) => Ok(Edit::Default((*d).into())),
        ("default", _) => usage(":default allow|deny|require_approval"),
        ("hide", [tool]) => Ok(Edit::Hide((*tool).into())),
        ("shadow", [tool]) => Ok(Edit::ShadowDeny((*tool).into())),
        ("shadow", _) => usage(":shadow TOOL"),
        ("hide", _) => usage(":hide TOOL"),
        _ => return None,
    })
}
