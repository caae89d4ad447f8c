//! Files of bearer-token credentials stored hashed: `serve`'s grants (agents) and the
//! operators file (people at a console). Both keep a name per credential and only the
//! SHA-256 of its token, are written atomically with mode 0600, and authenticate a presented
//! token by comparing it with every stored hash in constant time.
//!
//! The two kinds never mix: they live in different files read by different listeners, and
//! their tokens say what they are (`tg_` for grants, `tgop_` for operators), so a token
//! pasted in the wrong place is refused and recognisable.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Longest credential name.
pub(crate) const MAX_NAME: usize = 64;

/// A stored credential: whatever it carries, it has its token's hash.
pub(crate) trait Hashed {
    /// Hex SHA-256 of the token.
    fn sha256(&self) -> &str;
}

/// Whether `name` can name a credential: short, and safe in logs, events and file names.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `hex` is a stored hash as written: 64 lowercase hex digits.
pub(crate) fn valid_sha256(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A new random token: `prefix` and 256 random bits in hex.
pub(crate) fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The hex SHA-256 of a token, as stored.
pub(crate) fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The credential a bearer token belongs to. Every stored hash is compared, in constant
/// time, so timing says nothing about which names exist or how close a guess was.
pub(crate) fn authenticate<'a, E: Hashed>(
    entries: &'a BTreeMap<String, E>,
    token: &str,
) -> Option<(&'a str, &'a E)> {
    let presented = Sha256::digest(token.as_bytes());
    let mut found = None;
    for (name, entry) in entries {
        let Ok(stored) = hex::decode(entry.sha256()) else {
            continue;
        };
        if same_secret(&stored, &presented) {
            found = Some((name.as_str(), entry));
        }
    }
    found
}

/// Whether two secrets are equal, in a time that depends on their length only (which is
/// not secret: every token of a kind has the same), never on where they first differ. It
/// compares eight bytes at a time and passes the running difference through
/// `black_box` at each step, so the compiler cannot end the loop at the first difference.
/// Every comparison of a presented secret in the project goes through it (a byte-by-byte
/// `ct_eq`, used before, cost about eight times as much, on every request of a `serve`
/// connection).
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut a_words = a.chunks_exact(8);
    let mut b_words = b.chunks_exact(8);
    let mut diff = 0u64;
    for (x, y) in (&mut a_words).zip(&mut b_words) {
        let x = u64::from_ne_bytes(x.try_into().unwrap_or_default());
        let y = u64::from_ne_bytes(y.try_into().unwrap_or_default());
        diff = std::hint::black_box(diff | (x ^ y));
    }
    for (x, y) in a_words.remainder().iter().zip(b_words.remainder()) {
        diff = std::hint::black_box(diff | u64::from(x ^ y));
    }
    diff == 0
}

/// Writes `value` as pretty JSON to `path` atomically (temp file in the same directory,
/// fsync, rename), mode 0600. A symlink at `path` (a dotfiles repository) stays: the file it
/// leads to is the one replaced.
pub(crate) fn save_private_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let target = match is_link {
        false => path.to_owned(),
        true => crate::gateway::watch::resolve(path)
            .target
            .ok_or_else(|| std::io::Error::from(nix::errno::Errno::ELOOP))?,
    };
    let path = target.as_path();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    text.push('\n');
    let tmp = dir.join(format!(
        ".{}.{:08x}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "credentials".into()),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_are_the_same_only_when_every_byte_is() {
        let token = new_token_for_test();
        let copy = token.clone();
        assert!(same_secret(token.as_bytes(), copy.as_bytes()));
        assert!(same_secret(b"", b""));
        // A difference anywhere is seen: in the whole words and in the tail alike.
        for at in 0..token.len() {
            let mut other = token.clone().into_bytes();
            other[at] ^= 0x01;
            assert!(!same_secret(token.as_bytes(), &other), "byte {at}");
            other[at] ^= 0x81;
            assert!(
                !same_secret(token.as_bytes(), &other),
                "byte {at}, high bit"
            );
        }
        // A prefix, or the token with more after it, is another secret.
        assert!(!same_secret(
            token.as_bytes(),
            &token.as_bytes()[..token.len() - 1]
        ));
        assert!(!same_secret(
            token.as_bytes(),
            format!("{token}0").as_bytes()
        ));
        assert!(!same_secret(b"", token.as_bytes()));
    }

    fn new_token_for_test() -> String {
        let token = super::new_token("tg_");
        // 3 + 64 bytes: eight whole words and a tail of three.
        assert_eq!(token.len() % 8, 3);
        token
    }
}
