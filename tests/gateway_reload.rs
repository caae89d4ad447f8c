//! Policy hot reload.
//!
//! First as the hub sees it: each valid version applied and announced, each broken or missing
//! file refused with its diagnostics while the last good policy stays. Those checks are
//! triggered directly on a [`PolicyReloader`], with no filesystem watcher, so nothing there
//! depends on timing.
//!
//! Then through the real binary (`toolgate wrap` in front of a stub server, raw JSON-RPC on
//! its stdin): a policy reached through symlinks (a dotfiles repository) follows every way
//! an editor saves, on the link and on its target, a link re-pointed elsewhere, chains of
//! links, a symlinked directory, and a link that dangles for a while. Each policy version
//! denies the stub's `ok` tool with its own reason, so a call says which version is in force.

mod support;

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use serde_json::{Value, json};
use support::lines::line_reader;
use support::peers::{e2e_script, python};
use support::wait::wait_for;
use support::{ANSWER_WITHIN, toolgate, write_in_place};
use tokio::sync::broadcast::error::TryRecvError;
use toolgate::testing::control::Hub;
use toolgate::testing::gateway::{PolicyReloader, load_initial};
use toolgate::testing::wire::{Event, EventKind, GatewayInfo};

fn hub() -> Arc<Hub> {
    Hub::new(GatewayInfo {
        id: "gw".into(),
        pid: 1,
        version: "test".into(),
        grant: "g".into(),
        server: "s".into(),
        policy: "p".into(),
        started_at: chrono::Utc::now(),
    })
}

fn next(events: &mut tokio::sync::broadcast::Receiver<Arc<Event>>) -> Option<EventKind> {
    match events.try_recv() {
        Ok(ev) => Some(ev.kind.clone()),
        Err(TryRecvError::Empty) => None,
        Err(e) => panic!("{e}"),
    }
}

const V1: &str = r#"{"version":"1","default":"deny"}"#;
const V2: &str = r#"{"version":"1","default":"allow"}"#;

#[test]
fn valid_changes_apply_and_broken_or_missing_files_keep_the_last_good_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, V1).unwrap();
    let hub = hub();
    let mut events = hub.subscribe();
    let (path, policy) = load_initial(&path, &hub).unwrap();
    let Some(EventKind::PolicyApplied(first)) = next(&mut events) else {
        panic!("no policy_applied at start")
    };
    assert_eq!(first.path, path.display().to_string());
    let v1_hash = policy.load().hash().to_owned();
    assert_eq!(first.hash, v1_hash);

    let mut watcher = PolicyReloader::new(path.clone(), policy.clone(), hub.clone());
    // Unchanged bytes: nothing to say.
    watcher.check();
    assert_eq!(next(&mut events), None);

    std::fs::write(&path, V2).unwrap();
    watcher.check();
    let Some(EventKind::PolicyApplied(applied)) = next(&mut events) else {
        panic!("no policy_applied for a valid change")
    };
    assert_ne!(applied.hash, v1_hash);
    assert_eq!(policy.load().hash(), applied.hash);

    std::fs::write(&path, r#"{"version":"1","default":"sometimes"}"#).unwrap();
    watcher.check();
    let Some(EventKind::PolicyRejected(rejected)) = next(&mut events) else {
        panic!("no policy_rejected for an invalid file")
    };
    assert!(!rejected.diagnostics.is_empty());
    assert!(
        rejected.diagnostics[0].contains("policy.json:1:"),
        "{:?}",
        rejected.diagnostics
    );
    assert_eq!(rejected.kept_hash.as_deref(), Some(applied.hash.as_str()));
    assert_eq!(
        policy.load().hash(),
        applied.hash,
        "the broken file is not enforced"
    );
    // The same broken bytes again are not reported twice.
    watcher.check();
    assert_eq!(next(&mut events), None);

    std::fs::remove_file(&path).unwrap();
    watcher.check();
    let Some(EventKind::PolicyRejected(gone)) = next(&mut events) else {
        panic!("no policy_rejected for a deleted file")
    };
    assert!(
        gone.diagnostics[0].contains("gone"),
        "{:?}",
        gone.diagnostics
    );
    assert_eq!(policy.load().hash(), applied.hash);

    std::fs::write(&path, V1).unwrap();
    watcher.check();
    let Some(EventKind::PolicyApplied(back)) = next(&mut events) else {
        panic!("no policy_applied when the file is back")
    };
    assert_eq!(back.hash, v1_hash);
}

#[test]
fn a_policy_that_does_not_load_at_start_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, "{").unwrap();
    assert!(load_initial(&path, &hub()).is_err());
    assert!(load_initial(&dir.path().join("missing.json"), &hub()).is_err());
}

/// How long a policy edit may take to show in decisions (debounce plus slack for a loaded CI
/// machine; only a broken watch ever waits this long).
const RELOAD_WITHIN: Duration = Duration::from_secs(20);

