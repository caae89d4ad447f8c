//! `toolgate serve`'s session caps, against the built binary on loopback: one grant flooding
//! `initialize` gets 429 beyond its own cap (and starts no more server processes) while
//! another grant opens a session with the real Python client and calls a tool; the gateway
//! cap refuses every grant with 503; a server that cannot start gives its place back; a
//! stateless (2026-07-28) link counts as a session; operators see `session_refused`; sessions
//! calling at once get their own answers whether `serve` runs on one thread or several.

#[path = "serve_support/running.rs"]
mod running;
#[path = "serve_support/trivial.rs"]
mod trivial;

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use running::{Serve, Setup, initialize};
use serde_json::json;
use support::agent::{Agent, text};
use support::peers::{e2e_script, peer, python};
use support::wait::{wait_for, wait_until};
use support::{ANSWER_WITHIN, toolgate};

const ALLOW_ALL: &str = r#"{"version": "1", "default": "allow"}"#;

/// Threads sending `initialize` at once for the flooding grant.
const FLOOD_THREADS: usize = 24;
/// Most `initialize` requests the flood sends in all.
const FLOOD_MAX_REQUESTS: usize = 10_000;
/// Pause of each flooding thread between requests (about 500 requests a second in all).
const FLOOD_PAUSE: Duration = Duration::from_millis(50);
/// Longest the flood runs.
const FLOOD_MAX_TIME: Duration = Duration::from_secs(60);

#[test]
fn a_grant_flooding_initialize_is_capped_alone_while_another_grant_opens_a_session_and_calls() {
    let stub = e2e_script("stub_server.py");
    let serve = Serve::start(Setup {
        policy: ALLOW_ALL,
        servers: json!({
            // A light stdio server for the flood: each session started is a process.
            "stub": { "command": python(), "args": [stub, "crash"] },
            "time": { "command": peer(".venv/bin/mcp-server-time") },
        }),
        grants: &["flood", "agent"],
        ..Setup::default()
    });
    let tail = serve.tail();
    // The refusal is reported at once and then at most every 5 s: tail must be connected
    // before the flood starts, or a short flood's one event goes by unseen.
    tail.wait_event("`hello`", ANSWER_WITHIN, |e| e["type"] == "hello");
    let flood_token = serve.tokens[0].clone();

    // The flood: every thread sends `initialize` as fast as it is answered, until told to
    // stop, bounded in count and time.
    let stop = AtomicBool::new(false);
    let sent = AtomicUsize::new(0);
    let statuses = Mutex::new(Vec::new());
    let sessions = Mutex::new(Vec::new());
    let refusal_body = Mutex::new(None);
    let started = Barrier::new(FLOOD_THREADS + 1);
    let (agent_answer, fds_during, rss_during) = std::thread::scope(|s| {
        for _ in 0..FLOOD_THREADS {
            s.spawn(|| {
                started.wait();
                let began = Instant::now();
                while !stop.load(Ordering::SeqCst)
                    && began.elapsed() < FLOOD_MAX_TIME
                    && sent.fetch_add(1, Ordering::SeqCst) < FLOOD_MAX_REQUESTS
                {
                    let reply = serve.post("stub", &flood_token, None, &initialize());
                    if reply.status == 200 {
                        let sid = reply.header("mcp-session-id").unwrap().to_owned();
                        sessions.lock().unwrap().push(sid);
                    } else if reply.status == 429 {
                        refusal_body
                            .lock()
                            .unwrap()
                            .get_or_insert(reply.body.clone());
                    }
                    statuses.lock().unwrap().push(reply.status);
                    std::thread::sleep(FLOOD_PAUSE);
                }
            });
        }
        started.wait();
        // Wait until the flood is past its cap, so the agent meets it at its worst.
        wait_until("the flood to be refused (429)", ANSWER_WITHIN, || {
            statuses.lock().unwrap().contains(&429)
        });
        // Meanwhile another grant opens a session (its own server process) and calls a tool.
        let mut agent = Agent::http("legacy", &serve.url("time"), &serve.tokens[1]);
        let answer = agent.call("get_current_time", json!({"timezone": "UTC"}));
        let tools = agent.tools();
        assert!(tools.contains(&"get_current_time".to_owned()), "{tools:?}");
        let fds = serve.open_fds();
        let rss = serve.rss_kib();
        agent.close();
        let still_flooding =
            !stop.load(Ordering::SeqCst) && sent.load(Ordering::SeqCst) < FLOOD_MAX_REQUESTS;
        stop.store(true, Ordering::SeqCst);
        assert!(
            still_flooding,
            "the flood ended before the agent was done; raise FLOOD_MAX_REQUESTS"
        );
        (answer, fds, rss)
    });
    assert_eq!(agent_answer["is_error"], false, "{agent_answer}");
    assert!(text(&agent_answer).contains("timezone"), "{agent_answer}");

    let statuses = statuses.into_inner().unwrap();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok, 16, "the flooding grant got past its cap: {statuses:?}");
    assert_eq!(ok + refused, statuses.len(), "other answers: {statuses:?}");
    let body = refusal_body.into_inner().unwrap().unwrap();
    assert!(
        body.contains("16 open MCP sessions") && body.contains("--max-sessions-per-grant"),
        "{body}"
    );
    // One server process per session the flood got; none for the refused ones (the agent's
    // has ended with its session, or is ending).
    wait_for("16 server processes for 16 sessions", ANSWER_WITHIN, || {
        let children = serve.children();
        if children == 16 {
            Ok(())
        } else {
            Err(format!("{children} now; log:\n{}", serve.log()))
        }
    });
    eprintln!(
        "session flood: {} initialize requests from one grant, {ok} opened, {refused} refused; \
         gateway during the flood: VmRSS {rss_during} KiB, {fds_during} descriptors",
        statuses.len()
    );

    // Operators are told, once for the burst, with a count.
    let event = tail.wait_event("`session_refused`", ANSWER_WITHIN, |e| {
        e["type"] == "session_refused"
    });
    assert_eq!(event["grant"], "flood");
    assert_eq!(event["cap"], "grant");
    assert_eq!(event["max"], 16);
    assert!(event["refused"].as_u64().unwrap() >= 1, "{event}");
    drop(tail);

    // Ending a session gives its place back.
    let sessions = sessions.into_inner().unwrap();
    let auth = format!("Bearer {flood_token}");
    let deleted = serve.http(
        "DELETE",
        "/mcp/stub",
        &[("Authorization", &auth), ("Mcp-Session-Id", &sessions[0])],
        "",
    );
    assert_eq!(deleted.status, 204);
    let again = serve.post("stub", &flood_token, None, &initialize());
    assert_eq!(again.status, 200, "{}", again.body);
}

