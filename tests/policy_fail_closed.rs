//! Conditions fail closed, through `Policy::decide`: a `deny_if` that cannot be evaluated on
//! the value present denies, a `require` that cannot be evaluated denies, strings that are
//! exactly JSON numbers compare as numbers, and `under` places file paths lexically.

use serde_json::{Value, json};
use toolgate::testing::policy::{ArgsTree, Call, Decision, MemoryStore, Policy, Verdict};

fn policy(v: Value) -> Policy {
    let text = serde_json::to_string_pretty(&v).unwrap();
    match Policy::parse(&text, "test.json") {
        Ok(p) => p,
        Err(e) => panic!("policy should be valid:\n{e}\n{text}"),
    }
}

fn decide(p: &Policy, tool: &str, args: Value) -> Decision {
    decide_on(p, tool, &args)
}

/// As grant `g` in session `s`, with a fresh memory store, at a fixed time.
fn decide_on(p: &Policy, tool: &str, args: &dyn ArgsTree) -> Decision {
    p.decide(
        &Call {
            tool,
            args,
            grant: "g",
            session: "s",
        },
        &MemoryStore::new(),
        1_000_000,
    )
}

fn transfer_policy() -> Policy {
    policy(json!({"version": "1", "default": "deny", "tools": {
        "transfer": {
            "deny_if": [{"path": "args.amount", "op": "gt", "value": 1000}],
            "rate_limit": {"max": 100, "window": "minute"}
        },
        "refund": {
            "reason": "refunds are capped",
            "require": [{"path": "args.amount", "op": "lte", "value": 100}]
        }
    }}))
}

#[test]
fn a_numeric_string_is_denied_by_deny_if_gt_as_its_number_would_be() {
    let p = transfer_policy();
    for amount in [json!(5000), json!("5000"), json!("1e4"), json!("1000.5")] {
        let d = decide(&p, "transfer", json!({ "amount": amount }));
        assert_eq!(d.verdict, Verdict::Deny, "{amount}");
        assert_eq!(d.rule, "/tools/transfer/deny_if/0");
        assert_eq!(d.reason, "deny_if holds: args.amount gt 1000", "{amount}");
        assert!(d.reservation.is_empty(), "a refused call takes nothing");
    }
    for amount in [
        json!(5),
        json!("5"),
        json!("-0"),
        json!("1000"),
        json!(1000.0),
    ] {
        let d = decide(&p, "transfer", json!({ "amount": amount }));
        assert_eq!(d.verdict, Verdict::Allow, "{amount}: {}", d.reason);
    }
}

#[test]
fn a_deny_if_that_cannot_be_evaluated_denies_and_says_why() {
    let p = transfer_policy();
    let cases = [
        (json!([5000]), "args.amount is an array"),
        (json!({"value": 5000}), "args.amount is an object"),
        (json!(true), "args.amount is a boolean"),
        (json!(null), "args.amount is null"),
        (
            json!("5,000"),
            "args.amount is a string that is not exactly a JSON number",
        ),
        (
            json!(" 5000"),
            "args.amount is a string that is not exactly a JSON number",
        ),
        (
            json!("0x1388"),
            "args.amount is a string that is not exactly a JSON number",
        ),
        (
            json!("1e400"),
            "args.amount is a string holding a number too large to compare",
        ),
    ];
    for (amount, found) in cases {
        let d = decide(&p, "transfer", json!({ "amount": amount }));
        assert_eq!(d.verdict, Verdict::Deny, "{amount}");
        assert_eq!(d.rule, "/tools/transfer/deny_if/0", "{amount}");
        assert_eq!(
            d.reason,
            format!("deny_if args.amount gt 1000 is unknown: {found}; gt compares numbers: denied"),
        );
        assert!(d.reservation.is_empty());
    }
    assert_eq!(
        decide(&p, "transfer", json!({"amount": [1]})).agent_text(),
        "Denied by policy (/tools/transfer/deny_if/0): deny_if args.amount gt 1000 is unknown: \
         args.amount is an array; gt compares numbers: denied"
    );
}

