//! `toolgate scan` end to end: the built binary against real MCP servers —
//! `@modelcontextprotocol/server-everything` and `server-filesystem` (annotated), and
//! `tests/e2e/many_tools_server.py` (54 tools without annotations, paginated, on the real
//! Python `mcp` package, in both protocol eras) — then `toolgate check` on what it wrote.
//!
//! The peers are installed by `scripts/setup-test-peers`; without them these tests fail
//! (they never skip).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Map, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn peer(relative: &str) -> String {
    let path = root().join("tests/peers").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup-test-peers",
        path.display()
    );
    path.display().to_string()
}

fn everything() -> Vec<String> {
    vec![
        "node".into(),
        peer("node_modules/.bin/mcp-server-everything"),
        "stdio".into(),
    ]
}

fn filesystem(dir: &Path) -> Vec<String> {
    vec![
        "node".into(),
        peer("node_modules/.bin/mcp-server-filesystem"),
        dir.display().to_string(),
    ]
}

fn many_tools(extra: &[&str]) -> Vec<String> {
    let mut cmd = vec![
        peer(".venv/bin/python"),
        root()
            .join("tests/e2e/many_tools_server.py")
            .display()
            .to_string(),
    ];
    cmd.extend(extra.iter().map(|s| s.to_string()));
    cmd
}

fn toolgate(args: &[&str], server: &[String]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_toolgate"));
    cmd.args(args);
    if !server.is_empty() {
        cmd.arg("--").args(server);
    }
    cmd.output().expect("run toolgate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `scan --json`: the classification of every tool, in the server's order.
fn classify(server: &[String]) -> Vec<Value> {
    let out = toolgate(&["scan", "--json"], server);
    assert!(out.status.success(), "{}", stderr(&out));
    match serde_json::from_slice(&out.stdout).expect("JSON on stdout") {
        Value::Array(tools) => tools,
        other => panic!("not an array: {other}"),
    }
}

fn by_name<'a>(tools: &'a [Value], name: &str) -> &'a Value {
    tools
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} not offered"))
}

/// Scans into `dir/policy.json`, runs the real `toolgate check` on it, and returns the
/// policy's `tools` map.
fn scan_and_check(dir: &Path, server: &[String]) -> Map<String, Value> {
    let path = dir.join("policy.json");
    let path_arg = path.display().to_string();
    let out = toolgate(&["scan", "--output", &path_arg], server);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "stdout stays empty with --output: {}",
        stdout(&out)
    );
    let check = toolgate(&["check", &path_arg], &[]);
    assert!(
        check.status.success(),
        "check refused the suggested policy: {}",
        stdout(&check)
    );
    let policy: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("written")).expect("JSON");
    assert_eq!(policy["version"], "1");
    assert_eq!(policy["default"], "deny");
    // A tool that changes after the scan is quarantined until someone reviews it.
    assert_eq!(policy["pins"], "enforce");
    policy["tools"].as_object().expect("tools").clone()
}

/// Every rule is what its tool's class suggests, and the keys follow the server's order.
fn assert_rules_follow_classes(rules: &Map<String, Value>, tools: &[Value]) {
    let keys: Vec<&str> = rules.keys().map(String::as_str).collect();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(keys, names, "one rule per tool, in the server's order");
    for t in tools {
        let rule = &rules[t["name"].as_str().unwrap_or_default()];
        assert!(
            rule["reason"].as_str().is_some_and(|r| r.len() > 20),
            "{rule}"
        );
        match t["class"].as_str() {
            Some("read") => assert_eq!(rule["action"], "allow", "{t}"),
            Some("write") => {
                assert_eq!(rule["action"], "allow", "{t}");
                assert_eq!(rule["rate_limit"]["window"], "minute", "{t}");
            }
            Some("destructive") => assert_eq!(rule["action"], "require_approval", "{t}"),
            other => panic!("unknown class {other:?}"),
        }
    }
}

#[test]
fn server_everything_is_classed_from_its_annotations_and_its_policy_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let tools = classify(&everything());
    assert!(tools.len() >= 10, "{tools:?}");
    assert!(
        tools.iter().all(|t| t["guessed"] == false),
        "every tool of server-everything carries annotations"
    );
    assert_eq!(by_name(&tools, "echo")["class"], "read");
    assert_eq!(
        by_name(&tools, "toggle-simulated-logging")["class"],
        "write"
    );
    let gzip = by_name(&tools, "gzip-file-as-resource");
    assert_eq!(gzip["open_world"], true);
    assert_eq!(gzip["open_world_declared"], true);

    let rules = scan_and_check(dir.path(), &everything());
    assert_rules_follow_classes(&rules, &tools);
    assert!(rules["echo"].get("rate_limit").is_none());
    // Open world: stricter than a plain write.
    assert_eq!(rules["gzip-file-as-resource"]["rate_limit"]["max"], 10);
    assert_eq!(rules["toggle-simulated-logging"]["rate_limit"]["max"], 30);
}

