//! Memory stays flat through the real `toolgate serve` when an HTTP client stops reading
//! its session's GET stream while the server sends maximum-size messages to it: what waits
//! for the client is bounded in bytes, so the server is pushed back instead of the gateway
//! holding every message, and other sessions are still answered. At most 200 messages of
//! just under 1 MiB, on loopback, with a deadline on every wait.

#[path = "serve_support/running.rs"]
mod running;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use running::{Serve, Setup, initialize};
use support::ANSWER_WITHIN;
use support::memory::peak_rss;

const FLOOD: usize = 200;
/// The whole line stays under `--max-message 1MiB`.
const PAD: usize = 1_000_000;
/// Far below `FLOOD` × 1 MiB; far above what the queues of one session may hold.
const MAX_GROWTH: u64 = 32 << 20;
/// A sender whose count has not moved for this long is taken to be pushed back.
const STILL_FOR: Duration = Duration::from_secs(2);

/// A handshake-era server: answers `initialize` and `ping`; on `notifications/flood` writes
/// `FLOOD` large notifications, writing how many it got out into argv[1] after each.
const SERVER: &str = r#"
import sys, json, os
progress_path, pad, count = sys.argv[1], "x" * int(sys.argv[2]), int(sys.argv[3])
def out(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()
for raw in sys.stdin.buffer:
    msg = json.loads(raw)
    method = msg.get("method")
    if method == "initialize":
        out({"jsonrpc": "2.0", "id": msg["id"], "result": {"protocolVersion": "2025-11-25",
             "capabilities": {}, "serverInfo": {"name": "flood", "version": "1"}}})
    elif method == "ping" and "id" in msg:
        out({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
    elif method == "notifications/flood":
        for i in range(count):
            out({"jsonrpc": "2.0", "method": "notifications/message",
                 "params": {"level": "info", "data": {"n": i, "pad": pad}}})
            with open(progress_path + ".tmp", "w") as f:
                f.write(str(i + 1))
            os.replace(progress_path + ".tmp", progress_path)
"#;

fn read_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Opens a session: `initialize` and `notifications/initialized`; returns its id.
fn open_session(serve: &Serve, token: &str) -> String {
    let reply = serve.post("flood", token, None, &initialize());
    assert_eq!(reply.status, 200, "{reply:?}\n{}", serve.log());
    let session = reply
        .header("mcp-session-id")
        .unwrap_or_else(|| panic!("no session id: {reply:?}"))
        .to_owned();
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let reply = serve.post("flood", token, Some(&session), &note);
    assert_eq!(reply.status, 202, "{reply:?}");
    session
}

#[test]
fn a_get_stream_that_is_not_read_pushes_the_server_back_and_memory_stays_flat() {
    let scratch = tempfile::tempdir().unwrap();
    let script = scratch.path().join("server.py");
    std::fs::write(&script, SERVER).unwrap();
    let progress = scratch.path().join("progress");
    let serve = Serve::start(Setup {
        policy: r#"{"version":"1","default":"allow"}"#,
        servers: json!({ "flood": { "command": support::peers::python(), "args": [
            script.to_str().unwrap(), progress.to_str().unwrap(), PAD.to_string(), FLOOD.to_string()
        ]}}),
        grants: &["agent"],
        extra: &["--max-message", "1MiB"],
        ..Setup::default()
    });
    let token = serve.tokens[0].clone();
    let session = open_session(&serve, &token);

    // The session's GET stream: its head is read, then nothing more.
    let mut stream = TcpStream::connect(serve.addr).unwrap();
    stream.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    write!(
        stream,
        "GET /mcp/flood HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Mcp-Session-Id: {session}\r\nAccept: text/event-stream\r\n\r\n",
        serve.addr
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).unwrap_or_else(|e| {
            panic!(
                "the GET stream's head did not come ({e}); log:\n{}",
                serve.log()
            )
        });
        assert!(n == 1, "the GET stream closed before its head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    let before = peak_rss(serve.pid()).expect("the gateway's memory");
    let flood = json!({"jsonrpc": "2.0", "method": "notifications/flood"});
    let reply = serve.post("flood", &token, Some(&session), &flood);
    assert_eq!(reply.status, 202, "{reply:?}");

    let deadline = Instant::now() + ANSWER_WITHIN;
    let (mut last, mut since) = (read_count(&progress), Instant::now());
    let written = loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = read_count(&progress);
        if now >= FLOOD {
            break now;
        }
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= STILL_FOR {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the flood kept moving ({now} of {FLOOD})"
        );
    };
    let after = peak_rss(serve.pid()).expect("the gateway's memory");
    eprintln!("peak RSS {before} -> {after} bytes; {written} of {FLOOD} messages written");
    assert!(
        written < FLOOD,
        "the server wrote all {FLOOD} messages of 1 MiB to a GET stream no one reads"
    );
    assert!(
        after < before + MAX_GROWTH,
        "the peak memory grew from {before} to {after} bytes while {written} messages of 1 MiB \
         waited for a client that does not read"
    );

    // Another session is answered meanwhile.
    let other = open_session(&serve, &token);
    let ping = json!({"jsonrpc": "2.0", "id": 7, "method": "ping"});
    let reply = serve.post("flood", &token, Some(&other), &ping);
    assert_eq!(reply.status, 200, "{reply:?}");
    let answer: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(answer["id"], 7, "{reply:?}");
    drop(stream);
}