#[test]
fn a_require_that_cannot_be_evaluated_denies_with_the_rules_reason() {
    let p = transfer_policy();
    let d = decide(&p, "refund", json!({"amount": ["50"]}));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rule, "/tools/refund/require/0");
    assert_eq!(
        d.reason,
        "refunds are capped (require args.amount lte 100 is unknown: args.amount is an array; \
         lte compares numbers: denied)"
    );
    assert_eq!(
        decide(&p, "refund", json!({"amount": "50"})).verdict,
        Verdict::Allow
    );
    let d = decide(&p, "refund", json!({"amount": "500"}));
    assert_eq!(
        d.reason,
        "refunds are capped (require not met: args.amount lte 100)"
    );
}

#[test]
fn a_missing_key_is_not_unknown_and_require_exists_closes_a_misspelt_one() {
    // `Amount` is not `amount`: the deny_if does not see it, as the format says.
    let p = transfer_policy();
    assert_eq!(
        decide(&p, "transfer", json!({"Amount": 5000})).verdict,
        Verdict::Allow
    );
    // The format's answer: require the key the rule depends on.
    let p = policy(
        json!({"version": "1", "default": "deny", "tools": {"transfer": {
            "require": [{"path": "args.amount", "op": "exists"}],
            "deny_if": [{"path": "args.amount", "op": "gt", "value": 1000}]
        }}}),
    );
    let d = decide(&p, "transfer", json!({"Amount": 5000}));
    assert_eq!(
        (d.verdict, d.rule.as_str()),
        (Verdict::Deny, "/tools/transfer/require/0")
    );
    assert_eq!(d.reason, "require not met: args.amount exists");
}

#[test]
fn deny_if_on_strings_is_not_dodged_by_wrapping_the_value() {
    let p = policy(
        json!({"version": "1", "default": "deny", "tools": {"send": {
            "deny_if": [
                {"path": "args.to", "op": "in", "value": ["ceo@example.com"]},
                {"path": "args.body", "op": "regex", "value": "(?i)password"},
                {"path": "args.cc", "op": "contains", "value": "ceo@example.com"},
                {"path": "args.opts.bcc", "op": "eq", "value": "ceo@example.com"}
            ]
        }}}),
    );
    let allowed = decide(
        &p,
        "send",
        json!({"to": "bob@example.com", "body": "hi", "cc": ["ann@example.com"], "opts": {}}),
    );
    assert_eq!(allowed.verdict, Verdict::Allow, "{}", allowed.reason);
    for (args, rule) in [
        (json!({"to": ["ceo@example.com"]}), "/tools/send/deny_if/0"),
        (
            json!({"to": {"0": "ceo@example.com"}}),
            "/tools/send/deny_if/0",
        ),
        (json!({"body": ["my password"]}), "/tools/send/deny_if/1"),
        (
            json!({"cc": [["ceo@example.com"]]}),
            "/tools/send/deny_if/2",
        ),
        (
            json!({"cc": {"a": "ceo@example.com"}}),
            "/tools/send/deny_if/2",
        ),
        (
            json!({"opts": "bcc=ceo@example.com"}),
            "/tools/send/deny_if/3",
        ),
    ] {
        let d = decide(&p, "send", args.clone());
        assert_eq!(
            (d.verdict, d.rule.as_str()),
            (Verdict::Deny, rule),
            "{args}"
        );
        assert!(d.reason.contains(" is unknown: "), "{args}: {}", d.reason);
    }
}

fn notes_policy() -> Policy {
    policy(json!({"version": "1", "default": "deny", "tools": {
        "read_file": {"require": [{"path": "args.path", "op": "under", "value": "/home/me/notes"}]},
        "write_file": {"deny_if": [{"path": "args.path", "op": "under", "value": "/etc"}]},
        "grep_etc": {"deny_if": [{"path": "args.path", "op": "regex", "value": "^/etc/"}]}
    }}))
}

