//! `toolgate wrap`: the stdio gateway for one MCP server.

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::gateway_args::{GatewayArgs, wait_for_signal};
use crate::gateway::Gateway;
use crate::gateway::spin::Spin;
use crate::gateway::stdio::{Server, WrapError, WrapOptions, wrap};
use crate::gateway::upstream::ServerCommand;

/// Enforce a policy on every tool call between an MCP client and a stdio MCP server.
///
/// Put this where the server's command was in your agent's MCP config. stdout carries the
/// MCP protocol only; logs go to stderr.
#[derive(Debug, clap::Args)]
#[command(after_help = WRAP_EXAMPLE)]
pub(super) struct Args {
    /// Who the calls are attributed to (limits with scope "grant" count per grant).
    #[arg(long, value_name = "NAME", default_value = "default")]
    grant: String,
    /// The identity the server's tool pins belong to [default: the server's own name, its
    /// `serverInfo.name`]. Not the command line: upgrading the server keeps its pins, and
    /// its changed tools are reviewed rather than pinned afresh.
    #[arg(long, value_name = "NAME")]
    server_id: Option<String>,
    #[command(flatten)]
    gateway: GatewayArgs,
    /// The server's command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

const WRAP_EXAMPLE: &str = r#"Example:
  toolgate wrap --policy ~/policy.json --grant laptop -- npx -y @modelcontextprotocol/server-everything

In an MCP client config (Claude Desktop, Claude Code, Cursor):
  {
    "mcpServers": {
      "everything": {
        "command": "toolgate",
        "args": ["wrap", "--policy", "/home/me/policy.json", "--",
                 "npx", "-y", "@modelcontextprotocol/server-everything"]
      }
    }
  }"#;

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.gateway.init_logging();
    let spin = Spin::new(args.gateway.spin());
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    let runtime = spin
        .build(&mut builder)
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run_async(args, spin));
    // stdin that is neither a pipe nor a socket is read on a blocking thread that cannot be
    // interrupted; do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn run_async(args: Args, spin: Arc<Spin>) -> anyhow::Result<ExitCode> {
    let (program, rest) = args
        .command
        .split_first()
        .context("no server command after `--`")?;
    let server = ServerCommand {
        program: program.clone(),
        args: rest.to_vec(),
        env: Vec::new(),
    };
    let begun = args.gateway.begin(&args.grant, &server.display())?;
    // The server starts once the policy is loaded, while the audit log, the event websocket
    // and the counter store start: a client's first message then waits for the slower of
    // the two start-ups, not for their sum. Should the rest fail, dropping it kills it.
    let upstream = Server::start(&server)?;
    // Raised once the server has started, so it keeps the limit the gateway started with
    // without a step between fork and exec (see `ServerProcess::spawn`).
    crate::gateway::fd_limit::raise();
    let started = begun.finish(&args.gateway).await?;
    tracing::info!("gateway {}: grant {}", started.id, args.grant);
    let gateway = Arc::new(
        Gateway::new(
            started.policy.handle.clone(),
            started.store.clone(),
            started.hub.clone(),
            args.grant,
            server.display(),
        )
        .with_audit(started.audit.clone())
        .with_traces(started.traces.clone())
        .with_pins(Some(started.pins.clone()), args.server_id)
        .with_shadow_policy(started.shadow_handle())
        .with_learn(started.learn.clone()),
    );

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });

    let result = wrap(
        gateway,
        upstream,
        WrapOptions {
            session: started.id.clone(),
            grace: args.gateway.grace(),
            shutdown: shutdown_rx,
            max_message: args.gateway.max_message,
        },
    )
    .await;
    // No spin while the rest shuts down.
    spin.clear();
    let counts = spin.counts();
    tracing::debug!(
        "spin before sleeping: {} spins, {} ended by data, {} polls",
        counts.spins.load(std::sync::atomic::Ordering::Relaxed),
        counts.ready.load(std::sync::atomic::Ordering::Relaxed),
        counts.polls.load(std::sync::atomic::Ordering::Relaxed)
    );
    started.stop().await;
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(WrapError::Spawn(e)) => Err(e.into()),
        Err(e @ (WrapError::Panicked | WrapError::Stdin(_))) => Err(e.into()),
        Err(e @ WrapError::ServerDied { .. }) => {
            tracing::error!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}
