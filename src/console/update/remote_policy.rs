//! The remote policy write, the console's side (issue 17): editing the policy of gateways
//! on other machines, as a local file is edited.
//!
//! When the console follows remote gateways (`--connect`, `@NAME`) and no `--policy` is
//! given, the policy it edits is the first remote gateway's: its text comes from a
//! `read_policy` command rather than from a file, and `:reload` asks again. `:w` (and `y` on
//! the review) sends `write_policy` with the edited text and the hash it was based on to
//! every connected gateway running that same policy (its `policy_hash` is the draft's base
//! hash, the one it was read from always included); each validates, checks the hash, writes
//! its own file and applies it through its watcher. The console then waits, as for a local
//! write, for each gateway's `policy_applied` with the new hash, and says "applied by N of M
//! gateways", naming any that refused and why. A `conflict` (the file changed on a gateway)
//! offers `:reload` and `:w!`; `read_only` says the policy is managed elsewhere. Nothing is
//! rolled back by itself.
//!
//! As the rest of [`super`], nothing here does I/O: commands leave as [`Effect::Send`].

use crate::console::model::remote_policy::RemoteWrite;
use crate::console::model::{Awaiting, Effect, State, short_hash};
use crate::policy::file::hash_bytes;
use crate::sanitize::{terminal_string, terminal_text};
use crate::wire::{ClientMsg, Reply, ReplyCode};

/// Whether the policy the console edits is a remote gateway's: remote gateways are followed
/// and no local file was named with `--policy`.
pub(crate) fn is_remote(state: &State) -> bool {
    state.policy_path.is_none() && !state.remote_hosts.is_empty()
}

/// The connection the policy is read from: the one it was read from before, else the first
/// remote gateway connected and known.
fn source(state: &State) -> Option<usize> {
    if let Some(key) = &state.authoring.remote.source
        && let Some(&conn) = state.gateway_index.get(key)
        && state.gateways[conn].is_up()
    {
        return Some(conn);
    }
    state
        .distinct_gateways()
        .find(|(_, g)| g.is_remote() && g.is_up() && g.info.is_some())
        .map(|(conn, _)| conn)
}

fn next_id(state: &mut State) -> u64 {
    let id = state.next_command_id;
    state.next_command_id += 1;
    id
}

/// Asks a remote gateway for its policy once one is connected (the first load).
pub(crate) fn ensure_loaded(state: &mut State) {
    if state.authoring.load_requested || state.authoring.draft.is_some() {
        return;
    }
    if request(state) {
        state.authoring.load_requested = true;
    }
}

/// `:reload` (or a change made elsewhere under an unedited draft): asks again.
pub(crate) fn reload(state: &mut State) {
    if request(state) {
        state.say("reloading the policy from the gateway");
    } else {
        state.complain("no remote gateway connected to read the policy from");
    }
}

/// Sends `read_policy` to the source gateway; false when none is connected.
fn request(state: &mut State) -> bool {
    let Some(conn) = source(state) else {
        return false;
    };
    let id = next_id(state);
    let gateway = state.gateways[conn].key.clone();
    state.authoring.remote.reading = Some((id, conn));
    state.effects.push(Effect::Send {
        gateway,
        msg: ClientMsg::ReadPolicy { id },
    });
    true
}

/// A gateway's answer; false when `reply` is not to a policy command of this console.
pub(crate) fn replied(state: &mut State, conn: usize, reply: &Reply) -> bool {
    if state.authoring.remote.reading.map(|(id, _)| id) == Some(reply.id) {
        state.authoring.remote.reading = None;
        read_answered(state, conn, reply);
        return true;
    }
    let Some(write) = state.authoring.remote.write.as_mut() else {
        return false;
    };
    let Some(to) = write.conn_of(reply.id) else {
        return false;
    };
    if write.answered_by(to) {
        // A second answer to one command (a gateway is outside input): the first stands, and
        // it must not count for a gateway that has not answered yet.
        return true;
    }
    if reply.ok {
        write.written.push(to);
    } else {
        let code = reply.code.unwrap_or(ReplyCode::Failed);
        let why = reply
            .error
            .as_deref()
            .map(|e| terminal_text(e).into_owned())
            .unwrap_or_else(|| "refused".into());
        if code == ReplyCode::Conflict
            && let Some(p) = &reply.policy
        {
            write.current = Some(p.text.clone());
        }
        write.refused.push((to, code, why));
    }
    if write.answered() {
        write_answered(state);
    }
    true
}

