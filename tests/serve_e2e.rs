//! `toolgate serve` end to end, with real peers: the Python `mcp` 2.3.0 client over
//! Streamable HTTP (modes `auto` and `legacy`, `tests/e2e/http_driver.py`) through the built
//! binary to `@modelcontextprotocol/server-everything` started in `streamableHttp` mode (a URL
//! upstream) and to `mcp-server-time` (a stdio upstream, spawned per session), plus raw HTTP
//! for what a client library would not send (no token, a foreign Origin, an unknown server).
//!
//! The peers are installed by `scripts/setup-test-peers`; without them these tests fail.

#[path = "serve_support/running.rs"]
mod running;
#[path = "serve_support/trivial.rs"]
mod trivial;

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use running::{Reply, Serve, Setup, toolgate};
use serde_json::{Value, json};
use support::agent::text;
use support::peers::peer;
use support::wait::{wait_for, wait_until};
use support::{ANSWER_WITHIN, Stopped};

/// How long a grants edit may take to apply (debounce plus slack for CI).
const RELOAD_WITHIN: Duration = Duration::from_secs(20);

/// A policy that allows every call.
const ALLOW_ALL: &str = r#"{"version": "1", "default": "allow"}"#;
/// A policy that holds every call for a person.
const HOLD_ALL: &str = r#"{"version":"1","default":"require_approval"}"#;

/// The mcpServers object with `mcp-server-time` (stdio) as `time`.
fn time_servers() -> Value {
    json!({ "time": { "command": peer(".venv/bin/mcp-server-time") } })
}

/// The trivial upstream (`serve_support/trivial.rs`) on a port of its own, recording what it
/// sees, and the mcpServers object naming it `t`.
fn trivial_upstream() -> (Value, Arc<trivial::Seen>) {
    let (upstream, seen) = trivial::start(true);
    let servers = json!({ "t": { "url": format!("http://{upstream}/mcp") } });
    (servers, seen)
}

/// An `initialize` request (id 1) of the handshake era.
fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
}

