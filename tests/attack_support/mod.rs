//! The attack suite's harness: the real `toolgate` binary (`wrap`, and `serve` with a stdio
//! and a URL upstream) in front of `tests/e2e/recording_server.py`, a server that executes
//! whatever reaches it and records it, driven with raw bytes.
//!
//! Each attack is a *probe*: raw lines (stdin of `wrap`) or raw POST bodies (`serve`), then a
//! sentinel `ping` whose answer proves everything before it has been handled on both sides.
//! A probe returns what the client was sent and what reached the server (and what the server
//! executed), so each variant is judged on its own. At the end, [`Evidence`] holds the audit
//! log's decisions and the event stream's (the snapshot a new operator gets), which must name
//! the same calls with the same verdicts.

#[path = "../serve_support/running.rs"]
mod running;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use toolgate::testing::wire::CallRecord;

use crate::support::discovery::{operator, wait_discovery};
pub use crate::support::memory::{peak_rss, reset_peak};
use crate::support::peers::{e2e_script, python};
use crate::support::{ANSWER_WITHIN, Stopped, private_dir, toolgate};

/// Tools the test policies hide; their names must never reach a client.
pub const HIDDEN: [&str; 2] = ["delete_file", "secret_keys"];

/// One `tools/call` the recording server executed, as one of its parsers read it.
#[derive(Debug, Clone)]
pub struct Exec {
    pub name: Value,
    pub arguments: Value,
    /// `first` or `last`: which of duplicate keys that parser kept.
    pub interp: String,
}

/// The recording server's file, read incrementally.
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
    consumed: usize,
}

impl Record {
    fn new(path: PathBuf) -> Record {
        Record { path, consumed: 0 }
    }

    fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        // Only whole lines: the server may be writing the next one.
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        complete.lines().map(str::to_owned).collect()
    }

    /// What reached the server and what it executed since the last call.
    pub fn take(&mut self) -> (Vec<Vec<u8>>, Vec<Exec>) {
        let lines = self.lines();
        let fresh = lines.get(self.consumed..).unwrap_or_default().to_vec();
        self.consumed = lines.len();
        let mut received = Vec::new();
        let mut executed = Vec::new();
        for line in fresh {
            let entry: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("the record has a bad line ({e}): {line}"));
            match entry["t"].as_str() {
                Some("recv") => {
                    let raw = entry["raw"].as_str().unwrap_or_default();
                    // Written as latin-1: every char is one byte.
                    received.push(raw.chars().map(|c| c as u32 as u8).collect());
                }
                Some("exec") => executed.push(Exec {
                    name: entry["name"].clone(),
                    arguments: entry["arguments"].clone(),
                    interp: entry["interp"].as_str().unwrap_or_default().to_owned(),
                }),
                _ => panic!("unknown record entry {line}"),
            }
        }
        (received, executed)
    }

    /// Waits until the record stops growing (the URL upstream handles POSTs concurrently, so
    /// a sentinel's answer does not prove that every earlier POST has been recorded).
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = self.lines().len();
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.lines().len();
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= Duration::from_millis(300) {
                return;
            }
        }
    }
}

/// What one probe saw.
#[derive(Debug, Default)]
pub struct Probe {
    /// Everything the gateway sent the client (lines, or HTTP replies).
    pub output: Vec<Vec<u8>>,
    /// Every unit that reached the server.
    pub received: Vec<Vec<u8>>,
    /// Every call the server executed.
    pub executed: Vec<Exec>,
    /// HTTP requests whose answer had not ended after [`POST_WITHIN`].
    pub timed_out: usize,
}

impl Probe {
    /// The JSON-RPC messages the client was sent (lines, JSON bodies, event-stream data).
    pub fn messages(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for unit in &self.output {
            let text = String::from_utf8_lossy(unit);
            for piece in text.lines() {
                let piece = piece.strip_prefix("data: ").unwrap_or(piece);
                if let Ok(v) = serde_json::from_str::<Value>(piece) {
                    out.push(v);
                }
            }
        }
        out
    }

    /// The error codes the client got for request `id`.
    pub fn error_codes(&self, id: &Value) -> Vec<i64> {
        self.messages()
            .iter()
            .filter(|m| &m["id"] == id)
            .filter_map(|m| m["error"]["code"].as_i64())
            .collect()
    }

    /// Whether any answer (result or error) for `id` reached the client.
    pub fn answered(&self, id: &Value) -> bool {
        self.messages()
            .iter()
            .any(|m| &m["id"] == id && (m.get("result").is_some() || m.get("error").is_some()))
    }

