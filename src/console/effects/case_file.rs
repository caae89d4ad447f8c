//! Appending a case to the `--cases` file: the only console code that touches it.
//!
//! The file is read as a policy is (a regular file only, size-capped), the case is spliced
//! into its `cases` array by [`crate::policy::case_append`] (everything else stays byte for
//! byte), and the result replaces the file atomically through the policy file's writer
//! ([`super::policy_file::write_atomic`]: temporary file in the same directory, fsync,
//! rename, permissions kept, links followed), on the condition that the file is still what
//! was read. A file that is not a case file is refused, never overwritten; a missing file is
//! created.

use std::path::Path;

use serde_json::Value;

use super::policy_file::{WriteError, hash_bytes, write_atomic};
use crate::gateway::watch::read_watched_file;
use crate::policy::MAX_POLICY_BYTES;
use crate::policy::case_append::append_case;

/// Appends `case`, named `name`, to the case file at `path`; why not, for the status line.
pub(crate) fn append(path: &Path, name: &str, case: &Value) -> Result<(), String> {
    let shown = path.display().to_string();
    let existing = match read_watched_file(path, MAX_POLICY_BYTES) {
        Ok(Some(bytes)) => Some(bytes),
        Ok(None) => {
            return Err(format!(
                "{shown} is larger than {MAX_POLICY_BYTES} bytes; is it a case file?"
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    };
    let text = match &existing {
        Some(bytes) => Some(
            std::str::from_utf8(bytes)
                .map_err(|_| format!("{shown} is not UTF-8 text, so not a case file"))?,
        ),
        None => None,
    };
    let new = append_case(text, name, case).map_err(|e| format!("{shown}: {e}"))?;
    // Written only over the very text read (or, for a new file, whatever is there now).
    let (expected, force) = match &existing {
        Some(bytes) => (hash_bytes(bytes), false),
        None => (String::new(), true),
    };
    write_atomic(path, &new, &expected, force).map_err(|e| match e {
        WriteError::ChangedOnDisk { .. } => {
            format!("{shown} changed while the case was being added; press T again")
        }
        other => other.to_string(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_case_is_added_to_a_new_then_an_existing_file_and_a_policy_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cases.json");
        let case =
            |n: &str| json!({"name": n, "call": {"tool": "t"}, "expect": {"decision": "allow"}});
        append(&path, "one", &case("one")).unwrap();
        append(&path, "two", &case("two")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let file = crate::policy::cases::CaseFile::parse(&text, "cases.json").unwrap();
        assert_eq!(file.cases.len(), 2);
        let again = append(&path, "two", &case("two")).unwrap_err();
        assert!(again.contains("already has a case named"), "{again}");

        let policy = dir.path().join("policy.json");
        std::fs::write(&policy, "{\"default\": \"deny\"}").unwrap();
        let refused = append(&policy, "one", &case("one")).unwrap_err();
        assert!(refused.contains("not a case file"), "{refused}");
        assert_eq!(
            std::fs::read_to_string(&policy).unwrap(),
            "{\"default\": \"deny\"}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary file left"
        );
    }
}
