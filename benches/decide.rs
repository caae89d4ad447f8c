//! Criterion benchmarks of `Policy::decide` (targets: median ≤ 1 µs for the seed policy and a
//! 60-tool policy, ≤ 3 µs with 5,000 rules). The clock advances between calls so that limited
//! tools keep being admitted: each measurement includes the counter store's admission.
//!
//! Run: `cargo bench --bench decide`

use std::cell::Cell;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use toolgate::testing::policy::{Call, MemoryStore, Policy, Verdict};

fn seed_policy() -> Policy {
    let text = include_str!("../tests/fixtures/seed-policy.json");
    Policy::parse(text, "seed-policy.json").expect("seed policy is valid")
}

/// 60 tools: exact rules with conditions and limits, globs, hidden names, a global limit.
fn sixty_tool_policy() -> Policy {
    let mut tools = serde_json::Map::new();
    for i in 0..40 {
        let rule = match i % 4 {
            0 => json!({"limits": [{"counter": format!("c{i}"), "window": "minute", "max": 30}]}),
            1 => json!({
                "require": [{"path": "args.amount", "op": "lte", "value": 10000}],
                "deny_if": [{"path": "args.to", "op": "in", "value": ["blocked", "sanctioned"]}],
                "rate_limit": {"max": 60, "window": "minute"}
            }),
            2 => json!({"action": "require_approval", "reason": "needs a person"}),
            _ => json!({"action": "deny", "reason": "never"}),
        };
        tools.insert(format!("tool_{i:02}"), rule);
    }
    for i in 0..20 {
        tools.insert(
            format!("ns{i}_*_op?"),
            json!({
                "deny_if": [
                    {"path": "args.memo", "op": "regex", "value": "(?i)urgent|asap"},
                    {"path": "args.items.0.kind", "op": "eq", "value": "secret"}
                ],
                "require": [{"path": "args.amount", "op": "gte", "value": 0}],
                "limits": [
                    {"counter": format!("ns{i}"), "window": "minute", "max": 30, "scope": "session"},
                    {"counter": "shared", "window": "hour", "max": 10000, "scope": "grant"}
                ]
            }),
        );
    }
    let policy = json!({
        "version": "1",
        "default": "deny",
        "hide": ["debug_*", "internal_?", "admin"],
        "all_tools": {"limits": [{"counter": "everything", "window": "minute", "max": 1000, "scope": "global"}]},
        "tools": tools,
    });
    Policy::parse(&policy.to_string(), "sixty.json").expect("60-tool policy is valid")
}

/// 5,000 exact rules (a quarter limited, a quarter with conditions) and a few globs.
fn five_thousand_rule_policy() -> Policy {
    let mut tools = serde_json::Map::new();
    for i in 0..5000 {
        let rule = match i % 4 {
            0 => json!({"limits": [{"counter": format!("c{i}"), "window": "minute", "max": 30}]}),
            1 => json!({"require": [{"path": "args.amount", "op": "lte", "value": 10000}]}),
            2 => json!({"action": "require_approval"}),
            _ => json!({}),
        };
        tools.insert(format!("service_{i:04}_call"), rule);
    }
    for i in 0..10 {
        tools.insert(format!("svc{i}_*"), json!({"action": "deny"}));
    }
    let policy = json!({"version": "1", "default": "deny", "tools": tools});
    Policy::parse(&policy.to_string(), "5000.json").expect("5,000-rule policy is valid")
}

/// Decides `tool` over and over, moving the clock `step_ms` each time.
fn bench_decide(
    c: &mut Criterion,
    name: &str,
    policy: &Policy,
    tool: &str,
    args: Value,
    step_ms: u64,
    want: Verdict,
) {
    let store = MemoryStore::new();
    let now = Cell::new(1_700_000_000_000u64);
    let call = Call {
        tool,
        args: &args,
        grant: "ci-bot",
        session: "session-1",
    };
    assert_eq!(
        policy.decide(&call, &store, now.get()).verdict,
        want,
        "{name}"
    );
    c.bench_function(name, |b| {
        b.iter(|| {
            now.set(now.get() + step_ms);
            black_box(policy.decide(black_box(&call), &store, now.get()))
        })
    });
}

fn benches(c: &mut Criterion) {
    let seed = seed_policy();
    // 30 a minute: one call every 2.001 s is always admitted.
    bench_decide(
        c,
        "decide/seed/create_api_key",
        &seed,
        "create_api_key",
        json!({"name": "staging"}),
        2_001,
        Verdict::Allow,
    );

    let sixty = sixty_tool_policy();
    let args = json!({"amount": 500, "to": "alice", "memo": "monthly rent", "items": [{"kind": "public"}]});
    bench_decide(
        c,
        "decide/60-tools/glob+conditions+3 limits",
        &sixty,
        "ns17_payments_opx",
        args.clone(),
        2_001,
        Verdict::Allow,
    );
    bench_decide(
        c,
        "decide/60-tools/exact+conditions+rate_limit",
        &sixty,
        "tool_33",
        args.clone(),
        2_001,
        Verdict::Allow,
    );
    bench_decide(
        c,
        "decide/60-tools/exact+limit",
        &sixty,
        "tool_32",
        args,
        2_001,
        Verdict::Allow,
    );

    let big = five_thousand_rule_policy();
    bench_decide(
        c,
        "decide/5000-rules/exact+limit",
        &big,
        "service_4996_call",
        json!({}),
        2_001,
        Verdict::Allow,
    );
    bench_decide(
        c,
        "decide/5000-rules/exact+condition",
        &big,
        "service_4997_call",
        json!({"amount": 5}),
        2_001,
        Verdict::Allow,
    );
    bench_decide(
        c,
        "decide/5000-rules/unlisted (globs then default)",
        &big,
        "unknown_tool",
        json!({}),
        2_001,
        Verdict::Deny,
    );
}

criterion_group!(decide, benches);
criterion_main!(decide);
