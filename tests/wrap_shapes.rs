//! Message shapes, ids and sizes through the real `toolgate wrap`, as raw bytes: an agent
//! writing whatever JSON-RPC it likes, and a server that records every line it is given and
//! answers every request it can find. After each probe, the server has executed nothing the
//! policy denies, and every decided call has its audit record.

mod support;

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;

use serde_json::{Value, json};

use support::ANSWER_WITHIN;
use support::memory::peak_rss;

/// Records each line it reads (raw) to the file named by argv[1] and answers every request
/// it finds, at the top or inside a batch, as a permissive server would: it "executes"
/// whatever reaches it.
const RECORDING_SERVER: &str = r#"
import sys, json
record = open(sys.argv[1], "ab", buffering=0)
for raw in sys.stdin.buffer:
    record.write(raw)
    try:
        msg = json.loads(raw)
    except Exception:
        continue
    for m in (msg if isinstance(msg, list) else [msg]):
        if isinstance(m, dict) and "method" in m and "id" in m:
            if m["method"] == "tools/list":
                result = {"tools": [{"name": "echo"}, {"name": "secret_tool"}]}
            else:
                result = {"content": [{"type": "text", "text": "executed"}]}
            sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": result}) + "\n")
            sys.stdout.flush()
"#;

const POLICY: &str = r#"{"version":"1","default":"deny","hide":["secret_*"],"tools":{"echo":{}}}"#;

struct Wrap {
    dir: tempfile::TempDir,
    child: Child,
    stdin: ChildStdin,
    stdout: Receiver<String>,
}

impl Wrap {
    fn start(extra: &[&str]) -> Wrap {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.json"), POLICY).unwrap();
        std::fs::write(dir.path().join("server.py"), RECORDING_SERVER).unwrap();
        let mut child = Command::new(support::toolgate())
            .args(["wrap", "--policy", "policy.json", "--audit", "audit.jsonl"])
            .args(["--no-events", "--counters", "memory"])
            .args(extra)
            .arg("--")
            .arg(support::peers::python())
            .args(["server.py", "recorded.jsonl"])
            .current_dir(dir.path())
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("XDG_STATE_HOME", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = support::lines::line_reader(child.stdout.take().unwrap());
        Wrap {
            dir,
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
    }

    fn recv(&self, waiting_for: &str) -> Value {
        let line = self.stdout.recv_timeout(ANSWER_WITHIN).unwrap_or_else(|_| {
            panic!(
                "no answer from the gateway ({waiting_for}); stderr:\n{}",
                std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
            )
        });
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// A ping through to the server and back: everything sent before it has been handled.
    fn round_trip(&mut self, id: u64) {
        self.send(format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#).as_bytes());
        let answer = self.recv("the ping's answer");
        assert_eq!(answer["id"], id, "{answer}");
        assert_eq!(answer["result"]["content"][0]["text"], "executed");
    }

    /// Every line the server read.
    fn recorded(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("recorded.jsonl")).unwrap_or_default()
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
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

/// Every `tools/call` anywhere in `value` (nested in batches, wrappers, error data...), by
/// name; the arguments of a call are data, not calls.
fn calls_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| calls_in(v, out)),
        Value::Object(map) => {
            if map.get("method").and_then(Value::as_str) == Some("tools/call") {
                let name = map
                    .get("params")
                    .and_then(|p| p.get("name"))
                    .map_or_else(|| "<none>".to_owned(), |n| n.to_string());
                out.push(name);
                return;
            }
            map.values().for_each(|v| calls_in(v, out));
        }
        _ => {}
    }
}

/// The server read only valid JSON lines, and no call but `echo`.
fn assert_server_ran_nothing_denied(wrap: &Wrap) {
    let recorded = wrap.recorded();
    let mut calls = Vec::new();
    for line in recorded.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let value: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!(
                "the server was given a line that is not JSON ({e}): {}",
                String::from_utf8_lossy(line)
            )
        });
        calls_in(&value, &mut calls);
    }
    assert!(
        calls.iter().all(|c| c == "\"echo\""),
        "the server was given calls the policy denies: {calls:?}"
    );
}