/// The connection `conn` went down. An answer is never carried over a reconnect, so its
/// unanswered policy commands are over: a `read_policy` is asked again once a gateway is
/// connected, and a `write_policy` counts as failed, its outcome unknown (the gateway may
/// have written the file before the connection dropped; `:reload` shows what it has).
pub(crate) fn connection_lost(state: &mut State, conn: usize, error: &str) {
    if let Some((_, to)) = state.authoring.remote.reading
        && to == conn
    {
        state.authoring.remote.reading = None;
        state.authoring.load_requested = false;
    }
    let lost: Vec<u64> = state
        .authoring
        .remote
        .write
        .as_ref()
        .map(|w| {
            w.sent
                .iter()
                .filter(|(_, to)| *to == conn && !w.answered_by(conn))
                .map(|(id, _)| *id)
                .collect()
        })
        .unwrap_or_default();
    for id in lost {
        let reply = Reply {
            id,
            ok: false,
            error: Some(format!(
                "the connection was lost before it answered ({error}); whether it wrote the \
                 policy is unknown: :reload shows what it has"
            )),
            code: Some(ReplyCode::Failed),
            ..Reply::default()
        };
        replied(state, conn, &reply);
    }
}

/// A policy command that could not be sent; false when `id` is not one.
pub(crate) fn send_failed(state: &mut State, id: u64, error: &str) -> bool {
    let reply = Reply {
        id,
        ok: false,
        error: Some(format!("not sent: {error}")),
        code: Some(ReplyCode::Failed),
        ..Reply::default()
    };
    let conn = state
        .authoring
        .remote
        .write
        .as_ref()
        .and_then(|w| w.conn_of(id))
        .unwrap_or(0);
    replied(state, conn, &reply)
}

fn read_answered(state: &mut State, conn: usize, reply: &Reply) {
    let place = state.gateway_place(conn);
    match (&reply.policy, reply.ok) {
        (Some(policy), true) => {
            let key = state.gateways[conn].key.clone();
            let path = terminal_string(policy.path.clone());
            state.authoring.remote.source = Some(key);
            state.authoring.remote.writable = policy.writable;
            super::authoring::loaded(state, path, Ok(policy.text.clone()));
            if !policy.writable {
                state.complain(format!(
                    "the policy of {place} is managed elsewhere (the gateway cannot write \
                     its file): it can be read here, not written"
                ));
            }
        }
        _ => {
            let why = reply
                .error
                .clone()
                .unwrap_or_else(|| "no policy in the answer".into());
            let path = state.gateways[conn]
                .info
                .as_ref()
                .map(|i| i.policy.clone())
                .unwrap_or_default();
            super::authoring::loaded(state, path, Err(format!("{place}: {why}")));
        }
    }
}

