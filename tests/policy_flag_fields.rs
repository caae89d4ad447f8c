//! The policy format's flag fields (`learn` at the top, a rule's `shadow`): accepted where
//! they belong, their type checked, and a misplaced or misspelt one reported as unknown.

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
fn the_policy_with_or_without_learn_is_valid() {
    let (code, out) = check(&policy("", ""));
    assert_eq!(code, Some(0), "{out}");
    for value in ["true", "false"] {
        let (code, out) = check(&policy(&format!(r#", "learn": {value}"#), ""));
        assert_eq!(code, Some(0), "learn: {value}: {out}");
    }
}

#[test]
fn a_flag_field_with_a_value_of_the_wrong_type_is_reported_as_such() {
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
fn a_misspelt_field_is_unknown_and_a_flag_field_elsewhere_too() {
    let (code, out) = check(&policy(r#", "pin": "enforce""#, ""));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("error: unknown field \"pin\" in the policy"),
        "{out}"
    );
    // `shadow` belongs in a rule, `pins` and `learn` at the top: elsewhere they are typos.
    let (code, out) = check(&policy(
        r#", "shadow": true"#,
        r#", "pins": "warn", "learn": true"#,
    ));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("error: unknown field \"shadow\" in the policy"),
        "{out}"
    );
    assert!(
        out.contains("error: unknown field \"pins\" in a rule"),
        "{out}"
    );
    assert!(
        out.contains("error: unknown field \"learn\" in a rule"),
        "{out}"
    );
}
