//! Grants: who may call through `toolgate serve`, as bearer tokens stored hashed.
//!
//! A grant is a name (the identity limits with scope `grant` count against, and that events
//! and audit records carry) and the SHA-256 of a random token. `toolgate grants add` makes
//! the token, shows it once and keeps only the hash, so the grants file (mode 0600) never
//! holds a usable credential. `serve` hashes each request's bearer token and compares it with
//! every stored hash in constant time.
//!
//! The file is watched like the policy ([`super::reload::FileWatch`]): a revoked grant stops
//! working without a restart; a file that does not parse keeps the last good grants in force.
//!
//! ```json
//! { "version": "1", "grants": { "ci-bot": { "sha256": "9f86d0…", "created_at": "2026-…" } } }
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::reload::{FileWatch, MAX_CONFIG_BYTES, WatchError, read_config_file};

/// Longest grant name.
const MAX_NAME: usize = 64;

/// Why a grants file could not be used or changed.
#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    #[error("cannot read grants file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write grants file {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("grants file {path} is not valid: {why}")]
    Invalid { path: String, why: String },
    #[error(
        "grant name {0:?} is not allowed: use 1 to {MAX_NAME} letters, digits, `.`, `_` or `-`"
    )]
    BadName(String),
    #[error("a grant named {0:?} already exists; revoke it first to make a new token")]
    Exists(String),
}

/// One grant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantEntry {
    /// Hex SHA-256 of the token.
    pub sha256: String,
    pub created_at: DateTime<Utc>,
}

/// The grants file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    pub version: String,
    pub grants: BTreeMap<String, GrantEntry>,
}

/// The grants in force, swapped by [`GrantsWatcher`] and read lock-free by every request.
pub type GrantsHandle = Arc<ArcSwap<Grants>>;