/// server-everything in `streamableHttp` mode on a free port.
fn start_everything() -> (Stopped, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("node")
        .arg(peer("node_modules/.bin/mcp-server-everything"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start server-everything");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if line.contains("listening on port") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(ANSWER_WITHIN)
        .expect("server-everything did not start listening");
    (Stopped(child), port)
}

/// Starts `serve` with `policy` and `servers` (the mcpServers object) and its own default
/// counter store; `grants` are made first and their tokens returned in order.
fn start(policy: &str, servers: Value, grants: &[&str]) -> (Serve, Vec<String>) {
    start_with(policy, servers, grants, &[])
}

/// Like [`start`], with more `toolgate serve` options.
fn start_with(
    policy: &str,
    servers: Value,
    grants: &[&str],
    extra: &[&str],
) -> (Serve, Vec<String>) {
    let serve = Serve::start(Setup {
        policy,
        servers,
        grants,
        extra,
        default_counters: true,
        ..Setup::default()
    });
    let tokens = serve.tokens.clone();
    (serve, tokens)
}

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "hide": ["get-env", "toggle-*"],
  "tools": {
    "echo": { "rate_limit": { "max": 2, "window": "hour" } },
    "get_current_time": { "rate_limit": { "max": 2, "window": "hour" } },
    "convert_time": { "action": "deny", "reason": "conversions are off in tests" },
    "get-sum": {},
    "trigger-long-running-operation": {},
    "trigger-sampling-request": {}
  }
}"#;

/// The tool each upstream is exercised with.
fn probe(server: &str) -> (&'static str, Value) {
    match server {
        "time" => ("get_current_time", json!({"timezone": "UTC"})),
        _ => ("echo", json!({"message": "hi"})),
    }
}

#[test]
fn http_clients_in_both_modes_see_tools_decisions_and_limits_per_grant() {
    let (_everything, port) = start_everything();
    let modes = ["auto", "legacy"];
    let servers = ["time", "everything"];
    let mut grants = Vec::new();
    for mode in modes {
        for server in servers {
            grants.push(format!("{mode}-{server}-a"));
            grants.push(format!("{mode}-{server}-b"));
        }
    }
    let names: Vec<&str> = grants.iter().map(String::as_str).collect();
    let (serve, tokens) = start(
        POLICY,
        json!({
            "time": { "command": peer(".venv/bin/mcp-server-time") },
            "everything": { "url": format!("http://127.0.0.1:{port}/mcp") },
        }),
        &names,
    );
    let mut next = 0;
    for mode in modes {
        for server in servers {
            let (tool, args) = probe(server);
            let (a, b) = (&tokens[next], &tokens[next + 1]);
            next += 2;
            let context = format!("{mode} → {server}; log:\n{}", serve.log());

            let mut client = serve.client(mode, server, a);
            let info = client.ask(json!({"op": "info"}));
            let expected = match (mode, server) {
                // mcp-server-time speaks 2026-07-28: auto settles on it (stateless requests).
                ("auto", "time") => "2026-07-28",
                _ => "2025-11-25",
            };
            assert_eq!(info["protocol"], expected, "{context}");
            let tools = client.tools();
            assert!(tools.contains(&tool.to_owned()), "{tools:?} {context}");
            assert!(
                !tools
                    .iter()
                    .any(|t| t == "get-env" || t.starts_with("toggle-")),
                "hidden tools listed: {tools:?}"
            );

            // Two calls a grant, the third is refused with the limit's reason.
            for _ in 0..2 {
                let ok = client.call(tool, args.clone());
                assert_eq!(ok["is_error"], false, "{ok} {context}");
            }
            let limited = client.call(tool, args.clone());
            assert_eq!(limited["is_error"], true, "{limited}");
            assert!(
                text(&limited).starts_with("Rate limit reached: 2 calls per hour"),
                "{limited}"
            );
            if server == "everything" {
                // The upstream's event stream is passed on as it comes: progress, and a
                // server-to-client sampling request answered by the client.
                let long = client.ask(
                    json!({"op": "call", "tool": "trigger-long-running-operation",
                    "args": {"duration": 1, "steps": 3}, "progress": true}),
                );
                assert_eq!(long["is_error"], false, "{long} {context}");
                assert!(long["progress"].as_u64().unwrap() >= 1, "{long}");
                let sampled = client.call(
                    "trigger-sampling-request",
                    json!({"prompt": "hi", "maxTokens": 5}),
                );
                assert!(
                    text(&sampled).contains("sampled by the e2e driver"),
                    "{sampled} {context}"
                );
            }
            if server == "time" {
                let denied = client.call("convert_time", json!({}));
                assert_eq!(
                    text(&denied),
                    "Denied by policy (/tools/convert_time): conversions are off in tests"
                );
            }
            client.close();

            // Another grant has its own budget.
            let mut other = serve.client(mode, server, b);
            let ok = other.call(tool, args.clone());
            assert_eq!(ok["is_error"], false, "{ok} {context}");
            other.close();
        }
    }

    // Events and audit records name the grant and the server.
    let audit = serve.audit();
    for mode in modes {
        for server in servers {
            let grant = format!("{mode}-{server}-a");
            let decisions: Vec<&Value> = audit
                .iter()
                .filter(|r| r["kind"] == "decision" && r["grant"] == grant.as_str())
                .collect();
            assert!(decisions.len() >= 3, "{grant}: {decisions:?}");
            assert!(
                decisions.iter().all(|r| r["server"] == server),
                "{decisions:?}"
            );
            assert_eq!(
                decisions
                    .iter()
                    .filter(|r| r["decision"] == "rate_limited")
                    .count(),
                1,
                "{decisions:?}"
            );
        }
    }
}

#[test]
fn requests_without_a_valid_token_from_a_foreign_origin_or_to_an_unknown_server_are_refused() {
    let (serve, tokens) = start(POLICY, time_servers(), &["ci"]);
    let init = initialize();
    let path = "/mcp/time";
    let json_headers = [("Content-Type", "application/json")];

    let none = serve.http("POST", path, &json_headers, &init.to_string());
    assert_eq!(none.status, 401, "{}", none.body);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let wrong = serve.post("time", "tg_not-a-token", None, &init);
    assert_eq!(wrong.status, 401);
    let basic = serve.http(
        "POST",
        path,
        &[("Authorization", &format!("Basic {}", tokens[0]))],
        &init.to_string(),
    );
    assert_eq!(basic.status, 401);

    let auth = format!("Bearer {}", tokens[0]);
    let foreign = serve.http(
        "POST",
        path,
        &[("Authorization", &auth), ("Origin", "http://evil.example")],
        &init.to_string(),
    );
    assert_eq!(foreign.status, 403);
    let own = format!("http://127.0.0.1:{}", serve.addr.port());
    let same_origin = serve.http(
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Origin", &own),
            ("Content-Type", "application/json"),
        ],
        &init.to_string(),
    );
    assert_eq!(same_origin.status, 200, "{}", same_origin.body);

    let unknown = serve.post("nope", &tokens[0], None, &init);
    assert_eq!(unknown.status, 404);

    // The real client, with a wrong token, cannot connect at all.
    let mut client = serve.client("legacy", "time", "tg_wrong");
    let answer = client.ask(json!({"op": "info"}));
    assert!(answer.get("connect_error").is_some(), "{answer}");
    // Nothing was decided for any of them.
    assert!(serve.audit().is_empty());
}

