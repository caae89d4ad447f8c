//! Following one file through every way it can change: a debounced watch on the directories
//! that decide what its path reads, symlinks included.
//!
//! The policy and `serve`'s grants file are both watched through [`FileWatch`]; what a change
//! means is the caller's business (its callback re-reads the file).
//!
//! Directories are watched rather than files because editors and atomic writers replace the
//! file's inode (rename over it, or rename the old one away and write a new one); a watch on
//! the file itself would die with the first such save.
//!
//! A path can lead elsewhere: `~/.config/toolgate/policy.json` may be a symlink into a dotfiles
//! repository, possibly through more links, and any directory on the way may be a link too.
//! [`resolve`] walks the path as the kernel does and returns every directory whose entries
//! decide where it leads: the directory of each symlink met on the way and the directory of
//! the file finally reached (or, while the chain dangles, the deepest directory that exists,
//! so the missing piece is seen when it appears). All of them are watched, and after every
//! relevant burst of events the path is resolved again and the watches follow: a link
//! re-pointed to a file in yet another directory is followed from then on.
//!
//! Only events that can change what the path reads start a re-read: any change to a name on
//! the chain (the links, the file, the first missing name) or to a watched directory itself,
//! a rescan, or an error. Reads and opens are not changes, so the re-read itself (and
//! everything else happening in a busy directory, an audit log next to the policy say) costs
//! nothing.
//!
//! Runs on a thread of its own and needs no async runtime, so `wrap`, `serve` and the demo all
//! use it as is.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use notify_debouncer_full::notify::event::{AccessKind, AccessMode};
use notify_debouncer_full::notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{
    DebounceEventResult, DebouncedEvent, Debouncer, RecommendedCache, new_debouncer,
};

/// How long after a change the file is re-read: the changes of one save (often several
/// events: truncate, write, close; or rename away, create, write) are read once.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(150);

/// How many symlinks a path may go through, as Linux allows (`ELOOP` beyond).
const MAX_LINKS: usize = 40;

/// How many debounced bursts may wait for the watch thread; beyond that they are folded
/// into one "something happened" (the thread re-reads once for all of them).
const QUEUED_BURSTS: usize = 16;

/// How soon a file that could not be read (out of descriptors, no permission, something not
/// a file in its place) is tried again when no event comes first: a read that failed must
/// not leave the file unread until someone happens to touch it again.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// What a watch's callback found when it re-read the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reread {
    /// The file was read (applied or refused for what it says, or found gone).
    Done,
    /// The file is there but could not be read: try again in [`RETRY`].
    Failed,
}

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    #[error("cannot watch {path} for changes: {source}")]
    Watch {
        path: String,
        #[source]
        source: notify_debouncer_full::notify::Error,
    },
}

/// Where a path leads now, and what to watch to notice when that changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Resolution {
    /// Symlink-free directories whose entries decide where the path leads.
    pub dirs: BTreeSet<PathBuf>,
    /// The entries in those directories that matter: every symlink met, the file reached,
    /// or the first name that does not exist.
    pub names: BTreeSet<PathBuf>,
    /// The file the path leads to (which may not exist); `None` when the links loop or go
    /// deeper than Linux follows.
    pub target: Option<PathBuf>,
    /// How many symlinks were followed.
    pub links: usize,
}

impl Resolution {
    /// Whether a change to `path` (as a watch on [`Resolution::dirs`] reports it) can change
    /// what the resolved path reads.
    pub(crate) fn concerns(&self, path: &Path) -> bool {
        self.names.contains(path) || self.dirs.contains(path)
    }
}

/// One step of a path still to walk.
enum Step {
    Up,
    Name(OsString),
}

/// Pushes `path`'s steps onto `pending` so that they pop in order; `true` when it is
/// absolute (the walk restarts at `/`).
fn push_steps(pending: &mut Vec<Step>, path: &Path) -> bool {
    let mut steps = Vec::new();
    let mut absolute = false;
    for component in path.components() {
        match component {
            Component::RootDir => absolute = true,
            Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => steps.push(Step::Up),
            Component::Normal(name) => steps.push(Step::Name(name.to_owned())),
        }
    }
    pending.extend(steps.into_iter().rev());
    absolute
}

