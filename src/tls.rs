//! TLS for the gateway's listeners and for the clients of its control plane (rustls, the
//! `ring` provider, TLS 1.2 and 1.3 only).
//!
//! - **Server side** ([`ServerTls`]): `--tls-cert PEM --tls-key PEM` on `serve` and `wrap`.
//!   One `ServerTls` is shared by every listener of a process (`serve`'s own, where agents
//!   and `/control` are served, `--control-listen`, a non-loopback event websocket). Both
//!   files are watched; each change re-reads the pair and swaps it in for new connections,
//!   and a pair that does not load (a half-written file, a key that does not match its
//!   certificate) keeps the last good one and says why in the log. Connections already open
//!   keep the certificate they were made with.
//! - **Plain HTTP on a TLS port** ([`sniff`]): a TLS connection starts with a handshake record
//!   (byte 0x16). Anything else is answered `400` saying the port speaks TLS, instead of a
//!   handshake failure that a person cannot read.
//! - **Client side** ([`client_config`]): the system's roots (`rustls-native-certs`, so a
//!   company CA installed on the operator's machine is trusted as the browser trusts it, and
//!   the OS keeps the list current) plus the certificates of a `ca_file` (a private CA).
//!
//! Files are read as the policy is (a regular file only, size-capped); nothing in them is
//! trusted beyond what rustls accepts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gateway::reload::read_config_file;
use crate::gateway::watch::{FileWatch, Reread};

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const HANDSHAKE_RECORD: u8 = 0x16;

/// Why a certificate, key or CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} is larger than a PEM file of certificates can be")]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("{what} {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{what} {path} is not valid PEM: {detail}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("--tls-key {path} holds no private key (PKCS#8, PKCS#1 or SEC1 PEM): {detail}")]
    NoKey { path: PathBuf, detail: String },
    #[error("--tls-cert {cert} and --tls-key {key} cannot be used together: {source}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the CA file {path} has a certificate rustls refuses: {source}")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Setup(#[source] rustls::Error),
}

/// Where a server's certificate chain and private key are (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The crypto every TLS config of toolgate is built with (here and the OTLP exporter's):
/// rustls' `ring` provider (no cmake, no C toolchain beyond `cc`, unlike aws-lc-rs). rustls
/// 0.23.48 deprecates it for having no post-quantum key exchange; the classical groups it
/// offers are what consoles, agents and collectors speak today.
#[allow(deprecated)]
pub fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads a PEM file as text, as configuration files are read.
fn read_pem(what: &'static str, path: &Path) -> Result<String, TlsError> {
    match read_config_file(path) {
        Ok(Some(text)) => Ok(text),
        Ok(None) => Err(TlsError::TooLarge {
            what,
            path: path.to_owned(),
        }),
        Err(source) => Err(TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        }),
    }
}

/// Every certificate of a PEM file; at least one.
fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read_pem(what, path)?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what,
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A server config from the pair of files, refusing a key that does not match the
/// certificate.
pub(crate) fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = certificates("--tls-cert", &files.cert)?;
    let key_text = read_pem("--tls-key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).map_err(|e| TlsError::NoKey {
        path: files.key.clone(),
        detail: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Pair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    // Both listeners speak HTTP/1.1 only (the websocket upgrade needs it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server side of TLS for every listener of one process: the pair in force, reloaded
/// when either file changes. Cloning shares it.
#[derive(Clone)]
pub struct ServerTls {
    current: Arc<ArcSwap<ServerConfig>>,
    files: TlsFiles,
    _watches: Arc<Vec<FileWatch>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the pair (an error when it does not load: a gateway does not start without
    /// the TLS it was asked for) and watches both files.
    pub fn start(files: TlsFiles) -> anyhow::Result<ServerTls> {
        let files = TlsFiles {
            cert: std::path::absolute(&files.cert)?,
            key: std::path::absolute(&files.key)?,
        };
        let current = Arc::new(ArcSwap::new(server_config(&files)?));
        let mut watches = Vec::new();
        for (path, what) in [(&files.cert, "TLS certificate"), (&files.key, "TLS key")] {
            let current = current.clone();
            let pair = files.clone();
            let watch = FileWatch::start(path, what, move || reload(&pair, &current));
            match watch {
                Ok(watch) => watches.push(watch),
                Err(e) => tracing::warn!(
                    "{e}; a new certificate will not be used until the gateway restarts"
                ),
            }
        }
        Ok(ServerTls {
            current,
            files,
            _watches: Arc::new(watches),
        })
    }

    /// The acceptor for a new connection, with the pair in force now.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

fn reload(files: &TlsFiles, current: &ArcSwap<ServerConfig>) -> Reread {
    match server_config(files) {
        Ok(config) => {
            current.store(config);
            tracing::info!(
                "TLS certificate {} and key {} loaded; new connections use them",
                files.cert.display(),
                files.key.display()
            );
            Reread::Done
        }
        // Half of a pair replaced, or a broken file: the last good pair stays. The other
        // file's change (or the fix) brings another reload.
        Err(e) => {
            tracing::warn!("{e}; keeping the certificate in force");
            Reread::Done
        }
    }
}

/// What the first byte of a new connection on a TLS port says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// A TLS handshake starts.
    Tls,
    /// Something else: plain HTTP, most likely ([`refuse_plain`] answers it).
    Plain,
    /// The connection closed or failed before sending anything.
    Gone,
}

/// Waits for a new connection's first byte, without taking it. The caller bounds the wait.
pub(crate) async fn sniff(stream: &mut TcpStream) -> Sniffed {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0] == HANDSHAKE_RECORD => Sniffed::Tls,
        Ok(1) => Sniffed::Plain,
        _ => Sniffed::Gone,
    }
}

/// What a plain-text client of a TLS port is told.
pub(crate) const PLAIN_ON_TLS_PORT: &str =
    "this port speaks TLS; use https:// (or wss:// for the control websocket)";

/// Answers a plain-text client of a TLS port with `400` and [`PLAIN_ON_TLS_PORT`], then
/// ends its side of the connection.
pub(crate) async fn refuse_plain(stream: &mut TcpStream) {
    let text = format!("{PLAIN_ON_TLS_PORT}\n");
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Closing with the request still unread would send a reset, which can destroy the
    // answer before the client reads it: read what it sent first (a little, briefly).
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

/// The client config for `wss://`: the system's roots and the certificates of `ca_file`.
/// A system store that cannot be read is logged, not fatal (a private CA may be all that
/// is needed); a `ca_file` that cannot be read is an error.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!("reading the system's CA certificates: {e}");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!("{added} system CA certificates trusted ({ignored} unusable)");
    if let Some(path) = ca_file {
        for cert in certificates("the CA file", path)? {
            roots.add(cert).map_err(|source| TlsError::BadCa {
                path: path.to_owned(),
                source,
            })?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = server_config(&TlsFiles {
            cert: missing.clone(),
            key: missing,
        })
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("cannot read --tls-cert"), "{err}");
    }
}
