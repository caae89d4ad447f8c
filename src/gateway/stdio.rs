//! `toolgate wrap`'s transport: the agent on this process's stdin/stdout, the server as a
//! child process, the core in between.
//!
//! stdout carries protocol only; everything the gateway says goes to stderr through
//! `tracing`. The end of the session follows MCP's stdio rules in both directions: when the
//! agent closes stdin the server's stdin is closed and the server stopped (grace, SIGTERM,
//! SIGKILL); when the server dies, every pending request is answered with an error and the
//! gateway exits non-zero.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{oneshot, watch};

use super::Gateway;
use super::core::{self, End, Output, RunOptions};
use super::lines::Plain;
use super::upstream::{ServerCommand, ServerProcess, SpawnError};
use crate::wire::{EventKind, Upstream};

/// How a `wrap` session failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WrapError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("the MCP server `{command}` exited mid-session ({status})")]
    ServerDied { command: String, status: String },
    #[error("the MCP server's stdin could not be set up as a pipe: {0}")]
    Stdin(std::io::Error),
    #[error(
        "the gateway failed with an internal error and ended the session (see the log above); \
         please report it"
    )]
    Panicked,
}

/// Settings of one `wrap` session.
#[derive(Debug)]
pub(crate) struct WrapOptions {
    pub session: String,
    /// See [`super::upstream::ServerProcess::stop`].
    pub grace: Duration,
    /// Set to `true` to shut the gateway down (SIGTERM/SIGINT).
    pub shutdown: watch::Receiver<bool>,
    /// The largest message in either direction (`--max-message`).
    pub max_message: usize,
}

/// The MCP server of a `wrap` session, started ([`Server::start`]) before the gateway has
/// finished starting: its start-up overlaps the gateway's. Dropped without a session, it is
/// killed.
#[derive(Debug)]
pub(crate) struct Server {
    process: ServerProcess,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Server {
    /// Spawns `command`. Its output waits in the pipe until the session starts.
    pub(crate) fn start(command: &ServerCommand) -> Result<Server, WrapError> {
        let (process, stdin, stdout) = ServerProcess::spawn(command)?;
        tracing::info!(
            "started the MCP server `{}` (pid {})",
            process.command,
            process.pid().unwrap_or_default()
        );
        Ok(Server {
            process,
            stdin,
            stdout,
        })
    }
}

/// Runs the gateway between this process's stdin/stdout and `server` until the session ends.
pub(crate) async fn wrap(
    gateway: Arc<Gateway>,
    server: Server,
    options: WrapOptions,
) -> Result<(), WrapError> {
    let Server {
        mut process,
        stdin: server_in,
        stdout: server_out,
    } = server;
    // Dropping `process` on this error stops the server.
    let server_in = server_output(server_in).map_err(WrapError::Stdin)?;
    let hub = gateway.hub.clone();
    let server_name = gateway.server.to_string();
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

    let (client_in, client_out) = client_streams();
    let end = core::run_outputs(
        gateway,
        Plain(BufReader::with_capacity(64 * 1024, client_in)),
        client_out,
        Plain(BufReader::with_capacity(64 * 1024, server_out)),
        server_in,
        RunOptions {
            session: options.session,
            shutdown: Some(options.shutdown),
            client_closed: Some(closed_tx),
            max_message: options.max_message,
        },
        None,
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
        End::Panicked => Err(WrapError::Panicked),
    }
}

type ClientRead = Box<dyn AsyncRead + Send + Unpin>;
type ClientWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The server's stdin (a pipe: the server is spawned with piped stdio) as the core's
/// output, written by the core's tasks themselves ([`Output::Pipe`]).
fn server_output(stdin: ChildStdin) -> std::io::Result<Output<ClientWrite>> {
    let pipe = stdin
        .into_owned_fd()
        .and_then(tokio::net::unix::pipe::Sender::from_owned_fd)?;
    Ok(Output::Pipe(pipe))
}

/// This process's stdin and stdout as async streams. Pipes and sockets (what MCP clients
/// spawn servers with) are driven by the reactor directly; `tokio::io::stdin`/`stdout` hand
/// every read and write to a blocking thread, which costs tens of microseconds per message.
/// Anything else (a terminal, a file) falls back to those.
fn client_streams() -> (ClientRead, Output<ClientWrite>) {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| reactor_stream(fd, Direction::Read));
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| reactor_stream(fd, Direction::Write));
    let stdin: ClientRead = match stdin {
        Some(Stream::Pipe(Pipe::Read(rx))) => Box::new(rx),
        Some(Stream::Socket(sock)) => Box::new(sock),
        _ => Box::new(tokio::io::stdin()),
    };
    let stdout = match stdout {
        // Written by the core's tasks themselves (see `Output::Pipe`).
        Some(Stream::Pipe(Pipe::Write(tx))) => Output::Pipe(tx),
        Some(Stream::Socket(sock)) => Output::Stream(Box::new(sock) as ClientWrite),
        _ => Output::Stream(Box::new(tokio::io::stdout()) as ClientWrite),
    };
    (stdin, stdout)
}

enum Direction {
    Read,
    Write,
}

enum Pipe {
    Read(tokio::net::unix::pipe::Receiver),
    Write(tokio::net::unix::pipe::Sender),
}

enum Stream {
    Pipe(Pipe),
    Socket(tokio::net::UnixStream),
}

/// Registers a duplicate of a stdio descriptor with the reactor, when it is a pipe or a
/// Unix socket. Sets it non-blocking; the descriptor is this process's end only.
fn reactor_stream(fd: OwnedFd, direction: Direction) -> Option<Stream> {
    let file = std::fs::File::from(fd);
    let kind = file.metadata().ok()?.file_type();
    if kind.is_fifo() {
        let fd = OwnedFd::from(file);
        return match direction {
            Direction::Read => tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                .ok()
                .map(|rx| Stream::Pipe(Pipe::Read(rx))),
            Direction::Write => tokio::net::unix::pipe::Sender::from_owned_fd(fd)
                .ok()
                .map(|tx| Stream::Pipe(Pipe::Write(tx))),
        };
    }
    if kind.is_socket() {
        let sock = std::os::unix::net::UnixStream::from(OwnedFd::from(file));
        sock.set_nonblocking(true).ok()?;
        return tokio::net::UnixStream::from_std(sock)
            .ok()
            .map(Stream::Socket);
    }
    None
}