/// Walks `path` (absolute) component by component as the kernel would, following symlinks,
/// and says which directories and names decide where it leads. Touches the filesystem only
/// with `lstat` and `readlink`.
pub(crate) fn resolve(path: &Path) -> Resolution {
    let mut res = Resolution::default();
    let mut pending = Vec::new();
    push_steps(
        &mut pending,
        &std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
    );
    let mut at = PathBuf::from("/");
    while let Some(step) = pending.pop() {
        let name = match step {
            Step::Up => {
                at.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let candidate = at.join(&name);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                res.dirs.insert(at.clone());
                res.names.insert(candidate.clone());
                res.links += 1;
                if res.links > MAX_LINKS {
                    return res;
                }
                let Ok(link) = std::fs::read_link(&candidate) else {
                    // Replaced between the two calls; the next event resolves again.
                    return res;
                };
                if push_steps(&mut pending, &link) {
                    at = PathBuf::from("/");
                }
            }
            Ok(_) if pending.is_empty() => {
                res.dirs.insert(at);
                res.names.insert(candidate.clone());
                res.target = Some(candidate);
                return res;
            }
            Ok(meta) if meta.is_dir() => at = candidate,
            _ => {
                // Missing, not a directory, or not searchable: watch the deepest directory
                // that exists, for the name that would make the path whole again.
                res.dirs.insert(at);
                res.names.insert(candidate.clone());
                let mut target = candidate;
                while let Some(step) = pending.pop() {
                    match step {
                        Step::Up => {
                            target.pop();
                        }
                        Step::Name(name) => target.push(name),
                    }
                }
                res.target = Some(target);
                return res;
            }
        }
    }
    // The path was `/` itself.
    res.dirs.insert(at.clone());
    res.target = Some(at);
    res
}

/// Whether a debounced event can change what a watched file reads. Opening and reading a
/// file (the watcher's own re-read among them) cannot.
fn is_change(event: &DebouncedEvent) -> bool {
    match event.event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// What the debouncer hands the watch thread.
enum Message {
    Burst(DebounceEventResult),
    Stop,
}

/// A debounced watch on the directories that decide what one path reads, calling back after
/// every quiet burst of changes that concern it. Dropping it stops watching.
pub(crate) struct FileWatch {
    to_thread: SyncSender<Message>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch").finish_non_exhaustive()
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // When the queue is full the thread is busy with it and sees the flag next.
        let _ = self.to_thread.try_send(Message::Stop);
    }
}

impl FileWatch {
    /// Watches what `path` (absolute) leads to; `on_change` runs on the watch's thread once
    /// the watches are in place (a change made since the caller last read the file is not
    /// missed), after every debounced burst of changes that concern the file, and every
    /// [`RETRY`] while it answers [`Reread::Failed`]. `what` names the file in log lines
    /// ("policy", "grants file"). Fails only when not one directory can be watched; one
    /// that cannot is logged, saying which edits will be missed.
    pub(crate) fn start(
        path: &Path,
        what: &'static str,
        on_change: impl FnMut() -> Reread + Send + 'static,
    ) -> Result<FileWatch, WatchError> {
        let (to_thread, from_debouncer) = sync_channel(QUEUED_BURSTS);
        let overflowed = Arc::new(AtomicBool::new(false));
        let tx = to_thread.clone();
        let overflow = overflowed.clone();
        let debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
            if let Err(TrySendError::Full(_)) = tx.try_send(Message::Burst(result)) {
                overflow.store(true, Ordering::SeqCst);
            }
        })
        .map_err(|source| WatchError::Watch {
            path: path.display().to_string(),
            source,
        })?;
        let mut state = Watched {
            path: path.to_owned(),
            what,
            debouncer,
            resolution: Resolution::default(),
            watching: BTreeMap::new(),
            failed: BTreeSet::new(),
        };
        let first_failure = state.follow();
        if state.watching.is_empty() {
            let (dir, source) = first_failure.unwrap_or_else(|| {
                let error = notify_debouncer_full::notify::Error::generic("nothing to watch");
                (path.to_owned(), error)
            });
            return Err(WatchError::Watch {
                path: dir.display().to_string(),
                source,
            });
        }
        if let Some(target) = state
            .resolution
            .target
            .as_ref()
            .filter(|_| state.resolution.links > 0)
        {
            tracing::info!(
                "{what} {} is a symlink to {}; watching {}",
                path.display(),
                target.display(),
                shown_dirs(&state.resolution.dirs)
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(format!("watch {what}"))
            .spawn(move || state.run(from_debouncer, overflowed, stopped, on_change))
            .map_err(|e| WatchError::Watch {
                path: path.display().to_string(),
                source: notify_debouncer_full::notify::Error::io(e),
            })?;
        Ok(FileWatch { to_thread, stop })
    }
}

