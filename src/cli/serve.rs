//! `toolgate serve`: the HTTP gateway in front of the servers of a SERVERS.json.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::gateway_args::{GatewayArgs, SERVE_SPIN_US, wait_for_signal};
use crate::control::server::ControlPlane;
use crate::gateway::Gateway;
use crate::gateway::fd_limit;
use crate::gateway::grants::{Grants, GrantsWatcher};
use crate::gateway::http::listener::{self, ConnectionOptions};
use crate::gateway::http::{self, HttpGateway, ServeOptions};
use crate::gateway::spin::Spin;
use crate::telemetry::{Access, Metrics, MetricsEndpoint};

/// Serve MCP over Streamable HTTP at /mcp/<name>, enforcing a policy on every tool call.
///
/// Agents connect with a URL and `Authorization: Bearer <token>`; the token names a grant
/// (`toolgate grants add NAME --file GRANTS.json`). Command servers are started once per MCP
/// session (a stdio server speaks to one client) and stopped when the session ends.
#[derive(Debug, clap::Args)]
#[command(after_help = SERVE_EXAMPLE)]
pub(super) struct Args {
    /// The servers, in the mcpServers format: {"mcpServers": {"NAME": {"command", "args",
    /// "env"} | {"url", "headers"}}}.
    #[arg(long, value_name = "SERVERS.json")]
    servers: PathBuf,
    /// The grants file (watched: revoking a grant applies at once; deleting the file revokes
    /// every token, an empty or invalid one keeps the grants in force).
    #[arg(long, value_name = "GRANTS.json")]
    grants: PathBuf,
    /// Where agents connect.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Allow `--listen` on a non-loopback address without TLS (agents' traffic is then plain
    /// HTTP: put a TLS proxy in front). Not needed with --tls-cert; never enough for /control
    /// (--operators) or --metrics-public, which need TLS off loopback.
    #[arg(long)]
    allow_remote: bool,
    /// Serve the control websocket (--operators) on this address instead of at /control on
    /// --listen. Off loopback it needs --tls-cert and --tls-key (the same pair is used).
    #[arg(long, value_name = "ADDR", requires = "operators")]
    control_listen: Option<SocketAddr>,
    /// A browser origin allowed to call (`http://host:port`); repeatable. Requests with any
    /// other Origin get 403; requests without one (agents) are not affected.
    #[arg(long, value_name = "ORIGIN")]
    allow_origin: Vec<String>,
    /// Minutes an MCP session may stay idle before it is ended and its server stopped.
    #[arg(long, value_name = "MINUTES", default_value_t = 30.0)]
    session_idle: f64,
    /// Most MCP sessions one grant may have open (each may be a server process; a 2026-07-28
    /// client without sessions counts once per server). Beyond it that grant gets 429 until
    /// it ends a session (DELETE) or one goes idle; other grants are not affected.
    #[arg(long, value_name = "N", default_value_t = http::DEFAULT_MAX_SESSIONS_PER_GRANT,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_sessions_per_grant: usize,
    /// Most MCP sessions open at once, all grants together; beyond it every grant gets 503.
    /// Lowered at start if the open-file limit cannot hold them (the log says so).
    #[arg(long, value_name = "N", default_value_t = http::DEFAULT_MAX_SESSIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_sessions: usize,
    /// Most client connections open at once. At the cap a new connection closes the oldest
    /// one that has not yet shown a valid token; when all have, it gets 503. Lowered at start
    /// if the open-file limit cannot hold them (the log says so).
    #[arg(long, value_name = "N", default_value_t = listener::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections: usize,
    /// Seconds a client has to send a request's headers; also how long a kept-alive
    /// connection may sit idle. Slower clients are disconnected.
    #[arg(long, value_name = "SECS", default_value_t = listener::DEFAULT_HEADER_TIMEOUT.as_secs_f64(),
          value_parser = positive_seconds)]
    header_timeout: f64,
    /// Seconds a client has, after the headers, to send a request's body; later bodies get
    /// 408 and the connection is closed.
    #[arg(long, value_name = "SECS", default_value_t = listener::DEFAULT_BODY_TIMEOUT.as_secs_f64(),
          value_parser = positive_seconds)]
    body_timeout: f64,
    /// Serve /metrics without a token, for a Prometheus on this host. Refused on a
    /// non-loopback --listen without TLS. Without it, /metrics
    /// needs `Authorization: Bearer <operator token>`: the event websocket's token, from this
    /// gateway's discovery file.
    #[arg(long)]
    metrics_public: bool,
    /// NAME=ID: the tool pins of server NAME belong to identity ID instead of NAME
    /// (repeatable), e.g. to share pins with a `wrap --server-id ID` of the same server.
    #[arg(long, value_name = "NAME=ID", value_parser = server_id)]
    server_id: Vec<(String, String)>,
    /// Threads that serve agents' connections (connections are accepted on one more). With
    /// 1 (the default) a call's steps all run on one thread and never wait for another to
    /// wake up: the lowest latency per call. More spread connections over that many
    /// threads: more calls per second when agents keep many in flight on a machine with
    /// cores to spare.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    threads: usize,
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

