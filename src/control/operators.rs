//! Operator accounts: who may watch a gateway's event websocket, approve its held calls and
//! change what it enforces, from another terminal or another machine.
//!
//! `toolgate operators add NAME --role viewer|approver|admin --file operators.json` makes a
//! token (`tgop_` and 256 random bits), shows it once and keeps only its SHA-256, as grants do
//! (`crate::credentials`). A gateway started with `--operators FILE` accepts those tokens on
//! its event websocket besides its own discovery token, and enforces each account's
//! [`Role`] on every command. The discovery token (a process of the same user on the same
//! machine, which could read the gateway's files anyway) keeps every right: it is
//! [`Role::Admin`].
//!
//! The file is watched: a valid file replaces the accounts in force, and a connection whose
//! account was revoked (or whose role changed) is closed at once. Like the grants file, a
//! deleted operators file revokes every account; an invalid one keeps the last good set.
//!
//! ```json
//! { "version": "1",
//!   "operators": { "alice": { "role": "approver", "sha256": "9f86d0…", "created_at": "2026-…" } } }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::credentials::{
    Hashed, MAX_NAME, authenticate, new_token, save_private_json, token_sha256, valid_name,
    valid_sha256,
};
use crate::gateway::reload::{MAX_CONFIG_BYTES, is_gone, read_config_file};
use crate::gateway::watch::{FileWatch, Reread};

/// What an operator's token starts with (a grant's starts with `tg_`).
const TOKEN_PREFIX: &str = "tgop_";

/// What an operator may do. Each role has the rights of the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Watches calls, holds, counters and the policy; changes nothing.
    Viewer,
    /// Also approves and denies held calls.
    Approver,
    /// Also changes what the gateway enforces: the policy, and accepting a changed tool's
    /// new definition.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is on the other end of an event websocket connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// Holds the gateway's own discovery token: the same user on the same machine.
    Local,
    /// An operator account.
    Operator {
        name: String,
        role: Role,
        /// The account's stored hash when the connection was made: a new token for the same
        /// name is a different credential.
        sha256: String,
    },
}

impl Identity {
    pub(crate) fn role(&self) -> Role {
        match self {
            Identity::Local => Role::Admin,
            Identity::Operator { role, .. } => *role,
        }
    }

    /// The name decisions are recorded under: the account's, never a name the client
    /// chose; for the local token, the name the client gives (it is the same user).
    pub(crate) fn operator_name(&self, claimed: Option<String>) -> Option<String> {
        match self {
            Identity::Local => claimed,
            Identity::Operator { name, .. } => Some(name.clone()),
        }
    }

    /// Whether the accounts in force still hold this identity's credential, with its role.
    pub(crate) fn still_valid(&self, operators: &Operators) -> bool {
        match self {
            Identity::Local => true,
            Identity::Operator { name, role, sha256 } => operators
                .operators
                .get(name)
                .is_some_and(|entry| entry.role == *role && entry.sha256 == *sha256),
        }
    }
}

/// Why an operators file could not be used or changed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorsError {
    #[error("cannot read operators file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write operators file {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("operators file {path} is not valid: {why}")]
    Invalid { path: String, why: String },
    #[error(
        "operator name {0:?} is not allowed: use 1 to {MAX_NAME} letters, digits, `.`, `_` or `-`"
    )]
    BadName(String),
    #[error("an operator named {0:?} already exists; revoke it first to make a new token")]
    Exists(String),
}

/// One operator account as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorEntry {
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    pub created_at: DateTime<Utc>,
}

impl Hashed for OperatorEntry {
    fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// The operators file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operators {
    pub version: String,
    pub operators: BTreeMap<String, OperatorEntry>,
}