/// The watch thread's state: the debouncer and which directories it watches for whom.
struct Watched {
    path: PathBuf,
    what: &'static str,
    debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    resolution: Resolution,
    /// Each watched directory with the identity (device, inode) it had when the watch was
    /// added: a directory replaced under the same name needs a new watch.
    watching: BTreeMap<PathBuf, (u64, u64)>,
    /// Directories that could not be watched, reported once until they can.
    failed: BTreeSet<PathBuf>,
}

impl Watched {
    fn run(
        mut self,
        from_debouncer: Receiver<Message>,
        overflowed: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        mut on_change: impl FnMut() -> Reread,
    ) {
        let mut retry_at = match on_change() {
            Reread::Done => None,
            Reread::Failed => Some(Instant::now() + RETRY),
        };
        loop {
            let message = match retry_at {
                None => from_debouncer
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => {
                    from_debouncer.recv_timeout(at.saturating_duration_since(Instant::now()))
                }
            };
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let mut relevant = match message {
                Err(RecvTimeoutError::Disconnected) | Ok(Message::Stop) => return,
                Err(RecvTimeoutError::Timeout) => true,
                Ok(Message::Burst(Err(errors))) => {
                    for e in errors {
                        tracing::warn!("{} watch: {e}", self.what);
                    }
                    true
                }
                Ok(Message::Burst(Ok(events))) => events.iter().any(|e| {
                    e.event.need_rescan()
                        || (is_change(e)
                            && e.event.paths.iter().any(|p| self.resolution.concerns(p)))
                }),
            };
            relevant |= overflowed.swap(false, Ordering::SeqCst);
            if relevant {
                // Watch first, then read: a change landing in between is seen by the read,
                // and any after it by the new watches.
                let _ = self.follow();
                retry_at = match on_change() {
                    Reread::Done => None,
                    Reread::Failed => Some(Instant::now() + RETRY),
                };
            }
        }
    }

