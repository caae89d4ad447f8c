//! TLS on `serve` end to end (issue 17): certificates from a private CA made in the test
//! (`support::tls`), the built binary with `--tls-cert`/`--tls-key` and `--operators`, the
//! real Python `mcp` client over https (trusting the CA through `SSL_CERT_FILE`), and
//! `toolgate tail` / `approve` over wss at `/control` with `--ca-file` and `--token-file`.
//! Wrong certificates, wrong tokens and plain HTTP each fail with a clear error and approve
//! nothing; a replaced certificate is used by new connections; stalled handshakes are shed
//! and timed out; the console's network task connects with `--ca-file`'s CA and says why it
//! cannot without it; control addresses off loopback without TLS are refused before anything
//! is bound.

#[path = "serve_support/running.rs"]
mod running;

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use running::{Serve, Setup, toolgate};
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use support::agent::{Agent, text};
use support::lines::line_reader;
use support::peers::peer;
use support::tls::{Ca, ServerFiles};
use support::wait::{wait_for, wait_until};
use support::{ANSWER_WITHIN, terminate};

/// How long a certificate change may take to apply (debounce plus slack for CI).
const RELOAD_WITHIN: Duration = Duration::from_secs(20);

/// `get_current_time` is allowed, `convert_time` waits for a person.
const POLICY: &str = r#"{"version":"1","default":"allow",
    "tools":{"convert_time":{"action":"require_approval","reason":"a person checks conversions"}}}"#;

fn time_servers() -> Value {
    json!({ "time": { "command": peer(".venv/bin/mcp-server-time") } })
}

/// Operator accounts made with the real CLI in `dir`: each name's token in `<name>.token`
/// (mode 0600). Returns the operators file.
fn operators(dir: &Path, accounts: &[(&str, &str)]) -> PathBuf {
    let file = dir.join("operators.json");
    for (name, role) in accounts {
        let out = toolgate(
            &[
                "operators",
                "add",
                name,
                "--role",
                role,
                "--file",
                file.to_str().unwrap(),
            ],
            dir,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = dir.join(format!("{name}.token"));
        std::fs::write(&token, String::from_utf8(out.stdout).unwrap().trim()).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    file
}

/// `serve` over TLS with operator accounts, `/control` on its own port.
struct TlsServe {
    serve: Serve,
    files: ServerFiles,
    /// Certificates, keys and tokens.
    keys: tempfile::TempDir,
    grant: String,
}

impl TlsServe {
    fn start(ca: &Ca) -> TlsServe {
        TlsServe::start_with(ca, &[])
    }

    /// With `more` flags for `serve`.
    fn start_with(ca: &Ca, more: &[&str]) -> TlsServe {
        let keys = tempfile::tempdir().unwrap();
        let files = ca.write_server(keys.path(), "gw");
        let ops = operators(keys.path(), &[("val", "viewer"), ("alice", "approver")]);
        let mut extra = vec![
            "--tls-cert",
            files.cert.to_str().unwrap(),
            "--tls-key",
            files.key.to_str().unwrap(),
            "--operators",
            ops.to_str().unwrap(),
        ];
        extra.extend(more);
        let serve = Serve::start(Setup {
            policy: POLICY,
            servers: time_servers(),
            grants: &["ci"],
            extra: &extra,
            ..Setup::default()
        });
        let grant = serve.tokens[0].clone();
        TlsServe {
            serve,
            files,
            keys,
            grant,
        }
    }

    fn https(&self) -> String {
        format!("https://{}", self.serve.addr)
    }

    fn token_file(&self, name: &str) -> PathBuf {
        self.keys.path().join(format!("{name}.token"))
    }

    /// `toolgate approve CALL --connect https://… --ca-file CA --token-file <name>.token`.
    fn approve(&self, call_id: &str, name: &str, ca: &Path) -> std::process::Output {
        self.remote(&["approve", call_id], &self.https(), name, ca)
    }

    /// A one-shot CLI command against this gateway's control websocket.
    fn remote(&self, args: &[&str], url: &str, name: &str, ca: &Path) -> std::process::Output {
        let token = self.token_file(name);
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--connect",
            url,
            "--ca-file",
            ca.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
        ]);
        // Its own runtime directory: nothing local to find, only --connect.
        let alone = tempfile::tempdir().unwrap();
        toolgate(&all, alone.path())
    }

    /// `toolgate tail --json` following this gateway over wss as `name`.
    fn tail(&self, name: &str) -> RemoteTail {
        let mut child = Command::new(support::toolgate())
            .args(["tail", "--json", "--connect", &self.https(), "--ca-file"])
            .arg(&self.files.ca)
            .arg("--token-file")
            .arg(self.token_file(name))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start toolgate tail");
        let lines = line_reader(child.stdout.take().unwrap());
        RemoteTail { child, lines }
    }
}

