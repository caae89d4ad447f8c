//! Memory stays flat through the real `toolgate wrap` when one peer stops reading while the
//! other sends maximum-size messages: the gateway's queues are bounded in bytes, so the
//! sender is pushed back (it cannot write) instead of the gateway holding every message.
//! Each test sends at most 200 messages of just under 1 MiB, on local pipes, with a deadline
//! on every wait.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::ANSWER_WITHIN;
use support::memory::peak_rss;

/// Messages each flood sends.
const FLOOD: usize = 200;
/// Padding of each flooded message: the whole line stays under `--max-message 1MiB`.
const PAD: usize = 1_000_000;
/// How much the gateway's peak memory may grow while a flood is held back: far below
/// `FLOOD` × 1 MiB, far above the 2 × 1 MiB + 64 KiB a queue may hold.
const MAX_GROWTH: u64 = 32 << 20;
/// A sender whose count has not moved for this long is taken to be pushed back.
const STILL_FOR: Duration = Duration::from_secs(2);

/// Answers `ping`. On `notifications/flood` it writes `FLOOD` large notifications to the
/// client, writing how many it got out into argv[1] after each. On `notifications/stall` it
/// stops reading its input for good and says it is alive every 100 ms instead.
const SERVER: &str = r#"
import sys, json, time
progress_path, pad, count = sys.argv[1], "x" * int(sys.argv[2]), int(sys.argv[3])
def out(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()
for raw in sys.stdin.buffer:
    msg = json.loads(raw)
    method = msg.get("method")
    if method == "ping" and "id" in msg:
        out({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
    elif method == "notifications/flood":
        for i in range(count):
            out({"jsonrpc": "2.0", "method": "notifications/message",
                 "params": {"level": "info", "data": {"n": i, "pad": pad}}})
            with open(progress_path + ".tmp", "w") as f:
                f.write(str(i + 1))
            import os
            os.replace(progress_path + ".tmp", progress_path)
    elif method == "notifications/stall":
        n = 0
        while True:
            out({"jsonrpc": "2.0", "method": "notifications/message",
                 "params": {"level": "info", "data": {"alive": n}}})
            n += 1
            time.sleep(0.1)
"#;

const POLICY: &str = r#"{"version":"1","default":"deny","tools":{}}"#;

struct Wrap {
    dir: tempfile::TempDir,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Wrap {
    fn start() -> Wrap {
        Wrap::with_policy(POLICY)
    }

    fn with_policy(policy: &str) -> Wrap {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.json"), policy).unwrap();
        std::fs::write(dir.path().join("server.py"), SERVER).unwrap();
        let mut child = Command::new(support::toolgate())
            .args(["wrap", "--policy", "policy.json", "--audit", "audit.jsonl"])
            .args([
                "--no-events",
                "--counters",
                "memory",
                "--max-message",
                "1MiB",
            ])
            .arg("--")
            .arg(support::peers::python())
            .args([
                "server.py",
                "progress",
                &PAD.to_string(),
                &FLOOD.to_string(),
            ])
            .current_dir(dir.path())
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("XDG_STATE_HOME", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        Wrap {
            dir,
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still ours");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// A ping to the server and its answer, read here (before any reader thread exists).
    fn ping(&mut self, id: u64) {
        self.send(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#));
        let mut line = String::new();
        let read = self
            .stdout
            .as_mut()
            .expect("stdout still ours")
            .read_line(&mut line);
        assert!(
            read.is_ok_and(|n| n > 0),
            "no answer to the ping; stderr:\n{}",
            self.stderr()
        );
        let answer: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(answer["id"], id, "{answer}");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Wrap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `count` reaches `all` or stops moving for [`STILL_FOR`]; returns it.
fn until_pushed_back_or_done(what: &str, all: usize, count: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + ANSWER_WITHIN;
    let mut last = count();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = count();
        if now >= all {
            return now;
        }
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= STILL_FOR {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what} kept moving for {ANSWER_WITHIN:?} ({now} of {all})"
        );
    }
}

fn read_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_server_flooding_a_client_that_does_not_read_is_pushed_back_and_memory_stays_flat() {
    let mut wrap = Wrap::start();
    wrap.ping(1);
    let before = peak_rss(wrap.pid()).expect("the gateway's memory");
    wrap.send(r#"{"jsonrpc":"2.0","method":"notifications/flood"}"#);
    let progress = wrap.dir.path().join("progress");
    // The client reads nothing now.
    let written = until_pushed_back_or_done("the server's flood", FLOOD, || read_count(&progress));
    let after = peak_rss(wrap.pid()).expect("the gateway's memory");
    eprintln!("peak RSS {before} -> {after} bytes; {written} of {FLOOD} messages written");
    assert!(
        written < FLOOD,
        "the server wrote all {FLOOD} messages of 1 MiB to a client that reads nothing: \
         the gateway took them all"
    );
    assert!(
        after < before + MAX_GROWTH,
        "the peak memory grew from {before} to {after} bytes while {written} messages of 1 MiB \
         waited for a client that does not read"
    );

    // The client reads again: every message arrives, in order, and the gateway answers.
    let lines = support::lines::line_reader(wrap.stdout.take().expect("stdout"));
    for n in 0..FLOOD {
        let line = lines.recv_timeout(ANSWER_WITHIN).unwrap_or_else(|_| {
            panic!("flooded message {n} never came; stderr:\n{}", wrap.stderr())
        });
        let message: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(message["params"]["data"]["n"], n, "messages out of order");
    }
    wrap.send(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#);
    let line = lines
        .recv_timeout(ANSWER_WITHIN)
        .expect("the ping's answer after the flood");
    let answer: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(answer["id"], 2, "{answer}");
}

#[test]
fn a_client_flooding_a_server_that_does_not_read_is_pushed_back_and_memory_stays_flat() {
    let mut wrap = Wrap::start();
    wrap.ping(1);
    let lines = support::lines::line_reader(wrap.stdout.take().expect("stdout"));
    let before = peak_rss(wrap.pid()).expect("the gateway's memory");
    wrap.send(r#"{"jsonrpc":"2.0","method":"notifications/stall"}"#);
    let alive = |within: Duration| -> Option<u64> {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let line = lines.recv_timeout(left).ok()?;
            let message: Value = serde_json::from_str(&line).unwrap();
            if let Some(n) = message["params"]["data"]["alive"].as_u64() {
                return Some(n);
            }
        }
        None
    };
    alive(ANSWER_WITHIN).expect("the server's first note after it stopped reading");

    let sent = Arc::new(AtomicUsize::new(0));
    let mut stdin = wrap.stdin.take().expect("stdin");
    let writer = {
        let sent = sent.clone();
        let pad = "x".repeat(PAD);
        std::thread::spawn(move || {
            for n in 0..FLOOD {
                let line = format!(
                    r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"n":{n},"pad":"{pad}"}}}}"#
                );
                // Blocks while the gateway pushes back; fails once the test kills it.
                if stdin.write_all(line.as_bytes()).is_err() || stdin.write_all(b"\n").is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let written =
        until_pushed_back_or_done("the client's flood", FLOOD, || sent.load(Ordering::SeqCst));
    let after = peak_rss(wrap.pid()).expect("the gateway's memory");
    eprintln!("peak RSS {before} -> {after} bytes; {written} of {FLOOD} messages written");
    assert!(
        written < FLOOD,
        "the client wrote all {FLOOD} messages of 1 MiB to a server that reads nothing: the \
         gateway took them all"
    );
    assert!(
        after < before + MAX_GROWTH,
        "the peak memory grew from {before} to {after} bytes while {written} messages of 1 MiB \
         waited for a server that does not read"
    );
    // The other direction still flows: the server's notes keep reaching the client.
    while lines.try_recv().is_ok() {}
    assert!(
        alive(ANSWER_WITHIN).is_some(),
        "the server's notes stopped reaching the client while its input was full; stderr:\n{}",
        wrap.stderr()
    );
    drop(wrap);
    let _ = writer.join();
}

#[test]
fn held_calls_beyond_the_connections_byte_budget_are_denied_instead_of_held() {
    // With --max-message 1MiB a connection keeps at most 2 MiB + 64 KiB of held lines: two
    // calls of just under 1 MiB each.
    let mut wrap = Wrap::with_policy(
        r#"{"version":"1","default":"deny","approval_timeout":"10m",
            "tools":{"send":{"action":"require_approval"}}}"#,
    );
    wrap.ping(1);
    let lines = support::lines::line_reader(wrap.stdout.take().expect("stdout"));
    let pad = "x".repeat(PAD);
    for id in [10, 11, 12] {
        wrap.send(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"send","arguments":{{"pad":"{pad}"}}}}}}"#
        ));
    }
    wrap.send(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#);
    let mut answers = Vec::new();
    for _ in 0..2 {
        let line = lines.recv_timeout(ANSWER_WITHIN).unwrap_or_else(|_| {
            panic!(
                "no answer for the third held call or the ping; stderr:\n{}",
                wrap.stderr()
            )
        });
        answers.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    // The first two stay held (their answers would come first); the third is refused.
    assert_eq!(answers[0]["id"], 12, "{}", answers[0]);
    let text = answers[0].to_string();
    assert!(
        text.contains("already holds") && text.contains("denied instead of held"),
        "{text}"
    );
    assert_eq!(answers[1]["id"], 2, "{}", answers[1]);
}
