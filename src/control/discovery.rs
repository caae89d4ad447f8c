//! Discovery files: how consoles and the CLI on this machine find the running gateways.
//!
//! Each gateway with an event websocket writes one JSON file, `<gateway id>.json`, into
//! `$XDG_RUNTIME_DIR/toolgate/` (or `<tmp>/toolgate-<uid>/` when that variable is unset).
//! The file holds the websocket URL and its token, so the directory must be ours alone:
//! it is created 0700 and refused when it is a symlink, owned by someone else or open to
//! others. Files are written 0600 and atomically (temp file + rename) so a reader never sees
//! half a file, and removed when the gateway stops. Readers skip files whose process is gone.
//!
//! `<tmp>/toolgate-<uid>` has a name anyone can guess, so another local user can create it
//! first. It is then refused as above, and the gateway writes into `<state dir>/toolgate/
//! gateways/` instead (usually `~/.local/state/...`), which no one else can create, and says
//! so in its log. Readers look in every one of these directories ([`discovery_dirs`]).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Largest discovery file read; anything bigger is not ours.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// One running gateway, as written to its discovery file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DiscoveryEntry {
    /// The gateway id; prefixes its call ids.
    pub id: String,
    /// The event websocket, `ws://127.0.0.1:PORT/`.
    pub url: String,
    /// The bearer token the websocket requires.
    pub token: String,
    pub pid: u32,
    /// Absolute path of the policy file.
    pub policy: String,
    pub grant: String,
    pub server: String,
    pub started_at: DateTime<Utc>,
}

/// Why the discovery directory or a file in it could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("discovery directory {path} is not private ({why}); {hint}")]
    NotPrivate {
        path: PathBuf,
        why: String,
        /// What to do about it.
        hint: &'static str,
    },
    #[error("gateway id {0:?} cannot name a discovery file")]
    BadId(String),
}

/// Where discovery files live: `$XDG_RUNTIME_DIR/toolgate`, or `<tmp>/toolgate-<uid>` when
/// `XDG_RUNTIME_DIR` is unset or not absolute. Not created here; see [`ensure_discovery_dir`].
pub fn discovery_dir() -> PathBuf {
    runtime_dir().unwrap_or_else(tmp_dir)
}

/// `$XDG_RUNTIME_DIR/toolgate`, when that variable names an absolute path.
fn runtime_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?);
    dir.is_absolute().then(|| dir.join("toolgate"))
}

/// `<tmp>/toolgate-<uid>`: a name anyone can guess (and create first).
fn tmp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("toolgate-{}", nix::unistd::geteuid()))
}

/// `<state dir>/toolgate/gateways` (usually `~/.local/state/toolgate/gateways`): used when
/// `<tmp>/toolgate-<uid>` is not ours. `None` when no home directory is known.
pub fn fallback_dir() -> Option<PathBuf> {
    use etcetera::BaseStrategy;
    let base = etcetera::choose_base_strategy().ok()?;
    let state = base.state_dir().unwrap_or_else(|| base.data_dir());
    Some(state.join("toolgate").join("gateways"))
}

/// Where readers look: [`discovery_dir`], then [`fallback_dir`] (where a gateway writes when
/// `<tmp>/toolgate-<uid>` is not ours; looked at also with `XDG_RUNTIME_DIR` set, in case the
/// gateway was started without it).
pub fn discovery_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![discovery_dir()];
    dirs.extend(fallback_dir());
    dirs.dedup();
    dirs
}

/// The directories readers look in, for messages: `A, B and C`.
pub(crate) fn describe_dirs() -> String {
    let dirs: Vec<String> = discovery_dirs()
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    match dirs.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// The directory this gateway writes its discovery file to, created 0700 if missing and
/// verified to be a real directory owned by us and closed to everyone else: [`discovery_dir`],
/// or, when that is `<tmp>/toolgate-<uid>` and unusable (another user made it first, say),
/// [`fallback_dir`], with a warning in the log.
pub fn ensure_discovery_dir() -> Result<PathBuf, DiscoveryError> {
    let dir = discovery_dir();
    let refused = match ensure_private(&dir) {
        Ok(()) => return Ok(dir),
        // `$XDG_RUNTIME_DIR` is ours by definition: a problem there is ours to fix.
        Err(e) if runtime_dir().is_some() => return Err(e),
        Err(e) => e,
    };
    let Some(fallback) = fallback_dir() else {
        return Err(refused);
    };
    tracing::warn!(
        "{refused}; writing the discovery file to {} instead (consoles and `toolgate \
         gateways` look there too)",
        fallback.display()
    );
    ensure_private(&fallback)?;
    Ok(fallback)
}

/// Creates `dir` 0700 (with any missing parents) unless it exists, then verifies it.
fn ensure_private(dir: &Path) -> Result<(), DiscoveryError> {
    match fs::DirBuilder::new()
        .mode(0o700)
        .recursive(false)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A parent ($XDG_RUNTIME_DIR, the state directory) is missing: create it private.
            fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(dir)
                .map_err(|source| io_error(dir, source))?;
        }
        Err(source) => return Err(io_error(dir, source)),
    }
    verify_private(dir)
}

