//! Policy authoring end to end, in a real terminal: the real `toolgate console` in tmux
//! writes a rate limit with `:limit echo 2/minute`, `:w`, `y`; the real gateway
//! (`toolgate wrap` in front of `@modelcontextprotocol/server-everything`, driven by the
//! Python MCP client) reloads the file and enforces it, and the console shows that the
//! gateway applied it and then the third call rate limited.
//!
//! Needs `tmux` and the peers installed by `scripts/setup-test-peers`; without them it
//! fails, it does not skip. The deadlines only keep a broken build from hanging.

mod support;

use serde_json::{Value, json};
use support::ANSWER_WITHIN;
use support::tmux::{self, WrapAndConsole};

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "echo": {},
    "get-sum": { "action": "deny", "reason": "not today" }
  }
}
"#;

#[test]
fn limit_written_from_the_console_is_applied_and_enforced_by_a_real_gateway() {
    let WrapAndConsole {
        dir: _dir,
        policy,
        mut agent,
        term,
    } = tmux::wrap_and_console(POLICY);

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