#[test]
fn server_filesystem_destructive_writes_need_approval() {
    let dir = tempfile::tempdir().unwrap();
    let served = tempfile::tempdir().unwrap();
    let tools = classify(&filesystem(served.path()));
    // Its read tools give readOnlyHint and leave destructiveHint out; its write tools give
    // both. Either way the annotations decide.
    assert!(tools.iter().all(|t| t["guessed"] == false));
    assert_eq!(by_name(&tools, "read_text_file")["class"], "read");
    assert_eq!(by_name(&tools, "write_file")["class"], "destructive");
    assert_eq!(by_name(&tools, "move_file")["class"], "destructive");
    assert_eq!(by_name(&tools, "create_directory")["class"], "write");
    assert_eq!(by_name(&tools, "create_directory")["idempotent"], true);

    let rules = scan_and_check(dir.path(), &filesystem(served.path()));
    assert_rules_follow_classes(&rules, &tools);
    assert_eq!(rules["edit_file"]["action"], "require_approval");
}

#[test]
fn fifty_four_unannotated_tools_over_three_pages_are_guessed_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let tools = classify(&many_tools(&[]));
    assert_eq!(tools.len(), 54, "all three pages of tools/list");
    assert_eq!(tools[0]["name"], "list_users");
    assert_eq!(tools[53]["name"], "archive_project");
    assert!(tools.iter().all(|t| t["guessed"] == true));
    for (name, class) in [
        ("get_user", "read"),
        ("create_user", "write"),
        ("delete_user", "destructive"),
        ("removeMember", "destructive"),
        ("revoke_api_key", "destructive"),
        ("drop_table", "destructive"),
        ("purge_cache", "destructive"),
        ("book_shipment", "write"),
        ("send_email", "write"),
        ("query_database", "read"),
        // The name says nothing; the description does.
        ("void_invoice", "destructive"),
        // Nothing says anything: the cautious middle.
        ("frobnicate", "write"),
    ] {
        assert_eq!(by_name(&tools, name)["class"], class, "{name}");
    }
    // Secrets in the output schema, and in the input schema.
    assert_eq!(
        by_name(&tools, "create_api_key")["secret_fields"],
        serde_json::json!(["output.apiKey"])
    );
    assert_eq!(
        by_name(&tools, "connect_database")["secret_fields"],
        serde_json::json!(["input.password"])
    );
    assert_eq!(by_name(&tools, "login_as")["flags"][0], "secrets");
    assert_eq!(by_name(&tools, "fetch_url")["open_world"], true);
    assert_eq!(by_name(&tools, "get_user")["flags"], serde_json::json!([]));

    let rules = scan_and_check(dir.path(), &many_tools(&[]));
    assert_rules_follow_classes(&rules, &tools);
    assert_eq!(rules["create_api_key"]["rate_limit"]["max"], 10);
    assert!(
        rules["create_api_key"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("returns a secret (apiKey)")),
        "{}",
        rules["create_api_key"]
    );
}

#[test]
fn the_table_on_stderr_shows_class_guess_flags_and_rule() {
    let out = toolgate(&["scan"], &many_tools(&[]));
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stderr(&out);
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line("delete_user"),
        ["delete_user", "destructive*", "-", "require_approval"]
    );
    assert_eq!(
        line("create_api_key"),
        ["create_api_key", "write*", "secrets", "allow", "10/minute"]
    );
    assert!(table.contains("54 tools"), "{table}");
    // stdout is the policy alone.
    let policy: Value = serde_json::from_slice(&out.stdout).expect("policy JSON on stdout");
    assert_eq!(policy["tools"].as_object().map(Map::len), Some(54));
}

