//! The upstream MCP server as a child process: spawn it with piped stdin/stdout (its stderr
//! stays the gateway's, so its logs reach the agent's log like before), and stop it the way
//! MCP's stdio transport prescribes: close its input, give it a grace period, then SIGTERM,
//! then SIGKILL. A server starts with the open-file limit the gateway started with, not the
//! one the gateway raised itself to (`fd_limit`).

use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The default time a server gets to exit after its input closes, and again after SIGTERM.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// The server could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the MCP server `{command}`: {source}; check the command after `--`")]
pub(crate) struct SpawnError {
    pub command: String,
    #[source]
    pub source: std::io::Error,
}

/// A running server process.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    /// The command line, for messages.
    pub command: String,
}

/// The command that starts a server.
#[derive(Debug, Clone)]
pub(crate) struct ServerCommand {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Variables added to the gateway's environment for the server (SERVERS.json `env`).
    pub env: Vec<(OsString, OsString)>,
}

impl ServerCommand {
    /// A readable form of the command line.
    pub(crate) fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl ServerProcess {
    /// Spawns `command` with piped stdin and stdout.
    pub(crate) fn spawn(
        command: &ServerCommand,
    ) -> Result<(ServerProcess, ChildStdin, ChildStdout), SpawnError> {
        let shown = command.display();
        let spawn_err = |source| SpawnError {
            command: shown.clone(),
            source,
        };
        let mut process = Command::new(&command.program);
        // Only when the limit was raised (`serve`; `wrap` starts its server first): with no
        // code to run between fork and exec, the standard library spawns with posix_spawn,
        // which does not copy the gateway's memory map and starts the server sooner.
        if super::fd_limit::raised() {
            // SAFETY: the closure runs in the child between fork and exec; `restore_in_child`
            // only reads an atomic and calls getrlimit/setrlimit, which are async-signal-safe.
            unsafe {
                process.pre_exec(|| {
                    super::fd_limit::restore_in_child();
                    Ok(())
                });
            }
        }
        let mut child = process
            .args(&command.args)
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        let missing = || spawn_err(std::io::Error::other("no pipe to the process"));
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        Ok((
            ServerProcess {
                child,
                command: shown,
            },
            stdin,
            stdout,
        ))
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the process to exit by itself.
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Stops the process whose input is already closed: waits `grace` for it to exit, then
    /// sends SIGTERM and waits `grace` again, then SIGKILL.
    pub(crate) async fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Ok(status)) = tokio::time::timeout(grace, self.child.wait()).await {
            return Some(status);
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            tracing::info!("the MCP server did not exit after its input closed; sending SIGTERM");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            if let Ok(Ok(status)) = tokio::time::timeout(grace, self.child.wait()).await {
                return Some(status);
            }
        }
        tracing::warn!("the MCP server ignored SIGTERM; killing it");
        let _ = self.child.start_kill();
        self.child.wait().await.ok()
    }
}
