//! `toolgate wrap` end to end, with real peers: the Python `mcp` 2.3.0 client (modes `auto`
//! and `legacy`) drives the built binary in front of `@modelcontextprotocol/server-everything`
//! (handshake era) and `mcp-server-time` (2026-07-28 era).
//!
//! The peers are installed by `scripts/setup-test-peers`; without them these tests fail
//! (they never skip). One client process serves a whole scenario: the test sends it JSON
//! commands (`tests/e2e/driver.py`) and asserts on its answers.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::agent::{Agent, text, wrap};
use support::peers::{e2e_script, everything, python, time_server};
use support::wait::wait_for;
use support::{ANSWER_WITHIN, toolgate, wait_exit, write_in_place};

/// How long a policy edit may take to show in decisions (debounce plus slack for CI).
const RELOAD_WITHIN: Duration = Duration::from_secs(20);

/// A policy that allows every call.
const ALLOW_ALL: &str = r#"{"version":"1","default":"allow"}"#;

/// One client session through `toolgate wrap`, with its policy, audit log and stderr log in
/// a private directory.
struct Scenario {
    // Declared first, so the client is stopped before the directory goes.
    agent: Agent,
    dir: tempfile::TempDir,
}

impl Scenario {
    fn start(mode: &str, server: Vec<String>, policy: &str) -> Scenario {
        Scenario::start_with(mode, server, policy, &[])
    }

