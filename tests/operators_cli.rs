//! `toolgate operators` with the built binary: a token printed once and stored hashed, roles,
//! clear refusals, revocation, and `--operators` refusing a broken file at start.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use support::toolgate;

fn run(args: &[&str]) -> Output {
    Command::new(toolgate())
        .args(args)
        .env_remove("TOOLGATE_OPERATORS")
        .output()
        .expect("run toolgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn accounts_are_added_listed_and_revoked_and_only_hashes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("operators.json");
    let file = file.to_str().unwrap();

    let added = run(&[
        "operators",
        "add",
        "alice",
        "--role",
        "approver",
        "--file",
        file,
    ]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    let token = text(&added.stdout).trim().to_owned();
    assert!(token.starts_with("tgop_") && token.len() == 69, "{token}");
    assert!(text(&added.stderr).contains("shown only this once"));
    let stored = std::fs::read_to_string(file).unwrap();
    assert!(!stored.contains(&token[5..]), "the token itself was stored");
    assert!(stored.contains("\"approver\""), "{stored}");
    let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    assert!(
        run(&[
            "operators",
            "add",
            "bob",
            "--role",
            "viewer",
            "--file",
            file
        ])
        .status
        .success()
    );
    let list = text(&run(&["operators", "list", "--file", file]).stdout);
    let rows: Vec<Vec<&str>> = list.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "{list}");
    assert_eq!(&rows[0][..2], ["alice", "approver"]);
    assert_eq!(&rows[1][..2], ["bob", "viewer"]);

    let again = run(&[
        "operators",
        "add",
        "alice",
        "--role",
        "admin",
        "--file",
        file,
    ]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    let bad_role = run(&[
        "operators",
        "add",
        "carol",
        "--role",
        "root",
        "--file",
        file,
    ]);
    assert!(!bad_role.status.success());
    assert!(
        text(&bad_role.stderr).contains("viewer"),
        "{}",
        text(&bad_role.stderr)
    );

    let revoked = run(&["operators", "revoke", "alice", "--file", file]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let list = text(&run(&["operators", "list", "--file", file]).stdout);
    assert!(!list.contains("alice") && list.contains("bob"), "{list}");
    let missing = run(&["operators", "revoke", "alice", "--file", file]);
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("no operator named"));
}

#[test]
fn a_gateway_refuses_to_start_with_a_broken_operators_file() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"version": "1", "default": "allow"}"#).unwrap();
    let operators = dir.path().join("operators.json");
    std::fs::write(
        &operators,
        r#"{"version": "1", "operators": {"a": {"role": "root"}}}"#,
    )
    .unwrap();
    let out = Command::new(toolgate())
        .args(["wrap", "--policy"])
        .arg(&policy)
        .arg("--operators")
        .arg(&operators)
        .args(["--audit"])
        .arg(dir.path().join("audit.jsonl"))
        .args(["--counters", "memory", "--", "true"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("XDG_STATE_HOME", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--operators") && err.contains("operators.json"),
        "{err}"
    );
}

#[test]
fn connect_takes_its_token_from_a_file_or_says_where_to_put_one() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens here: only how the token is found is under test.
    let url = "ws://127.0.0.1:9/";
    let without = Command::new(toolgate())
        .args(["tail", "--connect", url])
        .env_remove("TOOLGATE_TOKEN")
        .env_remove("TOOLGATE_OPERATOR_TOKEN")
        .output()
        .unwrap();
    assert!(!without.status.success());
    let err = text(&without.stderr);
    assert!(
        err.contains("--token-file") && err.contains("TOOLGATE_OPERATOR_TOKEN"),
        "{err}"
    );

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = Command::new(toolgate())
        .args(["tail", "--connect", url, "--token-file"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("is empty"),
        "{}",
        text(&out.stderr)
    );

    // A readable token file gets as far as connecting (refused: nothing listens).
    let token = dir.path().join("token");
    std::fs::write(&token, "tgop_0123\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(toolgate())
        .args(["tail", "--connect", url, "--token-file"])
        .arg(&token)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("chmod 600"), "{err}");
    assert!(err.contains("cannot follow ws://127.0.0.1:9/"), "{err}");
}
