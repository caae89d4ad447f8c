//! A shadow rule end to end, in a real terminal: the real `toolgate console` in tmux beside
//! the real gateway (`toolgate wrap` in front of `@modelcontextprotocol/server-everything`,
//! driven by the Python MCP client). A shadow `deny_if` lets the calls through; the Live view
//! marks them "would deny", `shadow:` filters them, the Policy view counts them; `P` on the
//! rule and `y` promote it, and the next such call is denied.
//!
//! Needs `tmux` and the peers installed by `scripts/setup-test-peers`; without them it
//! fails, it does not skip. The deadlines only keep a broken build from hanging.

mod support;

use serde_json::{Value, json};
use support::ANSWER_WITHIN;
use support::tmux::{self, WrapAndConsole};

const POLICY: &str = r#"{
  "version": "1",
  "default": "allow",
  "tools": {
    "echo": {
      "shadow": true,
      "reason": "no secrets in echoes",
      "deny_if": [ { "path": "args.message", "op": "contains", "value": "secret" } ]
    }
  }
}
"#;

#[test]
fn a_shadow_rule_is_marked_and_counted_then_promoted_from_the_console_and_enforced() {
    let WrapAndConsole {
        dir: _dir,
        policy,
        mut agent,
        term,
    } = tmux::wrap_and_console(POLICY);
    term.send(&["3"]);
    term.wait_for("the Policy view with the shadow rule", ANSWER_WITHIN, |s| {
        s.contains("policy.json") && s.contains("◐ allow") && s.contains("would have changed 0")
    });
    term.send(&["1"]);

    // Two calls the shadow rule would deny: both go through.
    for n in 0..2 {
        let ok = agent.call("echo", json!({"message": format!("my secret {n}")}));
        assert_eq!(ok["is_error"], false, "call {n} is not denied: {ok}");
    }
    term.wait_for("the Live view's shadow mark", ANSWER_WITHIN, |s| {
        s.matches("◐ would deny").count() == 2
    });
    term.send(&["/", "shadow:", "Enter"]);
    let filtered = term.wait_for("only the shadowed calls", ANSWER_WITHIN, |s| {
        s.contains("filter: shadow:") && s.contains("(2)")
    });
    assert_eq!(filtered.matches("✓ allow").count(), 2, "{filtered}");
    term.send(&["Escape"]);

    term.send(&["3"]);
    term.wait_for("the count on the shadow rule", ANSWER_WITHIN, |s| {
        s.contains("would have changed 2 calls") && s.contains("P promotes")
    });
    term.send(&["P"]);
    term.wait_for("the promotion's diff and question", ANSWER_WITHIN, |s| {
        s.contains("y writes") && s.contains("-      \"shadow\": true,")
    });
    term.send(&["y"]);
    term.wait_for("the gateway's confirmation", ANSWER_WITHIN, |s| {
        s.contains("applied by 1 gateway")
    });
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&policy).expect("policy")).expect("JSON");
    assert!(
        written["tools"]["echo"].get("shadow").is_none(),
        "{written}"
    );
    assert_eq!(
        written["tools"]["echo"]["reason"], "no secrets in echoes",
        "the rest of the rule is kept"
    );

    let denied = agent.call("echo", json!({"message": "another secret"}));
    assert_eq!(denied["is_error"], true, "{denied}");
    let text = denied["texts"][0].as_str().unwrap_or_default();
    assert!(
        text.contains("Denied by policy (/tools/echo/deny_if/0)")
            && text.contains("no secrets in echoes"),
        "{denied}"
    );
    let fine = agent.call("echo", json!({"message": "nothing to hide"}));
    assert_eq!(fine["is_error"], false, "{fine}");
    term.send(&["1"]);
    term.wait_for("the denied call", ANSWER_WITHIN, |s| s.contains("✗ deny"));
}
