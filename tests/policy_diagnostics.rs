//! Invalid policies: every kind of problem is reported with the right FILE:LINE:COL and JSON
//! Pointer, all problems at once, in document order.

use toolgate::testing::policy::{Diagnostic, Policy};

fn diagnostics(text: &str) -> Vec<Diagnostic> {
    match Policy::parse(text, "policy.json") {
        Ok(_) => panic!("policy should be invalid:\n{text}"),
        Err(d) => d.0,
    }
}

/// Line and column (1-based, in characters) of the `nth` occurrence of `needle`; the test's
/// own oracle, independent of the parser.
fn position(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let at = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} #{nth} not in the text"))
        .0;
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// Asserts that the policy has exactly one problem, at `needle`, with this pointer, and a
/// message containing `words`.
fn single(text: &str, needle: &str, pointer: &str, words: &str) {
    let d = diagnostics(text);
    assert_eq!(d.len(), 1, "expected one problem, got:\n{}", lines(&d));
    let d = &d[0];
    assert_eq!(
        (d.line, d.column),
        position(text, needle, 0),
        "position of: {d}"
    );
    assert_eq!(d.pointer, pointer, "{d}");
    assert!(
        d.message.contains(words) || d.hint.contains(words),
        "{d}\nshould mention {words:?}"
    );
}

fn lines(d: &[Diagnostic]) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn with_rule(rule: &str) -> String {
    format!(
        "{{\n  \"version\": \"1\",\n  \"default\": \"deny\",\n  \"tools\": {{\n    \"t\": {rule}\n  }}\n}}\n"
    )
}

#[test]
fn the_format_documents_example_is_reproduced_exactly() {
    let text = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "create_api_key": {
      "limits": [{
        "window": "minutes", "counter": "create_api_key_rate", "max": 30, "scope": "grant"
      }]
    }
  }
}"#;
    let d = diagnostics(text);
    assert_eq!(
        lines(&d),
        r#"policy.json:7:19: error: unknown window "minutes" (at /tools/create_api_key/limits/0/window); expected second, minute, hour, day, seconds or a duration like "10m""#
    );
}

#[test]
fn syntax_errors_point_at_the_offending_character() {
    let cases = [
        (
            "{\n  \"version\": \"1\",\n  \"default\": \"deny\",\n}",
            "}",
            "trailing comma",
        ),
        (
            "{\n  \"version\": \"1\"\n  \"default\": \"deny\"\n}",
            "\"default\"",
            "expected `,` or `}`",
        ),
        ("{\"version\": '1'}", "'1'", "expected a value"),
        (
            "{\"version\": \"1\", \"default\": \"deny\"} x",
            "x",
            "after the end",
        ),
        (
            "{\"tools\": {\"é\": {\"reason\": \"unterminated}}}",
            "\"unterminated",
            "never closed",
        ),
        ("{\"version\": 01}", "1}", "leading zeros"),
        ("", "", "empty"),
    ];
    for (text, needle, words) in cases {
        let d = diagnostics(text);
        assert_eq!(d.len(), 1, "{text}");
        let got = (d[0].line, d[0].column);
        let want = if text.is_empty() {
            (1, 1)
        } else {
            position(text, needle, 0)
        };
        assert_eq!(got, want, "{}", d[0]);
        assert!(d[0].message.contains(words), "{}", d[0]);
        assert!(d[0].message.starts_with("invalid JSON: "), "{}", d[0]);
    }
}

#[test]
fn syntax_errors_name_the_value_being_read() {
    let d = diagnostics("{\"tools\": {\"a/b\": {\"limits\": [1, }]}}}");
    assert_eq!(d[0].pointer, "/tools/a~1b/limits/1");
}

#[test]
fn a_key_written_twice_is_an_error_at_the_second() {
    let text = with_rule("{ \"action\": \"deny\", \"action\": \"allow\" }");
    let d = diagnostics(&text);
    assert_eq!(d.len(), 1, "{}", lines(&d));
    assert_eq!((d[0].line, d[0].column), position(&text, "\"action\"", 1));
    assert_eq!(d[0].pointer, "/tools/t/action");
    assert!(d[0].message.contains("written twice"));
}

#[test]
fn a_tool_written_twice_is_an_error() {
    let text = "{\"version\": \"1\", \"default\": \"deny\", \"tools\": {\"x\": {}, \"x\": {\"action\": \"deny\"}}}";
    single(text, "\"x\": {\"action", "/tools/x", "written twice");
}

