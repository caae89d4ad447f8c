//! Reading and hot-writing `policy.json`: the only console code that touches the file.
//!
//! A write is atomic and careful: the file must still be the one the draft was made from
//! (its SHA-256 is compared first, so a change made meanwhile in an editor is never
//! overwritten silently); the new text goes to a temporary file in the same directory, is
//! flushed to disk, given the old file's permissions, renamed over the file, and the
//! directory is flushed too. A gateway watching the directory sees one complete new file.

use std::fs;
use std::io::Write;
use std::path::Path;

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
pub fn read(path: &Path) -> std::io::Result<String> {
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
    let current = match fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let current_hash = current.as_deref().map(hash_bytes);
    if !force && current_hash.as_deref() != Some(expected_hash) {
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
    use std::os::unix::fs::PermissionsExt;

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
}
