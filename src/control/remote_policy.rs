//! The gateway's side of the remote policy write: `read_policy` and `write_policy`.
//!
//! A console on another machine has no file to open: it asks the gateway for the text of its
//! policy file (with the SHA-256 of its bytes, the `base_hash` of a later write, and whether
//! the gateway can write it), and sends the edited text back. The gateway validates it with
//! the code `toolgate check` runs ([`Policy::parse`]), refuses it when the file changed since
//! `base_hash` (unless forced), and writes it with the one atomic writer
//! ([`crate::policy::file::write_atomic`]), the text as given, so key order and untouched
//! text are kept. It does not apply anything itself: its watcher sees the new file and
//! applies it as any edit, publishing `policy_applied` (or `policy_rejected`).
//!
//! Replicas sharing one file: the first write changes it; the others find the text they were
//! sent already there and answer as written, never as a conflict.
//!
//! A file the gateway cannot write (a read-only mount such as a Kubernetes ConfigMap, a file
//! or directory without write permission for the gateway's user) is refused as `read_only`,
//! with the reason: the policy is managed elsewhere.
//!
//! Everything here blocks (file reads, fsync): [`read_reply`] and [`write_reply`] run it on
//! tokio's blocking pool, so an operator's command never stalls the connection task of
//! another.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::unistd::{AccessFlags, access};

use crate::policy::Policy;
use crate::policy::file::{WriteError, hash_bytes, write_atomic};
use crate::wire::{PolicyText, Reply, ReplyCode};

/// One write at a time in this process: two consoles writing at once are ordered, so the
/// second one's hash check sees the first one's file.
static WRITING: Mutex<()> = Mutex::new(());

/// Why a policy command was refused; becomes a [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub code: ReplyCode,
    /// For people: what, where, and what to do.
    pub error: String,
    /// The file as it is now (with `conflict`), so the console can offer `:reload`.
    pub policy: Option<PolicyText>,
}

impl Refusal {
    fn new(code: ReplyCode, error: String) -> Refusal {
        Refusal {
            code,
            error,
            policy: None,
        }
    }
}

/// The policy file at `path` as the gateway reads it.
pub(crate) fn read(path: &Path) -> Result<PolicyText, Refusal> {
    let shown = path.display().to_string();
    let text = crate::policy::read_source(path).map_err(|e| {
        Refusal::new(
            ReplyCode::Failed,
            format!("the gateway cannot read its policy file {shown}: {e}"),
        )
    })?;
    Ok(PolicyText {
        path: shown,
        hash: hash_bytes(text.as_bytes()),
        writable: writable_by(path, may_write).is_ok(),
        text,
    })
}

/// Validates `text` and writes it over the policy file at `path`, if the file is still the
/// one hashed `base_hash` (or `force`). Returns the hash of the text now in the file.
pub(crate) fn write(
    path: &Path,
    text: &str,
    base_hash: &str,
    force: bool,
) -> Result<String, Refusal> {
    write_checked(path, text, base_hash, force, may_write)
}

/// [`write`], asking `may_write` (access(2) outside tests) whether a place can be written.
fn write_checked(
    path: &Path,
    text: &str,
    base_hash: &str,
    force: bool,
    may_write: fn(&Path) -> Result<(), Errno>,
) -> Result<String, Refusal> {
    let shown = path.display().to_string();
    if let Err(reason) = writable_by(path, may_write) {
        return Err(Refusal::new(
            ReplyCode::ReadOnly,
            format!("the policy is managed elsewhere: {reason}"),
        ));
    }
    if let Err(diagnostics) = Policy::parse(text, &shown) {
        let lines: Vec<String> = diagnostics.0.iter().map(ToString::to_string).collect();
        return Err(Refusal::new(ReplyCode::Invalid, lines.join("\n")));
    }
    let new_hash = hash_bytes(text.as_bytes());
    let _one_at_a_time = crate::sync::lock(&WRITING);
    // A replica sharing the file with one that wrote it first: already done.
    if let Ok(current) = crate::policy::read_source(path)
        && hash_bytes(current.as_bytes()) == new_hash
    {
        return Ok(new_hash);
    }
    match write_atomic(path, text, base_hash, force) {
        Ok(hash) => Ok(hash),
        Err(WriteError::ChangedOnDisk { text: current, .. }) => Err(Refusal {
            code: ReplyCode::Conflict,
            error: format!(
                "{shown} changed since the text this edit started from; reload it, or \
                 write with force (:w!) to replace it anyway"
            ),
            policy: Some(PolicyText {
                path: shown,
                hash: hash_bytes(current.as_bytes()),
                writable: true,
                text: current,
            }),
        }),
        Err(WriteError::Io { source, .. }) if read_only_error(&source) => Err(Refusal::new(
            ReplyCode::ReadOnly,
            format!("the policy is managed elsewhere: cannot write {shown}: {source}"),
        )),
        Err(e) => Err(Refusal::new(ReplyCode::Failed, e.to_string())),
    }
}

