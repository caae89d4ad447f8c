//! Hot reload of the policy: re-read, validate, swap.
//!
//! [`FileWatch`] follows the file (its directory, and through symlinks every directory that
//! decides where its path leads) and calls back after each quiet burst of changes; the
//! [`PolicyReloader`] then re-reads the file. Identical bytes are ignored, so repeated events
//! cost one read.
//!
//! A file that does not parse or validate, or that is missing (a deleted file, a dangling
//! symlink), never replaces the policy in force: the problem is logged and published as
//! `policy_rejected`, and the last good policy keeps being enforced. Each applied version is
//! published as `policy_applied`. Only a regular file is read, up to [`MAX_POLICY_BYTES`]: a
//! FIFO or a device put in the file's place would otherwise block or flood the watch thread,
//! and every later edit would be missed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

pub(crate) use super::watch::{FileWatch, Reread, WatchError, read_watched_file};
use super::{PolicyHandle, ShadowPolicyHandle};
use crate::control::Hub;
use crate::policy::{LoadError, Policy};
use crate::sync::lock;
use crate::wire::{EventKind, PolicyApplied, PolicyRejected};

pub(crate) use crate::policy::MAX_POLICY_BYTES;

/// Loads the policy at `path` for a gateway's start and publishes `policy_applied`. The path
/// is made absolute so later reloads and events name the same file wherever the process is.
pub fn load_initial(path: &Path, hub: &Hub) -> Result<(PathBuf, PolicyHandle), LoadError> {
    let path = absolute(path);
    let policy = Policy::load(&path)?;
    hub.publish(EventKind::PolicyApplied(PolicyApplied {
        path: path.display().to_string(),
        hash: policy.hash().to_owned(),
    }));
    Ok((path, Arc::new(arc_swap::ArcSwap::from_pointee(policy))))
}

/// The path as an absolute path, without resolving symlinks (a symlinked policy stays the
/// name the person gave).
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// A running watch; dropping it stops watching.
pub(crate) struct PolicyWatcher {
    _debouncer: FileWatch,
}

impl std::fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyWatcher").finish_non_exhaustive()
    }
}

impl PolicyWatcher {
    /// Starts watching `path` (absolute), swapping each valid new version into `policy`.
    pub(crate) fn start(
        path: &Path,
        policy: PolicyHandle,
        hub: Arc<Hub>,
    ) -> Result<Self, WatchError> {
        let reloader = Arc::new(Mutex::new(PolicyReloader::new(
            path.to_owned(),
            policy,
            hub,
        )));
        let debouncer = FileWatch::start(path, "policy", move || lock(&reloader).check())?;
        Ok(PolicyWatcher {
            _debouncer: debouncer,
        })
    }
}

/// Re-reads the policy file on demand and applies or refuses what it finds; what the
/// watcher calls on every burst of changes. Remembers what it last saw, so unchanged files
/// cost one read and each refusal is reported once.
pub struct PolicyReloader {
    path: PathBuf,
    policy: PolicyHandle,
    hub: Arc<Hub>,
    last_seen: Seen,
}

/// What the last read of a watched file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Bytes with this SHA-256 (hex), good or bad.
    Bytes(String),
    /// No file at the path (deleted, or a symlink that dangles).
    Gone,
    /// A file that could not be read, and why.
    Unreadable(String),
}

impl Seen {
    pub(crate) fn bytes(bytes: &[u8]) -> Seen {
        Seen::Bytes(hex::encode(Sha256::digest(bytes)))
    }
}

/// Whether a read failed because nothing is at the path (as opposed to something there that
/// cannot be read).
pub(crate) fn is_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

impl PolicyReloader {
    /// A reloader for `path` (absolute) whose current version is the one in `policy`.
    pub fn new(path: PathBuf, policy: PolicyHandle, hub: Arc<Hub>) -> PolicyReloader {
        let last_seen = Seen::Bytes(policy.load().hash().to_owned());
        PolicyReloader {
            path,
            policy,
            hub,
            last_seen,
        }
    }