/// Refuses a directory that is a symlink, someone else's, or readable by others.
fn verify_private(dir: &Path) -> Result<(), DiscoveryError> {
    let meta = fs::symlink_metadata(dir).map_err(|source| io_error(dir, source))?;
    let not_private = |why: String, hint| DiscoveryError::NotPrivate {
        path: dir.to_owned(),
        why,
        hint,
    };
    if !meta.file_type().is_dir() {
        return Err(not_private("not a directory".into(), "remove it"));
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(not_private(
            format!("owned by uid {}, not {uid}", meta.uid()),
            "another user made it, so nothing in it is trusted; have an administrator remove \
             it, or set XDG_RUNTIME_DIR",
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(not_private(
            format!("mode {mode:03o}, not 700"),
            "fix it with `chmod 700`, or remove it",
        ));
    }
    Ok(())
}

fn io_error(path: &Path, source: std::io::Error) -> DiscoveryError {
    DiscoveryError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A gateway id is used as a file name: keep it to a safe alphabet.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Writes `entry` to its discovery file (0600, atomically) and returns the file's path.
pub fn write_entry(entry: &DiscoveryEntry) -> Result<PathBuf, DiscoveryError> {
    if !valid_id(&entry.id) {
        return Err(DiscoveryError::BadId(entry.id.clone()));
    }
    let dir = ensure_discovery_dir()?;
    let path = dir.join(format!("{}.json", entry.id));
    let tmp = dir.join(format!(".{}.json.{}.tmp", entry.id, std::process::id()));
    let text = serde_json::to_vec_pretty(entry).map_err(|e| io_error(&path, e.into()))?;
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&tmp);
        io_error(&path, source)
    })?;
    Ok(path)
}

/// The gateways running on this machine, from every directory of [`discovery_dirs`], oldest
/// first. Skips (and tidies away) files of processes that are gone; skips files that cannot
/// be read or parsed, and files not owned by us. An unusable directory yields nothing.
pub fn list_gateways() -> Vec<DiscoveryEntry> {
    let mut entries: Vec<DiscoveryEntry> = discovery_dirs()
        .iter()
        .flat_map(|dir| list_dir(dir))
        .collect();
    entries.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
    // The same gateway can only be in one directory; a second file with its id is a copy.
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| seen.insert(e.id.clone()));
    entries
}

fn list_dir(dir: &Path) -> Vec<DiscoveryEntry> {
    if verify_private(dir).is_err() {
        return Vec::new();
    }
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".json") && !name.starts_with('.')
        })
        .filter_map(|e| read_entry(&e.path()))
        .collect()
}

fn read_entry(path: &Path) -> Option<DiscoveryEntry> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_file()
        || meta.uid() != nix::unistd::geteuid().as_raw()
        || meta.len() > MAX_FILE_BYTES
    {
        return None;
    }
    let entry: DiscoveryEntry = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
    if process_alive(entry.pid) {
        Some(entry)
    } else {
        // The gateway died without tidying up; its file only misleads.
        let _ = fs::remove_file(path);
        None
    }
}

/// Whether a process with this pid exists and is ours to signal.
fn process_alive(pid: u32) -> bool {
    // Pid 0 and negative pids address process groups: never a gateway.
    match i32::try_from(pid) {
        Ok(raw) if raw > 0 => nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None).is_ok(),
        _ => false,
    }
}

/// The discovery file of one running gateway; removed when dropped.
#[derive(Debug)]
pub(crate) struct DiscoveryFile {
    path: PathBuf,
}

impl DiscoveryFile {
    /// Writes the file for `entry` (see [`write_entry`]).
    pub(crate) fn create(entry: &DiscoveryEntry) -> Result<DiscoveryFile, DiscoveryError> {
        Ok(DiscoveryFile {
            path: write_entry(entry)?,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DiscoveryFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_the_directory_are_refused() {
        assert!(valid_id("a1b2c3"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
    }

    #[test]
    fn pid_zero_and_group_pids_are_never_alive() {
        assert!(!process_alive(0));
        assert!(!process_alive(u32::MAX));
        assert!(process_alive(std::process::id()));
    }
}
