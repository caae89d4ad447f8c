//! Every command reads a policy file the way a reload does: a regular file only, opened
//! without blocking, at most 16 MiB; `serve` reads its servers and grants files so too. Run as the built binary, each with a deadline: a FIFO
//! given as the policy must be refused at once, never waited on.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far longer than any of these commands takes; only a hang (a blocking open) reaches it.
const WITHIN: Duration = Duration::from_secs(60);

/// Runs toolgate with `args`; fails the test if it has not exited within [`WITHIN`].
fn toolgate(args: &[&str], runtime: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime)
        .env("XDG_STATE_HOME", runtime)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start toolgate");
    let deadline = Instant::now() + WITHIN;
    loop {
        if child.try_wait().expect("the child's status").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("toolgate {args:?} did not exit within {WITHIN:?}: it waited on the policy");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("toolgate's output");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

fn fifo(dir: &Path) -> String {
    let path = dir.join("policy.json");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    path.display().to_string()
}

#[test]
fn check_explain_wrap_and_serve_refuse_a_fifo_as_the_policy_without_waiting_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let policy = fifo(dir.path());
    let runtime = dir.path();

    let (code, out) = toolgate(&["check", &policy], runtime);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "{policy}: error: cannot read {policy}: not a regular file (a FIFO)"
        )),
        "{out}"
    );

    let (code, out) = toolgate(
        &["explain", "--policy", &policy, "--tool", "read_file"],
        runtime,
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("not a regular file (a FIFO)"), "{out}");

    let (code, out) = toolgate(&["wrap", "--policy", &policy, "--", "cat"], runtime);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("cannot load the policy"), "{out}");
    // The reason is kept in the error's chain and said once.
    assert_eq!(
        out.matches("not a regular file (a FIFO)").count(),
        1,
        "{out}"
    );

    // `serve` reads its servers and grants first: give it good ones, so that the policy is
    // what it refuses.
    let servers = dir.path().join("servers.json");
    std::fs::write(&servers, r#"{"mcpServers": {"t": {"command": "cat"}}}"#).unwrap();
    let grants = dir.path().join("grants.json");
    let grants = grants.display().to_string();
    let (code, out) = toolgate(&["grants", "add", "ci", "--file", &grants], runtime);
    assert_eq!(code, Some(0), "{out}");
    let servers = servers.display().to_string();
    let (code, out) = toolgate(
        &[
            "serve",
            "--policy",
            &policy,
            "--servers",
            &servers,
            "--grants",
            &grants,
            "--listen",
            "127.0.0.1:0",
        ],
        runtime,
    );
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "cannot load the policy {policy}: cannot read {policy}: not a regular file (a FIFO)"
        )),
        "{out}"
    );
}

#[test]
fn a_policy_over_16_mib_is_refused_with_the_cap_and_one_at_the_cap_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let cap = toolgate::testing::policy::MAX_POLICY_BYTES as usize;
    let valid = r#"{"version": "1", "default": "deny"}"#;
    // Padding after the JSON: whitespace, so the file at the cap is a valid policy.
    let at_cap = dir.path().join("at-cap.json");
    let mut text = valid.as_bytes().to_vec();
    text.resize(cap, b' ');
    std::fs::write(&at_cap, &text).unwrap();
    let over = dir.path().join("over.json");
    text.push(b' ');
    std::fs::write(&over, &text).unwrap();

    let at_cap = at_cap.display().to_string();
    let (code, out) = toolgate(&["check", &at_cap], dir.path());
    assert_eq!(code, Some(0), "{out}");

    let over = over.display().to_string();
    let (code, out) = toolgate(&["check", &over], dir.path());
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "{over}: error: cannot read {over}: larger than {cap} bytes (16 MiB), the most a policy file may be"
        )),
        "{out}"
    );
}

#[test]
fn a_directory_or_a_device_as_the_policy_is_named_for_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let shown = dir.path().display().to_string();
    let (code, out) = toolgate(&["check", &shown, "/dev/zero"], dir.path());
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not a regular file (a directory)"), "{out}");
    assert!(
        out.contains("/dev/zero: not a regular file (a device)"),
        "{out}"
    );
}

#[test]
fn serve_refuses_a_fifo_as_its_servers_or_grants_file_without_waiting_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"version": "1", "default": "deny"}"#).unwrap();
    let policy = policy.display().to_string();
    let servers = dir.path().join("servers.json");
    std::fs::write(&servers, r#"{"mcpServers": {"t": {"command": "cat"}}}"#).unwrap();
    let servers = servers.display().to_string();
    let grants = dir.path().join("grants.json").display().to_string();
    let (code, out) = toolgate(&["grants", "add", "ci", "--file", &grants], runtime);
    assert_eq!(code, Some(0), "{out}");
    let fifo_dir = dir.path().join("fifo");
    std::fs::create_dir(&fifo_dir).unwrap();
    let fifo = fifo(&fifo_dir);
    for (servers, grants, which) in [
        (fifo.as_str(), grants.as_str(), "--servers"),
        (servers.as_str(), fifo.as_str(), "--grants"),
    ] {
        let (code, out) = toolgate(
            &[
                "serve",
                "--policy",
                &policy,
                "--servers",
                servers,
                "--grants",
                grants,
                "--listen",
                "127.0.0.1:0",
            ],
            runtime,
        );
        assert_ne!(code, Some(0), "{which}: {out}");
        assert!(
            out.contains(&format!("{fifo}: not a regular file (a FIFO)")),
            "{which}: {out}"
        );
    }
}
