//! The audit log's key: what makes `args_hmac` impossible to reverse by guessing.
//!
//! A plain hash of the arguments can be reversed for small argument spaces (a 4-digit PIN
//! falls to 10,000 guesses in milliseconds), so records carry an HMAC-SHA-256 under a secret
//! key instead. Each installation has its own key, made on first use in the state directory
//! (`~/.local/state/toolgate/audit.key`, 32 random bytes, mode 0600). Gateways whose records
//! must compare (replicas behind a load balancer, several machines) share one key file with
//! `--audit-key FILE`.
//!
//! A key file is refused, never "fixed", when it is readable by group or others, is not a
//! regular file, or does not hold exactly [`KEY_LEN`] bytes: a key that others could read, or
//! a truncated one, would silently make every record's hash worthless or incomparable.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

/// The length of a key file, in bytes.
pub(crate) const KEY_LEN: usize = 32;

/// Why a key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "cannot read the audit key {path}: {source}; give an existing key file with \
         --audit-key, or make one with `head -c 32 /dev/urandom > {path} && chmod 600 {path}`"
    )]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the audit key {path}: {source}; pass --audit-key FILE")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the audit key {path} is readable by group or others (mode {mode:04o}); anyone who \
         can read it can reverse the arguments' hashes: run `chmod 600 {path}`, and make a \
         new key if others may have copied it"
    )]
    Exposed { path: String, mode: u32 },
    #[error(
        "the audit key {path} holds {len} bytes, not {KEY_LEN}; make one with \
         `head -c 32 /dev/urandom > {path}`"
    )]
    WrongSize { path: String, len: u64 },
    #[error("the audit key {path} is not a regular file")]
    NotAFile { path: String },
    #[error("no state directory for the default audit key ({0}); pass --audit-key FILE")]
    NoStateDir(String),
}

