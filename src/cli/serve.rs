//! `toolgate serve`: the HTTP gateway in front of the servers of a SERVERS.json.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::gateway_args::{GatewayArgs, wait_for_signal};
use crate::gateway::Gateway;
use crate::gateway::grants::{Grants, GrantsWatcher};
use crate::gateway::http::{self, HttpGateway, ServeOptions};

/// Serve MCP over Streamable HTTP at /mcp/<name>, enforcing a policy on every tool call.
///
/// Agents connect with a URL and `Authorization: Bearer <token>`; the token names a grant
/// (`toolgate grants add NAME --file GRANTS.json`). Command servers are started once per MCP
/// session (a stdio server speaks to one client) and stopped when the session ends.
#[derive(Debug, clap::Args)]
#[command(after_help = SERVE_EXAMPLE)]
pub struct Args {
    /// The servers, in the mcpServers format: {"mcpServers": {"NAME": {"command", "args",
    /// "env"} | {"url", "headers"}}}.
    #[arg(long, value_name = "SERVERS.json")]
    servers: PathBuf,
    /// The grants file (watched: revoking a grant applies at once).
    #[arg(long, value_name = "GRANTS.json")]
    grants: PathBuf,
    /// Where agents connect.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Allow `--listen` on a non-loopback address (traffic is plain HTTP: put TLS in front).
    #[arg(long)]
    allow_remote: bool,
    /// A browser origin allowed to call (`http://host:port`); repeatable. Requests with any
    /// other Origin get 403; requests without one (agents) are not affected.
    #[arg(long, value_name = "ORIGIN")]
    allow_origin: Vec<String>,
    /// Minutes an MCP session may stay idle before it is ended and its server stopped.
    #[arg(long, value_name = "MINUTES", default_value_t = 30.0)]
    session_idle: f64,
    #[command(flatten)]
    gateway: GatewayArgs,
}

const SERVE_EXAMPLE: &str = r#"Example:
  toolgate grants add ci-bot --file grants.json      # prints the token once
  toolgate serve --policy policy.json --servers servers.json --grants grants.json

servers.json:
  { "mcpServers": {
      "time":       { "command": "uvx", "args": ["mcp-server-time"] },
      "everything": { "url": "http://127.0.0.1:3001/mcp" } } }

Agents then use http://127.0.0.1:8787/mcp/time with "Authorization: Bearer <token>"."#;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.gateway.init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run_async(args));
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

async fn run_async(args: Args) -> anyhow::Result<ExitCode> {
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        anyhow::bail!(
            "refusing to listen on {}, which is not a loopback address; pass --allow-remote if you mean it",
            args.listen
        );
    }
    let servers = http::servers::load(&args.servers)?;
    let grants_path = crate::gateway::reload::absolute(&args.grants);
    let grants = Grants::load(&grants_path).with_context(|| {
        format!(
            "no usable grants; make one with `toolgate grants add NAME --file {}`",
            args.grants.display()
        )
    })?;
    if grants.grants.is_empty() {
        tracing::warn!(
            "no grants in {}: every request will get 401",
            grants_path.display()
        );
    }
    let grants = Arc::new(arc_swap::ArcSwap::from_pointee(grants));
    let _grants_watch = GrantsWatcher::start(&grants_path, grants.clone())
        .inspect_err(|e| tracing::warn!("{e}; grant changes will not apply until a restart"))
        .ok();

    let server_names = servers.keys().cloned().collect::<Vec<_>>().join(",");
    let started = args.gateway.start("*", &server_names).await?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let mut allowed_origins = args.allow_origin.clone();
    for host in [
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "[::1]".to_owned(),
        local.ip().to_string(),
    ] {
        allowed_origins.push(format!("http://{host}:{}", local.port()));
    }

    let base = Arc::new(
        Gateway::new(
            started.policy.handle.clone(),
            started.store.clone(),
            started.hub.clone(),
            "*",
            "*",
        )
        .with_audit(started.audit.clone()),
    );
    let names: Vec<String> = servers.keys().cloned().collect();
    let gateway = HttpGateway::new(
        base,
        ServeOptions {
            servers,
            grants,
            allowed_origins,
            grace: args.gateway.grace(),
            session_idle: Duration::try_from_secs_f64(args.session_idle * 60.0)
                .unwrap_or(http::DEFAULT_SESSION_IDLE),
            max_sessions: http::DEFAULT_MAX_SESSIONS,
            max_message: args.gateway.max_message,
        },
    );
    tracing::info!(
        "gateway {}: serving {} at http://{local}/mcp/<name>",
        started.id,
        names.join(", ")
    );
    // A line scripts can wait for: the address actually bound (with --listen …:0).
    eprintln!("toolgate serve: listening on http://{local}");

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });
    let served = gateway.serve(listener, shutdown_rx).await;
    // Give the servers of the ended sessions their grace to exit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    started.stop().await;
    served.context("the HTTP server failed")?;
    Ok(ExitCode::SUCCESS)
}