/// A policy version: allows everything but `ok`, which it denies with `version` as reason.
fn version(version: &str) -> String {
    json!({"version": "1", "default": "allow",
        "tools": {"ok": {"action": "deny", "reason": version}}})
    .to_string()
}

/// `toolgate wrap` with `--policy policy` in front of the stub server, spoken to in raw
/// JSON-RPC lines; stopped (stdin closed, then killed) when the test ends.
struct Wrap {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: Receiver<String>,
    log: PathBuf,
    next_id: u64,
}

impl Wrap {
    fn start(policy: &Path, dir: &Path) -> Wrap {
        let log = dir.join("wrap.log");
        let mut child = Command::new(toolgate())
            .arg("wrap")
            .arg("--policy")
            .arg(policy)
            .arg("--audit")
            .arg(dir.join("audit.jsonl"))
            .args([
                "--counters",
                "memory",
                "--no-events",
                "--log-level",
                "info",
                "--",
            ])
            .arg(python())
            .arg(e2e_script("stub_server.py"))
            .arg("crash")
            .env("XDG_RUNTIME_DIR", dir)
            .env("XDG_STATE_HOME", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create the log"))
            .spawn()
            .expect("start toolgate wrap");
        let stdin = child.stdin.take();
        let answers = line_reader(child.stdout.take().expect("wrap's stdout"));
        let mut wrap = Wrap {
            child,
            stdin,
            answers,
            log,
            next_id: 1,
        };
        let init = wrap.ask(
            "initialize",
            json!({"protocolVersion": "2025-06-18",
            "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
        );
        assert!(init["result"].is_object(), "initialize: {init}");
        wrap
    }

    fn ask(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let stdin = self.stdin.as_mut().expect("wrap's stdin");
        writeln!(stdin, "{line}").expect("write to wrap");
        stdin.flush().expect("flush to wrap");
        let answer = self
            .answers
            .recv_timeout(ANSWER_WITHIN)
            .unwrap_or_else(|_| panic!("no answer to {method} (id {id}); log:\n{}", self.log()));
        let answer: Value = serde_json::from_str(&answer).expect("an answer is JSON");
        assert_eq!(answer["id"], id, "{answer}");
        answer
    }

    /// The reason the policy in force gives for denying `ok` (`allowed` if it did not).
    fn in_force(&mut self) -> String {
        let answer = self.ask("tools/call", json!({"name": "ok", "arguments": {}}));
        let result = &answer["result"];
        match result["isError"].as_bool() {
            Some(true) => result["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            _ => "allowed".to_owned(),
        }
    }

    /// Waits until the policy version `version` decides calls; `after` says what was done.
    fn wait_for(&mut self, version: &str, after: &str) {
        let what = format!("policy {version} to apply after {after}");
        wait_for(&what, RELOAD_WITHIN, || {
            let now = self.in_force();
            if now.ends_with(&format!(": {version}")) {
                Ok(())
            } else {
                Err(format!("still: {now}; log:\n{}", self.log()))
            }
        });
    }

    /// Waits until the log has said `text` at least `n` times.
    fn wait_for_log(&self, text: &str, n: usize) {
        wait_for(
            &format!("the log to say {text:?} {n} time(s)"),
            RELOAD_WITHIN,
            || {
                let log = self.log();
                if log.matches(text).count() >= n {
                    Ok(())
                } else {
                    Err(format!("log:\n{log}"))
                }
            },
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Wrap {
    fn drop(&mut self) {
        drop(self.stdin.take());
        support::stop_within(&mut self.child, Duration::from_secs(10));
    }
}

/// Writes a temporary file beside `path` and renames it over `path` (atomic writers).
fn write_and_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Points the symlink `link` at `target` atomically, as `ln -sfn` users script it (a new link
/// renamed over the old one).
fn repoint(link: &Path, target: &Path) {
    let tmp = link.with_extension("link~");
    symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

fn mkdirs(root: &Path, dirs: &[&str]) {
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
}

#[test]
fn a_symlinked_policy_follows_edits_to_its_target_and_the_link_being_re_pointed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    mkdirs(
        root,
        &["config", "dotfiles", "elsewhere", "chain", "deep", "deeper"],
    );
    let target = root.join("dotfiles/policy.json");
    std::fs::write(&target, version("v1")).unwrap();
    let link = root.join("config/policy.json");
    // A relative link, as dotfiles managers make them.
    symlink("../dotfiles/policy.json", &link).unwrap();
    let mut wrap = Wrap::start(&link, root);
    wrap.wait_for("v1", "start");
    wrap.wait_for_log("is a symlink to", 1);

    // Every way an editor saves the target, which lives in a directory of its own.
    write_in_place(&target, &version("v2"));
    wrap.wait_for("v2", "an in-place write of the target");
    write_and_rename(&target, &version("v3"));
    wrap.wait_for("v3", "a temporary file renamed over the target");
    std::fs::rename(&target, root.join("dotfiles/policy.json~")).unwrap();
    std::fs::write(&target, version("v4")).unwrap();
    wrap.wait_for(
        "v4",
        "a vim-style save of the target (renamed away, written anew)",
    );
    std::fs::remove_file(&target).unwrap();
    wrap.wait_for_log("the symlink leads to", 1);
    assert!(
        wrap.in_force().ends_with(": v4"),
        "a dangling link keeps the policy"
    );
    std::fs::write(&target, version("v5")).unwrap();
    wrap.wait_for("v5", "the target deleted, then created again");

    // The link re-pointed to a file in yet another directory; edits there apply from then
    // on, and the old target no longer matters.
    let other = root.join("elsewhere/policy.json");
    std::fs::write(&other, version("v6")).unwrap();
    repoint(&link, &other);
    wrap.wait_for("v6", "the link re-pointed to another directory");
    wrap.wait_for_log("now leads to", 1);
    write_in_place(&other, &version("v7"));
    wrap.wait_for("v7", "an in-place write of the new target");

    // The link itself saved like a file: deleted and made again, pointing back.
    std::fs::remove_file(&link).unwrap();
    symlink(&target, &link).unwrap();
    wrap.wait_for("v5", "the link deleted and made again");
    write_and_rename(&target, &version("v8"));
    wrap.wait_for("v8", "a rename over the old target, followed again");

    // A chain: link -> chain/policy.json -> deep/policy.json; the middle link re-pointed.
    let middle = root.join("chain/policy.json");
    let deep = root.join("deep/policy.json");
    std::fs::write(&deep, version("v9")).unwrap();
    symlink(&deep, &middle).unwrap();
    repoint(&link, &middle);
    wrap.wait_for("v9", "the link re-pointed into a chain of links");
    write_in_place(&deep, &version("v10"));
    wrap.wait_for("v10", "an in-place write at the end of the chain");
    let deeper = root.join("deeper/policy.json");
    std::fs::write(&deeper, version("v11")).unwrap();
    repoint(&middle, &deeper);
    wrap.wait_for("v11", "the middle link of the chain re-pointed");
    write_and_rename(&deeper, &version("v12"));
    wrap.wait_for("v12", "a rename at the new end of the chain");

    // A link that dangles for a while, into a directory that does not exist yet.
    let later = root.join("later/sub/policy.json");
    repoint(&link, &later);
    wrap.wait_for_log("the symlink leads to", 2);
    assert!(
        wrap.in_force().ends_with(": v12"),
        "a dangling link keeps the policy"
    );
    std::fs::create_dir(root.join("later")).unwrap();
    std::fs::create_dir(root.join("later/sub")).unwrap();
    std::fs::write(&later, version("v13")).unwrap();
    wrap.wait_for("v13", "the missing directories and file created");

    // An editor that saves through a temporary file renamed over the link replaces the link
    // with a plain file: that file is the policy from then on.
    write_and_rename(&link, &version("v14"));
    wrap.wait_for("v14", "the link replaced by a file renamed over it");
    write_in_place(&link, &version("v15"));
    wrap.wait_for(
        "v15",
        "an in-place write of the file that replaced the link",
    );
}

#[test]
fn a_policy_in_a_symlinked_directory_follows_the_directory_link() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    mkdirs(root, &["dotfiles/toolgate", "backup/toolgate"]);
    std::fs::write(root.join("dotfiles/toolgate/policy.json"), version("d1")).unwrap();
    std::fs::write(root.join("backup/toolgate/policy.json"), version("b1")).unwrap();
    let config = root.join("config");
    symlink(root.join("dotfiles/toolgate"), &config).unwrap();
    let mut wrap = Wrap::start(&config.join("policy.json"), root);
    wrap.wait_for("d1", "start");

    write_and_rename(&root.join("dotfiles/toolgate/policy.json"), &version("d2"));
    wrap.wait_for("d2", "a rename in the directory the link leads to");
    repoint(&config, &root.join("backup/toolgate"));
    wrap.wait_for("b1", "the directory link re-pointed");
    write_in_place(&root.join("backup/toolgate/policy.json"), &version("b2"));
    wrap.wait_for("b2", "an in-place write in the new directory");
}

#[test]
fn a_console_write_through_a_symlinked_policy_keeps_the_link_and_the_gateway_applies_it() {
    use toolgate::console::testing::{hash_bytes, write_atomic};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    mkdirs(root, &["config", "dotfiles"]);
    let target = root.join("dotfiles/policy.json");
    std::fs::write(&target, version("v1")).unwrap();
    let link = root.join("config/policy.json");
    symlink("../dotfiles/policy.json", &link).unwrap();
    let mut wrap = Wrap::start(&link, root);
    wrap.wait_for("v1", "start");

    // What the console's `:w` does, given the path the gateway was started with.
    write_atomic(
        &link,
        &version("v2"),
        &hash_bytes(version("v1").as_bytes()),
        false,
    )
    .expect("the console's write");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the policy path is still a link"
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../dotfiles/policy.json")
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), version("v2"));
    wrap.wait_for("v2", "the console wrote through the link");
}
