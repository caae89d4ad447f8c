//! The Tools view's flow (issue 18): changed tool definitions in from the gateways, the
//! operator's accept (`accept_pin`, to the gateway the change came from) or keep, and the
//! gateway's reply.

use chrono::{DateTime, Utc};

use crate::console::model::pins::MAX_REVIEWS;
use crate::console::model::{Effect, PendingPin, State, ToolReview, View};
use crate::sanitize::terminal_text;
use crate::wire::{ClientMsg, PinChange, Reply, ToolChanged};

/// A `tool_changed` event from the gateway at `conn`.
pub(super) fn changed(state: &mut State, conn: usize, t: ToolChanged, at: DateTime<Utc>) {
    let g = &mut state.gateways[conn];
    let label = g.label().to_owned();
    let known = g
        .tool_changes
        .iter()
        .position(|r| r.is_for(&t.server, &t.tool));
    match t.change {
        PinChange::Changed => {
            let review = ToolReview::from_event(t, at, known.map(|i| &g.tool_changes[i]));
            let text = format!(
                "gateway {label}: {}/{} changed its definition since it was pinned{} · 5 reviews it",
                review.server,
                review.tool,
                if review.quarantined {
                    " (quarantined)"
                } else {
                    ""
                }
            );
            match known {
                Some(i) => g.tool_changes[i] = review,
                None if g.tool_changes.len() >= MAX_REVIEWS => {
                    state.complain(format!(
                        "gateway {label}: more than {MAX_REVIEWS} changed tools; the Tools view lists the first {MAX_REVIEWS} (toolgate pins list shows them all)"
                    ));
                    return;
                }
                None => g.tool_changes.push(review),
            }
            state.complain(text);
        }
        PinChange::Accepted => {
            if let Some(i) = known {
                let r = g.tool_changes.remove(i);
                let by = t
                    .operator
                    .as_deref()
                    .map(|o| format!(" by {}", terminal_text(o)))
                    .unwrap_or_default();
                state.say(format!(
                    "gateway {label}: the new definition of {}/{} was accepted{by}",
                    r.server, r.tool
                ));
            }
        }
    }
    clamp(state);
}

/// A `hello`'s open reviews: they replace what the console had for that gateway (diffs of
/// changes it already had are kept, not recomputed).
pub(super) fn resume(state: &mut State, conn: usize, changes: Vec<ToolChanged>, at: DateTime<Utc>) {
    let old = std::mem::take(&mut state.gateways[conn].tool_changes);
    let mut new: Vec<ToolReview> = Vec::with_capacity(changes.len());
    for t in changes.into_iter().take(MAX_REVIEWS) {
        if t.change != PinChange::Changed {
            continue;
        }
        let known = old.iter().find(|r| r.is_for(&t.server, &t.tool));
        let review = ToolReview::from_event(t, known.map_or(at, |k| k.at), known);
        match new
            .iter()
            .position(|r| r.is_for(&review.raw_server, &review.raw_tool))
        {
            Some(i) => new[i] = review,
            None => new.push(review),
        }
    }
    state.gateways[conn].tool_changes = new;
    clamp(state);
}

/// `p`: accept the selected change's offered definition on the gateway that reported it.
pub(super) fn accept(state: &mut State) {
    let Some((conn, r)) = state.selected_review() else {
        return;
    };
    let Some(fingerprint) = r.offered_fingerprint.clone() else {
        state.complain(format!(
            "cannot accept {}/{}: the gateway sent no valid fingerprint for it",
            r.server, r.tool
        ));
        return;
    };
    let (server, tool) = (r.raw_server.clone(), r.raw_tool.clone());
    let pending = PendingPin {
        gateway: state.gateways[conn].key.clone(),
        server: r.server.clone(),
        tool: r.tool.clone(),
    };
    let id = state.next_command_id;
    state.next_command_id += 1;
    let msg = ClientMsg::AcceptPin {
        id,
        server,
        tool,
        fingerprint,
        operator: state.operator.clone(),
    };
    state.say(format!(
        "accepting the new definition of {}/{}…",
        pending.server, pending.tool
    ));
    let gateway = pending.gateway.clone();
    state.pending_pins.insert(id, pending);
    state.effects.push(Effect::Send { gateway, msg });
}

/// `x`: keep the selected change quarantined: the console stops listing it until the
/// tool's definition changes again. Nothing is sent: the gateway keeps it quarantined.
pub(super) fn keep(state: &mut State) {
    let Some((conn, r)) = state.selected_review() else {
        return;
    };
    let text = format!(
        "kept {}/{} {}; hidden here until its definition changes again (toolgate pins accept accepts it later)",
        r.server,
        r.tool,
        if r.quarantined {
            "quarantined"
        } else {
            "as it is (the policy only warns)"
        }
    );
    let kept = (
        state.gateways[conn].key.clone(),
        r.raw_server.clone(),
        r.raw_tool.clone(),
        r.offered_fingerprint.clone(),
    );
    state.tools_view.kept.push(kept);
    state.say(text);
    clamp(state);
}

/// The gateway's answer to an `accept_pin`; false when `reply` answers something else.
pub(super) fn replied(state: &mut State, reply: &Reply) -> bool {
    let Some(p) = state.pending_pins.remove(&reply.id) else {
        return false;
    };
    if reply.ok {
        state.say(format!(
            "accepted the new definition of {}/{}: pinned, calls go through again",
            p.server, p.tool
        ));
    } else {
        let why = reply
            .error
            .as_deref()
            .map(terminal_text)
            .unwrap_or_default();
        state.complain(format!("could not accept {}/{}: {why}", p.server, p.tool));
    }
    true
}

/// An `accept_pin` that could not be sent; false when `id` is not one.
pub(super) fn send_failed(state: &mut State, id: u64, error: &str) -> bool {
    let Some(p) = state.pending_pins.remove(&id) else {
        return false;
    };
    state.complain(format!(
        "could not accept {}/{}: {}",
        p.server,
        p.tool,
        terminal_text(error)
    ));
    true
}

/// Makes the diff of the change the Tools view shows, if it is not made yet: a diff is
/// computed once, for a change someone looks at.
pub(super) fn prepare_selected(state: &mut State) {
    if state.view != View::Tools {
        return;
    }
    let Some((conn, server, tool)) = state
        .selected_review()
        .filter(|(_, r)| r.diff.is_none())
        .map(|(conn, r)| (conn, r.raw_server.clone(), r.raw_tool.clone()))
    else {
        return;
    };
    if let Some(r) = state.gateways[conn]
        .tool_changes
        .iter_mut()
        .find(|r| r.is_for(&server, &tool))
    {
        r.prepare();
    }
}

/// Keeps the selection on a listed change, and the scroll with it.
pub(super) fn clamp(state: &mut State) {
    let len = state.open_reviews().len();
    let selected = state.tools_view.selected.min(len.saturating_sub(1));
    if selected != state.tools_view.selected {
        state.tools_view.scroll = 0;
    }
    state.tools_view.selected = selected;
}

/// Moves the Tools view's selection by `by` rows.
pub(super) fn move_selection(state: &mut State, by: isize) {
    let len = state.open_reviews().len();
    if len == 0 {
        return;
    }
    let cur = state.tools_view.selected as isize;
    let next = (cur + by).clamp(0, len as isize - 1) as usize;
    if next != state.tools_view.selected {
        state.tools_view.scroll = 0;
    }
    state.tools_view.selected = next;
}
