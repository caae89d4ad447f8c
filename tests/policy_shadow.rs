//! Shadow rules (`"shadow": true`) and shadow policies (`--shadow-policy`): decided on every
//! call, never enforced, reported only when they differ, and counted in budgets of their own
//! (proven against the reference store and SQLite, the default).

use serde_json::{Value, json};
use toolgate::testing::policy::{
    Call, CounterStore, Decision, MemoryStore, Policy, SHADOW_POLICY_COUNTER_PREFIX,
    SHADOW_RULE_COUNTER_PREFIX, Scope, ShadowSource, SqliteStore, Verdict,
};

const NOW: u64 = 1_800_000_000_000;

fn policy(v: Value) -> Policy {
    let text = serde_json::to_string_pretty(&v).unwrap();
    match Policy::parse(&text, "test.json") {
        Ok(p) => p,
        Err(e) => panic!("policy should be valid:\n{e}\n{text}"),
    }
}

fn decide(p: &Policy, store: &dyn CounterStore, tool: &str, args: Value) -> Decision {
    p.decide(
        &Call {
            tool,
            args: &args,
            grant: "ci",
            session: "s1",
        },
        store,
        NOW,
    )
}

fn used(store: &dyn CounterStore, counter: &str) -> u64 {
    store
        .usage(counter, Scope::Grant, 60_000, NOW)
        .unwrap()
        .iter()
        .map(|u| u.used)
        .sum()
}

#[test]
fn a_shadow_deny_if_is_reported_as_would_deny_while_the_call_is_allowed() {
    let p = policy(json!({
        "version": "1", "default": "allow",
        "tools": {"get_current_time": {"shadow": true, "reason": "only UTC for now",
            "deny_if": [{"path": "args.timezone", "op": "neq", "value": "UTC"}]}}
    }));
    let store = MemoryStore::new();
    let d = decide(
        &p,
        &store,
        "get_current_time",
        json!({"timezone": "Europe/Paris"}),
    );
    assert_eq!(d.verdict, Verdict::Allow, "{d:?}");
    assert_eq!(
        d.rule, "/default",
        "enforced as if the shadow rule were not there"
    );
    let shadow = d.shadow.expect("the shadow rule would deny");
    assert_eq!(shadow.verdict, Verdict::Deny);
    assert_eq!(shadow.source, ShadowSource::Rule);
    assert_eq!(shadow.rule, "/tools/get_current_time/deny_if/0");
    assert!(
        shadow.reason.contains("only UTC for now"),
        "{}",
        shadow.reason
    );
    assert_eq!(shadow.would(), "would deny");

    let same = decide(&p, &store, "get_current_time", json!({"timezone": "UTC"}));
    assert_eq!(same.verdict, Verdict::Allow);
    assert_eq!(same.shadow, None, "no difference, nothing reported");
}

#[test]
fn a_shadow_rule_beside_a_glob_leaves_the_call_to_the_glob_and_reports_its_own_verdict() {
    let p = policy(json!({
        "version": "1", "default": "deny",
        "tools": {
            "send_*": {"action": "require_approval"},
            "send_email": {"shadow": true, "action": "deny", "reason": "no mail at all"}
        }
    }));
    let store = MemoryStore::new();
    let d = decide(&p, &store, "send_email", json!({}));
    assert_eq!(d.verdict, Verdict::Hold, "the glob enforces: {d:?}");
    assert_eq!(d.rule, "/tools/send_*");
    let shadow = d.shadow.expect("would deny");
    assert_eq!(
        (shadow.verdict, shadow.rule.as_str()),
        (Verdict::Deny, "/tools/send_email")
    );
    // Another tool under the glob has no shadow rule at all.
    assert_eq!(decide(&p, &store, "send_sms", json!({})).shadow, None);
    // Without a glob, the default enforces.
    let p = policy(json!({
        "version": "1", "default": "deny",
        "tools": {"read_file": {"shadow": true}}
    }));
    let d = decide(&p, &store, "read_file", json!({}));
    assert_eq!((d.verdict, d.rule.as_str()), (Verdict::Deny, "/default"));
    let shadow = d
        .shadow
        .expect("a shadow allow differs from the default's deny");
    assert_eq!(shadow.verdict, Verdict::Allow);
    assert_eq!(shadow.would(), "would allow");
}

#[test]
fn a_shadow_condition_that_cannot_be_evaluated_is_a_would_deny_and_never_a_deny() {
    let p = policy(json!({
        "version": "1", "default": "allow",
        "tools": {"transfer": {"shadow": true,
            "require": [{"path": "args.amount", "op": "lte", "value": 100}]}}
    }));
    let store = MemoryStore::new();
    let d = decide(&p, &store, "transfer", json!({"amount": [1, 2]}));
    assert_eq!(d.verdict, Verdict::Allow);
    let shadow = d.shadow.expect("unknown fails closed, in shadow");
    assert_eq!(shadow.verdict, Verdict::Deny);
    assert!(shadow.reason.contains("is unknown"), "{}", shadow.reason);
}