Agents then use http://127.0.0.1:8787/mcp/time with "Authorization: Bearer <token>".
Prometheus on this host scrapes http://127.0.0.1:8787/metrics when serve runs with
--metrics-public (see the README's "Metrics and traces" section)."#;

/// Reads `NAME=ID` (both non-empty).
fn server_id(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, id)) if !name.is_empty() && !id.is_empty() => {
            Ok((name.to_owned(), id.to_owned()))
        }
        _ => Err(format!(
            "`{text}` is not NAME=ID (a server of SERVERS.json, then the identity of its pins)"
        )),
    }
}

/// A number of seconds above zero and below a day.
fn positive_seconds(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if secs > 0.0 && secs < 86_400.0 {
        Ok(secs)
    } else {
        Err(format!(
            "{secs} s is out of range: give more than 0 and less than 86400"
        ))
    }
}

pub(super) fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    args.gateway.init_logging();
    args.gateway.default_spin(SERVE_SPIN_US);
    // Before any thread starts, so that every descriptor is counted against the new limit.
    let limit = fd_limit::raise();
    // One worker by default: a call crosses several tasks (the connection, the core, the
    // upstream's client), and with two workers each hand-over could wake the other thread
    // (a futex and an eventfd write per wake-up, measured with `strace -c`), which cost
    // more than the work itself. The accept loop runs on this thread (`block_on`), so a
    // flood of connections is accepted and shed beside the calls, not between them.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(args.threads).enable_all();
    // The workers spin on the runtime's own descriptor before they sleep (`--spin-us`).
    let runtime = Spin::new(args.gateway.spin())
        .build(&mut builder)
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run_async(args, limit));
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

/// Refuses, before anything is bound, what would serve secrets or approvals in clear text
/// off this machine.
fn refuse_clear_text(args: &Args) -> anyhow::Result<()> {
    let tls = args.gateway.tls_cert.is_some();
    let remote = !args.listen.ip().is_loopback();
    if remote && !tls && !args.allow_remote {
        anyhow::bail!(
            "refusing to listen on {}, which is not a loopback address, without TLS: pass \
             --tls-cert PEM --tls-key PEM (or --allow-remote to serve agents plain HTTP behind \
             a TLS proxy of your own)",
            args.listen
        );
    }
    if remote && !tls && args.gateway.operators.is_some() && args.control_listen.is_none() {
        anyhow::bail!(
            "refusing to serve the control websocket (--operators) at /control on {}, which is \
             not a loopback address, without TLS: operators' tokens and approvals would cross \
             the network in clear text. Pass --tls-cert PEM --tls-key PEM, or --control-listen \
             127.0.0.1:PORT",
            args.listen
        );
    }
    if let Some(control) = args.control_listen
        && !control.ip().is_loopback()
        && !tls
    {
        anyhow::bail!(
            "refusing --control-listen {control}, which is not a loopback address, without \
             TLS: pass --tls-cert PEM --tls-key PEM, or listen on 127.0.0.1"
        );
    }
    if args.metrics_public && remote && !tls {
        anyhow::bail!(
            "refusing --metrics-public on {}, which is not a loopback address, without TLS: \
             anyone reaching it would read every grant's, server's and tool's calls in clear \
             text. Pass --tls-cert PEM --tls-key PEM, listen on 127.0.0.1 and scrape from this \
             host, or drop --metrics-public and scrape with the operator token",
            args.listen
        );
    }
    Ok(())
}

