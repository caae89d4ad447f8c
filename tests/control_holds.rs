//! Caps on held calls through the real `toolgate serve`: a grant at its cap has further calls
//! denied, saying so, in the agent's answer, the call event and the audit record, with its
//! counter units given back, while another grant's calls are still held. Raw stateless
//! (2026-07-28) requests to the trivial upstream; loopback only.

#[path = "serve_support/running.rs"]
mod running;
#[path = "serve_support/trivial.rs"]
mod trivial;

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use running::{Serve, Setup};
use serde_json::{Value, json};
use support::ANSWER_WITHIN;
use support::discovery::{operator, wait_discovery};
use toolgate::testing::wire::Verdict;

/// Every echo needs a person; three echoes an hour per grant.
const POLICY: &str = r#"{"version": "1", "default": "deny", "tools": {"echo": {
    "action": "require_approval", "approval_timeout": "10m",
    "rate_limit": {"max": 3, "window": "hour"}}}}"#;

const CAP_PHRASE: &str = "too many held calls";

/// `serve` in front of the trivial upstream (as server `t`) with [`POLICY`] and `grants`;
/// `extra` are more `toolgate serve` options.
fn start(grants: &[&str], extra: &[&str]) -> (Serve, Vec<String>) {
    let (upstream, _seen) = trivial::start(false);
    let serve = Serve::start(Setup {
        policy: POLICY,
        servers: json!({"t": {"url": format!("http://{upstream}/mcp")}}),
        grants,
        extra,
        ..Setup::default()
    });
    let tokens = serve.tokens.clone();
    (serve, tokens)
}

// The raw requests of these tests, on the shared harness's `Serve`.
impl Serve {
    /// A stateless echo call with a progress token, whose answer is an event stream. Returns
    /// once the first event arrived: a progress note, which only a held call is sent.
    fn held_echo(&self, token: &str, id: u64) -> BufReader<TcpStream> {
        let mut stream = self.request(token, &echo(id, true));
        let mut line = String::new();
        loop {
            line.clear();
            let read = stream.read_line(&mut line).unwrap_or_else(|e| {
                panic!(
                    "no answer to call {id} within {ANSWER_WITHIN:?} ({e}); log:\n{}",
                    self.log()
                )
            });
            assert!(
                read > 0,
                "the stream of call {id} ended; log:\n{}",
                self.log()
            );
            if let Some(data) = line.strip_prefix("data: ") {
                assert!(
                    data.contains("notifications/progress"),
                    "call {id} was answered instead of held: {data}"
                );
                return stream;
            }
        }
    }

    /// A stateless echo call without a progress token; returns its whole answer.
    fn echo(&self, token: &str, id: u64) -> String {
        let mut stream = self.request(token, &echo(id, false));
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    fn request(&self, token: &str, body: &Value) -> BufReader<TcpStream> {
        let mut stream = TcpStream::connect(self.addr).expect("connect to serve");
        stream
            .set_read_timeout(Some(ANSWER_WITHIN))
            .expect("a read deadline");
        let body = body.to_string();
        let request = format!(
            "POST /mcp/t HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer \
             {token}\r\nContent-Type: application/json\r\nAccept: application/json, \
             text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .expect("send the request");
        BufReader::new(stream)
    }
}

fn echo(id: u64, progress: bool) -> Value {
    let mut meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}});
    if progress {
        meta["progressToken"] = json!(id);
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": format!("call {id}")}, "_meta": meta}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_at_its_hold_cap_is_denied_saying_so_while_another_grant_is_still_held() {
    let (serve, tokens) = start(
        &["greedy", "patient"],
        &["--max-holds-per-grant", "2", "--max-holds", "10"],
    );
    let (greedy, patient) = (&tokens[0], &tokens[1]);

    let _first = serve.held_echo(greedy, 1);
    let _second = serve.held_echo(greedy, 2);

    // The third is denied at once, naming the cap and the flag that sets it.
    let third = serve.echo(greedy, 3);
    assert!(
        third.contains(CAP_PHRASE) && third.contains("--max-holds-per-grant 2"),
        "the third held call of a grant at its cap: {third}"
    );

    // Its counter unit was given back: a fourth call (3 an hour are allowed) meets the hold
    // cap again rather than the rate limit.
    let fourth = serve.echo(greedy, 4);
    assert!(
        fourth.contains(CAP_PHRASE),
        "the refused call kept its counter unit: {fourth}"
    );

    // Another grant's call is still held.
    let _patient = serve.held_echo(patient, 5);

    // The audit record and the call event say deny, with the reason. Records reach the file
    // a few milliseconds after the decision (the audit writer's flush).
    let denied = support::wait::wait_for("two denials audited", ANSWER_WITHIN, || {
        let denied: Vec<Value> = serve
            .audit()
            .into_iter()
            .filter(|r| {
                r["kind"] == "decision" && r["grant"] == "greedy" && r["decision"] == "deny"
            })
            .collect();
        if denied.len() >= 2 {
            Ok(denied)
        } else {
            Err(format!("audited: {denied:?}"))
        }
    });
    assert_eq!(denied.len(), 2, "two denials audited: {denied:?}");
    assert!(
        denied
            .iter()
            .all(|r| r["reason"].as_str().is_some_and(|t| t.contains(CAP_PHRASE))),
        "{denied:?}"
    );
    let entry = wait_discovery(serve.dir.path(), || serve.log());
    let (_operator, hello) = operator(&entry).await;
    let calls = &hello.snapshot.calls;
    let denied_events = calls
        .iter()
        .filter(|r| r.call.grant == "greedy" && r.call.decision == Verdict::Deny)
        .filter(|r| r.call.reason.contains(CAP_PHRASE))
        .count();
    assert_eq!(denied_events, 2, "{calls:?}");
    assert_eq!(
        hello.snapshot.holds.len(),
        3,
        "two greedy holds and one patient"
    );
    let held_grants: Vec<&str> = calls
        .iter()
        .filter(|r| r.call.decision == Verdict::Hold)
        .map(|r| r.call.grant.as_str())
        .collect();
    assert_eq!(held_grants, ["greedy", "greedy", "patient"]);
}
