//! Redis as the shared counter store, with real processes: gateways that share nothing but
//! a Redis server (separate state directories, as on separate machines) share a limit exactly
//! under concurrent calls; a Redis stopped mid-run makes limited calls fail closed (or open,
//! when asked) and the log says so; a Redis back again is used again without a restart.

mod counters_support;
#[allow(dead_code)]
#[path = "support/wait.rs"]
mod wait;

use counters_support::{ANSWER_WITHIN, Answer, Gateway, RedisServer, allowed, unique_prefix};
use wait::wait_for;

const POLICY: &str = r#"{"version":"1","default":"deny","tools":{
    "free":{},
    "ok":{"limits":[{"counter":"ok_per_hour","window":"hour","max":11,"scope":"grant"}]}}}"#;

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let home = tempfile::tempdir().unwrap();
    let policy = home.path().join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    (home, policy)
}

/// Calls `tool` until it is allowed (each refusal takes nothing), failing after a while.
fn until_allowed(gateway: &mut Gateway, tool: &str) {
    wait_for(
        &format!("{tool} to be allowed again"),
        ANSWER_WITHIN,
        || {
            let answer = gateway.call(tool);
            if answer.is_allowed() {
                Ok(())
            } else {
                Err(format!("last answer {answer:?}\n{}", gateway.log()))
            }
        },
    );
}

#[test]
fn gateways_on_separate_machines_share_a_limit_exactly_through_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let prefix = unique_prefix("share");
    let store = ["--counters", &url, "--counters-prefix", &prefix];
    let (home_a, policy_a) = setup();
    let (home_b, policy_b) = setup();
    let mut a = Gateway::start(home_a.path(), &policy_a, "team", &store);
    let mut b = Gateway::start(home_b.path(), &policy_b, "team", &store);
    let (from_a, from_b) = std::thread::scope(|s| {
        let a = s.spawn(|| a.call_many("ok", 9));
        let b = s.spawn(|| b.call_many("ok", 9));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(
        allowed(&from_a) + allowed(&from_b),
        11,
        "{from_a:?} {from_b:?}"
    );

    // Another prefix is another tenant, with its own budget.
    let other = unique_prefix("tenant");
    let (home_c, policy_c) = setup();
    let mut c = Gateway::start(
        home_c.path(),
        &policy_c,
        "team",
        &["--counters", &url, "--counters-prefix", &other],
    );
    assert_eq!(c.call("ok"), Answer::Allowed);
}

#[test]
fn a_stopped_redis_fails_closed_then_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let prefix = unique_prefix("outage");
    let (home, policy) = setup();
    let mut gateway = Gateway::start(
        home.path(),
        &policy,
        "team",
        &["--counters", &url, "--counters-prefix", &prefix],
    );
    assert_eq!(gateway.call("ok"), Answer::Allowed);

    redis.stop();
    let refused = gateway.call("ok");
    assert!(
        refused.refusal().contains("counter store unavailable"),
        "{refused:?}"
    );
    assert!(
        refused.refusal().contains(&url),
        "the reason names the store: {refused:?}"
    );
    // Calls without limits do not need the store.
    assert_eq!(gateway.call("free"), Answer::Allowed);

    redis.restart();
    until_allowed(&mut gateway, "ok");
    let log = gateway.log();
    assert!(
        log.contains("calls with limits are denied until it answers again"),
        "{log}"
    );
    assert!(log.contains("answers again"), "{log}");
}

#[test]
fn with_fail_open_a_stopped_redis_lets_limited_calls_through() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let prefix = unique_prefix("open");
    let (home, policy) = setup();
    let mut gateway = Gateway::start(
        home.path(),
        &policy,
        "team",
        &[
            "--counters",
            &url,
            "--counters-prefix",
            &prefix,
            "--counters-fail",
            "open",
        ],
    );
    redis.stop();
    assert_eq!(gateway.call("ok"), Answer::Allowed);
    assert!(
        gateway.log().contains("admitted uncounted"),
        "{}",
        gateway.log()
    );
}

#[test]
fn a_gateway_starts_while_redis_is_down_and_uses_it_once_up() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.stop();
    let prefix = unique_prefix("late");
    let (home, policy) = setup();
    let mut gateway = Gateway::start(
        home.path(),
        &policy,
        "team",
        &["--counters", &url, "--counters-prefix", &prefix],
    );
    assert!(!gateway.call("ok").is_allowed());
    redis.restart();
    until_allowed(&mut gateway, "ok");
}
