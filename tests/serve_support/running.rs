//! A running `toolgate serve` (the built binary) for the end-to-end and load tests: its files
//! in a private directory, grants made with the real CLI, raw HTTP/1.1 requests, its log and
//! audit records, `toolgate tail --json` following its events, and what the kernel says about
//! the process (children, memory, descriptors).
//!
//! Each test crate uses only part of it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::agent::Agent;
use crate::support::lines::line_reader;
use crate::support::{self, ANSWER_WITHIN};

/// How `serve` is started.
#[derive(Default)]
pub struct Setup<'a> {
    pub policy: &'a str,
    /// The mcpServers object.
    pub servers: Value,
    pub grants: &'a [&'a str],
    pub extra: &'a [&'a str],
    /// The open-file limit (soft, hard) the process starts with.
    pub nofile: Option<(u64, u64)>,
    /// Environment variables set for `serve` (`OTEL_*`).
    pub env: &'a [(&'a str, &'a str)],
    /// Leave the counter store to `serve`'s own default (under `XDG_STATE_HOME`, the test's
    /// directory) instead of `--counters memory`.
    pub default_counters: bool,
}

/// A `toolgate serve` process, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Serve {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub tokens: Vec<String>,
    child: Child,
}

impl Serve {
    pub fn start(setup: Setup<'_>) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.json"), setup.policy).unwrap();
        std::fs::write(
            dir.path().join("servers.json"),
            json!({ "mcpServers": setup.servers }).to_string(),
        )
        .unwrap();
        let tokens = setup
            .grants
            .iter()
            .map(|g| add_grant(dir.path(), g))
            .collect();
        let mut command = Command::new(support::toolgate());
        command
            .arg("serve")
            .args(["--policy", "policy.json", "--servers", "servers.json"])
            .args(["--grants", "grants.json", "--audit", "audit.jsonl"])
            .args(["--listen", "127.0.0.1:0"])
            .args(if setup.default_counters {
                &[][..]
            } else {
                &["--counters", "memory"][..]
            })
            .args(setup.extra)
            .current_dir(dir.path())
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("XDG_STATE_HOME", dir.path())
            .envs(setup.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("serve.log")).unwrap())
            .stderr(Stdio::piped());
        if let Some((soft, hard)) = setup.nofile {
            with_nofile(&mut command, soft, hard);
        }
        let mut child = command.spawn().expect("start toolgate serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log_path = dir.path().join("stderr.log");
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(log_path).unwrap();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let _ = writeln!(log, "{line}");
                let listening = line
                    .strip_prefix("toolgate serve: listening on http://")
                    .or_else(|| line.strip_prefix("toolgate serve: listening on https://"));
                if let Some(addr) = listening {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = rx.recv_timeout(ANSWER_WITHIN).unwrap_or_else(|_| {
            panic!(
                "serve did not start; log:\n{}",
                read(dir.path(), "stderr.log")
            )
        });
        Serve {
            dir,
            addr,
            tokens,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        read(self.dir.path(), "stderr.log")
    }

    pub fn url(&self, server: &str) -> String {
        format!("http://{}/mcp/{server}", self.addr)
    }

    /// The audit records written so far (a line that is not JSON yet is skipped).
    pub fn audit(&self) -> Vec<Value> {
        read(self.dir.path(), "audit.jsonl")
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The real Python client of `server`, over HTTP (`mode`: `auto` or `legacy`), with `token`.
    pub fn client(&self, mode: &str, server: &str, token: &str) -> Agent {
        Agent::http(mode, &self.url(server), token)
    }

    /// `toolgate tail --json` following this gateway's events (its runtime directory).
    pub fn tail(&self) -> Tail {
        let mut child = Command::new(support::toolgate())
            .args(["tail", "--json"])
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start toolgate tail");
        let lines = line_reader(child.stdout.take().expect("tail's stdout"));
        Tail {
            child,
            lines,
            serve_log: self.dir.path().join("stderr.log"),
        }
    }

    /// A DELETE of the session `session` of `server`, ending it.
    pub fn delete(&self, server: &str, token: &str, session: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.http(
            "DELETE",
            &format!("/mcp/{server}"),
            &[("Authorization", &auth), ("Mcp-Session-Id", session)],
            "",
        )
    }

    /// One raw HTTP/1.1 request on a new connection.
    pub fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        stream.write_all(req.as_bytes()).unwrap();
        read_reply(&mut stream)
    }

    /// A JSON-RPC POST with a bearer token (and a session, when given).
    pub fn post(&self, server: &str, token: &str, session: Option<&str>, msg: &Value) -> Reply {
        let auth = format!("Bearer {token}");
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ];
        if let Some(session) = session {
            headers.push(("Mcp-Session-Id", session));
        }
        self.http(
            "POST",
            &format!("/mcp/{server}"),
            &headers,
            &msg.to_string(),
        )
    }

    /// The processes whose parent is `serve` (the servers it started).
    pub fn children(&self) -> usize {
        let parent = self.pid().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                // pid (comm) state ppid …; comm may hold spaces and parentheses.
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split(' ').nth(1))
                    == Some(parent.as_str())
            })
            .count()
    }

    /// Resident memory of `serve`, in KiB (`VmRSS` in /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Descriptors `serve` has open (entries of /proc/PID/fd).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        support::terminate(&mut self.child);
    }
}

/// A `toolgate tail --json` process, killed when dropped.
pub struct Tail {
    child: Child,
    /// Its stdout, one event a line.
    pub lines: mpsc::Receiver<String>,
    serve_log: PathBuf,
}

impl Tail {
    /// Waits up to `within` for the next event matching `matches`, skipping others and lines
    /// that are not JSON; fails naming `what` and showing the gateway's log.
    pub fn wait_event(
        &self,
        what: &str,
        within: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no {what} event within {within:?}; gateway log:\n{}",
                    std::fs::read_to_string(&self.serve_log).unwrap_or_default()
                )
            });
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if matches(&event) {
                return event;
            }
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads an answer to the end of the connection (requests say `Connection: close`).
pub fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Starts `command` with an open-file limit of `soft` and `hard`.
pub fn with_nofile(command: &mut Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                .map_err(std::io::Error::from)
        });
    }
}

/// The soft open-file limit of process `pid` (`Max open files` in /proc/PID/limits).
pub fn soft_nofile(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs the real CLI with the test's private directories.
pub fn toolgate(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(support::toolgate())
        .args(args)
        .env("XDG_RUNTIME_DIR", dir)
        .env("XDG_STATE_HOME", dir)
        .output()
        .unwrap()
}

/// Makes a grant with the real CLI and returns its token.
pub fn add_grant(dir: &Path, name: &str) -> String {
    let grants = dir.join("grants.json");
    let out = toolgate(
        &["grants", "add", name, "--file", grants.to_str().unwrap()],
        dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.lines().count(), 1, "the token is alone on stdout");
    token.trim().to_owned()
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// An `initialize` request (id 1) of the handshake era.
pub fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "load-test", "version": "1"}}})
}
