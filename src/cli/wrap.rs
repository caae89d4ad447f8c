//! `toolgate wrap`: the stdio gateway for one MCP server.

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::gateway_args::{GatewayArgs, wait_for_signal};
use crate::gateway::Gateway;
use crate::gateway::spin::{self, Spin};
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
    /// Before the gateway's thread sleeps, poll the agent's and the server's pipes (and
    /// whatever else would wake it) for up to this many microseconds, and go on at once
    /// when one has data; the counter store's thread likewise looks for more admissions
    /// before it sleeps. Saves a wake-up per message on machines whose idle CPUs are slow
    /// to wake, at the cost of at most that much CPU per message while calls flow
    /// (yielding the CPU to anything else ready to run); an idle gateway does not spin. 0
    /// turns both off.
    #[arg(long, value_name = "MICROSECONDS", env = "TOOLGATE_SPIN_US", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    spin_us: u64,
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
    let spin = Spin::new(Duration::from_micros(args.spin_us));
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    if spin.enabled() {
        let spin = spin.clone();
        // Runs each time the runtime has no more work, just before it sleeps.
        builder.on_thread_park(move || {
            spin.spin();
        });
    }
    let before = spin::epoll_descriptors();
    let runtime = builder.build().context("cannot start the async runtime")?;
    if spin.enabled() {
        spin.watch_runtime(&before, &spin::epoll_descriptors());
    }
    let result = runtime.block_on(run_async(args, spin));
    // stdin is read on a blocking thread that cannot be interrupted; do not wait for it.
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
    let begun = args
        .gateway
        .begin(&args.grant, &server.display())?
        .spinning_store(Duration::from_micros(args.spin_us));
    // The server starts once the policy is loaded, while the audit log, the event websocket
    // and the counter store start: a client's first message then waits for the slower of
    // the two start-ups, not for their sum. Should the rest fail, dropping it kills it.
    let upstream = Server::start(&server)?;
    spin.watch(libc::STDIN_FILENO, upstream.stdout_fd());
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
    // The server's stdout is closed now.
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
