//! How a valid policy decides calls: every field, the matching precedence, the decision
//! order, limits (scopes, shared counters, atomic admission, release) and the agent's text.

use serde_json::{Value, json};
use toolgate::testing::policy::{
    Action, Admission, Call, CounterStore, Decision, KeyUsage, LimitRequest, MemoryStore, Policy,
    Reservation, Scope, StoreError, Verdict,
};

fn policy(v: Value) -> Policy {
    let text = serde_json::to_string_pretty(&v).unwrap();
    match Policy::parse(&text, "test.json") {
        Ok(p) => p,
        Err(e) => panic!("policy should be valid:\n{e}\n{text}"),
    }
}

fn call_as(
    p: &Policy,
    store: &MemoryStore,
    tool: &str,
    args: Value,
    grant: &str,
    session: &str,
    now: u64,
) -> Decision {
    p.decide(
        &Call {
            tool,
            args: &args,
            grant,
            session,
        },
        store,
        now,
    )
}

fn call(p: &Policy, store: &MemoryStore, tool: &str, args: Value) -> Decision {
    call_as(p, store, tool, args, "g", "s", 1_000_000)
}

fn seed() -> Policy {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/seed-policy.json"
    ))
    .unwrap();
    Policy::parse(&text, "seed-policy.json").unwrap()
}

#[test]
fn seed_policy_allows_thirty_calls_a_minute_per_grant_then_rate_limits() {
    let p = seed();
    let s = MemoryStore::new();
    let t0 = 1_700_000_000_000;
    for i in 0..30 {
        let d = call_as(
            &p,
            &s,
            "create_api_key",
            json!({}),
            "ci",
            "s1",
            t0 + i * 100,
        );
        assert_eq!(d.verdict, Verdict::Allow, "call {i}");
        assert_eq!(d.rule, "/tools/create_api_key");
        assert!(!d.reservation.is_empty());
    }
    let d = call_as(&p, &s, "create_api_key", json!({}), "ci", "s2", t0 + 3_000);
    assert_eq!(d.verdict, Verdict::RateLimited);
    assert_eq!(d.rule, "/tools/create_api_key/limits/0");
    // The first call leaves the window 60s after it was made.
    assert_eq!(d.retry_after_ms, Some(57_000));
    assert_eq!(
        d.agent_text(),
        "Rate limit reached: 30 calls per minute on counter create_api_key_rate. Retry in 57s."
    );
    assert!(d.reservation.is_empty());
    // Another grant has its own budget.
    let other = call_as(&p, &s, "create_api_key", json!({}), "ops", "s1", t0 + 3_000);
    assert_eq!(other.verdict, Verdict::Allow);
    // Room comes back exactly when the oldest call leaves the window.
    let later = call_as(&p, &s, "create_api_key", json!({}), "ci", "s1", t0 + 60_000);
    assert_eq!(later.verdict, Verdict::Allow);
}

#[test]
fn seed_policy_denies_unlisted_tools_by_default() {
    let d = call(&seed(), &MemoryStore::new(), "delete_account", json!({}));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rule, "/default");
    assert!(d.agent_text().starts_with("Denied by policy (/default): "));
}

#[test]
fn each_default_decides_unlisted_tools() {
    let s = MemoryStore::new();
    let allow = policy(json!({"version": "1", "default": "allow"}));
    assert_eq!(allow.default_action(), Action::Allow);
    assert_eq!(call(&allow, &s, "x", json!({})).verdict, Verdict::Allow);
    let hold = policy(json!({"version": "1", "default": "require_approval"}));
    let d = call(&hold, &s, "x", json!({}));
    assert_eq!(d.verdict, Verdict::Hold);
    assert_eq!(d.rule, "/default");
    assert_eq!(d.approval_timeout_ms, Some(120_000));
}

#[test]
fn an_empty_rule_allows_even_under_default_deny() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {"read": {}}}));
    let d = call(&p, &MemoryStore::new(), "read", json!({}));
    assert_eq!(
        (d.verdict, d.rule.as_str()),
        (Verdict::Allow, "/tools/read")
    );
}

