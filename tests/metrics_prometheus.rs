//! `serve`'s `/metrics` against a real receiver: Debian's `prometheus` server scrapes the
//! built binary while the real Python `mcp` client makes allowed, denied, rate-limited and
//! held calls through it to `@modelcontextprotocol/server-everything`; the test then asks
//! Prometheus's HTTP API for the series. Also who may scrape: the operator token, or
//! `--metrics-public` on loopback only.
//!
//! `prometheus` and the peers are installed by `scripts/setup-test-peers`; without them these
//! tests fail.

#[path = "serve_support/running.rs"]
mod running;

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use running::{Serve, Setup, toolgate};
use serde_json::{Value, json};
use support::agent::text;
use support::discovery::wait_discovery;
use support::peers::everything;
use support::{ANSWER_WITHIN, Stopped};

/// How long Prometheus may take to start, scrape and answer with the calls' series.
const SCRAPED_WITHIN: Duration = Duration::from_secs(60);

/// `echo` allowed once an hour, `get-sum` held for a person, everything else denied.
const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "echo": { "rate_limit": { "max": 1, "window": "hour" } },
    "get-sum": { "action": "require_approval", "reason": "sums need a person" }
  }
}"#;

fn everything_server() -> Value {
    let command = everything();
    json!({ "everything": { "command": command[0], "args": &command[1..] } })
}

fn start_serve(extra: &[&str]) -> Serve {
    Serve::start(Setup {
        policy: POLICY,
        servers: everything_server(),
        grants: &["ci"],
        extra,
        ..Setup::default()
    })
}

/// A free loopback port (bound and released: Prometheus binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `prometheus` scraping `target`'s `/metrics` every second, storing under `dir`.
fn start_prometheus(dir: &std::path::Path, target: std::net::SocketAddr) -> (Stopped, u16) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: toolgate\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus (installed by scripts/setup-test-peers)");
    (Stopped(child), port)
}

/// One GET on a new connection; the status code and body (`None` while nothing listens).
fn get(port: u16, path_and_query: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(ANSWER_WITHIN)).ok()?;
    let mut request =
        format!("GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).ok()?;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply.split(' ').nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Prometheus's answer to an instant query for the metric `name` (no label matchers, so
/// nothing needs URL-encoding): each series' labels and value.
fn query(port: u16, name: &str) -> Vec<(Value, f64)> {
    let Some((200, body)) = get(port, &format!("/api/v1/query?query={name}"), &[]) else {
        return Vec::new();
    };
    // A chunked body: the JSON is the part between the first `{` and the last `}`.
    let (Some(start), Some(end)) = (body.find('{'), body.rfind('}')) else {
        return Vec::new();
    };
    let Ok(answer) = serde_json::from_str::<Value>(&body[start..=end]) else {
        return Vec::new();
    };
    answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|series| {
            let value = series["value"][1].as_str()?.parse().ok()?;
            Some((series["metric"].clone(), value))
        })
        .collect()
}

/// The value of the series of `name` whose labels include `labels`.
fn value_of(series: &[(Value, f64)], labels: &Value) -> Option<f64> {
    let wanted = labels.as_object()?;
    series
        .iter()
        .find(|(metric, _)| wanted.iter().all(|(k, v)| &metric[k] == v))
        .map(|(_, value)| *value)
}

/// The labels of `ci`'s calls to `everything`'s `tool` decided `decision`, as scraped.
fn calls(decision: &str, tool: &str) -> Value {
    json!({"job": "toolgate", "grant": "ci", "server": "everything", "decision": decision, "tool": tool})
}

