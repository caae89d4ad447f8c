//! The console writes tests (issue 20): `T` on a call appends it, with the decision it got,
//! to the `--cases` file as a `toolgate test` case. The calls are decided by the real policy
//! (as a gateway would), the file is written by the console's real effect, and the result is
//! run through the real `toolgate check` and `toolgate test`.

mod console_support;

use std::path::Path;
use std::process::Command;

use chrono::{DateTime, Utc};
use console_support::*;
use crossterm::event::KeyCode;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::{Value, json};
use toolgate::console::testing::{State, Theme, ViewState, carry_out_effects_now, update};
use toolgate::testing::policy::{Call, MemoryStore, Policy};
use toolgate::testing::wire::{CallEvent, EventKind};

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "create_api_key": {"action": "allow", "limits": [{"counter": "keys", "max": 3, "window": "minute", "scope": "grant"}]},
    "send_message": {"action": "require_approval", "limits": [{"counter": "messages", "max": 2, "window": "minute", "scope": "grant"}]},
    "delete_account": {"action": "deny", "reason": "deleting accounts needs a person"}
  }
}
"#;

/// A console following gateway `a1b2`, with the policy loaded from `dir` and `--cases`
/// pointing at `cases`.
struct Console {
    state: State,
    policy: Policy,
    store: MemoryStore,
    seq: u64,
    terminal: Terminal<TestBackend>,
    view: ViewState,
}

impl Console {
    fn new(dir: &Path, cases: &Path) -> Console {
        let policy_path = dir.join("policy.json");
        std::fs::write(&policy_path, POLICY).expect("policy written");
        let mut state = State::new(t0(), 1000);
        state.policy_path = Some(policy_path.display().to_string());
        state.cases_path = Some(cases.display().to_string());
        let mut c = Console {
            state,
            policy: Policy::parse(POLICY, "policy.json").expect("a valid policy"),
            store: MemoryStore::new(),
            seq: 1,
            terminal: Terminal::new(TestBackend::new(120, 20)).expect("terminal"),
            view: ViewState::new(Theme::builtin_default()),
        };
        let now = at_ms(0);
        update(&mut c.state, up("a1b2"), now);
        update(
            &mut c.state,
            net("a1b2", 1, now, hello("a1b2", "ci-bot", vec![], vec![])),
            now,
        );
        c.effects(now);
        assert!(
            c.state.authoring.draft.is_some(),
            "the console loaded the policy: {:?}",
            c.state.authoring.load_error
        );
        c
    }

    /// Carries out what the console asked for (reading the policy, writing the case file).
    fn effects(&mut self, now: DateTime<Utc>) {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        carry_out_effects_now(
            &mut self.terminal,
            &mut self.state,
            &mut self.view,
            &tx,
            now,
        );
    }

    /// A call decided by the policy at `ms` after t0, as the gateway would publish it
    /// (arguments as the gateway redacts them: `args_seen`).
    fn call(&mut self, tool: &str, grant: &str, args: Value, args_seen: Value, ms: i64) -> String {
        let now_ms = 1_800_000_000_000 + ms as u64;
        let d = self.policy.decide(
            &Call {
                tool,
                args: &args,
                grant,
                session: "s1",
            },
            &self.store,
            now_ms,
        );
        self.seq += 1;
        let call_id = format!("a1b2-{}", self.seq);
        // Read from JSON as a gateway's event is, so fields added to the event later (with
        // their defaults) do not change what this test says.
        let event: CallEvent = serde_json::from_value(json!({
            "call_id": call_id,
            "tool": tool,
            "grant": grant,
            "session": "s1",
            "server": "keys",
            "decision": d.verdict,
            "rule": d.rule,
            "reason": d.reason,
            "args": args_seen,
            "retry_after_ms": d.retry_after_ms,
        }))
        .expect("a call event");
        let ts = at_ms(ms);
        update(
            &mut self.state,
            net("a1b2", self.seq, ts, EventKind::Call(event)),
            ts,
        );
        call_id
    }

    /// Selects `call_id` in the Live view and presses `T`.
    fn write_case(&mut self, call_id: &str) {
        let pos = self
            .state
            .history
            .position(call_id)
            .expect("the call is remembered");
        self.state.live.selected = Some(pos);
        key(&mut self.state, KeyCode::Char('T'));
        let now = self.state.now;
        self.effects(now);
    }

    fn message(&self) -> String {
        self.state
            .message
            .as_ref()
            .map(|m| m.text.clone())
            .unwrap_or_default()
    }
}

