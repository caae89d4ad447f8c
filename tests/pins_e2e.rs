//! Tool pinning end to end: the real Python `mcp` client through the built `toolgate wrap`
//! and `toolgate serve` in front of `tests/e2e/changing_server.py`, a server whose
//! `send_message` changes its description and input schema (between two `tools/list`, or with
//! `notifications/tools/list_changed`). Under `"pins": "enforce"` the changed tool leaves
//! the list and its calls are refused, until `toolgate pins accept` or the `accept_pin`
//! command of the event websocket accepts it, without restarting anything; gateways sharing
//! the SQLite store agree, and a restarted gateway keeps the pins.
//!
//! The peers are installed by `scripts/setup-test-peers`; without them these tests fail.

#[path = "serve_support/running.rs"]
mod running;

mod support;

use std::path::PathBuf;
use std::process::Output;

use serde_json::{Value, json};
use support::agent::Agent;
use support::discovery::{next_event, operator, wait_discovery};
use support::peers::{e2e_script, python};
use support::wait::{wait_until, within};
use support::{ANSWER_WITHIN, private_dir, toolgate};
use toolgate::testing::wire::{ClientMsg, EventKind, PinChange};

const ENFORCE: &str = r#"{"version": "1", "default": "allow", "pins": "enforce"}"#;

