//! What looks secret in tool-call arguments, and redaction of it.
//!
//! Used wherever arguments leave the gateway's memory: the audit log, the event stream (and so
//! the console and `toolgate tail`). Two things look secret:
//!
//! - a **key** that, with case, `_` and `-` ignored, contains one of a fixed list of words
//!   (`apikey`, `token`, `secret`, `password`, ...), or has `auth` or `pwd` as a whole word
//!   (`basicAuth`, `db_pwd`; not `author`): its whole value is replaced;
//! - a **string value** holding a well-known credential shape, whatever its key: a URL with a
//!   password (`postgres://me:pw@db`), a bearer token, provider key formats (`sk-…`, `ghp_…`,
//!   `github_pat_…`, `AKIA…`, `xox…`, ...), a JWT, a PEM block. Only the secret part of the
//!   text is replaced, so `connect to postgres://[redacted]@db/app` still says where.
//!
//! This runs for every call, so the patterns are compiled once, and a string is only searched
//! after a cheap test for the literal text every pattern starts with (most argument strings
//! are short words, paths and numbers that hold none).

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use serde_json::Value;

/// What a redacted value is replaced with.
pub(crate) const REDACTED: &str = "[redacted]";

/// Fragments that mark a key as secret, compared against the key lowercased with `_`/`-`
/// removed.
const SECRET_FRAGMENTS: &[&str] = &[
    "apikey",
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "authorization",
    "credential",
    "privatekey",
    "cookie",
    "sessionkey",
    "signature",
    "clientsecret",
    "accesskey",
];

/// Words that mark a key as secret only when they are a whole word of it (`auth` is in
/// `author`, `pwd` in nothing common, but both are short enough to appear by chance).
const SECRET_WORDS: &[&str] = &["auth", "pwd"];

/// Credential shapes with a recognisable literal start. Each alternative's secret part is the
/// whole match, except where a `keep…` group names text to leave in place.
static SECRET_TEXT: LazyLock<Regex> = LazyLock::new(|| {
    let patterns = [
        // A bearer token in a header value or a command line.
        r"(?P<keep_bearer>\b(?:[Bb]earer|BEARER)\s+)[A-Za-z0-9._~+/-]{16,}=*",
        // OpenAI, Anthropic (`sk-ant-`) and similar `sk-` keys.
        r"\bsk-[A-Za-z0-9_-]{20,}",
        // Stripe secret and restricted keys.
        r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
        // GitHub tokens: classic personal, OAuth, user-to-server, server-to-server, refresh;
        // and fine-grained personal tokens.
        r"\bgh[pousr]_[A-Za-z0-9]{30,}",
        r"\bgithub_pat_[A-Za-z0-9_]{22,}",
        // GitLab personal tokens.
        r"\bglpat-[A-Za-z0-9_-]{20,}",
        // AWS access key ids (long-lived and temporary).
        r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
        // Google API keys.
        r"\bAIza[A-Za-z0-9_-]{35}",
        // Slack tokens (bot, user, app-level, refresh, ...).
        r"\bxox[abeoprs]-[A-Za-z0-9-]{10,}",
        r"\bxapp-[A-Za-z0-9-]{10,}",
        // npm tokens.
        r"\bnpm_[A-Za-z0-9]{36}",
        // A JWT: a JSON header and payload (both start `{"`, `eyJ` in base64url), signature.
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
        // A PEM block, to its end or to the end of the text (a block cut short is still a key).
        r"(?s)-----BEGIN [A-Z0-9 ]{1,40}-----.*?(?:-----END [A-Z0-9 ]{1,40}-----|\z)",
    ];
    Regex::new(&patterns.join("|")).unwrap_or_else(|e| unreachable_pattern(&e))
});

/// `scheme://user:password@` in a URL; the scheme stays, and the `@` is put back.
static URL_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?P<keep_scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@:]*:[^\s/?#@]+@")
        .unwrap_or_else(|e| unreachable_pattern(&e))
});

/// The patterns above are constants checked by the tests; a failure to compile them is a
/// bug in this file, not a condition of the input.
#[cold]
fn unreachable_pattern(e: &regex::Error) -> Regex {
    panic!("a redaction pattern does not compile: {e}")
}

