//! The real Python MCP client as the tests' agent, driven one JSON command per line and
//! answering one JSON line per command: `tests/e2e/driver.py` over stdio (usually in front of
//! `toolgate wrap`) or `tests/e2e/http_driver.py` over Streamable HTTP (in front of
//! `toolgate serve`). The commands are listed in driver.py.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;

use serde_json::{Value, json};

use super::lines::line_reader;
use super::peers::{e2e_script, python};
use super::{ANSWER_WITHIN, toolgate, wait_exit};

/// One client session; the client is killed when the test ends, whatever happens.
pub struct Agent {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
    /// The gateway's stderr (stdio sessions), shown when an answer never comes.
    log: Option<PathBuf>,
}

impl Agent {
    /// driver.py in `mode` (`auto` or `legacy`) starting `server` (a command line) with its
    /// stderr appended to `log`. `env` is set for the client, which passes the `XDG_*`
    /// variables on to the server it starts (the SDK alone would drop them).
    pub fn stdio(mode: &str, log: &Path, server: &[String], env: &[(&str, &Path)]) -> Agent {
        let mut command = Command::new(python());
        command
            .arg(e2e_script("driver.py"))
            .arg(mode)
            .arg(log)
            .arg("--")
            .args(server)
            .envs(env.iter().copied());
        Agent::spawn(command, Some(log.to_owned()))
    }

    /// http_driver.py in `mode` against the MCP endpoint `url`, with a bearer `token`.
    pub fn http(mode: &str, url: &str, token: &str) -> Agent {
        let mut command = Command::new(python());
        command
            .arg(e2e_script("http_driver.py"))
            .args([mode, url, token])
            .stderr(Stdio::null());
        Agent::spawn(command, None)
    }

    /// As [`Agent::http`], for an `https://` endpoint whose certificate `ca` (PEM) signed:
    /// httpx trusts it through `SSL_CERT_FILE`, as a person's client would be configured.
    pub fn https(mode: &str, url: &str, token: &str, ca: &Path) -> Agent {
        let mut command = Command::new(python());
        command
            .arg(e2e_script("http_driver.py"))
            .args([mode, url, token])
            .env("SSL_CERT_FILE", ca)
            .stderr(Stdio::null());
        Agent::spawn(command, None)
    }

    fn spawn(mut command: Command, log: Option<PathBuf>) -> Agent {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the Python client");
        let stdin = child.stdin.take().expect("the client's stdin");
        let answers = line_reader(child.stdout.take().expect("the client's stdout"));
        Agent {
            child,
            stdin,
            answers,
            log,
        }
    }

    /// Sends a command without waiting for its answer (for calls that will be held).
    pub fn send(&mut self, command: &Value) {
        writeln!(self.stdin, "{command}").expect("write to the client");
        self.stdin.flush().expect("flush the client's stdin");
    }

    /// The next answer; fails (with the gateway's log) if none comes in time.
    pub fn answer(&self) -> Value {
        let line = self
            .answers
            .recv_timeout(ANSWER_WITHIN)
            .unwrap_or_else(|_| match &self.log {
                Some(_) => panic!("no answer; gateway log:\n{}", self.log()),
                None => panic!("no answer from the client"),
            });
        serde_json::from_str(&line).expect("the client answers JSON")
    }

    /// Sends a command and waits for its answer.
    pub fn ask(&mut self, command: Value) -> Value {
        self.send(&command);
        self.answer()
    }

    /// Calls `tool` and waits for the answer.
    pub fn call(&mut self, tool: &str, args: Value) -> Value {
        self.ask(json!({"op": "call", "tool": tool, "args": args}))
    }

    /// Starts a call to `tool`; its answer is read with [`Agent::answer`].
    pub fn start_call(&mut self, tool: &str, args: Value) {
        self.send(&json!({"op": "call", "tool": tool, "args": args}));
    }

    /// The names of the tools the client is shown.
    pub fn tools(&mut self) -> Vec<String> {
        let answer = self.ask(json!({"op": "list_tools"}));
        serde_json::from_value(answer["tools"].clone())
            .unwrap_or_else(|_| panic!("no tool list: {answer}"))
    }

    /// Ends the session the way a client does and waits for the client to exit.
    pub fn close(&mut self) -> ExitStatus {
        assert_eq!(self.ask(json!({"op": "close"})), json!({"closed": true}));
        wait_exit(&mut self.child)
    }

    /// What the gateway wrote to stderr so far (stdio sessions; empty otherwise).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log).ok())
            .unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command line of `toolgate wrap` with its policy (`dir/policy.json`) and audit log
/// (`dir/audit.jsonl`) in `dir`, as `grant`, with `extra` options, in front of `server`.
pub fn wrap(dir: &Path, grant: &str, extra: &[&str], server: Vec<String>) -> Vec<String> {
    let mut args = vec![
        toolgate().display().to_string(),
        "wrap".into(),
        "--policy".into(),
        dir.join("policy.json").display().to_string(),
        "--audit".into(),
        dir.join("audit.jsonl").display().to_string(),
        "--grant".into(),
        grant.into(),
        // Counted in the process: the tests must not share (or touch) the user's counter file.
        "--counters".into(),
        "memory".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(server);
    args
}

/// The first text of a tool result; fails if it has none.
pub fn text(answer: &Value) -> &str {
    answer["texts"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {answer}"))
}