/// `toolgate tail --json --connect …`, killed when dropped.
struct RemoteTail {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl RemoteTail {
    /// The next event matching `matches` within `within`, skipping others.
    fn wait_event(&self, what: &str, within: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the remote tail saw no {what} within {within:?}"));
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && matches(&event)
            {
                return event;
            }
        }
    }
}

impl Drop for RemoteTail {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// An `initialize` POST over https (trusting the test CA) with `token`: the status and body.
fn https_post(gw: &TlsServe, path: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&gw.files.ca).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        toolgate::testing::tls::ring_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(gw.serve.addr).unwrap();
    tcp.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}})
    .to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\n\r\n{body}",
        gw.serve.addr,
        body.len()
    );
    tls.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    // A close without close_notify is an error to rustls; what was read is kept.
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_agent_calls_over_https_and_operators_follow_and_approve_over_wss_with_their_roles() {
    let ca = Ca::new("toolgate test CA");
    let gw = TlsServe::start(&ca);
    let url = format!("{}/mcp/time", gw.https());

    // The viewer follows over wss before anything happens.
    let tail = gw.tail("val");
    tail.wait_event("hello", ANSWER_WITHIN, |e| e["type"] == "hello");

    // A real MCP client over https, trusting the private CA.
    let mut agent = Agent::https("auto", &url, &gw.grant, &gw.files.ca);
    let answer = agent.call("get_current_time", json!({"timezone": "UTC"}));
    assert_eq!(answer["is_error"], false, "{answer}");
    assert!(text(&answer).contains("UTC"), "{answer}");
    tail.wait_event("the allowed call", ANSWER_WITHIN, |e| {
        e["type"] == "call" && e["tool"] == "get_current_time" && e["decision"] == "allow"
    });

    // A held call, seen by the viewer over wss.
    agent.start_call(
        "convert_time",
        json!({"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"}),
    );
    let held = tail.wait_event("the held call", ANSWER_WITHIN, |e| {
        e["type"] == "call" && e["tool"] == "convert_time" && e["decision"] == "hold"
    });
    let call_id = held["call_id"].as_str().unwrap().to_owned();

    // The viewer may not approve, and is told why.
    let refused = gw.approve(&call_id, "val", &gw.files.ca);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(err.contains("has the viewer role"), "{err}");

    // A CA that did not sign the certificate: not trusted, said so.
    let other = Ca::new("some other CA");
    let other_ca = gw.keys.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.pem()).unwrap();
    let untrusted = gw.approve(&call_id, "alice", &other_ca);
    assert!(!untrusted.status.success());
    let err = stderr(&untrusted);
    assert!(
        err.contains(&format!(
            "the certificate of {} is not trusted",
            gw.serve.addr
        )),
        "{err}"
    );
    assert!(err.contains("--ca-file"), "{err}");

    // A token that is no operator's (the agent's grant token): refused.
    let grant_token = gw.keys.path().join("grant.token");
    std::fs::write(&grant_token, &gw.grant).unwrap();
    std::fs::set_permissions(&grant_token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let wrong = gw.approve(&call_id, "grant", &gw.files.ca);
    assert!(!wrong.status.success());
    let err = stderr(&wrong);
    assert!(err.contains("refused the token"), "{err}");

    // Plain ws:// to the TLS port: told to use TLS.
    let plain = gw.remote(
        &["approve", &call_id],
        &format!("ws://{}/control", gw.serve.addr),
        "alice",
        &gw.files.ca,
    );
    assert!(!plain.status.success());
    let err = stderr(&plain);
    assert!(err.contains("speaks TLS: connect with https://"), "{err}");

    // Nothing of that approved anything: the call is still held.
    assert!(
        !gw.serve
            .audit()
            .iter()
            .any(|r| r["call_id"] == call_id.as_str() && r["kind"] == "outcome"),
        "a refused approval let the call through"
    );

    // The approver approves over wss; the agent gets its answer.
    let approved = gw.approve(&call_id, "alice", &gw.files.ca);
    assert!(approved.status.success(), "{}", stderr(&approved));
    let answer = agent.answer();
    assert_eq!(answer["is_error"], false, "{answer}");
    let resolved = tail.wait_event("the approval", ANSWER_WITHIN, |e| {
        e["type"] == "hold_resolved" && e["call_id"] == call_id.as_str()
    });
    assert_eq!(resolved["approved"], true, "{resolved}");
    assert_eq!(resolved["operator"], "alice", "{resolved}");
    agent.close();
}

