//! Grants: who may call through `toolgate serve`, as bearer tokens stored hashed.
//!
//! A grant is a name (the identity limits with scope `grant` count against, and that events
//! and audit records carry) and the SHA-256 of a random token. `toolgate grants add` makes
//! the token, shows it once and keeps only the hash, so the grants file (mode 0600) never
//! holds a usable credential. `serve` hashes each request's bearer token and compares it with
//! every stored hash in constant time.
//!
//! The file is watched like the policy ([`super::watch::FileWatch`], symlinks followed), and
//! [`GrantsReloader`] applies what it finds: a revoked grant stops working without a restart.
//! Unlike a policy, a grants file is a list of credentials, so its absence fails closed: a
//! deleted file (or a symlink left dangling) revokes every token until a valid file is back.
//! A file that is there but empty (an editor in the middle of a save), invalid or unreadable
//! keeps the last good grants in force. Each of these is logged and published as a `grants`
//! event.
//!
//! ```json
//! { "version": "1", "grants": { "ci-bot": { "sha256": "9f86d0…", "created_at": "2026-…" } } }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::reload::{
    MAX_CONFIG_BYTES, Seen, gone_link, is_gone, read_config_file, read_watched_file,
};
use super::watch::{FileWatch, Reread, WatchError};
use crate::control::Hub;
pub(crate) use crate::credentials::valid_name;
use crate::credentials::{
    Hashed, MAX_NAME, authenticate, new_token, save_private_json, token_sha256, valid_sha256,
};
use crate::wire::{EventKind, GrantsChange, GrantsChanged};

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
pub(crate) type GrantsHandle = Arc<ArcSwap<Grants>>;

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
            if !valid_sha256(&entry.sha256) {
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

    /// Writes the file atomically (temp file + rename), mode 0600. A symlink at `path` (a
    /// dotfiles repository) stays: the file it leads to is the one replaced.
    pub fn save(&self, path: &Path) -> Result<(), GrantsError> {
        save_private_json(path, self).map_err(|source| GrantsError::Write {
            path: path.display().to_string(),
            source,
        })
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
        let token = new_token(TOKEN_PREFIX);
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
        authenticate(&self.grants, token).map(|(name, _)| name)
    }
}

impl Hashed for GrantEntry {
    fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// What a grant's token starts with.
const TOKEN_PREFIX: &str = "tg_";

/// A running watch on the grants file; dropping it stops watching.
#[derive(Debug)]
pub(crate) struct GrantsWatcher {
    _watch: FileWatch,
}

impl GrantsWatcher {
    /// Watches `path` (absolute) and applies what it finds to `grants` ([`GrantsReloader`]),
    /// publishing each change on `hub`.
    pub(crate) fn start(
        path: &Path,
        grants: GrantsHandle,
        hub: Arc<Hub>,
    ) -> Result<GrantsWatcher, WatchError> {
        let mut reloader = GrantsReloader::new(path.to_owned(), grants, hub);
        let watch = FileWatch::start(path, "grants file", move || reloader.check())?;
        Ok(GrantsWatcher { _watch: watch })
    }
}

/// How many grant names a log line or event lists before saying "and N more".
const NAMES_SHOWN: usize = 10;

/// Re-reads the grants file on demand and applies what it finds: a valid file replaces the
/// grants in force; no file revokes them all; anything else keeps them. Each state of the
/// file is logged and published once.
pub struct GrantsReloader {
    path: PathBuf,
    grants: GrantsHandle,
    hub: Arc<Hub>,
    last_seen: Seen,
    /// Whether the last state seen was a valid file (so a valid file after a refused or
    /// deleted one is announced even when it holds the same grants).
    last_applied: bool,
}

impl GrantsReloader {
    /// A reloader for `path` (absolute) whose grants in force, as read at start, are in
    /// `grants`.
    pub fn new(path: PathBuf, grants: GrantsHandle, hub: Arc<Hub>) -> GrantsReloader {
        // Nothing read yet: the first check reads the file and says nothing if it holds the
        // grants in force.
        GrantsReloader {
            path,
            grants,
            hub,
            last_seen: Seen::Unreadable(String::new()),
            last_applied: true,
        }
    }

