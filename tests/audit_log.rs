//! The audit log against the real binary: `toolgate wrap` (and `serve` for SIGHUP) in front
//! of a small stdio server (`tests/e2e/stub_server.py`), driven with raw JSON-RPC lines, an
//! operator on the real event websocket.
//!
//! - a log that cannot be written denies calls from the moment it is seen, says so (event and
//!   log line), and recovers by itself, every record written in the end: on a full 64 KiB
//!   tmpfs where the tests may mount one (root, as on CI), else on a file without write
//!   permission (the test prints which ran);
//! - rotation (the file renamed away) and SIGHUP; a file others could read made 0600;
//! - the arguments' HMAC and its key; credentials in argument values redacted.

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use support::discovery::wait_discovery;
use support::lines::line_reader;
use support::peers::{e2e_script, python};
use support::wait::wait_for;
use support::{ANSWER_WITHIN, private_dir, toolgate, wait_exit};
use toolgate::testing::control::{self, Connection};
use toolgate::testing::wire::{AuditStatus, CallEvent, EventKind};

const ALLOW_ALL: &str = r#"{"version":"1","default":"allow"}"#;

/// What an agent reads when the audit log refuses its call.
const AUDIT_REFUSAL: &str = "the audit log cannot be written";

/// Calls made at most while waiting for a failure to be seen (a 64 KiB tmpfs fills long
/// before).
const MAX_CALLS: usize = 400;

/// A private home for one gateway: policy, runtime and state directories, stderr.
struct Home(tempfile::TempDir);