#[test]
fn action_deny_refuses_with_the_rules_reason() {
    let p = policy(json!({"version": "1", "default": "allow", "tools": {
        "delete_account": {"action": "deny", "reason": "deleting accounts needs a human"},
        "drop_table": {"action": "deny", "on_deny": "ask the DBA"},
        "wipe": {"action": "deny"}
    }}));
    let s = MemoryStore::new();
    let d = call(&p, &s, "delete_account", json!({}));
    assert_eq!(
        d.agent_text(),
        "Denied by policy (/tools/delete_account): deleting accounts needs a human"
    );
    assert_eq!(call(&p, &s, "drop_table", json!({})).reason, "ask the DBA");
    let d = call(&p, &s, "wipe", json!({}));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(!d.reason.is_empty());
}

#[test]
fn require_approval_holds_with_the_rules_or_top_level_timeout() {
    let p = policy(
        json!({"version": "1", "default": "deny", "approval_timeout": "90s", "tools": {
            "send_money": {"action": "require_approval", "reason": "money leaves the company"},
            "send_mail": {"action": "require_approval", "approval_timeout": "5m"},
            "send_sms": {"action": "require_approval", "approval_timeout": 30}
        }}),
    );
    let s = MemoryStore::new();
    let d = call(&p, &s, "send_money", json!({}));
    assert_eq!(d.verdict, Verdict::Hold);
    assert_eq!(d.rule, "/tools/send_money");
    assert_eq!(d.reason, "money leaves the company");
    assert_eq!(d.approval_timeout_ms, Some(90_000));
    assert_eq!(
        call(&p, &s, "send_mail", json!({})).approval_timeout_ms,
        Some(300_000)
    );
    assert_eq!(
        call(&p, &s, "send_sms", json!({})).approval_timeout_ms,
        Some(30_000)
    );
    assert_eq!(p.approval_timeout_ms(), 90_000);
}

#[test]
fn a_held_call_takes_its_units_and_release_gives_them_back() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "pay": {"action": "require_approval", "rate_limit": {"max": 1, "window": "hour"}}
    }}));
    let s = MemoryStore::new();
    let held = call(&p, &s, "pay", json!({}));
    assert_eq!(held.verdict, Verdict::Hold);
    assert_eq!(held.reservation.units().len(), 1);
    // The flood is limited before it reaches a person.
    assert_eq!(call(&p, &s, "pay", json!({})).verdict, Verdict::RateLimited);
    // The operator denies: the units come back.
    s.release(&held.reservation);
    assert_eq!(call(&p, &s, "pay", json!({})).verdict, Verdict::Hold);
}

#[test]
fn hidden_tools_read_as_unknown_and_hide_wins_over_rules() {
    let p = policy(json!({"version": "1", "default": "allow",
        "hide": ["debug_dump", "admin_*", "db_?"],
        "tools": {"admin_users": {}, "debug_dump": {"action": "allow"}}}));
    let s = MemoryStore::new();
    for (tool, index) in [
        ("debug_dump", 0),
        ("admin_users", 1),
        ("admin_", 1),
        ("db_1", 2),
    ] {
        assert!(p.is_hidden(tool), "{tool}");
        let d = call(&p, &s, tool, json!({}));
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(d.hidden);
        assert_eq!(d.rule, format!("/hide/{index}"));
        assert_eq!(d.agent_text(), format!("Unknown tool: {tool}"));
    }
    for tool in ["db_12", "admin", "debug_dump2"] {
        assert!(!p.is_hidden(tool), "{tool}");
        assert_eq!(call(&p, &s, tool, json!({})).verdict, Verdict::Allow);
    }
}

#[test]
fn exact_names_beat_globs_and_longer_literal_globs_beat_shorter() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "*": {"action": "deny", "reason": "catch-all"},
        "send_*": {"action": "require_approval"},
        "send_mail_*": {"reason": "most literal"},
        "send_mail_now": {"action": "deny", "reason": "exact"},
        "?end_mail_x": {"action": "deny", "reason": "ties with send_mail_*"}
    }}));
    let s = MemoryStore::new();
    assert_eq!(
        call(&p, &s, "send_mail_now", json!({})).rule,
        "/tools/send_mail_now"
    );
    assert_eq!(
        call(&p, &s, "send_mail_later", json!({})).rule,
        "/tools/send_mail_*"
    );
    assert_eq!(call(&p, &s, "send_sms", json!({})).rule, "/tools/send_*");
    assert_eq!(call(&p, &s, "other", json!({})).rule, "/tools/*");
    // "?end_mail_x" has 10 literal characters, "send_mail_*" 10 too: the first written wins.
    assert_eq!(
        call(&p, &s, "send_mail_x", json!({})).rule,
        "/tools/send_mail_*"
    );
}

