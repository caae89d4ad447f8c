//! `toolgate wrap`: the stdio gateway for one MCP server.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::control::{EventsOptions, Hub};
use crate::gateway::reload::{PolicyWatcher, load_initial};
use crate::gateway::stdio::{WrapError, WrapOptions, wrap};
use crate::gateway::upstream::{DEFAULT_GRACE, ServerCommand};
use crate::gateway::{AuditArgs, AuditLog, Gateway};
use crate::policy::CounterArgs;
use crate::wire::{EventKind, GatewayInfo};

/// Enforce a policy on every tool call between an MCP client and a stdio MCP server.
///
/// Put this where the server's command was in your agent's MCP config. stdout carries the
/// MCP protocol only; logs go to stderr.
#[derive(Debug, clap::Args)]
#[command(after_help = WRAP_EXAMPLE)]
pub struct Args {
    /// The policy file (watched: edits apply live, invalid edits are refused).
    #[arg(long, value_name = "P")]
    policy: PathBuf,
    /// Who the calls are attributed to (limits with scope "grant" count per grant).
    #[arg(long, value_name = "NAME", default_value = "default")]
    grant: String,
    /// Audit log (JSON lines, mode 0600) [default: ~/.local/state/toolgate/audit.jsonl]
    #[arg(long, value_name = "PATH")]
    audit: Option<PathBuf>,
    /// What the audit log keeps of the arguments: keys and a hash, or the values too
    /// (secret-looking keys redacted).
    #[arg(long, value_enum, default_value = "keys")]
    audit_args: AuditArgs,
    /// Seconds the server gets to exit after its stdin closes, and again after SIGTERM.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_GRACE.as_secs_f64())]
    grace: f64,
    /// Where the event websocket listens (operators: `toolgate console`, `tail`, `approve`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    events: std::net::SocketAddr,
    /// Allow `--events` on a non-loopback address (anyone reaching it with the token can
    /// approve held calls).
    #[arg(long)]
    events_allow_remote: bool,
    /// No event websocket and no discovery file: held calls can then only time out.
    #[arg(long, conflicts_with_all = ["events", "events_allow_remote"])]
    no_events: bool,
    #[command(flatten)]
    counters: CounterArgs,
    /// Log level for stderr (overridden by RUST_LOG).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,
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

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    init_logging(&args.log_level);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run_async(args));
    // stdin is read on a blocking thread that cannot be interrupted; do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn run_async(args: Args) -> anyhow::Result<ExitCode> {
    let (program, rest) = args
        .command
        .split_first()
        .context("no server command after `--`")?;
    let server = ServerCommand {
        program: program.clone(),
        args: rest.to_vec(),
        env: Vec::new(),
    };
    let id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let policy_path = crate::gateway::reload::absolute(&args.policy);
    let hub = Hub::new(GatewayInfo {
        id: id.clone(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        grant: args.grant.clone(),
        server: server.display(),
        policy: policy_path.display().to_string(),
        started_at: chrono::Utc::now(),
    });
    let (policy_path, policy) = load_initial(&policy_path, &hub)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot load the policy {}", args.policy.display()))?;
    // Without a watch the loaded policy is still enforced; only live edits are lost.
    let _watcher = PolicyWatcher::start(&policy_path, policy.clone(), hub.clone())
        .inspect_err(|e| tracing::warn!("{e}; policy edits will not apply until a restart"))
        .ok();

    let audit_path = match args.audit {
        Some(path) => path,
        None => AuditLog::default_path()?,
    };
    let audit = Arc::new(AuditLog::open(&audit_path, args.audit_args)?);
    tracing::info!(
        "gateway {id}: policy {}, grant {}, audit {}",
        policy_path.display(),
        args.grant,
        audit_path.display()
    );

    let control = if args.no_events {
        None
    } else {
        let control = crate::control::start(
            hub.clone(),
            EventsOptions {
                addr: args.events,
                allow_remote: args.events_allow_remote,
                discovery: true,
            },
        )
        .await?;
        tracing::info!("events on {}", control.url());
        Some(control)
    };

    let store = {
        let hub = hub.clone();
        args.counters
            .open(move |status| hub.publish(EventKind::Store(status.clone())))
            .context("cannot open the counter store (--counters)")?
    };
    tracing::info!("counters: {}", args.counters.spec()?);
    let gateway = Arc::new(
        Gateway::new(policy, store, hub.clone(), args.grant, server.display())
            .with_audit(audit.clone()),
    );

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });

    let grace = Duration::try_from_secs_f64(args.grace).unwrap_or(DEFAULT_GRACE);
    let result = wrap(
        gateway,
        &server,
        WrapOptions {
            session: id,
            grace,
            shutdown: shutdown_rx,
        },
    )
    .await;
    if let Some(control) = control {
        control.shutdown().await;
    }
    audit.close();
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(WrapError::Spawn(e)) => Err(e.into()),
        Err(e @ WrapError::ServerDied { .. }) => {
            tracing::error!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}

pub(super) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

pub(super) fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
