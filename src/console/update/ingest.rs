//! What a gateway's events do to the state: calls remembered, holds kept, counters, tools,
//! and a reconnection's snapshot taken over without duplicates. Every piece of outside text
//! is made safe for the terminal here, as it enters the state.

use crate::console::model::history::{sanitize_outcome, sanitize_resolution};
use crate::console::model::{
    CallRow, Effect, Hold, OfferedTool, SeenCounter, SeenGateway, State, View, resolution_label,
    short_hash,
};
use crate::sanitize::{terminal_string, terminal_text};
use crate::wire::{
    CounterState, Event, EventKind, GatewayInfo, GrantsChange, Hello, HoldResolved, ToolInfo,
    Verdict,
};

use super::authoring;

/// Applies a gateway event.
pub(super) fn ingest(state: &mut State, key: &str, event: Event) {
    let (conn, g) = state.gateway_mut(key);
    g.last_seq = g.last_seq.max(event.seq);
    let ts = event.ts;
    match event.kind {
        EventKind::Hello(hello) => {
            tracing::info!(
                gateway = key,
                seq = event.seq,
                calls = hello.snapshot.calls.len(),
                holds = hello.snapshot.holds.len(),
                "hello"
            );
            resume(state, conn, *hello)
        }
        EventKind::Call(call) => {
            let g = &mut state.gateways[conn];
            match call.decision {
                Verdict::Allow => g.totals.allow += 1,
                Verdict::Deny => g.totals.deny += 1,
                Verdict::RateLimited => g.totals.rate_limited += 1,
                Verdict::Hold => g.totals.hold += 1,
            }
            state.authoring.shadow_tally.count(&call);
            add_call(state, CallRow::new(conn, ts, call), true);
        }
        EventKind::HoldResolved(r) => {
            let r = sanitize_resolution(r);
            resolved_elsewhere(state, &r, ts);
            state.holds.retain(|h| h.call.call_id != r.call_id);
            clamp_holds_selection(state);
            if let Some(row) = state.history.find_mut(&r.call_id) {
                row.resolution = Some(Box::new(r));
            }
        }
        EventKind::Outcome(o) => {
            let o = sanitize_outcome(o);
            if let Some(row) = state.history.find_mut(&o.call_id) {
                row.outcome = Some(Box::new(o));
            }
        }
        EventKind::PolicyApplied(p) => {
            let g = &mut state.gateways[conn];
            g.policy_hash = Some(terminal_string(p.hash));
            g.policy_applied_at = Some(ts);
            g.policy_error = None;
            let msg = format!(
                "gateway {} applied policy {}",
                g.label(),
                short_hash(g.policy_hash.as_deref().unwrap_or(""))
            );
            let hash = g.policy_hash.clone().unwrap_or_default();
            state.say(msg);
            authoring::applied(state, conn, &hash);
        }
        EventKind::PolicyRejected(p) => {
            let g = &mut state.gateways[conn];
            let diags: Vec<String> = p.diagnostics.into_iter().map(terminal_string).collect();
            let first = diags.first().cloned().unwrap_or_default();
            g.policy_error = Some(diags);
            g.policy_hash = p.kept_hash.map(terminal_string).or(g.policy_hash.take());
            let msg = format!("gateway {} refused the policy change: {first}", g.label());
            let diags = g.policy_error.clone().unwrap_or_default();
            state.complain(msg);
            authoring::rejected(state, conn, &diags);
        }
        EventKind::Counters(c) => {
            let at = state.now;
            let g = &mut state.gateways[conn];
            for new in c.counters {
                let new = SeenCounter {
                    state: sanitize_counter(new),
                    at,
                };
                let same = |o: &SeenCounter| {
                    o.state.counter == new.state.counter
                        && o.state.scope == new.state.scope
                        && o.state.key == new.state.key
                };
                match g.counters.iter_mut().find(|o| same(o)) {
                    Some(old) => *old = new,
                    None => g.counters.push(new),
                }
            }
        }
        EventKind::Upstream(u) => {
            let g = &mut state.gateways[conn];
            g.upstream_up = u.up;
            if !u.up {
                let msg = format!(
                    "gateway {}: upstream {} is down{}",
                    g.label(),
                    terminal_text(&u.server),
                    u.detail
                        .map(|d| format!(": {}", terminal_text(&d)))
                        .unwrap_or_default()
                );
                state.complain(msg);
            }
        }
        EventKind::Store(s) => {
            let label = state.gateways[conn].label().to_owned();
            let store = terminal_text(&s.store);
            if s.ok {
                state.say(format!(
                    "gateway {label}: counter store {store} answers again"
                ));
            } else {
                let why = s.detail.map(|d| terminal_text(&d).into_owned());
                state.complain(format!(
                    "gateway {label}: counter store {store} unavailable{}",
                    why.map(|d| format!(": {d}")).unwrap_or_default()
                ));
            }
        }
        EventKind::SessionRefused(r) => {
            let label = state.gateways[conn].label().to_owned();
            state.complain(format!(
                "gateway {label}: {} MCP session(s) of grant {} refused: {}",
                r.refused,
                terminal_text(&r.grant),
                r.cap.explain(r.max)
            ));
        }
        EventKind::Grants(grants) => {
            let label = state.gateways[conn].label().to_owned();
            let text = format!("gateway {label}: {}", terminal_text(&grants.detail));
            match grants.change {
                GrantsChange::Applied => state.say(text),
                GrantsChange::Refused | GrantsChange::Deleted => state.complain(text),
            }
        }
        EventKind::Audit(a) => {
            let label = state.gateways[conn].label().to_owned();
            let path = terminal_text(&a.path);
            let detail = a
                .detail
                .map(|d| format!(": {}", terminal_text(&d)))
                .unwrap_or_default();
            if a.ok {
                state.say(format!(
                    "gateway {label}: audit log {path} written again{detail}"
                ));
            } else {
                state.complain(format!(
                    "gateway {label}: audit log {path} cannot be written{detail}"
                ));
            }
        }
        EventKind::Tools(t) => set_tools(state, conn, t.tools),
        EventKind::ToolChanged(t) => super::pins::changed(state, conn, t, ts),
        EventKind::Missed(m) => {
            tracing::warn!(gateway = key, dropped = m.dropped, "missed events");
            let label = state.gateways[conn].label().to_owned();
            state.complain(format!(
                "fell behind gateway {label} ({} events dropped); resyncing",
                m.dropped
            ));
        }
        EventKind::Reply(r) => {
            if super::pins::replied(state, &r) || super::remote_policy::replied(state, conn, &r) {
                return;
            }
            let Some(p) = state.pending.remove(&r.id) else {
                return;
            };
            let verb = if p.approve { "approved" } else { "denied" };
            if r.ok {
                state.say(format!("{verb} {}", p.call_id));
            } else {
                let why = r.error.as_deref().map(terminal_text).unwrap_or_default();
                let verb = if p.approve { "approve" } else { "deny" };
                state.complain(format!("could not {verb} {}: {why}", p.call_id));
            }
        }
    }
}