#[test]
fn tokens_stay_on_their_side_and_plain_http_is_told_to_use_https() {
    let ca = Ca::new("toolgate test CA");
    let gw = TlsServe::start(&ca);

    // An operator's token on the MCP endpoint: refused like any unknown token (over https,
    // so that only the token differs from an agent's request).
    let operator_token = std::fs::read_to_string(gw.token_file("alice")).unwrap();
    let (status, body) = https_post(&gw, "/mcp/time", operator_token.trim());
    assert_eq!(status, 401, "{body}");
    let (status, _) = https_post(&gw, "/mcp/time", &gw.grant);
    assert_eq!(
        status, 200,
        "the grant's own token works on the same request"
    );

    // A grant's token on /control: refused (the CLI says so).
    let grant_token = gw.keys.path().join("grant.token");
    std::fs::write(&grant_token, &gw.grant).unwrap();
    std::fs::set_permissions(&grant_token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = gw.remote(&["approve", "x-1"], &gw.https(), "grant", &gw.files.ca);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused the token"),
        "{}",
        stderr(&out)
    );

    // Plain HTTP to the TLS port: a 400 that says what to do.
    let reply = gw.serve.http("GET", "/mcp/time", &[], "");
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(
        reply.body.contains("this port speaks TLS; use https://"),
        "{reply:?}"
    );
}

/// A TCP connection that starts a TLS handshake and never finishes it: a record header
/// announcing a ClientHello, and nothing more.
fn stalled_handshake(gw: &TlsServe) -> std::net::TcpStream {
    use std::io::Write;
    let mut socket = std::net::TcpStream::connect(gw.serve.addr).unwrap();
    socket.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    socket
}