/// The literal text each [`SECRET_TEXT`] alternative starts with (or contains, for bearer
/// tokens), and `://` for [`URL_PASSWORD`]: a string holding none of these cannot match, and
/// most argument strings hold none.
const TRIGGERS: &[&str] = &[
    "://",
    "earer",
    "EARER",
    "sk-",
    "k_live_",
    "k_test_",
    "gh",
    "github_pat_",
    "glpat-",
    "AKIA",
    "ASIA",
    "AIza",
    "xox",
    "xapp-",
    "npm_",
    "eyJ",
    "-----BEGIN ",
];

/// [`TRIGGERS`] as one search: literals only, so the regex crate scans for all of them at
/// once (a multi-literal searcher), one pass over the text.
static TRIGGER: LazyLock<Regex> = LazyLock::new(|| {
    let literals: Vec<String> = TRIGGERS.iter().map(|t| regex::escape(t)).collect();
    Regex::new(&literals.join("|")).unwrap_or_else(|e| unreachable_pattern(&e))
});

/// Strings up to this many bytes are searched for [`TRIGGERS`] by [`holds_trigger`]'s own
/// walk: a search of the regex crate costs a few hundred instructions before it reads a
/// byte, more than that walk of a whole short string, and most argument strings are short.
const SHORT_TEXT: usize = 64;

/// `FIRST_BYTE[b]`: some [`TRIGGERS`] literal starts with the byte `b`.
static FIRST_BYTE: [bool; 256] = {
    let mut first = [false; 256];
    let mut i = 0;
    while i < TRIGGERS.len() {
        first[TRIGGERS[i].as_bytes()[0] as usize] = true;
        i += 1;
    }
    first
};

/// Whether `text` holds one of [`TRIGGERS`]: what `TRIGGER.is_match` says, without the
/// regex search's set-up for short strings.
fn holds_trigger(text: &str) -> bool {
    if text.len() > SHORT_TEXT {
        return TRIGGER.is_match(text);
    }
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        FIRST_BYTE[usize::from(b)]
            && TRIGGERS
                .iter()
                .any(|t| bytes[i..].starts_with(t.as_bytes()))
    })
}

/// Whether an argument key names a secret.
pub(crate) fn is_secret_key(key: &str) -> bool {
    // This runs for every key of every call, and nearly every key is short ASCII: folded on
    // the stack then, without allocating (for ASCII, `to_ascii_lowercase` is `to_lowercase`).
    const SHORT: usize = 64;
    if key.len() <= SHORT && key.is_ascii() {
        let mut buf = [0u8; SHORT];
        let mut len = 0;
        for (slot, b) in buf
            .iter_mut()
            .zip(key.bytes().filter(|b| *b != b'_' && *b != b'-'))
        {
            *slot = b.to_ascii_lowercase();
            len += 1;
        }
        return folded_names_secret(buf.get(..len).unwrap_or_default(), key);
    }
    let folded: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    folded_names_secret(folded.as_bytes(), key)
}

/// [`is_secret_key`] once `key` is folded (lowercase, without `_` and `-`).
fn folded_names_secret(folded: &[u8], key: &str) -> bool {
    // Every key of every call comes here, and almost none names a secret: a needle is
    // searched for only when every byte it has is among the key's (by `byte_set`), which
    // rules out nearly every needle for an ordinary key in a few instructions each.
    let present = byte_set(folded);
    let holds = |(needle, bytes): (&&str, &u32)| {
        let needle = needle.as_bytes();
        bytes & !present == 0
            && folded.len() >= needle.len()
            && folded.windows(needle.len()).any(|w| w == needle)
    };
    SECRET_FRAGMENTS.iter().zip(&FRAGMENT_BYTES).any(holds)
        || (SECRET_WORDS.iter().zip(&WORD_BYTES).any(holds)
            && words(key).any(|w| SECRET_WORDS.iter().any(|s| w.eq_ignore_ascii_case(s))))
}

/// The bytes of `text` as a set of 32 (bit `b % 32` for each byte `b`). Lowercase letters
/// have a bit each; other bytes share bits with them, which can only make a needle look
/// possible, never rule out one that is there.
const fn byte_set(text: &[u8]) -> u32 {
    let mut set = 0u32;
    let mut i = 0;
    while i < text.len() {
        set |= 1 << (text[i] % 32);
        i += 1;
    }
    set
}