#[test]
fn glob_ties_go_to_the_first_written() {
    for (first, second) in [("a*", "*b"), ("*b", "a*")] {
        let text = format!(
            r#"{{"version": "1", "default": "deny", "tools": {{"{first}": {{}}, "{second}": {{}}}}}}"#
        );
        let p = Policy::parse(&text, "t.json").unwrap();
        let d = call(&p, &MemoryStore::new(), "ab", json!({}));
        assert_eq!(d.rule, format!("/tools/{first}"));
    }
}

#[test]
fn rule_pointers_escape_slash_and_tilde() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "fs/read~1": {"action": "deny", "reason": "no"}
    }}));
    let d = call(&p, &MemoryStore::new(), "fs/read~1", json!({}));
    assert_eq!(d.rule, "/tools/fs~1read~01");
}

#[test]
fn deny_if_and_require_name_the_condition_that_decided() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "transfer": {
            "deny_if": [
                {"path": "args.to", "op": "in", "value": ["sanctioned"]},
                {"path": "args.memo", "op": "regex", "value": "(?i)urgent"}
            ],
            "require": [
                {"path": "args.amount", "op": "exists"},
                {"path": "args.amount", "op": "lte", "value": 10000}
            ]
        },
        "refund": {
            "reason": "refunds are capped",
            "require": [{"path": "args.amount", "op": "lt", "value": 100}]
        }
    }}));
    let s = MemoryStore::new();
    let ok = call(
        &p,
        &s,
        "transfer",
        json!({"to": "bob", "amount": 50, "memo": "rent"}),
    );
    assert_eq!(ok.verdict, Verdict::Allow);
    let d = call(
        &p,
        &s,
        "transfer",
        json!({"to": "sanctioned", "amount": 50}),
    );
    assert_eq!(
        (d.verdict, d.rule.as_str()),
        (Verdict::Deny, "/tools/transfer/deny_if/0")
    );
    let d = call(
        &p,
        &s,
        "transfer",
        json!({"to": "bob", "amount": 5, "memo": "URGENT pay"}),
    );
    assert_eq!(d.rule, "/tools/transfer/deny_if/1");
    let d = call(&p, &s, "transfer", json!({"to": "bob"}));
    assert_eq!(d.rule, "/tools/transfer/require/0");
    let d = call(&p, &s, "transfer", json!({"to": "bob", "amount": 20000}));
    assert_eq!(d.rule, "/tools/transfer/require/1");
    assert!(d.reason.contains("args.amount lte 10000"), "{}", d.reason);
    // deny_if is looked at before require.
    let d = call(
        &p,
        &s,
        "transfer",
        json!({"to": "sanctioned", "amount": 20000}),
    );
    assert_eq!(d.rule, "/tools/transfer/deny_if/0");
    // The rule's reason is what the agent reads, with the condition.
    let d = call(&p, &s, "refund", json!({"amount": 500}));
    assert_eq!(
        d.agent_text(),
        "Denied by policy (/tools/refund/require/0): refunds are capped (require not met: args.amount lt 100)"
    );
}

#[test]
fn every_op_decides_through_a_policy() {
    let cases = [
        (json!({"op": "eq", "value": "a"}), json!("a"), json!("b")),
        (json!({"op": "neq", "value": "a"}), json!("b"), json!("a")),
        (json!({"op": "in", "value": [1, 2]}), json!(2), json!(3)),
        (json!({"op": "not_in", "value": [1, 2]}), json!(3), json!(1)),
        (json!({"op": "lt", "value": 10}), json!(9.5), json!(10)),
        (json!({"op": "lte", "value": 10}), json!(10), json!(11)),
        (json!({"op": "gt", "value": 10}), json!(11), json!(10)),
        (json!({"op": "gte", "value": 10}), json!(10), json!(-1)),
        (
            json!({"op": "regex", "value": "^ab+$"}),
            json!("abbb"),
            json!("xabb"),
        ),
        (
            json!({"op": "contains", "value": "needle"}),
            json!("haystack needle"),
            json!("hay"),
        ),
        (
            json!({"op": "contains", "value": 3}),
            json!([1, 3]),
            json!([1, 2]),
        ),
        (json!({"op": "exists"}), json!(null), Value::Null),
    ];
    let s = MemoryStore::new();
    for (cond, passing, failing) in cases {
        let mut c = cond.clone();
        c["path"] = json!("args.v");
        let p =
            policy(json!({"version": "1", "default": "deny", "tools": {"t": {"require": [c]}}}));
        let pass_args = json!({ "v": passing });
        assert_eq!(
            call(&p, &s, "t", pass_args).verdict,
            Verdict::Allow,
            "{cond} should pass"
        );
        let fail_args = if failing.is_null() {
            json!({})
        } else {
            json!({ "v": failing })
        };
        assert_eq!(
            call(&p, &s, "t", fail_args).verdict,
            Verdict::Deny,
            "{cond} should fail"
        );
    }
    let p = policy(
        json!({"version": "1", "default": "deny", "tools": {"t": {"require": [{"path": "args.v", "op": "not_exists"}]}}}),
    );
    assert_eq!(call(&p, &s, "t", json!({})).verdict, Verdict::Allow);
    assert_eq!(call(&p, &s, "t", json!({"v": 1})).verdict, Verdict::Deny);
}