#[test]
fn unknown_fields_are_errors_everywhere_and_list_the_allowed_ones() {
    single(
        "{\"version\": \"1\", \"default\": \"deny\", \"tool\": {}}",
        "\"tool\"",
        "/tool",
        "version, default, hide, approval_timeout, all_tools, tools",
    );
    single(
        &with_rule("{\"acton\": \"deny\"}"),
        "\"acton\"",
        "/tools/t/acton",
        "unknown field \"acton\" in a rule",
    );
    single(
        &with_rule(
            "{\"limits\": [{\"counter\": \"c\", \"window\": 1, \"max\": 1, \"scop\": \"grant\"}]}",
        ),
        "\"scop\"",
        "/tools/t/limits/0/scop",
        "counter, window, max, scope",
    );
    single(
        &with_rule("{\"rate_limit\": {\"max\": 1, \"window\": 1, \"scope\": \"global\"}}"),
        "\"scope\"",
        "/tools/t/rate_limit/scope",
        "max, window",
    );
    single(
        &with_rule("{\"require\": [{\"path\": \"args.a\", \"op\": \"exists\", \"note\": 1}]}"),
        "\"note\"",
        "/tools/t/require/0/note",
        "path, op, value",
    );
    single(
        "{\"version\": \"1\", \"default\": \"deny\", \"all_tools\": {\"limit\": []}}",
        "\"limit\"",
        "/all_tools/limit",
        "limits",
    );
}

#[test]
fn missing_required_fields_point_at_their_object() {
    single("{\"default\": \"deny\"}", "{", "", "\"version\"");
    single("{\"version\": \"1\"}", "{", "", "\"default\"");
    single(
        &with_rule("{\"limits\": [{\"window\": 1, \"max\": 1}]}"),
        "{\"window",
        "/tools/t/limits/0",
        "\"counter\"",
    );
    single(
        &with_rule("{\"limits\": [{\"counter\": \"c\", \"max\": 1}]}"),
        "{\"counter",
        "/tools/t/limits/0",
        "\"window\"",
    );
    single(
        &with_rule("{\"rate_limit\": {\"window\": 1}}"),
        "{\"window",
        "/tools/t/rate_limit",
        "\"max\"",
    );
    single(
        &with_rule("{\"require\": [{\"op\": \"exists\"}]}"),
        "{\"op",
        "/tools/t/require/0",
        "\"path\"",
    );
    single(
        &with_rule("{\"deny_if\": [{\"path\": \"args.a\"}]}"),
        "{\"path",
        "/tools/t/deny_if/0",
        "\"op\"",
    );
    single(
        &with_rule("{\"deny_if\": [{\"path\": \"args.a\", \"op\": \"eq\"}]}"),
        "{\"path",
        "/tools/t/deny_if/0",
        "needs a \"value\"",
    );
}

#[test]
fn version_and_actions_must_be_known() {
    single(
        "{\"version\": \"2\", \"default\": \"deny\"}",
        "\"2\"",
        "/version",
        "understands version \"1\"",
    );
    single(
        "{\"version\": 1, \"default\": \"deny\"}",
        "1,",
        "/version",
        "unsupported policy version 1",
    );
    single(
        "{\"version\": \"1\", \"default\": \"block\"}",
        "\"block\"",
        "/default",
        "allow, deny or require_approval",
    );
    single(
        &with_rule("{\"action\": \"approve\"}"),
        "\"approve\"",
        "/tools/t/action",
        "unknown action",
    );
}

#[test]
fn max_must_be_a_whole_number_of_at_least_one() {
    for bad in ["0", "-1", "1.5", "1e2", "\"5\"", "99999999999999999999999"] {
        let text = with_rule(&format!(
            "{{\"limits\": [{{\"counter\": \"c\", \"window\": 1, \"max\": {bad}}}]}}"
        ));
        single(&text, bad, "/tools/t/limits/0/max", "whole number >= 1");
    }
    single(
        &with_rule("{\"rate_limit\": {\"max\": 0, \"window\": 1}}"),
        "0,",
        "/tools/t/rate_limit/max",
        "\"action\": \"deny\"",
    );
}