/// [`byte_set`] of each of `needles`.
const fn byte_sets<const N: usize>(needles: &[&str]) -> [u32; N] {
    assert!(needles.len() == N, "one set a needle");
    let mut sets = [0u32; N];
    let mut i = 0;
    while i < N {
        sets[i] = byte_set(needles[i].as_bytes());
        i += 1;
    }
    sets
}

/// [`byte_set`] of each of [`SECRET_FRAGMENTS`].
static FRAGMENT_BYTES: [u32; SECRET_FRAGMENTS.len()] = byte_sets(SECRET_FRAGMENTS);

/// [`byte_set`] of each of [`SECRET_WORDS`].
static WORD_BYTES: [u32; SECRET_WORDS.len()] = byte_sets(SECRET_WORDS);

/// The words of an identifier: split at anything not a letter or digit and at case changes
/// (`basicAuth` → `basic`, `Auth`; `HTTPAuth` → `HTTP`, `Auth`; `db_pwd` → `db`, `pwd`).
fn words(key: &str) -> impl Iterator<Item = &str> {
    let chars: Vec<(usize, char)> = key.char_indices().collect();
    let mut cuts = vec![0];
    for i in 1..chars.len() {
        let (at, c) = chars[i];
        let prev = chars[i - 1].1;
        let next_lower = chars.get(i + 1).is_some_and(|(_, n)| n.is_lowercase());
        let boundary = !c.is_alphanumeric()
            || !prev.is_alphanumeric()
            || (c.is_uppercase() && (prev.is_lowercase() || prev.is_numeric()))
            || (c.is_uppercase() && prev.is_uppercase() && next_lower);
        if boundary {
            cuts.push(at);
        }
    }
    cuts.push(key.len());
    cuts.windows(2)
        .map(move |w| key[w[0]..w[1]].trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .into_iter()
}

/// `text` with every credential-shaped part replaced by [`REDACTED`]; borrowed when there is
/// none.
pub(crate) fn redact_text(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    if !holds_trigger(text) {
        return out;
    }
    if text.contains("://") && URL_PASSWORD.is_match(text) {
        out = Cow::Owned(
            URL_PASSWORD
                .replace_all(text, |c: &Captures<'_>| {
                    keep_then_redact(c, "keep_scheme", "@")
                })
                .into_owned(),
        );
    }
    if SECRET_TEXT.is_match(&out) {
        let replaced = SECRET_TEXT
            .replace_all(&out, |c: &Captures<'_>| {
                keep_then_redact(c, "keep_bearer", "")
            })
            .into_owned();
        out = Cow::Owned(replaced);
    }
    out
}

/// The match's `keep` group (if any), [`REDACTED`], then `after`.
fn keep_then_redact(captures: &Captures<'_>, keep: &str, after: &str) -> String {
    let kept = captures.name(keep).map_or("", |m| m.as_str());
    format!("{kept}{REDACTED}{after}")
}

/// Whether [`redact`] would change `value`: a secret-looking key whose value is not already
/// [`REDACTED`], or a string holding a credential, at any depth. Lets readers of already
/// redacted arguments (the console) skip the copy.
pub(crate) fn needs_redaction(value: &Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| (is_secret_key(k) && v.as_str() != Some(REDACTED)) || needs_redaction(v)),
        Value::Array(items) => items.iter().any(needs_redaction),
        Value::String(text) => matches!(redact_text(text), Cow::Owned(_)),
        _ => false,
    }
}

