//! Effects: what the console does outside itself, on the update's behalf.
//!
//! The update leaves [`Effect`]s in the state; the event loop takes them after each batch.
//! Sending a command (a channel send) and the bell are immediate. Everything that can block
//! — reading or writing the policy file (with its fsyncs), appending to the case file
//! (`--cases`), loading a theme from disk — runs on tokio's blocking pool through [`spawn`],
//! never on the task that reads the keyboard, and its result comes back to the loop as an [`Answer`] on a bounded channel, to be
//! applied like any other event. [`net`] is the network side: one task per gateway.
//!
//! This layer reads the model and the update's events; it never imports the view (a theme
//! comes back as data for the loop to hand to the view).

pub(crate) mod case_file;
pub mod net;
pub(crate) mod policy_file;

use std::path::Path;

use tokio::sync::mpsc;

use super::model::{Effect, WriteFailure};
use super::theme::{self, Theme};
use super::update::AppEvent;

/// How many answers may wait for the loop. Effects start one per operator command, so this
/// is never reached in use; a full channel only makes the blocking task wait its turn.
pub(crate) const ANSWERS: usize = 64;

/// The result of an effect that ran off the loop.
#[derive(Debug)]
pub(crate) enum Answer {
    /// An event for the update (a policy file read or written).
    Event(AppEvent),
    /// A theme, loaded (and stripped of colour under `NO_COLOR`), or why not.
    Theme(Result<Theme, String>),
}

/// Whether `effect` must run off the loop (it touches the disk).
pub(crate) fn is_slow(effect: &Effect) -> bool {
    matches!(
        effect,
        Effect::LoadTheme(_)
            | Effect::LoadPolicy(_)
            | Effect::WritePolicy { .. }
            | Effect::AppendCase { .. }
    )
}

/// Starts a slow effect on the blocking pool; its [`Answer`] arrives on `answers`. An effect
/// that panics still answers (as a failure), so the flow that waits for it is not stuck.
pub(crate) fn spawn(effect: Effect, answers: mpsc::Sender<Answer>) {
    let on_panic = failure_of(&effect);
    tokio::task::spawn_blocking(move || {
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| perform(effect)))
            .unwrap_or(Some(on_panic));
        // The loop has stopped if this fails: nobody is left to tell.
        if let Some(answer) = answer {
            let _ = answers.blocking_send(answer);
        }
    });
}

/// Carries out a slow effect here and now, and returns its answer. The event loop runs it
/// on the blocking pool ([`spawn`]); the screenshot tool, which has no loop, calls it
/// directly. Quick effects (send, bell) are the loop's: `None` here.
pub(crate) fn perform(effect: Effect) -> Option<Answer> {
    Some(match effect {
        Effect::LoadTheme(name) => Answer::Theme(
            Theme::load(&name)
                .map(|t| {
                    if theme::no_color_requested() {
                        t.without_colour()
                    } else {
                        t
                    }
                })
                .map_err(|e| e.to_string()),
        ),
        Effect::LoadPolicy(path) => {
            let result = policy_file::read(Path::new(&path)).map_err(|e| format!("{path}: {e}"));
            Answer::Event(AppEvent::PolicyFile { path, result })
        }
        Effect::WritePolicy {
            path,
            text,
            expected_hash,
            force,
        } => {
            let result = policy_file::write_atomic(Path::new(&path), &text, &expected_hash, force)
                .map_err(|e| match e {
                    policy_file::WriteError::ChangedOnDisk { text, .. } => {
                        WriteFailure::ChangedOnDisk(text)
                    }
                    other => WriteFailure::Io(other.to_string()),
                });
            Answer::Event(AppEvent::PolicyWritten { text, result })
        }
        Effect::AppendCase {
            path,
            name,
            case,
            fill_in,
        } => {
            let result = case_file::append(Path::new(&path), &name, &case);
            Answer::Event(AppEvent::CaseWritten {
                path,
                name,
                fill_in,
                result,
            })
        }
        Effect::Send { .. } | Effect::Bell => return None,
    })
}

/// The answer an effect gives when it panicked instead of finishing.
fn failure_of(effect: &Effect) -> Answer {
    // Only slow effects are spawned; a quick one cannot reach here, and answers nothing.
    let why = "the console's file task failed unexpectedly (see the log); nothing was changed";
    match effect {
        Effect::LoadTheme(name) => Answer::Theme(Err(format!("theme {name}: {why}"))),
        Effect::LoadPolicy(path) => Answer::Event(AppEvent::PolicyFile {
            path: path.clone(),
            result: Err(format!("{path}: {why}")),
        }),
        Effect::WritePolicy { path, text, .. } => Answer::Event(AppEvent::PolicyWritten {
            text: text.clone(),
            result: Err(WriteFailure::Io(format!(
                "{path}: the write task failed unexpectedly (see the log); check the file before writing again"
            ))),
        }),
        Effect::AppendCase {
            path,
            name,
            fill_in,
            ..
        } => Answer::Event(AppEvent::CaseWritten {
            path: path.clone(),
            name: name.clone(),
            fill_in: *fill_in,
            result: Err(format!(
                "the case file task failed unexpectedly (see the log); check {path} before adding again"
            )),
        }),
        Effect::Send { .. } | Effect::Bell => Answer::Event(AppEvent::Tick),
    }
}
