//! The gateway core between in-process fake peers: the test plays both the MCP client and
//! the MCP server over in-memory pipes, line by line, and watches the hub's events.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use toolgate::testing::control::{Hub, Resolution};
use toolgate::testing::gateway::{End, Gateway, RunOptions, run};
use toolgate::testing::policy::{MemoryStore, Policy};
use toolgate::testing::wire::{Event, EventKind, GatewayInfo, ResolvedBy};

/// Every step of a test waits at most this long; a hang fails instead of blocking CI.
const STEP: Duration = Duration::from_secs(10);

struct Peer {
    reader: tokio::io::Lines<BufReader<ReadHalf<DuplexStream>>>,
    writer: WriteHalf<DuplexStream>,
}

impl Peer {
    async fn send(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).await.unwrap();
        self.writer.write_all(b"\n").await.unwrap();
    }

    async fn send_json(&mut self, value: Value) {
        self.send(&value.to_string()).await;
    }

    async fn recv_line(&mut self) -> String {
        tokio::time::timeout(STEP, self.reader.next_line())
            .await
            .expect("timed out waiting for a line")
            .unwrap()
            .expect("stream ended")
    }

    async fn recv(&mut self) -> Value {
        serde_json::from_str(&self.recv_line().await).unwrap()
    }

    async fn expect_end(&mut self) {
        let next = tokio::time::timeout(STEP, self.reader.next_line())
            .await
            .expect("timed out waiting for the end")
            .unwrap();
        assert_eq!(next, None, "expected the stream to end");
    }
}

struct Harness {
    client: Peer,
    server: Peer,
    hub: Arc<Hub>,
    events: broadcast::Receiver<Arc<Event>>,
    end: JoinHandle<End>,
}

fn pipe() -> (Peer, ReadHalf<DuplexStream>, WriteHalf<DuplexStream>) {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (r, w) = tokio::io::split(ours);
    let (tr, tw) = tokio::io::split(theirs);
    (
        Peer {
            reader: BufReader::new(r).lines(),
            writer: w,
        },
        tr,
        tw,
    )
}

fn start(policy: &str) -> Harness {
    start_with(policy, |g| g)
}

fn start_with(policy: &str, tweak: impl FnOnce(Gateway) -> Gateway) -> Harness {
    start_full(policy, tweak, RunOptions::new("session-1"))
}

/// A gateway that accepts messages of at most `max` bytes.
fn start_max(policy: &str, max: usize) -> Harness {
    let mut options = RunOptions::new("session-1");
    options.max_message = max;
    start_full(policy, |g| g, options)
}

fn start_full(
    policy: &str,
    tweak: impl FnOnce(Gateway) -> Gateway,
    options: RunOptions,
) -> Harness {
    let policy = Policy::parse(policy, "policy.json").expect("test policy is valid");
    let hub = Hub::new(GatewayInfo {
        id: "gw".into(),
        pid: 1,
        version: "test".into(),
        grant: "tester".into(),
        server: "fake".into(),
        policy: "/tmp/policy.json".into(),
        started_at: chrono::Utc::now(),
    });
    let events = hub.subscribe();
    let gateway = tweak(Gateway::new(
        Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
        Arc::new(MemoryStore::new()),
        hub.clone(),
        "tester",
        "fake",
    ));
    let (client, c_r, c_w) = pipe();
    let (server, s_r, s_w) = pipe();
    let end = tokio::spawn(run(
        Arc::new(gateway),
        BufReader::new(c_r),
        c_w,
        BufReader::new(s_r),
        s_w,
        options,
    ));
    Harness {
        client,
        server,
        hub,
        events,
        end,
    }
}

impl Harness {
    /// Sends a ping (request `id`) from the client and returns what the server reads next.
    async fn ping(&mut self, id: u64) -> Value {
        self.client
            .send(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#))
            .await;
        self.server.recv().await
    }

    /// An operator's answer to the held call `id`, through the hub.
    fn resolve(&self, id: &str, approved: bool, operator: Option<&str>, reason: Option<&str>) {
        self.hub
            .resolve(
                id,
                Resolution {
                    approved,
                    by: ResolvedBy::Operator,
                    operator: operator.map(str::to_owned),
                    reason: reason.map(str::to_owned),
                },
            )
            .unwrap();
    }

    /// The next event of any of the given types, skipping others.
    async fn event_of(&mut self, kinds: &[&str]) -> EventKind {
        loop {
            let ev = tokio::time::timeout(STEP, self.events.recv())
                .await
                .expect("timed out waiting for an event")
                .unwrap();
            let name = serde_json::to_value(&ev.kind).unwrap()["type"].clone();
            if kinds.iter().any(|k| name == *k) {
                return ev.kind.clone();
            }
        }
    }

    /// The next event of the given type, skipping others.
    async fn event(&mut self, kind: &str) -> EventKind {
        loop {
            let ev = tokio::time::timeout(STEP, self.events.recv())
                .await
                .expect("timed out waiting for an event")
                .unwrap();
            let name = serde_json::to_value(&ev.kind).unwrap()["type"].clone();
            if name == kind {
                return ev.kind.clone();
            }
        }
    }
}

fn call(id: u64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
}

const ALLOW_ECHO: &str = r#"{"version":"1","default":"deny","tools":{"echo":{}}}"#;

#[tokio::test]
async fn allowed_call_reaches_the_server_byte_for_byte_and_its_answer_comes_back() {
    let mut h = start(ALLOW_ECHO);
    // Odd spacing and key order must survive: the gateway forwards the bytes it got.
    let raw = r#"{ "id":1, "jsonrpc":"2.0","method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"},"_meta":{"x":1}}}"#;
    h.client.send(raw).await;
    assert_eq!(h.server.recv_line().await, raw);
    let answer =
        r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"Echo: hi"}]}}"#;
    h.server.send(answer).await;
    assert_eq!(h.client.recv_line().await, answer);

    let EventKind::Call(call) = h.event("call").await else {
        unreachable!()
    };
    assert_eq!(call.tool, "echo");
    assert_eq!(call.grant, "tester");
    assert_eq!(call.session, "session-1");
    assert_eq!(call.decision, toolgate::testing::policy::Verdict::Allow);
    let EventKind::Outcome(outcome) = h.event("outcome").await else {
        unreachable!()
    };
    assert_eq!(outcome.call_id, call.call_id);
    assert!(!outcome.error);
    assert_eq!(outcome.summary.as_deref(), Some("Echo: hi"));
}

