//! SERVERS.json: the MCP servers `toolgate serve` fronts, in the `mcpServers` format MCP
//! clients already use.
//!
//! ```json
//! { "mcpServers": {
//!     "time":       { "command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "UTC"} },
//!     "everything": { "url": "http://127.0.0.1:3001/mcp", "headers": {"X-Api-Key": "…"} } } }
//! ```
//!
//! A server is either a command (spawned, spoken to over stdio) or a URL (reached over
//! Streamable HTTP, with the given headers: the upstream's own credentials live here, never
//! the agent's). Unknown fields are errors, like in the policy: a typo must not silently
//! change what runs. The name becomes the path `/mcp/<name>`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use serde::Deserialize;

use crate::gateway::reload::{MAX_CONFIG_BYTES, read_config_file};
use crate::gateway::upstream::ServerCommand;

/// Why SERVERS.json could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServersError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: String, why: String },
}

/// One upstream server.
#[derive(Debug, Clone)]
pub(crate) enum ServerSpec {
    /// Spawned per MCP session and spoken to over stdio.
    Command(ServerCommand),
    /// Reached over Streamable HTTP.
    Url(UrlServer),
}

/// A Streamable HTTP upstream.
#[derive(Debug, Clone)]
pub(crate) struct UrlServer {
    /// `http://…` (plain HTTP: this build reaches upstreams on trusted networks only).
    pub url: String,
    /// Sent with every request to this upstream.
    pub headers: Vec<(String, String)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "mcpServers")]
    mcp_servers: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// Some clients write `"type": "stdio"` / `"http"`; accepted and checked.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Reads and validates SERVERS.json.
pub(crate) fn load(path: &Path) -> Result<BTreeMap<String, ServerSpec>, ServersError> {
    let shown = path.display().to_string();
    let read_err = |source| ServersError::Read {
        path: shown.clone(),
        source,
    };
    let Some(text) = read_config_file(path).map_err(read_err)? else {
        return Err(ServersError::Invalid {
            path: shown,
            why: format!("larger than {MAX_CONFIG_BYTES} bytes"),
        });
    };
    parse(&text, &shown)
}

/// Parses and validates the text of SERVERS.json.
pub(crate) fn parse(text: &str, shown: &str) -> Result<BTreeMap<String, ServerSpec>, ServersError> {
    let invalid = |why: String| ServersError::Invalid {
        path: shown.to_owned(),
        why,
    };
    let file: File = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if file.mcp_servers.is_empty() {
        return Err(invalid("no servers in \"mcpServers\"".into()));
    }
    let mut servers = BTreeMap::new();
    for (name, entry) in file.mcp_servers {
        if !crate::gateway::grants::valid_name(&name) {
            return Err(invalid(format!(
                "server name {name:?} cannot be a URL path segment; use letters, digits, `.`, `_` or `-`"
            )));
        }
        let spec = match (entry.command, entry.url) {
            (Some(command), None) => {
                if entry.kind.as_deref().is_some_and(|k| k != "stdio") || !entry.headers.is_empty()
                {
                    return Err(invalid(format!(
                        "server {name:?}: a command server takes `args` and `env`, not `headers` or a non-stdio `type`"
                    )));
                }
                ServerSpec::Command(ServerCommand {
                    program: OsString::from(command),
                    args: entry.args.into_iter().map(OsString::from).collect(),
                    env: entry
                        .env
                        .into_iter()
                        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                        .collect(),
                })
            }
            (None, Some(url)) => {
                if !entry.args.is_empty() || !entry.env.is_empty() {
                    return Err(invalid(format!(
                        "server {name:?}: a URL server takes `headers`, not `args` or `env`"
                    )));
                }
                if entry
                    .kind
                    .as_deref()
                    .is_some_and(|k| !matches!(k, "http" | "streamable-http" | "streamableHttp"))
                {
                    return Err(invalid(format!(
                        "server {name:?}: only Streamable HTTP URL servers are supported"
                    )));
                }
                if !url.starts_with("http://") {
                    return Err(invalid(format!(
                        "server {name:?}: url {url:?} must start with http:// (this build does not speak TLS to upstreams)"
                    )));
                }
                for (k, v) in &entry.headers {
                    let forbidden = [
                        "host",
                        "content-length",
                        "mcp-session-id",
                        "mcp-protocol-version",
                    ];
                    if forbidden.contains(&k.to_ascii_lowercase().as_str())
                        || reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                        || reqwest::header::HeaderValue::from_str(v).is_err()
                    {
                        return Err(invalid(format!(
                            "server {name:?}: header {k:?} cannot be set here"
                        )));
                    }
                }
                ServerSpec::Url(UrlServer {
                    url,
                    headers: entry.headers.into_iter().collect(),
                })
            }
            _ => {
                return Err(invalid(format!(
                    "server {name:?} needs exactly one of `command` and `url`"
                )));
            }
        };
        servers.insert(name, spec);
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_and_url_servers_are_read() {
        let servers = parse(
            r#"{"mcpServers":{
                "time":{"command":"mcp-server-time","args":["--x"],"env":{"TZ":"UTC"}},
                "web":{"type":"http","url":"http://127.0.0.1:3001/mcp","headers":{"X-Key":"k"}}}}"#,
            "s.json",
        )
        .unwrap();
        assert!(
            matches!(&servers["time"], ServerSpec::Command(c) if c.args.len() == 1 && c.env.len() == 1)
        );
        assert!(matches!(&servers["web"], ServerSpec::Url(u) if u.headers.len() == 1));
    }

    #[test]
    fn ambiguous_unknown_or_unsafe_entries_are_errors() {
        for text in [
            r#"{"mcpServers":{}}"#,
            r#"{"mcpServers":{"a":{}}}"#,
            r#"{"mcpServers":{"a":{"command":"x","url":"http://h/"}}}"#,
            r#"{"mcpServers":{"a":{"command":"x","bogus":1}}}"#,
            r#"{"mcpServers":{"a/b":{"command":"x"}}}"#,
            r#"{"mcpServers":{"a":{"url":"ftp://h/"}}}"#,
            r#"{"mcpServers":{"a":{"url":"http://h/","headers":{"Mcp-Session-Id":"x"}}}}"#,
            r#"{"servers":{}}"#,
        ] {
            assert!(parse(text, "s.json").is_err(), "{text}");
        }
    }
}
