//! Secret-looking argument keys, and redaction of them.
//!
//! Used wherever arguments leave the gateway's memory: the audit log, the event stream and the
//! console. A key is secret-looking when, with case, `_` and `-` ignored, it contains one of a
//! fixed list of words (`apikey`, `token`, `secret`, `password`, ...).

use serde_json::Value;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

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

/// Whether an argument key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    let folded: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    SECRET_FRAGMENTS.iter().any(|f| folded.contains(f))
}

/// A copy of `value` in which every object member with a secret-looking key, at any depth,
/// has its value replaced by [`REDACTED`].
pub fn redact(value: &Value) -> Value {
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
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_keys_are_recognised_in_any_spelling() {
        for key in [
            "apiKey",
            "api_key",
            "API-KEY",
            "access_token",
            "Authorization",
            "password",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["keyName", "amount", "owner", "name"] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn redaction_reaches_nested_objects_and_arrays() {
        let v = json!({"keyName": "staging", "apiKey": "sk-1", "nested": [{"token": "t", "x": 1}]});
        assert_eq!(
            redact(&v),
            json!({"keyName": "staging", "apiKey": "[redacted]", "nested": [{"token": "[redacted]", "x": 1}]})
        );
    }
}