#[test]
fn the_gateway_cap_refuses_every_grant_and_a_server_that_cannot_start_gives_its_place_back() {
    let (upstream, _seen) = trivial::start(false);
    let serve = Serve::start(Setup {
        policy: ALLOW_ALL,
        servers: json!({
            "t": { "url": format!("http://{upstream}/mcp") },
            "broken": { "command": "/nonexistent/toolgate-test-server" },
        }),
        grants: &["a", "b"],
        extra: &["--max-sessions", "2", "--max-sessions-per-grant", "5"],
        ..Setup::default()
    });
    let (a, b) = (&serve.tokens[0], &serve.tokens[1]);
    // Failed starts take no place for good.
    for _ in 0..3 {
        let failed = serve.post("broken", a, None, &initialize());
        assert_eq!(failed.status, 502, "{}", failed.body);
    }
    for token in [a, b] {
        let opened = serve.post("t", token, None, &initialize());
        assert_eq!(opened.status, 200, "{}", opened.body);
    }
    for token in [a, b] {
        let full = serve.post("t", token, None, &initialize());
        assert_eq!(full.status, 503, "{}", full.body);
        assert!(full.body.contains("--max-sessions"), "{}", full.body);
    }
}

#[test]
fn a_stateless_link_counts_against_its_grants_cap() {
    let (upstream, _seen) = trivial::start(false);
    let serve = Serve::start(Setup {
        policy: ALLOW_ALL,
        servers: json!({ "t": { "url": format!("http://{upstream}/mcp") } }),
        grants: &["a", "b"],
        extra: &["--max-sessions-per-grant", "1"],
        ..Setup::default()
    });
    let (a, b) = (&serve.tokens[0], &serve.tokens[1]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}});
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
        "params": {"_meta": meta}});
    // The grant's stateless link takes its one place, and keeps it for later requests.
    for _ in 0..2 {
        let stateless = serve.post("t", a, None, &list);
        assert_eq!(stateless.status, 200, "{}", stateless.body);
    }
    let refused = serve.post("t", a, None, &initialize());
    assert_eq!(refused.status, 429, "{}", refused.body);
    let other = serve.post("t", b, None, &initialize());
    assert_eq!(other.status, 200, "{}", other.body);
    let stateless = serve.post("t", b, None, &list);
    assert_eq!(stateless.status, 429, "{}", stateless.body);
}