async fn run_async(args: Args, limit: fd_limit::FileLimit) -> anyhow::Result<ExitCode> {
    refuse_clear_text(&args)?;
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

    let server_names = servers.keys().cloned().collect::<Vec<_>>().join(",");
    let started = args.gateway.start("*", &server_names).await?;
    let _grants_watch = GrantsWatcher::start(&grants_path, grants.clone(), started.hub.clone())
        .inspect_err(|e| tracing::warn!("{e}; grant changes will not apply until a restart"))
        .ok();

    let listener = crate::listen::listen(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let scheme = if started.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut allowed_origins = args.allow_origin.clone();
    for host in [
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "[::1]".to_owned(),
        local.ip().to_string(),
    ] {
        allowed_origins.push(format!("{scheme}://{host}:{}", local.port()));
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    // The control websocket for operator accounts: on its own listener, or at /control.
    let mut control_listener = None;
    let mut control_route = None;
    if let Some(operators) = &started.operators {
        match args.control_listen {
            Some(addr) => {
                let handle = crate::control::start(
                    started.hub.clone(),
                    crate::control::EventsOptions {
                        addr,
                        tls: started.tls.clone(),
                        local_token: false,
                        discovery: false,
                        operators: Some(operators.clone()),
                    },
                )
                .await
                .with_context(|| format!("cannot serve --control-listen {addr}"))?;
                eprintln!("toolgate serve: control websocket on {}", handle.url());
                control_listener = Some(handle);
            }
            None => {
                control_route = Some(ControlPlane::new(
                    started.hub.clone(),
                    operators.clone(),
                    shutdown_rx.clone(),
                ));
            }
        }
    }

    let base = Arc::new(
        Gateway::new(
            started.policy.handle.clone(),
            started.store.clone(),
            started.hub.clone(),
            "*",
            "*",
        )
        .with_audit(started.audit.clone())
        .with_traces(started.traces.clone())
        .with_pins(Some(started.pins.clone()), None)
        .with_shadow_policy(started.shadow_handle())
        .with_learn(started.learn.clone()),
    );
    let names: Vec<String> = servers.keys().cloned().collect();
    if let Some((unknown, _)) = args
        .server_id
        .iter()
        .find(|(name, _)| !servers.contains_key(name))
    {
        anyhow::bail!(
            "--server-id names `{unknown}`, which is not a server of {}",
            args.servers.display()
        );
    }
    // What is open now (runtime, policy watcher, audit log, counters, event websocket) is
    // counted as used; the plan keeps a reserve beyond it for reloads and the like.
    let in_use = fd_limit::open_now().unwrap_or(64);
    let plan = listener::plan(limit.soft, in_use, args.max_connections, args.max_sessions);
    if plan.lowered {
        tracing::warn!(
            "the open-file limit ({}) cannot hold {} connections and {} MCP sessions; serving \
             at most {} connections and {} sessions. Raise the limit (ulimit -n, or \
             LimitNOFILE= in a systemd unit) or lower --max-connections / --max-sessions",
            limit.soft,
            args.max_connections,
            args.max_sessions,
            plan.max_connections,
            plan.max_sessions
        );
    }
    tracing::info!(
        "open-file limit {} (was {}), {in_use} in use: up to {} connections, {} MCP sessions \
         ({} per grant)",
        limit.soft,
        limit.was,
        plan.max_connections,
        plan.max_sessions,
        args.max_sessions_per_grant
    );
    let gateway = HttpGateway::new(
        base,
        ServeOptions {
            servers,
            grants,
            allowed_origins,
            grace: args.gateway.grace(),
            session_idle: Duration::try_from_secs_f64(args.session_idle * 60.0)
                .unwrap_or(http::DEFAULT_SESSION_IDLE),
            max_sessions: plan.max_sessions,
            max_sessions_per_grant: args.max_sessions_per_grant,
            connections: ConnectionOptions {
                header_timeout: Duration::from_secs_f64(args.header_timeout),
                body_timeout: Duration::from_secs_f64(args.body_timeout),
                max_connections: plan.max_connections,
            },
            max_message: args.gateway.max_message,
            metrics: Some(MetricsEndpoint {
                // The same metrics the OTLP export reads, when it is on.
                metrics: started
                    .metrics
                    .clone()
                    .unwrap_or_else(|| Metrics::start(&started.hub)),
                access: match (args.metrics_public, started.events_token()) {
                    (true, _) => Access::Public,
                    (false, Some(token)) => Access::Operator(Arc::from(token)),
                    (false, None) => Access::Closed,
                },
            }),
            server_ids: args.server_id.iter().cloned().collect(),
            tls: started.tls.clone(),
            control: control_route,
        },
    );
    tracing::info!(
        "gateway {}: serving {} at {scheme}://{local}/mcp/<name>",
        started.id,
        names.join(", ")
    );
    // A line scripts can wait for: the address actually bound (with --listen …:0).
    eprintln!("toolgate serve: listening on {scheme}://{local}");
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });
    let served = gateway.serve(listener, shutdown_rx).await;
    if let Some(control) = control_listener {
        control.shutdown().await;
    }
    // Give the servers of the ended sessions their grace to exit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    started.stop().await;
    served.context("the HTTP server failed")?;
    Ok(ExitCode::SUCCESS)
}