    /// Whether `marker` reached the server in any unit.
    pub fn reached_server(&self, marker: &str) -> bool {
        self.received
            .iter()
            .any(|unit| String::from_utf8_lossy(unit).contains(marker))
    }

    /// The hidden tool names the client was shown, in any spelling.
    pub fn leaked(&self) -> Vec<String> {
        let mut found = Vec::new();
        for unit in &self.output {
            let text = unescaped(unit);
            for name in HIDDEN {
                if text.contains(name) {
                    found.push(format!("{name} in {}", preview(unit)));
                }
            }
        }
        found
    }

    /// Executed calls that `allowed` does not accept.
    pub fn forbidden(&self, allowed: impl Fn(&str, &Value) -> bool) -> Vec<String> {
        self.executed
            .iter()
            .filter(|e| !allowed(e.name.as_str().unwrap_or("<not a string>"), &e.arguments))
            .map(|e| {
                let call = format!("{} {}", e.name, e.arguments);
                format!(
                    "{} (parser keeping the {} key)",
                    preview(call.as_bytes()),
                    e.interp
                )
            })
            .collect()
    }

    /// What the client was sent, cut short for a failure message.
    pub fn summary(&self) -> String {
        let all: Vec<String> = self.output.iter().map(|u| preview(u)).collect();
        preview(all.join(" | ").as_bytes())
    }
}

