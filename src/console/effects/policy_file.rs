//! Reading and hot-writing `policy.json`: the only console code that touches the file.
//!
//! A write is atomic and careful: the file must still be the one the draft was made from
//! (its SHA-256 is compared first, so a change made meanwhile in an editor is never
//! overwritten silently); the new text goes to a temporary file in the same directory, is
//! flushed to disk, given the old file's permissions, renamed over the file, and the
//! directory is flushed too. A gateway watching the directory sees one complete new file.
//!
//! A policy path may be a symlink (into a dotfiles repository, say), possibly through more
//! links. The write goes through them to the file they lead to, resolved as the gateways
//! resolve it (`gateway::watch::resolve`): the temporary file is made in that file's
//! directory and renamed over it, so every link stays a link and the gateways, which follow
//! the links, apply the new version. Renaming over the link itself would replace it with a
//! plain file and leave the repository's copy behind.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::gateway::watch::read_watched_file;
use crate::policy::MAX_POLICY_BYTES;

/// Why the policy file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The file is no longer what the draft was made from.
    #[error("{path} changed on disk since it was loaded")]
    ChangedOnDisk { path: String, text: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// SHA-256 (hex) of `bytes`, as the gateways report a policy's hash.
pub fn hash_bytes(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Reads the policy file as text, as the gateways read it (a regular file only, never
/// blocking, size-capped): a FIFO given as `--policy` cannot freeze the console.
pub(crate) fn read(path: &Path) -> std::io::Result<String> {
    crate::policy::read_source(path)
}

/// Writes `text` to `path` atomically, if the file's hash is still `expected_hash` (or
/// `force`). Returns the new text's hash.
pub fn write_atomic(
    path: &Path,
    text: &str,
    expected_hash: &str,
    force: bool,
) -> Result<String, WriteError> {
    let shown = path.display().to_string();
    let io = |source| WriteError::Io {
        path: shown.clone(),
        source,
    };
    let Some(target) = crate::gateway::watch::resolve(path).target else {
        return Err(io(std::io::Error::other(
            "too many levels of symbolic links (a loop?); fix the links, then write again",
        )));
    };
    let path = target.as_path();
    // Read as every policy is read: a FIFO or a device in the file's place is an error here,
    // never a stall, and is never renamed over.
    let current = match read_watched_file(path, MAX_POLICY_BYTES) {
        Ok(Some(bytes)) => Some(bytes),
        Ok(None) => {
            return Err(io(std::io::Error::other(format!(
                "the file there is larger than {MAX_POLICY_BYTES} bytes; is it the policy?"
            ))));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    // A missing file is the empty text: a draft made for a file that does not exist yet
    // (`--review-learned` writing a new policy) creates it, and only that draft does.
    let current_hash = current
        .as_deref()
        .map_or_else(|| hash_bytes(b""), hash_bytes);
    if !force && current_hash != expected_hash {
        return Err(WriteError::ChangedOnDisk {
            path: shown.clone(),
            text: current
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let permissions = fs::metadata(path).ok().map(|m| m.permissions());
    let mut tmp = tempfile::Builder::new()
        .prefix(".policy-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(text.as_bytes()).map_err(io)?;
    if let Some(p) = permissions {
        fs::set_permissions(tmp.path(), p).map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    // The rename is durable only once the directory is on disk too.
    if let Ok(d) = fs::File::open(dir)
        && let Err(e) = d.sync_all()
    {
        tracing::warn!("cannot flush the directory of {shown}: {e}");
    }
    Ok(hash_bytes(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    #[test]
    fn a_write_keeps_the_permissions_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let hash = write_atomic(&path, "new", &hash_bytes(b"old"), false).unwrap();
        assert_eq!(hash, hash_bytes(b"new"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_write_through_a_chain_of_links_replaces_the_file_they_lead_to_and_keeps_the_links() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["config", "dotfiles", "store"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        // config/policy.json -> ../dotfiles/policy.json -> <abs>/store/policy.json
        let file = root.join("store/policy.json");
        fs::write(&file, "old").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        let link = root.join("config/policy.json");
        symlink("../dotfiles/policy.json", &link).unwrap();
        symlink(&file, root.join("dotfiles/policy.json")).unwrap();

        write_atomic(&link, "new", &hash_bytes(b"old"), false).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "new");
        assert_eq!(fs::read_to_string(&link).unwrap(), "new");
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("../dotfiles/policy.json"),
            "the link is still the same link"
        );
        assert_eq!(
            fs::read_link(root.join("dotfiles/policy.json")).unwrap(),
            file
        );
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "the target's permissions are kept");
        for d in ["config", "dotfiles", "store"] {
            assert_eq!(
                fs::read_dir(root.join(d)).unwrap().count(),
                1,
                "no temporary file left in {d}"
            );
        }
        // The hash checked is the target's: a change there since loading is seen.
        fs::write(&file, "edited in the repository").unwrap();
        let err = write_atomic(&link, "mine", &hash_bytes(b"new"), false).unwrap_err();
        assert!(matches!(err, WriteError::ChangedOnDisk { .. }), "{err}");
    }

    #[test]
    fn a_fifo_or_a_loop_of_links_in_the_policys_place_is_an_error_not_a_stall_a_read_or_a_rename() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("policy.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read(&fifo).unwrap_err();
        assert!(
            err.to_string().contains("not a regular file (a FIFO)"),
            "{err}"
        );
        let err = write_atomic(&fifo, "new", "", true).unwrap_err();
        assert!(
            err.to_string().contains("not a regular file (a FIFO)"),
            "{err}"
        );
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        symlink(dir.path().join("b"), dir.path().join("a")).unwrap();
        symlink(dir.path().join("a"), dir.path().join("b")).unwrap();
        let err = write_atomic(&dir.path().join("a"), "new", "", true).unwrap_err();
        assert!(
            err.to_string()
                .contains("too many levels of symbolic links"),
            "{err}"
        );
        assert!(
            fs::symlink_metadata(dir.path().join("a"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn a_file_changed_since_loading_is_not_overwritten_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        fs::write(&path, "edited elsewhere").unwrap();
        let err = write_atomic(&path, "mine", &hash_bytes(b"as loaded"), false).unwrap_err();
        assert!(
            matches!(&err, WriteError::ChangedOnDisk { text, .. } if text == "edited elsewhere")
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "edited elsewhere");
        write_atomic(&path, "mine", &hash_bytes(b"as loaded"), true).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "mine");
    }

    #[test]
    fn a_missing_file_is_created_only_by_a_draft_of_the_empty_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.json");
        let refused = write_atomic(&path, "new", &hash_bytes(b"as loaded"), false);
        assert!(matches!(refused, Err(WriteError::ChangedOnDisk { .. })));
        assert!(!path.exists());
        write_atomic(&path, "new", &hash_bytes(b""), false).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        // Once it exists, the empty text's draft is out of date.
        let again = write_atomic(&path, "other", &hash_bytes(b""), false);
        assert!(matches!(again, Err(WriteError::ChangedOnDisk { .. })));
    }
}
