//! The default counter store across real processes: two `toolgate wrap` gateways of one user
//! (one policy, one grant) share a limit exactly through the SQLite file in the state
//! directory; a restarted gateway still sees the earlier calls; a policy reload keeps the
//! counts and a changed `max` applies to the calls already counted.

mod counters_support;
#[allow(dead_code)]
#[path = "support/wait.rs"]
mod wait;

use std::path::Path;

use counters_support::{ANSWER_WITHIN, Answer, Gateway, allowed};
use wait::wait_for;

fn write_policy(path: &Path, text: &str) {
    // Written beside and renamed over, as editors do, so the watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn limited_policy(max: u64) -> String {
    format!(
        r#"{{"version":"1","default":"deny","tools":{{
            "ok":{{"limits":[{{"counter":"ok_per_day","window":"day","max":{max},"scope":"grant"}}]}}}}}}"#
    )
}

#[test]
fn two_wrap_processes_share_one_limit_exactly_through_the_default_file() {
    let home = tempfile::tempdir().unwrap();
    let policy = home.path().join("policy.json");
    write_policy(&policy, &limited_policy(7));
    let mut a = Gateway::start(home.path(), &policy, "laptop", &[]);
    let mut b = Gateway::start(home.path(), &policy, "laptop", &[]);
    let (from_a, from_b) = std::thread::scope(|s| {
        let a = s.spawn(|| a.call_many("ok", 6));
        let b = s.spawn(|| b.call_many("ok", 6));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(
        allowed(&from_a) + allowed(&from_b),
        7,
        "{from_a:?} {from_b:?}"
    );
    let refusal = from_a
        .iter()
        .chain(&from_b)
        .find(|a| !a.is_allowed())
        .unwrap();
    assert!(
        refusal.refusal().contains("ok_per_day"),
        "{}",
        refusal.refusal()
    );
    let file = home.path().join("state/toolgate/counters.sqlite3");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file)
            .expect("the default counter file is in the state directory")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the counter file is the user's alone");
}

#[test]
fn a_restarted_gateway_still_sees_the_earlier_calls() {
    let home = tempfile::tempdir().unwrap();
    let policy = home.path().join("policy.json");
    write_policy(&policy, &limited_policy(3));
    let mut first = Gateway::start(home.path(), &policy, "laptop", &[]);
    assert_eq!(allowed(&first.call_many("ok", 3)), 3);
    first.stop();

    let mut again = Gateway::start(home.path(), &policy, "laptop", &[]);
    let answer = again.call("ok");
    assert!(
        answer.refusal().starts_with("Rate limit reached"),
        "{answer:?}"
    );
    // Another grant has its own budget in the same file.
    let mut other = Gateway::start(home.path(), &policy, "desktop", &[]);
    assert_eq!(other.call("ok"), Answer::Allowed);
}

#[test]
fn an_explicit_counter_file_is_shared_and_memory_is_not() {
    let home = tempfile::tempdir().unwrap();
    let policy = home.path().join("policy.json");
    write_policy(&policy, &limited_policy(1));
    let file = home.path().join("team-counters.db");
    let spec = format!("sqlite:{}", file.display());
    let mut a = Gateway::start(home.path(), &policy, "g", &["--counters", &spec]);
    assert_eq!(a.call("ok"), Answer::Allowed);
    let mut b = Gateway::start(home.path(), &policy, "g", &["--counters", &spec]);
    assert!(!b.call("ok").is_allowed());
    assert!(file.exists());

    let mut m = Gateway::start(home.path(), &policy, "g", &["--counters", "memory"]);
    assert_eq!(m.call("ok"), Answer::Allowed);
}

#[test]
fn a_policy_reload_keeps_the_counts_and_a_new_max_applies_to_them() {
    let home = tempfile::tempdir().unwrap();
    let policy = home.path().join("policy.json");
    write_policy(&policy, &limited_policy(2));
    let mut gateway = Gateway::start(home.path(), &policy, "laptop", &[]);
    assert_eq!(allowed(&gateway.call_many("ok", 2)), 2);

    // Version 2 raises the max to 3 and allows `probe`, which tells us when it is in force
    // (a denied probe takes nothing from any budget).
    write_policy(
        &policy,
        r#"{"version":"1","default":"deny","tools":{
            "probe":{},
            "ok":{"limits":[{"counter":"ok_per_day","window":"day","max":3,"scope":"grant"}]}}}"#,
    );
    wait_for(
        "the reloaded policy to allow `probe`",
        ANSWER_WITHIN,
        || {
            if gateway.call("probe").is_allowed() {
                Ok(())
            } else {
                Err(format!("log:\n{}", gateway.log()))
            }
        },
    );
    // Two already counted: one more fits under the new max, not three.
    let answers = gateway.call_many("ok", 2);
    assert_eq!(answers[0], Answer::Allowed);
    assert!(!answers[1].is_allowed(), "{answers:?}");
}

#[test]
fn a_counter_file_that_cannot_be_created_stops_the_gateway_with_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let policy = home.path().join("policy.json");
    write_policy(&policy, &limited_policy(1));
    // A regular file where the counter file's directory should be.
    std::fs::write(home.path().join("not-a-dir"), "").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .arg("wrap")
        .arg("--policy")
        .arg(&policy)
        .arg("--no-events")
        .arg("--audit")
        .arg(home.path().join("audit.jsonl"))
        .arg("--counters")
        .arg(home.path().join("not-a-dir/counters.sqlite3"))
        .args(["--", "true"])
        .env("XDG_STATE_HOME", home.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot open the counter store"), "{stderr}");
    assert!(stderr.contains("not-a-dir"), "{stderr}");
}

#[test]
fn a_counter_file_locked_by_another_process_delays_only_the_limited_calls_and_recovers() {
    let home = tempfile::tempdir().unwrap();
    let policy = home.path().join("policy.json");
    write_policy(
        &policy,
        r#"{"version":"1","default":"deny","tools":{
            "free":{},
            "ok":{"limits":[{"counter":"ok_per_day","window":"day","max":5,"scope":"grant"}]}}}"#,
    );
    let file = home.path().join("locked.sqlite3");
    // This test process is the other process: it holds the file's write lock from before
    // the gateway starts until told otherwise.
    let locker = rusqlite::Connection::open(&file).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let spec = format!("sqlite:{}", file.display());

    // Starting (the initialize answer) does not need the lock.
    let mut gateway = Gateway::start(home.path(), &policy, "g", &["--counters", &spec]);
    assert_eq!(gateway.call("free"), Answer::Allowed, "{}", gateway.log());

    // A limited call waits for the store; a call without limits sent after it is answered
    // first, while the lock is still held.
    let limited = gateway.send_call("ok");
    let free = gateway.send_call("free");
    assert_eq!(gateway.answer(free), Answer::Allowed);
    assert!(
        !gateway.answered(limited),
        "the limited call was answered before the call without limits"
    );
    let refused = gateway.answer(limited);
    assert!(
        refused.refusal().contains("counter store unavailable")
            && refused.refusal().contains("locked"),
        "a limited call fails closed, saying why: {refused:?}"
    );

    // The lock goes away: the next limited call is counted, with nothing to restart.
    locker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(gateway.call("ok"), Answer::Allowed, "{}", gateway.log());
    let counted: i64 = locker
        .query_row(
            "SELECT coalesce(sum(n), 0) FROM counter_rows WHERE token >= 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(counted, 1, "the recovered store counted the call");
}
