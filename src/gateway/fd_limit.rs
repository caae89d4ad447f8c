//! The process's open-file limit: raised to the hard limit when a gateway starts, and read
//! back so `serve` can share the descriptors it has between connections, sessions and its
//! own files.
//!
//! Many systems start processes with a soft limit of 1,024 descriptors and a much higher hard
//! limit; a gateway holding connections, server pipes, the policy, the grants and the audit
//! log runs out long before the machine does. Any process may raise its soft limit up to
//! its hard limit, so every gateway command does that first (`wrap` and `serve` call
//! [`raise`]).
//!
//! The raised limit is the gateway's alone: a server it spawns gets the limit the gateway
//! started with ([`restore_in_child`], between fork and exec). A server built on `select()`
//! breaks on descriptors above 1,023, which a raised soft limit lets it open.

use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The soft limit the process started with, recorded by [`raise`] when it changed it; 0
/// while the limit is the one the process started with.
static STARTED_WITH: AtomicU64 = AtomicU64::new(0);

/// Where the soft limit is taken when the hard limit is "unlimited" (some systems refuse
/// an unlimited open-file limit; this is Linux's default ceiling, `fs.nr_open`).
const UNLIMITED_TARGET: u64 = 1 << 20;

/// The open-file limit after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileLimit {
    /// The soft limit now in force: the most descriptors this process can have open.
    pub soft: u64,
    /// The limit it started with.
    pub was: u64,
}

/// Raises the soft open-file limit to the hard limit, logging what it did; a failure is
/// logged and the old limit kept (the gateway still works, with fewer descriptors).
pub(crate) fn raise() -> FileLimit {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit ({e}); assuming 1024");
            return FileLimit {
                soft: 1024,
                was: 1024,
            };
        }
    };
    let target = if hard == nix::sys::resource::RLIM_INFINITY {
        UNLIMITED_TARGET.max(soft)
    } else {
        hard
    };
    if target <= soft {
        return FileLimit { soft, was: soft };
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => {
            STARTED_WITH.store(soft, Ordering::SeqCst);
            tracing::debug!("open-file limit raised from {soft} to {target}");
            FileLimit {
                soft: target,
                was: soft,
            }
        }
        Err(e) => {
            tracing::warn!(
                "cannot raise the open-file limit from {soft} to {target} ({e}); \
                 raise it before starting (ulimit -n, or LimitNOFILE= in a systemd unit)"
            );
            FileLimit { soft, was: soft }
        }
    }
}

/// Whether [`raise`] changed the limit, so a spawned server needs [`restore_in_child`].
pub(crate) fn raised() -> bool {
    STARTED_WITH.load(Ordering::SeqCst) != 0
}

/// Puts back the soft open-file limit the process started with, if [`raise`] changed it.
/// For a spawned server, between fork and exec: it only reads an atomic and makes two
/// system calls (no allocation, no lock), as code there must. A failure keeps the raised
/// limit: the server then has more descriptors than it would have had, which is no reason
/// not to start it.
pub(crate) fn restore_in_child() {
    let started_with = STARTED_WITH.load(Ordering::SeqCst);
    if started_with == 0 {
        return;
    }
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, started_with.min(hard), hard);
    }
}

/// How many descriptors this process has open now, when the system can say (Linux's
/// `/proc/self/fd`; the directory's own descriptor is not counted).
pub(crate) fn open_now() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    let count = entries.count() as u64;
    Some(count.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit_and_never_lower() {
        let (before, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let limit = raise();
        let (after, hard_after) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(limit.soft, after);
        assert_eq!(limit.was, before);
        assert!(after >= before);
        assert_eq!(hard_after, hard, "the hard limit is never changed");
        if hard != nix::sys::resource::RLIM_INFINITY {
            assert_eq!(after, hard);
        }
    }
}