#[test]
fn windows_must_be_known_forms() {
    for bad in [
        "\"minutes\"",
        "\"10 m\"",
        "\"m\"",
        "\"10ms\"",
        "\"\"",
        "\"60\"",
    ] {
        let text = with_rule(&format!(
            "{{\"limits\": [{{\"counter\": \"c\", \"window\": {bad}, \"max\": 1}}]}}"
        ));
        single(&text, bad, "/tools/t/limits/0/window", "unknown window");
    }
    for bad in ["0", "1.5", "-60"] {
        let text = with_rule(&format!(
            "{{\"limits\": [{{\"counter\": \"c\", \"window\": {bad}, \"max\": 1}}]}}"
        ));
        single(&text, bad, "/tools/t/limits/0/window", "whole number >= 1");
    }
    single(
        &with_rule("{\"rate_limit\": {\"max\": 1, \"window\": \"0s\"}}"),
        "\"0s\"",
        "/tools/t/rate_limit/window",
        "at least one second",
    );
    single(
        &with_rule("{\"rate_limit\": {\"max\": 1, \"window\": true}}"),
        "true",
        "/tools/t/rate_limit/window",
        "found a boolean",
    );
    single(
        &with_rule("{\"rate_limit\": {\"max\": 1, \"window\": \"99999999999999999d\"}}"),
        "\"9",
        "/tools/t/rate_limit/window",
        "too long",
    );
}

#[test]
fn approval_timeouts_use_the_duration_forms() {
    single(
        "{\"version\": \"1\", \"default\": \"deny\", \"approval_timeout\": \"2 minutes\"}",
        "\"2 minutes\"",
        "/approval_timeout",
        "unknown duration",
    );
    single(
        &with_rule("{\"approval_timeout\": \"minute\"}"),
        "\"minute\"",
        "/tools/t/approval_timeout",
        "unknown duration",
    );
    single(
        &with_rule("{\"approval_timeout\": 0}"),
        "0}",
        "/tools/t/approval_timeout",
        ">= 1",
    );
}

#[test]
fn scopes_must_be_known() {
    let text = with_rule(
        "{\"limits\": [{\"counter\": \"c\", \"window\": 1, \"max\": 1, \"scope\": \"team\"}]}",
    );
    single(
        &text,
        "\"team\"",
        "/tools/t/limits/0/scope",
        "grant, session or global",
    );
}

#[test]
fn ops_must_be_known_and_take_the_right_value() {
    let cond = |c: &str| with_rule(&format!("{{\"require\": [{c}]}}"));
    single(
        &cond("{\"path\": \"args.a\", \"op\": \"like\", \"value\": 1}"),
        "\"like\"",
        "/tools/t/require/0/op",
        "unknown op \"like\"",
    );
    single(
        &cond("{\"path\": \"args.a\", \"op\": \"in\", \"value\": 1}"),
        "1}",
        "/tools/t/require/0/value",
        "an array",
    );
    single(
        &cond("{\"path\": \"args.a\", \"op\": \"not_in\", \"value\": \"x\"}"),
        "\"x\"",
        "/tools/t/require/0/value",
        "an array",
    );
    single(
        &cond("{\"path\": \"args.a\", \"op\": \"lt\", \"value\": \"5\"}"),
        "\"5\"",
        "/tools/t/require/0/value",
        "a number",
    );
    single(
        &cond("{\"path\": \"args.a\", \"op\": \"regex\", \"value\": 5}"),
        "5}",
        "/tools/t/require/0/value",
        "a string",
    );
    single(
        &cond("{\"path\": \"args.a\", \"op\": \"not_exists\", \"value\": 5}"),
        "5}",
        "/tools/t/require/0/value",
        "takes no value",
    );
    single(
        &cond("{\"path\": \"args.a\", \"op\": \"eq\", \"value\": 1e999}"),
        "1e999",
        "/tools/t/require/0/value",
        "out of range",
    );
}

#[test]
fn a_bad_regex_is_an_error_at_its_value() {
    let text = with_rule(
        "{\"deny_if\": [{\"path\": \"args.q\", \"op\": \"regex\", \"value\": \"(unclosed\"}]}",
    );
    single(
        &text,
        "\"(unclosed\"",
        "/tools/t/deny_if/0/value",
        "invalid regex",
    );
    let text = with_rule(
        "{\"deny_if\": [{\"path\": \"args.q\", \"op\": \"regex\", \"value\": \"(?=look)\"}]}",
    );
    single(
        &text,
        "\"(?=look)\"",
        "/tools/t/deny_if/0/value",
        "invalid regex",
    );
}