#[test]
fn sessions_are_mapped_and_the_bearer_token_never_reaches_the_upstream() {
    let (upstream, seen) = trivial::start(true);
    let policy = ALLOW_ALL;
    let servers = json!({ "t": {
        "url": format!("http://{upstream}/mcp"),
        "headers": { "X-Upstream-Key": "upstream-secret" }
    }});
    let (serve, tokens) = start(policy, servers, &["ci", "other"]);
    let init = initialize();
    let reply = serve.post("t", &tokens[0], None, &init);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let session = reply
        .header("mcp-session-id")
        .expect("a session id")
        .to_owned();
    assert_ne!(session, trivial::UPSTREAM_SESSION);

    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "through"}}});
    let reply = serve.post("t", &tokens[0], Some(&session), &call);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["result"]["content"][0]["text"], "through");

    // Another grant cannot use this session.
    let stolen = serve.post("t", &tokens[1], Some(&session), &call);
    assert_eq!(stolen.status, 404);

    {
        let seen = seen.headers.lock().unwrap();
        assert!(seen.len() >= 2);
        for headers in seen.iter() {
            assert!(headers.get("authorization").is_none(), "{headers:?}");
            assert_eq!(headers["x-upstream-key"], "upstream-secret");
        }
        let last = seen.last().unwrap();
        assert_eq!(last["mcp-session-id"], trivial::UPSTREAM_SESSION);
        assert_eq!(last["mcp-protocol-version"], "2025-11-25");
    }

    // DELETE ends the session; it is unknown afterwards.
    let deleted = serve.delete("t", &tokens[0], &session);
    assert_eq!(deleted.status, 204);
    let after = serve.post("t", &tokens[0], Some(&session), &call);
    assert_eq!(after.status, 404);

    let auth = format!("Bearer {}", tokens[0]);
    // A body that names one tool and a header that names another is refused.
    let mismatch = serve.http(
        "POST",
        "/mcp/t",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "echo"),
        ],
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "delete_everything", "arguments": {}}})
        .to_string(),
    );
    assert_eq!(mismatch.status, 400, "{}", mismatch.body);
}