#[test]
fn under_allows_only_paths_inside_the_directory_whatever_their_spelling() {
    let p = notes_policy();
    for path in [
        "/home/me/notes",
        "/home/me/notes/",
        "/home/me/notes/todo.md",
        "/home/me/notes/a/../b.md",
        "//home/me//notes/./x",
    ] {
        let d = decide(&p, "read_file", json!({ "path": path }));
        assert_eq!(d.verdict, Verdict::Allow, "{path}: {}", d.reason);
    }
    for path in [
        "/home/me/notes/../../../etc/shadow",
        "/home/me/notes2/x",
        "/home/me/notes/..",
        "/etc/shadow",
    ] {
        let d = decide(&p, "read_file", json!({ "path": path }));
        assert_eq!(d.verdict, Verdict::Deny, "{path}");
        assert_eq!(
            d.reason,
            "require not met: args.path under \"/home/me/notes\""
        );
    }
    for (path, found) in [
        (json!("notes/todo.md"), "a relative path"),
        (
            json!("/../home/me/notes/x"),
            "a path whose .. climbs above /",
        ),
        (
            json!("/home/me/notes/\u{0}/../../../etc"),
            "a path holding a NUL byte",
        ),
        (
            json!("/home/me/notes\\..\\..\\etc"),
            "a path holding a backslash",
        ),
        (
            json!("/home/me/notes/%2e%2e/%2e%2e/etc"),
            "a path holding a percent-encoded dot, slash, backslash or NUL",
        ),
        (json!(["/home/me/notes/x"]), "an array"),
    ] {
        let d = decide(&p, "read_file", json!({ "path": path }));
        assert_eq!(d.verdict, Verdict::Deny, "{path}");
        assert!(
            d.reason.starts_with(&format!(
                "require args.path under \"/home/me/notes\" is unknown: args.path is {found};"
            )),
            "{path}: {}",
            d.reason
        );
    }
}

#[test]
fn deny_if_under_catches_what_a_regex_on_the_text_misses() {
    let p = notes_policy();
    for path in [
        "//etc/passwd",
        "/./etc/passwd",
        "/tmp/../etc/passwd",
        "/etc",
    ] {
        // The regex reads the text: these do not start with "/etc/".
        assert_eq!(
            decide(&p, "grep_etc", json!({ "path": path })).verdict,
            Verdict::Allow,
            "{path}"
        );
        let d = decide(&p, "write_file", json!({ "path": path }));
        assert_eq!(d.verdict, Verdict::Deny, "{path}");
        assert_eq!(d.reason, "deny_if holds: args.path under \"/etc\"");
    }
    for path in ["/tmp/x", "/etc2/x", "/home/me/etc/x"] {
        assert_eq!(
            decide(&p, "write_file", json!({ "path": path })).verdict,
            Verdict::Allow,
            "{path}"
        );
    }
    // What cannot be placed is denied by the deny_if too.
    for path in [json!("etc/passwd"), json!("/etc\u{0}/../tmp"), json!(7)] {
        let d = decide(&p, "write_file", json!({ "path": path }));
        assert_eq!(d.verdict, Verdict::Deny, "{path}");
        assert!(d.reason.contains(" is unknown: "), "{}", d.reason);
    }
}

/// Arguments whose tree cannot be had (text a reader could not follow), counting how often
/// the policy asks for it.
#[derive(Debug, Default)]
struct Unreadable(std::sync::atomic::AtomicUsize);

impl ArgsTree for Unreadable {
    fn tree(&self) -> Option<&Value> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        None
    }
}

#[test]
fn arguments_that_cannot_be_read_deny_every_rule_with_a_condition_and_no_other() {
    let p = policy(json!({"version": "1", "default": "allow", "tools": {
        "transfer": {"deny_if": [{"path": "args.amount", "op": "gt", "value": 1000}]},
        "refund": {"require": [{"path": "args.amount", "op": "exists"}]},
        "audit": {"deny_if": [{"path": "args.x", "op": "not_exists"}]},
        "echo": {}
    }}));
    let decide = |tool| {
        let args = Unreadable::default();
        let d = decide_on(&p, tool, &args);
        (d, args.0.into_inner())
    };
    for tool in ["transfer", "refund", "audit"] {
        let (d, asked) = decide(tool);
        assert_eq!(d.verdict, Verdict::Deny, "{tool}: {d:?}");
        assert!(d.reason.contains("is unknown"), "{tool}: {}", d.reason);
        assert!(
            d.reason.contains("not readable as JSON"),
            "{tool}: {}",
            d.reason
        );
        assert!(asked >= 1);
    }
    // A rule without conditions never asks for the tree, and the default neither.
    for tool in ["echo", "other"] {
        let (d, asked) = decide(tool);
        assert_eq!(d.verdict, Verdict::Allow, "{tool}: {d:?}");
        assert_eq!(asked, 0, "{tool}");
    }
}
