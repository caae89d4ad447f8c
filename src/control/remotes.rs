//! Remote gateways an operator follows: one [`Remote`] per control websocket, and the named
//! remotes of `remotes.toml` (`toolgate console @prod`).
//!
//! The file is `$XDG_CONFIG_HOME/toolgate/remotes.toml` (default `~/.config/toolgate/`), one
//! table per remote:
//!
//! ```toml
//! [prod]
//! urls = ["https://gw1.example:8787", "https://gw2.example:8787"]
//! token_file = "prod.token"      # relative to this file's directory; ~/ is the home
//! ca_file = "prod-ca.pem"        # optional: a private CA for the gateways' certificates
//! ```
//!
//! `urls` lists one or more gateways (replicas of one `serve`, or several gateways the same
//! operator account reaches): each is an `https://H:P` (its control websocket,
//! `wss://H:P/control`) or a `ws://`/`wss://` URL used as given. Without `token_file` the
//! token comes from `--token-file` or `TOOLGATE_OPERATOR_TOKEN`, as for `--connect URL`.
//! Unknown keys are refused, naming the file, line and column: a typo (`ca-file`) must not
//! silently drop the CA and fail later as a certificate error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::client::{self, TlsClientOptions};

/// Largest `remotes.toml` read.
const MAX_REMOTES_FILE: u64 = 1024 * 1024;

/// One gateway to follow over the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The control websocket's URL (already through [`client::control_url`]).
    pub url: String,
    pub token: String,
    /// A PEM file of CA certificates to trust for its certificate besides the system's.
    pub ca_file: Option<PathBuf>,
    /// `@prod` when it came from a named remote, for messages.
    pub from: Option<String>,
}

impl Remote {
    /// A gateway at `url` (a websocket URL) with `token`, trusted as the system trusts.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Remote {
        Remote {
            url: url.into(),
            token: token.into(),
            ca_file: None,
            from: None,
        }
    }

    /// How to trust its certificate, for [`client::connect_with`].
    pub(crate) fn tls(&self) -> TlsClientOptions {
        TlsClientOptions {
            ca_file: self.ca_file.clone(),
        }
    }

    /// `HOST:PORT` of its URL, to say where a gateway runs.
    pub(crate) fn host(&self) -> String {
        host_of(&self.url)
    }
}

/// `HOST:PORT` of a websocket URL (the URL itself when it has no `scheme://`).
pub(crate) fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// A remote as `remotes.toml` states it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NamedRemote {
    pub urls: Vec<String>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// What went wrong with `remotes.toml` or a remote in it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RemotesError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Remote { path: String, message: String },
    #[error(
        "no remote named {name} in {path}{known}; add a [{name}] table with urls and token_file"
    )]
    Unknown {
        name: String,
        path: String,
        known: String,
    },
}

/// Where `remotes.toml` is: `$XDG_CONFIG_HOME/toolgate/remotes.toml`, default
/// `~/.config/toolgate/remotes.toml`.
pub(crate) fn default_path() -> PathBuf {
    use etcetera::BaseStrategy;
    etcetera::choose_base_strategy()
        .map(|s| s.config_dir())
        .unwrap_or_else(|_| PathBuf::from(".config"))
        .join("toolgate")
        .join("remotes.toml")
}

/// Reads the named remotes in the file at `path`.
pub(crate) fn read(path: &Path) -> Result<BTreeMap<String, NamedRemote>, RemotesError> {
    let shown = path.display().to_string();
    let io = |source| RemotesError::Io {
        path: shown.clone(),
        source,
    };
    let bytes = crate::gateway::watch::read_watched_file(path, MAX_REMOTES_FILE)
        .map_err(io)?
        .ok_or_else(|| {
            io(std::io::Error::other(format!(
                "larger than {MAX_REMOTES_FILE} bytes; is it the remotes file?"
            )))
        })?;
    let text = String::from_utf8(bytes).map_err(|_| io(std::io::Error::other("not UTF-8 text")))?;
    parse(&text, &shown)
}