#[test]
fn condition_paths_must_be_under_args() {
    for bad in [
        "amount",
        "args",
        "args.",
        "args..a",
        "args.a.",
        "arguments.a",
        "ARGS.a",
    ] {
        let text = with_rule(&format!(
            "{{\"deny_if\": [{{\"path\": \"{bad}\", \"op\": \"exists\"}}]}}"
        ));
        single(
            &text,
            &format!("\"{bad}\""),
            "/tools/t/deny_if/0/path",
            "not under \"args.\"",
        );
    }
}

#[test]
fn reason_and_on_deny_together_is_an_error_at_the_second() {
    let text = with_rule("{\"on_deny\": \"a\", \"reason\": \"b\"}");
    single(
        &text,
        "\"reason\"",
        "/tools/t/reason",
        "both \"on_deny\" and \"reason\"",
    );
}

#[test]
fn two_budgets_for_one_counter_is_an_error_at_the_second_limit() {
    let text = r#"{
  "version": "1",
  "default": "deny",
  "all_tools": {"limits": [{"counter": "k", "window": "minute", "max": 5}]},
  "tools": {
    "a": {"limits": [{"counter": "k", "window": 60, "max": 5}]},
    "b": {"limits": [{"counter": "k", "window": "hour", "max": 5}]},
    "c": {"limits": [{"counter": "k", "window": "minute", "max": 6}]},
    "d": {"limits": [{"counter": "k", "window": "minute", "max": 5, "scope": "global"}]},
    "k": {"rate_limit": {"max": 5, "window": "minute"}}
  }
}"#;
    let d = diagnostics(text);
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.line, d.column, d.pointer.as_str()))
        .collect();
    let at = |n| {
        let (l, c) = position(text, "{\"counter\": \"k\"", n);
        (l, c)
    };
    assert_eq!(
        got,
        [
            (at(2).0, at(2).1, "/tools/b/limits/0"),
            (at(3).0, at(3).1, "/tools/c/limits/0"),
            (at(4).0, at(4).1, "/tools/d/limits/0"),
        ],
        "{}",
        lines(&d)
    );
    assert!(d[0].message.contains("at /all_tools/limits/0"), "{}", d[0]);
    assert!(d[2].message.contains("(global)"), "{}", d[2]);
}

#[test]
fn a_rate_limit_clashing_with_a_counter_of_the_same_name_is_an_error() {
    let text = r#"{"version": "1", "default": "deny", "tools": {
  "a": {"limits": [{"counter": "b", "window": "minute", "max": 1, "scope": "session"}]},
  "b": {"rate_limit": {"max": 1, "window": "minute"}}
}}"#;
    single(text, "{\"max\"", "/tools/b/rate_limit", "given two budgets");
}

#[test]
fn wrong_types_say_what_was_expected_and_found() {
    single("[]", "[", "", "must be an object, found an array");
    single(
        "{\"version\": \"1\", \"default\": \"deny\", \"tools\": []}",
        "[]",
        "/tools",
        "found an array",
    );
    single(
        "{\"version\": \"1\", \"default\": \"deny\", \"hide\": \"x\"}",
        "\"x\"",
        "/hide",
        "must be an array",
    );
    single(
        "{\"version\": \"1\", \"default\": \"deny\", \"hide\": [\"a\", 3]}",
        "3",
        "/hide/1",
        "must be a string",
    );
    single(
        "{\"version\": \"1\", \"default\": \"deny\", \"hide\": [\"a\", \"\"]}",
        "\"\"",
        "/hide/1",
        "must not be empty",
    );
    single(
        &with_rule("[]"),
        "[]",
        "/tools/t",
        "a rule must be an object",
    );
    single(
        &with_rule("{\"reason\": 5}"),
        "5}",
        "/tools/t/reason",
        "must be a string",
    );
    single(
        &with_rule("{\"require\": {}}"),
        "{}",
        "/tools/t/require",
        "must be an array",
    );
    single(
        &with_rule("{\"limits\": [\"c\"]}"),
        "\"c\"",
        "/tools/t/limits/0",
        "a limit must be an object",
    );
    single(
        &with_rule("{\"limits\": [{\"counter\": \"\", \"window\": 1, \"max\": 1}]}"),
        "\"\"",
        "/tools/t/limits/0/counter",
        "must not be empty",
    );
    single(
        "{\"version\": \"1\", \"default\": \"deny\", \"tools\": {\"\": {}}}",
        "\"\"",
        "/tools/",
        "must not be empty",
    );
}