#[test]
fn revoking_a_grant_applies_without_a_restart() {
    let (serve, tokens) = start(ALLOW_ALL, time_servers(), &["ci"]);
    let ping = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(serve.post("time", &tokens[0], None, &ping).status, 202);
    let grants = serve.dir.path().join("grants.json");
    let out = toolgate(
        &["grants", "revoke", "ci", "--file", grants.to_str().unwrap()],
        serve.dir.path(),
    );
    assert!(out.status.success());
    let list = toolgate(
        &["grants", "list", "--file", grants.to_str().unwrap()],
        serve.dir.path(),
    );
    assert!(String::from_utf8_lossy(&list.stdout).trim().is_empty());
    wait_for(
        "the revoked token to be refused (401)",
        RELOAD_WITHIN,
        || {
            if serve.post("time", &tokens[0], None, &ping).status == 401 {
                Ok(())
            } else {
                Err(format!("still accepted; log:\n{}", serve.log()))
            }
        },
    );
}

#[test]
fn a_held_call_streams_progress_until_an_operator_approves_it() {
    let (_everything, port) = start_everything();
    let (serve, tokens) = start(
        r#"{"version":"1","default":"deny","tools":{"echo":{"action":"require_approval",
            "reason":"echo needs a person"}}}"#,
        json!({ "everything": { "url": format!("http://127.0.0.1:{port}/mcp") } }),
        &["ci"],
    );
    let mut client = serve.client("legacy", "everything", &tokens[0]);
    client.send(
        &json!({"op": "call", "tool": "echo", "args": {"message": "may I"}, "progress": true}),
    );
    let call_id = wait_for("a held call in the audit log", ANSWER_WITHIN, || {
        serve
            .audit()
            .into_iter()
            .find(|r| r["decision"] == "hold")
            .and_then(|r| r["call_id"].as_str().map(str::to_owned))
            .ok_or_else(|| format!("log:\n{}", serve.log()))
    });
    let approved = toolgate(&["approve", &call_id], serve.dir.path());
    assert!(approved.status.success(), "{approved:?}");
    let answer = client.answer();
    assert_eq!(answer["is_error"], false, "{answer}");
    assert_eq!(text(&answer), "Echo: may I");
    assert!(answer["progress"].as_u64().unwrap() >= 1, "{answer}");
    let audit = serve.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["kind"] == "outcome" && r["grant"] == "ci" && r["server"] == "everything"),
        "{audit:?}"
    );
    client.close();
}

/// The first `data:` line of an event stream (with its line end).
fn first_data_line(stream: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stream.read_line(&mut line).unwrap() > 0, "stream ended");
        if line.starts_with("data: ") {
            return line;
        }
    }
}

/// A raw request whose answer is an event stream, read event by event.
fn open_stream(addr: SocketAddr, path: &str, token: &str, body: &Value) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).unwrap();
    BufReader::new(stream)
}

#[test]
fn a_client_that_closes_a_held_calls_stream_cancels_it() {
    let (servers, seen) = trivial_upstream();
    let (serve, tokens) = start(HOLD_ALL, servers, &["ci"]);
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"message": "x"}, "_meta": {"progressToken": "p9"}}});
    let mut stream = open_stream(serve.addr, "/mcp/t", &tokens[0], &call);
    // The hold's first progress note arrives as an event before any answer.
    let line = first_data_line(&mut stream);
    assert!(
        line.contains("notifications/progress") && line.contains("\"p9\""),
        "{line}"
    );
    // Follow the events, to see the hold end.
    let tail = serve.tail();
    let rx = &tail.lines;
    // The snapshot the tail starts with shows the open hold.
    let call_id = loop {
        let line = rx.recv_timeout(ANSWER_WITHIN).expect("no events");
        if let Some(at) = line.find("\"call_id\":\"") {
            let rest = &line[at + 11..];
            break rest[..rest.find('"').unwrap()].to_owned();
        }
    };
    drop(stream);

    // The hold ends as cancelled: an operator can no longer approve it, and the call never
    // reaches the upstream.
    loop {
        let line = rx
            .recv_timeout(ANSWER_WITHIN)
            .expect("the hold did not end");
        if line.contains("hold_resolved") {
            assert!(line.contains("cancel"), "{line}");
            break;
        }
    }
    let out = toolgate(&["approve", &call_id], serve.dir.path());
    assert!(
        !out.status.success(),
        "approved a call whose client had gone: {out:?}"
    );
    assert!(
        !seen
            .methods
            .lock()
            .unwrap()
            .iter()
            .any(|m| m == "tools/call"),
        "the cancelled call reached the upstream"
    );
}