/// Keeps the Holds view's selection on a hold someone else resolved (another console, a
/// script, the timeout) when it is the one selected, and says who did it; a resolution this
/// console asked for is not "elsewhere".
fn resolved_elsewhere(state: &mut State, r: &HoldResolved, ts: chrono::DateTime<chrono::Utc>) {
    let selected = state
        .holds
        .get(state.holds_view.selected)
        .is_some_and(|h| h.call.call_id == r.call_id);
    let ours = state.pending.values().any(|p| p.call_id == r.call_id);
    // Only the Holds view selects by position in a list that shrinks under the operator.
    if state.view != View::Holds
        || !selected
        || ours
        || state.holds_view.resolved_elsewhere.is_some()
    {
        return;
    }
    state.holds_view.resolved_elsewhere = Some((r.call_id.clone(), ts));
    state.holds_view.detail = Some(r.call_id.clone());
    state.holds_view.detail_scroll = 0;
    let tool = state
        .history
        .find(&r.call_id)
        .map(|row| row.call.tool.clone())
        .unwrap_or_default();
    state.say(format!(
        "{} ({tool}) was {}",
        r.call_id,
        resolution_label(r, None, state.now)
    ));
}

/// A (re)connection's `hello`: take the gateway's state from its snapshot.
fn resume(state: &mut State, conn: usize, hello: Hello) {
    let Hello { info, snapshot, .. } = hello;
    {
        let g = &mut state.gateways[conn];
        g.info = Some(sanitize_info(info));
        g.policy_hash = snapshot.policy_hash.map(terminal_string);
        g.policy_error = snapshot
            .policy_error
            .map(|d| d.into_iter().map(terminal_string).collect());
        let at = state.now;
        g.counters = snapshot
            .counters
            .into_iter()
            .map(|c| SeenCounter {
                state: sanitize_counter(c),
                at,
            })
            .collect();
        g.upstream_up = snapshot.upstream_up;
        g.totals = snapshot.totals;
        g.counter_store = snapshot.counter_store.map(terminal_string);
    }
    set_tools(state, conn, snapshot.tools);
    let now = state.now;
    super::pins::resume(state, conn, snapshot.tool_changes, now);
    let held_before: Vec<String> = state
        .holds
        .iter()
        .filter(|h| h.conn == conn)
        .map(|h| h.call.call_id.to_string())
        .collect();
    for record in snapshot.calls {
        // A record from a gateway that does not send its time is placed at the moment the
        // snapshot arrived.
        let mut row = CallRow::new(conn, record.ts.unwrap_or(state.now), record.call);
        row.resolution = record.resolution.map(|r| Box::new(sanitize_resolution(r)));
        row.outcome = record.outcome.map(|o| Box::new(sanitize_outcome(o)));
        add_call(state, row, false);
    }
    // Holds resolved while we were away disappear; holds we did not know ring the bell once.
    let now_held: Vec<String> = snapshot.holds.into_iter().map(terminal_string).collect();
    state
        .holds
        .retain(|h| h.conn != conn || now_held.iter().any(|id| *id == h.call.call_id));
    let mut rang = false;
    for id in &now_held {
        if state.is_held(id) {
            continue;
        }
        if let Some(row) = state.history.find(id) {
            let hold = Hold {
                conn,
                ts: row.ts,
                call: row.call.clone(),
                args: row.args.clone(),
            };
            insert_hold(state, hold);
            if !held_before.contains(id) && !rang {
                state.effects.push(Effect::Bell);
                rang = true;
            }
        }
    }
    clamp_holds_selection(state);
}

