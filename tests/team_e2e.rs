//! A team's gateway end to end (issue 17): two `toolgate serve` replicas of one policy,
//! sharing a Redis counter store and one operators file, in front of `mcp-server-time`; the
//! real Python `mcp` client as the agent; and the real console in tmux, once per operator
//! (viewer, approver, admin), each following both replicas through a named remote of
//! `remotes.toml`.
//!
//! It shows: the viewer cannot approve and sees why (and nothing is approved); the approver
//! approves the held call the client waits on, and the viewer's console says who did it; the
//! admin changes a limit with `:limit`, `:w`, `y`, the console says both replicas applied it,
//! and both enforce it on one shared budget; a revoked operator's connection is closed
//! within a second.
//!
//! Everything runs over real TLS: a private CA made by the test signs the replicas'
//! certificate; the agent trusts it through `SSL_CERT_FILE`, the consoles through the
//! `ca_file` of their named remote, and each console reaches `https://HOST:PORT` (serve's
//! `/control`).

#[path = "counters_support/mod.rs"]
mod counters_support;
#[path = "serve_support/running.rs"]
mod running;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use counters_support::RedisServer;
use running::{Serve, Setup, toolgate};
use serde_json::json;
use support::ANSWER_WITHIN;
use support::agent::text;
use support::discovery::wait_discovery;
use support::peers::peer;
use support::tmux::Tmux;
use support::wait::within;
use toolgate::testing::control;

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "get_current_time": { "action": "require_approval", "reason": "a person looks first" },
    "convert_time": {}
  }
}
"#;

/// How a console reaches a replica's control websocket: `https://HOST:PORT` (its `/control`
/// over TLS on serve's own listener) and the private CA the test made.
fn control_endpoint(replica: &Serve, ca: &Path) -> (String, Option<PathBuf>) {
    (format!("https://{}", replica.addr), Some(ca.to_owned()))
}

/// An agent of `replica` over https, trusting the test's CA.
fn https_agent(replica: &Serve, ca: &Path) -> support::agent::Agent {
    let url = format!("https://{}/mcp/time", replica.addr);
    support::agent::Agent::https("auto", &url, &replica.tokens[0], ca)
}