/// A copy of `value` in which every object member with a secret-looking key, at any depth,
/// has its value replaced by [`REDACTED`], and every credential in a string is replaced by it.
pub(crate) fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) {
                        Value::String(REDACTED.to_owned())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        Value::String(text) => Value::String(redact_text(text).into_owned()),
        other => other.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Keys made of pieces of the fragments and words (cut short too) and bytes around
        /// them, some of which share a `byte_set` bit with a letter: the check with the
        /// byte sets says what a search for every needle at every place says.
        #[test]
        fn a_key_names_a_secret_exactly_when_a_plain_search_says_so(
            pieces in prop::collection::vec(
                prop_oneof![
                    prop::sample::select(SECRET_FRAGMENTS).prop_map(str::to_owned),
                    prop::sample::select(SECRET_WORDS).prop_map(str::to_owned),
                    prop::sample::select(SECRET_FRAGMENTS).prop_flat_map(|f| {
                        (1..f.len()).prop_map(move |n| f[..n].to_owned())
                    }),
                    "[a-zA-Z0-9_!\"#é-]{0,3}",
                ],
                0..6,
            )
        ) {
            let key = pieces.concat();
            let folded = key.as_bytes();
            let holds = |n: &&str| folded.windows(n.len()).any(|w| w == n.as_bytes());
            let plain = SECRET_FRAGMENTS.iter().any(holds)
                || (SECRET_WORDS.iter().any(holds)
                    && words(&key).any(|w| SECRET_WORDS.iter().any(|s| w.eq_ignore_ascii_case(s))));
            prop_assert_eq!(folded_names_secret(folded, &key), plain, "{:?}", key);
        }

        /// Strings made of pieces of the literals (and bytes around them), short and long:
        /// the walk for short strings finds exactly what the regex search finds.
        #[test]
        fn short_strings_hold_a_trigger_exactly_when_the_regex_search_says_so(
            pieces in prop::collection::vec(
                prop_oneof![
                    prop::sample::select(TRIGGERS).prop_map(str::to_owned),
                    prop::sample::select(TRIGGERS).prop_flat_map(|t| {
                        (0..t.len()).prop_map(move |cut| t[..cut].to_owned())
                    }),
                    prop::sample::select(TRIGGERS).prop_flat_map(|t| {
                        (1..=t.len()).prop_map(move |cut| t[cut..].to_owned())
                    }),
                    "[a-zA-Z:/_ é-]{0,6}",
                ],
                0..12,
            ),
        ) {
            let text: String = pieces.concat();
            prop_assert_eq!(holds_trigger(&text), TRIGGER.is_match(&text), "{:?}", text);
        }
    }

    #[test]
    fn every_trigger_is_found_at_the_start_middle_and_end_of_a_short_string() {
        for t in TRIGGERS {
            for text in [t.to_string(), format!("ab{t}cd"), format!("xy{t}")] {
                assert!(text.len() <= SHORT_TEXT);
                assert!(holds_trigger(&text), "{text}");
            }
            // One byte short of the literal, it is found only where the regex finds it too.
            let short = &t[..t.len() - 1];
            assert_eq!(holds_trigger(short), TRIGGER.is_match(short), "{short}");
        }
        assert!(!holds_trigger("hello"));
        assert!(!holds_trigger(""));
    }

    #[test]
    fn secret_keys_are_recognised_in_any_spelling() {
        for key in [
            "apiKey",
            "api_key",
            "API-KEY",
            "access_token",
            "Authorization",
            "password",
            "pwd",
            "DB_PWD",
            "auth",
            "basicAuth",
            "HTTPAuth",
            "x-auth",
            "auth_header",
            "proxy.auth",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn keys_that_only_contain_auth_or_pwd_inside_a_word_are_not_secret() {
        for key in [
            "keyName",
            "amount",
            "owner",
            "name",
            "author",
            "authors",
            "Author",
            "authorName",
            "co_author",
            "authority",
            "oauthority",
            "cwd",
            "pwdx",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn long_and_non_ascii_keys_are_judged_like_short_ascii_ones() {
        let long = format!("{}_Api-Key", "x".repeat(80));
        assert!(is_secret_key(&long));
        assert!(!is_secret_key(&"author".repeat(20)));
        // U+212A KELVIN SIGN lowercases to an ASCII `k`.
        assert!(is_secret_key("API\u{212A}EY"));
        assert!(is_secret_key("clé_api_token"));
        assert!(!is_secret_key("clé_publique"));
        assert!(is_secret_key("x_auth_é"));
    }

    #[test]
    fn redaction_reaches_nested_objects_and_arrays() {
        let v = json!({"keyName": "staging", "apiKey": "sk-1", "nested": [{"token": "t", "x": 1}]});
        assert_eq!(
            redact(&v),
            json!({"keyName": "staging", "apiKey": "[redacted]", "nested": [{"token": "[redacted]", "x": 1}]})
        );
    }

    /// Each credential shape, inside ordinary text, with what must remain of the text.
    pub(crate) const CREDENTIALS: &[(&str, &str)] = &[
        (
            "postgres://app:hunter2@db.internal:5432/app",
            "postgres://[redacted]@db.internal:5432/app",
        ),
        (
            "clone https://me:ghp_x@github.com/o/r.git now",
            "clone https://[redacted]@github.com/o/r.git now",
        ),
        (
            "Authorization: Bearer abcdefghijklmnop0123456789.xyz",
            "Authorization: Bearer [redacted]",
        ),
        (
            "curl -H 'authorization: bearer 0123456789abcdef0123'",
            "curl -H 'authorization: bearer [redacted]'",
        ),
        (
            "key sk-proj-AbCdEfGhIjKlMnOpQrStUvWx1234 here",
            "key [redacted] here",
        ),
        ("sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAAAAAA", "[redacted]"),
        ("sk_live_51HabcdefGHIJKLMNOPqrst", "[redacted]"),
        (
            "token=ghp_0123456789abcdefghijABCDEFGHIJ012345",
            "token=[redacted]",
        ),
        ("gho_0123456789abcdefghijABCDEFGHIJ012345", "[redacted]"),
        (
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
            "[redacted]",
        ),
        ("glpat-abcdefghij0123456789", "[redacted]"),
        ("aws AKIAIOSFODNN7EXAMPLE key", "aws [redacted] key"),
        ("ASIAY34FZKBOKMUTVV7A", "[redacted]"),
        ("AIzaSyA-0123456789abcdefghijklmnopqrstu", "[redacted]"),
        ("xoxb-1234567890-0987654321-AbCdEfGhIjKl", "[redacted]"),
        ("xapp-1-A0123456789-0123456789012-abcdef", "[redacted]"),
        ("npm_abcdefghijklmnopqrstuvwxyz0123456789", "[redacted]"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk end",
            "jwt [redacted] end",
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\nafter",
            "[redacted]\nafter",
        ),
        (
            "cut short: -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA",
            "cut short: [redacted]",
        ),
    ];

    #[test]
    fn credentials_in_values_are_redacted_whatever_the_key() {
        for (text, expected) in CREDENTIALS {
            assert_eq!(redact_text(text), *expected, "{text}");
            let args = json!({"note": text, "list": [text]});
            assert_eq!(
                redact(&args),
                json!({"note": expected, "list": [expected]}),
                "{text}"
            );
            assert!(needs_redaction(&args), "{text}");
        }
    }

    #[test]
    fn ordinary_values_are_left_alone() {
        for text in [
            "",
            "hello world",
            "Europe/Helsinki",
            "550e8400-e29b-41d4-a716-446655440000",
            "https://example.com/path?q=1#frag",
            "https://user@example.com/",
            "mailto:someone@example.com",
            "see http://host:8080/x@y",
            "the bearer of bad news",
            "task-0123456789012345678901234",
            "risk-management-and-compliance-2026",
            "desk_live_0123456789abcdefgh",
            "a sketch of ghosts",
            "ghp_short",
            "AKIA-not-a-key",
            "eyJust.eyJoking.",
            "-----BEGIN",
            "d41d8cd98f00b204e9800998ecf8427e",
            "/home/me/.ssh/id_ed25519",
            "SELECT * FROM users WHERE author = 'me'",
        ] {
            assert_eq!(redact_text(text), text, "{text}");
            assert!(!needs_redaction(&json!({"note": text})), "{text}");
        }
        let args = json!({"author": "Ada", "n": 3, "ok": true, "id": "550e8400-e29b-41d4-a716-446655440000"});
        assert_eq!(redact(&args), args);
        assert!(!needs_redaction(&args));
    }

    #[test]
    fn already_redacted_arguments_need_nothing_more() {
        let args =
            json!({"apiKey": "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx1234", "url": "https://a:b@h/"});
        let once = redact(&args);
        assert!(!needs_redaction(&once), "{once}");
        assert_eq!(redact(&once), once);
    }
}