/// A loaded key, ready to hash arguments.
#[derive(Clone)]
pub struct AuditKey {
    /// The HMAC with the key already absorbed; cloned per call, so the key's padding blocks
    /// are hashed once per gateway, not once per call.
    mac: Hmac<Sha256>,
    path: PathBuf,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AuditKey {
    /// `$XDG_STATE_HOME/toolgate/audit.key` (usually `~/.local/state/toolgate/audit.key`).
    pub fn default_path() -> Result<PathBuf, KeyError> {
        use etcetera::BaseStrategy;
        let base =
            etcetera::choose_base_strategy().map_err(|e| KeyError::NoStateDir(e.to_string()))?;
        let dir = base
            .state_dir()
            .unwrap_or_else(|| base.data_dir())
            .join("toolgate");
        Ok(dir.join("audit.key"))
    }

    /// The key at `path`, which must exist (`--audit-key`).
    pub fn load(path: &Path) -> Result<AuditKey, KeyError> {
        let shown = path.display().to_string();
        let mut file = std::fs::File::open(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        let meta = file.metadata().map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile { path: shown });
        }
        if meta.mode() & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: shown,
                mode: meta.mode() & 0o7777,
            });
        }
        // Read one byte more than a key, so a longer file is noticed without trusting `len`.
        let mut bytes = Vec::with_capacity(KEY_LEN + 1);
        (&mut file)
            .take(KEY_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| KeyError::Read {
                path: shown.clone(),
                source,
            })?;
        if bytes.len() != KEY_LEN {
            return Err(KeyError::WrongSize {
                path: shown,
                len: meta.len().max(bytes.len() as u64),
            });
        }
        Ok(AuditKey::from_bytes(&bytes, path))
    }

    /// The key at `path`, made first if there is none (the per-installation default).
    ///
    /// Made atomically: the key is written to a private temporary file beside `path` and
    /// linked into place only if nothing is there yet, so two gateways starting at once end
    /// up with the same key, and no one ever reads half a key.
    pub fn load_or_create(path: &Path) -> Result<AuditKey, KeyError> {
        match AuditKey::load(path) {
            Err(KeyError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            }
            other => return other,
        }
        let create_err = |source| KeyError::Create {
            path: path.display().to_string(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(create_err)?;
        let mut bytes = [0u8; KEY_LEN];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
        // tempfile creates its files with mode 0600.
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(create_err)?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(create_err)?;
        match tmp.persist_noclobber(path) {
            Ok(_) => {
                // The new name survives a crash only once the directory is on disk too.
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                tracing::info!("made a new audit key {}", path.display());
                Ok(AuditKey::from_bytes(&bytes, path))
            }
            // Another gateway made it first: use theirs.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => AuditKey::load(path),
            Err(e) => Err(create_err(e.error)),
        }
    }

    fn from_bytes(bytes: &[u8], path: &Path) -> AuditKey {
        AuditKey {
            // HMAC takes keys of any length, so this cannot fail.
            mac: <Hmac<Sha256> as KeyInit>::new_from_slice(bytes)
                .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length")),
            path: path.to_owned(),
        }
    }

    /// A key for tests and benches, from fixed bytes.
    pub fn fixed(bytes: [u8; KEY_LEN]) -> AuditKey {
        AuditKey::from_bytes(&bytes, Path::new("(fixed)"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// HMAC-SHA-256 (hex) of the canonical JSON of `args` (see [`super::canonical`]).
    pub fn args_hmac(&self, args: &Value) -> String {
        self.args_hmac_hex(args).as_str().to_owned()
    }

    /// [`AuditKey::args_hmac`] on the stack, for the call's path.
    pub(crate) fn args_hmac_hex(&self, args: &Value) -> super::Hex64 {
        let mut mac = self.mac.clone();
        super::canonical(args, &mut mac);
        super::Hex64::of(&mac.finalize().into_bytes())
    }

    /// [`AuditKey::args_hmac_hex`] from the arguments' text, without their tree: the same
    /// bytes are hashed (`tests::the_hmac_of_the_text_is_the_hmac_of_the_tree`).
    pub(crate) fn raw_args_hmac_hex(&self, args: &super::super::args::RawArgs) -> super::Hex64 {
        let mac = super::raw_canonical_hash(&self.mac, args);
        super::Hex64::of(&mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_key_is_made_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/toolgate/audit.key");
        let first = AuditKey::load_or_create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let again = AuditKey::load_or_create(&path).unwrap();
        let args = json!({"pin": "4821"});
        assert_eq!(first.args_hmac(&args), again.args_hmac(&args));
    }

    #[test]
    fn the_hmac_is_keyed_and_ignores_key_order() {
        let a = AuditKey::fixed([1; KEY_LEN]);
        let b = AuditKey::fixed([2; KEY_LEN]);
        let args = json!({"pin": "4821", "user": "ada"});
        let reordered = json!({"user": "ada", "pin": "4821"});
        assert_eq!(a.args_hmac(&args), a.args_hmac(&reordered));
        assert_ne!(a.args_hmac(&args), b.args_hmac(&args));
        assert_ne!(
            a.args_hmac(&args),
            a.args_hmac(&json!({"pin": "4822", "user": "ada"}))
        );
        // Not the unkeyed hash a guesser could recompute.
        assert_ne!(a.args_hmac(&args), super::super::args_sha256(&args));
        assert_eq!(a.args_hmac(&args).len(), 64);
    }

    #[test]
    fn the_hmac_is_standard_hmac_sha256_of_the_canonical_text() {
        // Plain HMAC-SHA-256 of the canonical text: anyone holding the key can check a record
        // with any HMAC tool.
        let key = [7u8; KEY_LEN];
        let args = json!({"b": [1, "x"], "a": null});
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        mac.update(br#"{"a":null,"b":[1,"x"]}"#);
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(AuditKey::fixed(key).args_hmac(&args), expected);
    }

    #[test]
    fn a_key_others_can_read_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        std::fs::write(&path, [3u8; KEY_LEN]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = AuditKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("readable by group or others"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
        // The default path refuses it too, rather than making a new one over it.
        assert!(AuditKey::load_or_create(&path).is_err());
    }

    #[test]
    fn a_key_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 31, 33, 64] {
            let path = dir.path().join(format!("k{len}"));
            std::fs::write(&path, vec![5u8; len]).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = AuditKey::load(&path).unwrap_err().to_string();
            assert!(err.contains(&format!("holds {len} bytes, not 32")), "{err}");
        }
    }

    #[test]
    fn a_missing_shared_key_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.key");
        let err = AuditKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("cannot read the audit key"), "{err}");
        assert!(!path.exists());
    }
}
