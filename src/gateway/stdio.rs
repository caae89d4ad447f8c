//! `toolgate wrap`'s transport: the agent on this process's stdin/stdout, the server as a
//! child process, the core in between.
//!
//! stdout carries protocol only; everything the gateway says goes to stderr through
//! `tracing`. The end of the session follows MCP's stdio rules in both directions: when the
//! agent closes stdin the server's stdin is closed and the server stopped (grace, SIGTERM,
//! SIGKILL); when the server dies, every pending request is answered with an error and the
//! gateway exits non-zero.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::sync::{oneshot, watch};

use super::Gateway;
use super::core::{self, End, RunOptions};
use super::upstream::{ServerCommand, ServerProcess, SpawnError};
use crate::wire::{EventKind, Upstream};

/// How a `wrap` session failed.
#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("the MCP server `{command}` exited mid-session ({status})")]
    ServerDied { command: String, status: String },
}

/// Settings of one `wrap` session.
#[derive(Debug)]
pub struct WrapOptions {
    pub session: String,
    /// See [`super::upstream::ServerProcess::stop`].
    pub grace: Duration,
    /// Set to `true` to shut the gateway down (SIGTERM/SIGINT).
    pub shutdown: watch::Receiver<bool>,
}

/// Runs the gateway between this process's stdin/stdout and `server` until the session ends.
pub async fn wrap(
    gateway: Arc<Gateway>,
    server: &ServerCommand,
    options: WrapOptions,
) -> Result<(), WrapError> {
    let (mut process, server_in, server_out) = ServerProcess::spawn(server)?;
    tracing::info!(
        "started the MCP server `{}` (pid {})",
        process.command,
        process.pid().unwrap_or_default()
    );
    let hub = gateway.hub.clone();
    let server_name = gateway.server.clone();
    hub.publish(EventKind::Upstream(Upstream {
        server: server_name.clone(),
        up: true,
        detail: None,
    }));

    let (closed_tx, closed_rx) = oneshot::channel();
    let grace = options.grace;
    let command = process.command.clone();
    // The process lives in its own task: it exits by itself, or is stopped once the client
    // side is done.
    let process_task = tokio::spawn(async move {
        tokio::select! {
            status = process.wait() => status.ok(),
            // Fired, or dropped when the core ended: either way the session is over.
            _ = closed_rx => process.stop(grace).await,
        }
    });

    let end = core::run(
        gateway,
        BufReader::with_capacity(64 * 1024, tokio::io::stdin()),
        tokio::io::stdout(),
        BufReader::with_capacity(64 * 1024, server_out),
        server_in,
        RunOptions {
            session: options.session,
            shutdown: Some(options.shutdown),
            client_closed: Some(closed_tx),
        },
    )
    .await;

    let status: Option<ExitStatus> = process_task.await.ok().flatten();
    let shown = status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string());
    hub.publish(EventKind::Upstream(Upstream {
        server: server_name,
        up: false,
        detail: Some(shown.clone()),
    }));
    match end {
        End::ClientClosed => {
            tracing::info!("session ended; the MCP server exited ({shown})");
            Ok(())
        }
        End::UpstreamClosed => Err(WrapError::ServerDied {
            command,
            status: shown,
        }),
    }
}