/// Adds a call to the history (and the filter's list, the holds, the rate). `live` is false
/// for calls replayed from a snapshot: they neither ring nor count twice.
fn add_call(state: &mut State, row: CallRow, live: bool) {
    let known = state.history.position(&row.call.call_id);
    let row = match known.and_then(|p| state.history.get(p)) {
        // A replayed call keeps the time it was first seen.
        Some(old) if !live => CallRow { ts: old.ts, ..row },
        _ => row,
    };
    let held = row.call.decision == Verdict::Hold && row.resolution.is_none();
    let hold = held.then(|| Hold {
        conn: row.conn,
        ts: row.ts,
        call: row.call.clone(),
        args: row.args.clone(),
    });
    // Calls replayed from a snapshot were counted when they happened (if this console saw
    // them) or belong to the past: counting them now would make a spike at the connection.
    if known.is_none() && live {
        state.rate.record(row.ts);
    }
    let conn = row.conn;
    let matches = !state.live.filter.is_empty()
        && state.live.filter.matches(
            &row,
            state.gateways.get(conn).map_or("", SeenGateway::label),
        );
    let pos = state.history.push(row);
    if matches && known.is_none() {
        state.live.filtered.push(pos);
    }
    if live
        && let Some(hold) = hold
        && !state.is_held(&hold.call.call_id)
    {
        insert_hold(state, hold);
        state.effects.push(Effect::Bell);
    }
}

fn insert_hold(state: &mut State, hold: Hold) {
    // Oldest first; equal times keep arrival order.
    let at = state.holds.partition_point(|h| h.ts <= hold.ts);
    state.holds.insert(at, hold);
}

pub(super) fn clamp_holds_selection(state: &mut State) {
    let len = state.holds.len();
    state.holds_view.selected = state.holds_view.selected.min(len.saturating_sub(1));
    if let Some(id) = &state.holds_view.detail
        && !state.is_held(id)
        && state.history.find(id).is_none()
    {
        state.holds_view.detail = None;
    }
}

/// The upstream's tools changed: keep them (text made safe), each classified once here.
fn set_tools(state: &mut State, conn: usize, tools: Vec<ToolInfo>) {
    state.gateways[conn].tools = tools
        .into_iter()
        .map(|t| {
            let info = sanitize_tool(t);
            let class = crate::scan::classify(&info);
            OfferedTool { info, class }
        })
        .collect();
    state.tools_revision += 1;
}

fn sanitize_info(i: GatewayInfo) -> GatewayInfo {
    GatewayInfo {
        id: terminal_string(i.id),
        version: terminal_string(i.version),
        grant: terminal_string(i.grant),
        server: terminal_string(i.server),
        policy: terminal_string(i.policy),
        ..i
    }
}

fn sanitize_counter(c: CounterState) -> CounterState {
    CounterState {
        counter: terminal_string(c.counter),
        scope: terminal_string(c.scope),
        key: terminal_string(c.key),
        ..c
    }
}

fn sanitize_tool(t: ToolInfo) -> ToolInfo {
    ToolInfo {
        name: terminal_string(t.name),
        description: t.description.map(terminal_string),
        ..t
    }
}