#[tokio::test]
async fn denied_call_is_answered_by_the_gateway_and_never_reaches_the_server() {
    let mut h = start(ALLOW_ECHO);
    h.client
        .send_json(call(5, "delete_everything", json!({})))
        .await;
    let answer = h.client.recv().await;
    assert_eq!(answer["id"], 5);
    assert_eq!(answer["result"]["isError"], true);
    let text = answer["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("/default"), "{text}");
    assert!(answer["result"].get("resultType").is_none());

    // The next thing the server sees is the ping, not the denied call.
    assert_eq!(h.ping(6).await["method"], "ping");
}

#[tokio::test]
async fn refusals_carry_result_type_for_2026_peers() {
    let mut h = start(ALLOW_ECHO);
    h.client
        .send_json(
            json!({"jsonrpc":"2.0","id":"a","method":"tools/call","params":{
            "name":"nope","arguments":{},
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}),
        )
        .await;
    let answer = h.client.recv().await;
    assert_eq!(answer["id"], "a");
    assert_eq!(answer["result"]["resultType"], "complete");
    assert_eq!(answer["result"]["isError"], true);
}

#[tokio::test]
async fn hidden_tools_vanish_from_every_tools_list_page_and_the_tools_event_lists_all() {
    let mut h = start(r#"{"version":"1","default":"allow","hide":["secret_*"]}"#);
    h.client
        .send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .await;
    h.server.recv().await;
    h.server
        .send_json(json!({"jsonrpc":"2.0","id":1,"result":{"tools":[
            {"name":"echo","inputSchema":{"type":"object"}},
            {"name":"secret_a","inputSchema":{"type":"object"}}],"nextCursor":"p2"}}))
        .await;
    let page1 = h.client.recv().await;
    assert_eq!(
        page1["result"]["tools"],
        json!([{"name":"echo","inputSchema":{"type":"object"}}])
    );
    assert_eq!(page1["result"]["nextCursor"], "p2");

    h.client
        .send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":"p2"}}"#)
        .await;
    h.server.recv().await;
    h.server
        .send_json(
            json!({"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"secret_b"},{"name":"add"}]}}),
        )
        .await;
    let page2 = h.client.recv().await;
    assert_eq!(page2["result"]["tools"], json!([{"name":"add"}]));

    h.event("tools").await;
    let EventKind::Tools(tools) = h.event("tools").await else {
        unreachable!()
    };
    let names: Vec<&str> = tools.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["echo", "secret_a", "secret_b", "add"]);

    // Calling a hidden tool reads like calling a tool that does not exist.
    h.client.send_json(call(3, "secret_a", json!({}))).await;
    let refused = h.client.recv().await;
    assert_eq!(
        refused["result"]["content"][0]["text"],
        "Unknown tool: secret_a"
    );
}

#[tokio::test]
async fn everything_else_passes_through_untouched_in_both_directions() {
    let mut h = start(ALLOW_ECHO);
    // (from the client?, line): in this order, each read unchanged on the other side.
    let lines = [
        (
            true,
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"sampling":{}},"clientInfo":{"name":"t","version":"1"}}}"#,
        ),
        (
            true,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ),
        (
            true,
            r#"{"jsonrpc":"2.0","id":2,"method":"vendor/unknown","params":{"_meta":{"k":[1,2]}}}"#,
        ),
        (
            false,
            r#"{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage","params":{"messages":[],"maxTokens":5}}"#,
        ),
        (
            true,
            r#"{"jsonrpc":"2.0","id":"s1","result":{"model":"m","role":"assistant","content":{"type":"text","text":"sampled"}}}"#,
        ),
        (
            false,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":7,"progress":1}}"#,
        ),
        (
            false,
            r#"{"jsonrpc":"2.0","id":2,"result":{"unknownField":true}}"#,
        ),
    ];
    for (from_client, line) in lines {
        if from_client {
            h.client.send(line).await;
            assert_eq!(h.server.recv_line().await, line);
        } else {
            h.server.send(line).await;
            assert_eq!(h.client.recv_line().await, line);
        }
    }
}

#[tokio::test]
async fn malformed_lines_get_a_parse_error_only_when_they_look_like_requests() {
    let mut h = start(ALLOW_ECHO);
    h.client
        .send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"#)
        .await;
    let answer = h.client.recv().await;
    assert_eq!(answer["error"]["code"], -32700);
    assert_eq!(answer["id"], Value::Null);
    // Noise that is not a request is only logged; the next message still flows.
    h.client.send("garbage").await;
    assert_eq!(h.ping(2).await["id"], 2);
    // A malformed request from the server is answered to the server.
    h.server.send(r#"{"method":"roots/list","id":"#).await;
    assert_eq!(h.server.recv().await["error"]["code"], -32700);
}

#[tokio::test]
async fn a_tools_call_without_an_id_never_reaches_the_server() {
    let mut h = start(ALLOW_ECHO);
    h.client
        .send(r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_everything"}}"#)
        .await;
    h.client
        .send(r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"delete_everything"}}"#)
        .await;
    assert_eq!(h.ping(1).await["method"], "ping");
}

#[tokio::test]
async fn duplicate_members_cannot_smuggle_a_second_tool_name() {
    let mut h = start(ALLOW_ECHO);
    h.client
        .send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"delete_everything"}}"#)
        .await;
    assert!(h.client.recv().await["error"].is_object());
    h.client
        .send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"},"params":{"name":"delete_everything"}}"#)
        .await;
    assert_eq!(h.client.recv().await["error"]["code"], -32700);
    assert_eq!(h.ping(3).await["method"], "ping");
}

#[tokio::test]
async fn batches_are_handled_element_by_element() {
    let mut h = start(ALLOW_ECHO);
    h.client
        .send(
            &json!([
                call(1, "echo", json!({"message":"a"})),
                call(2, "forbidden", json!({})),
                {"jsonrpc":"2.0","method":"notifications/x"}
            ])
            .to_string(),
        )
        .await;
    let refused = h.client.recv().await;
    assert_eq!(refused["id"], 2);
    assert_eq!(refused["result"]["isError"], true);
    assert_eq!(h.server.recv().await["id"], 1);
    assert_eq!(h.server.recv().await["method"], "notifications/x");
}

