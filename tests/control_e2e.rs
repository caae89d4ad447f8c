//! Holds through the real gateway: the built `toolgate wrap` in front of
//! `@modelcontextprotocol/server-everything`, driven by the real Python `mcp` client
//! (`tests/e2e/driver.py`), resolved by operators over the real event websocket found
//! through the gateway's discovery file. Cancellation is driven with raw JSON-RPC lines,
//! since the client offers no way to cancel one call on purpose.
//!
//! The peers are installed by `scripts/setup-test-peers`; without them these tests fail.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

use serde_json::{Value, json};
use support::agent::{Agent as Client, wrap};
use support::discovery::{next_event as next, operator, wait_discovery};
use support::lines::line_reader;
use support::peers::everything;
use support::wait::within;
use support::{ANSWER_WITHIN as WITHIN, private_dir};
use toolgate::testing::control::{self, ClientError, Connection, DiscoveryEntry};
use toolgate::testing::wire::{
    ClientMsg, Event, EventKind, Hello, HoldResolved, Reply, ResolvedBy, Verdict,
};

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "approval_timeout": "10m",
  "tools": {
    "echo": { "action": "require_approval", "reason": "a person reads every echo" },
    "get-sum": { "action": "require_approval", "approval_timeout": "1s" }
  }
}"#;

/// A private directory holding the policy, the audit log, the gateway's stderr and its
/// runtime directory (`XDG_RUNTIME_DIR` of the gateway process only).
struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.json"), POLICY).unwrap();
        private_dir(&dir.path().join("run"));
        Dir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// The gateway's command line: `toolgate wrap ...` in front of server-everything.
    fn gateway(&self) -> Vec<String> {
        wrap(self.0.path(), "e2e", &[], everything())
    }

    /// Waits for the gateway's discovery file and reads it.
    fn discover(&self) -> DiscoveryEntry {
        wait_discovery(&self.path("run"), || self.log())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
    }
}

/// The real Python client talking to the server through `toolgate wrap`.
struct Agent {
    dir: Dir,
    client: Client,
}

impl Agent {
    fn start() -> Agent {
        let dir = Dir::new();
        let client = Client::stdio(
            "legacy",
            &dir.path("stderr.log"),
            &dir.gateway(),
            &[("XDG_RUNTIME_DIR", &dir.path("run"))],
        );
        Agent { dir, client }
    }

    /// Starts a call; its answer is read with [`Agent::answer`].
    fn call(&mut self, tool: &str, args: Value) {
        self.client.start_call(tool, args);
    }

    fn answer(&self) -> Value {
        self.client.answer()
    }

    fn text(answer: &Value) -> String {
        // A refusal may come as a tool error or as a JSON-RPC error; both carry the text.
        answer["texts"][0]
            .as_str()
            .or_else(|| answer["error"]["message"].as_str())
            .unwrap_or_else(|| panic!("no text in {answer}"))
            .to_owned()
    }
}

/// `toolgate wrap` run directly, the test writing raw JSON-RPC lines on its stdin.
struct RawGateway {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl RawGateway {
    fn start(dir: &Dir) -> RawGateway {
        let argv = dir.gateway();
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("XDG_RUNTIME_DIR", dir.path("run"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = line_reader(child.stdout.take().unwrap());
        RawGateway {
            child,
            stdin,
            lines,
        }
    }

    /// Writes one message without flushing.
    fn write(&mut self, msg: &Value) {
        writeln!(self.stdin, "{msg}").unwrap();
    }

    fn send(&mut self, msg: &Value) {
        self.write(msg);
        self.stdin.flush().unwrap();
    }

    /// Reads up to the response to request `id`, skipping everything before it.
    fn response_to(&self, id: u64, dir: &Dir) -> Value {
        loop {
            let line = self
                .lines
                .recv_timeout(WITHIN)
                .unwrap_or_else(|_| panic!("no response {id}; log:\n{}", dir.log()));
            let msg: Value = serde_json::from_str(&line).unwrap();
            if msg["id"] == id {
                return msg;
            }
        }
    }

    /// The `initialize` handshake, as request `id`; returns the gateway's response.
    fn initialize(&mut self, id: u64, dir: &Dir) -> Value {
        self.send(
            &json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "control-e2e", "version": "0"}}}),
        );
        let response = self.response_to(id, dir);
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        response
    }
}