#[test]
fn condition_paths_reach_nested_objects_and_array_elements() {
    let p = policy(
        json!({"version": "1", "default": "deny", "tools": {"t": {"require": [
            {"path": "args.filter.owner", "op": "eq", "value": "me"},
            {"path": "args.items.1.id", "op": "eq", "value": 7}
        ]}}}),
    );
    let s = MemoryStore::new();
    let args = json!({"filter": {"owner": "me"}, "items": [{"id": 1}, {"id": 7}]});
    assert_eq!(call(&p, &s, "t", args).verdict, Verdict::Allow);
    let args = json!({"filter": {"owner": "me"}, "items": [{"id": 7}]});
    assert_eq!(call(&p, &s, "t", args).rule, "/tools/t/require/1");
}

#[test]
fn conditions_are_checked_before_limits_so_refused_calls_take_nothing() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {"t": {
        "require": [{"path": "args.ok", "op": "eq", "value": true}],
        "rate_limit": {"max": 1, "window": "minute"}
    }}}));
    let s = MemoryStore::new();
    for _ in 0..3 {
        assert_eq!(
            call(&p, &s, "t", json!({"ok": false})).verdict,
            Verdict::Deny
        );
    }
    assert_eq!(
        call(&p, &s, "t", json!({"ok": true})).verdict,
        Verdict::Allow
    );
    assert_eq!(
        call(&p, &s, "t", json!({"ok": true})).verdict,
        Verdict::RateLimited
    );
}

#[test]
fn every_window_form_means_its_length() {
    let forms = [
        (json!("second"), 1_000),
        (json!("minute"), 60_000),
        (json!("hour"), 3_600_000),
        (json!("day"), 86_400_000),
        (json!(60), 60_000),
        (json!("90s"), 90_000),
        (json!("10m"), 600_000),
        (json!("1h"), 3_600_000),
        (json!("1d"), 86_400_000),
    ];
    for (window, ms) in forms {
        let p = policy(json!({"version": "1", "default": "deny", "tools": {"t": {
            "limits": [{"counter": "c", "window": window, "max": 1}]
        }}}));
        assert_eq!(p.counters()[0].window_ms, ms, "{window}");
        let s = MemoryStore::new();
        let t0 = 5_000_000_000;
        assert_eq!(
            call_as(&p, &s, "t", json!({}), "g", "s", t0).verdict,
            Verdict::Allow
        );
        let d = call_as(&p, &s, "t", json!({}), "g", "s", t0 + ms - 1);
        assert_eq!(d.verdict, Verdict::RateLimited, "{window}");
        assert_eq!(d.retry_after_ms, Some(1));
        assert_eq!(
            call_as(&p, &s, "t", json!({}), "g", "s", t0 + ms).verdict,
            Verdict::Allow
        );
    }
}