    /// Like [`Scenario::start`], with more `toolgate wrap` options.
    fn start_with(mode: &str, server: Vec<String>, policy: &str, wrap_args: &[&str]) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.json"), policy).unwrap();
        let agent = Agent::stdio(
            mode,
            &dir.path().join("stderr.log"),
            &wrap(dir.path(), "e2e", wrap_args, server),
            // Discovery files and default state stay inside the scenario's directory.
            &[
                ("XDG_RUNTIME_DIR", dir.path()),
                ("XDG_STATE_HOME", dir.path()),
            ],
        );
        Scenario { agent, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn send(&mut self, command: Value) -> Value {
        self.agent.ask(command)
    }

    /// Sends a command without waiting for its answer (for calls that will be held).
    fn send_only(&mut self, command: &Value) {
        self.agent.send(command);
    }

    fn answer(&mut self) -> Value {
        self.agent.answer()
    }

    /// The audit log's records so far.
    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for the `n`-th held call (1-based) and returns its call id.
    fn held_call(&self, n: usize) -> String {
        wait_for(
            &format!("held call {n} in the audit log"),
            ANSWER_WITHIN,
            || {
                let holds: Vec<Value> = self
                    .audit()
                    .into_iter()
                    .filter(|r| r["decision"] == "hold")
                    .collect();
                match holds.get(n - 1) {
                    Some(hold) => Ok(hold["call_id"].as_str().unwrap().to_owned()),
                    None => Err(format!("log:\n{}", self.log())),
                }
            },
        )
    }

    /// Runs `toolgate approve|deny ...` against this scenario's gateway.
    fn operator(&self, args: &[&str]) -> std::process::Output {
        Command::new(toolgate())
            .args(args)
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .output()
            .unwrap()
    }

    fn call(&mut self, tool: &str, args: Value) -> Value {
        self.agent.call(tool, args)
    }

    fn tools(&mut self) -> Vec<String> {
        self.agent.tools()
    }

    fn log(&self) -> String {
        self.agent.log()
    }

    /// Ends the session the way a client does (closing the gateway's stdin) and returns the
    /// audit log's lines.
    fn close(&mut self) -> Vec<Value> {
        let status = self.agent.close();
        assert!(
            status.success(),
            "client exited {status}; log:\n{}",
            self.log()
        );
        std::fs::read_to_string(self.path("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn assert_allowed(answer: &Value) {
    assert_eq!(answer["is_error"], false, "expected allowed: {answer}");
}

fn assert_refused(answer: &Value, containing: &str) {
    assert_eq!(answer["is_error"], true, "expected refused: {answer}");
    assert!(text(answer).contains(containing), "{answer}");
}

const EVERYTHING_POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "hide": ["get-env", "toggle-*"],
  "tools": {
    "echo": { "require": [{ "path": "args.message", "op": "regex", "value": "^[a-z ]+$" }] },
    "get-sum": {
      "deny_if": [{ "path": "args.a", "op": "gt", "value": 100 }],
      "rate_limit": { "max": 3, "window": "hour" }
    },
    "get-tiny-image": { "action": "deny", "reason": "no images in tests" },
    "trigger-long-running-operation": {},
    "trigger-sampling-request": {}
  }
}"#;

/// Every kind of decision, with server-everything behind the gateway.
fn decisions_through_server_everything(mode: &str) {
    let mut s = Scenario::start(mode, everything(), EVERYTHING_POLICY);
    assert_eq!(s.send(json!({"op": "info"}))["protocol"], "2025-11-25");

    let tools = s.tools();
    assert!(tools.contains(&"echo".to_owned()), "{tools:?}");
    assert!(tools.contains(&"get-sum".to_owned()), "{tools:?}");
    for hidden in [
        "get-env",
        "toggle-simulated-logging",
        "toggle-subscriber-updates",
    ] {
        assert!(!tools.contains(&hidden.to_owned()), "{hidden} listed");
    }

    // allow
    let echoed = s.call("echo", json!({"message": "zebra crossing"}));
    assert_allowed(&echoed);
    assert_eq!(text(&echoed), "Echo: zebra crossing");
    // require fails
    assert_refused(&s.call("echo", json!({"message": "SHOUT!"})), "/tools/echo");
    // deny with the rule's reason
    assert_refused(&s.call("get-tiny-image", json!({})), "no images in tests");
    // default deny
    assert_refused(
        &s.call("get-structured-content", json!({"location": "Chicago"})),
        "/default",
    );
    // hidden tool: as if it did not exist
    assert_refused(&s.call("get-env", json!({})), "Unknown tool: get-env");
    // deny_if holds (and takes no unit from the limit)
    assert_refused(&s.call("get-sum", json!({"a": 101, "b": 1})), "deny_if");
    // the limit admits exactly max
    for b in 1..=3 {
        let sum = s.call("get-sum", json!({"a": 1, "b": b}));
        assert_allowed(&sum);
        assert!(text(&sum).contains(&(1 + b).to_string()), "{sum}");
    }
    assert_refused(
        &s.call("get-sum", json!({"a": 1, "b": 1})),
        "Rate limit reached",
    );

    // progress notifications pass through
    let long = s.send(
        json!({"op": "call", "tool": "trigger-long-running-operation",
        "args": {"duration": 1, "steps": 3}, "progress": true}),
    );
    assert_allowed(&long);
    assert!(long["progress"].as_u64().unwrap() >= 1, "{long}");
    // a server-to-client sampling request and its answer pass through
    let sampled = s.call(
        "trigger-sampling-request",
        json!({"prompt": "hi", "maxTokens": 5}),
    );
    assert_allowed(&sampled);
    assert!(
        text(&sampled).contains("sampled by the e2e driver"),
        "{sampled}"
    );

    let audit = s.close();
    let decisions: Vec<&Value> = audit.iter().filter(|r| r["kind"] == "decision").collect();
    let outcomes: Vec<&Value> = audit.iter().filter(|r| r["kind"] == "outcome").collect();
    assert_eq!(decisions.len(), 12, "{audit:#?}");
    // allowed: echo, 3 × get-sum, long-running, sampling
    assert_eq!(outcomes.len(), 6, "{audit:#?}");
    assert!(
        outcomes
            .iter()
            .all(|o| o["error"] == false && o["latency_us"].is_u64())
    );
    assert!(decisions.iter().all(|d| d["grant"] == "e2e"));
    let first = decisions[0];
    assert_eq!(first["tool"], "echo");
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["arg_keys"], json!(["message"]));
    assert_eq!(first["args_hmac"].as_str().unwrap().len(), 64);
    let verdicts: Vec<&str> = decisions
        .iter()
        .map(|d| d["decision"].as_str().unwrap())
        .collect();
    assert!(verdicts.contains(&"rate_limited"), "{verdicts:?}");
}

#[test]
fn legacy_client_sees_every_decision_through_server_everything() {
    decisions_through_server_everything("legacy");
}

#[test]
fn auto_client_falls_back_to_the_handshake_and_sees_every_decision() {
    decisions_through_server_everything("auto");
}

#[test]
fn audit_log_is_private_and_holds_no_argument_values_by_default() {
    let mut s = Scenario::start("legacy", time_server(), ALLOW_ALL);
    assert_allowed(&s.call("get_current_time", json!({"timezone": "Europe/Helsinki"})));
    let path = s.path("audit.jsonl");
    let audit = s.close();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(audit.len(), 2, "{audit:#?}");
    assert_eq!(audit[0]["kind"], "decision");
    assert_eq!(audit[1]["kind"], "outcome");
    assert_eq!(audit[0]["call_id"], audit[1]["call_id"]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("Helsinki"), "argument value written: {text}");
}

#[test]
fn full_audit_mode_writes_argument_values_with_secrets_redacted() {
    let mut s = Scenario::start_with(
        "legacy",
        time_server(),
        ALLOW_ALL,
        &["--audit-args", "full"],
    );
    s.call(
        "get_current_time",
        json!({"timezone": "Europe/Helsinki", "api_key": "sk-live-123"}),
    );
    let path = s.path("audit.jsonl");
    let audit = s.close();
    assert_eq!(audit[0]["args"]["timezone"], "Europe/Helsinki");
    assert_eq!(audit[0]["args"]["api_key"], "[redacted]");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("sk-live-123"), "secret written: {text}");
}

const TIME_POLICY: &str = r#"{"version":"1","default":"deny","hide":["convert_time"],
  "tools":{"get_current_time":{}}}"#;