impl Operators {
    pub fn empty() -> Operators {
        Operators {
            version: "1".into(),
            operators: BTreeMap::new(),
        }
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Operators, OperatorsError> {
        let shown = path.display().to_string();
        let text = read_config_file(path)
            .map_err(|source| OperatorsError::Read {
                path: shown.clone(),
                source,
            })?
            .ok_or_else(|| OperatorsError::Invalid {
                path: shown.clone(),
                why: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            })?;
        Operators::parse(&text, &shown)
    }

    /// Reads `path`, or no accounts when the file does not exist yet.
    pub fn load_or_empty(path: &Path) -> Result<Operators, OperatorsError> {
        match Operators::load(path) {
            Err(OperatorsError::Read { source, .. }) if is_gone(&source) => Ok(Operators::empty()),
            other => other,
        }
    }

    /// Parses and validates the text of an operators file.
    pub fn parse(text: &str, shown: &str) -> Result<Operators, OperatorsError> {
        let invalid = |why: String| OperatorsError::Invalid {
            path: shown.to_owned(),
            why,
        };
        let file: Operators = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if file.version != "1" {
            return Err(invalid(format!(
                "version {:?} is not understood; expected \"1\"",
                file.version
            )));
        }
        for (name, entry) in &file.operators {
            if !valid_name(name) {
                return Err(invalid(format!("operator name {name:?} is not allowed")));
            }
            if !valid_sha256(&entry.sha256) {
                return Err(invalid(format!(
                    "operator {name:?}: sha256 must be 64 lowercase hex digits"
                )));
            }
        }
        Ok(file)
    }

    /// Writes the file atomically, mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), OperatorsError> {
        save_private_json(path, self).map_err(|source| OperatorsError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// Adds an account with a fresh token; returns the token (the only time it exists
    /// outside the caller's hands).
    pub fn add(&mut self, name: &str, role: Role) -> Result<String, OperatorsError> {
        if !valid_name(name) {
            return Err(OperatorsError::BadName(name.to_owned()));
        }
        if self.operators.contains_key(name) {
            return Err(OperatorsError::Exists(name.to_owned()));
        }
        let token = new_token(TOKEN_PREFIX);
        self.operators.insert(
            name.to_owned(),
            OperatorEntry {
                role,
                sha256: token_sha256(&token),
                created_at: Utc::now(),
            },
        );
        Ok(token)
    }

    /// Removes an account; `false` when there was none by that name.
    pub fn revoke(&mut self, name: &str) -> bool {
        self.operators.remove(name).is_some()
    }

    /// The account a bearer token belongs to (constant time in the stored hashes).
    pub(crate) fn authenticate(&self, token: &str) -> Option<Identity> {
        authenticate(&self.operators, token).map(|(name, entry)| Identity::Operator {
            name: name.to_owned(),
            role: entry.role,
            sha256: entry.sha256.clone(),
        })
    }
}

/// The accounts in force, and a signal that they changed (so open connections re-check
/// themselves).
#[derive(Debug, Clone)]
pub struct OperatorsHandle {
    current: Arc<ArcSwap<Operators>>,
    changed: watch::Sender<u64>,
}

impl OperatorsHandle {
    pub fn new(operators: Operators) -> OperatorsHandle {
        OperatorsHandle {
            current: Arc::new(ArcSwap::from_pointee(operators)),
            changed: watch::channel(0).0,
        }
    }

    pub fn current(&self) -> Arc<Operators> {
        self.current.load_full()
    }

    /// Puts `operators` in force; connections re-check their accounts.
    pub fn replace(&self, operators: Operators) {
        self.current.store(Arc::new(operators));
        self.changed.send_modify(|generation| *generation += 1);
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// A running watch on the operators file; dropping it stops watching.
#[derive(Debug)]
pub struct OperatorsWatcher {
    _watch: FileWatch,
}

impl OperatorsWatcher {
    /// Watches `path` (absolute) and applies what it finds to `handle`: a valid file
    /// replaces the accounts, a missing one revokes them all, an invalid one is refused
    /// (the accounts in force stay).
    pub fn start(path: &Path, handle: OperatorsHandle) -> anyhow::Result<OperatorsWatcher> {
        let path: PathBuf = path.to_owned();
        let watch = FileWatch::start(&path.clone(), "operators file", move || {
            reload(&path, &handle)
        })?;
        Ok(OperatorsWatcher { _watch: watch })
    }
}

fn reload(path: &Path, handle: &OperatorsHandle) -> Reread {
    match Operators::load(path) {
        Ok(operators) => {
            if *handle.current() != operators {
                tracing::info!(
                    "operators file {} applied: {} account(s)",
                    path.display(),
                    operators.operators.len()
                );
                handle.replace(operators);
            }
            Reread::Done
        }
        Err(OperatorsError::Read { source, .. }) if is_gone(&source) => {
            if !handle.current().operators.is_empty() {
                tracing::warn!(
                    "operators file {} is gone: every operator account is revoked until it is back",
                    path.display()
                );
                handle.replace(Operators::empty());
            }
            Reread::Done
        }
        Err(OperatorsError::Read { source, .. }) => {
            tracing::warn!(
                "cannot read operators file {}: {source}; retrying",
                path.display()
            );
            Reread::Failed
        }
        Err(e) => {
            tracing::warn!("{e}; the operator accounts in force stay");
            Reread::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_authenticates_as_its_account_with_its_role_and_nothing_else_does() {
        let mut ops = Operators::empty();
        let alice = ops.add("alice", Role::Approver).unwrap();
        let bob = ops.add("bob", Role::Viewer).unwrap();
        assert!(alice.starts_with("tgop_") && alice.len() == 5 + 64);
        let Some(Identity::Operator { name, role, .. }) = ops.authenticate(&alice) else {
            panic!("alice's token did not authenticate");
        };
        assert_eq!((name.as_str(), role), ("alice", Role::Approver));
        assert_eq!(ops.authenticate(&bob).map(|i| i.role()), Some(Role::Viewer));
        assert_eq!(ops.authenticate("tgop_wrong"), None);
        assert_eq!(ops.authenticate(""), None);
        assert!(matches!(
            ops.add("alice", Role::Admin),
            Err(OperatorsError::Exists(_))
        ));
        assert!(matches!(
            ops.add("al ice", Role::Admin),
            Err(OperatorsError::BadName(_))
        ));
    }

    #[test]
    fn roles_are_ordered_and_the_local_token_is_admin() {
        assert!(Role::Viewer < Role::Approver && Role::Approver < Role::Admin);
        assert_eq!(Identity::Local.role(), Role::Admin);
        assert_eq!(
            Identity::Local.operator_name(Some("me".into())),
            Some("me".into())
        );
    }

    #[test]
    fn an_account_is_named_by_the_file_never_by_the_client() {
        let mut ops = Operators::empty();
        let token = ops.add("alice", Role::Approver).unwrap();
        let who = ops.authenticate(&token).unwrap();
        assert_eq!(
            who.operator_name(Some("mallory".into())),
            Some("alice".into())
        );
    }

    #[test]
    fn revoking_or_changing_the_role_or_the_token_invalidates_a_connection() {
        let mut ops = Operators::empty();
        let token = ops.add("alice", Role::Approver).unwrap();
        let who = ops.authenticate(&token).unwrap();
        assert!(who.still_valid(&ops));
        let mut demoted = ops.clone();
        demoted.operators.get_mut("alice").unwrap().role = Role::Viewer;
        assert!(!who.still_valid(&demoted));
        let mut renewed = ops.clone();
        renewed.revoke("alice");
        renewed.add("alice", Role::Approver).unwrap();
        assert!(!who.still_valid(&renewed));
        ops.revoke("alice");
        assert!(!who.still_valid(&ops));
        assert!(Identity::Local.still_valid(&ops));
    }

    #[test]
    fn files_round_trip_and_bad_ones_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operators.json");
        assert_eq!(Operators::load_or_empty(&path).unwrap(), Operators::empty());
        let mut ops = Operators::empty();
        ops.add("alice", Role::Admin).unwrap();
        ops.save(&path).unwrap();
        assert_eq!(Operators::load(&path).unwrap(), ops);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        for (text, why) in [
            (r#"{"version":"2","operators":{}}"#, "version"),
            (
                r#"{"version":"1","operators":{"a":{"role":"root","sha256":"00","created_at":"2026-01-01T00:00:00Z"}}}"#,
                "unknown variant `root`",
            ),
            (
                r#"{"version":"1","operators":{"a":{"role":"admin","sha256":"00","created_at":"2026-01-01T00:00:00Z"}}}"#,
                "sha256",
            ),
        ] {
            let err = Operators::parse(text, "ops.json").unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
