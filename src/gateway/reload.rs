//! Hot reload: watch the policy file's directory, debounce, re-read, validate, swap.
//!
//! The directory is watched rather than the file because editors and atomic writers replace
//! the file's inode (rename over it, or rename the old one away and a new one in); a watch
//! on the file itself would die with the first such save. Every debounced burst of events in
//! the directory re-reads the file; identical bytes are ignored, so editor swap files and
//! repeated events cost one read.
//!
//! A file that does not parse or validate, or that is missing, never replaces the policy in
//! force: the problem is logged and published as `policy_rejected`, and the last good policy
//! keeps being enforced. Each applied version is published as `policy_applied`.
//!
//! Runs on the debouncer's own thread and needs no async runtime, so `wrap`, `serve` and the
//! demo all use it as is.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use sha2::{Digest, Sha256};

use super::PolicyHandle;
use crate::control::Hub;
use crate::policy::{LoadError, Policy};
use crate::wire::{EventKind, PolicyApplied, PolicyRejected};

/// How long the directory must be quiet before the file is re-read.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path} for changes: {source}")]
    Watch {
        path: String,
        #[source]
        source: notify_debouncer_full::notify::Error,
    },
}

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
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// A debounced watch on the directory of one file, calling back on every quiet burst of
/// events there. The policy and `serve`'s grants file are both watched through it; what a
/// change means is the callback's business. Dropping it stops watching.
pub struct FileWatch {
    _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch").finish_non_exhaustive()
    }
}

impl FileWatch {
    /// Watches the directory of `path` (absolute); `on_change` runs on the debouncer's
    /// thread after every debounced burst of events.
    pub fn start(
        path: &Path,
        mut on_change: impl FnMut() + Send + 'static,
    ) -> Result<FileWatch, WatchError> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let watch_err = |source| WatchError::Watch {
            path: dir.display().to_string(),
            source,
        };
        let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
            if let Err(errors) = &result {
                for e in errors {
                    tracing::warn!("file watch: {e}");
                }
            }
            on_change();
        })
        .map_err(watch_err)?;
        debouncer
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_err)?;
        Ok(FileWatch {
            _debouncer: debouncer,
        })
    }
}

/// A running watch; dropping it stops watching.
pub struct PolicyWatcher {
    _debouncer: FileWatch,
    reloader: Arc<Mutex<PolicyReloader>>,
}

impl std::fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyWatcher").finish_non_exhaustive()
    }
}

impl PolicyWatcher {
    /// Starts watching `path` (absolute), swapping each valid new version into `policy`.
    pub fn start(path: &Path, policy: PolicyHandle, hub: Arc<Hub>) -> Result<Self, WatchError> {
        let reloader = Arc::new(Mutex::new(PolicyReloader::new(
            path.to_owned(),
            policy,
            hub,
        )));
        let handler_reloader = reloader.clone();
        let debouncer = FileWatch::start(path, move || lock(&handler_reloader).check())?;
        Ok(PolicyWatcher {
            _debouncer: debouncer,
            reloader,
        })
    }

    /// Re-reads the file now (as a filesystem event would).
    pub fn check_now(&self) {
        lock(&self.reloader).check();
    }
}

fn lock(reloader: &Mutex<PolicyReloader>) -> std::sync::MutexGuard<'_, PolicyReloader> {
    reloader.lock().unwrap_or_else(|p| p.into_inner())
}

/// Re-reads the policy file on demand and applies or refuses what it finds; what the
/// watcher calls on every burst of directory events. Remembers the last bytes it saw, so
/// unchanged files cost one read and a refused file is reported once.
pub struct PolicyReloader {
    path: PathBuf,
    policy: PolicyHandle,
    hub: Arc<Hub>,
    /// SHA-256 of the last bytes read, good or bad, or `None` after the file went missing.
    last_seen: Option<String>,
}

impl PolicyReloader {
    /// A reloader for `path` (absolute) whose current version is the one in `policy`.
    pub fn new(path: PathBuf, policy: PolicyHandle, hub: Arc<Hub>) -> PolicyReloader {
        let last_seen = Some(policy.load().hash().to_owned());
        PolicyReloader {
            path,
            policy,
            hub,
            last_seen,
        }
    }

    /// Re-reads the file; applies a new valid version, refuses anything else.
    pub fn check(&mut self) {
        let shown = self.path.display().to_string();
        let text = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.last_seen.take().is_some() {
                    self.reject(vec![format!(
                        "{shown}: the file is gone; keeping the policy in force until it is back"
                    )]);
                }
                return;
            }
            Err(e) => {
                self.last_seen = None;
                self.reject(vec![format!("{shown}: cannot read: {e}")]);
                return;
            }
        };
        let seen = hex::encode(Sha256::digest(&text));
        if self.last_seen.as_deref() == Some(seen.as_str()) {
            return;
        }
        self.last_seen = Some(seen);
        let text = match String::from_utf8(text) {
            Ok(text) => text,
            Err(_) => {
                self.reject(vec![format!("{shown}: not UTF-8 text")]);
                return;
            }
        };
        match Policy::parse(&text, &shown) {
            Ok(policy) => {
                if policy.hash() == self.policy.load().hash() {
                    return;
                }
                let hash = policy.hash().to_owned();
                self.policy.store(Arc::new(policy));
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

/// How large a configuration file (SERVERS.json, GRANTS.json) may be: far more than any real
/// one, and a bound on what a runaway or hostile file can make the gateway read.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Reads a configuration file of at most [`MAX_CONFIG_BYTES`]; `Ok(None)` when it is larger.
pub fn read_config_file(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    Ok((text.len() as u64 <= MAX_CONFIG_BYTES).then_some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

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
