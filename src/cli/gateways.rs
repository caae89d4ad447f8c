//! `toolgate gateways`: the gateways running on this machine, from their discovery files, or
//! the remote ones of `--connect URL|@NAME`, from their `hello`.

use std::process::ExitCode;

use crate::control;
use crate::sanitize::{self, terminal_text};

/// List the gateways running on this machine (or the remote ones given with --connect).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  toolgate gateways\n  toolgate gateways --json | jq -r '.[].id'\n  toolgate gateways --connect @prod"
)]
pub(super) struct Args {
    /// A JSON array of the gateways' discovery entries (tokens left out).
    #[arg(long)]
    json: bool,
    /// Include each gateway's websocket token in --json output (for scripts that connect).
    #[arg(long, requires = "json")]
    with_token: bool,
    #[command(flatten)]
    remote: super::remote_args::RemoteArgs,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let remotes = args.remote.targets(&[])?;
    if !remotes.is_empty() {
        return remote_gateways(remotes, args.json);
    }
    let mut running = control::list_gateways();
    if args.json {
        if !args.with_token {
            for g in &mut running {
                g.token.clear();
            }
        }
        println!("{}", sanitize::json_pretty(&running)?);
        return Ok(ExitCode::SUCCESS);
    }
    if running.is_empty() {
        println!(
            "no gateway running (looked in {})",
            control::describe_dirs()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<10} {:>7}  {:<19}  {:<12} {:<24} {:<22} POLICY",
        "ID", "PID", "STARTED", "GRANT", "SERVER", "EVENTS"
    );
    for g in running {
        println!(
            "{:<10} {:>7}  {:<19}  {:<12} {:<24} {:<22} {}",
            terminal_text(&g.id),
            g.pid,
            g.started_at
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S"),
            terminal_text(&g.grant),
            terminal_text(&g.server),
            terminal_text(&g.url),
            terminal_text(&g.policy),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One remote gateway as `toolgate gateways --connect` reports it.
#[derive(Debug, serde::Serialize)]
struct RemoteGateway {
    url: String,
    host: String,
    /// From its `hello`; absent when it could not be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<crate::wire::GatewayInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Connects to each remote, reads its `hello` and lists what it says; exit status 1 when one
/// could not be reached.
fn remote_gateways(remotes: Vec<control::remotes::Remote>, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut found = Vec::new();
    for remote in remotes {
        let hello = runtime.block_on(async {
            let mut conn =
                control::client::connect_with(&remote.url, &remote.token, &remote.tls()).await?;
            let first = conn.next_event().await;
            conn.close().await;
            match first {
                Some(Ok(crate::wire::Event {
                    kind: crate::wire::EventKind::Hello(hello),
                    ..
                })) => Ok(hello),
                Some(Err(e)) => Err(e),
                _ => Err(control::ClientError::NoHello),
            }
        });
        let host = remote.host();
        found.push(match hello {
            Ok(hello) => RemoteGateway {
                url: remote.url,
                host,
                policy_hash: hello.snapshot.policy_hash.clone(),
                info: Some(hello.info),
                error: None,
            },
            Err(e) => RemoteGateway {
                url: remote.url,
                host,
                info: None,
                policy_hash: None,
                error: Some(e.to_string()),
            },
        });
    }
    let failed = found.iter().any(|g| g.error.is_some());
    if json {
        println!("{}", sanitize::json_pretty(&found)?);
    } else {
        println!(
            "{:<10} {:<24} {:<8} {:<24} {:<36} POLICY",
            "ID", "HOST", "PID", "SERVER", "URL"
        );
        for g in &found {
            match &g.info {
                Some(info) => println!(
                    "{:<10} {:<24} {:<8} {:<24} {:<36} {} ({})",
                    terminal_text(&info.id),
                    terminal_text(&g.host),
                    info.pid,
                    terminal_text(&info.server),
                    terminal_text(&g.url),
                    terminal_text(&info.policy),
                    terminal_text(
                        g.policy_hash
                            .as_deref()
                            .map_or("none", |h| &h[..h.len().min(12)])
                    ),
                ),
                None => println!(
                    "{:<10} {:<24} {:<8} {:<24} {:<36} unreachable: {}",
                    "?",
                    terminal_text(&g.host),
                    "",
                    "",
                    terminal_text(&g.url),
                    terminal_text(g.error.as_deref().unwrap_or("")),
                ),
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
