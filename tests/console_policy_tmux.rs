//! Policy authoring end to end, in a real terminal: the real `toolgate console` in tmux
//! writes a rate limit with `:limit echo 2/minute`, `:w`, `y`; the real gateway
//! (`toolgate wrap` in front of `@modelcontextprotocol/server-everything`, driven by the
//! Python MCP client) reloads the file and enforces it, and the console shows that the
//! gateway applied it and then the third call rate limited.
//!
//! Needs `tmux` and the peers installed by `scripts/setup-test-peers`; without them it
//! fails, it does not skip. The deadlines only keep a broken build from hanging.

mod tmux;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(60);

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "echo": {},
    "get-sum": { "action": "deny", "reason": "not today" }
  }
}
"#;

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

/// The MCP client session through `toolgate wrap`.
struct Agent {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, runtime_dir: &Path) -> Agent {
        let log = dir.join("gateway.log");
        let mut child = Command::new(peer(".venv/bin/python"))
            .arg(root().join("tests/e2e/driver.py"))
            .arg("legacy")
            .arg(&log)
            .arg("--")
            // The SDK passes only a few variables to the server; `env` carries ours.
            .arg("env")
            .arg(format!("XDG_RUNTIME_DIR={}", runtime_dir.display()))
            .arg(format!("XDG_STATE_HOME={}", dir.join("state").display()))
            .arg(env!("CARGO_BIN_EXE_toolgate"))
            .arg("wrap")
            .arg("--policy")
            .arg(dir.join("policy.json"))
            .arg("--audit")
            .arg(dir.join("audit.jsonl"))
            .arg("--grant")
            .arg("tmux-agent")
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
            log,
        }
    }

    fn call(&mut self, tool: &str, args: Value) -> Value {
        let command = json!({"op": "call", "tool": tool, "args": args});
        writeln!(self.stdin, "{command}").expect("write to the client");
        self.stdin.flush().expect("flush");
        let line = self.answers.recv_timeout(WITHIN).unwrap_or_else(|_| {
            panic!(
                "no answer; gateway log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
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
fn limit_written_from_the_console_is_applied_and_enforced_by_a_real_gateway() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime_dir = dir.path().join("run");
    std::fs::create_dir(&runtime_dir).expect("runtime dir");
    std::fs::set_permissions(
        &runtime_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, POLICY).expect("policy");

    let mut agent = Agent::start(dir.path(), &runtime_dir);
    // The first answer means the gateway is up (and its discovery file written).
    let first = agent.call("echo", json!({"message": "before the limit"}));
    assert_eq!(first["is_error"], false, "{first}");

    let log = dir.path().join("console.log");
    let term = tmux::Tmux::start(
        Path::new(env!("CARGO_BIN_EXE_toolgate")),
        &["console", "--log", &log.display().to_string()],
        dir.path(),
        (200, 50),
        &[
            ("XDG_RUNTIME_DIR", &runtime_dir),
            ("XDG_STATE_HOME", &dir.path().join("state")),
        ],
    );
    term.wait_for("the gateway and its echo call", WITHIN, |s| {
        s.contains("1 gateway") && s.contains("echo") && s.contains("✓ allow")
    });

    // The console found the policy file through the gateway; the Policy view lists it.
    term.send(&["3"]);
    term.wait_for("the Policy view with the file", WITHIN, |s| {
        s.contains("policy.json") && s.contains("draft = file") && s.contains("get-sum")
    });

    term.send(&[":limit echo 2/minute", "Enter"]);
    term.wait_for("the edited draft", WITHIN, |s| {
        s.contains("echo limited to 2/minute") && s.contains("2/minute per grant")
    });
    term.send(&[":w", "Enter"]);
    term.wait_for("the diff and the question", WITHIN, |s| {
        s.contains("y writes") && s.contains("\"counter\": \"echo\"") && s.contains("What-if")
    });
    term.send(&["y"]);
    term.wait_for("the gateway's confirmation", WITHIN, |s| {
        s.contains("applied by 1 gateway")
    });

    let written = std::fs::read_to_string(&policy).expect("policy");
    let doc: Value = serde_json::from_str(&written).expect("written policy is JSON");
    assert_eq!(
        doc["tools"]["echo"]["limits"],
        json!([{"counter": "echo", "window": "minute", "max": 2}])
    );
    assert_eq!(
        doc["tools"]["get-sum"],
        json!({"action": "deny", "reason": "not today"}),
        "the untouched rule is kept"
    );

    // The gateway enforces it: two calls a minute, the third is refused with the limit.
    for n in 0..2 {
        let ok = agent.call("echo", json!({"message": format!("call {n}")}));
        assert_eq!(ok["is_error"], false, "call {n}: {ok}");
    }
    let refused = agent.call("echo", json!({"message": "one too many"}));
    assert_eq!(refused["is_error"], true, "{refused}");
    let text = refused["texts"][0].as_str().unwrap_or_default();
    assert!(
        text.contains("Rate limit reached") && text.contains("2 calls per minute"),
        "{refused}"
    );

    term.send(&["1"]);
    term.wait_for("the rate-limited call", WITHIN, |s| {
        s.contains("⏱ rate limited")
    });
    term.send(&["4"]);
    term.wait_for("the echo counter full", WITHIN, |s| {
        s.contains("echo") && s.contains("2/2") && s.contains("tmux-agent")
    });
}