#[test]
fn a_server_name_works_plain_or_percent_escaped_and_other_paths_are_not_found() {
    // `/mcp/NAME` is answered without axum's router unless the name has an escape: both
    // ways must check and answer alike.
    let (upstream, _seen) = trivial::start(false);
    let serve = Serve::start(Setup {
        policy: ALLOW_ALL,
        servers: json!({ "t": { "url": format!("http://{upstream}/mcp") } }),
        grants: &["a"],
        ..Setup::default()
    });
    let token = &serve.tokens[0];
    for name in ["t", "%74"] {
        let opened = serve.post(name, token, None, &initialize());
        assert_eq!(opened.status, 200, "/mcp/{name}: {}", opened.body);
        assert!(opened.header("mcp-session-id").is_some(), "/mcp/{name}");
        let anonymous = serve.http("POST", &format!("/mcp/{name}"), &[], "{}");
        assert_eq!(anonymous.status, 401, "/mcp/{name}: {}", anonymous.body);
    }
    for name in ["nope", "%6eope", "t/", "t/x", ""] {
        let refused = serve.post(name, token, None, &initialize());
        assert_eq!(refused.status, 404, "/mcp/{name}: {}", refused.body);
    }
}

#[test]
fn serve_help_teaches_the_session_and_connection_flags() {
    let out = std::process::Command::new(toolgate())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--max-sessions-per-grant <N>",
        "--max-sessions <N>",
        "--max-connections <N>",
        "--header-timeout <SECS>",
        "--body-timeout <SECS>",
        "--threads <N>",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(help.contains("[default: 16]"), "{help}");
    let zero = std::process::Command::new(toolgate())
        .args(["serve", "--max-sessions-per-grant", "0"])
        .output()
        .unwrap();
    assert!(!zero.status.success());
    let no_threads = std::process::Command::new(toolgate())
        .args(["serve", "--threads", "0"])
        .output()
        .unwrap();
    assert!(!no_threads.status.success());
}

/// Sessions calling at once, each on its own connections, through a `serve` on one runtime
/// thread (the default) and on several (`--threads 3`): every call gets its own answer, none
/// another session's, and the denied tool is denied in each.
#[test]
fn concurrent_sessions_get_their_own_answers_on_one_thread_and_on_several() {
    const SESSIONS: usize = 6;
    const CALLS: usize = 15;
    let (upstream, _) = trivial::start(false);
    for threads in [None, Some("3")] {
        let extra: Vec<&str> = threads.map(|n| vec!["--threads", n]).unwrap_or_default();
        let serve = Serve::start(Setup {
            policy: r#"{"version": "1", "default": "allow",
                "tools": {"forbidden": {"action": "deny", "reason": "not here"}}}"#,
            servers: json!({ "t": { "url": format!("http://{upstream}/mcp") } }),
            grants: &["agent"],
            extra: &extra,
            ..Setup::default()
        });
        let token = serve.tokens[0].clone();
        let answered = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for s in 0..SESSIONS {
                let (serve, token, answered) = (&serve, &token, &answered);
                scope.spawn(move || {
                    let opened = serve.post("t", token, None, &initialize());
                    assert_eq!(opened.status, 200, "initialize: {}", opened.body);
                    let session = opened.header("mcp-session-id").expect("a session id");
                    for c in 0..CALLS {
                        let message = format!("session {s} call {c}");
                        let (tool, id) = if c % 5 == 4 {
                            ("forbidden", c + 1000)
                        } else {
                            ("echo", c + 10)
                        };
                        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                            "params": {"name": tool, "arguments": {"message": message}}});
                        let reply = serve.post("t", token, Some(session), &call);
                        assert_eq!(reply.status, 200, "{threads:?}: {}", reply.body);
                        let answer: serde_json::Value = serde_json::from_str(&reply.body)
                            .unwrap_or_else(|e| panic!("{e}: {}", reply.body));
                        assert_eq!(answer["id"], id, "{answer}");
                        if tool == "forbidden" {
                            assert!(
                                answer.to_string().contains("not here"),
                                "{threads:?}: not denied: {answer}"
                            );
                        } else {
                            assert_eq!(
                                answer["result"]["content"][0]["text"], message,
                                "{threads:?}: another call's answer"
                            );
                        }
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(answered.load(Ordering::Relaxed), SESSIONS * CALLS);
    }
}