#[test]
fn prometheus_scrapes_allowed_denied_limited_and_held_calls_by_tool() {
    let serve = start_serve(&["--metrics-public"]);
    let (_prometheus, prom_port) = start_prometheus(serve.dir.path(), serve.addr);
    let mut client = serve.client("legacy", "everything", &serve.tokens[0]);

    let allowed = client.call("echo", json!({"message": "hi"}));
    assert_eq!(text(&allowed), "Echo: hi", "{allowed}");
    let limited = client.call("echo", json!({"message": "again"}));
    assert_eq!(limited["is_error"], true, "{limited}");
    let denied = client.call("get-env", json!({}));
    assert_eq!(denied["is_error"], true, "{denied}");
    client.start_call("get-sum", json!({"a": 1, "b": 2}));
    let runtime = serve.dir.path().to_owned();
    let deadline = Instant::now() + ANSWER_WITHIN;
    let held = loop {
        let hold = serve
            .audit()
            .into_iter()
            .find(|r| r["decision"] == "hold")
            .and_then(|r| r["call_id"].as_str().map(str::to_owned));
        if let Some(id) = hold {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "no hold within {ANSWER_WITHIN:?}; log:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let approved = toolgate(&["approve", &held], &runtime);
    assert!(approved.status.success(), "{approved:?}");
    let sum = client.answer();
    assert_eq!(sum["is_error"], false, "{sum}");

    let expected = [
        (calls("allow", "echo"), 1.0),
        (calls("rate_limited", "echo"), 1.0),
        (calls("deny", "get-env"), 1.0),
        (calls("hold", "get-sum"), 1.0),
    ];
    let deadline = Instant::now() + SCRAPED_WITHIN;
    loop {
        let series = query(prom_port, "toolgate_calls_total");
        let waits = query(prom_port, "toolgate_hold_wait_seconds_count");
        let durations = query(prom_port, "mcp_server_operation_duration_seconds_count");
        let used = query(prom_port, "toolgate_counter_used");
        let max = query(prom_port, "toolgate_counter_max");
        let found = expected
            .iter()
            .all(|(labels, n)| value_of(&series, labels) == Some(*n))
            && value_of(&waits, &json!({"resolution": "approved"})) == Some(1.0)
            && value_of(
                &durations,
                &json!({"mcp_method_name": "tools/call", "gen_ai_tool_name": "echo"}),
            ) == Some(1.0)
            && value_of(
                &durations,
                &json!({"mcp_method_name": "tools/call", "gen_ai_tool_name": "get-sum"}),
            ) == Some(1.0)
            && value_of(
                &used,
                &json!({"counter": "echo", "scope": "grant", "key": "ci"}),
            ) == Some(1.0)
            && value_of(
                &max,
                &json!({"counter": "echo", "scope": "grant", "key": "ci"}),
            ) == Some(1.0);
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not have the expected series within {SCRAPED_WITHIN:?}\n\
             calls: {series:?}\nwaits: {waits:?}\ndurations: {durations:?}\nused: {used:?}\n\
             max: {max:?}\nprometheus log:\n{}\nserve log:\n{}",
            std::fs::read_to_string(serve.dir.path().join("prometheus.log")).unwrap_or_default(),
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    client.close();
}

#[test]
fn metrics_need_the_operator_token_unless_public() {
    let serve = start_serve(&[]);
    let port = serve.addr.port();
    let (status, body) = get(port, "/metrics", &[]).expect("serve answers /metrics");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("operator token"), "{body}");
    let (status, _) = get(
        port,
        "/metrics",
        &[("Authorization", &format!("Bearer {}", serve.tokens[0]))],
    )
    .expect("serve answers /metrics");
    assert_eq!(
        status, 401,
        "an agent's grant token must not read the metrics"
    );
    let operator = wait_discovery(serve.dir.path(), || serve.log()).token;
    let (status, body) = get(
        port,
        "/metrics",
        &[("Authorization", &format!("Bearer {operator}"))],
    )
    .expect("serve answers /metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("# TYPE toolgate_calls_total counter"),
        "{body}"
    );
}

#[test]
fn public_metrics_answer_only_requests_addressed_to_a_loopback_host() {
    let serve = start_serve(&["--metrics-public"]);
    let reply = serve.http("GET", "/metrics", &[], "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut stream = TcpStream::connect(serve.addr).expect("connect to serve");
    stream
        .write_all(
            b"GET /metrics HTTP/1.1\r\nHost: rebound.example:8787\r\nConnection: close\r\n\r\n",
        )
        .expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the reply");
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
}

#[test]
fn public_metrics_on_a_non_loopback_address_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in [
        ("policy.json", POLICY.to_owned()),
        (
            "servers.json",
            json!({"mcpServers": everything_server()}).to_string(),
        ),
    ] {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    running::add_grant(dir.path(), "ci");
    let out = toolgate(
        &[
            "serve",
            "--policy",
            "policy.json",
            "--servers",
            "servers.json",
            "--grants",
            "grants.json",
            "--listen",
            "0.0.0.0:0",
            "--allow-remote",
            "--metrics-public",
            "--counters",
            "memory",
            "--audit",
            "audit.jsonl",
        ],
        dir.path(),
    );
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing --metrics-public on 0.0.0.0"),
        "{stderr}"
    );
}