    /// Resolves the path again and moves the watches to where it leads now; returns the
    /// first directory that could not be watched, with why.
    fn follow(&mut self) -> Option<(PathBuf, notify_debouncer_full::notify::Error)> {
        let mut first_failure = None;
        let resolution = resolve(&self.path);
        if resolution.target != self.resolution.target && !self.watching.is_empty() {
            match &resolution.target {
                Some(target) => tracing::info!(
                    "{} {} now leads to {}",
                    self.what,
                    self.path.display(),
                    target.display()
                ),
                None => tracing::warn!(
                    "{} {}: too many levels of symbolic links (a loop?)",
                    self.what,
                    self.path.display()
                ),
            }
        }
        let stale: Vec<PathBuf> = self
            .watching
            .keys()
            .filter(|dir| !resolution.dirs.contains(*dir))
            .cloned()
            .collect();
        for dir in stale {
            self.watching.remove(&dir);
            // The directory may be gone already, taking its watch with it.
            let _ = self.debouncer.unwatch(&dir);
        }
        for dir in &resolution.dirs {
            let identity = std::fs::metadata(dir).map(|m| (m.dev(), m.ino())).ok();
            match (self.watching.get(dir), identity) {
                (Some(watched), Some(now)) if *watched == now => continue,
                (Some(_), _) => {
                    self.watching.remove(dir);
                    let _ = self.debouncer.unwatch(dir);
                }
                (None, _) => {}
            }
            match self.debouncer.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watching
                        .insert(dir.clone(), identity.unwrap_or_default());
                    self.failed.remove(dir);
                }
                Err(e) => {
                    if self.failed.insert(dir.clone()) {
                        tracing::warn!(
                            "cannot watch {} for changes to {} {}: {e}; changes there will not apply until it can be watched",
                            dir.display(),
                            self.what,
                            self.path.display()
                        );
                    }
                    if first_failure.is_none() {
                        first_failure = Some((dir.clone(), e));
                    }
                }
            }
        }
        self.resolution = resolution;
        first_failure
    }
}

/// Reads the regular file at `path`, at most `cap` bytes; `Ok(None)` when it is larger. The
/// one way a policy (at start and on every reload, in every command and in the console) and
/// a grants file are read: opening never blocks, and anything but a regular file in its
/// place (a FIFO, a device, a directory) is an error naming what it is, rather than a stall
/// or a flood.
pub(crate) fn read_watched_file(path: &Path, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY).bits())
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "something else"
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file ({what}); point it at a regular file"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= cap).then_some(bytes))
}

