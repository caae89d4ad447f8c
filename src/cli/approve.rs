//! `toolgate approve` and `toolgate deny`: resolve a held call from a script.
//!
//! The call id names its gateway (`<gateway id>-<n>`), so the gateway is found among the
//! local ones by that prefix; when none matches, each running gateway is asked in turn.
//! Exit status: 0 when this command resolved the call, 1 when the gateway refused (unknown
//! call, already resolved), 2 when no gateway could be asked.

use std::process::ExitCode;

use anyhow::Context;

use crate::control::remotes::Remote;
use crate::control::{self, DiscoveryEntry};
use crate::sanitize::terminal_text;
use crate::wire::{ClientMsg, ReplyCode};

/// Approve a held call: it goes on to the upstream server.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  toolgate approve a1b2c3-17\n  toolgate approve a1b2c3-17 --connect https://gw.example:8787 --ca-file ca.pem --token-file alice.token"
)]
pub(super) struct ApproveArgs {
    /// The held call's id, as shown by `toolgate tail` or the console.
    call_id: String,
    #[command(flatten)]
    target: Target,
}

/// Deny a held call: the agent gets an error carrying the reason.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  toolgate deny a1b2c3-17\n  toolgate deny a1b2c3-17 --reason \"no production keys from CI\""
)]
pub(super) struct DenyArgs {
    /// The held call's id, as shown by `toolgate tail` or the console.
    call_id: String,
    /// Why; passed on to the agent.
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, clap::Args)]
struct Target {
    #[command(flatten)]
    remote: super::remote_args::RemoteArgs,
    /// The name recorded as having resolved the call (default: $USER).
    #[arg(long, value_name = "NAME")]
    operator: Option<String>,
}

pub(super) fn run_approve(args: ApproveArgs) -> anyhow::Result<ExitCode> {
    resolve(&args.call_id, true, None, args.target)
}

pub(super) fn run_deny(args: DenyArgs) -> anyhow::Result<ExitCode> {
    resolve(&args.call_id, false, args.reason, args.target)
}

fn resolve(
    call_id: &str,
    approve: bool,
    reason: Option<String>,
    target: Target,
) -> anyhow::Result<ExitCode> {
    let operator = target
        .operator
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok());
    let msg = if approve {
        ClientMsg::Approve {
            id: 1,
            call_id: call_id.to_owned(),
            operator,
        }
    } else {
        ClientMsg::Deny {
            id: 1,
            call_id: call_id.to_owned(),
            reason,
            operator,
        }
    };
    let remotes = target.remote.targets(&[])?;
    let candidates: Vec<Remote> = if remotes.is_empty() {
        let running = control::list_gateways();
        if running.is_empty() {
            anyhow::bail!(
                "no toolgate gateway is running on this machine (looked in {}); \
                 use --connect URL --token-file FILE (or --connect @NAME) for a remote one",
                control::describe_dirs()
            );
        }
        order_candidates(call_id, running)
            .into_iter()
            .map(|g| Remote::new(g.url, g.token))
            .collect()
    } else {
        // Replicas: the call is held by one of them; the others answer that they do not
        // know it, and the next is asked.
        remotes
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let verb = if approve { "approved" } else { "denied" };
    let shown = terminal_text(call_id);
    let mut refusal = None;
    let mut unreachable = Vec::new();
    for remote in candidates {
        let url = &remote.url;
        let answer = runtime.block_on(async {
            let mut conn =
                control::client::connect_with(&remote.url, &remote.token, &remote.tls()).await?;
            let reply = conn.request(&msg).await;
            conn.close().await;
            reply
        });
        match answer {
            Ok(reply) if reply.ok => {
                println!("{verb} {shown}");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(reply) => {
                let error = reply.error.unwrap_or_else(|| "refused".into());
                // "Already resolved" and a role that may not are final; "unknown" may just
                // be the wrong gateway.
                if error.contains("already resolved") || reply.code == Some(ReplyCode::Forbidden) {
                    eprintln!("toolgate: {}", terminal_text(&error));
                    return Ok(ExitCode::from(1));
                }
                refusal = Some(error);
            }
            Err(e) => unreachable.push(format!("{url}: {e}")),
        }
    }
    if let Some(error) = refusal {
        eprintln!("toolgate: {}", terminal_text(&error));
        for e in &unreachable {
            eprintln!("toolgate: (could not ask {})", terminal_text(e));
        }
        return Ok(ExitCode::from(1));
    }
    anyhow::bail!(
        "could not ask any gateway about {shown}: {}",
        unreachable.join("; ")
    )
}

/// The gateways to ask, in order: the one whose id prefixes the call id when there is one,
/// otherwise every gateway.
fn order_candidates(call_id: &str, running: Vec<DiscoveryEntry>) -> Vec<DiscoveryEntry> {
    let (named, others): (Vec<_>, Vec<_>) = running
        .into_iter()
        .partition(|g| call_id.starts_with(&format!("{}-", g.id)));
    if named.is_empty() { others } else { named }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> DiscoveryEntry {
        DiscoveryEntry {
            id: id.into(),
            url: format!("ws://{id}/"),
            token: String::new(),
            pid: 1,
            policy: String::new(),
            grant: String::new(),
            server: String::new(),
            started_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn the_gateway_named_by_the_call_id_is_asked_alone() {
        let order = order_candidates("ab-7", vec![entry("a"), entry("ab"), entry("abc")]);
        let ids: Vec<_> = order.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, ["ab"]);
    }

    #[test]
    fn without_a_matching_gateway_every_one_is_asked() {
        let order = order_candidates("zz-7", vec![entry("a"), entry("b")]);
        assert_eq!(order.len(), 2);
    }
}