#[test]
fn a_full_shadow_limit_is_a_would_rate_limit_and_never_refuses_the_call() {
    let p = policy(json!({
        "version": "1", "default": "allow",
        "tools": {"create_api_key": {"shadow": true, "rate_limit": {"max": 2, "window": "minute"}}}
    }));
    let store = MemoryStore::new();
    let verdicts: Vec<_> = (0..4)
        .map(|_| decide(&p, &store, "create_api_key", json!({})))
        .collect();
    assert!(verdicts.iter().all(|d| d.verdict == Verdict::Allow));
    assert_eq!(verdicts[0].shadow, None);
    assert_eq!(verdicts[1].shadow, None);
    let third = verdicts[2]
        .shadow
        .as_ref()
        .expect("the third would be limited");
    assert_eq!(third.verdict, Verdict::RateLimited);
    assert_eq!(third.rule, "/tools/create_api_key/rate_limit");
    assert!(
        third.reason.contains("2 calls per minute"),
        "{}",
        third.reason
    );
}

/// The same budgets through any store: a shadow rule's limit and an enforcing rule's limit
/// on the same counter name, and a candidate policy's, are three budgets.
fn shadow_limits_never_take_a_real_budget(store: &dyn CounterStore) {
    let p = policy(json!({
        "version": "1", "default": "allow",
        "tools": {
            "search": {"limits": [{"counter": "api", "window": "minute", "max": 3}]},
            "search_*": {"shadow": true,
                "limits": [{"counter": "api", "window": "minute", "max": 3}]}
        }
    }));
    // Three calls of the shadowed tool: all allowed, none counted against `api`.
    for _ in 0..3 {
        let d = decide(&p, store, "search_web", json!({}));
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.shadow, None);
    }
    assert_eq!(used(store, "api"), 0, "the real budget is untouched");
    let shadow_api = format!("{SHADOW_RULE_COUNTER_PREFIX}api");
    assert_eq!(
        used(store, &shadow_api),
        3,
        "the shadow budget counted them"
    );
    // The real budget is whole: three real calls pass, the fourth is limited.
    for _ in 0..3 {
        assert_eq!(
            decide(&p, store, "search", json!({})).verdict,
            Verdict::Allow
        );
    }
    assert_eq!(
        decide(&p, store, "search", json!({})).verdict,
        Verdict::RateLimited
    );
    // The shadow budget is full: reported, not enforced.
    let d = decide(&p, store, "search_web", json!({}));
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.shadow.map(|s| s.verdict), Some(Verdict::RateLimited));
    assert_eq!(used(store, "api"), 3);

    // A candidate policy counts in its own namespace too.
    let candidate = policy(json!({
        "version": "1", "default": "allow",
        "tools": {"search": {"limits": [{"counter": "api", "window": "minute", "max": 1}]}}
    }));
    let enforcing = policy(json!({"version": "1", "default": "allow"}));
    let call = |store: &dyn CounterStore| {
        enforcing.decide_beside(
            &candidate,
            &Call {
                tool: "search",
                args: &json!({}),
                grant: "other",
                session: "s1",
            },
            store,
            NOW,
        )
    };
    assert_eq!(call(store).shadow, None);
    let second = call(store);
    assert_eq!(second.verdict, Verdict::Allow);
    let shadow = second.shadow.expect("the candidate would limit the second");
    assert_eq!(
        (shadow.verdict, shadow.source),
        (Verdict::RateLimited, ShadowSource::Policy)
    );
    let candidate_api = format!("{SHADOW_POLICY_COUNTER_PREFIX}api");
    assert_eq!(
        store
            .usage(&candidate_api, Scope::Grant, 60_000, NOW)
            .unwrap()
            .iter()
            .find(|u| u.scope_key == "other")
            .map(|u| u.used),
        Some(1)
    );
    assert_eq!(used(store, "api"), 3, "still the three real calls");
}

#[test]
fn shadow_limits_count_apart_in_memory() {
    shadow_limits_never_take_a_real_budget(&MemoryStore::new());
}

#[test]
fn shadow_limits_count_apart_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("counters.sqlite3")).unwrap();
    shadow_limits_never_take_a_real_budget(&store);
}

#[test]
fn a_call_refused_by_all_tools_is_no_shadow_difference() {
    let p = policy(json!({
        "version": "1", "default": "allow",
        "all_tools": {"limits": [{"counter": "all", "window": "minute", "max": 1}]},
        "tools": {"echo": {"shadow": true, "action": "require_approval"}}
    }));
    let store = MemoryStore::new();
    let first = decide(&p, &store, "echo", json!({}));
    assert_eq!(first.verdict, Verdict::Allow);
    assert_eq!(first.shadow.map(|s| s.verdict), Some(Verdict::Hold));
    let second = decide(&p, &store, "echo", json!({}));
    assert_eq!(second.verdict, Verdict::RateLimited);
    assert_eq!(
        second.shadow, None,
        "all_tools would refuse it under the shadow rule as well"
    );
    assert_eq!(
        used(&store, "all"),
        1,
        "all_tools counted once, by the enforced decision"
    );
}

