//! `T` (with `console --cases FILE`): the selected call becomes a `toolgate test` case,
//! appended to the case file by an effect; the answer says where it went.

use crate::console::model::case::case_for;
use crate::console::model::{Effect, State};
use crate::sanitize::terminal_text;

/// `T`: the selected call, as a case for the `--cases` file.
pub(super) fn write_case(state: &mut State) {
    let Some(path) = state.cases_path.clone() else {
        state.complain(
            "no case file: start the console with --cases FILE to write calls as test cases",
        );
        return;
    };
    let Some(call_id) = state.selected_call().map(|c| c.call_id.clone()) else {
        return;
    };
    let Some(pos) = state.history.position(&call_id) else {
        state.complain(format!(
            "{call_id} is no longer in the console's history (only calls it remembers can become cases)"
        ));
        return;
    };
    match case_for(state, pos) {
        Ok(new) => {
            state.say(format!(
                "adding case '{}' to {}…",
                new.name,
                file_name(&path)
            ));
            state.effects.push(Effect::AppendCase {
                path,
                name: new.name,
                case: new.case,
                fill_in: new.fill_in,
            });
        }
        Err(e) => state.complain(format!("cannot write a case for {call_id}: {e}")),
    }
}

/// The case file's answer.
pub(super) fn written(
    state: &mut State,
    path: &str,
    name: &str,
    fill_in: usize,
    result: Result<(), String>,
) {
    let file = file_name(path);
    match result {
        Ok(()) if fill_in == 0 => state.say(format!(
            "case '{}' added to {file}",
            terminal_text(name)
        )),
        Ok(()) => state.say(format!(
            "case '{}' added to {file}: {fill_in} redacted or cut argument(s) to fill in (see its note) before toolgate test runs it",
            terminal_text(name)
        )),
        Err(e) => state.complain(format!(
            "case not added to {file}: {}",
            terminal_text(&e)
        )),
    }
}

/// The file's name, as the status line shows it.
fn file_name(path: &str) -> String {
    let name = std::path::Path::new(path)
        .file_name()
        .map_or_else(|| path.to_owned(), |n| n.to_string_lossy().into_owned());
    terminal_text(&name).into_owned()
}