/// Adds an operator account with the real CLI; returns a token file (mode 0600) holding
/// its token, which the CLI prints once.
fn operator(ops: &Path, name: &str, role: &str, dir: &Path) -> PathBuf {
    let file = ops.display().to_string();
    let added = toolgate(
        &["operators", "add", name, "--role", role, "--file", &file],
        dir,
    );
    assert!(added.status.success(), "{added:?}");
    let token = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    let path = dir.join(format!("{name}.token"));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A console in tmux for the named remote `@remote`, with a runtime directory of its own (no
/// local gateway is found: every right it has comes from its operator account).
fn console(home: &Path, remote: &str) -> Tmux {
    let dir = home.join(remote);
    std::fs::create_dir_all(&dir).unwrap();
    support::private_dir(&dir.join("run"));
    let log = dir.join("console.log");
    Tmux::start(
        support::toolgate(),
        &[
            "console",
            &format!("@{remote}"),
            "--log",
            &log.display().to_string(),
        ],
        &dir,
        (200, 40),
        &[
            ("XDG_CONFIG_HOME", &home.join("config")),
            ("XDG_RUNTIME_DIR", &dir.join("run")),
            ("XDG_STATE_HOME", &dir),
        ],
    )
    .showing_log(&log)
}

fn both_connected(screen: &str) -> bool {
    screen.contains("2 gateways ●")
}

#[test]
fn two_replicas_three_operators_one_held_call_one_limit_and_a_revocation() {
    let redis = RedisServer::start();
    let home = tempfile::tempdir().unwrap();
    let ops = home.path().join("operators.json");
    let vic = operator(&ops, "vic", "viewer", home.path());
    let pat = operator(&ops, "pat", "approver", home.path());
    let ada = operator(&ops, "ada", "admin", home.path());

    let ops_arg = ops.display().to_string();
    let redis_url = redis.url();
    let ca = support::tls::Ca::new("toolgate team test CA");
    let tls = ca.write_server(home.path(), "gw");
    let (cert, key) = (
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
    );
    let extra = [
        "--counters",
        &redis_url,
        "--operators",
        &ops_arg,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    let servers = json!({ "time": { "command": peer(".venv/bin/mcp-server-time") } });
    let replicas: Vec<Serve> = (0..2)
        .map(|_| {
            Serve::start(Setup {
                policy: POLICY,
                servers: servers.clone(),
                grants: &["agent"],
                extra: &extra,
                default_counters: true,
                ..Setup::default()
            })
        })
        .collect();
    // Each replica is up once its discovery file is written.
    for r in &replicas {
        wait_discovery(r.dir.path(), || r.log());
    }

    // remotes.toml: one remote per operator, each listing both replicas.
    let endpoints: Vec<(String, Option<PathBuf>)> = replicas
        .iter()
        .map(|r| control_endpoint(r, &tls.ca))
        .collect();
    let urls: Vec<String> = endpoints.iter().map(|(u, _)| format!("{u:?}")).collect();
    let ca_line = endpoints[0]
        .1
        .as_ref()
        .map(|ca| format!("ca_file = {:?}\n", ca.display().to_string()))
        .unwrap_or_default();
    let mut remotes = String::new();
    for (name, token) in [("vic", &vic), ("pat", &pat), ("ada", &ada)] {
        remotes.push_str(&format!(
            "[{name}]\nurls = [{}]\ntoken_file = {:?}\n{ca_line}\n",
            urls.join(", "),
            token.display().to_string()
        ));
    }
    std::fs::create_dir_all(home.path().join("config/toolgate")).unwrap();
    std::fs::write(home.path().join("config/toolgate/remotes.toml"), remotes).unwrap();

    let viewer = console(home.path(), "vic");
    let approver = console(home.path(), "pat");
    for c in [&viewer, &approver] {
        c.wait_for("both replicas connected", ANSWER_WITHIN, both_connected);
    }

    // The agent's call is held on the first replica; both consoles see it.
    let mut agent = https_agent(&replicas[0], &tls.ca);
    agent.send(&json!({"op": "call", "tool": "get_current_time", "args": {"timezone": "UTC"}}));
    for c in [&viewer, &approver] {
        c.wait_for("the held call", ANSWER_WITHIN, |s| s.contains("⏸ 1 held"));
        c.send(&["2"]);
        c.wait_for("the Holds view", ANSWER_WITHIN, |s| {
            s.contains("get_current_time") && s.contains("gateway@host/grant")
        });
    }

    // The viewer cannot approve, and sees why; the call stays held.
    viewer.send(&["a"]);
    viewer.wait_for("the refusal", ANSWER_WITHIN, |s| {
        s.contains("operator vic has the viewer role")
    });
    let screen = approver.screen();
    assert!(screen.contains("⏸ 1 held"), "still held:\n{screen}");

    // The approver approves; the client gets its answer; the viewer sees who did it.
    approver.send(&["a"]);
    let answer = agent.answer();
    assert_eq!(answer["is_error"], false, "{answer}");
    assert!(text(&answer).contains("UTC"), "{answer}");
    viewer.wait_for("who approved it", ANSWER_WITHIN, |s| {
        s.contains("approved by pat")
    });

    // The admin limits convert_time to once a minute and writes it to both replicas.
    let admin = console(home.path(), "ada");
    admin.wait_for("both replicas connected", ANSWER_WITHIN, both_connected);
    admin.send(&[":limit convert_time 1/minute", "Enter"]);
    admin.wait_for("the edit", ANSWER_WITHIN, |s| s.contains(":w writes"));
    admin.send(&[":w", "Enter"]);
    admin.wait_for("the review", ANSWER_WITHIN, |s| {
        s.contains("1/minute") || s.contains("\"max\": 1")
    });
    admin.send(&["y"]);
    admin.wait_for("both replicas applying it", ANSWER_WITHIN, |s| {
        s.contains("applied by 2 of 2 gateways")
    });
    for r in &replicas {
        let file = std::fs::read_to_string(r.dir.path().join("policy.json")).unwrap();
        assert!(
            file.contains("\"max\": 1"),
            "each replica wrote its own file:\n{file}"
        );
        assert!(
            file.starts_with("{\n  \"version\": \"1\",\n  \"default\": \"deny\""),
            "untouched text kept:\n{file}"
        );
    }
    // Both enforce it, on one budget in Redis: the first call takes it, on either replica.
    let convert =
        json!({"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"});
    let first = agent.call("convert_time", convert.clone());
    assert_eq!(first["is_error"], false, "{first}");
    let mut other = https_agent(&replicas[1], &tls.ca);
    let second = other.call("convert_time", convert);
    assert_eq!(second["is_error"], true, "{second}");
    assert!(text(&second).contains("Rate limit reached"), "{second}");
    // The admin's Limits view shows that one budget once, though both replicas report it.
    admin.send(&["4"]);
    let limits = admin.wait_for("the shared budget in the Limits view", ANSWER_WITHIN, |s| {
        s.lines()
            .any(|l| l.contains("convert_time") && l.contains("1/1"))
    });
    let rows = limits
        .lines()
        .filter(|l| l.contains("convert_time") && l.contains("minute"))
        .count();
    assert_eq!(rows, 1, "one row for one budget:\n{limits}");

    // Revoking vic closes vic's connections within a second.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let token = std::fs::read_to_string(&vic).unwrap().trim().to_owned();
        let (url, ca) = &endpoints[1];
        let url = format!("{}/control", url.replacen("https://", "wss://", 1));
        let tls = control::TlsClientOptions {
            ca_file: ca.clone(),
        };
        let mut conn = within(
            "vic's connection",
            ANSWER_WITHIN,
            control::connect_with(&url, &token, &tls),
        )
        .await
        .expect("vic connects while the account stands");
        let revoked = toolgate(
            &["operators", "revoke", "vic", "--file", &ops_arg],
            home.path(),
        );
        assert!(revoked.status.success(), "{revoked:?}");
        within("vic's connection to close", Duration::from_secs(1), async {
            while let Some(Ok(_)) = conn.next_event().await {}
        })
        .await;
    });
    viewer.wait_for(
        "the viewer's console losing both replicas",
        ANSWER_WITHIN,
        |s| s.contains("0/2 gateways"),
    );
    agent.close();
    other.close();
}