#[test]
fn stateless_requests_keep_their_ids_and_carry_routing_headers_built_from_the_body() {
    let (servers, seen) = trivial_upstream();
    let (serve, tokens) = start(ALLOW_ALL, servers, &["ci"]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}});
    // Two clients, both using id 1, without sessions: each gets its own answer.
    let replies: Vec<Reply> = ["first", "second"]
        .into_iter()
        .map(|message| {
            let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"message": message}, "_meta": meta}});
            serve.post("t", &tokens[0], None, &call)
        })
        .collect();
    for (reply, message) in replies.iter().zip(["first", "second"]) {
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.header("mcp-session-id").is_none());
        let answer: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(answer["id"], 1, "{answer}");
        assert_eq!(answer["result"]["content"][0]["text"], message);
    }
    let headers = seen.headers.lock().unwrap();
    let last = headers.last().unwrap();
    assert_eq!(last["mcp-method"], "tools/call");
    assert_eq!(last["mcp-name"], "echo");
    assert_eq!(last["mcp-protocol-version"], "2026-07-28");
    assert!(last.get("authorization").is_none());
}

#[test]
fn oversized_bodies_and_batches_are_refused_before_any_decision() {
    let (serve, tokens) = start_with(
        ALLOW_ALL,
        time_servers(),
        &["ci"],
        &["--max-message", "1MiB"],
    );
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "get_current_time", "arguments": {"pad": "x".repeat(2 * 1024 * 1024)}}});
    let refused = serve.post("time", &tokens[0], None, &big);
    assert_eq!(refused.status, 413);
    assert!(refused.body.contains("--max-message"), "{}", refused.body);
    let batch = json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}]);
    assert_eq!(serve.post("time", &tokens[0], None, &batch).status, 400);
    let garbage = serve.http(
        "POST",
        "/mcp/time",
        &[("Authorization", &format!("Bearer {}", tokens[0]))],
        "{not json",
    );
    assert_eq!(garbage.status, 400);
    assert!(serve.audit().is_empty());
}