/// Text with every `\uXXXX` escape decoded (lone surrogates become U+FFFD), so a name spelled
/// with escapes is still found.
pub fn unescaped(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut rest = &*text;
    while let Some(at) = rest.find("\\u") {
        out.push_str(&rest[..at]);
        let hex = rest.get(at + 2..at + 6);
        match hex.and_then(|h| u32::from_str_radix(h, 16).ok()) {
            Some(code) => {
                out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                rest = &rest[at + 6..];
            }
            None => {
                out.push_str("\\u");
                rest = &rest[at + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The start of a unit, for messages.
pub fn preview(unit: &[u8]) -> String {
    let text = String::from_utf8_lossy(&unit[..unit.len().min(300)]).into_owned();
    if unit.len() > 300 {
        format!("{text}… ({} bytes)", unit.len())
    } else {
        text
    }
}

/// The failures of many variants, reported together so one run names every variant that
/// gets through.
#[derive(Debug, Default)]
pub struct Failures(Vec<String>);

impl Failures {
    pub fn check(&mut self, variant: &str, what: &str, problems: Vec<String>) {
        for p in problems {
            self.0.push(format!("[{variant}] {what}: {p}"));
        }
    }

    pub fn expect(&mut self, variant: &str, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(format!("[{variant}] {}", what()));
        }
    }

    pub fn assert_none(&self) {
        assert!(
            self.0.is_empty(),
            "{} failure(s):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// A `tools/call` request line.
pub fn call(id: &str, tool: &str, args: Value) -> Vec<u8> {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#)
        .into_bytes()
}

/// A `tools/list` request line whose `_meta` steers the recording server.
pub fn list(id: &str, meta: Value) -> Vec<u8> {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list","params":{{"_meta":{meta}}}}}"#)
        .into_bytes()
}

/// The audit log's decisions and the events' calls at the end of a test.
#[derive(Debug)]
pub struct Evidence {
    pub audit: Vec<Value>,
    pub events: Vec<CallRecord>,
}

impl Evidence {
    /// Every decision has its audit record and its event, naming the same tool, verdict and
    /// arguments.
    pub fn assert_audit_matches_events(&self) {
        let events: BTreeMap<&str, &CallRecord> = self
            .events
            .iter()
            .map(|r| (r.call.call_id.as_str(), r))
            .collect();
        let mut problems = Vec::new();
        for record in &self.audit {
            let id = record["call_id"].as_str().unwrap_or_default();
            match events.get(id) {
                None => problems.push(format!("audit record without event: {record}")),
                Some(event) => {
                    let verdict = serde_json::to_value(event.call.decision).unwrap_or_default();
                    if record["tool"] != event.call.tool.as_str() || record["decision"] != verdict {
                        problems.push(format!(
                            "audit {record} disagrees with event {:?}",
                            event.call
                        ));
                    }
                }
            }
        }
        let audited: Vec<&str> = self
            .audit
            .iter()
            .filter_map(|r| r["call_id"].as_str())
            .collect();
        for record in &self.events {
            if !audited.contains(&record.call.call_id.as_str()) {
                problems.push(format!("event without audit record: {:?}", record.call));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// `(tool, verdict)` of every decision whose arguments carry `"tag": tag`, sorted.
    pub fn decisions(&self, tag: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .audit
            .iter()
            .filter(|r| r["args"]["tag"] == tag)
            .map(|r| {
                (
                    r["tool"].as_str().unwrap_or_default().to_owned(),
                    r["decision"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Checks the decisions of every tag in `expected` (tag → `(tool, verdict)`s).
    pub fn check_decisions(&self, failures: &mut Failures, expected: &[(&str, Vec<(&str, &str)>)]) {
        for (tag, want) in expected {
            let mut want: Vec<(String, String)> = want
                .iter()
                .map(|(t, v)| ((*t).to_owned(), (*v).to_owned()))
                .collect();
            want.sort();
            let got = self.decisions(tag);
            failures.expect(tag, got == want, || {
                format!("decisions {got:?}, expected {want:?}")
            });
        }
    }
}

/// The decision records of an audit log.
fn audit_decisions(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "decision")
        .collect()
}

/// The calls in the snapshot a new operator of the gateway discovered in `run_dir` gets.
fn event_calls(run_dir: &Path) -> Vec<CallRecord> {
    let entry = wait_discovery(run_dir, String::new);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the events client");
    runtime.block_on(async { operator(&entry).await.1.snapshot.calls })
}

/// Reads the audit log until it holds as many decisions as the events name (it is written
/// out every few milliseconds by a thread of its own).
fn evidence(audit: &Path, events: Vec<CallRecord>) -> Evidence {
    let deadline = Instant::now() + ANSWER_WITHIN;
    loop {
        let audit = audit_decisions(audit);
        if audit.len() >= events.len() || Instant::now() > deadline {
            return Evidence { audit, events };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child's stdout as byte lines, read on a thread of its own.
fn byte_lines(output: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(output);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The recording server's command line (stdio).
fn recording_server(record: &Path) -> Vec<String> {
    vec![
        python().display().to_string(),
        e2e_script("recording_server.py").display().to_string(),
        record.display().to_string(),
    ]
}

/// `toolgate wrap` in front of the recording server, written to as raw bytes.
pub struct Wrap {
    pub dir: tempfile::TempDir,
    child: Child,
    stdin: Option<ChildStdin>,
    out: mpsc::Receiver<Vec<u8>>,
    pub record: Record,
    sentinels: u64,
}

impl Wrap {
    /// Starts `wrap` with `policy` and `extra` options.
    pub fn start(policy: &str, extra: &[&str]) -> Wrap {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("policy.json"), policy).expect("write the policy");
        private_dir(&path("run"));
        let mut command = Command::new(toolgate());
        command
            .arg("wrap")
            .arg("--policy")
            .arg(path("policy.json"))
            .arg("--audit")
            .arg(path("audit.jsonl"))
            .args(["--audit-args", "full", "--grant", "attacker"])
            .args(["--counters", "memory"])
            .args(extra)
            .arg("--")
            .args(recording_server(&path("record.jsonl")))
            .env("XDG_RUNTIME_DIR", path("run"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(path("stderr.log")).expect("create the log"));
        let mut child = command.spawn().expect("start toolgate wrap");
        let stdin = child.stdin.take();
        let out = byte_lines(child.stdout.take().expect("wrap's stdout"));
        let record = Record::new(path("record.jsonl"));
        Wrap {
            dir,
            child,
            stdin,
            out,
            record,
            sentinels: 0,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Writes raw bytes on the gateway's stdin.
    pub fn write(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).expect("write to wrap");
        stdin.flush().expect("flush wrap's stdin");
    }

    /// The next line the client is sent; fails after `within`.
    pub fn next_line(&self, within: Duration, waiting_for: &str) -> Vec<u8> {
        self.out.recv_timeout(within).unwrap_or_else(|_| {
            panic!(
                "waited {within:?} for {waiting_for}; gateway log:\n{}",
                self.log()
            )
        })
    }

    /// The next line the client is sent, if one comes within `within` (`None` also once the
    /// gateway has exited).
    pub fn try_next_line(&self, within: Duration) -> Option<Vec<u8>> {
        self.out.recv_timeout(within).ok()
    }

    /// Sends `lines` (each followed by a newline), then a sentinel `ping`, and returns what
    /// the client was sent up to the sentinel's answer and what reached the server.
    pub fn probe(&mut self, lines: &[Vec<u8>]) -> Probe {
        for line in lines {
            let mut bytes = line.clone();
            bytes.push(b'\n');
            self.write(&bytes);
        }
        self.sentinels += 1;
        let id = format!("sentinel-{}", self.sentinels);
        self.write(
            format!("{{\"jsonrpc\":\"2.0\",\"id\":\"{id}\",\"method\":\"ping\"}}\n").as_bytes(),
        );
        let mut output = Vec::new();
        loop {
            let line = self.next_line(ANSWER_WITHIN, &format!("the answer to {id}"));
            let done = serde_json::from_slice::<Value>(&line).is_ok_and(|m| m["id"] == id.as_str());
            if done {
                break;
            }
            output.push(line);
        }
        let (received, executed) = self.record.take();
        Probe {
            output,
            received,
            executed,
            timed_out: 0,
        }
    }

    /// The audit log and the events, then the gateway is stopped (stdin closed).
    pub fn finish(mut self) -> Evidence {
        let events = event_calls(&self.dir.path().join("run"));
        drop(self.stdin.take());
        crate::support::wait_exit(&mut self.child);
        evidence(&self.dir.path().join("audit.jsonl"), events)
    }
}

impl Drop for Wrap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP reply, its body de-chunked.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The answer had not ended after [`POST_WITHIN`] (the body is what came until then).
    pub timed_out: bool,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size.filter(|s| *s > 0) else {
            return out;
        };
        let start = end + 2;
        let stop = (start + size).min(body.len());
        out.extend_from_slice(&body[start..stop]);
        body = body.get(stop + 2..).unwrap_or_default();
    }
}

/// How long one POST may take before its variant counts as unanswered.
pub const POST_WITHIN: Duration = Duration::from_secs(20);

/// A session's GET event stream, as raw bytes.
pub struct GetStream {
    rx: mpsc::Receiver<Vec<u8>>,
}

impl GetStream {
    /// Everything received so far, waiting until nothing more came for a moment (what is
    /// checked is an absence, so some window is needed; a longer one only slows the test).
    pub fn drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Ok(bytes) = self.rx.recv_timeout(Duration::from_millis(500)) {
            out.extend_from_slice(&bytes);
        }
        out
    }
}

/// The upstreams `serve` fronts in these tests: `s`, the recording server over stdio (one
/// process per session), and `u`, the recording server over Streamable HTTP.
pub const UPSTREAMS: [&str; 2] = ["s", "u"];

/// `toolgate serve` in front of the recording server, spoken to with raw HTTP.
pub struct Serve {
    // Declared first, so the gateway stops before the server behind it.
    gateway: running::Serve,
    _url_server: Stopped,
    /// Where the recording server writes, apart from the gateway's own files.
    _record_dir: tempfile::TempDir,
    pub record: Record,
    sentinels: u64,
}

impl Serve {
    pub fn start(policy: &str, extra: &[&str]) -> Serve {
        let record_dir = tempfile::tempdir().expect("a temp dir");
        let record_path = record_dir.path().join("record.jsonl");

        let mut url_server = Command::new(python())
            .arg(e2e_script("recording_server.py"))
            .arg(&record_path)
            .arg("--http")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the recording server over HTTP");
        let stderr = url_server.stderr.take().expect("its stderr");
        let url_server = Stopped(url_server);
        let mut first = String::new();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let _ = reader.read_line(&mut first);
            let _ = tx.send(first);
            // Keep draining, so the server never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let port = rx
            .recv_timeout(ANSWER_WITHIN)
            .ok()
            .and_then(|l| l.trim().strip_prefix("listening ")?.parse::<u16>().ok())
            .expect("the recording server announces its port");

        let command = recording_server(&record_path);
        let extra: Vec<&str> = ["--audit-args", "full"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let gateway = running::Serve::start(running::Setup {
            policy,
            servers: json!({
                "s": {"command": command[0], "args": command[1..]},
                "u": {"url": format!("http://127.0.0.1:{port}/mcp")},
            }),
            grants: &["attacker"],
            extra: &extra,
            ..running::Setup::default()
        });
        Serve {
            gateway,
            _url_server: url_server,
            _record_dir: record_dir,
            record: Record::new(record_path),
            sentinels: 0,
        }
    }

    pub fn pid(&self) -> u32 {
        self.gateway.pid()
    }

    pub fn log(&self) -> String {
        self.gateway.log()
    }

    /// One raw POST to `/mcp/<server>` with the token, JSON headers and `session`.
    pub fn post(&self, server: &str, session: Option<&str>, body: &[u8]) -> Reply {
        self.post_watching(server, session, body, None)
    }

    /// Like [`Serve::post`], telling `watch.1` once the answer so far contains `watch.0`
    /// (for a request whose stream carries something the test must react to).
    pub fn post_watching(
        &self,
        server: &str,
        session: Option<&str>,
        body: &[u8],
        watch: Option<(&str, mpsc::Sender<()>)>,
    ) -> Reply {
        let started = Instant::now();
        let mut head = format!(
            "POST /mcp/{server} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
            self.gateway.addr,
            self.gateway.tokens[0],
            body.len()
        );
        if let Some(session) = session {
            head.push_str(&format!("Mcp-Session-Id: {session}\r\n"));
        }
        head.push_str("\r\n");
        let mut stream = TcpStream::connect(self.gateway.addr).expect("connect to serve");
        // Shorter than a test's patience: an answer that never comes fails one variant, not
        // the whole run.
        stream
            .set_read_timeout(Some(POST_WITHIN))
            .expect("a read timeout");
        stream
            .set_write_timeout(Some(POST_WITHIN))
            .expect("a write timeout");
        stream.write_all(head.as_bytes()).expect("send the head");
        // The body may be refused before it is all read: a failed write is the answer's to tell.
        let _ = stream.write_all(body);
        let mut raw = Vec::new();
        let mut watch = watch;
        let mut buf = [0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
            if let Some((needle, _)) = &watch
                && String::from_utf8_lossy(&raw).contains(needle)
                && let Some((_, tx)) = watch.take()
            {
                let _ = tx.send(());
            }
        }
        let timed_out = started.elapsed() >= POST_WITHIN;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(raw.len());
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let body = raw.get(split + 4..).unwrap_or_default();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_vec()
        };
        Reply {
            status,
            headers,
            body,
            timed_out,
        }
    }

    /// Opens the GET event stream of `session`, read on a thread of its own.
    pub fn open_stream(&self, server: &str, session: &str) -> GetStream {
        let mut stream = TcpStream::connect(self.gateway.addr).expect("connect to serve");
        let head = format!(
            "GET /mcp/{server} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {session}\r\n\r\n",
            self.gateway.addr, self.gateway.tokens[0]
        );
        stream.write_all(head.as_bytes()).expect("send the GET");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        GetStream { rx }
    }

    /// Opens an MCP session on `server`; returns its id.
    pub fn initialize(&self, server: &str) -> String {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "attacker", "version": "1"}}});
        let reply = self.post(server, None, init.to_string().as_bytes());
        assert_eq!(
            reply.status,
            200,
            "initialize on {server}: {}; log:\n{}",
            String::from_utf8_lossy(&reply.body),
            self.log()
        );
        let session = reply
            .header("mcp-session-id")
            .expect("a session id")
            .to_owned();
        let done = self.post(
            server,
            Some(&session),
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        );
        assert_eq!(done.status, 202, "{}", String::from_utf8_lossy(&done.body));
        session
    }

    /// POSTs each of `bodies`, then a sentinel `ping` on the same session; returns the
    /// replies (status line first) and what reached the server.
    pub fn probe(&mut self, server: &str, session: Option<&str>, bodies: &[Vec<u8>]) -> Probe {
        let mut output = Vec::new();
        let mut timed_out = 0;
        for body in bodies {
            let reply = self.post(server, session, body);
            if reply.timed_out {
                timed_out += 1;
            }
            let mut unit = format!("HTTP {}\n", reply.status).into_bytes();
            unit.extend_from_slice(&reply.body);
            output.push(unit);
        }
        self.sentinels += 1;
        let id = format!("sentinel-{}", self.sentinels);
        let ping = format!(r#"{{"jsonrpc":"2.0","id":"{id}","method":"ping"}}"#);
        let reply = self.post(server, session, ping.as_bytes());
        assert_eq!(
            reply.status,
            200,
            "the sentinel {id}: {}; log:\n{}",
            String::from_utf8_lossy(&reply.body),
            self.log()
        );
        if server == "u" {
            self.record.settle();
        }
        let (received, executed) = self.record.take();
        Probe {
            output,
            received,
            executed,
            timed_out,
        }
    }

    /// Waits until the audit log holds a decision for a call tagged `tag`.
    pub fn wait_decided(&self, tag: &str) {
        let audit = self.gateway.dir.path().join("audit.jsonl");
        let what = format!("a decision for {tag} in the audit log");
        crate::support::wait::wait_for(&what, ANSWER_WITHIN, || {
            if audit_decisions(&audit)
                .iter()
                .any(|r| r["args"]["tag"] == tag)
            {
                Ok(())
            } else {
                Err(format!("log:\n{}", self.log()))
            }
        });
    }

    /// The audit log and the events (the gateway keeps running until dropped).
    pub fn finish(self) -> Evidence {
        let events = event_calls(self.gateway.dir.path());
        evidence(&self.gateway.dir.path().join("audit.jsonl"), events)
    }
}
