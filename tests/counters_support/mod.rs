//! Shared by the counter-store tests: a private `redis-server` on loopback, and a real
//! `toolgate wrap` process driven line by line over its stdin and stdout.
//!
//! `redis-server` comes from Debian (`scripts/setup-test-peers` installs it); without it the
//! Redis tests fail, they never skip. Every gateway process gets its own state and runtime
//! directories, so no test touches the user's real counter file.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a server or a gateway may take to answer before the test fails instead of hanging.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `redis-server` of this test alone: loopback, a free port, no persistence. Killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
            listener.local_addr().unwrap().port()
        };
        let mut server = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server again on the same port (after [`RedisServer::stop`]); its data is
    /// gone, as after a crash of a server without persistence.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it with scripts/setup-test-peers")
            });
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let started = Instant::now();
        loop {
            let pong = client
                .get_connection_with_timeout(Duration::from_secs(1))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            assert!(
                started.elapsed() < ANSWER_WITHIN,
                "redis-server on port {} did not answer: {pong:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A unique key prefix, so tests sharing nothing still never share keys.
pub fn unique_prefix(test: &str) -> String {
    format!("t{}-{test}-{:x}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// What a gateway answered to one `tools/call`.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The upstream's result came back.
    Allowed,
    /// The gateway refused the call; the text the agent reads.
    Refused(String),
}

impl Answer {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Answer::Allowed)
    }

    pub fn refusal(&self) -> &str {
        match self {
            Answer::Refused(text) => text,
            Answer::Allowed => "",
        }
    }
}

/// A `toolgate wrap` process in front of the stub MCP server, with its own directories.
pub struct Gateway {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    next_id: u64,
    /// Answers read while waiting for another: a refusal overtakes a forwarded call.
    early: std::collections::HashMap<u64, Value>,
    pub stderr: PathBuf,
}

impl Gateway {
    /// Starts `toolgate wrap --policy <policy> --grant <grant> <extra>` with state and
    /// runtime directories under `home` (two gateways given one `home` share its default
    /// counter file, as two agent sessions of one user do).
    pub fn start(home: &Path, policy: &Path, grant: &str, extra: &[&str]) -> Gateway {
        let run = tempfile::tempdir_in(home).unwrap().keep();
        let stderr = run.join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .arg("wrap")
            .arg("--policy")
            .arg(policy)
            .args(["--grant", grant])
            .arg("--audit")
            .arg(run.join("audit.jsonl"))
            .arg("--no-events")
            .args(extra)
            .arg("--")
            .arg("python3")
            .arg(root().join("tests/e2e/stub_server.py"))
            .arg("crash")
            .env("XDG_STATE_HOME", home.join("state"))
            .env("XDG_RUNTIME_DIR", &run)
            .env("HOME", home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start toolgate wrap");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut gateway = Gateway {
            child,
            stdin: Some(stdin),
            lines,
            next_id: 1,
            early: std::collections::HashMap::new(),
            stderr,
        };
        let init = gateway.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "counters-test", "version": "1"}}),
        );
        gateway.wait_for(init);
        gateway.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        gateway
    }

    fn send(&mut self, msg: &Value) {
        let stdin = self.stdin.as_mut().expect("the gateway is running");
        writeln!(stdin, "{msg}").expect("write to the gateway");
        stdin.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    fn wait_for(&mut self, id: u64) -> Value {
        if let Some(msg) = self.early.remove(&id) {
            return msg;
        }
        let deadline = Instant::now() + ANSWER_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no answer to request {id}; gateway log:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                )
            });
            let msg: Value = serde_json::from_str(&line).expect("the gateway writes JSON lines");
            match msg["id"].as_u64() {
                Some(got) if got == id => return msg,
                Some(got) => {
                    self.early.insert(got, msg);
                }
                None => {}
            }
        }
    }

    /// Sends `n` calls of `tool` at once (without waiting between them), then reads the
    /// answers in order.
    pub fn call_many(&mut self, tool: &str, n: usize) -> Vec<Answer> {
        let ids: Vec<u64> = (0..n).map(|_| self.send_call(tool)).collect();
        ids.into_iter().map(|id| self.answer(id)).collect()
    }

    /// Sends one call of `tool` without waiting; returns its request id.
    pub fn send_call(&mut self, tool: &str) -> u64 {
        self.request("tools/call", json!({"name": tool, "arguments": {}}))
    }

    /// Whether the answer to request `id` has already been read (while waiting for another).
    pub fn answered(&self, id: u64) -> bool {
        self.early.contains_key(&id)
    }

    /// Waits (at most [`ANSWER_WITHIN`]) for the answer to call `id`.
    pub fn answer(&mut self, id: u64) -> Answer {
        let msg = self.wait_for(id);
        let result = &msg["result"];
        if result["isError"] == json!(true) {
            Answer::Refused(result["content"][0]["text"].as_str().unwrap_or("").into())
        } else {
            assert_eq!(
                result["content"][0]["text"], "ok",
                "unexpected answer {msg}"
            );
            Answer::Allowed
        }
    }

    pub fn call(&mut self, tool: &str) -> Answer {
        self.call_many(tool, 1).remove(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Ends the gateway as an agent does: closes its stdin, then waits for it to exit.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + ANSWER_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Counts allowed answers.
pub fn allowed(answers: &[Answer]) -> usize {
    answers.iter().filter(|a| a.is_allowed()).count()
}