#[test]
fn a_post_body_is_one_message_beyond_dispute_or_it_is_refused_before_any_decision() {
    let (servers, seen) = trivial_upstream();
    let (serve, tokens) = start(
        r#"{"version":"1","default":"deny","tools":{"echo":{}}}"#,
        servers,
        &["ci"],
    );
    let auth = format!("Bearer {}", tokens[0]);
    let post = |body: &str| {
        serve.http(
            "POST",
            "/mcp/t",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
            ],
            body,
        )
    };
    let delete = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_file","arguments":{}}}"#;
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    for body in [
        // Split on newlines, these would be two messages: the second never decided.
        format!("{ping}\n{delete}"),
        format!("{ping}\r\n{delete}\n"),
        format!("[[{delete}]]"),
        format!("[{delete}]"),
        format!("\u{feff}{delete}"),
        delete.replace(
            r#""name":"delete_file""#,
            r#""name":"echo","name":"delete_file""#,
        ),
        delete.replace(r#""arguments":{}"#, r#""arguments":{"a":1,"a":2}"#),
        delete.replace("delete_file", r"delete_file\ud800"),
        format!("{delete} x"),
        delete.replace(r#""id":2"#, r#""id":2.0"#),
        delete.replace(r#""id":2"#, r#""id":null"#),
        delete.replace(r#""id":2"#, r#""id":true"#),
        format!("{:?}", delete),
        "42".to_owned(),
    ] {
        let reply = post(&body);
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        let answer: Value = serde_json::from_str(&reply.body).unwrap();
        let code = answer["error"]["code"].as_i64().unwrap();
        assert!(code == -32600 || code == -32700, "{body}: {answer}");
    }
    // One object with newlines inside is one message: decided once, on what it says.
    let pretty = |tool: &str, message: &str| {
        serde_json::to_string_pretty(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": tool, "arguments": {"message": message}}}))
        .unwrap()
    };
    let refused = post(&pretty("delete_file", "x"));
    assert_eq!(refused.status, 200, "{}", refused.body);
    let refused: Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    let echoed = post(&pretty("echo", "two\nlines"));
    assert_eq!(echoed.status, 200, "{}", echoed.body);
    let echoed: Value = serde_json::from_str(&echoed.body).unwrap();
    assert_eq!(echoed["id"], 3);
    assert_eq!(echoed["result"]["content"][0]["text"], "two\nlines");
    // The upstream was asked one call, the allowed one; both decisions are audited.
    let methods = seen.methods.lock().unwrap().clone();
    assert_eq!(
        methods.iter().filter(|m| *m == "tools/call").count(),
        1,
        "{methods:?}"
    );
    let tools = wait_for("two decisions in the audit log", ANSWER_WITHIN, || {
        let tools: Vec<String> = serve
            .audit()
            .iter()
            .filter(|r| r["kind"] == "decision")
            .map(|r| r["tool"].as_str().unwrap_or("").to_owned())
            .collect();
        if tools.len() >= 2 {
            Ok(tools)
        } else {
            Err(format!("audit records: {tools:?}"))
        }
    });
    assert_eq!(tools, ["delete_file", "echo"]);
}

#[test]
fn a_stateless_held_call_streams_progress_with_the_clients_own_token() {
    let (servers, _seen) = trivial_upstream();
    let (serve, tokens) = start(HOLD_ALL, servers, &["ci"]);
    let call = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"message": "x"},
        "_meta": {"progressToken": 42,
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}}});
    let mut stream = open_stream(serve.addr, "/mcp/t", &tokens[0], &call);
    let line = first_data_line(&mut stream);
    let note: Value = serde_json::from_str(line.trim_start_matches("data: ").trim()).unwrap();
    assert_eq!(note["method"], "notifications/progress");
    assert_eq!(note["params"]["progressToken"], 42, "{note}");
}

/// The pid `serve` logged for the server it started for the `n`-th session (1-based).
fn server_pid(serve: &Serve, n: usize) -> i32 {
    wait_for(&format!("server {n} to start"), ANSWER_WITHIN, || {
        let log = serve.log();
        let pids: Vec<i32> = log
            .lines()
            .filter_map(|l| l.split("(pid ").nth(1))
            .filter_map(|rest| rest.split(')').next()?.parse().ok())
            .collect();
        pids.get(n - 1)
            .copied()
            .ok_or_else(|| format!("log:\n{log}"))
    })
}

fn wait_gone(pid: i32, why: &str) {
    // Signal 0 only asks whether the process exists (its parent reaps it).
    wait_until(
        &format!("server {pid} to stop after {why}"),
        ANSWER_WITHIN,
        || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
    );
}

#[test]
fn a_sessions_server_process_stops_when_the_session_is_deleted_or_idle() {
    let (serve, tokens) = start_with(
        ALLOW_ALL,
        time_servers(),
        &["ci"],
        // 1.2 s idle.
        &["--session-idle", "0.02"],
    );
    let init = initialize();
    let first = serve.post("time", &tokens[0], None, &init);
    assert_eq!(first.status, 200, "{}", first.body);
    let first_session = first.header("mcp-session-id").unwrap().to_owned();
    let first_pid = server_pid(&serve, 1);
    let deleted = serve.delete("time", &tokens[0], &first_session);
    assert_eq!(deleted.status, 204);
    wait_gone(first_pid, "DELETE");

    let second = serve.post("time", &tokens[0], None, &init);
    assert_eq!(second.status, 200, "{}", second.body);
    let second_session = second.header("mcp-session-id").unwrap().to_owned();
    let second_pid = server_pid(&serve, 2);
    wait_gone(second_pid, "the idle time");
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    assert_eq!(
        serve
            .post("time", &tokens[0], Some(&second_session), &list)
            .status,
        404
    );
}