#[test]
fn handshakes_that_never_finish_are_shed_for_agents_and_closed_at_the_header_deadline() {
    use std::io::Read;
    let ca = Ca::new("toolgate test CA");
    let gw = TlsServe::start_with(&ca, &["--max-connections", "8", "--header-timeout", "2"]);
    // More stalled handshakes than the cap: each newcomer sheds the oldest.
    let mut stalled: Vec<_> = (0..20).map(|_| stalled_handshake(&gw)).collect();
    // An agent's request still gets through (shedding makes room for it).
    let (status, body) = https_post(&gw, "/mcp/time", &gw.grant);
    assert_eq!(status, 200, "{body}");
    // And a handshake that does not finish within the header deadline is closed.
    let mut last = stalled.pop().unwrap();
    // (Shed or timed out, it is reset; a read that times out here means it was kept.)
    last.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    let read = last.read(&mut buf);
    assert!(
        matches!(&read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a stalled handshake was kept open or answered: {read:?}"
    );
}

#[test]
fn a_replaced_certificate_is_used_by_new_connections_and_a_broken_one_is_not() {
    let first = Ca::new("first CA");
    let gw = TlsServe::start(&first);
    let approver = |ca: &Path| gw.remote(&["approve", "none-1"], &gw.https(), "alice", ca);
    // Connected and authenticated: the command reaches the gateway, which knows no such call.
    let known = |out: &std::process::Output| stderr(out).contains("no held call none-1");
    assert!(
        known(&approver(&gw.files.ca)),
        "{}",
        stderr(&approver(&gw.files.ca))
    );

    // A new pair from another CA, written over the files the gateway watches.
    let second = Ca::new("second CA");
    let (cert, key) = second.server(&["127.0.0.1", "localhost"]);
    let second_ca = gw.keys.path().join("second-ca.pem");
    std::fs::write(&second_ca, second.pem()).unwrap();
    std::fs::write(&gw.files.key, key).unwrap();
    std::fs::write(&gw.files.cert, cert).unwrap();
    wait_until(
        "a new connection trusting the second CA",
        RELOAD_WITHIN,
        || known(&approver(&second_ca)),
    );
    let err = stderr(&approver(&gw.files.ca));
    assert!(
        err.contains("is not trusted"),
        "the old CA still works: {err}"
    );

    // A broken certificate keeps the pair in force, and the log says why.
    std::fs::write(&gw.files.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    wait_for(
        "the log to refuse the broken certificate",
        RELOAD_WITHIN,
        || {
            let log = gw.serve.log();
            if log.contains("keeping the certificate in force") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    assert!(
        known(&approver(&second_ca)),
        "{}",
        stderr(&approver(&second_ca))
    );
}

#[test]
fn control_listen_serves_the_control_websocket_on_its_own_tls_port() {
    let ca = Ca::new("toolgate test CA");
    let keys = tempfile::tempdir().unwrap();
    let files = ca.write_server(keys.path(), "gw");
    let ops = operators(keys.path(), &[("alice", "approver")]);
    let serve = Serve::start(Setup {
        policy: POLICY,
        servers: time_servers(),
        grants: &["ci"],
        extra: &[
            "--tls-cert",
            files.cert.to_str().unwrap(),
            "--tls-key",
            files.key.to_str().unwrap(),
            "--operators",
            ops.to_str().unwrap(),
            "--control-listen",
            "127.0.0.1:0",
        ],
        ..Setup::default()
    });
    let control = wait_for("the control websocket's address", ANSWER_WITHIN, || {
        let log = serve.log();
        log.lines()
            .find_map(|l| l.strip_prefix("toolgate serve: control websocket on "))
            .map(str::to_owned)
            .ok_or(log)
    });
    assert!(control.starts_with("wss://127.0.0.1:"), "{control}");
    let token = keys.path().join("alice.token");
    let alone = tempfile::tempdir().unwrap();
    let out = toolgate(
        &[
            "approve",
            "none-1",
            "--connect",
            &control,
            "--ca-file",
            files.ca.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
        ],
        alone.path(),
    );
    assert!(
        stderr(&out).contains("no held call none-1 on this gateway"),
        "{}",
        stderr(&out)
    );
    // Not at /control of the MCP port, then.
    let out = toolgate(
        &[
            "approve",
            "none-1",
            "--connect",
            &format!("https://{}", serve.addr),
            "--ca-file",
            files.ca.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
        ],
        alone.path(),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
}

#[test]
fn clear_text_control_addresses_off_loopback_are_refused_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let ops = operators(dir.path(), &[("alice", "approver")]);
    let ops = ops.to_str().unwrap();
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--policy",
            "policy.json",
            "--servers",
            "servers.json",
            "--grants",
            "grants.json",
        ];
        args.extend(extra);
        toolgate(&args, dir.path())
    };
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--listen",
                "0.0.0.0:0",
                "--allow-remote",
                "--operators",
                ops,
            ],
            "/control",
        ),
        (
            &["--control-listen", "0.0.0.0:0", "--operators", ops],
            "--control-listen 0.0.0.0:0",
        ),
        (
            &[
                "--listen",
                "0.0.0.0:0",
                "--allow-remote",
                "--metrics-public",
            ],
            "--metrics-public",
        ),
        (
            &["--listen", "0.0.0.0:0"],
            "refusing to listen on 0.0.0.0:0",
        ),
    ];
    for (extra, names) in cases {
        let out = serve(extra);
        let err = stderr(&out);
        assert!(!out.status.success(), "{extra:?} started");
        assert!(err.contains(names), "{extra:?}: {err}");
        assert!(
            err.contains("--tls-cert PEM --tls-key PEM"),
            "{extra:?}: {err}"
        );
    }
    let out = toolgate(
        &[
            "wrap",
            "--policy",
            "policy.json",
            "--events",
            "0.0.0.0:0",
            "--",
            "true",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("refusing --events 0.0.0.0:0"), "{err}");
    assert!(err.contains("--tls-cert PEM --tls-key PEM"), "{err}");

    // The flag that allowed clear text is gone.
    let out = serve(&["--events-allow-remote"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--events-allow-remote"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_console_follows_a_tls_gateway_trusting_its_ca_file_and_says_why_it_cannot_otherwise() {
    use toolgate::console::testing::{AppEvent, Link, Targets, net};
    use toolgate::testing::control::Remote;

    let ca = Ca::new("toolgate test CA");
    let gw = TlsServe::start(&ca);
    let token = std::fs::read_to_string(gw.token_file("val")).unwrap();
    let other_ca = gw.keys.path().join("other-ca.pem");
    std::fs::write(&other_ca, Ca::new("some other CA").pem()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The first link report after connecting: up, or down with the error.
    let first_report = |ca_file: &Path| {
        runtime.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
            let _commands = net::spawn(
                Targets::Several {
                    remotes: vec![Remote {
                        ca_file: Some(ca_file.to_owned()),
                        ..Remote::new(
                            format!("wss://{}/control", gw.serve.addr),
                            token.trim().to_owned(),
                        )
                    }],
                    discover: false,
                },
                tx,
            );
            let report = async {
                while let Some(event) = rx.recv().await {
                    if let AppEvent::Link { link, .. } = event
                        && !matches!(link, Link::Connecting { .. })
                    {
                        return link;
                    }
                }
                panic!("the console's network task ended");
            };
            support::wait::within("the console's first link report", ANSWER_WITHIN, report).await
        })
    };
    assert!(
        matches!(first_report(&gw.files.ca), Link::Up { .. }),
        "the console did not connect with the CA"
    );
    match first_report(&other_ca) {
        Link::Down { error, .. } => assert!(error.contains("is not trusted"), "{error}"),
        other => panic!("connected without trusting the certificate: {other:?}"),
    }
}

#[test]
fn a_revoked_operator_is_disconnected_from_control() {
    use toolgate::testing::control::{TlsClientOptions, connect_with};

    let ca = Ca::new("toolgate test CA");
    let gw = TlsServe::start(&ca);
    let token = std::fs::read_to_string(gw.token_file("val")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = format!("wss://{}/control", gw.serve.addr);
    let trust = TlsClientOptions {
        ca_file: Some(gw.files.ca.clone()),
    };
    let mut conn = runtime.block_on(async {
        let connecting = connect_with(&url, token.trim(), &trust);
        support::wait::within("the viewer's connection", ANSWER_WITHIN, connecting)
            .await
            .expect("the viewer connects")
    });
    let ops = gw.keys.path().join("operators.json");
    let out = toolgate(
        &[
            "operators",
            "revoke",
            "val",
            "--file",
            ops.to_str().unwrap(),
        ],
        gw.keys.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    runtime.block_on(async {
        let closed = async {
            loop {
                match conn.next_event().await {
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return,
                }
            }
        };
        support::wait::within(
            "the revoked viewer's connection to close",
            RELOAD_WITHIN,
            closed,
        )
        .await;
    });
}
