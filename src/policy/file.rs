//! Writing a policy file in place, atomically: the one writer of `policy.json`, used by the
//! console for a local file and by a gateway answering a remote console's `write_policy`.
//!
//! The write must start from the file as it was read (its SHA-256 is compared first, so a
//! change made meanwhile in an editor or by another console is never overwritten silently,
//! unless forced); the new text goes to a temporary file in the same directory, is flushed
//! to disk, given the old file's permissions, renamed over the file, and the directory is
//! flushed too. A gateway watching the directory sees one complete new file. Through
//! symlinks the file they lead to is replaced, so links stay links.

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