fn toolgate(args: &[&Path]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(args)
        .output()
        .expect("toolgate runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn check(path: &Path) -> (i32, String) {
    toolgate(&[Path::new("check"), path])
}

fn run_cases(dir: &Path, cases: &Path) -> (i32, String) {
    toolgate(&[Path::new("test"), &dir.join("policy.json"), cases])
}

#[test]
fn a_rate_limited_call_becomes_a_case_with_the_calls_before_it_and_passes_toolgate_test() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = dir.path().join("cases.json");
    let mut c = Console::new(dir.path(), &cases);
    let args = json!({"keyName": "staging"});
    for i in 0..3 {
        c.call(
            "create_api_key",
            "ci-bot",
            args.clone(),
            args.clone(),
            1_000 + i * 10_000,
        );
    }
    // Neither counts against ci-bot's budget: another grant's, and a refused call.
    c.call(
        "create_api_key",
        "ops-bot",
        args.clone(),
        args.clone(),
        25_000,
    );
    c.call(
        "delete_account",
        "ci-bot",
        json!({"id": "a1"}),
        json!({"id": "a1"}),
        26_000,
    );
    let limited = c.call(
        "create_api_key",
        "ci-bot",
        args.clone(),
        args.clone(),
        30_500,
    );
    assert_eq!(
        c.state
            .history
            .find(&limited)
            .map(|r| r.call.decision.as_str()),
        Some("rate_limited")
    );
    c.write_case(&limited);
    let name = format!("create_api_key by ci-bot is rate_limited ({limited})");
    assert_eq!(c.message(), format!("case '{name}' added to cases.json"));

    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&cases).expect("the case file"))
            .expect("JSON");
    let case = &written["cases"][0];
    assert_eq!(case["name"], json!(name));
    assert_eq!(
        case["expect"],
        json!({"decision": "rate_limited", "rule": "/tools/create_api_key/limits/0"})
    );
    let calls = case["calls"].as_array().expect("a sequence of calls");
    let ats: Vec<Value> = calls.iter().map(|c| c["at"].clone()).collect();
    assert_eq!(ats, [Value::Null, json!(10), json!(20), json!(29)]);
    assert!(
        calls.iter().all(|c| c["grant"] == json!("ci-bot")),
        "{calls:?}"
    );

    let (code, out) = check(&cases);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_cases(dir.path(), &cases);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 passed"), "{out}");
}

#[test]
fn cases_accumulate_in_the_file_and_each_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = dir.path().join("cases.json");
    // A person's file, with a case and a formatting of its own, kept byte for byte.
    let mine = "{\n  \"cases\": [\n    {\"name\": \"mine\", \"call\": {\"tool\": \"nope\"}, \"expect\": {\"decision\": \"deny\", \"rule\": \"/default\"}}\n  ]\n}\n";
    std::fs::write(&cases, mine).expect("written");
    let mut c = Console::new(dir.path(), &cases);
    let deny = c.call(
        "delete_account",
        "ci-bot",
        json!({"id": "a1"}),
        json!({"id": "a1"}),
        1_000,
    );
    let held = c.call(
        "send_message",
        "ci-bot",
        json!({"to": "x"}),
        json!({"to": "x"}),
        2_000,
    );
    let held2 = c.call(
        "send_message",
        "ci-bot",
        json!({"to": "y"}),
        json!({"to": "y"}),
        2_000,
    );
    c.write_case(&deny);
    c.write_case(&held2);
    c.write_case(&held);
    let text = std::fs::read_to_string(&cases).expect("the case file");
    assert!(
        text.starts_with(mine.trim_end_matches("\n  ]\n}\n")),
        "the file's own content stays as it was:\n{text}"
    );
    let file: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(file["cases"].as_array().map(Vec::len), Some(4));
    // The second held call carries the first: both count against the same budget.
    assert_eq!(file["cases"][2]["calls"].as_array().map(Vec::len), Some(2));
    let (code, out) = run_cases(dir.path(), &cases);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 passed"), "{out}");

    // The same call again: refused, the file untouched.
    c.write_case(&deny);
    assert!(
        c.message().contains("already has a case named"),
        "{}",
        c.message()
    );
    assert_eq!(
        std::fs::read_to_string(&cases).expect("the case file"),
        text
    );
}

#[test]
fn redacted_arguments_are_marked_and_the_case_refuses_to_run_until_filled_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = dir.path().join("cases.json");
    let mut c = Console::new(dir.path(), &cases);
    let id = c.call(
        "create_api_key",
        "ci-bot",
        json!({"keyName": "staging", "apiKey": "sk-live-123"}),
        json!({"keyName": "staging", "apiKey": "[redacted]"}),
        1_000,
    );
    c.write_case(&id);
    assert!(
        c.message()
            .contains("1 redacted or cut argument(s) to fill in"),
        "{}",
        c.message()
    );
    let text = std::fs::read_to_string(&cases).expect("the case file");
    let file: Value = serde_json::from_str(&text).expect("JSON");
    let case = &file["cases"][0];
    assert!(
        case["note"]
            .as_str()
            .is_some_and(|n| n.contains("/call/args/apiKey")),
        "{case}"
    );
    let placeholder = case["call"]["args"]["apiKey"]
        .as_str()
        .expect("a placeholder")
        .to_owned();
    assert!(
        placeholder.starts_with("FILL IN (toolgate)"),
        "{placeholder}"
    );

    for (code, out) in [check(&cases), run_cases(dir.path(), &cases)] {
        assert_ne!(code, 0, "{out}");
        assert!(out.contains("still to be filled in"), "{out}");
        assert!(out.contains("/cases/0/call/args/apiKey"), "{out}");
    }
    let filled = text.replace(
        &serde_json::to_string(&placeholder).expect("JSON string"),
        "\"sk-test-000\"",
    );
    std::fs::write(&cases, filled).expect("filled in");
    let (code, out) = run_cases(dir.path(), &cases);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_file_that_is_not_a_case_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.json");
    let mut c = Console::new(dir.path(), &policy);
    let id = c.call("delete_account", "ci-bot", json!({}), json!({}), 1_000);
    c.write_case(&id);
    let m = c.state.message.clone().expect("a message");
    assert!(m.error, "{m:?}");
    assert!(
        m.text.starts_with("case not added to policy.json:") && m.text.contains("not a case file"),
        "{m:?}"
    );
    assert_eq!(std::fs::read_to_string(&policy).expect("policy"), POLICY);
}