#[test]
fn scopes_key_budgets_by_grant_session_or_nobody() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "by_grant": {"limits": [{"counter": "g", "window": "hour", "max": 1}]},
        "by_grant_explicit": {"limits": [{"counter": "g2", "window": "hour", "max": 1, "scope": "grant"}]},
        "by_session": {"limits": [{"counter": "s", "window": "hour", "max": 1, "scope": "session"}]},
        "global": {"limits": [{"counter": "x", "window": "hour", "max": 1, "scope": "global"}]}
    }}));
    let s = MemoryStore::new();
    let v = |tool: &str, grant: &str, session: &str| {
        call_as(&p, &s, tool, json!({}), grant, session, 10).verdict
    };
    use Verdict::{Allow, RateLimited};
    for tool in ["by_grant", "by_grant_explicit"] {
        assert_eq!(v(tool, "a", "1"), Allow);
        assert_eq!(v(tool, "a", "2"), RateLimited, "same grant, other session");
        assert_eq!(v(tool, "b", "1"), Allow, "other grant");
    }
    assert_eq!(v("by_session", "a", "1"), Allow);
    assert_eq!(
        v("by_session", "b", "1"),
        RateLimited,
        "same session, other grant"
    );
    assert_eq!(v("by_session", "a", "2"), Allow, "other session");
    assert_eq!(v("global", "a", "1"), Allow);
    assert_eq!(v("global", "b", "2"), RateLimited, "everybody shares it");
    assert_eq!(
        p.counters().iter().map(|c| c.scope).collect::<Vec<_>>(),
        [Scope::Grant, Scope::Grant, Scope::Session, Scope::Global]
    );
}

#[test]
fn limits_naming_one_counter_share_one_budget_across_tools() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "create_key": {"limits": [{"counter": "keys", "window": "minute", "max": 3}]},
        "rotate_key": {"limits": [{"counter": "keys", "window": 60, "max": 3, "scope": "grant"}]}
    }}));
    let s = MemoryStore::new();
    assert_eq!(
        call(&p, &s, "create_key", json!({})).verdict,
        Verdict::Allow
    );
    assert_eq!(
        call(&p, &s, "rotate_key", json!({})).verdict,
        Verdict::Allow
    );
    assert_eq!(
        call(&p, &s, "create_key", json!({})).verdict,
        Verdict::Allow
    );
    let d = call(&p, &s, "rotate_key", json!({}));
    assert_eq!(d.verdict, Verdict::RateLimited);
    assert_eq!(d.rule, "/tools/rotate_key/limits/0");
    assert_eq!(p.counters().len(), 1);
}

#[test]
fn rate_limit_is_a_grant_scoped_counter_named_after_the_rule() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "search": {"rate_limit": {"max": 2, "window": "10m"}}
    }}));
    let c = &p.counters()[0];
    assert_eq!(
        (c.name.as_str(), c.scope, c.max, c.window_ms),
        ("search", Scope::Grant, 2, 600_000)
    );
    let s = MemoryStore::new();
    call(&p, &s, "search", json!({}));
    call(&p, &s, "search", json!({}));
    let d = call(&p, &s, "search", json!({}));
    assert_eq!(d.rule, "/tools/search/rate_limit");
    assert_eq!(
        d.agent_text(),
        "Rate limit reached: 2 calls per 10 minutes on counter search. Retry in 10m."
    );
}

#[test]
fn all_tools_limits_count_every_admitted_call_but_not_refused_ones() {
    let p = policy(json!({"version": "1", "default": "allow",
        "all_tools": {"limits": [{"counter": "everything", "window": "minute", "max": 3, "scope": "global"}]},
        "tools": {"blocked": {"action": "deny"}, "a": {}}
    }));
    let s = MemoryStore::new();
    assert_eq!(call(&p, &s, "blocked", json!({})).verdict, Verdict::Deny);
    assert_eq!(call(&p, &s, "a", json!({})).verdict, Verdict::Allow);
    assert_eq!(call(&p, &s, "unlisted", json!({})).verdict, Verdict::Allow);
    assert_eq!(call(&p, &s, "a", json!({})).verdict, Verdict::Allow);
    let d = call(&p, &s, "unlisted", json!({}));
    assert_eq!(
        (d.verdict, d.rule.as_str()),
        (Verdict::RateLimited, "/all_tools/limits/0")
    );
}