#[tokio::test]
async fn a_limit_admits_exactly_max_calls() {
    let mut h = start(
        r#"{"version":"1","default":"deny","tools":{"echo":{"rate_limit":{"max":2,"window":"hour"}}}}"#,
    );
    for id in 1..=2 {
        h.client.send_json(call(id, "echo", json!({}))).await;
        assert_eq!(h.server.recv().await["id"], id);
    }
    let EventKind::Counters(counters) = h.event("counters").await else {
        unreachable!()
    };
    assert_eq!(counters.counters.len(), 1);
    assert_eq!(counters.counters[0].key, "tester");
    assert_eq!(counters.counters[0].max, 2);
    let EventKind::Counters(counters) = h.event("counters").await else {
        unreachable!()
    };
    assert_eq!(counters.counters[0].used, 2);
    h.client.send_json(call(3, "echo", json!({}))).await;
    let limited = h.client.recv().await;
    assert_eq!(limited["id"], 3);
    let text = limited["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("Rate limit reached"), "{text}");
}

const HOLD_SEND: &str = r#"{"version":"1","default":"deny","tools":{"send":{"action":"require_approval","reason":"a person checks messages"}}}"#;

async fn held_call_id(h: &mut Harness) -> String {
    let EventKind::Call(call) = h.event("call").await else {
        unreachable!()
    };
    assert_eq!(call.decision, toolgate::testing::policy::Verdict::Hold);
    assert!(call.hold_deadline.is_some());
    call.call_id.to_string()
}

#[tokio::test]
async fn approved_hold_forwards_the_exact_call() {
    let mut h = start(HOLD_SEND);
    let raw = call(9, "send", json!({"to":"bob"})).to_string();
    h.client.send(&raw).await;
    let id = held_call_id(&mut h).await;
    assert_eq!(h.hub.open_holds(), vec![id.clone()]);
    h.resolve(&id, true, Some("ann"), None);
    assert_eq!(h.server.recv_line().await, raw);
    h.server
        .send(r#"{"jsonrpc":"2.0","id":9,"result":{"content":[],"isError":true}}"#)
        .await;
    assert_eq!(h.client.recv().await["id"], 9);
    let EventKind::Outcome(outcome) = h.event("outcome").await else {
        unreachable!()
    };
    assert!(outcome.error, "isError: true counts as an error");
}

#[tokio::test]
async fn operator_denial_reaches_the_agent_with_the_reason() {
    let mut h = start(HOLD_SEND);
    h.client.send_json(call(4, "send", json!({}))).await;
    let id = held_call_id(&mut h).await;
    h.resolve(&id, false, None, Some("not today"));
    let answer = h.client.recv().await;
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "Denied by an operator: not today"
    );
}

#[tokio::test]
async fn hold_times_out_denied_with_the_timeout_in_words() {
    let mut h = start(
        r#"{"version":"1","default":"deny","approval_timeout":"1s","tools":{"send":{"action":"require_approval"}}}"#,
    );
    h.client.send_json(call(4, "send", json!({}))).await;
    held_call_id(&mut h).await;
    let answer = h.client.recv().await;
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "Not approved: approval timed out after 1s"
    );
    let EventKind::HoldResolved(resolved) = h.event("hold_resolved").await else {
        unreachable!()
    };
    assert_eq!(resolved.by, ResolvedBy::Timeout);
}

#[tokio::test]
async fn cancelled_hold_is_dropped_silently_and_frees_its_units() {
    let mut h = start(
        r#"{"version":"1","default":"deny","tools":{"send":{"action":"require_approval","rate_limit":{"max":1,"window":"hour"}}}}"#,
    );
    h.client.send_json(call(4, "send", json!({}))).await;
    let id = held_call_id(&mut h).await;
    h.client
        .send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":4}}"#)
        .await;
    let EventKind::HoldResolved(resolved) = h.event("hold_resolved").await else {
        unreachable!()
    };
    assert_eq!(resolved.call_id, id);
    assert_eq!(resolved.by, ResolvedBy::Cancellation);
    // The unit came back: a second call is held, not rate limited.
    h.client.send_json(call(5, "send", json!({}))).await;
    held_call_id(&mut h).await;
    // Nothing was sent for the cancelled request, and the server saw neither call nor
    // cancellation: the next thing either side sees is the ping and its answer.
    assert_eq!(h.ping(6).await["id"], 6);
    h.server
        .send(r#"{"jsonrpc":"2.0","id":6,"result":{}}"#)
        .await;
    assert_eq!(h.client.recv().await["id"], 6);
}

#[tokio::test]
async fn held_call_with_a_progress_token_gets_progress_while_waiting() {
    let mut h = start_with(HOLD_SEND, |mut g| {
        g.hold_progress_interval = Duration::from_millis(20);
        g
    });
    h.client
        .send_json(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
            "name":"send","arguments":{},"_meta":{"progressToken":"tok"}}}),
        )
        .await;
    let id = held_call_id(&mut h).await;
    let mut last = 0;
    for _ in 0..2 {
        let note = h.client.recv().await;
        assert_eq!(note["method"], "notifications/progress");
        assert_eq!(note["params"]["progressToken"], "tok");
        let progress = note["params"]["progress"].as_u64().unwrap();
        assert!(progress > last, "progress increases");
        last = progress;
    }
    h.resolve(&id, true, None, None);
    assert_eq!(h.server.recv().await["id"], 1);
}

#[tokio::test]
async fn input_required_retry_continues_the_call_without_counting_it_again() {
    let mut h = start(
        r#"{"version":"1","default":"deny","tools":{"ask":{"rate_limit":{"max":1,"window":"hour"}}}}"#,
    );
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28"});
    h.client
        .send_json(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
            "name":"ask","arguments":{"q":1},"_meta":meta}}),
        )
        .await;
    h.server.recv().await;
    h.server
        .send_json(json!({"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required",
            "inputRequests":{"r1":{"method":"elicitation/create","params":{}}},"requestState":"st"}}))
        .await;
    assert_eq!(
        h.client.recv().await["result"]["resultType"],
        "input_required"
    );
    let retry = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{
        "name":"ask","arguments":{"q":1},"inputResponses":{"r1":{"action":"accept"}},
        "requestState":"st","_meta":meta}});
    h.client.send_json(retry.clone()).await;
    assert_eq!(h.server.recv().await, retry);
    h.server
        .send(r#"{"jsonrpc":"2.0","id":2,"result":{"resultType":"complete","content":[]}}"#)
        .await;
    assert_eq!(h.client.recv().await["id"], 2);
    let EventKind::Outcome(outcome) = h.event("outcome").await else {
        unreachable!()
    };
    assert!(!outcome.error);
    // A fresh call is a new call: the one unit is spent.
    h.client
        .send_json(
            json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{
            "name":"ask","arguments":{"q":1},"_meta":meta}}),
        )
        .await;
    let limited = h.client.recv().await;
    assert_eq!(limited["result"]["resultType"], "complete");
    assert!(
        limited["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Rate limit reached")
    );
}

#[tokio::test]
async fn a_dying_server_answers_every_pending_request_with_an_error() {
    let mut h = start(HOLD_SEND);
    h.client.send_json(call(1, "send", json!({}))).await;
    held_call_id(&mut h).await;
    h.client
        .send(r#"{"jsonrpc":"2.0","id":2,"method":"resources/list"}"#)
        .await;
    h.server.recv().await;
    let Harness {
        mut client,
        server,
        end,
        ..
    } = h;
    drop(server);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let answer = client.recv().await;
        assert!(answer["error"]["code"].is_i64(), "{answer}");
        ids.push(answer["id"].as_u64().unwrap());
    }
    ids.sort();
    assert_eq!(ids, [1, 2]);
    let end = tokio::time::timeout(STEP, end)
        .await
        .expect("timed out waiting for the connection to end");
    assert_eq!(end.unwrap(), End::UpstreamClosed);
    client.expect_end().await;
}

#[tokio::test]
async fn client_closing_closes_the_server_input_and_ends_cleanly() {
    let h = start(ALLOW_ECHO);
    let Harness {
        client,
        mut server,
        end,
        ..
    } = h;
    drop(client);
    server.expect_end().await;
    drop(server);
    let end = tokio::time::timeout(STEP, end)
        .await
        .expect("timed out waiting for the connection to end");
    assert_eq!(end.unwrap(), End::ClientClosed);
}