/// A test's files: the policy, the pin store, the server's state (whether it changed, the
/// lists it answered), and a runtime directory per gateway.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new(policy: &str) -> Dir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.json"), policy).unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        Dir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn store(&self) -> String {
        self.path("pins.sqlite3").display().to_string()
    }

    /// The server command: changing_server.py keeping its state in `state/`.
    fn server(&self) -> Vec<String> {
        vec![
            python().display().to_string(),
            e2e_script("changing_server.py").display().to_string(),
            self.path("state").display().to_string(),
        ]
    }

    /// Makes the server offer the changed `send_message` from its next `tools/list` on.
    fn change_the_tool(&self) {
        std::fs::write(self.path("state/changed"), "").unwrap();
    }

    fn restore_the_tool(&self) {
        std::fs::remove_file(self.path("state/changed")).unwrap();
    }

    /// The `tools/list` requests the server answered: (id, cursor).
    fn lists(&self) -> Vec<(Value, Value)> {
        std::fs::read_to_string(self.path("state/lists.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| (v["id"].clone(), v["cursor"].clone()))
            .collect()
    }

    /// A client through `toolgate wrap` (gateway `name`: its log and runtime directory are
    /// named after it), its pins in `store` (`memory` or the shared SQLite file).
    fn wrap(&self, name: &str, store: &str) -> Agent {
        let run = self.path(&format!("run-{name}"));
        if !run.exists() {
            private_dir(&run);
        }
        let mut argv = vec![
            toolgate().display().to_string(),
            "wrap".into(),
            "--policy".into(),
            self.path("policy.json").display().to_string(),
            "--audit".into(),
            self.path(&format!("audit-{name}.jsonl"))
                .display()
                .to_string(),
            "--grant".into(),
            name.into(),
            "--counters".into(),
            store.into(),
            "--".into(),
        ];
        argv.extend(self.server());
        Agent::stdio(
            "legacy",
            &self.path(&format!("{name}.log")),
            &argv,
            &[("XDG_RUNTIME_DIR", &run)],
        )
    }

    /// `toolgate pins ...` on the shared store.
    fn pins(&self, args: &[&str]) -> Output {
        let store = self.store();
        let out = std::process::Command::new(toolgate())
            .arg("pins")
            .args(args)
            .args(["--counters", &store])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "toolgate pins {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn audit(&self, name: &str) -> Vec<Value> {
        std::fs::read_to_string(self.path(&format!("audit-{name}.jsonl")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// The text of a call's answer: a tool error's, or a JSON-RPC error's message.
fn said(answer: &Value) -> String {
    answer["texts"][0]
        .as_str()
        .or_else(|| answer["error"]["message"].as_str())
        .unwrap_or_else(|| panic!("no text in {answer}"))
        .to_owned()
}

fn send(agent: &mut Agent) -> Value {
    agent.call("send_message", json!({"to": "bob", "text": "hi"}))
}

/// Asserts that `send_message` is refused as quarantined, naming how to accept it.
fn refused_as_changed(answer: &Value, server: &str) {
    assert_eq!(answer["is_error"], true, "{answer}");
    let text = said(answer);
    assert!(
        text.contains("Denied by policy (/pins)")
            && text.contains("its definition changed since it was reviewed")
            && text.contains(&format!("toolgate pins accept {server} send_message")),
        "{text}"
    );
}

fn works(agent: &mut Agent) {
    let answer = send(agent);
    assert_eq!(answer["is_error"], false, "{answer}");
    assert_eq!(said(&answer), "sent to bob");
}

#[test]
fn wrap_quarantines_a_changed_tool_until_pins_accept_and_gateways_sharing_the_store_agree() {
    let dir = Dir::new(ENFORCE);
    let store = dir.store();
    let mut first = dir.wrap("first", &store);
    assert_eq!(first.tools(), ["send_message", "get_time"]);
    works(&mut first);

    // The server changes the tool between two lists: it leaves the list, its calls are
    // refused (and audited as the policy's `/pins`), the other tools are not touched.
    dir.change_the_tool();
    assert_eq!(first.tools(), ["get_time"]);
    refused_as_changed(&send(&mut first), "changing");
    assert_eq!(said(&first.call("get_time", json!({}))), "12:00");
    // The audit log is written by its own thread, a few milliseconds behind the answer.
    let denied = support::wait::wait_for("the refusal's audit record", ANSWER_WITHIN, || {
        let records = dir.audit("first");
        records
            .iter()
            .find(|r| r["tool"] == "send_message" && r["rule"] == "/pins")
            .cloned()
            .ok_or_else(|| format!("{} records so far", records.len()))
    });
    assert_eq!(denied["decision"], "deny", "{denied}");

    // A second gateway on the same store compares with the same pin: it agrees.
    let mut second = dir.wrap("second", &store);
    assert_eq!(second.tools(), ["get_time"]);
    refused_as_changed(&send(&mut second), "changing");

    // The change waits for review in the store; accepting it there reaches both gateways
    // on their next list, without a restart.
    let listed: Value = serde_json::from_slice(&dir.pins(&["list", "--json"]).stdout).unwrap();
    let offer = &listed["offers"][0];
    assert_eq!(offer["tool"], "send_message", "{listed}");
    assert!(
        offer["definition"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("<IMPORTANT>")),
        "{listed}"
    );
    let fingerprint = offer["fingerprint"].as_str().unwrap().to_owned();
    dir.pins(&[
        "accept",
        "changing",
        "send_message",
        "--fingerprint",
        &fingerprint,
    ]);
    assert_eq!(first.tools(), ["send_message", "get_time"]);
    works(&mut first);
    assert_eq!(second.tools(), ["send_message", "get_time"]);
    works(&mut second);
    first.close();
    second.close();

    // A restarted gateway keeps the pins: the old definition, offered again, is now the
    // change (a fresh store would have pinned it as new).
    dir.restore_the_tool();
    let mut restarted = dir.wrap("restarted", &store);
    assert_eq!(restarted.tools(), ["get_time"]);
    refused_as_changed(&send(&mut restarted), "changing");
    restarted.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_changed_notification_quarantines_a_client_that_never_relists_and_accept_pin_lifts_it()
 {
    let dir = Dir::new(ENFORCE);
    let mut agent = dir.wrap("agent", "memory");
    assert_eq!(agent.tools(), ["send_message", "get_time"]);
    let entry = wait_discovery(&dir.path("run-agent"), || {
        std::fs::read_to_string(dir.path("agent.log")).unwrap_or_default()
    });
    let (mut conn, hello) = operator(&entry).await;
    assert!(hello.snapshot.tool_changes.is_empty());

    // The server changes the tool and says so; the client does not list again, the gateway
    // does (with ids of its own, following nextCursor), and refuses the next calls.
    assert_eq!(said(&agent.call("rug_pull", json!({}))), "changed");
    let changed = loop {
        let event = next_event(&mut conn).await;
        if let EventKind::ToolChanged(changed) = event.kind {
            break changed;
        }
    };
    assert_eq!(changed.change, PinChange::Changed);
    assert_eq!(
        (changed.server.as_str(), changed.tool.as_str()),
        ("changing", "send_message")
    );
    assert!(changed.quarantined);
    assert_eq!(changed.pinned["description"], "Sends a message.");
    assert!(
        !changed.flags.is_empty(),
        "the <IMPORTANT> block is flagged"
    );
    refused_as_changed(&send(&mut agent), "changing");
    wait_until(
        "the gateway's own tools/list of both pages",
        ANSWER_WITHIN,
        || {
            let own: Vec<(Value, Value)> = dir
                .lists()
                .into_iter()
                .filter(|(id, _)| {
                    id.as_str()
                        .is_some_and(|id| id.starts_with("toolgate-pins-"))
                })
                .collect();
            own.iter().any(|(_, cursor)| cursor.is_null())
                && own.iter().any(|(_, cursor)| cursor == "page-2")
        },
    );

    // An operator accepts the reviewed definition over the websocket: at once, no re-list.
    let wrong = ClientMsg::AcceptPin {
        id: 1,
        server: "changing".into(),
        tool: "send_message".into(),
        fingerprint: changed.pinned_fingerprint.clone(),
        operator: Some("alice".into()),
    };
    let reply = within(
        "the reply to accept_pin",
        ANSWER_WITHIN,
        conn.request(&wrong),
    )
    .await
    .expect("a reply");
    assert!(!reply.ok, "an unreviewed fingerprint is refused: {reply:?}");
    let accept = ClientMsg::AcceptPin {
        id: 2,
        server: "changing".into(),
        tool: "send_message".into(),
        fingerprint: changed.offered_fingerprint.clone(),
        operator: Some("alice".into()),
    };
    let reply = within(
        "the reply to accept_pin",
        ANSWER_WITHIN,
        conn.request(&accept),
    )
    .await
    .expect("a reply");
    assert!(reply.ok, "{reply:?}");
    works(&mut agent);
    let (_, hello) = operator(&entry).await;
    assert!(
        hello.snapshot.tool_changes.is_empty(),
        "the review is over: {:?}",
        hello.snapshot.tool_changes
    );
    agent.close();
}

#[test]
fn warn_lets_a_changed_tool_through_and_off_does_not_pin() {
    let dir = Dir::new(r#"{"version": "1", "default": "allow", "pins": "warn"}"#);
    let store = dir.store();
    let mut agent = dir.wrap("warned", &store);
    assert_eq!(agent.tools(), ["send_message", "get_time"]);
    dir.change_the_tool();
    assert_eq!(agent.tools(), ["send_message", "get_time"]);
    works(&mut agent);
    agent.close();
    let listed: Value = serde_json::from_slice(&dir.pins(&["list", "--json"]).stdout).unwrap();
    assert_eq!(
        listed["offers"][0]["tool"], "send_message",
        "reported: {listed}"
    );

    let off = Dir::new(r#"{"version": "1", "default": "allow", "pins": "off"}"#);
    let mut agent = off.wrap("off", &off.store());
    assert_eq!(agent.tools(), ["send_message", "get_time"]);
    agent.close();
    let listed: Value = serde_json::from_slice(&off.pins(&["list", "--json"]).stdout).unwrap();
    assert_eq!(listed["pins"], json!([]), "{listed}");
}

#[test]
fn serve_quarantines_a_changed_tool_for_its_server_name_until_pins_accept() {
    let dir = Dir::new(ENFORCE);
    let store = dir.store();
    let server = dir.server();
    let serve = running::Serve::start(running::Setup {
        policy: ENFORCE,
        servers: json!({"notes": {"command": server[0], "args": &server[1..]}}),
        grants: &["agent"],
        extra: &["--counters", &store],
        default_counters: true,
        ..Default::default()
    });
    let mut agent = serve.client("legacy", "notes", &serve.tokens[0]);
    assert_eq!(agent.tools(), ["send_message", "get_time"]);
    works(&mut agent);
    dir.change_the_tool();
    assert_eq!(agent.tools(), ["get_time"]);
    // The serve server name is the identity, not the server's own name.
    refused_as_changed(&send(&mut agent), "notes");
    wait_until("the refusal's audit record", ANSWER_WITHIN, || {
        serve
            .audit()
            .iter()
            .any(|r| r["tool"] == "send_message" && r["rule"] == "/pins")
    });
    dir.pins(&["accept", "notes", "send_message"]);
    assert_eq!(agent.tools(), ["send_message", "get_time"]);
    works(&mut agent);
    agent.close();
}

/// `toolgate scan --against` reports a tool whose definition differs from its pin.
#[test]
fn scan_against_reports_a_definition_that_differs_from_its_pin() {
    let dir = Dir::new(ENFORCE);
    let store = dir.store();
    let mut agent = dir.wrap("pinning", &store);
    assert_eq!(agent.tools(), ["send_message", "get_time"]);
    agent.close();
    dir.change_the_tool();
    let mut args = vec![
        "scan".to_owned(),
        "--against".into(),
        dir.path("policy.json").display().to_string(),
        "--counters".into(),
        store.clone(),
        "--".into(),
    ];
    args.extend(dir.server());
    let out = std::process::Command::new(toolgate())
        .args(&args)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("send_message: its definition differs from its pin")
            && report.contains("toolgate pins accept changing send_message"),
        "{report}"
    );
}

/// The issue's whole loop with a person at the console: a real client through `wrap`, the
/// server changes a tool, the real console (tmux) shows the change with its diff, `a` in the
/// Tools view accepts it, and the same client's calls work again, nothing restarted.
#[test]
fn the_console_shows_a_quarantined_change_and_a_accepts_it_for_the_running_gateway() {
    let dir = Dir::new(ENFORCE);
    let store = dir.store();
    let mut agent = dir.wrap("agent", &store);
    assert_eq!(agent.tools(), ["send_message", "get_time"]);
    works(&mut agent);
    let state = dir.path("console-state");
    std::fs::create_dir_all(&state).unwrap();
    let run = dir.path("run-agent");
    let term = support::tmux::console(
        &dir.path(""),
        &[
            ("XDG_RUNTIME_DIR", &run),
            ("XDG_STATE_HOME", &state),
            ("HOME", &state),
        ],
    );
    term.wait_for("the console to follow the gateway", ANSWER_WITHIN, |s| {
        s.contains("send_message")
    });

    dir.change_the_tool();
    assert_eq!(agent.tools(), ["get_time"]);
    refused_as_changed(&send(&mut agent), "changing");
    term.wait_for("the header counting the change", ANSWER_WITHIN, |s| {
        s.contains("⚠ 1 tool changed")
    });
    term.send(&["5"]);
    let screen = term.wait_for("the diff in the Tools view", ANSWER_WITHIN, |s| {
        s.contains("send_message") && s.contains("{+")
    });
    assert!(screen.contains("quarantined"), "{screen}");
    term.send(&["a"]);
    // The gateway's `accepted` event ends the review: the change leaves the list.
    term.wait_for("the gateway's acceptance", ANSWER_WITHIN, |s| {
        s.contains("no changed definitions") && !s.contains("tool changed")
    });

    // The same client, the same gateway: the call goes through, and the tool is listed.
    let answer = send(&mut agent);
    assert_eq!(answer["is_error"], false, "{answer}");
    assert_eq!(agent.tools(), ["send_message", "get_time"]);
    term.send(&["q"]);
    assert_eq!(term.exit_status(ANSWER_WITHIN), Some(0));
}
