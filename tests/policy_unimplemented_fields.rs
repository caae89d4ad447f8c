//! Fields of the policy format that this version does not implement yet (`learn`):
//! `toolgate check` refuses the policy and says why, rather than calling it unknown or
//! ignoring it. A rule's `shadow`, and `pins` and `quarantine_flagged`, are implemented; the
//! type check and the place of `shadow` (in a rule, not at the top) are checked here too.

use std::process::{Command, Output};

fn check(policy: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, policy).unwrap();
    let o: Output = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .arg("check")
        .arg(&path)
        .output()
        .expect("run toolgate check");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    (o.status.code(), out)
}

/// A valid policy with `top` added at the top level and `rule` inside the one rule.
fn policy(top: &str, rule: &str) -> String {
    format!(
        r#"{{"version": "1", "default": "deny"{top}, "tools": {{"read_file": {{"action": "allow"{rule}}}}}}}"#
    )
}

#[test]
fn the_policy_without_the_later_fields_is_valid() {
    let (code, out) = check(&policy("", ""));
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn each_later_field_refuses_the_policy_saying_it_is_not_implemented_by_this_version() {
    let version = env!("CARGO_PKG_VERSION");
    let cases = [(
        policy(r#", "learn": true"#, ""),
        "learn",
        "learn mode",
        "/learn",
    )];
    for (text, field, feature, pointer) in cases {
        let (code, out) = check(&text);
        assert_eq!(code, Some(1), "{field} must refuse the policy: {out}");
        assert!(
            out.contains(&format!(
                "error: field \"{field}\" is part of the policy format ({feature}) but this toolgate ({version}) does not implement it; the policy is refused"
            )),
            "{out}"
        );
        assert!(out.contains(&format!("(at {pointer})")), "{out}");
        assert!(
            out.contains(&format!("remove \"{field}\" to use this policy")),
            "{out}"
        );
        assert!(!out.contains("unknown field"), "{out}");
    }
}

#[test]
fn a_later_field_with_a_value_of_the_wrong_type_is_reported_as_such_too() {
    let (code, out) = check(&policy("", r#", "shadow": "yes""#));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            r#"error: "shadow" must be true or false, found "yes" (at /tools/read_file/shadow)"#
        ),
        "{out}"
    );
    let (code, out) = check(&policy(r#", "learn": 1"#, ""));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(r#"error: "learn" must be true or false, found 1 (at /learn)"#),
        "{out}"
    );
}

#[test]
fn a_misspelt_field_is_still_unknown_and_a_later_field_elsewhere_too() {
    let (code, out) = check(&policy(r#", "pin": "enforce""#, ""));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("error: unknown field \"pin\" in the policy"),
        "{out}"
    );
    // `shadow` belongs in a rule, `pins` at the top: elsewhere they are plain typos.
    let (code, out) = check(&policy(r#", "shadow": true"#, r#", "pins": "warn""#));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("error: unknown field \"shadow\" in the policy"),
        "{out}"
    );
    assert!(
        out.contains("error: unknown field \"pins\" in a rule"),
        "{out}"
    );
}
