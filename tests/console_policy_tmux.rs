//! Policy authoring end to end, in a real terminal: the real `toolgate console` in tmux
//! writes a rate limit with `:limit echo 2/minute`, `:w`, `y`; the real gateway
//! (`toolgate wrap` in front of `@modelcontextprotocol/server-everything`, driven by the
//! Python MCP client) reloads the file and enforces it, and the console shows that the
//! gateway applied it and then the third call rate limited.
//!
//! Needs `tmux` and the peers installed by `scripts/setup-test-peers`; without them it
//! fails, it does not skip. The deadlines only keep a broken build from hanging.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::agent::{Agent, wrap};
use support::peers::everything;
use support::tmux;
use support::{ANSWER_WITHIN, private_dir};

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "echo": {},
    "get-sum": { "action": "deny", "reason": "not today" }
  }
}
"#;

/// The MCP client session through `toolgate wrap`, with its runtime and state directories
/// private to the test.
fn start_agent(dir: &Path, runtime_dir: &Path) -> Agent {
    Agent::stdio(
        "legacy",
        &dir.join("gateway.log"),
        &wrap(dir, "tmux-agent", &[], everything()),
        &[
            ("XDG_RUNTIME_DIR", runtime_dir),
            ("XDG_STATE_HOME", &dir.join("state")),
        ],
    )
}

#[test]
fn limit_written_from_the_console_is_applied_and_enforced_by_a_real_gateway() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime_dir = dir.path().join("run");
    private_dir(&runtime_dir);
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, POLICY).expect("policy");

    let mut agent = start_agent(dir.path(), &runtime_dir);
    // The first answer means the gateway is up (and its discovery file written).
    let first = agent.call("echo", json!({"message": "before the limit"}));
    assert_eq!(first["is_error"], false, "{first}");

    let term = tmux::console(
        dir.path(),
        &[
            ("XDG_RUNTIME_DIR", &runtime_dir),
            ("XDG_STATE_HOME", &dir.path().join("state")),
        ],
    );
    term.wait_for("the gateway and its echo call", ANSWER_WITHIN, |s| {
        s.contains("1 gateway") && s.contains("echo") && s.contains("✓ allow")
    });

    // The console found the policy file through the gateway; the Policy view lists it.
    term.send(&["3"]);
    term.wait_for("the Policy view with the file", ANSWER_WITHIN, |s| {
        s.contains("policy.json") && s.contains("draft = file") && s.contains("get-sum")
    });

    term.send(&[":limit echo 2/minute", "Enter"]);
    term.wait_for("the edited draft", ANSWER_WITHIN, |s| {
        s.contains("echo limited to 2/minute") && s.contains("2/minute per grant")
    });
    term.send(&[":w", "Enter"]);
    term.wait_for("the diff and the question", ANSWER_WITHIN, |s| {
        s.contains("y writes") && s.contains("\"counter\": \"echo\"") && s.contains("What-if")
    });
    term.send(&["y"]);
    term.wait_for("the gateway's confirmation", ANSWER_WITHIN, |s| {
        s.contains("applied by 1 gateway")
    });

    let written = std::fs::read_to_string(&policy).expect("policy");
    let doc: Value = serde_json::from_str(&written).expect("written policy is JSON");
    assert_eq!(
        doc["tools"]["echo"]["limits"],
        json!([{"counter": "echo", "window": "minute", "max": 2}])
    );
    assert_eq!(
        doc["tools"]["get-sum"],
        json!({"action": "deny", "reason": "not today"}),
        "the untouched rule is kept"
    );

    // The gateway enforces it: two calls a minute, the third is refused with the limit.
    for n in 0..2 {
        let ok = agent.call("echo", json!({"message": format!("call {n}")}));
        assert_eq!(ok["is_error"], false, "call {n}: {ok}");
    }
    let refused = agent.call("echo", json!({"message": "one too many"}));
    assert_eq!(refused["is_error"], true, "{refused}");
    let text = refused["texts"][0].as_str().unwrap_or_default();
    assert!(
        text.contains("Rate limit reached") && text.contains("2 calls per minute"),
        "{refused}"
    );

    term.send(&["1"]);
    term.wait_for("the rate-limited call", ANSWER_WITHIN, |s| {
        s.contains("⏱ rate limited")
    });
    term.send(&["4"]);
    term.wait_for("the echo counter full", ANSWER_WITHIN, |s| {
        s.contains("echo") && s.contains("2/2") && s.contains("tmux-agent")
    });
}