#[test]
fn a_server_that_speaks_only_the_2026_era_is_scanned_through_server_discover() {
    let out = toolgate(&["scan", "--json"], &many_tools(&["--modern-only"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(protocol 2026-07-28)"),
        "{}",
        stderr(&out)
    );
    let tools: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(tools.len(), 54);
}

#[test]
fn against_finds_the_gap_the_typo_and_the_destructive_tool_allowed_outright() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("existing.json");
    // delete_user is left out (a gap), `create_usr` is a typo, drop_table is allowed
    // without a person.
    std::fs::write(
        &policy,
        r#"{
  "version": "1",
  "default": "deny",
  "hide": ["run_shell_command"],
  "tools": {
    "list_*": {},
    "get_*": {},
    "create_usr": { "rate_limit": { "max": 30, "window": "minute" } },
    "drop_table": {},
    "*": { "action": "require_approval" }
  }
}"#,
    )
    .unwrap();
    let path = policy.display().to_string();
    let out = toolgate(&["scan", "--against", &path], &many_tools(&[]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains("/tools/create_usr: the rule \"create_usr\" matches no tool the server offers; did you mean \"create_user\"?"),
        "{report}"
    );
    assert!(
        report.contains("drop_table: /tools/drop_table allows it without any limit, but it is a destructive (guessed) tool"),
        "{report}"
    );
    assert!(!report.contains("run_shell_command"), "hidden: {report}");

    // The catch-all `*` holds every unnamed tool; without it, the default decides them.
    let without_catch_all = std::fs::read_to_string(&policy)
        .unwrap()
        .replace(",\n    \"*\": { \"action\": \"require_approval\" }", "");
    std::fs::write(&policy, without_catch_all).unwrap();
    let out = toolgate(&["scan", "--against", &path], &many_tools(&[]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(
            "delete_user: no rule names this destructive tool; the default (deny) decides it"
        ),
        "{}",
        stdout(&out)
    );

    // --json carries the same findings for scripts.
    let out = toolgate(&["scan", "--json", "--against", &path], &many_tools(&[]));
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let kinds: Vec<&str> = doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"left_to_default"), "{kinds:?}");
    assert!(kinds.contains(&"unmatched_rule"), "{kinds:?}");
    assert!(kinds.contains(&"too_permissive"), "{kinds:?}");
}

#[test]
fn against_its_own_suggestion_finds_no_gaps() {
    let dir = tempfile::tempdir().unwrap();
    scan_and_check(dir.path(), &everything());
    let path = dir.path().join("policy.json").display().to_string();
    let out = toolgate(&["scan", "--against", &path], &everything());
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("no gaps"), "{}", stdout(&out));
}

#[test]
fn an_existing_output_file_is_kept_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, "mine").unwrap();
    let path_arg = path.display().to_string();
    let out = toolgate(&["scan", "--output", &path_arg], &many_tools(&[]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");

    let out = toolgate(
        &["scan", "--force", "--output", &path_arg],
        &many_tools(&[]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        toolgate(&["check", &path_arg], &[]).status.success(),
        "the forced write is a valid policy"
    );
}

#[test]
fn a_server_that_never_answers_times_out_with_a_clear_message() {
    let out = toolgate(
        &["scan", "--timeout", "1"],
        &["sleep".to_string(), "30".to_string()],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("did not answer `initialize` within 1s") && err.contains("--timeout"),
        "{err}"
    );
}

#[test]
fn a_command_that_is_not_an_mcp_server_is_named_in_the_error() {
    let out = toolgate(&["scan"], &["true".to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("scanning `true`") && err.contains("closed the connection"),
        "{err}"
    );
    let out = toolgate(&["scan"], &["/nonexistent/server".to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot start the MCP server"),
        "{}",
        stderr(&out)
    );
}

/// A server process killed when the test ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `program args` and waits for `ready` on its stderr.
fn start_http(program: &str, args: &[String], port: u16, ready: &str) -> Running {
    use std::io::BufRead;
    let mut child = Command::new(program)
        .args(args)
        .env("PORT", port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the HTTP server");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_string();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if line.contains(&ready) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the HTTP server did not start listening");
    Running(child)
}

#[test]
fn a_streamable_http_server_gets_the_same_policy_as_over_stdio() {
    let port = free_port();
    let _server = start_http(
        "node",
        &[
            peer("node_modules/.bin/mcp-server-everything"),
            "streamableHttp".into(),
        ],
        port,
        "listening on port",
    );
    let url = format!("http://127.0.0.1:{port}/mcp");
    let over_http = toolgate(&["scan", "--url", &url], &[]);
    assert!(over_http.status.success(), "{}", stderr(&over_http));
    let over_stdio = toolgate(&["scan"], &everything());
    assert!(over_stdio.status.success(), "{}", stderr(&over_stdio));
    assert_eq!(stdout(&over_http), stdout(&over_stdio));
}

#[test]
fn a_streamable_http_server_is_paged_through_with_the_headers_given() {
    let port = free_port();
    let mut command = many_tools(&["--http", &port.to_string()]);
    command.extend(["--require-header".into(), "X-Api-Key: k1".into()]);
    let program = command.remove(0);
    let _server = start_http(&program, &command, port, "listening");
    let url = format!("http://127.0.0.1:{port}/mcp");

    let out = toolgate(
        &["scan", "--json", "--url", &url, "--header", "X-Api-Key: k1"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let tools: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(tools.len(), 54, "all three pages over HTTP");

    let refused = toolgate(&["scan", "--url", &url], &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("HTTP 401"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn an_unreachable_url_says_so() {
    let url = format!("http://127.0.0.1:{}/mcp", free_port());
    let out = toolgate(&["scan", "--url", &url], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
}