#[test]
fn the_issues_nested_batch_and_its_variants_never_reach_the_server() {
    let mut wrap = Wrap::start(&[]);
    let delete =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_file"}}"#;
    // (line, answers it gets)
    let probes: Vec<(String, usize)> = vec![
        (format!("[[{delete}]]"), 1),
        (format!("[[[{delete}]]]"), 1),
        (format!("[{delete},[{delete}],\"{{}}\",7]"), 4),
        (
            format!(r#"{{"jsonrpc":"2.0","id":2,"result":[{delete}]}}"#),
            0,
        ),
        (
            format!(r#"{{"jsonrpc":"2.0","id":3,"result":{{"x":{delete}}}}}"#),
            0,
        ),
        (
            format!(
                r#"{{"jsonrpc":"2.0","id":4,"error":{{"code":1,"message":"m","data":[{delete}]}}}}"#
            ),
            0,
        ),
        (
            format!("[{{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{delete}}}]"),
            0,
        ),
        (format!("\"{}\"", delete.replace('"', "\\\"")), 1),
    ];
    for (n, (line, answers)) in probes.iter().enumerate() {
        wrap.send(line.as_bytes());
        for _ in 0..*answers {
            let answer = wrap.recv(line);
            let refused = answer["error"]["code"] == -32600 || answer["result"]["isError"] == true;
            assert!(refused, "{line}: {answer}");
        }
        wrap.round_trip(100 + n as u64);
    }
    assert_server_ran_nothing_denied(&wrap);
    // The one call that was a message of its own was decided, and audited (the log is
    // flushed by a thread of its own: wait for it).
    let audited = support::wait::wait_for("a decision in the audit log", ANSWER_WITHIN, || {
        let audited = wrap.audit();
        if audited.iter().any(|r| r["kind"] == "decision") {
            Ok(audited)
        } else {
            Err(format!("audited: {audited:?}"))
        }
    });
    let decisions: Vec<&Value> = audited.iter().filter(|r| r["kind"] == "decision").collect();
    assert_eq!(decisions.len(), 1, "{audited:?}");
    assert_eq!(decisions[0]["tool"], "delete_file");
    assert_eq!(decisions[0]["decision"], "deny");
}

#[test]
fn text_parsers_could_read_differently_never_reaches_the_server() {
    let mut wrap = Wrap::start(&[]);
    let probes: Vec<Vec<u8>> = vec![
        br#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"delete_file"}}"#.to_vec(),
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"delete_file"}}"#.to_vec(),
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"},"params":{"name":"delete_file"}}"#.to_vec(),
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"o":{"k":1,"k":2}}}}"#.to_vec(),
        b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"delete_file\"}}".to_vec(),
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_file"}}"#.to_vec(),
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_file\ud800"}}"#.to_vec(),
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"delete_file\",\"x\":\"\xc0\xaf\"}}".to_vec(),
    ];
    for (n, line) in probes.iter().enumerate() {
        wrap.send(line);
        let answer = wrap.recv(&String::from_utf8_lossy(line));
        assert_eq!(
            answer["error"]["code"],
            -32700,
            "{}: {answer}",
            String::from_utf8_lossy(line)
        );
        wrap.round_trip(100 + n as u64);
    }
    // Ids that are not strings or integers: refused, never forwarded.
    for (n, id) in [
        "6.0",
        "1e1",
        "true",
        "null",
        "{}",
        "[1]",
        "9007199254740993",
    ]
    .iter()
    .enumerate()
    {
        wrap.send(
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"delete_file"}}}}"#)
                .as_bytes(),
        );
        let answer = wrap.recv(id);
        assert_eq!(answer["error"]["code"], -32600, "{id}: {answer}");
        wrap.round_trip(200 + n as u64);
    }
    assert_server_ran_nothing_denied(&wrap);
    assert!(
        wrap.audit().iter().all(|r| r["kind"] != "decision"),
        "nothing was decided"
    );
}

#[test]
fn hidden_tools_stay_hidden_whatever_the_id() {
    let mut wrap = Wrap::start(&[]);
    for id in [r#""\u0061""#, "-0", "6", r#""b""#] {
        wrap.send(format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#).as_bytes());
        let listed = wrap.recv(id);
        assert_eq!(
            listed["result"]["tools"],
            json!([{"name":"echo"}]),
            "{id}: {listed}"
        );
    }
    // A second request with an id in flight is refused: start one that the server answers
    // only after the refusal has been written (the server answers in order).
    wrap.send(br#"[{"jsonrpc":"2.0","id":"x","method":"tools/list"},{"jsonrpc":"2.0","id":"x","method":"tools/list"}]"#);
    let first = wrap.recv("the refusal or the list");
    let second = wrap.recv("the refusal or the list");
    let (refusal, list) = if first.get("error").is_some() {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(refusal["error"]["code"], -32600, "{refusal}");
    assert_eq!(list["result"]["tools"], json!([{"name":"echo"}]), "{list}");
}

#[test]
fn an_oversized_request_is_answered_and_memory_stays_flat() {
    let mut wrap = Wrap::start(&["--max-message", "1MiB"]);
    wrap.round_trip(1);
    // The id comes first: the error names it.
    let pad = "x".repeat(3 << 20);
    wrap.send(
        format!(r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"echo","arguments":{{"t":"{pad}"}}}}}}"#)
            .as_bytes(),
    );
    let answer = wrap.recv("the oversized request's error");
    assert_eq!(answer["id"], 5, "{answer}");
    assert_eq!(answer["error"]["code"], -32600);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-message")
    );
    wrap.round_trip(2);
    let before = peak_rss(wrap.pid()).expect("the gateway's memory");
    // 256 MiB in one line: streamed past, never kept.
    let chunk = vec![b'7'; 1 << 20];
    wrap.stdin
        .write_all(br#"{"jsonrpc":"2.0","id":6,"method":"ping","params":{"n":"#)
        .unwrap();
    for _ in 0..256 {
        wrap.stdin.write_all(&chunk).unwrap();
    }
    wrap.send(b"}}");
    let answer = wrap.recv("the 256 MiB line's error");
    assert_eq!(answer["id"], 6, "{answer}");
    wrap.round_trip(3);
    let after = peak_rss(wrap.pid()).expect("the gateway's memory");
    assert!(
        after < before + (32 << 20),
        "the peak memory grew from {before} to {after} bytes for one oversized line"
    );
    let recorded = wrap.recorded();
    assert!(
        recorded.len() < 4096,
        "the server was given {} bytes",
        recorded.len()
    );
}