/// `y` on the review of a remote policy: sends the draft to every connected gateway running
/// the policy it was based on.
pub(crate) fn write(state: &mut State, force: bool) {
    let Some(draft) = state.authoring.draft.as_ref() else {
        return;
    };
    if !state.authoring.remote.writable {
        state.complain(
            "the policy is managed elsewhere (the gateway cannot write its file): not written",
        );
        return;
    }
    let text = draft.text().to_owned();
    let base_hash = draft.base_hash.clone();
    let source = state
        .authoring
        .remote
        .source
        .as_ref()
        .and_then(|k| state.gateway_index.get(k))
        .copied();
    let targets: Vec<(usize, String)> = state
        .distinct_gateways()
        .filter(|(conn, g)| {
            g.is_up() && (Some(*conn) == source || g.policy_hash.as_deref() == Some(&base_hash))
        })
        .map(|(conn, g)| (conn, g.key.clone()))
        .collect();
    if targets.is_empty() {
        state.complain("no gateway running this policy is connected: not written");
        return;
    }
    let mut sent = Vec::new();
    for (conn, gateway) in targets {
        let id = next_id(state);
        sent.push((id, conn));
        state.effects.push(Effect::Send {
            gateway,
            msg: ClientMsg::WritePolicy {
                id,
                text: text.clone(),
                base_hash: base_hash.clone(),
                force,
            },
        });
    }
    let n = sent.len();
    let hash = hash_bytes(text.as_bytes());
    state.say(format!(
        "sending policy {} to {n} gateway{}…",
        short_hash(&hash),
        plural(n)
    ));
    state.authoring.remote.write = Some(RemoteWrite {
        hash,
        text,
        sent,
        written: Vec::new(),
        refused: Vec::new(),
        current: None,
    });
}

/// Every gateway has answered the write: the draft follows what was written, and the
/// operator is told who refused and why.
fn write_answered(state: &mut State) {
    let Some(write) = state.authoring.remote.write.clone() else {
        return;
    };
    let total = write.total();
    let refusals: Vec<String> = write
        .refused
        .iter()
        .map(|(conn, code, why)| {
            format!(
                "{} ({}): {why}",
                state.gateway_place(*conn),
                code_words(*code)
            )
        })
        .collect();
    if !write.written.is_empty() {
        if let Some(draft) = state.authoring.draft.as_mut() {
            draft.previous = Some(draft.base.clone());
            draft.rebase(write.text.clone());
            state.authoring.shadow_tally.policy_is(&draft.base_hash);
        }
        state.authoring.conflict = None;
        state.authoring.awaiting = Some(Awaiting {
            hash: write.hash.clone(),
            applied: Vec::new(),
            rejected: Vec::new(),
        });
        let mut text = format!(
            "policy {} written by {} of {total} gateway{}; waiting for them to apply it",
            short_hash(&write.hash),
            write.written.len(),
            plural(total)
        );
        if refusals.is_empty() {
            state.say(text);
        } else {
            text.push_str(&format!("; refused by {}", refusals.join("; ")));
            state.complain(text);
        }
        return;
    }
    // Nobody wrote it: the draft stays as it is.
    if let Some(current) = write.current {
        state.authoring.conflict = Some(current);
        state.complain(format!(
            "the policy changed on the gateway since it was read: :reload takes it (drops the \
             draft), :w! overwrites it · {}",
            refusals.join("; ")
        ));
    } else if write
        .refused
        .iter()
        .all(|(_, code, _)| *code == ReplyCode::ReadOnly)
    {
        state.authoring.remote.writable = false;
        state.complain(format!(
            "the policy is managed elsewhere: {}",
            refusals.join("; ")
        ));
    } else {
        state.complain(format!(
            "the policy was not written: {}",
            refusals.join("; ")
        ));
    }
}

/// "applied by N of M gateways", when the write under way is a remote one.
pub(crate) fn of_total(state: &State, hash: &str) -> Option<usize> {
    state
        .authoring
        .remote
        .write
        .as_ref()
        .filter(|w| w.hash == hash)
        .map(RemoteWrite::total)
}

fn code_words(code: ReplyCode) -> &'static str {
    match code {
        ReplyCode::Forbidden => "not allowed",
        ReplyCode::Conflict => "changed since read",
        ReplyCode::Invalid => "invalid",
        ReplyCode::ReadOnly => "managed elsewhere",
        ReplyCode::Unsupported => "not supported",
        ReplyCode::Failed => "failed",
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