/// Parses the text of a remotes file (`shown` names it in errors).
pub(crate) fn parse(
    text: &str,
    shown: &str,
) -> Result<BTreeMap<String, NamedRemote>, RemotesError> {
    let remotes: BTreeMap<String, NamedRemote> = toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map_or((1, 1), |span| line_and_column(text, span.start));
        RemotesError::Invalid {
            path: shown.to_owned(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })?;
    for (name, remote) in &remotes {
        if remote.urls.is_empty() {
            return Err(RemotesError::Remote {
                path: shown.to_owned(),
                message: format!("remote {name} lists no urls; give at least one"),
            });
        }
        for url in &remote.urls {
            client::control_url(url).map_err(|e| RemotesError::Remote {
                path: shown.to_owned(),
                message: format!("remote {name}: {e}"),
            })?;
        }
    }
    Ok(remotes)
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The remote `name` (without its `@`) of the file at `path`, as gateways to follow. `token`
/// is the token to use when the remote names no token file; `read_token_file` reads one.
pub(crate) fn resolve(
    path: &Path,
    name: &str,
    token: Option<&str>,
    read_token_file: impl Fn(&Path) -> anyhow::Result<String>,
) -> anyhow::Result<Vec<Remote>> {
    let shown = path.display().to_string();
    let remotes = read(path)?;
    let Some(remote) = remotes.get(name) else {
        let known = if remotes.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = remotes.keys().map(|k| format!("@{k}")).collect();
            format!(" (it has {})", names.join(", "))
        };
        return Err(RemotesError::Unknown {
            name: name.to_owned(),
            path: shown,
            known,
        }
        .into());
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let token = match &remote.token_file {
        Some(file) => read_token_file(&place(base, file))?,
        None => token.map(str::to_owned).ok_or_else(|| {
            anyhow::anyhow!(
                "remote @{name} in {shown} has no token_file, and no --token-file or \
                 TOOLGATE_OPERATOR_TOKEN was given"
            )
        })?,
    };
    let ca_file = remote.ca_file.as_deref().map(|f| place(base, f));
    remote
        .urls
        .iter()
        .map(|url| {
            Ok(Remote {
                url: client::control_url(url)?,
                token: token.clone(),
                ca_file: ca_file.clone(),
                from: Some(format!("@{name}")),
            })
        })
        .collect()
}

/// A path from the remotes file: `~/` is the home directory, a relative path is relative to
/// the file's directory.
fn place(base: &Path, file: &Path) -> PathBuf {
    if let Ok(rest) = file.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    base.join(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROD: &str = r#"
[prod]
urls = ["https://gw1.example:8787", "wss://gw2.example:9000/control"]
token_file = "prod.token"
ca_file = "/etc/ssl/private-ca.pem"

[staging]
urls = ["http://127.0.0.1:8787"]
"#;

    #[test]
    fn named_remotes_read_with_their_urls_token_and_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("remotes.toml");
        std::fs::write(&path, PROD).unwrap();
        let read_token =
            |p: &Path| -> anyhow::Result<String> { Ok(format!("token from {}", p.display())) };
        let prod = resolve(&path, "prod", None, read_token).unwrap();
        assert_eq!(prod.len(), 2);
        assert_eq!(prod[0].url, "wss://gw1.example:8787/control");
        assert_eq!(prod[1].url, "wss://gw2.example:9000/control");
        assert_eq!(
            prod[0].token,
            format!("token from {}", dir.path().join("prod.token").display()),
            "relative to the remotes file"
        );
        assert_eq!(
            prod[1].ca_file.as_deref(),
            Some(Path::new("/etc/ssl/private-ca.pem"))
        );
        assert_eq!(prod[0].from.as_deref(), Some("@prod"));
        assert_eq!(prod[0].host(), "gw1.example:8787");

        let staging = resolve(&path, "staging", Some("env token"), read_token).unwrap();
        assert_eq!(staging[0].url, "ws://127.0.0.1:8787/control");
        assert_eq!(staging[0].token, "env token");
        assert_eq!(staging[0].tls(), TlsClientOptions::default());
        let err = resolve(&path, "staging", None, read_token).unwrap_err();
        assert!(err.to_string().contains("has no token_file"), "{err}");
    }

    #[test]
    fn an_unknown_remote_names_the_file_and_the_ones_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("remotes.toml");
        std::fs::write(&path, PROD).unwrap();
        let err = resolve(&path, "qa", None, |_| Ok(String::new())).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no remote named qa in"), "{text}");
        assert!(
            text.contains("remotes.toml (it has @prod, @staging)"),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_key_is_refused_with_the_file_line_and_column() {
        let text = "[prod]\nurls = [\"https://gw1.example:8787\"]\nca-file = \"ca.pem\"\n";
        let err = parse(text, "/home/me/.config/toolgate/remotes.toml").unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with("/home/me/.config/toolgate/remotes.toml:3:1: "),
            "{shown}"
        );
        assert!(shown.contains("unknown field `ca-file`"), "{shown}");
        assert!(shown.contains("token_file"), "the keys it knows: {shown}");
    }

    #[test]
    fn a_remote_without_urls_or_with_a_bad_one_is_refused() {
        let err = parse("[prod]\nurls = []\n", "r.toml").unwrap_err();
        assert!(
            err.to_string().contains("remote prod lists no urls"),
            "{err}"
        );
        let err = parse("[prod]\nurls = [\"gw1.example:8787\"]\n", "r.toml").unwrap_err();
        assert!(err.to_string().contains("r.toml: remote prod:"), "{err}");
        let err = parse("[prod]\ntoken_file = \"t\"\n", "r.toml").unwrap_err();
        assert!(err.to_string().contains("missing field `urls`"), "{err}");
    }

    #[test]
    fn hosts_are_read_from_urls() {
        assert_eq!(
            host_of("wss://gw1.example:8787/control"),
            "gw1.example:8787"
        );
        assert_eq!(host_of("ws://127.0.0.1:40123/"), "127.0.0.1:40123");
        assert_eq!(host_of("gw"), "gw");
    }
}