impl Drop for RawGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An operator's approval of `call_id`, as command `id`.
async fn approve(conn: &mut Connection, id: u64, call_id: &str, operator: Option<&str>) -> Reply {
    let approve = ClientMsg::Approve {
        id,
        call_id: call_id.to_owned(),
        operator: operator.map(str::to_owned),
    };
    within("the reply to an approval", WITHIN, conn.request(&approve))
        .await
        .unwrap()
}

/// The id of the held call to `tool`: from the hello's open holds, or the stream.
async fn held_call(conn: &mut Connection, hello: &Hello, tool: &str) -> String {
    let open = hello.snapshot.holds.iter().find(|id| {
        hello
            .snapshot
            .calls
            .iter()
            .any(|r| r.call.call_id == *id && r.call.tool == tool)
    });
    if let Some(id) = open {
        return id.clone();
    }
    loop {
        if let EventKind::Call(call) = next(conn).await.kind
            && call.tool == tool
        {
            assert_eq!(call.decision, Verdict::Hold);
            return call.call_id.to_string();
        }
    }
}

async fn resolution_of(conn: &mut Connection, call_id: &str) -> HoldResolved {
    loop {
        if let EventKind::HoldResolved(r) = next(conn).await.kind
            && r.call_id == call_id
        {
            return r;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_approves_a_held_call_and_the_agent_gets_the_servers_answer() {
    let mut agent = Agent::start();
    let entry = agent.dir.discover();
    let wrong_token = "f".repeat(64);
    let wrong = control::connect(&entry.url, &wrong_token);
    assert!(matches!(
        within("the answer to a wrong token", WITHIN, wrong).await,
        Err(ClientError::Unauthorized(_))
    ));
    let (mut conn, hello) = operator(&entry).await;
    assert_eq!(hello.info.grant, "e2e");
    assert!(Path::new(&hello.info.policy).is_absolute());

    agent.call("echo", json!({"message": "held then approved"}));
    let call_id = held_call(&mut conn, &hello, "echo").await;
    assert!(call_id.starts_with(&format!("{}-", entry.id)));
    let reply = approve(&mut conn, 1, &call_id, Some("alice")).await;
    assert!(reply.ok, "{reply:?}");

    let answer = agent.answer();
    assert_eq!(answer["is_error"], false, "{answer}");
    assert_eq!(Agent::text(&answer), "Echo: held then approved");

    // The approval and the call's outcome are on the stream for everyone.
    let (_other, hello) = operator(&entry).await;
    let record = hello
        .snapshot
        .calls
        .iter()
        .find(|r| r.call.call_id == call_id)
        .expect("the call is in a new client's snapshot");
    let resolved = record.resolution.as_ref().expect("with its resolution");
    assert!(resolved.approved);
    assert_eq!(resolved.operator.as_deref(), Some("alice"));
    assert!(hello.snapshot.holds.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_denial_reaches_the_agent_with_its_reason() {
    let mut agent = Agent::start();
    let entry = agent.dir.discover();
    let (mut conn, hello) = operator(&entry).await;

    agent.call("echo", json!({"message": "please"}));
    let call_id = held_call(&mut conn, &hello, "echo").await;
    let deny = ClientMsg::Deny {
        id: 1,
        call_id: call_id.clone(),
        reason: Some("not during the freeze".into()),
        operator: Some("bob".into()),
    };
    let reply = within("the reply to a denial", WITHIN, conn.request(&deny))
        .await
        .unwrap();
    assert!(reply.ok, "{reply:?}");

    let answer = agent.answer();
    assert_ne!(answer["is_error"], false, "{answer}");
    assert!(
        Agent::text(&answer).contains("not during the freeze"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_nobody_answers_is_denied_at_its_timeout() {
    let mut agent = Agent::start();
    let entry = agent.dir.discover();
    let (mut conn, hello) = operator(&entry).await;

    agent.call("get-sum", json!({"a": 1, "b": 2}));
    let call_id = held_call(&mut conn, &hello, "get-sum").await;
    let resolved = resolution_of(&mut conn, &call_id).await;
    assert_eq!(resolved.by, ResolvedBy::Timeout);
    assert!(!resolved.approved);

    let answer = agent.answer();
    assert!(
        Agent::text(&answer).contains("approval timed out"),
        "{answer}"
    );
    // Too late now.
    let late = approve(&mut conn, 7, &call_id, None).await;
    assert!(!late.ok);
    assert!(late.error.unwrap().contains("already resolved"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_answer_at_once_the_first_wins_and_both_see_it() {
    let mut agent = Agent::start();
    let entry = agent.dir.discover();
    let (mut a, hello_a) = operator(&entry).await;
    let (mut b, hello_b) = operator(&entry).await;

    agent.call("echo", json!({"message": "race"}));
    let call_id = held_call(&mut a, &hello_a, "echo").await;
    assert_eq!(held_call(&mut b, &hello_b, "echo").await, call_id);

    let approve = ClientMsg::Approve {
        id: 1,
        call_id: call_id.clone(),
        operator: Some("a".into()),
    };
    let deny = ClientMsg::Deny {
        id: 1,
        call_id: call_id.clone(),
        reason: Some("b says no".into()),
        operator: Some("b".into()),
    };
    let (ra, rb) = tokio::join!(a.send(&approve), b.send(&deny));
    ra.unwrap();
    rb.unwrap();

    // Each client: its reply, and exactly one resolution of the call.
    let mut outcomes = Vec::new();
    for conn in [&mut a, &mut b] {
        let mut reply = None;
        let mut resolutions = Vec::new();
        while reply.is_none() || resolutions.is_empty() {
            match next(conn).await.kind {
                EventKind::Reply(r) => reply = Some(r),
                EventKind::HoldResolved(r) if r.call_id == call_id => resolutions.push(r),
                _ => {}
            }
        }
        outcomes.push((reply.unwrap(), resolutions));
    }
    let (reply_a, seen_a) = &outcomes[0];
    let (reply_b, seen_b) = &outcomes[1];
    assert!(
        reply_a.ok ^ reply_b.ok,
        "exactly one wins: {reply_a:?} {reply_b:?}"
    );
    assert_eq!(seen_a, seen_b);
    assert_eq!(seen_a[0].approved, reply_a.ok);

    let answer = agent.answer();
    if reply_a.ok {
        assert_eq!(Agent::text(&answer), "Echo: race");
    } else {
        assert!(Agent::text(&answer).contains("b says no"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_operator_finds_the_open_hold_in_its_snapshot() {
    let mut agent = Agent::start();
    let entry = agent.dir.discover();
    let (mut first, hello) = operator(&entry).await;
    agent.call("echo", json!({"message": "still waiting"}));
    let call_id = held_call(&mut first, &hello, "echo").await;
    within("the operator's connection to close", WITHIN, first.close()).await;

    let (mut again, hello) = operator(&entry).await;
    assert_eq!(hello.snapshot.holds, vec![call_id.clone()]);
    let reply = approve(&mut again, 1, &call_id, None).await;
    assert!(reply.ok);
    assert_eq!(Agent::text(&agent.answer()), "Echo: still waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_held_call_is_dropped_and_the_operator_sees_why() {
    let dir = Dir::new();
    let mut gateway = RawGateway::start(&dir);
    assert!(gateway.initialize(1, &dir)["result"].is_object());

    let entry = dir.discover();
    let (mut conn, hello) = operator(&entry).await;
    gateway.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "never mind"}}}));
    let call_id = held_call(&mut conn, &hello, "echo").await;
    gateway.send(
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 2, "reason": "user gave up"}}),
    );

    let resolved = resolution_of(&mut conn, &call_id).await;
    assert_eq!(resolved.by, ResolvedBy::Cancellation);
    assert!(!resolved.approved);

    // The gateway carries on, and the cancelled request gets no answer before the next one.
    gateway.send(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}));
    loop {
        let line = gateway
            .lines
            .recv_timeout(WITHIN)
            .expect("an answer to tools/list");
        let msg: Value = serde_json::from_str(&line).unwrap();
        if msg.get("id").is_some() {
            assert_eq!(msg["id"], 3, "{msg}");
            break;
        }
    }

    let late = approve(&mut conn, 9, &call_id, None).await;
    assert!(!late.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_gateway_removes_its_discovery_file_and_closes_operators() {
    let mut agent = Agent::start();
    let entry = agent.dir.discover();
    let (mut conn, _) = operator(&entry).await;
    let file = agent
        .dir
        .path("run")
        .join("toolgate")
        .join(format!("{}.json", entry.id));
    assert!(file.exists());

    agent.client.send(&json!({"op": "close"}));
    // The stream ends (after any last events) when the gateway stops.
    while let Some(Ok(_)) = tokio::time::timeout(WITHIN, conn.next_event())
        .await
        .expect("the gateway stops in time")
    {}
    support::wait::wait_until("the discovery file to be removed", WITHIN, || {
        !file.exists()
    });
}

/// Resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .expect("the gateway's memory is readable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_operator_overflows_without_harming_the_gateway_and_gets_a_fresh_hello() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let dir = Dir::new();
    let mut gateway = RawGateway::start(&dir);
    gateway.initialize(0, &dir);

    // Connected, and never read until the end.
    let entry = dir.discover();
    let mut request = entry.url.as_str().into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", entry.token).parse().unwrap(),
    );
    let connecting = tokio_tungstenite::connect_async(request);
    let (mut stalled, _) = within("a raw websocket connection", WITHIN, connecting)
        .await
        .unwrap();

    // Denied calls with arguments near the event cap: each is one ~3 KiB event. A round is
    // far more than the socket buffers and the per-client queue hold together.
    let blob = "x".repeat(3000);
    let round = 15_000u64;
    let mut next_id = 1u64;
    let mut call_round = |gateway: &mut RawGateway| {
        for _ in 0..round {
            gateway.write(
                &json!({"jsonrpc": "2.0", "id": next_id, "method": "tools/call",
                "params": {"name": "not-in-the-policy", "arguments": {"blob": blob}}}),
            );
            next_id += 1;
        }
        gateway.stdin.flush().unwrap();
        next_id - 1
    };
    let last = call_round(&mut gateway);
    let refused = gateway.response_to(last, &dir);
    assert!(
        refused["result"]["isError"] == true || refused["error"].is_object(),
        "{refused}"
    );
    let after_one_round = rss_kib(gateway.child.id());
    let last = call_round(&mut gateway);
    gateway.response_to(last, &dir);
    let after_two_rounds = rss_kib(gateway.child.id());
    eprintln!(
        "gateway RSS: {after_one_round} KiB after one round, {after_two_rounds} KiB after two"
    );
    // The gateway answered every call; its memory did not grow with the backlog (a second
    // round of 45 MiB of events left it where the first did, queues full either way).
    assert!(
        after_two_rounds < after_one_round + 16 * 1024,
        "RSS grew from {after_one_round} KiB to {after_two_rounds} KiB"
    );

    // The stalled client reads at last: what was buffered, then `missed`, then a `hello`.
    let mut read = async || -> Event {
        let msg = tokio::time::timeout(WITHIN, stalled.next())
            .await
            .expect("a message in time")
            .expect("the connection is open")
            .expect("a valid frame");
        serde_json::from_str(msg.to_text().unwrap()).unwrap()
    };
    let dropped = loop {
        if let EventKind::Missed(missed) = read().await.kind {
            break missed.dropped;
        }
    };
    assert!(dropped > 0);
    let hello = read().await;
    let EventKind::Hello(body) = &hello.kind else {
        panic!("a hello follows missed, got {:?}", hello.kind)
    };
    assert!(hello.seq >= 2 * round, "seq {}", hello.seq);
    assert_eq!(body.snapshot.totals.deny, 2 * round);
}
