//! A server spawned by the gateway gets the open-file limit the gateway was started with,
//! not the one the gateway raised itself to: a `select()`-based server breaks on
//! descriptors above 1,023. Run as the built binary, started with a soft limit of 512.

#[allow(dead_code)]
#[path = "support/wait.rs"]
mod wait;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WITHIN: Duration = Duration::from_secs(60);
const STARTED_WITH: u64 = 512;

/// The soft and hard "Max open files" of a `/proc/PID/limits` text.
fn open_files(limits: &str) -> Option<(String, String)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
}

/// Waits until `path` holds a "Max open files" line; fails saying what it waited for.
fn wait_for_limits(path: &Path, what: &str) -> (String, String) {
    let waited = format!("{what} to report its limits in {}", path.display());
    wait::wait_for(&waited, WITHIN, || {
        std::fs::read_to_string(path)
            .ok()
            .as_deref()
            .and_then(open_files)
            .ok_or_else(String::new)
    })
}

#[test]
fn a_server_spawned_by_wrap_gets_the_soft_limit_the_gateway_started_with() {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit")
        .1;
    if hard <= STARTED_WITH {
        eprintln!(
            "skipped: the hard open-file limit ({hard}) leaves nothing to raise above {STARTED_WITH}"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"version": "1", "default": "deny"}"#).unwrap();
    let reported = dir.path().join("server-limits.txt");
    // The server writes its own limits, then serves nothing until its input closes.
    let server = format!(
        "cat /proc/self/limits > '{}'; exec cat > /dev/null",
        reported.display()
    );
    let mut gateway = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -Sn {STARTED_WITH} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_toolgate"))
        .args(["wrap", "--policy"])
        .arg(&policy)
        .args(["--", "sh", "-c", &server])
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("XDG_STATE_HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start toolgate wrap");

    let (server_soft, _) = wait_for_limits(&reported, "the spawned server");
    let own = Path::new("/proc")
        .join(gateway.id().to_string())
        .join("limits");
    // `wrap` raises its own limit just after it started the server.
    let raised = format!("the gateway to raise its soft limit to the hard one ({hard})");
    wait::wait_for(&raised, WITHIN, || {
        match std::fs::read_to_string(&own)
            .ok()
            .as_deref()
            .and_then(open_files)
        {
            Some((soft, _)) if soft == hard.to_string() => Ok(()),
            Some((soft, _)) => Err(format!("its soft limit is {soft}")),
            None => Err(String::new()),
        }
    });
    assert_eq!(
        server_soft,
        STARTED_WITH.to_string(),
        "the server gets the limit the gateway started with"
    );

    // Closing the agent's side ends the gateway, and the server with it.
    let mut stdin = gateway.stdin.take().expect("the gateway's stdin");
    let _ = stdin.flush();
    drop(stdin);
    let deadline = Instant::now() + WITHIN;
    while gateway.try_wait().expect("the gateway's status").is_none() {
        if Instant::now() > deadline {
            let _ = gateway.kill();
            panic!("toolgate wrap did not exit within {WITHIN:?} after its input closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
