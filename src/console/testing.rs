//! The one door through which tests, benches and examples reach the console's insides.
//!
//! Everything else in the console is meant for the console. What a test needs to drive the
//! real state, update and view without a terminal — a state, events, the rows the views are
//! made of, the binding table — is named here, so a reader sees in one place what the tests
//! depend on, and the rest can stay crate-private. Not a stable API.

pub use super::effects::net::{self, Outgoing, Targets};
pub use super::effects::policy_file::{hash_bytes, write_atomic};
pub use super::input::KeyAction;
pub use super::input::keys::{SCROLL_STEP, active_bindings};
pub use super::model::draft::{Draft, Edit};
pub use super::model::editor::{Field, OPS, RuleEditor};
pub use super::model::history::DEFAULT_CAPACITY;
pub use super::model::learn::{Cause, Choice, Stage};
pub use super::model::{
    Effect, Layout, LimitRow, Link, PolicyRow, Prompt, RowKind, State, View, WriteFailure,
    limit_rows, tool_class,
};
pub use super::theme::Theme;
pub use super::update::authoring::selected_tool;
pub use super::update::{AppEvent, set_filter, update};
pub use super::view::{ViewState, draw};
pub use super::{Clock, carry_out_effects_now, run};

/// Opens the review of a learned policy over `state`, as `toolgate console --review-learned`
/// does: `draft` is the JSON `toolgate learn --proposals` writes (refused as the command line
/// refuses it), the result goes to `target` (a shadow candidate when `shadow`), a file that
/// exists or not.
pub fn review_learned(
    state: &mut State,
    source: &str,
    draft: &str,
    target: &str,
    shadow: bool,
    target_exists: bool,
) -> Result<(), String> {
    let learned: crate::learn::Draft = serde_json::from_str(draft).map_err(|e| e.to_string())?;
    let review = super::model::learn::LearnReview::new(source, learned, target, shadow);
    super::update::learn::start(state, review, target_exists);
    Ok(())
}
