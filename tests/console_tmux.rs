//! The real `toolgate console` in a real terminal (tmux), against a real gateway
//! (`toolgate wrap`) in front of a real MCP server (`@modelcontextprotocol/server-everything`),
//! driven by a real MCP client (the Python SDK, `tests/e2e/driver.py`).
//!
//! The console finds the gateway through the discovery directory (a private
//! `XDG_RUNTIME_DIR`), shows the calls as they arrive, and approves a held call with `a`;
//! the client then gets the server's answer. Needs `tmux` and the peers installed by
//! `scripts/setup-test-peers`; without them it fails, it does not skip.
//!
//! Waiting for the screen uses a generous deadline only so that a broken build fails
//! instead of hanging; nothing here asserts on speed.

mod support;

use std::path::Path;

use serde_json::json;
use support::agent::{Agent, wrap};
use support::peers::everything;
use support::tmux;
use support::{ANSWER_WITHIN, private_dir};

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "echo": {},
    "get-sum": { "action": "require_approval", "approval_timeout": "10m" }
  }
}"#;

#[test]
fn console_shows_calls_from_a_real_gateway_and_approves_a_hold_with_a() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime_dir = dir.path().join("run");
    private_dir(&runtime_dir);
    std::fs::write(dir.path().join("policy.json"), POLICY).expect("policy");

    // The MCP client session through `toolgate wrap`.
    let mut agent = Agent::stdio(
        "legacy",
        &dir.path().join("gateway.log"),
        &wrap(dir.path(), "tmux-agent", &[], everything()),
        &[("XDG_RUNTIME_DIR", &runtime_dir)],
    );
    // The first answer means the gateway is up (and its discovery file written).
    let echoed = agent.call("echo", json!({"message": "hello from tmux"}));
    assert_eq!(echoed["is_error"], false, "{echoed}");

    let tmux = tmux::console(
        dir.path(),
        &[
            ("XDG_RUNTIME_DIR", &runtime_dir),
            ("TERM", Path::new("xterm-256color")),
        ],
    );

    // The call made before the console started arrives with the gateway's snapshot.
    tmux.wait_for("the echo call", ANSWER_WITHIN, |s| {
        s.contains("1 gateway") && s.contains("echo") && s.contains("✓ allow")
    });

    // A call made now arrives live; this one waits for a person.
    agent.start_call("get-sum", json!({"a": 2, "b": 3}));
    tmux.wait_for("the held call", ANSWER_WITHIN, |s| {
        s.contains("get-sum") && s.contains("⏸ held") && s.contains("2 Holds (1)")
    });

    tmux.send(&["2"]);
    tmux.wait_for("the Holds view", ANSWER_WITHIN, |s| {
        s.contains("Holds · 1 waiting") && s.contains("tmux-agent") && s.contains("a approve")
    });
    tmux.send(&["a"]);
    let answer = agent.answer();
    assert_eq!(answer["is_error"], false, "approved call: {answer}");
    let text = answer["texts"][0].as_str().unwrap_or_default();
    assert!(text.contains('5'), "the server's sum came back: {answer}");
    tmux.wait_for("the approval", ANSWER_WITHIN, |s| {
        s.contains("approved") && s.contains("Holds · 0 waiting")
    });

    // Nothing is held any more: q quits at once and the session ends with the console.
    tmux.send(&["q"]);
    assert!(
        tmux.exit_status(ANSWER_WITHIN).is_some(),
        "console did not quit"
    );
}
