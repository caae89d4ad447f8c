//! `toolgate tail`: the live event stream of every local gateway (or of the remote ones given
//! by `--connect URL|@NAME`), as human lines or one JSON object per line.
//!
//! Gateways are found through their discovery files; the directory is scanned again every
//! few seconds, so gateways that start later are followed and ones that stop are let go.
//! Every string that came from outside (tool names, arguments, reasons, paths) goes through
//! [`crate::sanitize::terminal_text`] before it reaches the terminal in human mode; JSON mode
//! goes through [`crate::sanitize::json`], which writes C1 controls, bidi and invisible
//! characters as `\u` escapes (serde_json alone passes them through raw).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::Local;
use tokio::sync::mpsc;

use crate::control::client::connect_with;
use crate::control::remotes::Remote;
use crate::control::{self, ClientError};
use crate::sanitize::{self, terminal_text};
use crate::wire::{Event, EventKind, GrantsChange, PinChange, ResolvedBy, Verdict};

/// How often the discovery directory is scanned for new gateways.
const RESCAN: Duration = Duration::from_secs(2);

/// Longest argument preview on a human line.
const ARGS_PREVIEW: usize = 160;

/// Print the live events of the gateways on this machine.
///
/// Follows every running gateway (and ones that start later) until interrupted. Human lines
/// by default; `--json` prints each event as one JSON object per line (the wire format, see
/// docs/wire-protocol.md).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  toolgate tail\n  toolgate tail --json | jq -c 'select(.type == \"call\" and .decision == \"deny\")'\n  toolgate tail --connect https://gw.example:8787 --ca-file ca.pem --token-file alice.token\n  toolgate tail --connect @prod --json"
)]
pub(crate) struct Args {
    /// One JSON object per line instead of human lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: super::remote_args::RemoteArgs,
}

/// What the followers tell the printer.
enum Note {
    Event(Box<Event>),
    /// A gateway's stream ended (it stopped, or the connection failed).
    Gone {
        id: String,
        error: Option<String>,
    },
    /// A remote gateway's connection was lost, or could not be made again; another attempt
    /// follows after `retry_in`.
    Retrying {
        id: String,
        error: String,
        retry_in: Duration,
    },
}

/// The first wait before a lost remote gateway is tried again; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(tail(args))
}

async fn tail(args: Args) -> anyhow::Result<ExitCode> {
    let (tx, mut rx) = mpsc::channel::<Note>(1024);
    let mut stdout = std::io::stdout().lock();

    let remotes = args.remote.targets(&[])?;
    if !remotes.is_empty() {
        return tail_remotes(remotes, args.json, tx, rx, &mut stdout).await;
    }

    // Gateway id → whether its follower is running. Ids whose connection failed are kept
    // out for as long as their file stays, so a broken entry is reported once, not every scan.
    let mut following: HashSet<String> = HashSet::new();
    let mut failed: HashMap<String, String> = HashMap::new();
    let mut rescan = tokio::time::interval(RESCAN);
    let mut said_waiting = false;
    loop {
        tokio::select! {
            _ = rescan.tick() => {
                let running = control::list_gateways();
                failed.retain(|id, _| running.iter().any(|g| &g.id == id));
                if running.is_empty() && !said_waiting {
                    eprintln!(
                        "toolgate tail: no gateway is running yet (watching {}); waiting…",
                        control::describe_dirs()
                    );
                    said_waiting = true;
                }
                for gateway in running {
                    if following.contains(&gateway.id) || failed.contains_key(&gateway.id) {
                        continue;
                    }
                    following.insert(gateway.id.clone());
                    let tx = tx.clone();
                    spawn_follower(gateway.id.clone(), tx.clone(), async move {
                        match control::connect(&gateway.url, &gateway.token).await {
                            Ok(conn) => follow(gateway.id, conn, tx).await,
                            Err(e) => {
                                let _ = tx.send(Note::Gone { id: gateway.id, error: Some(e.to_string()) }).await;
                            }
                        }
                    });
                }
            }
            Some(note) = rx.recv() => match note {
                Note::Event(event) => print(&mut stdout, &event, args.json)?,
                // Local gateways are not retried: a new start is found by the next scan.
                Note::Retrying { .. } => {}
                Note::Gone { id, error } => {
                    following.remove(&id);
                    match error {
                        Some(e) => {
                            eprintln!("toolgate tail: gateway {}: {}", terminal_text(&id), terminal_text(&e));
                            failed.insert(id, e);
                        }
                        None if !args.json => {
                            writeln!(stdout, "── gateway {} disconnected", terminal_text(&id))?;
                            stdout.flush()?;
                        }
                        None => {}
                    }
                }
            },
        }
    }
}