#[test]
fn every_problem_is_reported_at_once_in_document_order() {
    let text = r#"{
  "tools": {
    "b": {"action": "nope", "limits": [{"counter": "c", "window": "weekly", "max": 0}]},
    "a": {"require": [{"path": "x", "op": "eq", "value": 1}], "deny_if": [{"path": "args.y", "op": "regex", "value": "["}]}
  },
  "default": "sometimes",
  "version": "3",
  "extra": true
}"#;
    let d = diagnostics(text);
    let pointers: Vec<_> = d.iter().map(|d| d.pointer.as_str()).collect();
    assert_eq!(
        pointers,
        [
            "/tools/b/action",
            "/tools/b/limits/0/window",
            "/tools/b/limits/0/max",
            "/tools/a/require/0/path",
            "/tools/a/deny_if/0/value",
            "/default",
            "/version",
            "/extra",
        ],
        "{}",
        lines(&d)
    );
    let mut sorted = d.iter().map(|d| (d.line, d.column)).collect::<Vec<_>>();
    sorted.sort();
    assert_eq!(
        sorted,
        d.iter().map(|d| (d.line, d.column)).collect::<Vec<_>>()
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let text = "{\"version\": \"1\", \"default\": \"deny\", \"tools\": {\"日本\": {\"action\": \"nein\"}}}";
    let d = diagnostics(text);
    assert_eq!((d[0].line, d[0].column), position(text, "\"nein\"", 0));
    assert_eq!(d[0].column, 64);
    assert_eq!(d[0].pointer, "/tools/日本/action");
}

#[test]
fn pointers_escape_slash_and_tilde_in_keys() {
    let text =
        "{\"version\": \"1\", \"default\": \"deny\", \"tools\": {\"fs/read~x\": {\"action\": 1}}}";
    single(text, "1}", "/tools/fs~1read~0x/action", "must be a string");
}

#[test]
fn diagnostics_display_compiler_style() {
    let d = diagnostics("{\"version\": \"1\", \"default\": \"deny\", \"x\": 1}");
    assert_eq!(
        d[0].to_string(),
        "policy.json:1:37: error: unknown field \"x\" in the policy (at /x); expected one of: version, default, hide, approval_timeout, all_tools, tools, pins, quarantine_flagged, learn"
    );
}

#[test]
fn a_byte_order_mark_is_skipped_and_not_counted_as_a_column() {
    let p = Policy::parse(
        "\u{feff}{\"version\": \"1\", \"default\": \"deny\"}",
        "p.json",
    );
    assert!(p.is_ok());
    let d = diagnostics("\u{feff}{\"version\": \"1\", \"default\": 5}");
    assert_eq!((d[0].line, d[0].column), (1, 29));
}

#[test]
fn under_needs_an_absolute_path_that_stays_inside_the_root() {
    let cond = |value: &str| {
        with_rule(&format!(
            "{{\"require\": [{{\"path\": \"args.p\", \"op\": \"under\", \"value\": {value}}}]}}"
        ))
    };
    for (value, words) in [
        ("\"notes\"", "found a relative path (\"notes\")"),
        ("\"~/notes\"", "no ~, no relative paths"),
        ("\"\"", "found a relative path"),
        ("\"/a/../..\"", "climbs above /"),
        ("\"/a\\\\b\"", "a backslash"),
        ("\"/a/%2e%2e/b\"", "percent-encoded"),
        ("\"/a\\u0000b\"", "a NUL byte"),
        ("5", "op \"under\" needs a string (an absolute path"),
        ("[\"/a\"]", "found an array"),
    ] {
        single(&cond(value), value, "/tools/t/require/0/value", words);
    }
    let missing = with_rule("{\"require\": [{\"path\": \"args.p\", \"op\": \"under\"}]}");
    let d = diagnostics(&missing);
    assert_eq!(d.len(), 1, "{}", lines(&d));
    assert!(
        d[0].message.contains("op \"under\" needs a \"value\""),
        "{}",
        d[0]
    );
}

#[test]
fn under_accepts_absolute_paths_written_loosely() {
    for value in [
        "/",
        "/home/me/notes",
        "/home/me/notes/",
        "//home/./me/x/../notes",
    ] {
        let text = with_rule(&format!(
            "{{\"deny_if\": [{{\"path\": \"args.p\", \"op\": \"under\", \"value\": \"{value}\"}}]}}"
        ));
        if let Err(e) = Policy::parse(&text, "policy.json") {
            panic!("{value} should be accepted:\n{e}");
        }
    }
}