// --- Message shapes, ids and sizes (issue 13 items 1, 4, 6) ---

const HIDE_SECRETS: &str = r#"{"version":"1","default":"deny","hide":["secret_*"],"tools":{"echo":{},"send":{"action":"require_approval"}}}"#;

/// Sends a ping from the client and checks it is the next thing the server reads: whatever
/// was sent before it never reached the server.
async fn server_saw_nothing_before(h: &mut Harness, ping: u64) {
    let next = h.ping(ping).await;
    assert_eq!(next["method"], "ping", "the server read {next} first");
    assert_eq!(next["id"], ping);
}

/// The client's next line is an error with this code; returns its id.
async fn client_error(h: &mut Harness, code: i64) -> Value {
    let answer = h.client.recv().await;
    assert_eq!(answer["error"]["code"], code, "{answer}");
    answer["id"].clone()
}

#[tokio::test]
async fn nested_batches_and_elements_that_are_not_objects_never_reach_the_server() {
    let mut h = start(HIDE_SECRETS);
    let delete =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_file"}}"#;
    // Each line, and how many -32600 answers it gets.
    let lines = [
        (format!("[[{delete}]]"), 1),
        (format!("[[[{delete}]],[{delete}]]"), 2),
        // `{}` is neither request nor answer: dropped, not answered.
        (format!(r#"[{delete}, 5, "x", null, true, [], {{}}]"#), 5),
        ("[]".to_owned(), 1),
        ("42".to_owned(), 1),
        (r#""{\"id\":1,\"method\":\"tools/call\"}""#.to_owned(), 1),
        ("null".to_owned(), 1),
    ];
    for (line, invalid) in &lines {
        h.client.send(line).await;
        let mut seen = 0;
        while seen < *invalid {
            let answer = h.client.recv().await;
            if answer["error"]["code"] == -32600 {
                assert_eq!(answer["id"], Value::Null, "{line}: {answer}");
                seen += 1;
            } else {
                // The one object in a batch is judged on its own: a denied call.
                assert_eq!(answer["result"]["isError"], true, "{line}: {answer}");
            }
        }
    }
    // An answer-shaped wrapper around a call is an answer to nothing: dropped.
    h.client
        .send(&format!(
            r#"{{"jsonrpc":"2.0","id":3,"result":[{delete}]}}"#
        ))
        .await;
    h.client
        .send(&format!(
            r#"{{"jsonrpc":"2.0","id":4,"error":{{"code":1,"message":"x","data":{delete}}}}}"#
        ))
        .await;
    server_saw_nothing_before(&mut h, 9).await;
}

#[tokio::test]
async fn answers_are_forwarded_only_to_requests_the_other_side_still_waits_on() {
    let mut h = start(HIDE_SECRETS);
    // Answers to nothing, from either side, are dropped.
    h.client
        .send(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#)
        .await;
    server_saw_nothing_before(&mut h, 2).await;
    h.server
        .send(r#"{"jsonrpc":"2.0","id":77,"result":{"tools":[{"name":"secret_a"}]}}"#)
        .await;
    h.server
        .send(r#"{"jsonrpc":"2.0","id":2,"result":{}}"#)
        .await;
    assert_eq!(
        h.client.recv().await["id"],
        2,
        "the unsolicited answer was dropped"
    );

    // The same id in both directions: two requests, told apart by who sent them.
    h.client
        .send(r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#)
        .await;
    h.server.recv().await;
    let server_request = r#"{"jsonrpc":"2.0","id":5,"method":"roots/list"}"#;
    h.server.send(server_request).await;
    assert_eq!(h.client.recv_line().await, server_request);
    let client_answer = r#"{"jsonrpc":"2.0","id":5,"result":{"roots":[]}}"#;
    h.client.send(client_answer).await;
    assert_eq!(h.server.recv_line().await, client_answer);
    // A second answer to the same server request is not owed: dropped.
    h.client.send(client_answer).await;
    server_saw_nothing_before(&mut h, 6).await;
    // The server's answer to the client's tools/list is filtered as one.
    h.server
        .send(
            r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"secret_a"},{"name":"echo"}]}}"#,
        )
        .await;
    let listed = h.client.recv().await;
    assert_eq!(listed["result"]["tools"], json!([{"name":"echo"}]));

    // A server request the server itself cancelled is not answered either.
    h.server
        .send(r#"{"jsonrpc":"2.0","id":"s2","method":"sampling/createMessage","params":{}}"#)
        .await;
    h.client.recv().await;
    h.server
        .send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"s2"}}"#)
        .await;
    h.client.recv().await;
    h.client
        .send(r#"{"jsonrpc":"2.0","id":"s2","result":{}}"#)
        .await;
    server_saw_nothing_before(&mut h, 7).await;
}

#[tokio::test]
async fn ids_match_by_value_and_ids_that_are_not_strings_or_integers_are_refused() {
    let mut h = start(HIDE_SECRETS);
    // (the client's id, the server's spelling of it, the id the client reads back)
    for (sent, answered, back) in [
        (r#""\u0061""#, r#""a""#, json!("a")),
        ("-0", "0", json!(0)),
        (r#""\ud83d\ude00""#, "\"\u{1F600}\"", json!("\u{1F600}")),
        (
            "9007199254740991",
            "9007199254740991",
            json!(9007199254740991u64),
        ),
    ] {
        let request = format!(r#"{{"jsonrpc":"2.0","id":{sent},"method":"tools/list"}}"#);
        h.client.send(&request).await;
        assert_eq!(h.server.recv_line().await, request, "forwarded as sent");
        h.server
            .send(&format!(
                r#"{{"jsonrpc":"2.0","id":{answered},"result":{{"tools":[{{"name":"secret_x"}},{{"name":"echo"}}]}}}}"#
            ))
            .await;
        let listed = h.client.recv().await;
        assert_eq!(listed["id"], back);
        assert_eq!(
            listed["result"]["tools"],
            json!([{"name":"echo"}]),
            "{sent}"
        );
    }
    for bad in [
        "6.0",
        "1e1",
        "-1.5",
        "true",
        "null",
        "{}",
        "[1]",
        "9007199254740992",
        "-9007199254740992",
    ] {
        for method in ["tools/list", "tools/call", "ping"] {
            h.client
                .send(&format!(
                    r#"{{"jsonrpc":"2.0","id":{bad},"method":"{method}","params":{{"name":"delete_file"}}}}"#
                ))
                .await;
            assert_eq!(client_error(&mut h, -32600).await, Value::Null, "{bad}");
        }
    }
    server_saw_nothing_before(&mut h, 1).await;
}

#[tokio::test]
async fn a_request_reusing_an_id_in_flight_is_refused_and_a_hold_is_never_orphaned() {
    let mut h = start(
        r#"{"version":"1","default":"deny","tools":{"send":{"action":"require_approval","rate_limit":{"max":1,"window":"hour"}}}}"#,
    );
    h.client.send_json(call(1, "send", json!({"to":"a"}))).await;
    let first = held_call_id(&mut h).await;
    // The same id again, however it is spelled, while the first is held.
    for spelled in ["1", "-0", "1"] {
        let again = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"send","arguments":{{}}}}}}"#,
            if spelled == "-0" { "1" } else { spelled }
        );
        h.client.send(&again).await;
        assert_eq!(client_error(&mut h, -32600).await, 1);
    }
    // A forwarded request's id is in flight until its answer, also for other methods.
    h.client
        .send(r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#)
        .await;
    h.server.recv().await;
    h.client
        .send(r#"{"jsonrpc":"2.0","id":"\u0070","method":"tools/list"}"#)
        .await;
    assert_eq!(client_error(&mut h, -32600).await, "p");
    h.client.send_json(call(1, "send", json!({}))).await;
    assert_eq!(client_error(&mut h, -32600).await, 1);

    // The first hold is still there: the operator's denial reaches the client, and its unit
    // comes back (the next call is held again, not rate limited).
    h.resolve(&first, false, Some("op"), Some("no"));
    let denied = h.client.recv().await;
    assert_eq!(denied["id"], 1);
    assert_eq!(denied["result"]["isError"], true);
    h.client.send_json(call(1, "send", json!({}))).await;
    held_call_id(&mut h).await;
    // Answered: the id is free again.
    h.server
        .send(r#"{"jsonrpc":"2.0","id":"p","result":{}}"#)
        .await;
    assert_eq!(h.client.recv().await["id"], "p");
    server_saw_nothing_before(&mut h, 2).await;
}

#[tokio::test]
async fn a_tools_list_answer_that_cannot_be_filtered_is_replaced_by_an_error() {
    let mut h = start(HIDE_SECRETS);
    let answers = [
        r#"{"jsonrpc":"2.0","id":ID,"result":{"tools":{"secret_a":{}}}}"#,
        r#"{"jsonrpc":"2.0","id":ID,"result":{"tools":[{"name":"secret_a"},{"name":5}]}}"#,
        r#"{"jsonrpc":"2.0","id":ID,"result":{"tools":[{"name":"echo"},"secret_a"]}}"#,
        r#"{"jsonrpc":"2.0","id":ID,"result":{"tools":[{"title":"secret_a"}]}}"#,
        r#"{"jsonrpc":"2.0","id":ID,"result":["secret_a"]}"#,
        r#"{"jsonrpc":"2.0","id":ID,"result":"secret_a"}"#,
        r#"{"jsonrpc":"2.0","id":ID,"result":{"tool":[{"name":"secret_a"}]}}"#,
        r#"{"jsonrpc":"2.0","id":ID,"result":{"resultType":"complete","tool":[{"name":"secret_a"}]}}"#,
        // Text no two parsers are sure to read alike.
        r#"{"jsonrpc":"2.0","id":ID,"result":{"tools":[{"name":"secret_a","description":"\ud800"}]}}"#,
        r#"{"jsonrpc":"2.0","id":ID,"result":{"tools":[{"name":"secret_a"}],"tools":[]}}"#,
        r#"{"jsonrpc":"2.0","id":ID,"result":{"tools":[{"name":"secret_a","name":"echo"}]}}"#,
        r#"{"jsonrpc":"2.0","id":ID,"result":{"tools":[{"name":"secret_a"}]}} trailing"#,
        r#"{"jsonrpc":"2.0","id":ID,"result":{"tools":[{"name":"secret_a"}]},"error":{"code":1}}"#,
    ];
    for (n, answer) in answers.iter().enumerate() {
        let id = n + 1;
        h.client
            .send(&format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list","params":{{"cursor":"c{id}"}}}}"#
            ))
            .await;
        h.server.recv().await;
        h.server.send(&answer.replace("ID", &id.to_string())).await;
        let line = h.client.recv_line().await;
        assert!(!line.contains("secret_a"), "{answer} leaked: {line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], id, "{answer}: {line}");
        assert_eq!(v["error"]["code"], -32004, "{answer}: {line}");
    }
    // The 2026-07-28 forms are filtered like the others, and an interim result without
    // tools passes.
    h.client
        .send(r#"{"jsonrpc":"2.0","id":"m","method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#)
        .await;
    h.server.recv().await;
    h.server
        .send(r#"{"jsonrpc":"2.0","id":"m","result":{"resultType":"complete","tools":[{"name":"secret_a"},{"name":"echo"}],"ttl":5}}"#)
        .await;
    let listed = h.client.recv().await;
    assert_eq!(listed["result"]["tools"], json!([{"name":"echo"}]));
    assert_eq!(listed["result"]["resultType"], "complete");
    h.client
        .send(r#"{"jsonrpc":"2.0","id":"n","method":"tools/list"}"#)
        .await;
    h.server.recv().await;
    h.server
        .send(r#"{"jsonrpc":"2.0","id":"n","result":{"resultType":"input_required","inputRequests":{}}}"#)
        .await;
    assert_eq!(
        h.client.recv().await["result"]["resultType"],
        "input_required"
    );
}

#[tokio::test]
async fn a_cancelled_tools_list_keeps_its_id_and_its_late_answer_is_still_filtered() {
    let mut h = start(HIDE_SECRETS);
    h.client
        .send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .await;
    h.server.recv().await;
    h.client
        .send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#)
        .await;
    assert_eq!(h.server.recv().await["method"], "notifications/cancelled");
    // Reusing the id now would let the late list pass as the answer to something else.
    h.client
        .send(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .await;
    assert_eq!(client_error(&mut h, -32600).await, 1);
    h.server
        .send(r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret_a"}]}}"#)
        .await;
    let line = h.client.recv_line().await;
    assert!(!line.contains("secret_a"), "{line}");
}

#[tokio::test]
async fn text_parsers_could_read_differently_never_reaches_the_server() {
    let mut h = start(HIDE_SECRETS);
    let lines: [&[u8]; 10] = [
        br#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"delete_file"}}"#,
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"delete_file"}}"#,
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":[{"path":"/tmp","path":"/etc"}]}}}"#,
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","n\u0061me":"delete_file"}}"#,
        b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\"}}",
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}} {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_file"}}"#,
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}x"#,
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call\ud800","params":{"name":"delete_file"}}"#,
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo\udc00"}}"#,
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"x\":\"\xff\"}}",
    ];
    for line in lines {
        h.client.writer.write_all(line).await.unwrap();
        h.client.writer.write_all(b"\n").await.unwrap();
        let answer = h.client.recv().await;
        assert_eq!(
            answer["error"]["code"],
            -32700,
            "{}: {answer}",
            String::from_utf8_lossy(line)
        );
    }
    server_saw_nothing_before(&mut h, 3).await;
}

#[tokio::test]
async fn tools_call_params_and_arguments_must_be_objects() {
    let mut h = start(HIDE_SECRETS);
    for params in [
        r#"["echo",{}]"#,
        r#""echo""#,
        r#"{"name":"echo","arguments":"{\"a\":1}"}"#,
        r#"{"name":"echo","arguments":[1]}"#,
        r#"{"name":"echo","arguments":5}"#,
        r#"{"name":5}"#,
    ] {
        h.client
            .send(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#
            ))
            .await;
        assert_eq!(client_error(&mut h, -32602).await, 1, "{params}");
    }
    server_saw_nothing_before(&mut h, 2).await;
}

#[tokio::test]
async fn messages_over_the_size_limit_are_answered_from_their_prefix_and_never_forwarded() {
    let mut h = start_max(HIDE_SECRETS, 4096);
    let big = "x".repeat(100_000);
    // The id before the bulk: the error names it.
    h.client
        .send_json(call(7, "echo", json!({ "text": big })))
        .await;
    let answer = h.client.recv().await;
    assert_eq!(answer["id"], 7, "{answer}");
    assert_eq!(answer["error"]["code"], -32600);
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("--max-message"), "{message}");
    // The id after the bulk is not known: a null id.
    h.client
        .send(&format!(
            r#"{{"jsonrpc":"2.0","method":"tools/call","params":{{"name":"echo","arguments":{{"t":"{big}"}}}},"id":8}}"#
        ))
        .await;
    assert_eq!(client_error(&mut h, -32600).await, Value::Null);
    server_saw_nothing_before(&mut h, 9).await;
    h.server
        .send(r#"{"jsonrpc":"2.0","id":9,"result":{}}"#)
        .await;
    h.client.recv().await;

    // An answer over the limit becomes an error for the request it answered.
    h.client.send_json(call(10, "echo", json!({}))).await;
    h.server.recv().await;
    h.server
        .send(&format!(
            r#"{{"jsonrpc":"2.0","id":10,"result":{{"content":[{{"type":"text","text":"{big}"}}]}}}}"#
        ))
        .await;
    let answer = h.client.recv().await;
    assert_eq!(answer["id"], 10);
    assert_eq!(answer["error"]["code"], -32004);
    let EventKind::Outcome(outcome) = h.event("outcome").await else {
        unreachable!()
    };
    assert!(outcome.error);
    // A server request over the limit is answered to the server.
    h.server
        .send(&format!(
            r#"{{"jsonrpc":"2.0","id":"s","method":"sampling/createMessage","params":{{"t":"{big}"}}}}"#
        ))
        .await;
    let to_server = h.server.recv().await;
    assert_eq!(to_server["id"], "s");
    assert_eq!(to_server["error"]["code"], -32600);
    // Both directions still flow.
    server_saw_nothing_before(&mut h, 11).await;
    h.server
        .send(r#"{"jsonrpc":"2.0","id":11,"result":{}}"#)
        .await;
    assert_eq!(h.client.recv().await["id"], 11);
}

#[tokio::test]
async fn each_side_has_at_most_max_in_flight_requests_waiting() {
    let mut h = start(HIDE_SECRETS);
    let max = toolgate::testing::gateway::MAX_IN_FLIGHT as u64;
    for id in 0..max {
        h.client
            .send(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#))
            .await;
        h.server.recv().await;
    }
    h.client
        .send(&format!(
            r#"{{"jsonrpc":"2.0","id":{max},"method":"ping"}}"#
        ))
        .await;
    assert_eq!(client_error(&mut h, -32005).await, max);
    h.server
        .send(r#"{"jsonrpc":"2.0","id":0,"result":{}}"#)
        .await;
    assert_eq!(h.client.recv().await["id"], 0);
    assert_eq!(h.ping(max).await["id"], max, "room again after an answer");

    for id in 0..max {
        h.server
            .send(&format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"roots/list"}}"#
            ))
            .await;
        h.client.recv().await;
    }
    h.server
        .send(&format!(
            r#"{{"jsonrpc":"2.0","id":{max},"method":"roots/list"}}"#
        ))
        .await;
    let to_server = h.server.recv().await;
    assert_eq!(to_server["error"]["code"], -32005, "{to_server}");
    assert_eq!(to_server["id"], max);
}

/// A client stream that delivers `first` and then panics when read again: a bug in reading
/// the client, simulated.
struct PanicsAfter(Option<Vec<u8>>);

impl tokio::io::AsyncRead for PanicsAfter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let Some(first) = self.0.take() else {
            panic!("the client's reader fails (simulated)");
        };
        buf.put_slice(&first);
        std::task::Poll::Ready(Ok(()))
    }
}

/// A store that makes every admission wait until the test opens its gate (at most 10 s).
struct GatedStore {
    inner: MemoryStore,
    open: std::sync::atomic::AtomicBool,
}

impl toolgate::testing::policy::CounterStore for GatedStore {
    fn admit(
        &self,
        limits: &[toolgate::testing::policy::LimitRequest<'_>],
        now_ms: u64,
    ) -> Result<toolgate::testing::policy::Admission, toolgate::testing::policy::StoreError> {
        let deadline = std::time::Instant::now() + STEP;
        while !self.open.load(std::sync::atomic::Ordering::SeqCst)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.inner.admit(limits, now_ms)
    }

    fn try_release(
        &self,
        reservation: &toolgate::testing::policy::Reservation,
    ) -> Result<(), toolgate::testing::policy::StoreError> {
        self.inner.try_release(reservation)
    }

    fn usage(
        &self,
        counter: &str,
        scope: toolgate::testing::policy::Scope,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<toolgate::testing::policy::KeyUsage>, toolgate::testing::policy::StoreError>
    {
        self.inner.usage(counter, scope, window_ms, now_ms)
    }
}

#[tokio::test]
async fn a_client_reader_that_panics_ends_the_connection_as_a_failure_not_as_a_client_that_left() {
    let policy = Policy::parse(ALLOW_ECHO, "policy.json").expect("test policy is valid");
    let hub = Hub::new(GatewayInfo {
        id: "gw".into(),
        pid: 1,
        version: "test".into(),
        grant: "tester".into(),
        server: "fake".into(),
        policy: "/tmp/policy.json".into(),
        started_at: chrono::Utc::now(),
    });
    let gateway = Gateway::new(
        Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
        Arc::new(MemoryStore::new()),
        hub,
        "tester",
        "fake",
    );
    let first = format!("{}\n", call(1, "echo", json!({"message": "hi"})));
    let (mut client, _, client_w) = pipe();
    let (mut server, s_r, s_w) = pipe();
    let end = tokio::spawn(run(
        Arc::new(gateway),
        BufReader::new(PanicsAfter(Some(first.into_bytes()))),
        client_w,
        BufReader::new(s_r),
        s_w,
        RunOptions::new("session-1"),
    ));

    // The call read before the panic went upstream; then the upstream's input is closed.
    assert_eq!(server.recv().await["id"], 1);
    server.expect_end().await;
    // The server ends too: the call it never answered is answered with an error.
    drop(server);
    let answer = client.recv().await;
    assert_eq!(answer["id"], 1, "{answer}");
    assert!(answer["error"]["code"].is_i64(), "{answer}");
    let end = tokio::time::timeout(STEP, end)
        .await
        .expect("timed out waiting for the connection to end")
        .expect("the connection's task itself did not panic");
    assert_eq!(end, End::Panicked);
}

#[tokio::test]
async fn a_call_waiting_for_the_counter_store_holds_up_no_other_call_and_a_cancel_gives_its_unit_back()
 {
    let store = Arc::new(GatedStore {
        inner: MemoryStore::new(),
        open: std::sync::atomic::AtomicBool::new(false),
    });
    let worker = toolgate::testing::policy::StoreWorker::new(store.clone());
    let mut h = start_with(
        r#"{"version":"1","default":"deny","tools":{"echo":{},
            "slow":{"limits":[{"counter":"c","window":"minute","max":5,"scope":"global"}]}}}"#,
        move |mut g| {
            g.store = worker;
            g
        },
    );
    h.client.send_json(call(1, "slow", json!({}))).await;
    h.client.send_json(call(2, "echo", json!({}))).await;
    // The call without limits goes through while the limited one waits for the store.
    assert_eq!(h.server.recv().await["id"], 2);
    // An answer from the server to the waiting call's id is not taken for its answer.
    h.server
        .send(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#)
        .await;
    h.client
        .send_json(json!({"jsonrpc":"2.0","method":"notifications/cancelled",
                          "params":{"requestId":1}}))
        .await;
    store.open.store(true, std::sync::atomic::Ordering::SeqCst);
    // The store admitted it, but the call was cancelled meanwhile: it is recorded as denied
    // (it never ran), and its unit goes back.
    let (mut slow, mut given_back) = (None, false);
    while slow.is_none() || !given_back {
        match h.event_of(&["call", "counters"]).await {
            EventKind::Call(call) if call.tool == "slow" => slow = Some(call),
            EventKind::Counters(counters) => {
                given_back |= counters
                    .counters
                    .iter()
                    .any(|c| c.counter == "c" && c.used == 0);
            }
            _ => {}
        }
    }
    let slow = slow.expect("the loop ends with it");
    assert_eq!(slow.decision, toolgate::testing::policy::Verdict::Deny);
    assert!(slow.reason.contains("ended"), "{}", slow.reason);
    // And it never reaches the server: the next line there is this ping.
    assert_eq!(h.ping(3).await["method"], "ping");
    h.server
        .send(r#"{"jsonrpc":"2.0","id":2,"result":{"content":[]}}"#)
        .await;
    assert_eq!(h.client.recv().await["id"], 2);
}

/// A call cancelled while it waits for its admission frees its id at once (the client was
/// told nothing more comes for it), so a new call may take the id. The old call's answer,
/// coming first, must not take the new call's place: the server gets the new call, once, and
/// the cancelled one never.
async fn a_new_call_reusing_a_cancelled_waiting_calls_id_is_the_one_that_goes_on(policy: &str) {
    let store = Arc::new(GatedStore {
        inner: MemoryStore::new(),
        open: std::sync::atomic::AtomicBool::new(false),
    });
    let worker = toolgate::testing::policy::StoreWorker::new(store.clone());
    let mut h = start_with(policy, move |mut g| {
        g.store = worker;
        g
    });
    h.client
        .send_json(call(1, "slow", json!({"which": "old"})))
        .await;
    h.client
        .send_json(json!({"jsonrpc":"2.0","method":"notifications/cancelled",
                          "params":{"requestId":1}}))
        .await;
    h.client
        .send_json(call(1, "slow", json!({"which": "new"})))
        .await;
    // The connection reads in order: once this ping is through, both calls wait for the
    // store (the cancellation is the gateway's own: the server never saw the call).
    assert_eq!(h.ping(2).await["method"], "ping");
    store.open.store(true, std::sync::atomic::Ordering::SeqCst);
    let forwarded = h.server.recv().await;
    assert_eq!(
        (&forwarded["id"], &forwarded["params"]["arguments"]["which"]),
        (&json!(1), &json!("new")),
        "the server got {forwarded}"
    );
    // The old call is recorded as ended, the new one as allowed.
    let mut verdicts = Vec::new();
    while verdicts.len() < 2 {
        if let EventKind::Call(call) = h.event_of(&["call"]).await
            && call.tool == "slow"
        {
            verdicts.push((call.decision, call.reason.contains("ended")));
        }
    }
    verdicts.sort_by_key(|(_, ended)| *ended);
    assert_eq!(
        verdicts,
        [
            (toolgate::testing::policy::Verdict::Allow, false),
            (toolgate::testing::policy::Verdict::Deny, true)
        ]
    );
    // The old call's unit goes back: only the new call's is still taken.
    let given_back = tokio::time::Instant::now() + STEP;
    loop {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_millis() as u64;
        let used: u64 = toolgate::testing::policy::CounterStore::usage(
            &store.inner,
            "c",
            toolgate::testing::policy::Scope::Global,
            60_000,
            now_ms,
        )
        .expect("the memory store answers")
        .iter()
        .map(|key| key.used)
        .sum();
        if used == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < given_back,
            "waited 10 s for the cancelled call's unit to go back: {used} taken"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nothing else reached the server, and the new call's answer reaches the client.
    assert_eq!(h.ping(3).await["method"], "ping");
    h.server
        .send(r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#)
        .await;
    let answer = h.client.recv().await;
    assert_eq!(answer["id"], 1, "{answer}");
    assert!(answer.get("result").is_some(), "{answer}");
}

#[tokio::test]
async fn a_cancelled_limited_calls_answer_never_takes_the_place_of_a_new_call_with_its_id() {
    a_new_call_reusing_a_cancelled_waiting_calls_id_is_the_one_that_goes_on(
        r#"{"version":"1","default":"deny","tools":{
            "slow":{"limits":[{"counter":"c","window":"minute","max":5,"scope":"global"}]}}}"#,
    )
    .await;
}

/// As above, for a call with a shadow rule's limits too: its admissions are waited for by a
/// task of its own.
#[tokio::test]
async fn with_shadow_limits_a_cancelled_calls_answer_never_takes_the_place_of_a_new_call_with_its_id()
 {
    a_new_call_reusing_a_cancelled_waiting_calls_id_is_the_one_that_goes_on(
        r#"{"version":"1","default":"deny","tools":{
            "slow":{"limits":[{"counter":"c","window":"minute","max":5,"scope":"global"}]},
            "sl*":{"shadow":true,"limits":[{"counter":"s","window":"minute","max":5,"scope":"global"}]}}}"#,
    )
    .await;
}

/// A store that lets admissions through only once the test opens its gate (at most
/// [`STEP`]), and then, if told to, fails as a bug would: it panics, ending the store's
/// thread with admissions still queued behind it.
struct FailingGate {
    gate: GatedStore,
    panic: bool,
}

impl toolgate::testing::policy::CounterStore for FailingGate {
    fn admit(
        &self,
        limits: &[toolgate::testing::policy::LimitRequest<'_>],
        now_ms: u64,
    ) -> Result<toolgate::testing::policy::Admission, toolgate::testing::policy::StoreError> {
        let admitted = self.gate.admit(limits, now_ms);
        assert!(!self.panic, "the counter store fails (simulated)");
        admitted
    }

    fn try_release(
        &self,
        reservation: &toolgate::testing::policy::Reservation,
    ) -> Result<(), toolgate::testing::policy::StoreError> {
        self.gate.try_release(reservation)
    }

    fn usage(
        &self,
        counter: &str,
        scope: toolgate::testing::policy::Scope,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<toolgate::testing::policy::KeyUsage>, toolgate::testing::policy::StoreError>
    {
        self.gate.usage(counter, scope, window_ms, now_ms)
    }
}

/// A gateway whose limited tool `slow` (at most `max` a minute) waits for `store`'s gate.
fn start_gated(store: Arc<FailingGate>, max: u64, within: Option<Duration>) -> Harness {
    let mut worker = toolgate::testing::policy::StoreWorker::new(store);
    if let Some(within) = within {
        worker = worker.answering_within(within);
    }
    let policy = format!(
        r#"{{"version":"1","default":"deny","tools":{{"echo":{{}},
            "slow":{{"limits":[{{"counter":"c","window":"minute","max":{max},"scope":"global"}}]}}}}}}"#
    );
    start_with(&policy, move |mut g| {
        g.store = worker;
        g
    })
}

fn failing_gate(panic: bool) -> Arc<FailingGate> {
    Arc::new(FailingGate {
        gate: GatedStore {
            inner: MemoryStore::new(),
            open: std::sync::atomic::AtomicBool::new(false),
        },
        panic,
    })
}

/// The text of a refusal (`result` with `isError`) the client got.
fn refusal_text(answer: &Value) -> &str {
    assert_eq!(answer["result"]["isError"], true, "not a refusal: {answer}");
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test]
async fn limited_calls_answered_in_one_batch_go_on_in_the_order_they_came() {
    let store = failing_gate(false);
    let mut h = start_gated(store.clone(), 5, None);
    // The first call takes the store's thread and waits at the gate; the next seven queue
    // up behind it and are decided together once it opens.
    for id in 1..=8 {
        h.client.send_json(call(id, "slow", json!({}))).await;
    }
    // None is decided while the store has not answered: this ping passes them all.
    assert_eq!(h.ping(100).await["method"], "ping");
    store
        .gate
        .open
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Exactly max admitted, the first five in the order they came, the rest refused in
    // order too.
    for id in 1..=5 {
        assert_eq!(h.server.recv().await["id"], id);
    }
    for id in 6..=8 {
        let refused = h.client.recv().await;
        assert_eq!(refused["id"], id, "{refused}");
        assert!(
            refusal_text(&refused).starts_with("Rate limit reached"),
            "{refused}"
        );
    }
    let mut decided = Vec::new();
    while decided.len() < 8 {
        if let EventKind::Call(call) = h.event("call").await {
            decided.push((call.decision, call.tool.to_string()));
        }
    }
    let verdicts: Vec<_> = decided.iter().map(|(v, _)| *v).collect();
    use toolgate::testing::policy::Verdict::{Allow, RateLimited};
    assert_eq!(
        verdicts,
        [
            Allow,
            Allow,
            Allow,
            Allow,
            Allow,
            RateLimited,
            RateLimited,
            RateLimited
        ]
    );
}

#[tokio::test]
async fn a_store_thread_that_stops_with_calls_waiting_refuses_every_one_of_them() {
    let store = failing_gate(true);
    let mut h = start_gated(store.clone(), 100, None);
    for id in 1..=4 {
        h.client.send_json(call(id, "slow", json!({}))).await;
    }
    assert_eq!(h.ping(100).await["method"], "ping");
    // The store panics in the first admission: its thread ends, the batch it was deciding
    // and the calls queued behind it unanswered.
    store
        .gate
        .open
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut refused = Vec::new();
    for _ in 1..=4 {
        let answer = h.client.recv().await;
        // At once, saying what happened: not at the deadline, as for a slow store.
        assert!(refusal_text(&answer).contains("stopped"), "{answer}");
        refused.push(answer["id"].as_u64().expect("an id"));
    }
    refused.sort_unstable();
    assert_eq!(refused, [1, 2, 3, 4], "every waiting call is answered once");
    // None reached the server, and the next limited call is refused at once.
    assert_eq!(h.ping(101).await["method"], "ping");
    h.client.send_json(call(5, "slow", json!({}))).await;
    let answer = h.client.recv().await;
    assert_eq!(answer["id"], 5);
    assert!(refusal_text(&answer).contains("stopped"), "{answer}");
    assert_eq!(h.ping(102).await["method"], "ping");
}

#[tokio::test]
async fn a_call_whose_admission_is_not_answered_in_time_fails_closed_and_its_late_unit_goes_back() {
    let store = failing_gate(false);
    let mut h = start_gated(store.clone(), 5, Some(Duration::from_millis(200)));
    h.client.send_json(call(1, "slow", json!({}))).await;
    // The gate stays closed past the deadline: the call fails closed.
    let answer = h.client.recv().await;
    assert_eq!(answer["id"], 1);
    assert!(refusal_text(&answer).contains("did not answer"), "{answer}");
    // The store admits it late: nobody uses the unit, so it goes back.
    store
        .gate
        .open
        .store(true, std::sync::atomic::Ordering::SeqCst);
    loop {
        if let EventKind::Counters(counters) = h.event("counters").await
            && counters
                .counters
                .iter()
                .any(|c| c.counter == "c" && c.used == 0)
        {
            break;
        }
    }
    // The connection goes on: the next limited call is admitted.
    h.client.send_json(call(2, "slow", json!({}))).await;
    assert_eq!(h.server.recv().await["id"], 2);
}

/// On a runtime with several threads the store can answer a call before the connection has
/// put it among the calls waiting: that answer must still reach it. Each of these calls
/// would otherwise wait for its deadline (a minute here), past the test's own. (Such a call
/// is settled by the connection's reader, so it can be forwarded ahead of earlier calls the
/// draining task is still settling on the other thread: seen about once in 40 runs, 425
/// before 398. Order between calls in flight together is not promised; once each is.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limited_call_is_answered_when_the_store_answers_faster_than_the_connection() {
    let store = failing_gate(false);
    store
        .gate
        .open
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut h = start_gated(store, 1_000_000, Some(Duration::from_secs(60)));
    const CALLS: u64 = 500;
    let client = tokio::spawn(async move {
        for id in 1..=CALLS {
            h.client.send_json(call(id, "slow", json!({}))).await;
        }
        h
    });
    let mut h = client.await.expect("the client's sender");
    let mut seen = Vec::new();
    for _ in 1..=CALLS {
        let forwarded = h.server.recv().await;
        seen.push(forwarded["id"].as_u64().expect("an id"));
    }
    seen.sort_unstable();
    let expected: Vec<u64> = (1..=CALLS).collect();
    assert_eq!(seen, expected, "every call forwarded, each once");
}