/// Whether a failed write failed because the place cannot be written at all.
fn read_only_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EROFS | Errno::EACCES | Errno::EPERM)
    )
}

/// Whether this process may write `place`, as the kernel says (a read-only mount is
/// `EROFS` whatever the permission bits and the user).
fn may_write(place: &Path) -> Result<(), Errno> {
    access(place, AccessFlags::W_OK)
}

/// `Ok` when this process may replace the policy file (the file it leads to through links,
/// and that file's directory, where the temporary file is made); otherwise why not.
fn writable_by(path: &Path, may_write: fn(&Path) -> Result<(), Errno>) -> Result<(), String> {
    let target: PathBuf = crate::gateway::watch::resolve(path)
        .target
        .ok_or_else(|| format!("{} is a loop of symbolic links", path.display()))?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let check = |place: &Path, what: &str| match may_write(place) {
        Ok(()) => Ok(()),
        Err(Errno::EROFS) => Err(format!(
            "{what} {} is on a read-only file system",
            place.display()
        )),
        Err(Errno::EACCES | Errno::EPERM) => Err(format!(
            "the gateway's user (uid {}) may not write {what} {}",
            nix::unistd::geteuid(),
            place.display()
        )),
        Err(e) => Err(format!(
            "cannot tell whether {what} {} can be written: {e}",
            place.display()
        )),
    };
    check(&target, "the policy file")?;
    check(&dir, "the directory")
}

/// Answers `read_policy` with the file at `path`.
pub(crate) async fn read_reply(id: u64, path: PathBuf) -> Reply {
    let read = tokio::task::spawn_blocking(move || read(&path)).await;
    match flatten(read) {
        Ok(policy) => Reply {
            id,
            ok: true,
            policy: Some(policy),
            ..Reply::default()
        },
        Err(refusal) => refused(id, refusal),
    }
}

/// Answers `write_policy`: writes `text` over the file at `path`. `operator` names who asked,
/// for the gateway's log.
pub(crate) async fn write_reply(
    id: u64,
    path: PathBuf,
    text: String,
    base_hash: String,
    force: bool,
    operator: String,
) -> Reply {
    let shown = path.display().to_string();
    let written = tokio::task::spawn_blocking(move || write(&path, &text, &base_hash, force)).await;
    match flatten(written) {
        Ok(hash) => {
            tracing::info!(policy = %shown, %hash, %operator, force, "policy written by an operator");
            Reply {
                id,
                ok: true,
                ..Reply::default()
            }
        }
        Err(refusal) => {
            tracing::info!(
                policy = %shown, %operator, code = ?refusal.code,
                "an operator's policy write was refused"
            );
            refused(id, refusal)
        }
    }
}

/// A blocking job that panicked is a failure like any other.
fn flatten<T>(joined: Result<Result<T, Refusal>, tokio::task::JoinError>) -> Result<T, Refusal> {
    joined.unwrap_or_else(|e| {
        Err(Refusal::new(
            ReplyCode::Failed,
            format!("the gateway failed while handling the policy: {e}"),
        ))
    })
}