fn time_server_in_its_own_era(mode: &str, protocol: &str) {
    let mut s = Scenario::start(mode, time_server(), TIME_POLICY);
    assert_eq!(s.send(json!({"op": "info"}))["protocol"], protocol);
    assert_eq!(s.tools(), ["get_current_time"]);
    let now = s.call("get_current_time", json!({"timezone": "UTC"}));
    assert_allowed(&now);
    assert!(text(&now).contains("UTC"), "{now}");
    let hidden = s.call("convert_time", json!({}));
    assert_refused(&hidden, "Unknown tool: convert_time");
    assert_eq!(hidden["result_type"], "complete");
    s.close();
}

#[test]
fn auto_client_speaks_2026_07_28_through_the_gateway() {
    time_server_in_its_own_era("auto", "2026-07-28");
}

#[test]
fn legacy_client_reaches_the_2026_server_over_the_handshake() {
    time_server_in_its_own_era("legacy", "2025-11-25");
}

fn asking_server() -> Vec<String> {
    vec![
        python().display().to_string(),
        e2e_script("asking_server.py").display().to_string(),
    ]
}

/// One call that needs the client's LLM counts once against a limit of one, whether the
/// sampling happens as 2026-07-28 `input_required` retries or mid-call (handshake era).
fn one_call_with_client_input_counts_once(mode: &str, protocol: &str) {
    let mut s = Scenario::start(
        mode,
        asking_server(),
        r#"{"version":"1","default":"deny",
            "tools":{"summarize":{"rate_limit":{"max":1,"window":"hour"}}}}"#,
    );
    assert_eq!(s.send(json!({"op": "info"}))["protocol"], protocol);
    let first = s.call("summarize", json!({"topic": "cats"}));
    assert_allowed(&first);
    assert_eq!(text(&first), "summary of cats: sampled by the e2e driver");
    assert_refused(
        &s.call("summarize", json!({"topic": "cats"})),
        "Rate limit reached",
    );
    let audit = s.close();
    let verdicts: Vec<&str> = audit
        .iter()
        .filter(|r| r["kind"] == "decision")
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["allow", "rate_limited"]);
    let outcomes = audit.iter().filter(|r| r["kind"] == "outcome").count();
    assert_eq!(outcomes, 1, "{audit:#?}");
}