/// Follows the remote gateways `remotes` (`--connect`, `@NAME`) until every one has ended.
/// Each is connected to first, so a wrong URL, token or certificate is an error at once; a
/// lost connection is retried with backoff (said on stderr); a gateway that no longer takes
/// the token ends with an error and makes the exit status 1.
async fn tail_remotes(
    remotes: Vec<Remote>,
    json: bool,
    tx: mpsc::Sender<Note>,
    mut rx: mpsc::Receiver<Note>,
    stdout: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let mut open = 0usize;
    for remote in remotes {
        let conn = connect_with(&remote.url, &remote.token, &remote.tls())
            .await
            .with_context(|| format!("cannot follow {}", remote.url))?;
        open += 1;
        spawn_follower(
            remote.url.clone(),
            tx.clone(),
            follow_remote(remote, conn, tx.clone()),
        );
    }
    drop(tx);
    let mut failed = false;
    while open > 0 {
        let Some(note) = rx.recv().await else { break };
        match note {
            Note::Event(event) => print(stdout, &event, json)?,
            Note::Retrying {
                id,
                error,
                retry_in,
            } => {
                eprintln!(
                    "toolgate tail: {}: {}; retrying in {:.1} s",
                    terminal_text(&id),
                    terminal_text(&error),
                    retry_in.as_secs_f64()
                );
            }
            Note::Gone { id, error } => {
                open -= 1;
                match error {
                    Some(e) => {
                        eprintln!(
                            "toolgate tail: {}: {}",
                            terminal_text(&id),
                            terminal_text(&e)
                        );
                        failed = true;
                    }
                    None if !json => {
                        writeln!(stdout, "── gateway {} disconnected", terminal_text(&id))?;
                        stdout.flush()?;
                    }
                    None => {}
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs `follower` (which says `Gone` itself when its stream ends). If it panics instead,
/// the printer is told the gateway `id` is gone with that as the error: a bug must not read
/// as a gateway that closed its stream, nor leave its events silently missing.
fn spawn_follower(
    id: String,
    tx: mpsc::Sender<Note>,
    follower: impl Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(e) = tokio::spawn(follower).await
            && e.is_panic()
        {
            let error =
                format!("following it failed with an internal error ({e}); please report it");
            let _ = tx
                .send(Note::Gone {
                    id,
                    error: Some(error),
                })
                .await;
        }
    });
}

/// Forwards one connection's events until it closes.
async fn follow(id: String, conn: control::Connection, tx: mpsc::Sender<Note>) {
    if let Some(error) = forward(conn, &tx).await {
        let _ = tx.send(Note::Gone { id, error }).await;
    }
}

/// Follows a remote gateway for as long as the printer wants it: when the connection is lost
/// it is retried with backoff (the printer is told), and each new connection starts from the
/// gateway's fresh `hello`, so nothing is printed twice. A token the gateway no longer
/// accepts (a revoked account) ends it, as an error.
async fn follow_remote(remote: Remote, first: control::Connection, tx: mpsc::Sender<Note>) {
    let id = remote.url.clone();
    let mut conn = Some(first);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let error = match conn.take() {
            Some(c) => {
                backoff = FIRST_BACKOFF;
                match forward(c, &tx).await {
                    None => return,
                    Some(error) => error.unwrap_or_else(|| "the gateway closed the stream".into()),
                }
            }
            None => match connect_with(&remote.url, &remote.token, &remote.tls()).await {
                Ok(c) => {
                    conn = Some(c);
                    continue;
                }
                Err(e @ ClientError::Unauthorized(_)) => {
                    let error = Some(format!("{e} (revoked, or the token changed)"));
                    let _ = tx.send(Note::Gone { id, error }).await;
                    return;
                }
                Err(e) => e.to_string(),
            },
        };
        let retrying = Note::Retrying {
            id: id.clone(),
            error,
            retry_in: backoff,
        };
        if tx.send(retrying).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Forwards a connection's events to the printer until it ends: `Some(why)` (`None` inside
/// for a clean close), or `None` when the printer is gone.
async fn forward(mut conn: control::Connection, tx: &mpsc::Sender<Note>) -> Option<Option<String>> {
    let error = loop {
        match conn.next_event().await {
            Some(Ok(event)) => {
                if tx.send(Note::Event(Box::new(event))).await.is_err() {
                    return None;
                }
            }
            Some(Err(e @ (ClientError::Decode(_) | ClientError::UnknownEvent(_)))) => {
                // One message this version does not understand is not the end of the stream.
                eprintln!(
                    "toolgate tail: skipped a message: {}",
                    terminal_text(&e.to_string())
                );
            }
            Some(Err(e)) => break Some(e.to_string()),
            None => break None,
        }
    };
    Some(error)
}

fn print(out: &mut impl Write, event: &Event, json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", sanitize::json(event)?)?;
    } else if let Some(line) = human_line(event) {
        writeln!(out, "{line}")?;
        if let EventKind::Hello(hello) = &event.kind {
            // What is waiting for a person right now, so its id is at hand for `approve`.
            for call_id in &hello.snapshot.holds {
                let tool = hello
                    .snapshot
                    .calls
                    .iter()
                    .find(|r| r.call.call_id == call_id)
                    .map(|r| terminal_text(&r.call.tool).into_owned())
                    .unwrap_or_default();
                writeln!(out, "  ⏸ held: {} {tool}", terminal_text(call_id))?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// One line saying what an event means, every outside string neutralised; `None` for events
/// a tail does not show (replies to commands it never sends).
pub(crate) fn human_line(event: &Event) -> Option<String> {
    let time = event.ts.with_timezone(&Local).format("%H:%M:%S%.3f");
    let gateway = terminal_text(&event.gateway);
    let what = match &event.kind {
        EventKind::Hello(hello) => {
            let info = &hello.info;
            let snap = &hello.snapshot;
            format!(
                "connected · server {} · grant {} · policy {} ({}) · {} held · {} recent calls",
                terminal_text(&info.server),
                terminal_text(&info.grant),
                terminal_text(&info.policy),
                snap.policy_hash
                    .as_deref()
                    .map(terminal_text)
                    .unwrap_or("none yet".into()),
                snap.holds.len(),
                snap.calls.len(),
            )
        }
        EventKind::Call(call) => {
            let decision = match call.decision {
                Verdict::Allow => "✓ allow".to_owned(),
                Verdict::Deny => "✗ deny".to_owned(),
                Verdict::RateLimited => match call.retry_after_ms {
                    Some(ms) => format!("⏱ rate limited (retry in {:.1} s)", ms as f64 / 1000.0),
                    None => "⏱ rate limited".to_owned(),
                },
                Verdict::Hold => "⏸ held".to_owned(),
            };
            // Redacted again: the gateway should have done it, but tail does not rely on that.
            let mut args = crate::redact::redact(&call.args.tree()).to_string();
            if args.chars().count() > ARGS_PREVIEW {
                args = args.chars().take(ARGS_PREVIEW).collect::<String>() + "…";
            } else if call.args_truncated {
                args.push('…');
            }
            let mut line = format!(
                "{} {} {} by {} · {}",
                terminal_text(&call.call_id),
                terminal_text(&call.tool),
                decision,
                terminal_text(&call.grant),
                terminal_text(&call.rule),
            );
            if !call.reason.is_empty() {
                line += &format!(" · {}", terminal_text(&call.reason));
            }
            line += &format!(" · {}", terminal_text(&args));
            if let Some(shadow) = &call.shadow {
                // `(shadow rule /tools/x/deny_if/0: would deny: deny_if holds: ...)`
                line += &format!(
                    " · (shadow {} {}: {}",
                    shadow.source.as_str(),
                    terminal_text(&shadow.rule),
                    shadow.would(),
                );
                if !shadow.reason.is_empty() {
                    line += &format!(": {}", terminal_text(&shadow.reason));
                }
                line.push(')');
            }
            line
        }
        EventKind::HoldResolved(resolved) => {
            let verdict = if resolved.approved {
                "approved"
            } else {
                "denied"
            };
            let by = match (resolved.by, &resolved.operator) {
                (ResolvedBy::Operator, Some(name)) => format!("by {}", terminal_text(name)),
                (ResolvedBy::Operator, None) => "by an operator".to_owned(),
                (ResolvedBy::Timeout, _) => "at its timeout".to_owned(),
                (ResolvedBy::Cancellation, _) => "on cancellation".to_owned(),
                (ResolvedBy::Shutdown, _) => "at shutdown".to_owned(),
            };
            let mut line = format!("{} {verdict} {by}", terminal_text(&resolved.call_id));
            if let Some(reason) = &resolved.reason {
                line += &format!(" · {}", terminal_text(reason));
            }
            line
        }
        EventKind::Outcome(outcome) => {
            let mut line = format!(
                "{} {} · {:.1} ms",
                terminal_text(&outcome.call_id),
                if outcome.error { "error" } else { "ok" },
                outcome.latency_us as f64 / 1000.0
            );
            if let Some(summary) = &outcome.summary {
                line += &format!(" · {}", terminal_text(summary));
            }
            line
        }
        EventKind::PolicyApplied(applied) => format!(
            "policy applied · {} · {}",
            terminal_text(&applied.path),
            terminal_text(&applied.hash)
        ),
        EventKind::PolicyRejected(rejected) => format!(
            "policy rejected · {} · {} (keeping {})",
            terminal_text(&rejected.path),
            rejected
                .diagnostics
                .iter()
                .map(|d| terminal_text(d).into_owned())
                .collect::<Vec<_>>()
                .join(" | "),
            rejected
                .kept_hash
                .as_deref()
                .map(terminal_text)
                .unwrap_or("no policy".into()),
        ),
        EventKind::Counters(counters) => format!(
            "counters · {}",
            counters
                .counters
                .iter()
                .map(|c| {
                    let key = if c.key.is_empty() {
                        String::new()
                    } else {
                        format!(":{}", terminal_text(&c.key))
                    };
                    format!(
                        "{} {}{key} {}/{}",
                        terminal_text(&c.counter),
                        terminal_text(&c.scope),
                        c.used,
                        c.max
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        EventKind::Upstream(upstream) => {
            let mut line = format!(
                "upstream {} {}",
                terminal_text(&upstream.server),
                if upstream.up { "up" } else { "down" }
            );
            if let Some(detail) = &upstream.detail {
                line += &format!(" · {}", terminal_text(detail));
            }
            line
        }
        EventKind::Store(store) => {
            let mut line = format!(
                "counter store {} {}",
                terminal_text(&store.store),
                if store.ok { "ok" } else { "unavailable" }
            );
            if let Some(detail) = &store.detail {
                line += &format!(" · {}", terminal_text(detail));
            }
            line
        }
        EventKind::SessionRefused(refused) => format!(
            "grant {} refused {} MCP session(s) (latest for {}): {}",
            terminal_text(&refused.grant),
            refused.refused,
            terminal_text(&refused.server),
            refused.cap.explain(refused.max)
        ),
        EventKind::Grants(grants) => format!(
            "grants {} · {}",
            match grants.change {
                GrantsChange::Applied => "applied",
                GrantsChange::Refused => "refused",
                GrantsChange::Deleted => "deleted, every token revoked",
            },
            terminal_text(&grants.detail)
        ),
        EventKind::ToolChanged(change) => {
            let (server, tool) = (terminal_text(&change.server), terminal_text(&change.tool));
            match change.change {
                PinChange::Changed => {
                    let mut line = format!(
                        "tool {tool} of {server} changed since it was pinned ({} → {}) · {}",
                        short_hash(&change.pinned_fingerprint),
                        short_hash(&change.offered_fingerprint),
                        if change.quarantined {
                            "quarantined until accepted"
                        } else {
                            "not enforced (pins: warn)"
                        }
                    );
                    if !change.flags.is_empty() {
                        line += &format!(" · {} description flag(s)", change.flags.len());
                    }
                    line
                }
                PinChange::Accepted => format!(
                    "tool {tool} of {server}: new definition {} accepted{}",
                    short_hash(&change.offered_fingerprint),
                    change
                        .operator
                        .as_deref()
                        .map(|o| format!(" by {}", terminal_text(o)))
                        .unwrap_or_default()
                ),
            }
        }
        EventKind::Audit(audit) => {
            let mut line = format!(
                "audit log {} {}",
                terminal_text(&audit.path),
                if audit.ok {
                    "written again"
                } else {
                    "cannot be written"
                }
            );
            if let Some(detail) = &audit.detail {
                line += &format!(" · {}", terminal_text(detail));
            }
            line
        }
        EventKind::Tools(tools) => format!(
            "tools from {} · {}",
            terminal_text(&tools.server),
            tools
                .tools
                .iter()
                .map(|t| terminal_text(&t.name).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        EventKind::Missed(missed) => format!(
            "missed {} events (this tail fell behind); a fresh snapshot follows",
            missed.dropped
        ),
        EventKind::Reply(_) => return None,
    };
    Some(format!("{time} {gateway} {what}"))
}

/// The first 12 characters of a fingerprint, sanitised (it came from outside).
fn short_hash(hex: &str) -> String {
    terminal_text(&hex.chars().take(12).collect::<String>()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{CallEvent, HoldResolved};
    use serde_json::json;

    #[tokio::test]
    async fn a_follower_that_panics_is_reported_gone_with_an_error_not_as_a_closed_stream() {
        let (tx, mut rx) = mpsc::channel(4);
        spawn_follower("gw-1".into(), tx.clone(), async move {
            let _keeps_the_channel_open = tx;
            panic!("a bug in following (simulated)");
        });
        let note = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("timed out waiting for the follower's note");
        match note {
            Some(Note::Gone {
                id,
                error: Some(error),
            }) => {
                assert_eq!(id, "gw-1");
                assert!(error.contains("internal error"), "{error}");
            }
            Some(Note::Gone { error: None, .. }) => panic!("the panic read as a closed stream"),
            Some(Note::Event(_)) => panic!("an event instead of the failure"),
            Some(Note::Retrying { .. }) => panic!("a retry instead of the failure"),
            None => panic!("the channel closed without saying the follower failed"),
        }
    }

    fn event(kind: EventKind) -> Event {
        Event {
            seq: 1,
            ts: chrono::Utc::now(),
            gateway: "g1".into(),
            kind,
        }
    }

    #[test]
    fn a_call_line_neutralises_escape_sequences_from_outside() {
        let line = human_line(&event(EventKind::Call(CallEvent {
            call_id: "g1-1".into(),
            tool: "evil\x1b[2Jtool".into(),
            grant: "ci".into(),
            session: "s".into(),
            server: "srv".into(),
            decision: Verdict::Deny,
            rule: "/tools/evil".into(),
            reason: "line\nbreak".into(),
            args: json!({"k": "\u{202e}x"}).into(),
            args_truncated: false,
            retry_after_ms: None,
            hold_deadline: None,
            shadow: None,
        })))
        .unwrap();
        assert!(!line.contains('\x1b'));
        assert!(!line.contains('\n'));
        assert!(!line.contains('\u{202e}'));
        assert!(line.contains("evil\\x1b[2Jtool"));
        assert!(line.contains("✗ deny"));
    }

    #[test]
    fn a_call_with_a_shadow_decision_says_what_would_have_happened_and_why() {
        let line = human_line(&event(EventKind::Call(CallEvent {
            call_id: "g1-3".into(),
            tool: "get_current_time".into(),
            grant: "ci".into(),
            session: "s".into(),
            server: "srv".into(),
            decision: Verdict::Allow,
            rule: "/default".into(),
            reason: Default::default(),
            args: json!({}).into(),
            args_truncated: false,
            retry_after_ms: None,
            hold_deadline: None,
            shadow: Some(Box::new(crate::wire::ShadowDecision {
                decision: Verdict::Deny,
                rule: "/tools/get_current_time/deny_if/0".into(),
                reason: "deny_if holds:\x1b[2J args.timezone eq \"UTC\"".into(),
                source: crate::wire::ShadowSource::Rule,
            })),
        })))
        .unwrap();
        assert!(line.contains("✓ allow"), "{line}");
        assert!(
            line.contains(
                "(shadow rule /tools/get_current_time/deny_if/0: would deny: deny_if holds:"
            ),
            "{line}"
        );
        assert!(!line.contains('\x1b'), "{line}");
    }

    #[test]
    fn a_resolution_line_says_who_resolved_it_and_why() {
        let line = human_line(&event(EventKind::HoldResolved(HoldResolved {
            call_id: "g1-2".into(),
            approved: false,
            by: ResolvedBy::Operator,
            operator: Some("alice".into()),
            reason: Some("not today".into()),
        })))
        .unwrap();
        assert!(
            line.ends_with("g1 g1-2 denied by alice · not today"),
            "{line}"
        );
    }

    #[test]
    fn a_session_refused_line_names_the_grant_the_count_and_the_flag() {
        let line = human_line(&event(EventKind::SessionRefused(
            crate::wire::SessionRefused {
                grant: "flood".into(),
                server: "time".into(),
                cap: crate::wire::SessionCap::Gateway,
                max: 512,
                refused: 3,
            },
        )))
        .unwrap();
        assert!(
            line.ends_with(
                "g1 grant flood refused 3 MCP session(s) (latest for time): the gateway has \
                 512 open sessions, as many as it may (--max-sessions)"
            ),
            "{line}"
        );
    }

    #[test]
    fn a_grants_line_says_what_became_of_the_file() {
        let line = human_line(&event(EventKind::Grants(crate::wire::GrantsChanged {
            path: "/srv/grants.json".into(),
            change: GrantsChange::Deleted,
            grants: 0,
            detail: "grants file /srv/grants.json was deleted\x1b[2J".into(),
        })))
        .unwrap();
        assert!(
            line.ends_with(
                "g1 grants deleted, every token revoked · grants file /srv/grants.json was deleted\\x1b[2J"
            ),
            "{line}"
        );
    }

    #[test]
    fn replies_are_not_shown() {
        assert!(
            human_line(&event(EventKind::Reply(crate::wire::Reply {
                id: 1,
                ok: true,
                ..Default::default()
            })))
            .is_none()
        );
    }
}
