//! `toolgate gateways`: the gateways running on this machine, from their discovery files.

use std::process::ExitCode;

use crate::control;
use crate::sanitize::{self, terminal_text};

/// List the gateways running on this machine.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  toolgate gateways\n  toolgate gateways --json | jq -r '.[].id'"
)]
pub(super) struct Args {
    /// A JSON array of the gateways' discovery entries (tokens left out).
    #[arg(long)]
    json: bool,
    /// Include each gateway's websocket token in --json output (for scripts that connect).
    #[arg(long, requires = "json")]
    with_token: bool,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
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
