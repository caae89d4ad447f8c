//! Many calls in flight through the real `toolgate wrap`: the agent's output carries both the
//! gateway's own refusals and the server's answers, and the server's requests to the agent
//! and the agent's answers to them cross the calls going the other way; every line must
//! still arrive whole, once, and only where it belongs.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use support::ANSWER_WITHIN;

/// Answers each call with its own `n`, asks the agent for its roots before answering every
/// tenth, and records what it executed and which of its requests the agent answered.
const SERVER: &str = r#"
import sys, json
executed = open("executed.txt", "a", buffering=1)
answered = open("answered.txt", "a", buffering=1)
for raw in sys.stdin:
    m = json.loads(raw)
    if "method" not in m:
        answered.write(str(m["id"]) + "\n")
        continue
    if "id" not in m:
        continue
    result = {}
    if m["method"] == "tools/call":
        n = m["params"]["arguments"]["n"]
        executed.write("%d\n" % n)
        if n % 10 == 0:
            sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": "roots-%d" % n, "method": "roots/list"}) + "\n")
        result = {"content": [{"type": "text", "text": str(n)}]}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": result}) + "\n")
    sys.stdout.flush()
"#;

const POLICY: &str = r#"{"version":"1","default":"deny","tools":{"echo":{}}}"#;

/// The same tool with a limit no call reaches: every allowed call is admitted by the counter
/// store's thread (which writes the line itself of a call alone in flight: the hand-over;
/// the first call of a burst here, the rest the runtime's way).
const LIMITED: &str = r#"{"version":"1","default":"deny","tools":{"echo":{"limits":[
    {"counter":"c","window":"hour","max":100000,"scope":"global"}]}}}"#;

const CALLS: u64 = 3000;
const WINDOW: u64 = 500;

/// Every third call is to a tool the policy denies.
fn denied(n: u64) -> bool {
    n % 3 == 1
}

#[test]
fn many_calls_in_flight_each_get_one_whole_answer_and_server_requests_cross_both_ways() {
    many_calls_in_flight(POLICY, "memory");
}

#[test]
fn many_limited_calls_on_the_sqlite_store_each_get_one_whole_answer_decided_first() {
    many_calls_in_flight(LIMITED, "sqlite:counters.sqlite3");
}

fn many_calls_in_flight(policy: &str, counters: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.json"), policy).unwrap();
    std::fs::write(dir.path().join("server.py"), SERVER).unwrap();
    let mut child = Command::new(support::toolgate())
        .args(["wrap", "--policy", "policy.json", "--audit", "audit.jsonl"])
        .args(["--no-events", "--counters", counters, "--"])
        .arg(support::peers::python())
        .arg("server.py")
        .current_dir(dir.path())
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("XDG_STATE_HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let stdin = Arc::new(Mutex::new(child.stdin.take().unwrap()));
    let stdout = support::lines::line_reader(child.stdout.take().unwrap());

    // The calls in bursts of 100 from another thread, at most WINDOW in flight (well under
    // the gateway's cap of 1,024, so none is refused for that), while this thread reads and
    // answers the server's requests on the same stdin.
    let answered_calls = Arc::new(AtomicU64::new(0));
    let writer = {
        let stdin = stdin.clone();
        let answered_calls = answered_calls.clone();
        std::thread::spawn(move || {
            for chunk in (1..=CALLS).collect::<Vec<_>>().chunks(100) {
                let sent = chunk[0] - 1;
                support::wait::wait_until(
                    "room in the window of calls in flight",
                    ANSWER_WITHIN,
                    || sent - answered_calls.load(Ordering::Acquire) + 100 <= WINDOW,
                );
                let mut bytes = Vec::new();
                for &n in chunk {
                    let tool = if denied(n) { "nope" } else { "echo" };
                    writeln!(
                        bytes,
                        r#"{{"jsonrpc":"2.0","id":{n},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"n":{n}}}}}}}"#
                    )
                    .unwrap();
                }
                let mut stdin = stdin.lock().unwrap();
                stdin.write_all(&bytes).unwrap();
                stdin.flush().unwrap();
            }
        })
    };

    let mut answers: HashMap<u64, Value> = HashMap::new();
    let mut roots_asked = HashSet::new();
    while (answers.len() as u64) < CALLS {
        let line = stdout.recv_timeout(ANSWER_WITHIN).unwrap_or_else(|_| {
            panic!(
                "{} of {CALLS} calls answered, then nothing within {ANSWER_WITHIN:?}; stderr:\n{}",
                answers.len(),
                std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
            )
        });
        let message: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a cut or mixed line ({e}): {line}"));
        if message["method"] == "roots/list" {
            let id = message["id"]
                .as_str()
                .expect("the server's request id")
                .to_owned();
            assert!(
                roots_asked.insert(id.clone()),
                "{id} reached the agent twice"
            );
            let mut stdin = stdin.lock().unwrap();
            writeln!(
                stdin,
                r#"{{"jsonrpc":"2.0","id":"{id}","result":{{"roots":[]}}}}"#
            )
            .unwrap();
            stdin.flush().unwrap();
            continue;
        }
        let id = message["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("not a call's answer: {line}"));
        assert!(
            answers.insert(id, message).is_none(),
            "call {id} was answered twice"
        );
        answered_calls.store(answers.len() as u64, Ordering::Release);
    }
    writer.join().unwrap();

    for n in 1..=CALLS {
        let answer = &answers[&n];
        let text = answer["result"]["content"][0]["text"].as_str();
        if denied(n) {
            assert_ne!(
                text,
                Some(n.to_string().as_str()),
                "denied call {n} was executed: {answer}"
            );
        } else {
            assert_eq!(text, Some(n.to_string().as_str()), "call {n}: {answer}");
        }
    }
    let allowed: Vec<u64> = (1..=CALLS).filter(|&n| !denied(n)).collect();
    let asked: HashSet<String> = allowed
        .iter()
        .filter(|&&n| n % 10 == 0)
        .map(|n| format!("roots-{n}"))
        .collect();
    assert_eq!(
        roots_asked, asked,
        "the server's requests that reached the agent"
    );

    // The agent is done: the server's input closes, it exits, and the gateway with it.
    drop(stdin);
    let status = support::wait_exit(&mut child);
    assert!(status.success(), "wrap exited with {status}");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let mut executed: Vec<u64> = read("executed.txt")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    executed.sort_unstable();
    assert_eq!(executed, allowed, "what the server executed");
    let answered: HashSet<String> = read("answered.txt").lines().map(str::to_owned).collect();
    assert_eq!(
        answered, asked,
        "the agent's answers that reached the server"
    );
    let audit = read("audit.jsonl");
    let audited = audit.lines().count() as u64;
    assert!(
        audited >= CALLS,
        "{audited} audit records for {CALLS} calls"
    );
    // Each call's decision is recorded before its outcome, and every allowed call has both.
    let mut decided = HashSet::new();
    let mut outcomes = 0;
    for line in audit.lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let call_id = || record["call_id"].as_str().unwrap().to_owned();
        match record["kind"].as_str() {
            Some("decision") => assert!(decided.insert(call_id()), "decided twice: {line}"),
            Some("outcome") => {
                assert!(
                    decided.contains(&call_id()),
                    "an outcome before its decision: {line}"
                );
                outcomes += 1;
            }
            _ => {}
        }
    }
    assert_eq!(outcomes, allowed.len(), "an outcome for every allowed call");
}