fn refused(id: u64, refusal: Refusal) -> Reply {
    Reply {
        id,
        ok: false,
        error: Some(refusal.error),
        code: Some(refusal.code),
        policy: refusal.policy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const V1: &str = "{\n  \"version\": \"1\",\n  \"default\": \"deny\",\n  \"tools\": { \"b\": {}, \"a\": {} }\n}\n";
    const V2: &str = "{\n  \"version\": \"1\",\n  \"default\": \"deny\",\n  \"tools\": { \"b\": {}, \"a\": { \"rate_limit\": { \"max\": 3, \"window\": \"minute\" } } }\n}\n";

    fn policy_in(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("policy.json");
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reading_gives_the_text_its_hash_and_whether_it_can_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = policy_in(dir.path(), V1);
        let read = read(&path).unwrap();
        assert_eq!(read.text, V1);
        assert_eq!(read.hash, hash_bytes(V1.as_bytes()));
        assert_eq!(
            read.hash,
            Policy::parse(V1, "p").unwrap().hash(),
            "the hash policy_applied reports"
        );
        assert!(read.writable);
        let missing = super::read(&dir.path().join("nope.json")).unwrap_err();
        assert_eq!(missing.code, ReplyCode::Failed);
        assert!(missing.error.contains("nope.json"), "{}", missing.error);
    }

    #[test]
    fn a_write_from_the_current_hash_replaces_the_text_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = policy_in(dir.path(), V1);
        let hash = write(&path, V2, &hash_bytes(V1.as_bytes()), false).unwrap();
        assert_eq!(hash, hash_bytes(V2.as_bytes()));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            V2,
            "byte for byte, key order kept"
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn an_invalid_text_is_refused_with_checks_diagnostics_and_the_file_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = policy_in(dir.path(), V1);
        let bad = V2.replace("\"minute\"", "\"minutes\"");
        let refusal = write(&path, &bad, &hash_bytes(V1.as_bytes()), true).unwrap_err();
        assert_eq!(refusal.code, ReplyCode::Invalid);
        let check = Policy::parse(&bad, &path.display().to_string()).unwrap_err();
        assert_eq!(
            refusal.error,
            check.0[0].to_string(),
            "the same lines as toolgate check"
        );
        assert!(
            refusal.error.contains("unknown window \"minutes\""),
            "{}",
            refusal.error
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), V1);
    }

    #[test]
    fn a_file_changed_since_the_base_is_a_conflict_carrying_the_current_text_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = policy_in(dir.path(), V1);
        let edited = V1.replace("\"deny\"", "\"allow\"");
        fs::write(&path, &edited).unwrap();
        let refusal = write(&path, V2, &hash_bytes(V1.as_bytes()), false).unwrap_err();
        assert_eq!(refusal.code, ReplyCode::Conflict);
        let current = refusal.policy.expect("the file as it is now");
        assert_eq!(current.text, edited);
        assert_eq!(current.hash, hash_bytes(edited.as_bytes()));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            edited,
            "not overwritten"
        );
        write(&path, V2, &hash_bytes(V1.as_bytes()), true).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), V2);
    }

    #[test]
    fn a_replica_finding_the_same_text_already_written_answers_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = policy_in(dir.path(), V1);
        let base = hash_bytes(V1.as_bytes());
        write(&path, V2, &base, false).unwrap();
        // The second replica, sharing the file, gets the same write from the same base.
        assert_eq!(
            write(&path, V2, &base, false),
            Ok(hash_bytes(V2.as_bytes()))
        );
    }

    #[test]
    fn a_place_the_gateway_cannot_write_is_read_only_with_the_reason_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = policy_in(dir.path(), V1);
        // What access(2) answers for a read-only mount (a ConfigMap), and for a directory
        // the gateway's user may not write (a test running as root cannot make either).
        fn read_only_mount(_: &Path) -> Result<(), Errno> {
            Err(Errno::EROFS)
        }
        fn directory_not_ours(place: &Path) -> Result<(), Errno> {
            if place.is_dir() {
                Err(Errno::EACCES)
            } else {
                Ok(())
            }
        }
        let base = hash_bytes(V1.as_bytes());
        let refusal = write_checked(&path, V2, &base, true, read_only_mount).unwrap_err();
        assert_eq!(refusal.code, ReplyCode::ReadOnly);
        assert!(
            refusal
                .error
                .starts_with("the policy is managed elsewhere: "),
            "{}",
            refusal.error
        );
        assert!(
            refusal.error.contains("read-only file system"),
            "{}",
            refusal.error
        );
        let refusal = write_checked(&path, V2, &base, false, directory_not_ours).unwrap_err();
        assert_eq!(refusal.code, ReplyCode::ReadOnly);
        assert!(
            refusal.error.contains("may not write the directory"),
            "{}",
            refusal.error
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), V1);
        assert!(writable_by(&path, read_only_mount).is_err());
        assert!(
            writable_by(&path, may_write).is_ok(),
            "a temporary directory of ours"
        );
    }
}