#[test]
fn a_call_whose_second_limit_is_full_takes_nothing_from_the_first() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "small": {"limits": [{"counter": "tight", "window": "hour", "max": 1}]},
        "big": {"limits": [
            {"counter": "loose", "window": "hour", "max": 2},
            {"counter": "tight", "window": "hour", "max": 1}
        ]},
        "loose_only": {"limits": [{"counter": "loose", "window": "hour", "max": 2}]}
    }}));
    let s = MemoryStore::new();
    assert_eq!(call(&p, &s, "small", json!({})).verdict, Verdict::Allow);
    for _ in 0..5 {
        let d = call(&p, &s, "big", json!({}));
        assert_eq!(
            (d.verdict, d.rule.as_str()),
            (Verdict::RateLimited, "/tools/big/limits/1")
        );
    }
    // "loose" still has both its units.
    assert_eq!(
        call(&p, &s, "loose_only", json!({})).verdict,
        Verdict::Allow
    );
    assert_eq!(
        call(&p, &s, "loose_only", json!({})).verdict,
        Verdict::Allow
    );
    assert_eq!(
        call(&p, &s, "loose_only", json!({})).verdict,
        Verdict::RateLimited
    );
}

#[test]
fn a_counter_in_both_the_rule_and_all_tools_is_counted_once_per_call() {
    let p = policy(json!({"version": "1", "default": "deny",
        "all_tools": {"limits": [{"counter": "c", "window": "hour", "max": 2}]},
        "tools": {"t": {"limits": [{"counter": "c", "window": "hour", "max": 2}]}}
    }));
    let s = MemoryStore::new();
    assert_eq!(call(&p, &s, "t", json!({})).verdict, Verdict::Allow);
    assert_eq!(call(&p, &s, "t", json!({})).verdict, Verdict::Allow);
    assert_eq!(call(&p, &s, "t", json!({})).verdict, Verdict::RateLimited);
}

#[test]
fn released_units_come_back_for_every_limit_of_the_call() {
    let p = policy(
        json!({"version": "1", "default": "deny", "tools": {"t": {"limits": [
            {"counter": "a", "window": "hour", "max": 1},
            {"counter": "b", "window": "hour", "max": 1, "scope": "global"}
        ]}}}),
    );
    let s = MemoryStore::new();
    let d = call(&p, &s, "t", json!({}));
    assert_eq!(d.reservation.units().len(), 2);
    assert_eq!(call(&p, &s, "t", json!({})).verdict, Verdict::RateLimited);
    s.release(&d.reservation);
    assert_eq!(call(&p, &s, "t", json!({})).verdict, Verdict::Allow);
}

#[test]
fn reloading_keeps_counts_and_a_changed_max_applies_to_calls_already_counted() {
    let v1 = policy(
        json!({"version": "1", "default": "deny", "tools": {"t": {"rate_limit": {"max": 5, "window": "hour"}}}}),
    );
    let v2 = policy(
        json!({"version": "1", "default": "deny", "tools": {"t": {"rate_limit": {"max": 2, "window": "hour"}}}}),
    );
    let s = MemoryStore::new();
    for _ in 0..3 {
        assert_eq!(call(&v1, &s, "t", json!({})).verdict, Verdict::Allow);
    }
    assert_eq!(call(&v2, &s, "t", json!({})).verdict, Verdict::RateLimited);
}

#[test]
fn counter_states_report_use_per_scope_key() {
    let p = seed();
    let s = MemoryStore::new();
    for grant in ["a", "a", "b"] {
        call_as(&p, &s, "create_api_key", json!({}), grant, "s", 1_000);
    }
    let states = p.counter_states(&s, 31_000).unwrap();
    let summary: Vec<_> = states
        .iter()
        .map(|c| {
            (
                c.counter.as_str(),
                c.scope.as_str(),
                c.key.as_str(),
                c.used,
                c.max,
                c.window_ms,
                c.next_free_in_ms,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "create_api_key_rate",
                "grant",
                "a",
                2,
                30,
                60_000,
                Some(30_000)
            ),
            (
                "create_api_key_rate",
                "grant",
                "b",
                1,
                30,
                60_000,
                Some(30_000)
            ),
        ]
    );
    assert!(p.counter_states(&s, 61_000).unwrap().is_empty());
}

/// A store that is down.
struct BrokenStore;

