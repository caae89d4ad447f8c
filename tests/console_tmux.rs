//! The real `toolgate console` in a real terminal (tmux), against a real gateway
//! (`toolgate wrap`) in front of a real MCP server (`@modelcontextprotocol/server-everything`),
//! driven by a real MCP client (the Python SDK, `tests/e2e/driver.py`).
//!
//! The console finds the gateway through the discovery directory (a private
//! `XDG_RUNTIME_DIR`), shows the calls as they arrive, and approves a held call with `a`;
//! the client then gets the server's answer. Needs `tmux` and the peers installed by
//! `scripts/setup-test-peers`; without them it fails, it does not skip.
//!
//! Waiting for the screen uses a generous deadline only so that a broken build fails
//! instead of hanging; nothing here asserts on speed.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(60);

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "echo": {},
    "get-sum": { "action": "require_approval", "approval_timeout": "10m" }
  }
}"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn peer(relative: &str) -> PathBuf {
    let path = root().join("tests/peers").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup-test-peers",
        path.display()
    );
    path
}

/// A tmux server of our own (its own socket), so the test never touches anyone's sessions.
struct Tmux {
    socket: String,
    /// The console's log, shown when the screen is not what was expected.
    log: PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-L").arg(&self.socket);
        c
    }

    fn start(&self, shell_command: &str) {
        let status = self
            .cmd()
            .args([
                "new-session",
                "-d",
                "-x",
                "200",
                "-y",
                "50",
                "-s",
                "console",
            ])
            .arg(shell_command)
            .status()
            .expect("tmux is installed");
        assert!(status.success(), "tmux new-session failed");
    }

    fn keys(&self, keys: &str) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", "console", keys])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    fn screen(&self) -> Option<String> {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "console"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn running(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "console"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits until the screen satisfies `ok`; fails with the screen if it never does.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WITHIN;
        loop {
            let screen = self.screen().unwrap_or_default();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "screen never showed {what}:\n{screen}\nconsole log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

/// The MCP client session through `toolgate wrap`.
struct Agent {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
}

impl Agent {
    fn start(dir: &Path, runtime_dir: &Path) -> Agent {
        let mut child = Command::new(peer(".venv/bin/python"))
            .arg(root().join("tests/e2e/driver.py"))
            .arg("legacy")
            .arg(dir.join("gateway.log"))
            .arg("--")
            // The SDK passes only a few variables to the server; `env` carries ours.
            .arg("env")
            .arg(format!("XDG_RUNTIME_DIR={}", runtime_dir.display()))
            .arg(env!("CARGO_BIN_EXE_toolgate"))
            .arg("wrap")
            .arg("--policy")
            .arg(dir.join("policy.json"))
            .arg("--audit")
            .arg(dir.join("audit.jsonl"))
            .arg("--grant")
            .arg("tmux-agent")
            // Keep the user's real counter file out of tests.
            .args(["--counters", "memory"])
            .arg("--")
            .arg("node")
            .arg(peer("node_modules/.bin/mcp-server-everything"))
            .arg("stdio")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the Python client");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Agent {
            child,
            stdin,
            answers,
        }
    }

    fn ask(&mut self, command: Value) {
        writeln!(self.stdin, "{command}").expect("write to the client");
        self.stdin.flush().expect("flush");
    }

    fn answer(&self, dir: &Path) -> Value {
        let line = self.answers.recv_timeout(WITHIN).unwrap_or_else(|_| {
            panic!(
                "no answer; gateway log:\n{}",
                std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
            )
        });
        serde_json::from_str(&line).expect("JSON answer")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn console_shows_calls_from_a_real_gateway_and_approves_a_hold_with_a() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime_dir = dir.path().join("run");
    std::fs::create_dir(&runtime_dir).expect("runtime dir");
    std::fs::set_permissions(
        &runtime_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    std::fs::write(dir.path().join("policy.json"), POLICY).expect("policy");

    let mut agent = Agent::start(dir.path(), &runtime_dir);
    // The first answer means the gateway is up (and its discovery file written).
    agent.ask(json!({"op": "call", "tool": "echo", "args": {"message": "hello from tmux"}}));
    let echoed = agent.answer(dir.path());
    assert_eq!(echoed["is_error"], false, "{echoed}");

    let tmux = Tmux {
        socket: format!("toolgate-console-test-{}", std::process::id()),
        log: dir.path().join("console.log"),
    };
    tmux.start(&format!(
        "env XDG_RUNTIME_DIR={} TERM=xterm-256color {} console --log {}",
        runtime_dir.display(),
        env!("CARGO_BIN_EXE_toolgate"),
        dir.path().join("console.log").display()
    ));

    // The call made before the console started arrives with the gateway's snapshot.
    tmux.wait_for("the echo call", |s| {
        s.contains("1 gateway") && s.contains("echo") && s.contains("✓ allow")
    });

    // A call made now arrives live; this one waits for a person.
    agent.ask(json!({"op": "call", "tool": "get-sum", "args": {"a": 2, "b": 3}}));
    tmux.wait_for("the held call", |s| {
        s.contains("get-sum") && s.contains("⏸ held") && s.contains("2 Holds (1)")
    });

    tmux.keys("2");
    tmux.wait_for("the Holds view", |s| {
        s.contains("Holds · 1 waiting") && s.contains("tmux-agent") && s.contains("a approve")
    });
    tmux.keys("a");
    let answer = agent.answer(dir.path());
    assert_eq!(answer["is_error"], false, "approved call: {answer}");
    let text = answer["texts"][0].as_str().unwrap_or_default();
    assert!(text.contains('5'), "the server's sum came back: {answer}");
    tmux.wait_for("the approval", |s| {
        s.contains("approved") && s.contains("Holds · 0 waiting")
    });

    // Nothing is held any more: q quits at once and the session ends with the console.
    tmux.keys("q");
    let deadline = Instant::now() + WITHIN;
    while tmux.running() {
        assert!(Instant::now() < deadline, "console did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
}