impl Home {
    fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.json"), ALLOW_ALL).unwrap();
        private_dir(&dir.path().join("run"));
        Home(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// `toolgate wrap` in front of the stub server, fed raw JSON-RPC lines.
struct Wrap {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
    next_id: u64,
}

impl Wrap {
    /// Starts `wrap` with its audit log at `audit` and `extra` options, and initialises it.
    fn start(home: &Home, audit: &Path, extra: &[&str]) -> Wrap {
        let mut wrap = Wrap::spawn(home, audit, extra);
        let init = wrap.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "audit-e2e", "version": "0"}}),
        );
        assert!(init["result"].is_object(), "{init}; log:\n{}", wrap.log());
        wrap.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        wrap
    }

    fn spawn(home: &Home, audit: &Path, extra: &[&str]) -> Wrap {
        let stderr = home.path("stderr.log");
        let mut child = Command::new(toolgate())
            .arg("wrap")
            .arg("--policy")
            .arg(home.path("policy.json"))
            .arg("--audit")
            .arg(audit)
            .args(["--counters", "memory"])
            .args(extra)
            .arg("--")
            .arg(python())
            .arg(e2e_script("stub_server.py"))
            .arg("crash")
            .env("XDG_RUNTIME_DIR", home.path("run"))
            .env("XDG_STATE_HOME", home.path("state"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let lines = line_reader(child.stdout.take().unwrap());
        Wrap {
            child,
            stdin,
            lines,
            stderr,
            next_id: 1,
        }
    }

    fn send(&mut self, msg: &Value) {
        let stdin = self.stdin.as_mut().expect("the gateway's stdin is open");
        writeln!(stdin, "{msg}").unwrap();
        stdin.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let line = self
                .lines
                .recv_timeout(ANSWER_WITHIN)
                .unwrap_or_else(|_| panic!("no answer to {id}; log:\n{}", self.log()));
            let msg: Value = serde_json::from_str(&line).unwrap();
            if msg["id"] == id {
                return msg;
            }
        }
    }

    /// Calls the stub's `ok` tool; the answer's `result`.
    fn call(&mut self, args: Value) -> Value {
        let answer = self.request("tools/call", json!({"name": "ok", "arguments": args}));
        answer["result"].clone()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the gateway's stderr has a line containing `text`.
    fn wait_for_log(&self, text: &str) {
        wait_for(&format!("a log line with {text:?}"), ANSWER_WITHIN, || {
            let log = self.log();
            if log.contains(text) {
                Ok(())
            } else {
                Err(format!("log:\n{log}"))
            }
        });
    }

    fn hang_up(&self) {
        signal(&self.child, nix::sys::signal::Signal::SIGHUP);
    }

    /// Fails at once if the gateway has exited (rather than waiting out a deadline).
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the gateway exited ({status}); log:\n{}", self.log());
        }
    }

    /// Closes stdin (how a client ends a session) and waits for the gateway to exit.
    fn stop(mut self) {
        drop(self.stdin.take());
        let status = wait_exit(&mut self.child);
        assert!(
            status.success(),
            "gateway exited {status}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Wrap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
}

fn allowed(result: &Value) -> bool {
    result["isError"] != true && result["content"][0]["text"] == "ok"
}

fn refusal_text(result: &Value) -> String {
    assert_eq!(result["isError"], true, "expected a refusal: {result}");
    result["content"][0]["text"].as_str().unwrap().to_owned()
}

/// The records of the audit files at `paths`, in order.
fn records(paths: &[&Path]) -> Vec<Value> {
    paths
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Polls `check` until it holds; fails saying `what` was waited for.
fn wait_until(what: &str, check: impl FnMut() -> bool) {
    support::wait::wait_until(what, ANSWER_WITHIN, check);
}

/// An operator on the gateway's event websocket (found through its discovery file).
struct Operator {
    runtime: tokio::runtime::Runtime,
    conn: Connection,
}

impl Operator {
    fn connect(home: &Home) -> Operator {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let entry = wait_discovery(&home.path("run"), String::new);
        let conn = runtime
            .block_on(control::connect(&entry.url, &entry.token))
            .expect("connect to the gateway's websocket");
        Operator { runtime, conn }
    }

    /// The next event that `pick` selects (the others are skipped).
    fn next<T>(&mut self, what: &str, mut pick: impl FnMut(EventKind) -> Option<T>) -> T {
        let conn = &mut self.conn;
        self.runtime.block_on(async {
            tokio::time::timeout(ANSWER_WITHIN, async {
                loop {
                    let event = conn
                        .next_event()
                        .await
                        .expect("the connection stays open")
                        .expect("a valid event");
                    if let Some(found) = pick(event.kind) {
                        return found;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no {what} event in time"))
        })
    }

    fn audit_event(&mut self) -> AuditStatus {
        self.next("audit", |kind| match kind {
            EventKind::Audit(status) => Some(status),
            _ => None,
        })
    }

    fn call_event(&mut self) -> CallEvent {
        self.next("call", |kind| match kind {
            EventKind::Call(call) => Some(call),
            _ => None,
        })
    }
}

/// A 64 KiB tmpfs mounted at a fresh directory, unmounted when dropped; `None` where this
/// process may not mount (not root, or no mount namespace rights).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount() -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Tmpfs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Fills the filesystem holding `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = [0u8; 4096];
    // 64 KiB fills in 16 blocks; the bound only stops a runaway.
    for _ in 0..1024 {
        if file.write_all(&block).is_err() {
            return filler;
        }
    }
    panic!("{} never filled up", dir.display());
}

/// How the audit log is made unwritable, and made writable again.
enum Outage {
    /// A full tmpfs: the filler is removed to recover.
    Full { tmpfs: Tmpfs, filler: PathBuf },
    /// The log renamed away and a file without write permission in its place (binding only
    /// when not root: root writes anyway): made 0600 to recover.
    ReadOnly { _dir: tempfile::TempDir },
    /// For root without a tmpfs: the log's directory renamed away and a file in its place,
    /// so the path can be neither opened nor made; the file is removed to recover.
    NoDirectory { dir: tempfile::TempDir },
}

#[test]
fn a_log_that_cannot_be_written_denies_calls_until_it_can_and_loses_no_record() {
    let home = Home::new();
    let (mut outage, audit) = match Tmpfs::mount() {
        Some(tmpfs) => {
            eprintln!("audit outage: a full 64 KiB tmpfs");
            let audit = tmpfs.path().join("audit.jsonl");
            (
                Outage::Full {
                    tmpfs,
                    filler: PathBuf::new(),
                },
                audit,
            )
        }
        None if !nix::unistd::geteuid().is_root() => {
            eprintln!("audit outage: a file without write permission (cannot mount a tmpfs)");
            let dir = tempfile::tempdir().unwrap();
            let audit = dir.path().join("audit.jsonl");
            (Outage::ReadOnly { _dir: dir }, audit)
        }
        None => {
            eprintln!("audit outage: the log's directory replaced by a file (root, no tmpfs)");
            let dir = tempfile::tempdir().unwrap();
            let audit = dir.path().join("logs/audit.jsonl");
            (Outage::NoDirectory { dir }, audit)
        }
    };
    let mut wrap = Wrap::start(&home, &audit, &[]);
    let mut operator = Operator::connect(&home);
    assert!(allowed(&wrap.call(json!({"n": 0}))));
    wait_until("the first records on disk", || {
        records(&[&audit]).len() == 2
    });

    let rotated = audit.with_extension("jsonl.1");
    match &mut outage {
        Outage::Full { tmpfs, filler } => *filler = fill(tmpfs.path()),
        Outage::ReadOnly { .. } => {
            std::fs::rename(&audit, &rotated).unwrap();
            std::fs::write(&audit, "").unwrap();
            std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        Outage::NoDirectory { dir } => {
            std::fs::rename(dir.path().join("logs"), dir.path().join("logs.1")).unwrap();
            std::fs::write(dir.path().join("logs"), "").unwrap();
        }
    }

    // Calls go on until the writer meets the failure; from then on every call is denied.
    let mut allowed_calls = 1;
    let mut refusal = None;
    for n in 1..=MAX_CALLS {
        let result = wrap.call(json!({"n": n}));
        if allowed(&result) {
            assert!(refusal.is_none(), "allowed after a refusal: {result}");
            allowed_calls += 1;
        } else {
            refusal = Some(refusal_text(&result));
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let refusal = refusal.unwrap_or_else(|| panic!("never refused; log:\n{}", wrap.log()));
    assert!(refusal.contains(AUDIT_REFUSAL), "{refusal}");
    assert!(refusal.contains("--audit-fail closed"), "{refusal}");
    let down = operator.audit_event();
    assert!(!down.ok, "{down:?}");
    assert_eq!(down.path, audit.display().to_string());
    let detail = down.detail.unwrap_or_default();
    assert!(detail.contains("tool calls are denied"), "{detail}");
    wrap.wait_for_log("tool calls are denied until it can be written again");
    let refused = wrap.call(json!({"n": "while down"}));
    assert!(refusal_text(&refused).contains(AUDIT_REFUSAL));

    match &outage {
        Outage::Full { filler, .. } => std::fs::remove_file(filler).unwrap(),
        Outage::ReadOnly { .. } => {
            std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o600)).unwrap()
        }
        Outage::NoDirectory { dir } => std::fs::remove_file(dir.path().join("logs")).unwrap(),
    }
    let up = operator.audit_event();
    assert!(up.ok, "{up:?}");
    assert!(allowed(&wrap.call(json!({"n": "after"}))));
    allowed_calls += 1;
    wrap.stop();

    // Every call's decision is in the log: those allowed before the failure was seen (kept
    // in memory and written on recovery) and those refused meanwhile.
    let moved_dir = audit
        .parent()
        .unwrap()
        .with_extension("1")
        .join("audit.jsonl");
    let all = records(&[&rotated, &moved_dir, &audit]);
    let decisions: Vec<&Value> = all.iter().filter(|r| r["kind"] == "decision").collect();
    let allows = decisions
        .iter()
        .filter(|r| r["decision"] == "allow")
        .count();
    let denies: Vec<&&Value> = decisions
        .iter()
        .filter(|r| r["decision"] == "deny")
        .collect();
    assert_eq!(allows, allowed_calls, "{all:#?}");
    assert_eq!(denies.len(), 2, "{all:#?}");
    assert!(
        denies
            .iter()
            .all(|d| d["reason"].as_str().unwrap().contains(AUDIT_REFUSAL))
    );
    assert!(all.iter().all(|r| r["kind"] != "gap"), "{all:#?}");
}

#[test]
fn a_gateway_stopped_while_its_log_is_full_leaves_only_whole_lines_and_says_what_was_lost() {
    let Some(tmpfs) = Tmpfs::mount() else {
        eprintln!("skipped: this process cannot mount a tmpfs (the full-disk case needs one)");
        return;
    };
    let home = Home::new();
    let audit = tmpfs.path().join("audit.jsonl");
    let mut wrap = Wrap::start(&home, &audit, &[]);
    assert!(allowed(&wrap.call(json!({"n": 0}))));
    wait_until("the first records on disk", || {
        records(&[&audit]).len() == 2
    });
    fill(tmpfs.path());
    let mut refused = 0;
    for n in 1..=MAX_CALLS {
        let result = wrap.call(json!({"n": n, "pad": "x".repeat(300)}));
        if !allowed(&result) {
            refused += 1;
            if refused == 50 {
                break;
            }
        }
    }
    assert_eq!(refused, 50, "log:\n{}", wrap.log());
    wrap.stop();
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        text.ends_with('\n'),
        "a record cut short: {:?}",
        &text[text.len().saturating_sub(200)..]
    );
    for line in text.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not a whole record: {line}"
        );
    }
    let stderr = std::fs::read_to_string(home.path("stderr.log")).unwrap();
    assert!(
        stderr.contains("records could not be written and are lost"),
        "{stderr}"
    );
}

#[test]
fn after_the_log_is_renamed_away_the_next_record_goes_to_a_new_file_at_its_path() {
    let home = Home::new();
    let audit = home.path("audit.jsonl");
    let rotated = home.path("audit.jsonl.1");
    let mut wrap = Wrap::start(&home, &audit, &[]);
    assert!(allowed(&wrap.call(json!({"n": "before"}))));
    wait_until("the first call's records on disk", || {
        records(&[&audit]).len() == 2
    });
    std::fs::rename(&audit, &rotated).unwrap();
    assert!(allowed(&wrap.call(json!({"n": "after"}))));
    wrap.stop();
    let old = records(&[&rotated]);
    let new = records(&[&audit]);
    assert_eq!(old.len(), 2, "{old:#?}");
    assert_eq!(new.len(), 2, "{new:#?}");
    assert_ne!(old[0]["call_id"], new[0]["call_id"]);
    assert_eq!(mode(&audit), 0o600);
}

#[test]
fn sighup_reopens_the_log_and_does_not_stop_wrap() {
    let home = Home::new();
    let audit = home.path("audit.jsonl");
    let mut wrap = Wrap::start(&home, &audit, &[]);
    // Renamed away and nothing written since: only the reopen can make the new file.
    std::fs::rename(&audit, home.path("audit.jsonl.1")).unwrap();
    wrap.hang_up();
    wait_until("a new audit file after SIGHUP", || {
        wrap.assert_running();
        audit.exists()
    });
    wrap.wait_for_log("SIGHUP: reopening the audit log");
    // Loosened by hand: the reopen makes it private again.
    std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o644)).unwrap();
    wrap.hang_up();
    wait_until("the audit file made 0600 after SIGHUP", || {
        wrap.assert_running();
        mode(&audit) == 0o600
    });
    assert!(allowed(&wrap.call(json!({}))), "log:\n{}", wrap.log());
    wrap.stop();
    assert_eq!(records(&[&audit]).len(), 2);
}

#[test]
fn sighup_reopens_the_log_and_does_not_stop_serve() {
    let home = Home::new();
    let servers = json!({"mcpServers": {"stub": {
        "command": python(), "args": [e2e_script("stub_server.py"), "crash"]}}});
    std::fs::write(home.path("servers.json"), servers.to_string()).unwrap();
    let made = Command::new(toolgate())
        .args(["grants", "add", "agent", "--file"])
        .arg(home.path("grants.json"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let stderr = home.path("stderr.log");
    let mut serve = Command::new(toolgate())
        .arg("serve")
        .arg("--policy")
        .arg(home.path("policy.json"))
        .arg("--servers")
        .arg(home.path("servers.json"))
        .arg("--grants")
        .arg(home.path("grants.json"))
        .arg("--audit")
        .arg(home.path("audit.jsonl"))
        .args(["--listen", "127.0.0.1:0", "--counters", "memory"])
        .env("XDG_RUNTIME_DIR", home.path("run"))
        .env("XDG_STATE_HOME", home.path("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    wait_until("serve listening", || log().contains("listening on"));
    std::fs::rename(home.path("audit.jsonl"), home.path("audit.jsonl.1")).unwrap();
    signal(&serve, nix::sys::signal::Signal::SIGHUP);
    wait_until("a new audit file after SIGHUP", || {
        if let Some(status) = serve.try_wait().unwrap() {
            panic!("serve exited ({status}) on SIGHUP; log:\n{}", log());
        }
        home.path("audit.jsonl").exists()
    });
    signal(&serve, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut serve);
    assert!(status.success(), "serve exited {status}; log:\n{}", log());
}

#[test]
fn an_existing_log_readable_by_others_is_made_private_with_a_warning() {
    let home = Home::new();
    let audit = home.path("audit.jsonl");
    std::fs::write(&audit, "{\"kind\":\"earlier\"}\n").unwrap();
    std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut wrap = Wrap::start(&home, &audit, &[]);
    assert_eq!(mode(&audit), 0o600);
    wrap.wait_for_log("was readable by group or others (mode 0644); made it 0600");
    assert!(allowed(&wrap.call(json!({}))));
    wrap.stop();
    let all = records(&[&audit]);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_eq!(all[0]["kind"], "earlier");
}

/// The `args_hmac` of the one decision in the audit log of a gateway given `extra` that was
/// called with `args`.
fn hmac_of_a_call(args: &Value, extra: &[&str]) -> String {
    let home = Home::new();
    let audit = home.path("audit.jsonl");
    let mut wrap = Wrap::start(&home, &audit, extra);
    assert!(allowed(&wrap.call(args.clone())));
    wrap.stop();
    let all = records(&[&audit]);
    assert!(all[0].get("args_sha256").is_none(), "{all:#?}");
    all[0]["args_hmac"].as_str().unwrap().to_owned()
}

fn write_key(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn records_hash_arguments_under_a_key_and_gateways_sharing_it_compare() {
    let keys = tempfile::tempdir().unwrap();
    let shared = keys.path().join("shared.key");
    let key = [0x5au8; 32];
    write_key(&shared, &key, 0o600);
    let shared_arg = ["--audit-key", shared.to_str().unwrap()];
    let pin = json!({"pin": "4821"});

    let first = hmac_of_a_call(&pin, &shared_arg);
    let second = hmac_of_a_call(&json!({"pin": "4821"}), &shared_arg);
    let own_key = hmac_of_a_call(&pin, &[]);
    assert_eq!(first, second, "the same key and arguments compare");
    assert_ne!(first, own_key, "another installation's key does not");
    assert_ne!(first, hmac_of_a_call(&json!({"pin": "4822"}), &shared_arg));

    // What the README says to do: HMAC-SHA-256 of the canonical arguments under the key.
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(br#"{"pin":"4821"}"#);
    assert_eq!(first, hex::encode(mac.finalize().into_bytes()));
    // And not the plain SHA-256 a guesser could recompute.
    use sha2::Digest;
    assert_ne!(
        first,
        hex::encode(sha2::Sha256::digest(br#"{"pin":"4821"}"#))
    );
}

#[test]
fn the_installation_key_is_made_private_in_the_state_directory() {
    let home = Home::new();
    let mut wrap = Wrap::start(&home, &home.path("audit.jsonl"), &[]);
    assert!(allowed(&wrap.call(json!({}))));
    wrap.stop();
    let key = home.path("state/toolgate/audit.key");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(std::fs::metadata(&key).unwrap().len(), 32);
}

#[test]
fn a_key_file_others_can_read_or_of_the_wrong_size_stops_the_gateway_with_what_to_do() {
    let keys = tempfile::tempdir().unwrap();
    let cases = [
        (
            "open.key",
            vec![1u8; 32],
            0o644,
            "readable by group or others",
        ),
        ("short.key", vec![1u8; 5], 0o600, "holds 5 bytes, not 32"),
    ];
    for (name, bytes, key_mode, expected) in cases {
        let key = keys.path().join(name);
        write_key(&key, &bytes, key_mode);
        let home = Home::new();
        let mut wrap = Wrap::spawn(
            &home,
            &home.path("audit.jsonl"),
            &["--audit-key", key.to_str().unwrap()],
        );
        drop(wrap.stdin.take());
        let status = wait_exit(&mut wrap.child);
        assert!(!status.success(), "{name}: started anyway");
        let log = wrap.log();
        assert!(log.contains(expected), "{name}: {log}");
        assert!(log.contains(&key.display().to_string()), "{name}: {log}");
    }
}

#[test]
fn credentials_in_argument_values_are_redacted_in_events_tail_and_the_full_audit_log() {
    let home = Home::new();
    let audit = home.path("audit.jsonl");
    let mut wrap = Wrap::start(&home, &audit, &["--audit-args", "full"]);
    let mut operator = Operator::connect(&home);
    let mut tail = Command::new(toolgate())
        .arg("tail")
        .env("XDG_RUNTIME_DIR", home.path("run"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tail_lines = line_reader(tail.stdout.take().unwrap());
    // tail shows the gateway's hello before it follows the calls.
    tail_lines
        .recv_timeout(ANSWER_WITHIN)
        .expect("tail shows the gateway");
    let secrets = ["hunter2", "abcdefghijklmnopqrstuvwxyz012345", "plain-auth"];
    let args = json!({
        "db": "postgres://app:hunter2@db.internal/app",
        "header": "Bearer abcdefghijklmnopqrstuvwxyz012345",
        "auth": "plain-auth",
        "author": "Ada",
        "id": "550e8400-e29b-41d4-a716-446655440000",
    });
    assert!(allowed(&wrap.call(args)));

    let event = operator.call_event();
    let expected = json!({
        "db": "postgres://[redacted]@db.internal/app",
        "header": "Bearer [redacted]",
        "auth": "[redacted]",
        "author": "Ada",
        "id": "550e8400-e29b-41d4-a716-446655440000",
    });
    assert_eq!(event.args, expected);
    let line = loop {
        let line = tail_lines
            .recv_timeout(ANSWER_WITHIN)
            .expect("tail shows the call");
        if line.contains("allow") {
            break line;
        }
    };
    let _ = tail.kill();
    let _ = tail.wait();
    wrap.stop();
    let text = std::fs::read_to_string(&audit).unwrap();
    for secret in secrets {
        assert!(!line.contains(secret), "tail showed {secret}: {line}");
        assert!(!text.contains(secret), "audit log holds {secret}: {text}");
    }
    assert!(line.contains("Ada"), "{line}");
    assert_eq!(records(&[&audit])[0]["args"], expected);
}