#[test]
fn a_hidden_tool_has_no_shadow_and_explain_sees_the_enforcing_rule() {
    let p = policy(json!({
        "version": "1", "default": "allow", "hide": ["secret_*"],
        "tools": {"secret_dump": {"shadow": true, "action": "deny"},
                  "wipe": {"shadow": true, "action": "deny"}}
    }));
    let store = MemoryStore::new();
    let d = decide(&p, &store, "secret_dump", json!({}));
    assert!(d.hidden);
    assert_eq!(d.shadow, None);
    assert_eq!(p.shadow_rule_count(), 2);
    assert_eq!(
        p.shadow_rules().collect::<Vec<_>>(),
        [
            ("secret_dump", "/tools/secret_dump"),
            ("wipe", "/tools/wipe")
        ]
    );
    let treatment = p.treatment("wipe").unwrap();
    assert_eq!(
        treatment.action,
        toolgate::testing::policy::Action::Allow,
        "the shadow rule is not what enforces"
    );
}

#[test]
fn shadow_must_be_a_boolean() {
    let text = r#"{"version": "1", "default": "allow", "tools": {"x": {"shadow": "yes"}}}"#;
    let err = Policy::parse(text, "p.json").unwrap_err().to_string();
    assert!(
        err.contains(r#""shadow" must be true or false, found "yes" (at /tools/x/shadow)"#),
        "{err}"
    );
    let off = r#"{"version": "1", "default": "deny", "tools": {"x": {"shadow": false}}}"#;
    let p = Policy::parse(off, "p.json").unwrap();
    let d = decide(&p, &MemoryStore::new(), "x", json!({}));
    assert_eq!((d.verdict, d.shadow), (Verdict::Allow, None));
}

/// `toolgate test` on a policy with a shadow rule: `expect.decision` is the enforced decision,
/// `expect.shadow` what the shadow rule would have decided (`none`: nothing different).
#[test]
fn policy_tests_expect_the_enforced_decision_and_optionally_the_shadow() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"version": "1", "default": "allow", "tools": {"transfer": {"shadow": true,
            "deny_if": [{"path": "args.amount", "op": "gt", "value": 100}]}}}"#,
    )
    .unwrap();
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        r#"{"cases": [
  {"name": "big transfers go through, for now",
   "call": {"tool": "transfer", "args": {"amount": 500}},
   "expect": {"decision": "allow", "rule": "/default", "shadow": "deny"}},
  {"name": "small transfers are fine either way",
   "call": {"tool": "transfer", "args": {"amount": 5}},
   "expect": {"decision": "allow", "shadow": "none"}},
  {"name": "wrong: the shadow rule is not enforced",
   "call": {"tool": "transfer", "args": {"amount": 500}},
   "expect": {"decision": "deny"}},
  {"name": "wrong: no shadow for small ones",
   "call": {"tool": "transfer", "args": {"amount": 5}},
   "expect": {"decision": "allow", "shadow": "deny"}}
]}"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .arg("test")
        .arg(&policy)
        .arg(&cases)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("decision: expected deny, got allow"),
        "{text}"
    );
    assert!(text.contains("shadow: expected deny, got none"), "{text}");
    assert!(
        text.contains("2 passed") && text.contains("2 failed"),
        "{text}"
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"cases": [{"name": "x", "call": {"tool": "t"}, "expect": {"decision": "allow", "shadow": "maybe"}}]}"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(r#"unknown shadow decision "maybe" (at /cases/0/expect/shadow)"#),
        "{text}"
    );
}

#[test]
fn explain_says_what_the_shadow_rule_would_do_beside_what_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"version": "1", "default": "allow", "tools": {"transfer": {"shadow": true,
            "deny_if": [{"path": "args.amount", "op": "gt", "value": 100}]}}}"#,
    )
    .unwrap();
    let explain = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"));
        cmd.arg("explain").arg("--policy").arg(&policy).args([
            "--tool",
            "transfer",
            "--args",
            r#"{"amount": 500}"#,
        ]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = explain(false);
    assert!(text.contains("allow, by /default"), "{text}");
    assert!(
        text.contains(
            "shadow rule /tools/transfer/deny_if/0: would deny (not enforced): deny_if holds: args.amount gt 100"
        ),
        "{text}"
    );
    let v: Value = serde_json::from_str(explain(true).trim()).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["shadow"]["decision"], "deny");
    assert_eq!(v["shadow"]["source"], "rule");
}