    /// Re-reads the file; applies a new valid version, refuses anything else.
    pub fn check(&mut self) -> Reread {
        let shown = self.path.display().to_string();
        let text = match read_watched_file(&self.path, MAX_POLICY_BYTES) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                self.refuse(
                    Seen::Unreadable("too large".into()),
                    format!("{shown}: larger than {MAX_POLICY_BYTES} bytes; is this the policy?"),
                );
                return Reread::Done;
            }
            Err(e) if is_gone(&e) => {
                let why = match gone_link(&self.path) {
                    Some(target) => format!(
                        "{shown}: the file is gone (the symlink leads to {}, which does not exist); keeping the policy in force until it is back",
                        target.display()
                    ),
                    None => format!(
                        "{shown}: the file is gone; keeping the policy in force until it is back"
                    ),
                };
                self.refuse(Seen::Gone, why);
                return Reread::Done;
            }
            Err(e) => {
                self.refuse(
                    Seen::Unreadable(e.to_string()),
                    format!("{shown}: cannot read: {e}; keeping the policy in force"),
                );
                return Reread::Failed;
            }
        };
        let seen = Seen::bytes(&text);
        if self.last_seen == seen {
            return Reread::Done;
        }
        self.last_seen = seen;
        let text = match String::from_utf8(text) {
            Ok(text) => text,
            Err(_) => {
                self.reject(vec![format!("{shown}: not UTF-8 text")]);
                return Reread::Done;
            }
        };
        match Policy::parse(&text, &shown) {
            Ok(policy) => {
                // The same version as in force can only get here after a refused one (the
                // bytes differ from the last seen): announced again, so clients clear the
                // refusal they show.
                let hash = policy.hash().to_owned();
                if hash != self.policy.load().hash() {
                    self.policy.store(Arc::new(policy));
                }
                tracing::info!(
                    "policy {shown} applied (hash {})",
                    &hash[..hash.len().min(12)]
                );
                self.hub.publish(EventKind::PolicyApplied(PolicyApplied {
                    path: shown,
                    hash,
                }));
            }
            Err(diagnostics) => {
                self.reject(diagnostics.0.iter().map(ToString::to_string).collect());
            }
        }
        Reread::Done
    }

    /// Refuses a state of the file that is not text at all, once per state.
    fn refuse(&mut self, seen: Seen, why: String) {
        if self.last_seen != seen {
            self.last_seen = seen;
            self.reject(vec![why]);
        }
    }

    fn reject(&self, diagnostics: Vec<String>) {
        let kept = self.policy.load().hash().to_owned();
        tracing::warn!(
            "policy change refused, still enforcing {}:\n{}",
            &kept[..kept.len().min(12)],
            diagnostics.join("\n")
        );
        self.hub.publish(EventKind::PolicyRejected(PolicyRejected {
            path: self.path.display().to_string(),
            diagnostics,
            kept_hash: Some(kept),
        }));
    }
}

/// A `--shadow-policy` in force: the candidate (when its file has ever been valid) and the
/// watch that swaps in each valid new version. Its problems are logged and never touch the
/// enforced policy, nor its `policy_applied` / `policy_rejected` events (those are about the
/// file operators edit).
pub(crate) struct ShadowPolicyInForce {
    pub handle: ShadowPolicyHandle,
    pub watcher: Option<FileWatch>,
}

impl std::fmt::Debug for ShadowPolicyInForce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowPolicyInForce")
            .field("loaded", &self.handle.load().is_some())
            .field("watched", &self.watcher.is_some())
            .finish()
    }
}

/// Loads the candidate policy at `path` and watches it. A file that cannot be read or does
/// not validate is reported (logged, and returned as the problem for the command to print)
/// and leaves the candidate empty, or the last good one, in place: a shadow never stops a
/// gateway from starting or changes what it enforces.
pub(crate) fn load_and_watch_shadow(path: &Path) -> (ShadowPolicyInForce, Option<String>) {
    let path = absolute(path);
    let handle: ShadowPolicyHandle = Arc::new(arc_swap::ArcSwapOption::empty());
    let mut reloader = ShadowReloader {
        path: path.clone(),
        handle: handle.clone(),
        last_seen: None,
    };
    let problem = reloader.check_reporting();
    let reloader = Arc::new(Mutex::new(reloader));
    let watcher = FileWatch::start(&path, "shadow policy", move || {
        lock(&reloader).check_reporting();
        Reread::Done
    })
    .inspect_err(|e| tracing::warn!("{e}; shadow policy edits will not apply until a restart"))
    .ok();
    (ShadowPolicyInForce { handle, watcher }, problem)
}

/// Re-reads the shadow policy file: each new valid version replaces the candidate; anything
/// else is logged once and keeps the last good candidate.
struct ShadowReloader {
    path: PathBuf,
    handle: ShadowPolicyHandle,
    last_seen: Option<Seen>,
}