    /// Re-reads the file and applies, revokes or refuses.
    pub fn check(&mut self) -> Reread {
        // `stat` first: it needs no descriptor, so a deletion is seen (and revokes) even when
        // the process is out of file descriptors.
        let read = match std::fs::metadata(&self.path) {
            Err(e) if is_gone(&e) => Err(e),
            _ => read_watched_file(&self.path, MAX_CONFIG_BYTES),
        };
        let bytes = match read {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                let why = format!("it is larger than {MAX_CONFIG_BYTES} bytes");
                self.refuse(Seen::Unreadable("too large".into()), &why);
                return Reread::Done;
            }
            Err(e) if is_gone(&e) => {
                self.deleted();
                return Reread::Done;
            }
            Err(e) => {
                self.refuse(
                    Seen::Unreadable(e.to_string()),
                    &format!("cannot read it: {e}"),
                );
                return Reread::Failed;
            }
        };
        let seen = Seen::bytes(&bytes);
        if self.last_seen == seen {
            return Reread::Done;
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            let why = "it is empty (an editor in the middle of a save?)";
            self.refuse(seen, why);
            return Reread::Done;
        }
        let shown = self.path.display().to_string();
        let parsed = match String::from_utf8(bytes) {
            Ok(text) => Grants::parse(&text, &shown).map_err(|e| match e {
                GrantsError::Invalid { why, .. } => why,
                other => other.to_string(),
            }),
            Err(_) => Err("it is not UTF-8 text".to_owned()),
        };
        match parsed {
            Ok(new) => {
                self.last_seen = seen;
                self.apply(new);
            }
            Err(why) => self.refuse(seen, &format!("it is not valid: {why}")),
        }
        Reread::Done
    }

    fn apply(&mut self, new: Grants) {
        let old = self.grants.load_full();
        if *old == new && self.last_applied {
            return;
        }
        self.last_applied = true;
        let revoked: Vec<&str> = old
            .grants
            .iter()
            .filter(|(name, entry)| new.grants.get(*name) != Some(*entry))
            .map(|(name, _)| name.as_str())
            .collect();
        let added: Vec<&str> = new
            .grants
            .iter()
            .filter(|(name, entry)| old.grants.get(*name) != Some(*entry))
            .map(|(name, _)| name.as_str())
            .collect();
        let mut detail = format!("{} grant(s) in force", new.grants.len());
        if !added.is_empty() {
            detail += &format!("; new or changed: {}", names(&added));
        }
        if !revoked.is_empty() {
            detail += &format!("; revoked: {}", names(&revoked));
        }
        let count = new.grants.len() as u64;
        self.grants.store(Arc::new(new));
        tracing::info!("grants file {} applied: {detail}", self.path.display());
        self.publish(GrantsChange::Applied, count, detail);
    }

    fn deleted(&mut self) {
        if self.last_seen == Seen::Gone {
            return;
        }
        self.last_seen = Seen::Gone;
        self.last_applied = false;
        let old = self.grants.swap(Arc::new(Grants::empty()));
        let shown = self.path.display().to_string();
        let gone = match gone_link(&self.path) {
            Some(target) => format!(
                "grants file {shown} is gone (the symlink leads to {}, which does not exist)",
                target.display()
            ),
            None => format!("grants file {shown} was deleted"),
        };
        let detail = format!(
            "{gone}: every token is revoked ({} grant(s)) until a valid file is back; `toolgate grants add NAME --file {shown}` starts a new one",
            old.grants.len()
        );
        tracing::warn!("{detail}");
        self.publish(GrantsChange::Deleted, 0, detail);
    }

    fn refuse(&mut self, seen: Seen, why: &str) {
        if self.last_seen == seen {
            return;
        }
        self.last_seen = seen;
        self.last_applied = false;
        let kept = self.grants.load().grants.len();
        let keeping = match kept {
            0 => "no grant is in force meanwhile".to_owned(),
            n => {
                format!("keeping the {n} grant(s) in force (delete the file to revoke every token)")
            }
        };
        let detail = format!(
            "grants file {} refused: {why}; {keeping}",
            self.path.display()
        );
        tracing::warn!("{detail}");
        self.publish(GrantsChange::Refused, kept as u64, detail);
    }

    fn publish(&self, change: GrantsChange, grants: u64, detail: String) {
        self.hub.publish(EventKind::Grants(GrantsChanged {
            path: self.path.display().to_string(),
            change,
            grants,
            detail,
        }));
    }
}

/// Up to [`NAMES_SHOWN`] names, then how many more.
fn names(list: &[&str]) -> String {
    let mut text = list
        .iter()
        .take(NAMES_SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > NAMES_SHOWN {
        text += &format!(" and {} more", list.len() - NAMES_SHOWN);
    }
    text
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

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
    fn saving_through_a_symlink_replaces_its_target_and_keeps_the_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dotfiles")).unwrap();
        let target = dir.path().join("dotfiles/grants.json");
        let link = dir.path().join("grants.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut grants = Grants::empty();
        grants.add("ci").unwrap();
        // The link dangles until the first save creates its target.
        grants.save(&link).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(Grants::load(&target).unwrap(), grants);
        grants.add("ops").unwrap();
        grants.save(&link).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(Grants::load(&link).unwrap(), grants);
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