fn shown_dirs(dirs: &BTreeSet<PathBuf>) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn set(paths: &[&Path]) -> BTreeSet<PathBuf> {
        paths.iter().map(|p| p.to_path_buf()).collect()
    }

    /// A temporary directory by its symlink-free name, as `resolve` reports paths.
    fn real_tempdir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        (dir, real)
    }

    #[test]
    fn the_callback_runs_once_at_start_and_again_after_a_failed_read_without_any_event() {
        let (_dir, root) = real_tempdir();
        let file = root.join("policy.json");
        std::fs::write(&file, "{}").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut calls = 0;
        let _watch = FileWatch::start(&file, "test file", move || {
            calls += 1;
            let _ = tx.send(calls);
            if calls < 3 {
                Reread::Failed
            } else {
                Reread::Done
            }
        })
        .unwrap();
        // Nothing touches the directory: the first call is the one at start, the next two
        // are retries of a read that failed.
        for n in 1..=3 {
            let got = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("callback {n} never came"));
            assert_eq!(got, n);
        }
    }

    #[test]
    fn a_watched_file_must_be_a_regular_file_and_reading_one_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.json");
        std::fs::write(&file, "{}").unwrap();
        assert_eq!(
            read_watched_file(&file, 2).unwrap().as_deref(),
            Some(&b"{}"[..])
        );
        assert_eq!(read_watched_file(&file, 1).unwrap(), None, "over the cap");
        // A FIFO with no writer would block a plain open forever.
        let fifo = dir.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = read_watched_file(&fifo, 1024).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(read_watched_file(dir.path(), 1024).is_err(), "a directory");
        let e = read_watched_file(&dir.path().join("missing"), 1024).unwrap_err();
        assert!(super::super::reload::is_gone(&e));
        let e = read_watched_file(&file.join("below-a-file"), 1024).unwrap_err();
        assert!(
            super::super::reload::is_gone(&e),
            "a file where a directory should be is gone too: {e}"
        );
    }

    #[test]
    fn a_plain_file_is_watched_in_its_own_directory() {
        let (_dir, root) = real_tempdir();
        let file = root.join("policy.json");
        std::fs::write(&file, "{}").unwrap();
        let res = resolve(&file);
        assert_eq!(res.dirs, set(&[&root]));
        assert_eq!(res.names, set(&[&file]));
        assert_eq!(res.target.as_deref(), Some(file.as_path()));
        assert_eq!(res.links, 0);
    }

    #[test]
    fn a_chain_of_links_watches_the_directory_of_every_link_and_of_the_file() {
        let (_dir, root) = real_tempdir();
        for d in ["config", "dotfiles", "store"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        let file = root.join("store/policy.json");
        std::fs::write(&file, "{}").unwrap();
        // config/policy.json -> ../dotfiles/policy.json -> <abs>/store/policy.json
        symlink("../dotfiles/policy.json", root.join("config/policy.json")).unwrap();
        symlink(&file, root.join("dotfiles/policy.json")).unwrap();
        let res = resolve(&root.join("config/policy.json"));
        assert_eq!(
            res.dirs,
            set(&[
                &root.join("config"),
                &root.join("dotfiles"),
                &root.join("store")
            ])
        );
        assert_eq!(
            res.names,
            set(&[
                &root.join("config/policy.json"),
                &root.join("dotfiles/policy.json"),
                &file
            ])
        );
        assert_eq!(res.target.as_deref(), Some(file.as_path()));
        assert_eq!(res.links, 2);
        assert!(res.concerns(&root.join("dotfiles/policy.json")));
        assert!(!res.concerns(&root.join("dotfiles/other.json")));
    }

    #[test]
    fn a_symlinked_directory_on_the_way_is_watched_where_the_link_lives() {
        let (_dir, root) = real_tempdir();
        std::fs::create_dir_all(root.join("dotfiles/toolgate")).unwrap();
        std::fs::create_dir(root.join("config")).unwrap();
        symlink(root.join("dotfiles/toolgate"), root.join("config/toolgate")).unwrap();
        let file = root.join("dotfiles/toolgate/policy.json");
        std::fs::write(&file, "{}").unwrap();
        let res = resolve(&root.join("config/toolgate/policy.json"));
        assert_eq!(
            res.dirs,
            set(&[&root.join("config"), &root.join("dotfiles/toolgate")])
        );
        assert_eq!(res.target.as_deref(), Some(file.as_path()));
    }

    #[test]
    fn a_dangling_link_watches_the_deepest_directory_that_exists() {
        let (_dir, root) = real_tempdir();
        symlink(
            root.join("later/deeper/policy.json"),
            root.join("policy.json"),
        )
        .unwrap();
        let res = resolve(&root.join("policy.json"));
        assert_eq!(res.dirs, set(&[&root]));
        assert!(
            res.concerns(&root.join("later")),
            "the missing directory's name"
        );
        assert_eq!(
            res.target.as_deref(),
            Some(root.join("later/deeper/policy.json").as_path())
        );
        // `..` after the missing piece is applied to the text, as the kernel would if it
        // existed.
        let res = resolve(&root.join("nowhere/../x/policy.json"));
        assert_eq!(
            res.target.as_deref(),
            Some(root.join("x/policy.json").as_path())
        );
    }

    #[test]
    fn a_loop_of_links_has_no_target_and_still_watches_its_links() {
        let (_dir, root) = real_tempdir();
        symlink(root.join("b"), root.join("a")).unwrap();
        symlink(root.join("a"), root.join("b")).unwrap();
        let res = resolve(&root.join("a"));
        assert_eq!(res.target, None);
        assert_eq!(res.dirs, set(&[&root]));
        assert!(res.concerns(&root.join("a")) && res.concerns(&root.join("b")));
    }

    #[test]
    fn relative_targets_resolve_against_the_link_and_dot_dot_after_a_link_leaves_its_target() {
        let (_dir, root) = real_tempdir();
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        std::fs::write(root.join("real/policy.json"), "{}").unwrap();
        symlink("real/sub", root.join("link")).unwrap();
        // link/../policy.json is real/policy.json (the kernel's reading), not ./policy.json.
        let res = resolve(&root.join("link/../policy.json"));
        assert_eq!(
            res.target.as_deref(),
            Some(root.join("real/policy.json").as_path())
        );
        assert_eq!(res.dirs, set(&[&root, &root.join("real")]));
    }
}