impl Grants {
    /// An empty grants file.
    pub fn empty() -> Grants {
        Grants {
            version: "1".into(),
            grants: BTreeMap::new(),
        }
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Grants, GrantsError> {
        let shown = path.display().to_string();
        let read_err = |source| GrantsError::Read {
            path: shown.clone(),
            source,
        };
        let Some(text) = read_config_file(path).map_err(read_err)? else {
            return Err(GrantsError::Invalid {
                path: shown,
                why: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            });
        };
        Grants::parse(&text, &shown)
    }

    /// Parses and validates the text of a grants file.
    pub fn parse(text: &str, shown: &str) -> Result<Grants, GrantsError> {
        let invalid = |why: String| GrantsError::Invalid {
            path: shown.to_owned(),
            why,
        };
        let grants: Grants = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if grants.version != "1" {
            return Err(invalid(format!(
                "version {:?} is not understood; expected \"1\"",
                grants.version
            )));
        }
        for (name, entry) in &grants.grants {
            if !valid_name(name) {
                return Err(invalid(format!("grant name {name:?} is not allowed")));
            }
            let ok = entry.sha256.len() == 64
                && entry
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !ok {
                return Err(invalid(format!(
                    "grant {name:?}: sha256 must be 64 lowercase hex digits"
                )));
            }
        }
        Ok(grants)
    }

    /// Reads `path`, or an empty set when the file does not exist yet.
    pub fn load_or_empty(path: &Path) -> Result<Grants, GrantsError> {
        match Grants::load(path) {
            Err(GrantsError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(Grants::empty())
            }
            other => other,
        }
    }

    /// Writes the file atomically (temp file + rename), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), GrantsError> {
        let shown = path.display().to_string();
        let write_err = |source| GrantsError::Write {
            path: shown.clone(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut text =
            serde_json::to_string_pretty(self).map_err(|e| write_err(std::io::Error::other(e)))?;
        text.push('\n');
        let tmp = dir.join(format!(
            ".{}.{:08x}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "grants".into()),
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(write_err)
    }

    /// Adds a grant named `name` with a fresh token; returns the token (the only time it
    /// exists outside the caller's hands).
    pub fn add(&mut self, name: &str) -> Result<String, GrantsError> {
        if !valid_name(name) {
            return Err(GrantsError::BadName(name.to_owned()));
        }
        if self.grants.contains_key(name) {
            return Err(GrantsError::Exists(name.to_owned()));
        }
        let token = new_token();
        self.grants.insert(
            name.to_owned(),
            GrantEntry {
                sha256: token_sha256(&token),
                created_at: Utc::now(),
            },
        );
        Ok(token)
    }

    /// Removes a grant; `false` when there was none by that name.
    pub fn revoke(&mut self, name: &str) -> bool {
        self.grants.remove(name).is_some()
    }

    /// The grant a bearer token belongs to. Every stored hash is compared, in constant time,
    /// so timing says nothing about which grants exist or how close a guess was.
    pub fn authenticate(&self, token: &str) -> Option<&str> {
        let presented = Sha256::digest(token.as_bytes());
        let mut found = None;
        for (name, entry) in &self.grants {
            let Ok(stored) = hex::decode(&entry.sha256) else {
                continue;
            };
            if bool::from(stored.as_slice().ct_eq(presented.as_slice())) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// Whether `name` can name a grant: short, and safe in logs, events and file names.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A new random token: `tg_` and 256 random bits in hex.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("tg_{}", hex::encode(bytes))
}

/// The hex SHA-256 of a token, as stored.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A running watch on the grants file; dropping it stops watching.
#[derive(Debug)]
pub struct GrantsWatcher {
    _watch: FileWatch,
}

impl GrantsWatcher {
    /// Watches `path` (absolute) and swaps each valid new version into `grants`. A file that
    /// is missing or invalid keeps the grants in force, and says so in the log.
    pub fn start(path: &Path, grants: GrantsHandle) -> Result<GrantsWatcher, WatchError> {
        let path: PathBuf = path.to_owned();
        let watched = path.clone();
        let watch = FileWatch::start(&watched, move || match Grants::load(&path) {
            Ok(new) => {
                if **grants.load() != new {
                    tracing::info!(
                        "grants {} reloaded: {} grant(s)",
                        path.display(),
                        new.grants.len()
                    );
                    grants.store(Arc::new(new));
                }
            }
            Err(e) => tracing::warn!("grants change refused, keeping the grants in force: {e}"),
        })?;
        Ok(GrantsWatcher { _watch: watch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_authenticates_as_its_grant_and_nothing_else_does() {
        let mut grants = Grants::empty();
        let ci = grants.add("ci-bot").unwrap();
        let ops = grants.add("ops").unwrap();
        assert_eq!(grants.authenticate(&ci), Some("ci-bot"));
        assert_eq!(grants.authenticate(&ops), Some("ops"));
        assert_eq!(grants.authenticate("tg_wrong"), None);
        assert_eq!(grants.authenticate(""), None);
        assert!(grants.revoke("ci-bot"));
        assert_eq!(grants.authenticate(&ci), None);
    }

    #[test]
    fn only_the_hash_is_stored_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grants.json");
        let mut grants = Grants::empty();
        let token = grants.add("ci").unwrap();
        grants.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token));
        assert!(text.contains(&token_sha256(&token)));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Grants::load(&path).unwrap(), grants);
    }

    #[test]
    fn bad_names_duplicates_and_bad_files_are_refused() {
        let mut grants = Grants::empty();
        assert!(matches!(grants.add("a b"), Err(GrantsError::BadName(_))));
        assert!(matches!(grants.add(""), Err(GrantsError::BadName(_))));
        grants.add("x").unwrap();
        assert!(matches!(grants.add("x"), Err(GrantsError::Exists(_))));
        for text in [
            "{",
            r#"{"version":"2","grants":{}}"#,
            r#"{"version":"1","grants":{"x":{"sha256":"zz","created_at":"2026-01-01T00:00:00Z"}}}"#,
            r#"{"version":"1","grants":{},"extra":1}"#,
        ] {
            assert!(Grants::parse(text, "g.json").is_err(), "{text}");
        }
    }
}