#[test]
fn input_required_retries_of_one_call_are_not_counted_twice() {
    one_call_with_client_input_counts_once("auto", "2026-07-28");
}

#[test]
fn mid_call_sampling_of_the_handshake_era_counts_once() {
    one_call_with_client_input_counts_once("legacy", "2025-11-25");
}

/// Polls `get_current_time` until its decision is `allowed`.
fn wait_for_decision(s: &mut Scenario, allowed: bool, after: &str) {
    let what = format!("the policy change by {after} to apply");
    wait_for(&what, RELOAD_WITHIN, || {
        let answer = s.call("get_current_time", json!({"timezone": "UTC"}));
        if (answer["is_error"] == false) == allowed {
            Ok(())
        } else {
            Err(format!("last answer {answer}; log:\n{}", s.log()))
        }
    });
}

fn wait_for_log(s: &Scenario, needle: &str, count: usize) {
    wait_for(
        &format!("the log to say {needle:?} {count} time(s)"),
        RELOAD_WITHIN,
        || {
            let log = s.log();
            if log.matches(needle).count() >= count {
                Ok(())
            } else {
                Err(format!("log:\n{log}"))
            }
        },
    );
}

const ALLOWING: &str = r#"{"version":"1","default":"deny","tools":{"get_current_time":{}}}"#;
const DENYING: &str =
    r#"{"version":"1","default":"deny","tools":{"get_current_time":{"action":"deny"}}}"#;

#[test]
fn policy_reloads_through_every_save_style_and_ignores_broken_files() {
    let mut s = Scenario::start("auto", time_server(), ALLOWING);
    let policy = s.path("policy.json");
    wait_for_decision(&mut s, true, "start");

    // An atomic writer: write a temporary file, rename it over the policy.
    let tmp = s.path(".policy.json.tmp");
    std::fs::write(&tmp, DENYING).unwrap();
    std::fs::rename(&tmp, &policy).unwrap();
    wait_for_decision(&mut s, false, "rename over");

    // vim: the old file renamed away, a new file written under the name.
    std::fs::rename(&policy, s.path("policy.json~")).unwrap();
    std::fs::write(&policy, ALLOWING).unwrap();
    wait_for_decision(&mut s, true, "vim-style save");

    // In place, same inode, no truncation.
    write_in_place(&policy, DENYING);
    wait_for_decision(&mut s, false, "in-place write");

    // Truncate, a moment of an empty (invalid) file, then the new text.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&policy)
        .unwrap();
    file.set_len(0).unwrap();
    file.sync_all().unwrap();
    wait_for_log(&s, "policy change refused", 1);
    std::fs::write(&policy, ALLOWING).unwrap();
    wait_for_decision(&mut s, true, "truncate then write");

    // A broken file is refused and the last good policy stays in force.
    std::fs::write(&policy, r#"{"version":"1","default":"maybe"}"#).unwrap();
    wait_for_log(&s, "policy change refused", 2);
    assert_allowed(&s.call("get_current_time", json!({"timezone": "UTC"})));

    // A deleted file too; the watch survives and picks up the file when it is back.
    std::fs::remove_file(&policy).unwrap();
    wait_for_log(&s, "the file is gone", 1);
    assert_allowed(&s.call("get_current_time", json!({"timezone": "UTC"})));
    std::fs::write(&policy, DENYING).unwrap();
    wait_for_decision(&mut s, false, "re-creation");
    s.close();
}

#[test]
fn held_calls_wait_for_an_operator_through_the_real_client() {
    let mut s = Scenario::start(
        "legacy",
        everything(),
        r#"{"version":"1","default":"deny","tools":{"echo":{"action":"require_approval",
            "reason":"echo needs a person"}}}"#,
    );
    // Approved: the call goes on to the server.
    s.send_only(&json!({"op": "call", "tool": "echo", "args": {"message": "may I"}}));
    let first = s.held_call(1);
    let approved = s.operator(&["approve", &first]);
    assert!(approved.status.success(), "{approved:?}");
    let echoed = s.answer();
    assert_allowed(&echoed);
    assert_eq!(text(&echoed), "Echo: may I");

    // Denied: the agent reads the operator's reason.
    s.send_only(&json!({"op": "call", "tool": "echo", "args": {"message": "again"}}));
    let second = s.held_call(2);
    let denied = s.operator(&["deny", &second, "--reason", "once is enough"]);
    assert!(denied.status.success(), "{denied:?}");
    assert_refused(&s.answer(), "Denied by an operator: once is enough");

    // A second resolution of the same call is refused.
    let late = s.operator(&["approve", &second]);
    assert!(!late.status.success(), "{late:?}");
    s.close();
}