impl CounterStore for BrokenStore {
    fn admit(&self, _: &[LimitRequest<'_>], _: u64) -> Result<Admission, StoreError> {
        Err(StoreError::new(
            toolgate::testing::policy::StoreErrorKind::Io,
            "connection refused",
        ))
    }
    fn try_release(&self, _: &Reservation) -> Result<(), StoreError> {
        Err(StoreError::new(
            toolgate::testing::policy::StoreErrorKind::Io,
            "connection refused",
        ))
    }
    fn usage(&self, _: &str, _: Scope, _: u64, _: u64) -> Result<Vec<KeyUsage>, StoreError> {
        Err(StoreError::new(
            toolgate::testing::policy::StoreErrorKind::Io,
            "connection refused",
        ))
    }
}

#[test]
fn an_unavailable_store_denies_limited_calls_and_says_why() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "limited": {"rate_limit": {"max": 5, "window": "minute"}},
        "free": {}
    }}));
    let args = json!({});
    let c = |tool| Call {
        tool,
        args: &args,
        grant: "g",
        session: "s",
    };
    let d = p.decide(&c("limited"), &BrokenStore, 0);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rule, "/tools/limited/rate_limit");
    assert!(
        d.reason
            .contains("counter store unavailable: connection refused"),
        "{}",
        d.reason
    );
    assert_eq!(
        p.decide(&c("free"), &BrokenStore, 0).verdict,
        Verdict::Allow
    );
    assert!(p.counter_states(&BrokenStore, 0).is_err());
}

#[test]
fn decide_never_panics_on_odd_calls() {
    let p = policy(
        json!({"version": "1", "default": "allow", "hide": ["*\u{e9}*"], "tools": {
            "?": {"require": [{"path": "args.a.0.b", "op": "gte", "value": 1}]}
        }}),
    );
    let s = MemoryStore::new();
    for tool in ["", "x", "é", "\u{0}", "a\u{e9}b", &"z".repeat(10_000)] {
        for args in [
            json!(null),
            json!([]),
            json!("s"),
            json!({"a": {"0": {"b": 2}}}),
            json!({"a": [{"b": "x"}]}),
        ] {
            let _ = call_as(&p, &s, tool, args, "", "", 0);
            let _ = call_as(&p, &s, tool, json!({}), "g", "s", u64::MAX);
        }
    }
}

#[test]
fn policy_hash_is_the_sha256_of_the_text() {
    let text = r#"{"version": "1", "default": "deny"}"#;
    let p = Policy::parse(text, "p.json").unwrap();
    assert_eq!(p.hash().len(), 64);
    let q = Policy::parse(&format!("{text}\n"), "p.json").unwrap();
    assert_ne!(p.hash(), q.hash());
    assert_eq!(p.hash(), Policy::parse(text, "other.json").unwrap().hash());
}

#[test]
fn load_reads_files_and_reports_unreadable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, r#"{"version": "1", "default": "allow"}"#).unwrap();
    assert_eq!(Policy::load(&path).unwrap().default_action(), Action::Allow);
    let missing = Policy::load(&dir.path().join("missing.json")).unwrap_err();
    assert!(missing.to_string().starts_with("cannot read "), "{missing}");
}

/// A memory store that remembers which counters it was asked about.
#[derive(Default)]
struct Watched {
    inner: MemoryStore,
    asked: std::sync::Mutex<Vec<String>>,
}

impl CounterStore for Watched {
    fn admit(&self, limits: &[LimitRequest<'_>], now_ms: u64) -> Result<Admission, StoreError> {
        self.inner.admit(limits, now_ms)
    }
    fn try_release(&self, r: &Reservation) -> Result<(), StoreError> {
        self.inner.try_release(r)
    }
    fn usage(&self, c: &str, s: Scope, w: u64, now: u64) -> Result<Vec<KeyUsage>, StoreError> {
        self.asked.lock().unwrap().push(c.to_owned());
        self.inner.usage(c, s, w, now)
    }
}

#[test]
fn counter_states_of_asks_the_store_about_the_named_counters_only() {
    let p = policy(json!({"version": "1", "default": "deny", "tools": {
        "a": {"limits": [{"counter": "ca", "window": "minute", "max": 5}]},
        "b": {"limits": [{"counter": "cb", "window": "minute", "max": 5}]}
    }}));
    let store = Watched::default();
    let args = json!({});
    let call = Call {
        tool: "a",
        args: &args,
        grant: "g",
        session: "s",
    };
    assert_eq!(p.decide(&call, &store, 1_000).verdict, Verdict::Allow);
    let states = p.counter_states_of(&store, 1_000, &["ca"]).unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!((states[0].counter.as_str(), states[0].used), ("ca", 1));
    assert_eq!(*store.asked.lock().unwrap(), ["ca"]);
    let all = p.counter_states(&store, 1_000).unwrap();
    assert_eq!(all.len(), 1, "cb has no units, so no scope key to report");
    assert_eq!(*store.asked.lock().unwrap(), ["ca", "ca", "cb"]);
}
