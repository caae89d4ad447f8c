//! `--connect` and its credential, shared by `console`, `tail`, `approve`, `deny` and
//! `gateways`: gateways' control websockets by URL, or named remotes of `remotes.toml`
//! (`@prod`: URLs, token file, CA file; see `control::remotes`).
//!
//! The token comes from `--token-file` (the way to keep it out of shell history and process
//! lists), else `TOOLGATE_OPERATOR_TOKEN`, else `--token` / `TOOLGATE_TOKEN` (a gateway's own
//! token, as `toolgate gateways --with-token` prints it). An operator account's token
//! (`toolgate operators add`) and a gateway's own token work the same way here; the gateway
//! decides what each may do.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;

use crate::control::remotes::{self, Remote};

/// Largest token file read (a token is under a hundred bytes).
const MAX_TOKEN_FILE: u64 = 4096;

/// Which gateways to talk to besides (or instead of) the local ones.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct RemoteArgs {
    /// A gateway to follow: https://HOST:PORT (its control websocket,
    /// wss://HOST:PORT/control), a ws:// or wss:// URL used as given, or @NAME, a remote of
    /// remotes.toml (its URLs, token file and CA file). Repeatable. A URL needs a token:
    /// --token-file, TOOLGATE_OPERATOR_TOKEN or --token.
    #[arg(long, value_name = "URL|@NAME")]
    pub connect: Vec<String>,
    /// A file holding the token for --connect (an operator account's, from `toolgate
    /// operators add`, or the gateway's own); keep it mode 0600.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The token for --connect, on the command line (prefer --token-file: command lines are
    /// visible to other users and kept in shell history).
    #[arg(long, value_name = "T", env = "TOOLGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificates (PEM, one or more) to trust for --connect's TLS besides the system's:
    /// a gateway whose certificate a private CA signed (a named remote gives its own
    /// `ca_file` in remotes.toml).
    #[arg(long, value_name = "FILE", requires = "connect")]
    pub ca_file: Option<PathBuf>,
    /// The remotes file (default $XDG_CONFIG_HOME/toolgate/remotes.toml, else
    /// ~/.config/toolgate/remotes.toml).
    #[arg(
        long,
        value_name = "FILE",
        env = "TOOLGATE_REMOTES",
        hide_env_values = true
    )]
    pub remotes: Option<PathBuf>,
}

impl RemoteArgs {
    /// The remote gateways asked for (`--connect`, and `named`: `@NAME`s given otherwise,
    /// such as `toolgate console @prod`), in order, each URL once; empty: only local ones.
    pub(super) fn targets(&self, named: &[String]) -> anyhow::Result<Vec<Remote>> {
        let mut out: Vec<Remote> = Vec::new();
        for given in self.connect.iter().chain(named) {
            let found = match given.strip_prefix('@') {
                Some(name) => {
                    let path = self.remotes.clone().unwrap_or_else(remotes::default_path);
                    let token = self.token_if_given()?;
                    remotes::resolve(&path, name, token.as_deref(), read_token_file)?
                }
                None => vec![Remote {
                    ca_file: self.ca_file.clone(),
                    ..Remote::new(
                        crate::control::client::control_url(given)?,
                        self.token_for(given)?,
                    )
                }],
            };
            for remote in found {
                if !out.iter().any(|r| r.url == remote.url) {
                    out.push(remote);
                }
            }
        }
        Ok(out)
    }

    /// The token from --token-file, TOOLGATE_OPERATOR_TOKEN or --token, if any was given.
    fn token_if_given(&self) -> anyhow::Result<Option<String>> {
        Ok(
            match (&self.token_file, std::env::var("TOOLGATE_OPERATOR_TOKEN")) {
                (Some(path), _) => Some(read_token_file(path)?),
                (None, Ok(token)) if !token.trim().is_empty() => Some(token.trim().to_owned()),
                _ => self.token.clone(),
            },
        )
    }

    /// The token for the URL `url`, which must have one.
    fn token_for(&self, url: &str) -> anyhow::Result<String> {
        self.token_if_given()?.with_context(|| {
            format!(
                "--connect {url} needs a token: --token-file FILE, the \
                 TOOLGATE_OPERATOR_TOKEN variable, or --token"
            )
        })
    }
}

/// `@NAME` arguments (named remotes) given where a command takes them positionally.
pub(super) fn named_remotes(given: &[String]) -> anyhow::Result<Vec<String>> {
    given
        .iter()
        .map(|g| {
            if g.starts_with('@') && g.len() > 1 {
                Ok(g.clone())
            } else {
                anyhow::bail!(
                    "{g:?} is not a named remote: write @NAME (a table of remotes.toml), or \
                     --connect URL"
                )
            }
        })
        .collect()
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