/// Runs `toolgate wrap` directly with raw JSON-RPC lines on its stdin.
fn wrap_raw(server: &[&str], extra: &[&str]) -> (Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.json"), ALLOW_ALL).unwrap();
    let child = Command::new(toolgate())
        .arg("wrap")
        .arg("--policy")
        .arg(dir.path().join("policy.json"))
        .arg("--audit")
        .arg(dir.path().join("audit.jsonl"))
        .args(extra)
        .args(["--counters", "memory"])
        .arg("--no-events")
        .arg("--")
        .args(server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, dir)
}

fn stub_server() -> String {
    e2e_script("stub_server.py").display().to_string()
}

#[test]
fn a_crashing_server_fails_pending_requests_and_the_gateway_exits_non_zero() {
    let python = python().display().to_string();
    let stub = stub_server();
    let (mut child, _dir) = wrap_raw(&[&python, &stub, "crash"], &[]);
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"t","version":"1"}}}}}}"#
    )
    .unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"crash","arguments":{{}}}}}}"#
    )
    .unwrap();
    stdin.flush().unwrap();
    let answers: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0]["id"], 1);
    assert!(answers[0]["result"].is_object());
    assert_eq!(answers[1]["id"], 2);
    assert!(answers[1]["error"]["code"].is_i64(), "{}", answers[1]);
    let status = wait_exit(&mut child);
    assert!(!status.success(), "gateway exited {status}");
}

#[test]
fn a_server_that_will_not_start_is_a_clear_error() {
    let (child, _dir) = wrap_raw(&["/nonexistent/mcp-server"], &[]);
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "stdout carries protocol only");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot start the MCP server `/nonexistent/mcp-server`"),
        "{stderr}"
    );
}

#[test]
fn closing_stdin_stops_a_stubborn_server_with_sigkill_after_the_grace() {
    let python = python().display().to_string();
    let stub = stub_server();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let pid_arg = pid_file.display().to_string();
    let (mut child, _policy_dir) =
        wrap_raw(&[&python, &stub, "stubborn", &pid_arg], &["--grace", "0.2"]);
    let pid: i32 = wait_for("the stub server to write its pid", ANSWER_WITHIN, || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(String::new)
    });
    drop(child.stdin.take());
    let status = wait_exit(&mut child);
    assert!(
        status.success(),
        "a client closing is a clean end: {status}"
    );
    // The server ignored both the end of its input and SIGTERM, so only SIGKILL ended it.
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    assert!(!alive, "server {pid} still running");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(stderr.contains("killing it"), "{stderr}");
}
