//! Another local user creates `<tmp>/toolgate-<uid>` before us (the name is predictable):
//! the real `toolgate wrap` still starts, writes its discovery file under our own state
//! directory instead and says so in its log, and `toolgate gateways` finds it there, while
//! nothing in the other user's directory is trusted.
//!
//! Creating a second user needs root (as on CI); elsewhere the test says it is skipped.
//! `TMPDIR` and `HOME` point at temporary directories, so the machine's real `/tmp` and home
//! are never touched.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::agent::wrap;
use support::discovery::next_event;
use support::{ANSWER_WITHIN, toolgate, wait_exit};
use toolgate::testing::control::{self, DiscoveryEntry};
use toolgate::testing::wire::EventKind;

/// The second local user, created once (and left for later runs).
const INTRUDER: &str = "toolgate-intruder";

const POLICY: &str = r#"{ "version": "1", "default": "allow" }"#;

/// The uid and gid of the second user, created if missing; `None` when not root.
fn intruder() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIPPED: creating a second local user ({INTRUDER}) needs root; run as root (as CI \
             does) to test a discovery directory made by another user"
        );
        return None;
    }
    let out = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            INTRUDER,
        ])
        .output()
        .expect("run useradd");
    // 9: the user exists already (an earlier run).
    assert!(
        matches!(out.status.code(), Some(0 | 9)),
        "useradd {INTRUDER} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let user = nix::unistd::User::from_name(INTRUDER)
        .expect("read the user database")
        .expect("the user just created");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// The environment of everything this test runs: no runtime directory, our own tmp and home.
fn isolated(command: &mut Command, tmp: &Path, home: &Path) {
    command
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_STATE_HOME")
        .env("TMPDIR", tmp)
        .env("HOME", home);
}

/// A child killed when the test ends, whatever happens.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tmp_directory_made_first_by_another_user_is_refused_and_wrap_uses_the_state_dir() {
    let Some((uid, gid)) = intruder() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("a temporary directory");
    // Like /tmp: anyone may create in it.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod 1777");
    let home = tempfile::tempdir().expect("a temporary home");
    let ours = tmp
        .path()
        .join(format!("toolgate-{}", nix::unistd::geteuid()));

    // The other user makes our predictable directory first, private to them...
    let made = Command::new("mkdir")
        .args(["-m", "700"])
        .arg(&ours)
        .uid(uid)
        .gid(gid)
        .status()
        .expect("run mkdir as the other user");
    assert!(made.success(), "mkdir as {INTRUDER}: {made}");
    assert_eq!(std::fs::metadata(&ours).expect("the directory").uid(), uid);
    // ...and plants a discovery file pointing at a gateway of their own, naming a live pid.
    let planted = ours.join("planted.json");
    std::fs::write(
        &planted,
        serde_json::to_string(&DiscoveryEntry {
            id: "planted".into(),
            url: "ws://127.0.0.1:9/".into(),
            token: "theirs".into(),
            pid: std::process::id(),
            policy: "/p.json".into(),
            grant: "g".into(),
            server: "s".into(),
            started_at: chrono::Utc::now(),
        })
        .expect("an entry as JSON"),
    )
    .expect("plant a file");
    std::os::unix::fs::chown(&planted, Some(uid), Some(gid)).expect("chown the planted file");

    std::fs::write(home.path().join("policy.json"), POLICY).expect("write the policy");
    let argv = wrap(home.path(), "local", &[], vec!["cat".into()]);
    let log_path = home.path().join("stderr.log");
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("a log file"));
    isolated(&mut command, tmp.path(), home.path());
    let mut gateway = Running(command.spawn().expect("start toolgate wrap"));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // The gateway starts and writes under our state directory.
    let fallback = home.path().join(".local/state/toolgate/gateways");
    let what = format!("a discovery file in {}", fallback.display());
    let file = support::wait::wait_for(&what, ANSWER_WITHIN, || {
        if let Some(file) = json_files(&fallback).pop() {
            return Ok(file);
        }
        if let Ok(Some(status)) = gateway.0.try_wait() {
            panic!(
                "wrap exited ({status}) instead of falling back; log:\n{}",
                log()
            );
        }
        Err(format!("log:\n{}", log()))
    });
    let meta = std::fs::metadata(&fallback).expect("the fallback directory");
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(&file).expect("the file").mode() & 0o777,
        0o600
    );
    let entry: DiscoveryEntry =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read the file"))
            .expect("a discovery entry");

    // Its log says why and where.
    let said = log();
    assert!(
        said.contains(&ours.display().to_string())
            && said.contains(&format!("owned by uid {uid}"))
            && said.contains(&fallback.display().to_string()),
        "the log names the refused directory, why, and the fallback:\n{said}"
    );
    assert_eq!(
        json_files(&ours),
        vec![planted.clone()],
        "nothing written to their directory"
    );

    // `toolgate gateways` finds it there, and nothing from the other user's directory.
    let mut list = Command::new(toolgate());
    list.args(["gateways", "--json"]);
    isolated(&mut list, tmp.path(), home.path());
    let out = list.output().expect("run toolgate gateways");
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<DiscoveryEntry> =
        serde_json::from_slice(&out.stdout).expect("gateways --json is a JSON array");
    let ids: Vec<&str> = listed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [entry.id.as_str()], "only our gateway is listed");

    // What the file says is enough to connect.
    let connecting = control::connect(&entry.url, &entry.token);
    let mut operator = support::wait::within("an operator's connection", ANSWER_WITHIN, connecting)
        .await
        .expect("an operator connects");
    let hello = next_event(&mut operator).await;
    assert!(matches!(hello.kind, EventKind::Hello(_)), "{hello:?}");

    // Stopping the gateway removes its file.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(gateway.0.id()).expect("a pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal wrap");
    let status = wait_exit(&mut gateway.0);
    assert!(
        status.success(),
        "wrap stopped with {status}; log:\n{}",
        log()
    );
    assert!(!file.exists(), "the discovery file is removed on exit");
}