impl ShadowReloader {
    /// Re-reads the file; `Some(problem)` when this read found a problem not reported yet.
    fn check_reporting(&mut self) -> Option<String> {
        let shown = self.path.display().to_string();
        let (seen, result) = match read_watched_file(&self.path, MAX_POLICY_BYTES) {
            Ok(Some(bytes)) => {
                let seen = Seen::bytes(&bytes);
                let result = String::from_utf8(bytes)
                    .map_err(|_| format!("{shown}: not UTF-8 text"))
                    .and_then(|text| Policy::parse(&text, &shown).map_err(|d| d.to_string()));
                (seen, result)
            }
            Ok(None) => (
                Seen::Unreadable("too large".into()),
                Err(format!("{shown}: larger than {MAX_POLICY_BYTES} bytes")),
            ),
            Err(e) if is_gone(&e) => (Seen::Gone, Err(format!("{shown}: the file is gone"))),
            Err(e) => (
                Seen::Unreadable(e.to_string()),
                Err(format!("{shown}: cannot read: {e}")),
            ),
        };
        if self.last_seen.as_ref() == Some(&seen) {
            return None;
        }
        self.last_seen = Some(seen);
        match result {
            Ok(policy) => {
                let hash = policy.hash().to_owned();
                self.handle.store(Some(Arc::new(policy)));
                tracing::info!(
                    "shadow policy {shown} applied (hash {}); its decisions are reported, not enforced",
                    &hash[..hash.len().min(12)]
                );
                None
            }
            Err(problem) => {
                let kept = if self.handle.load().is_some() {
                    "keeping the last good shadow policy"
                } else {
                    "no shadow decisions until it is valid"
                };
                tracing::warn!(
                    "shadow policy refused ({kept}); enforcement is unchanged:\n{problem}"
                );
                Some(problem)
            }
        }
    }
}

/// Where a symlink at `path` leads, when it leads nowhere: for messages about a file that is
/// "gone" only because its link dangles.
pub(crate) fn gone_link(path: &Path) -> Option<PathBuf> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_symlink() {
        return None;
    }
    super::watch::resolve(path).target
}

/// How large a configuration file (SERVERS.json, GRANTS.json) may be: far more than any real
/// one, and a bound on what a runaway or hostile file can make the gateway read.
pub(crate) const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Reads a configuration file of at most [`MAX_CONFIG_BYTES`]; `Ok(None)` when it is larger.
/// Read as the policy is ([`read_watched_file`]): a FIFO given as `--servers` or `--grants`
/// is an error at once, not a start that never ends.
pub(crate) fn read_config_file(path: &Path) -> std::io::Result<Option<String>> {
    let Some(bytes) = read_watched_file(path, MAX_CONFIG_BYTES)? else {
        return Ok(None);
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shadow_policy_applies_each_valid_version_and_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("candidate.json");
        std::fs::write(&path, "{ broken").unwrap();
        let (shadow, problem) = load_and_watch_shadow(&path);
        assert!(
            problem.is_some_and(|p| p.contains("candidate.json")),
            "a broken candidate is reported"
        );
        assert!(
            shadow.handle.load().is_none(),
            "and nothing is decided by it"
        );

        let good = r#"{"version":"1","default":"deny"}"#;
        std::fs::write(&path, good).unwrap();
        let mut reloader = ShadowReloader {
            path: path.clone(),
            handle: shadow.handle.clone(),
            last_seen: None,
        };
        assert_eq!(reloader.check_reporting(), None);
        let applied = shadow.handle.load_full().expect("the valid candidate");
        assert_eq!(applied.default_action(), crate::policy::Action::Deny);

        std::fs::write(&path, r#"{"version":"2"}"#).unwrap();
        let problem = reloader
            .check_reporting()
            .expect("the refusal is reported once");
        assert!(problem.contains("version"), "{problem}");
        assert_eq!(
            reloader.check_reporting(),
            None,
            "the same bytes: reported once"
        );
        assert_eq!(
            shadow.handle.load_full().map(|p| p.hash().to_owned()),
            Some(applied.hash().to_owned()),
            "the last good candidate stays"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(
            reloader
                .check_reporting()
                .is_some_and(|p| p.contains("gone"))
        );
        assert!(shadow.handle.load().is_some());
    }

    #[test]
    fn a_config_file_over_the_cap_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.json");
        std::fs::write(&small, "{}").unwrap();
        assert_eq!(read_config_file(&small).unwrap().as_deref(), Some("{}"));
        let exact = dir.path().join("exact.json");
        std::fs::write(&exact, vec![b' '; MAX_CONFIG_BYTES as usize]).unwrap();
        assert!(
            read_config_file(&exact).unwrap().is_some(),
            "the cap itself is allowed"
        );
        let large = dir.path().join("large.json");
        std::fs::write(&large, vec![b' '; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        assert!(read_config_file(&large).unwrap().is_none());
        assert!(read_config_file(&dir.path().join("missing.json")).is_err());
    }
}
