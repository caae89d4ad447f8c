//! Reading and hot-writing `policy.json`: the only console code that touches the file. The
//! writer itself is `policy::file` (a gateway answering a remote console's `write_policy`
//! uses the same one).
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

use std::path::Path;

pub(crate) use crate::policy::file::WriteError;
pub use crate::policy::file::{hash_bytes, write_atomic};

/// Reads the policy file as text, as the gateways read it (a regular file only, never
/// blocking, size-capped): a FIFO given as `--policy` cannot freeze the console.
pub(crate) fn read(path: &Path) -> std::io::Result<String> {
    crate::policy::read_source(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
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
