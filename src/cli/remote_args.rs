//! `--connect` and its credential, shared by `console`, `tail`, `approve` and `deny`: one
//! gateway's event websocket by URL instead of the local ones found by discovery.
//!
//! The token comes from `--token-file` (the way to keep it out of shell history and process
//! lists), else `TOOLGATE_OPERATOR_TOKEN`, else `--token` / `TOOLGATE_TOKEN` (a gateway's own
//! token, as `toolgate gateways --with-token` prints it). An operator account's token
//! (`toolgate operators add`) and a gateway's own token work the same way here; the gateway
//! decides what each may do.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;

/// Largest token file read (a token is under a hundred bytes).
const MAX_TOKEN_FILE: u64 = 4096;

/// Which gateway to talk to when not the local ones.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct RemoteArgs {
    /// One gateway instead of the local ones found by discovery: https://HOST:PORT (its
    /// control websocket, wss://HOST:PORT/control), or a ws:// or wss:// URL used as given. Needs a token: --token-file, TOOLGATE_OPERATOR_TOKEN or --token.
    #[arg(long, value_name = "URL")]
    pub connect: Option<String>,
    /// A file holding the token for --connect (an operator account's, from `toolgate
    /// operators add`, or the gateway's own); keep it mode 0600.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The token for --connect, on the command line (prefer --token-file: command lines are
    /// visible to other users and kept in shell history).
    #[arg(long, value_name = "T", env = "TOOLGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificates (PEM, one or more) to trust for --connect's TLS besides the system's:
    /// a gateway whose certificate a private CA signed.
    #[arg(long, value_name = "FILE", requires = "connect")]
    pub ca_file: Option<PathBuf>,
}

impl RemoteArgs {
    /// How to trust --connect's certificate.
    pub(super) fn tls(&self) -> crate::control::client::TlsClientOptions {
        crate::control::client::TlsClientOptions {
            ca_file: self.ca_file.clone(),
        }
    }

    /// The URL and token to use, or `None` to find local gateways.
    pub(super) fn target(&self) -> anyhow::Result<Option<(String, String)>> {
        let Some(url) = &self.connect else {
            return Ok(None);
        };
        let token = match (&self.token_file, std::env::var("TOOLGATE_OPERATOR_TOKEN")) {
            (Some(path), _) => read_token_file(path)?,
            (None, Ok(token)) if !token.trim().is_empty() => token.trim().to_owned(),
            _ => self.token.clone().with_context(|| {
                format!(
                    "--connect {url} needs a token: --token-file FILE, the \
                     TOOLGATE_OPERATOR_TOKEN variable, or --token"
                )
            })?,
        };
        let url = crate::control::client::control_url(url)?;
        Ok(Some((url, token)))
    }
}

/// Reads a token file: its first line, trimmed. Refuses an empty or oversized file, and warns
/// when others may read it.
fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let shown = path.display();
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read --token-file {shown}"))?;
    if meta.len() > MAX_TOKEN_FILE {
        anyhow::bail!(
            "--token-file {shown} is {} bytes; a token file holds one token",
            meta.len()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!("--token-file {shown} can be read by other users; chmod 600 it");
        eprintln!(
            "{}",
            crate::sanitize::terminal_text(&format!(
                "warning: --token-file {shown} can be read by other users; chmod 600 it"
            ))
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --token-file {shown}"))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        anyhow::bail!("--token-file {shown} is empty");
    }
    Ok(token)
}
