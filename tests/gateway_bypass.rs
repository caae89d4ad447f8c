//! The attack suite: nothing gets around the policy, tried as an attacker would (issue 13).
//!
//! Raw bytes go to the real binary — the stdin of `toolgate wrap`, and raw POST bodies to
//! `toolgate serve` in front of a stdio upstream (`s`) and a URL upstream (`u`) — with
//! `tests/e2e/recording_server.py` behind it: a server that executes whatever reaches it (at
//! any batch depth, whichever of duplicate keys its parser keeps, every JSON value of a unit)
//! and records it. After each variant: the server executed nothing the policy denies, hidden
//! tools never reached the client, and at the end every decided call has its audit record and
//! its event. Variants are checked one by one and reported together, so one run names every
//! variant that gets through.
//!
//! Calls the policy must let through carry `"ok": true` in their arguments; any other call
//! the server executes is a bypass. Each call carries a `"tag"` naming its variant, so the
//! audit log's decisions (kept in full with `--audit-args full`) are checked per variant.

mod attack_support;
mod support;

use std::time::{Duration, Instant};

use attack_support::{Failures, Probe, Serve, UPSTREAMS, Wrap, call, list, peak_rss, reset_peak};
use serde_json::{Value, json};

const POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "hide": ["delete_file", "secret_*"],
  "tools": {
    "echo": {},
    "shell": { "action": "deny", "reason": "no shells" },
    "transfer": { "deny_if": [ { "path": "args.amount", "op": "gt", "value": 1000 } ] },
    "write_file": { "deny_if": [ { "path": "args.path", "op": "regex", "value": "^/etc/" } ] },
    "ask": { "action": "require_approval", "approval_timeout": "3s" }
  }
}"#;

/// Paths judged with `under` (the op slice A adds).
const PATH_POLICY: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "read_file": { "require": [ { "path": "args.path", "op": "under", "value": "/home/me/notes" } ] },
    "write_file": { "deny_if": [ { "path": "args.path", "op": "under", "value": "/etc" } ] }
  }
}"#;

/// Only the calls the policy allows, marked `"ok": true`, may be executed.
fn only_ok(_name: &str, args: &Value) -> bool {
    args["ok"] == true
}

/// The checks every probe gets: nothing denied executed, nothing hidden shown. An HTTP
/// request left without an end is not a bypass, but it is said (run with `--nocapture`).
fn judge(failures: &mut Failures, variant: &str, probe: &Probe) {
    failures.check(
        variant,
        "executed although denied",
        probe.forbidden(only_ok),
    );
    failures.check(variant, "hidden tool shown to the client", probe.leaked());
    if probe.timed_out > 0 {
        eprintln!(
            "note [{variant}]: {} request(s) still unanswered after {:?}",
            probe.timed_out,
            attack_support::POST_WITHIN
        );
    }
}

/// Says how much a gateway's memory grew for one oversized message (`--nocapture`).
fn growth(failures: &mut Failures, variant: &str, base: u64, peak: u64) {
    let grew = peak.saturating_sub(base);
    eprintln!(
        "figure [{variant}]: peak resident memory {} MiB, {} MiB above the {} MiB before, for a {} MiB message",
        peak >> 20,
        grew >> 20,
        base >> 20,
        HUGE >> 20
    );
    failures.expect(variant, grew < GROWTH_BOUND, || {
        format!(
            "peak memory grew by {} MiB for a {} MiB message",
            grew >> 20,
            HUGE >> 20
        )
    });
}

/// Fails a variant whose `marker` reached the server.
fn never_reached(failures: &mut Failures, variant: &str, probe: &Probe, marker: &str) {
    failures.expect(variant, !probe.reached_server(marker), || {
        format!("{marker} reached the server")
    });
}

/// Whether the client got an error with JSON-RPC code `code` (any id).
fn got_error(probe: &Probe, code: i64) -> bool {
    probe
        .messages()
        .iter()
        .any(|m| m["error"]["code"].as_i64() == Some(code))
}

fn bytes(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

// ---------------------------------------------------------------------------------------
// wrap (stdio)
// ---------------------------------------------------------------------------------------

#[test]
fn wrap_nested_batches_and_non_object_elements_never_reach_the_server() {
    let mut gw = Wrap::start(POLICY, &[]);
    let mut failures = Failures::default();
    let shell = |id: &str, tag: &str| {
        String::from_utf8(call(id, "shell", json!({"tag": tag}))).unwrap_or_default()
    };
    let echo = |id: &str, tag: &str, ok: bool| {
        let args = if ok {
            json!({"tag": tag, "ok": true})
        } else {
            json!({"tag": tag})
        };
        String::from_utf8(call(id, "echo", args)).unwrap_or_default()
    };
    let variants: Vec<(&str, String)> = vec![
        ("nested", format!("[[{}]]", shell("1", "nested"))),
        (
            "nested-deeper",
            format!("[[[{}]]]", shell("2", "nested-deeper")),
        ),
        (
            "nested-pair",
            format!(
                "[[{}],[{}]]",
                echo("3", "nested-pair", false),
                shell("4", "nested-pair")
            ),
        ),
        (
            "non-objects",
            format!(r#"[1,"x",null,true,[{}],{{}}]"#, shell("5", "non-objects")),
        ),
        (
            "object-then-array",
            format!(
                "[{},[{}]]",
                echo("6", "object-then-array", true),
                shell("7", "object-then-array")
            ),
        ),
        ("flat-batch", format!("[{}]", shell("8", "flat-batch"))),
        (
            "nested-with-spaces",
            format!(" [ [ {} ] ] ", shell("9", "nested-with-spaces")),
        ),
        // The issue's own reproduction, byte for byte.
        (
            "issue-example",
            r#"[[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_file"}}]]"#
                .to_owned(),
        ),
        (
            "hidden-in-flat-batch",
            format!(
                "[{}]",
                String::from_utf8_lossy(&call(
                    "10",
                    "delete_file",
                    json!({"tag": "hidden-in-flat-batch"})
                ))
            ),
        ),
    ];
    for (variant, line) in &variants {
        let probe = gw.probe(&[bytes(line)]);
        if *variant == "hidden-in-flat-batch" {
            // The refusal names the tool the client asked for by name: not a leak.
            failures.check(
                variant,
                "executed although denied",
                probe.forbidden(only_ok),
            );
        } else {
            judge(&mut failures, variant, &probe);
        }
        // What reaches the server is a message or a batch of messages, never deeper.
        for unit in &probe.received {
            if let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(unit) {
                failures.expect(variant, items.iter().all(Value::is_object), || {
                    format!(
                        "forwarded a batch with non-objects: {}",
                        attack_support::preview(unit)
                    )
                });
            }
        }
        if !variant.starts_with("flat-batch") && !variant.ends_with("flat-batch") {
            failures.expect(variant, got_error(&probe, -32600), || {
                format!(
                    "no -32600 Invalid Request for a non-object element: {}",
                    probe.summary()
                )
            });
        }
    }
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    evidence.check_decisions(
        &mut failures,
        &[
            ("nested", vec![]),
            ("nested-deeper", vec![]),
            ("nested-pair", vec![]),
            ("non-objects", vec![]),
            ("object-then-array", vec![("echo", "allow")]),
            ("flat-batch", vec![("shell", "deny")]),
            ("nested-with-spaces", vec![]),
            ("hidden-in-flat-batch", vec![("delete_file", "deny")]),
        ],
    );
    failures.assert_none();
}

#[test]
fn wrap_a_message_without_method_reaches_the_server_only_as_an_answer_it_asked_for() {
    let mut gw = Wrap::start(POLICY, &[]);
    let mut failures = Failures::default();
    let smuggled = [
        (
            "response-never-asked",
            r#"{"jsonrpc":"2.0","id":99,"result":{"m":"smuggle-1"}}"#,
            "smuggle-1",
        ),
        (
            "error-never-asked",
            r#"{"jsonrpc":"2.0","id":"x","error":{"code":1,"message":"smuggle-2"}}"#,
            "smuggle-2",
        ),
        (
            "neither-result-nor-error",
            r#"{"jsonrpc":"2.0","id":97,"params":{"name":"shell","arguments":{"m":"smuggle-3"}}}"#,
            "smuggle-3",
        ),
        (
            "method-null",
            r#"{"jsonrpc":"2.0","id":96,"method":null,"params":{"name":"shell","arguments":{"m":"smuggle-4"}}}"#,
            "smuggle-4",
        ),
        (
            "no-id-no-method",
            r#"{"jsonrpc":"2.0","result":{"m":"smuggle-5"}}"#,
            "smuggle-5",
        ),
    ];
    for (variant, line, marker) in smuggled {
        let probe = gw.probe(&[bytes(line)]);
        judge(&mut failures, variant, &probe);
        never_reached(&mut failures, variant, &probe, marker);
    }

    // The server asks the client something (with the id of the client's own pending
    // request): the client's answer must reach it, once.
    let asked = gw.probe(&[list(r#""L1""#, json!({"fake/ask_first": true}))]);
    let request = asked
        .messages()
        .into_iter()
        .find(|m| m["method"] == "sampling/createMessage");
    failures.expect("server-request", request.is_some(), || {
        format!(
            "the server's request did not reach the client: {}",
            asked.summary()
        )
    });
    let answer = r#"{"jsonrpc":"2.0","id":"L1","result":{"role":"assistant","content":{"type":"text","text":"answer-1"},"model":"m"}}"#;
    let answered = gw.probe(&[bytes(answer)]);
    judge(&mut failures, "server-request", &answered);
    failures.expect(
        "server-request",
        answered.reached_server("answer-1"),
        || "the client's answer to the server's own request did not reach it".into(),
    );
    let again = answer.replace("answer-1", "answer-2");
    let repeated = gw.probe(&[bytes(&again)]);
    never_reached(&mut failures, "answer-twice", &repeated, "answer-2");
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    failures.assert_none();
}

#[test]
fn wrap_duplicate_keys_and_extra_values_never_carry_a_call_past_the_policy() {
    let mut gw = Wrap::start(POLICY, &[]);
    let mut failures = Failures::default();
    let variants: Vec<(&str, Vec<u8>)> = vec![
        (
            "dup-method",
            bytes(r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"shell","arguments":{"tag":"dup-method"}}}"#),
        ),
        (
            "dup-params",
            bytes(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"shell","arguments":{"tag":"dup-params"}},"params":{"name":"echo","arguments":{"tag":"dup-params"}}}"#),
        ),
        (
            "dup-name-denied-first",
            bytes(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"shell","name":"echo","arguments":{"tag":"dup-name-denied-first"}}}"#),
        ),
        (
            "dup-name-denied-last",
            bytes(r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","name":"shell","arguments":{"tag":"dup-name-denied-last"}}}"#),
        ),
        (
            "dup-argument",
            bytes(r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"write_file","arguments":{"tag":"dup-argument","path":"/etc/passwd","path":"/tmp/ok"}}}"#),
        ),
        (
            "dup-argument-deep",
            bytes(r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"write_file","arguments":{"tag":"dup-argument-deep","path":"/tmp/ok","opts":{"mode":"a","mode":"w"}}}}"#),
        ),
        (
            "dup-argument-escaped",
            bytes(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"write_file","arguments":{"tag":"dup-argument-escaped","path":"/etc/passwd","p\u0061th":"/tmp/ok"}}}"#),
        ),
        (
            "dup-tag-in-args",
            bytes(r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"transfer","arguments":{"tag":"dup-tag-in-args","amount":5000,"amount":5}}}"#),
        ),
        (
            "escaped-method-key",
            bytes(r#"{"jsonrpc":"2.0","id":9,"\u006dethod":"tools/call","params":{"name":"shell","arguments":{"tag":"escaped-method-key"}}}"#),
        ),
        (
            "escaped-name",
            bytes(r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"sh\u0065ll","arguments":{"tag":"escaped-name"}}}"#),
        ),
        (
            "two-values",
            bytes(r#"{"jsonrpc":"2.0","id":11,"method":"ping"}{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"shell","arguments":{"tag":"two-values"}}}"#),
        ),
        (
            "trailing-garbage",
            bytes(r#"{"jsonrpc":"2.0","id":13,"method":"tools/call","params":{"name":"shell","arguments":{"tag":"trailing-garbage"}}} x"#),
        ),
        (
            "bom",
            [
                "\u{feff}".as_bytes(),
                br#"{"jsonrpc":"2.0","id":14,"method":"tools/call","params":{"name":"shell","arguments":{"tag":"bom"}}}"#,
            ]
            .concat(),
        ),
        (
            "invalid-utf8-name",
            [
                &br#"{"jsonrpc":"2.0","id":15,"method":"tools/call","params":{"name":"shell"#[..],
                b"\xff",
                br#"","arguments":{"tag":"invalid-utf8-name"}}}"#,
            ]
            .concat(),
        ),
        (
            "lone-surrogate-name",
            bytes(r#"{"jsonrpc":"2.0","id":16,"method":"tools/call","params":{"name":"shell\ud800","arguments":{"tag":"lone-surrogate-name"}}}"#),
        ),
        (
            "lone-surrogate-method",
            bytes(r#"{"jsonrpc":"2.0","id":17,"method":"tools/call\ud800","params":{"name":"shell","arguments":{"tag":"lone-surrogate-method"}}}"#),
        ),
    ];
    for (variant, line) in &variants {
        let probe = gw.probe(std::slice::from_ref(line));
        judge(&mut failures, variant, &probe);
    }
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    // A duplicate key is refused before any decision; escapes are decoded and decided.
    let refused: Vec<(&str, Vec<(&str, &str)>)> = [
        "dup-method",
        "dup-params",
        "dup-name-denied-first",
        "dup-name-denied-last",
        "dup-argument",
        "dup-argument-deep",
        "dup-argument-escaped",
        "dup-tag-in-args",
    ]
    .into_iter()
    .map(|tag| (tag, vec![]))
    .chain([
        ("escaped-method-key", vec![("shell", "deny")]),
        ("escaped-name", vec![("shell", "deny")]),
    ])
    .collect();
    evidence.check_decisions(&mut failures, &refused);
    // Nothing framed wrongly is ever allowed.
    for tag in ["two-values", "trailing-garbage", "bom", "invalid-utf8-name"] {
        let allowed: Vec<_> = evidence
            .decisions(tag)
            .into_iter()
            .filter(|(_, verdict)| verdict != "deny")
            .collect();
        failures.expect(tag, allowed.is_empty(), || format!("decided {allowed:?}"));
    }
    failures.assert_none();
}

/// Request ids MCP does not allow (it allows strings and integers).
const BAD_IDS: [&str; 9] = [
    "6.0", "1e1", "1.5", "true", "false", "{}", "[1]", "null", "-1.0e0",
];

#[test]
fn wrap_request_ids_other_than_strings_and_integers_are_refused() {
    let mut gw = Wrap::start(POLICY, &[]);
    let mut failures = Failures::default();
    for (n, id) in BAD_IDS.iter().enumerate() {
        let variant = format!("id {id}");
        let marker = format!("bad-id-{n}");
        let probe = gw.probe(&[
            call(id, "echo", json!({"tag": marker, "m": marker})),
            list(id, json!({"m": format!("{marker}-list")})),
        ]);
        judge(&mut failures, &variant, &probe);
        never_reached(&mut failures, &variant, &probe, &marker);
        failures.expect(&variant, got_error(&probe, -32600), || {
            format!("no -32600 Invalid Request: {}", probe.summary())
        });
    }
    // Strings and integers in any spelling are fine, and answered with the client's id.
    for (n, id) in [r#""\u0061""#, "-0", "7", r#""é""#].iter().enumerate() {
        let variant = format!("good id {id}");
        let tag = format!("good-id-{n}");
        let probe = gw.probe(&[call(id, "echo", json!({"tag": tag, "ok": true}))]);
        judge(&mut failures, &variant, &probe);
        failures.expect(&variant, probe.reached_server(&tag), || {
            "a call with a valid id did not reach the server".into()
        });
        failures.expect(
            &variant,
            probe.messages().iter().any(|m| m.get("result").is_some()),
            || format!("no answer: {}", probe.summary()),
        );
    }
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    let expected: Vec<(String, Vec<(&str, &str)>)> = (0..BAD_IDS.len())
        .map(|n| (format!("bad-id-{n}"), vec![]))
        .chain((0..4).map(|n| (format!("good-id-{n}"), vec![("echo", "allow")])))
        .collect();
    let expected: Vec<(&str, Vec<(&str, &str)>)> = expected
        .iter()
        .map(|(t, d)| (t.as_str(), d.clone()))
        .collect();
    evidence.check_decisions(&mut failures, &expected);
    failures.assert_none();
}

#[test]
fn wrap_an_id_still_in_flight_cannot_be_reused() {
    let mut gw = Wrap::start(POLICY, &[]);
    let mut failures = Failures::default();

    // Pending upstream: the server holds its answer to 41 until the next message.
    let first = bytes(
        r#"{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"echo","arguments":{"tag":"pending-1","ok":true},"_meta":{"fake/defer":true}}}"#,
    );
    let second = call("41", "echo", json!({"tag": "pending-2", "m": "pending-2"}));
    let probe = gw.probe(&[first, second]);
    judge(&mut failures, "pending", &probe);
    never_reached(&mut failures, "pending", &probe, "pending-2");
    failures.expect(
        "pending",
        probe.error_codes(&json!(41)).contains(&-32600),
        || {
            format!(
                "the reused id was not refused with -32600: {}",
                probe.summary()
            )
        },
    );

    // Held: the second call with the same id is refused, the first still ends on its own.
    let probe = gw.probe(&[
        call("42", "ask", json!({"tag": "held-1"})),
        call("42", "ask", json!({"tag": "held-2"})),
    ]);
    judge(&mut failures, "held", &probe);
    failures.expect(
        "held",
        probe.error_codes(&json!(42)).contains(&-32600),
        || {
            format!(
                "the reused id of a held call was not refused with -32600: {}",
                probe.summary()
            )
        },
    );
    // The first hold times out (3 s) and is answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut timed_out = false;
    while Instant::now() < deadline && !timed_out {
        let line = gw.next_line(Duration::from_secs(30), "the held call's timeout answer");
        let msg: Value = serde_json::from_slice(&line).unwrap_or_default();
        timed_out = msg["id"] == 42 && msg["result"]["isError"] == true;
    }
    failures.expect("held", timed_out, || {
        "the held call was never answered".into()
    });
    let probe = gw.probe(&[]);
    judge(&mut failures, "after", &probe);
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    evidence.check_decisions(
        &mut failures,
        &[
            ("pending-1", vec![("echo", "allow")]),
            ("pending-2", vec![]),
            ("held-1", vec![("ask", "hold")]),
            ("held-2", vec![]),
        ],
    );
    let open: Vec<_> = evidence
        .events
        .iter()
        .filter(|r| r.call.tool == "ask" && r.resolution.is_none())
        .map(|r| r.call.call_id.clone())
        .collect();
    failures.expect("held", open.is_empty(), || {
        format!("holds that never ended (ghost holds): {open:?}")
    });
    failures.assert_none();
}

/// `tools/list` requests steered to answer in every shape a hostile server may choose:
/// (variant, request lines).
fn list_attacks() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    vec![
        ("plain", vec![list("1", json!({}))]),
        (
            "escaped-answer-id",
            vec![list(r#""a""#, json!({"fake/answer_id": r#""\u0061""#}))],
        ),
        (
            "escaped-request-id",
            vec![list(r#""\u0062""#, json!({"fake/answer_id": r#""b""#}))],
        ),
        (
            "float-answer-id",
            vec![list("6", json!({"fake/answer_id": "6.0"}))],
        ),
        (
            "exponent-answer-id",
            vec![list("10", json!({"fake/answer_id": "1e1"}))],
        ),
        (
            "minus-zero-answer-id",
            vec![list("0", json!({"fake/answer_id": "-0"}))],
        ),
        (
            "spaced-answer-id",
            vec![list("11", json!({"fake/answer_id": " 11 "}))],
        ),
        (
            "lone-surrogate",
            vec![list("12", json!({"fake/form": "surrogate"}))],
        ),
        (
            "duplicate-tools-key",
            vec![list("13", json!({"fake/form": "dup_tools_key"}))],
        ),
        (
            "tools-object",
            vec![list("14", json!({"fake/form": "tools_object"}))],
        ),
        (
            "duplicate-tool-name",
            vec![list("15", json!({"fake/form": "dup_name"}))],
        ),
        (
            "modern-result",
            vec![list("16", json!({"fake/form": "modern"}))],
        ),
        (
            "pages",
            vec![
                list("17", json!({"fake/form": "paged"})),
                bytes(
                    r#"{"jsonrpc":"2.0","id":18,"method":"tools/list","params":{"cursor":"3","_meta":{"fake/form":"paged"}}}"#,
                ),
                bytes(
                    r#"{"jsonrpc":"2.0","id":19,"method":"tools/list","params":{"cursor":"6","_meta":{"fake/form":"paged"}}}"#,
                ),
            ],
        ),
        (
            "answered-twice",
            vec![list("20", json!({"fake/repeat": true}))],
        ),
        (
            "unsolicited-answer",
            vec![list("21", json!({"fake/unsolicited": true}))],
        ),
        (
            "escaped-string-answer-id",
            vec![list(r#""esc""#, json!({"fake/escape_id": true}))],
        ),
    ]
}

#[test]
fn wrap_hidden_tools_never_reach_the_client() {
    let mut gw = Wrap::start(POLICY, &[]);
    let mut failures = Failures::default();
    for (variant, lines) in list_attacks() {
        let probe = gw.probe(&lines);
        judge(&mut failures, variant, &probe);
        if variant == "plain" {
            let shown = probe.messages().iter().any(|m| {
                m["result"]["tools"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t["name"] == "echo"))
            });
            failures.expect(variant, shown, || {
                format!("the filtered list never came: {}", probe.summary())
            });
        }
    }
    // An id reused while a tools/list is in flight: the list's answer must still be filtered.
    let reused = gw.probe(&[
        list("50", json!({"fake/defer": true})),
        bytes(r#"{"jsonrpc":"2.0","id":50,"method":"ping"}"#),
    ]);
    judge(&mut failures, "reused-id", &reused);
    // The deferred answer comes after the sentinel: look at what follows too.
    let after = gw.probe(&[]);
    judge(&mut failures, "reused-id", &after);
    // The server's own requests with the id of the client's pending tools/list: the client's
    // answers reach the server, and the list is still filtered.
    for (id, method) in [
        (60, "sampling/createMessage"),
        (61, "roots/list"),
        (62, "elicitation/create"),
    ] {
        let variant = format!("colliding-{method}");
        let asked = gw.probe(&[list(&id.to_string(), json!({"fake/ask_first": method}))]);
        judge(&mut failures, &variant, &asked);
        failures.expect(
            &variant,
            asked.messages().iter().any(|m| m["method"] == method),
            || {
                format!(
                    "the server's request never reached the client: {}",
                    asked.summary()
                )
            },
        );
        let marker = format!("answer-{id}");
        let answer = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"m":"{marker}"}}}}"#);
        let answered = gw.probe(&[bytes(&answer)]);
        judge(&mut failures, &variant, &answered);
        failures.expect(&variant, answered.reached_server(&marker), || {
            "the client's answer to the server's request did not reach it".into()
        });
        let listed = answered.messages().iter().any(|m| {
            m["id"] == id
                && m["result"]["tools"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t["name"] == "echo"))
        });
        failures.expect(&variant, listed, || {
            format!("the filtered list never came: {}", answered.summary())
        });
    }
    gw.finish().assert_audit_matches_events();
    failures.assert_none();
}

/// `transfer` calls against `deny_if amount gt 1000`: (tag, amount, allowed).
fn transfers() -> Vec<(&'static str, Value, bool)> {
    vec![
        ("number-small", json!(500), true),
        ("string-small", json!("500"), true),
        ("number-negative", json!(-5000), true),
        ("number-big", json!(5000), false),
        ("string-big", json!("5000"), false),
        ("string-exponent", json!("5e3"), false),
        ("string-fraction", json!("5000.5"), false),
        ("string-spaced", json!(" 5000"), false),
        ("string-hex", json!("0x1388"), false),
        ("string-words", json!("five thousand"), false),
        ("array", json!([5000]), false),
        ("object", json!({"value": 5000}), false),
        ("bool", json!(true), false),
        ("null", json!(null), false),
    ]
}

#[test]
fn wrap_deny_if_fails_closed_on_values_it_cannot_compare() {
    let mut gw = Wrap::start(POLICY, &[]);
    let mut failures = Failures::default();
    let mut expected = Vec::new();
    for (n, (tag, amount, allowed)) in transfers().into_iter().enumerate() {
        let mut args = json!({"tag": tag, "amount": amount});
        if allowed {
            args["ok"] = json!(true);
        }
        let probe = gw.probe(&[call(&(100 + n).to_string(), "transfer", args)]);
        judge(&mut failures, tag, &probe);
        expected.push((
            tag,
            vec![("transfer", if allowed { "allow" } else { "deny" })],
        ));
    }
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    evidence.check_decisions(&mut failures, &expected);
    failures.assert_none();
}

/// Calls against the `under` rules of [`PATH_POLICY`]: (tag, tool, path, allowed).
fn paths() -> Vec<(&'static str, &'static str, Value, bool)> {
    vec![
        (
            "read-inside",
            "read_file",
            json!("/home/me/notes/a.txt"),
            true,
        ),
        ("read-the-root", "read_file", json!("/home/me/notes"), true),
        (
            "read-trailing-slash",
            "read_file",
            json!("/home/me/notes/"),
            true,
        ),
        (
            "read-dots-inside",
            "read_file",
            json!("/home/me/notes/./sub/../b.txt"),
            true,
        ),
        (
            "read-climb-out",
            "read_file",
            json!("/home/me/notes/../../../etc/shadow"),
            false,
        ),
        (
            "read-sibling",
            "read_file",
            json!("/home/me/notes/../notes2/x"),
            false,
        ),
        (
            "read-prefix-sibling",
            "read_file",
            json!("/home/me/notes2/x"),
            false,
        ),
        (
            "read-double-slash-out",
            "read_file",
            json!("//home/me/notes/../../etc"),
            false,
        ),
        (
            "read-relative",
            "read_file",
            json!("home/me/notes/x"),
            false,
        ),
        (
            "read-above-root",
            "read_file",
            json!("/../home/me/notes/x"),
            false,
        ),
        (
            "read-array",
            "read_file",
            json!(["/home/me/notes/a"]),
            false,
        ),
        ("read-number", "read_file", json!(5), false),
        ("write-elsewhere", "write_file", json!("/tmp/x"), true),
        ("write-etcetera", "write_file", json!("/etcetera/x"), true),
        ("write-etc", "write_file", json!("/etc/passwd"), false),
        (
            "write-double-slash",
            "write_file",
            json!("//etc/passwd"),
            false,
        ),
        ("write-dot", "write_file", json!("/./etc/passwd"), false),
        (
            "write-dotdot",
            "write_file",
            json!("/tmp/../etc/passwd"),
            false,
        ),
        ("write-trailing-slash", "write_file", json!("/etc/"), false),
        ("write-the-root", "write_file", json!("/etc"), false),
        (
            "write-inner-double-slash",
            "write_file",
            json!("/etc//shadow"),
            false,
        ),
        (
            "write-above-root",
            "write_file",
            json!("/../etc/passwd"),
            false,
        ),
        ("write-relative", "write_file", json!("etc/passwd"), false),
        (
            "write-object",
            "write_file",
            json!({"p": "/etc/passwd"}),
            false,
        ),
    ]
}

#[test]
fn wrap_under_normalises_paths_before_comparing() {
    let mut gw = Wrap::start(PATH_POLICY, &[]);
    let mut failures = Failures::default();
    let mut expected = Vec::new();
    for (n, (tag, tool, path, allowed)) in paths().into_iter().enumerate() {
        let mut args = json!({"tag": tag, "path": path});
        if allowed {
            args["ok"] = json!(true);
        }
        let probe = gw.probe(&[call(&(200 + n).to_string(), tool, args)]);
        judge(&mut failures, tag, &probe);
        expected.push((tag, vec![(tool, if allowed { "allow" } else { "deny" })]));
    }
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    evidence.check_decisions(&mut failures, &expected);
    failures.assert_none();
}

/// Larger than the default `--max-message` (16 MiB) many times over.
const HUGE: usize = 96 * 1024 * 1024;
/// How much the gateway's peak memory may grow while a [`HUGE`] message passes: a message up
/// to the cap may be held, one many times larger must not be.
const GROWTH_BOUND: u64 = 40 * 1024 * 1024;

/// A `tools/call` of `echo` padded to `size` bytes, tagged `huge` (never to be executed).
fn huge_call(id: &str, size: usize) -> Vec<u8> {
    padded_call(id, size, r#""tag":"huge""#)
}

/// A `tools/call` of `echo` whose arguments are `args` (JSON members) and a pad, `size`
/// bytes in all.
fn padded_call(id: &str, size: usize, args: &str) -> Vec<u8> {
    let head = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{{args},"pad":""#
    );
    let tail = r#""}}}"#;
    let mut line = head.into_bytes();
    line.resize(size - tail.len(), b'x');
    line.extend_from_slice(tail.as_bytes());
    line
}

#[test]
fn wrap_an_oversized_client_line_is_refused_and_memory_stays_flat() {
    let mut gw = Wrap::start(POLICY, &[]);
    let mut failures = Failures::default();
    let warm = gw.probe(&[list("1", json!({}))]);
    judge(&mut failures, "warm-up", &warm);
    let base = reset_peak(gw.pid());

    let mut line = huge_call("77", HUGE);
    line.push(b'\n');
    gw.write(&line);
    drop(line);
    let probe = gw.probe(&[]);
    judge(&mut failures, "with-newline", &probe);
    failures.expect(
        "with-newline",
        probe.received.iter().all(|u| u.len() < HUGE),
        || "the oversized call reached the server".into(),
    );
    failures.expect(
        "with-newline",
        !probe.error_codes(&json!(77)).is_empty(),
        || {
            format!(
                "the oversized call was not answered with an error for its id: {}",
                probe.summary()
            )
        },
    );
    let peak = peak_rss(gw.pid()).expect("the gateway's memory");
    growth(&mut failures, "with-newline", base, peak);

    // No newline at all: the gateway must not keep reading it into memory.
    let base = reset_peak(gw.pid());
    let line = huge_call("78", HUGE);
    gw.write(&line);
    drop(line);
    let peak = peak_rss(gw.pid()).expect("the gateway's memory");
    growth(&mut failures, "without-newline", base, peak);
    // Once the line ends, the gateway carries on.
    gw.write(b"\n");
    let probe = gw.probe(&[call("79", "echo", json!({"tag": "after", "ok": true}))]);
    judge(&mut failures, "without-newline", &probe);
    failures.expect("without-newline", probe.answered(&json!(79)), || {
        format!(
            "the gateway did not carry on after the oversized line: {}",
            probe.summary()
        )
    });
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    evidence.check_decisions(
        &mut failures,
        &[("huge", vec![]), ("after", vec![("echo", "allow")])],
    );
    failures.assert_none();
}

/// A `tools/call` of `echo` whose answer the recording server makes `size` bytes long.
fn oversize_answer(id: &str, size: usize, newline: bool) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"tag":"big-answer-{id}","ok":true}},"_meta":{{"fake/oversize":{size},"fake/newline":{newline}}}}}}}"#
    )
    .into_bytes()
}

#[test]
fn wrap_an_oversized_server_line_becomes_an_error_and_memory_stays_flat() {
    let mut gw = Wrap::start(POLICY, &[]);
    let mut failures = Failures::default();
    let warm = gw.probe(&[list("1", json!({}))]);
    judge(&mut failures, "warm-up", &warm);
    let base = reset_peak(gw.pid());

    let probe = gw.probe(&[oversize_answer("80", HUGE, true)]);
    judge(&mut failures, "with-newline", &probe);
    failures.expect(
        "with-newline",
        probe.output.iter().all(|l| l.len() < HUGE),
        || "the oversized answer reached the client".into(),
    );
    failures.expect(
        "with-newline",
        !probe.error_codes(&json!(80)).is_empty(),
        || {
            format!(
                "the caller did not get an error for the oversized answer: {}",
                probe.summary()
            )
        },
    );
    let peak = peak_rss(gw.pid()).expect("the gateway's memory");
    growth(&mut failures, "with-newline", base, peak);

    // A line that never ends, then the server exits: the caller gets an error, and the
    // gateway's memory never held the line.
    let base = reset_peak(gw.pid());
    gw.write(&oversize_answer("81", HUGE, false));
    gw.write(b"\n");
    let mut answered = false;
    let mut peak = base;
    let deadline = Instant::now() + support::ANSWER_WITHIN;
    while Instant::now() < deadline && !answered {
        if let Some(now) = peak_rss(gw.pid()) {
            peak = peak.max(now);
        }
        let Some(line) = gw.try_next_line(Duration::from_millis(100)) else {
            continue;
        };
        failures.expect("without-newline", line.len() < HUGE, || {
            "the endless answer reached the client".into()
        });
        let msg: Value = serde_json::from_slice(&line).unwrap_or_default();
        if msg["id"] == 81 {
            answered = true;
            failures.expect("without-newline", msg.get("error").is_some(), || {
                format!(
                    "the caller got no error: {}",
                    attack_support::preview(&line)
                )
            });
        }
    }
    failures.expect("without-newline", answered, || {
        "the caller got no answer".into()
    });
    growth(&mut failures, "without-newline", base, peak);
    failures.assert_none();
}

// ---------------------------------------------------------------------------------------
// serve (Streamable HTTP), stdio upstream `s` and URL upstream `u`
// ---------------------------------------------------------------------------------------

#[test]
fn serve_a_body_is_one_message_never_split_on_newlines() {
    let mut gw = Serve::start(POLICY, &[]);
    let mut failures = Failures::default();
    let mut expected = Vec::new();
    for server in UPSTREAMS {
        let session = gw.initialize(server);
        let tag = |t: &str| format!("{server}-{t}");
        let pretty = serde_json::to_string_pretty(&json!({"jsonrpc": "2.0", "id": "p1",
            "method": "tools/call", "params": {"name": "echo",
            "arguments": {"tag": tag("pretty"), "ok": true}}}))
        .unwrap_or_default();
        let nested_in_notification = format!(
            "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"x\":\n[[{}]]\n}}}}",
            String::from_utf8_lossy(&call(
                "1",
                "shell",
                json!({"tag": tag("nested-in-notification")})
            ))
        );
        let nested_in_call = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":\"c1\",\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"tag\":\"{}\",\"ok\":true,\"x\":\n[[{}]]\n}}}}}}",
            tag("carrier"),
            String::from_utf8_lossy(&call("2", "shell", json!({"tag": tag("nested-in-call")})))
        );
        let two_values_newline = format!(
            "{}\n{}",
            String::from_utf8_lossy(&call("3", "echo", json!({"tag": tag("two-values-a")}))),
            String::from_utf8_lossy(&call("4", "shell", json!({"tag": tag("two-values-b")})))
        );
        let two_values = two_values_newline.replace('\n', "");
        let variants: Vec<(String, Vec<u8>)> = vec![
            (tag("pretty"), pretty.into_bytes()),
            (tag("nested-in-notification"), nested_in_notification.into_bytes()),
            (tag("nested-in-call"), nested_in_call.into_bytes()),
            (tag("two-values-newline"), two_values_newline.into_bytes()),
            (tag("two-values"), two_values.into_bytes()),
            (
                tag("nested-batch"),
                format!("[[{}]]", String::from_utf8_lossy(&call("5", "shell", json!({"tag": tag("nested-batch")})))).into_bytes(),
            ),
            (
                tag("batch"),
                format!("[{}]", String::from_utf8_lossy(&call("6", "shell", json!({"tag": tag("batch")})))).into_bytes(),
            ),
            (
                tag("crlf-pretty"),
                format!(
                    "{{\r\n\"jsonrpc\":\"2.0\",\r\n\"id\":\"p2\",\r\n\"method\":\"tools/call\",\r\n\"params\":{{\"name\":\"echo\",\"arguments\":{{\"tag\":\"{}\",\"ok\":true}}}}\r\n}}",
                    tag("crlf-pretty")
                )
                .into_bytes(),
            ),
        ];
        for (variant, body) in &variants {
            let probe = gw.probe(server, Some(&session), std::slice::from_ref(body));
            judge(&mut failures, variant, &probe);
            // What reached the server is one line: a stdio upstream reads lines.
            for unit in &probe.received {
                let is_line = !unit.contains(&b'\n');
                failures.expect(variant, server == "u" || is_line, || {
                    format!(
                        "a unit with a newline reached the server: {}",
                        attack_support::preview(unit)
                    )
                });
            }
        }
        // The pretty-printed call is one call: decided, executed and answered.
        for id in ["p1", "p2"] {
            let probe = gw.probe(server, Some(&session), &[]);
            judge(&mut failures, &tag(id), &probe);
        }
        expected.extend([
            (tag("pretty"), vec![("echo", "allow")]),
            (tag("crlf-pretty"), vec![("echo", "allow")]),
            (tag("carrier"), vec![("echo", "allow")]),
            (tag("nested-in-notification"), vec![]),
            (tag("nested-in-call"), vec![]),
            (tag("nested-batch"), vec![]),
            (tag("batch"), vec![]),
            (tag("two-values-a"), vec![]),
            (tag("two-values-b"), vec![]),
        ]);
    }
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    let expected: Vec<(&str, Vec<(&str, &str)>)> = expected
        .iter()
        .map(|(t, d)| (t.as_str(), d.clone()))
        .collect();
    evidence.check_decisions(&mut failures, &expected);
    failures.assert_none();
}

#[test]
fn serve_duplicate_keys_and_answers_nobody_asked_for_never_reach_the_server() {
    let mut gw = Serve::start(POLICY, &[]);
    let mut failures = Failures::default();
    for server in UPSTREAMS {
        let session = gw.initialize(server);
        let variants: Vec<(&str, &str, &str)> = vec![
            (
                "dup-method",
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"shell","arguments":{"m":"dup-method"}}}"#,
                "dup-method",
            ),
            (
                "dup-params",
                r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"shell","arguments":{"m":"dup-params"}},"params":{"name":"echo","arguments":{"m":"dup-params"}}}"#,
                "dup-params",
            ),
            (
                "dup-name",
                r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","name":"shell","arguments":{"m":"dup-name"}}}"#,
                "dup-name",
            ),
            (
                "dup-argument",
                r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"write_file","arguments":{"m":"dup-argument","path":"/etc/passwd","path":"/tmp/ok"}}}"#,
                "dup-argument",
            ),
            (
                "dup-argument-escaped",
                r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"write_file","arguments":{"m":"dup-argument-escaped","path":"/etc/passwd","p\u0061th":"/tmp/ok"}}}"#,
                "dup-argument-escaped",
            ),
            (
                "response-never-asked",
                r#"{"jsonrpc":"2.0","id":"never","result":{"m":"smuggle-http-1"}}"#,
                "smuggle-http-1",
            ),
            (
                "error-never-asked",
                r#"{"jsonrpc":"2.0","id":98,"error":{"code":1,"message":"smuggle-http-2"}}"#,
                "smuggle-http-2",
            ),
            (
                "neither-result-nor-error",
                r#"{"jsonrpc":"2.0","id":97,"params":{"name":"shell","arguments":{"m":"smuggle-http-3"}}}"#,
                "smuggle-http-3",
            ),
            (
                "method-null",
                r#"{"jsonrpc":"2.0","id":96,"method":null,"params":{"name":"shell","arguments":{"m":"smuggle-http-4"}}}"#,
                "smuggle-http-4",
            ),
        ];
        for (variant, body, marker) in variants {
            let variant = format!("{server}-{variant}");
            let probe = gw.probe(server, Some(&session), &[bytes(body)]);
            judge(&mut failures, &variant, &probe);
            never_reached(&mut failures, &variant, &probe, marker);
        }
    }
    gw.finish().assert_audit_matches_events();
    failures.assert_none();
}

#[test]
fn serve_request_ids_other_than_strings_and_integers_are_refused() {
    let mut gw = Serve::start(POLICY, &[]);
    let mut failures = Failures::default();
    for server in UPSTREAMS {
        let session = gw.initialize(server);
        for (n, id) in BAD_IDS.iter().enumerate() {
            let variant = format!("{server} id {id}");
            let marker = format!("{server}-bad-id-{n}");
            let probe = gw.probe(
                server,
                Some(&session),
                &[
                    call(id, "echo", json!({"tag": marker, "m": marker})),
                    list(id, json!({"m": format!("{marker}-list")})),
                ],
            );
            judge(&mut failures, &variant, &probe);
            never_reached(&mut failures, &variant, &probe, &marker);
            failures.expect(&variant, got_error(&probe, -32600), || {
                format!("no -32600 Invalid Request: {}", probe.summary())
            });
        }
    }
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    for server in UPSTREAMS {
        for n in 0..BAD_IDS.len() {
            let tag = format!("{server}-bad-id-{n}");
            let got = evidence.decisions(&tag);
            failures.expect(&tag, got.is_empty(), || format!("decided {got:?}"));
        }
    }
    failures.assert_none();
}

#[test]
fn serve_hidden_tools_never_reach_the_client() {
    let mut gw = Serve::start(POLICY, &[]);
    let mut failures = Failures::default();
    for server in UPSTREAMS {
        let session = gw.initialize(server);
        // A GET stream is where a server's unrouted messages go: watch it too.
        let mut stream = gw.open_stream(server, &session);
        for (variant, lines) in list_attacks() {
            let variant = format!("{server}-{variant}");
            let probe = gw.probe(server, Some(&session), &lines);
            judge(&mut failures, &variant, &probe);
        }
        // Stateless (2026-07-28) requests share a link and have their ids renamed.
        for (name, steer) in [
            ("plain", json!({})),
            ("surrogate", json!({"fake/form": "surrogate"})),
            ("dup_tools_key", json!({"fake/form": "dup_tools_key"})),
            ("tools_object", json!({"fake/form": "tools_object"})),
            ("dup_name", json!({"fake/form": "dup_name"})),
            ("modern", json!({"fake/form": "modern"})),
            ("escaped-answer-id", json!({"fake/escape_id": true})),
            ("unsolicited-answer", json!({"fake/unsolicited": true})),
            ("answered-twice", json!({"fake/repeat": true})),
        ] {
            let variant = format!("{server}-stateless-{name}");
            let mut meta = steer;
            meta["io.modelcontextprotocol/protocolVersion"] = json!("2026-07-28");
            meta["io.modelcontextprotocol/clientCapabilities"] = json!({});
            let probe = gw.probe(server, None, &[list(r#""st""#, meta)]);
            judge(&mut failures, &variant, &probe);
        }
        // Whatever the gateway sent on the session's GET stream meanwhile.
        let pushed = stream.drain();
        failures.expect(
            &format!("{server}-get-stream"),
            pushed.starts_with(b"HTTP/1.1 200"),
            || {
                format!(
                    "the GET stream did not open: {}",
                    attack_support::preview(&pushed)
                )
            },
        );
        let probe = Probe {
            output: vec![pushed],
            ..Probe::default()
        };
        judge(&mut failures, &format!("{server}-get-stream"), &probe);
    }
    gw.finish().assert_audit_matches_events();
    failures.assert_none();
}

#[test]
fn serve_deny_if_fails_closed_on_values_it_cannot_compare() {
    let mut gw = Serve::start(POLICY, &[]);
    let mut failures = Failures::default();
    let mut expected = Vec::new();
    for server in UPSTREAMS {
        let session = gw.initialize(server);
        for (n, (tag, amount, allowed)) in transfers().into_iter().enumerate() {
            let tag = format!("{server}-{tag}");
            let mut args = json!({"tag": tag, "amount": amount});
            if allowed {
                args["ok"] = json!(true);
            }
            let probe = gw.probe(
                server,
                Some(&session),
                &[call(&(100 + n).to_string(), "transfer", args)],
            );
            judge(&mut failures, &tag, &probe);
            expected.push((
                tag,
                vec![("transfer", if allowed { "allow" } else { "deny" })],
            ));
        }
    }
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    let expected: Vec<(&str, Vec<(&str, &str)>)> = expected
        .iter()
        .map(|(t, d)| (t.as_str(), d.clone()))
        .collect();
    evidence.check_decisions(&mut failures, &expected);
    failures.assert_none();
}

#[test]
fn serve_under_normalises_paths_before_comparing() {
    let mut gw = Serve::start(PATH_POLICY, &[]);
    let mut failures = Failures::default();
    let mut expected = Vec::new();
    for server in UPSTREAMS {
        let session = gw.initialize(server);
        for (n, (tag, tool, path, allowed)) in paths().into_iter().enumerate() {
            let tag = format!("{server}-{tag}");
            let mut args = json!({"tag": tag, "path": path});
            if allowed {
                args["ok"] = json!(true);
            }
            let probe = gw.probe(
                server,
                Some(&session),
                &[call(&(200 + n).to_string(), tool, args)],
            );
            judge(&mut failures, &tag, &probe);
            expected.push((tag, vec![(tool, if allowed { "allow" } else { "deny" })]));
        }
    }
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    let expected: Vec<(&str, Vec<(&str, &str)>)> = expected
        .iter()
        .map(|(t, d)| (t.as_str(), d.clone()))
        .collect();
    evidence.check_decisions(&mut failures, &expected);
    failures.assert_none();
}

#[test]
fn serve_oversized_messages_become_errors_and_memory_stays_flat() {
    let mut gw = Serve::start(POLICY, &[]);
    let mut failures = Failures::default();
    let sessions: Vec<(&str, String)> = UPSTREAMS.iter().map(|s| (*s, gw.initialize(s))).collect();
    for (server, session) in &sessions {
        let base = reset_peak(gw.pid());
        // A request body over the cap is refused, never decided.
        let reply = gw.post(server, Some(session), &huge_call("70", HUGE));
        failures.expect(&format!("{server}-request"), reply.status == 413, || {
            format!("an oversized body got {}", reply.status)
        });
        // An answer over the cap reaches the caller as an error.
        let probe = gw.probe(server, Some(session), &[oversize_answer("71", HUGE, true)]);
        let variant = format!("{server}-answer");
        judge(&mut failures, &variant, &probe);
        failures.expect(
            &variant,
            probe.output.iter().all(|l| l.len() < HUGE),
            || "the oversized answer reached the client".into(),
        );
        failures.expect(&variant, !probe.error_codes(&json!(71)).is_empty(), || {
            format!("the caller did not get an error: {}", probe.summary())
        });
        let peak = peak_rss(gw.pid()).expect("serve's memory");
        growth(&mut failures, &variant, base, peak);
    }
    // A stdio upstream whose answer never ends (it exits after it): an error, flat memory.
    let (_, session) = &sessions[0];
    let base = reset_peak(gw.pid());
    let reply = gw.post("s", Some(session), &oversize_answer("72", HUGE, false));
    let text = String::from_utf8_lossy(&reply.body[..reply.body.len().min(2000)]).into_owned();
    failures.expect(
        "s-endless-answer",
        reply.body.len() < HUGE && text.contains("error"),
        || {
            format!(
                "status {} body {}",
                reply.status,
                attack_support::preview(&reply.body)
            )
        },
    );
    let peak = peak_rss(gw.pid()).expect("serve's memory");
    growth(&mut failures, "s-endless-answer", base, peak);
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    failures.assert_none();
}

#[test]
fn serve_an_id_still_in_flight_cannot_be_reused() {
    let gw = Serve::start(POLICY, &[]);
    let mut failures = Failures::default();
    for server in UPSTREAMS {
        let session = gw.initialize(server);
        let tag = |t: &str| format!("{server}-{t}");
        // A held call (it times out after 3 s), and the same id again while it waits.
        let first_body = call("42", "ask", json!({"tag": tag("held-1")}));
        std::thread::scope(|scope| {
            let first = scope.spawn(|| gw.post(server, Some(&session), &first_body));
            gw.wait_decided(&tag("held-1"));
            let second = gw.post(
                server,
                Some(&session),
                &call("42", "ask", json!({"tag": tag("held-2")})),
            );
            let text = String::from_utf8_lossy(&second.body).into_owned();
            failures.expect(&tag("held"), text.contains("-32600"), || {
                format!("the reused id was not refused: {} {text}", second.status)
            });
            let first = first.join().expect("the first request's thread");
            let text = String::from_utf8_lossy(&first.body).into_owned();
            failures.expect(&tag("held"), text.contains("Not approved"), || {
                format!("the first held call did not end on its own: {text}")
            });
        });
    }
    // Pending upstream: the stdio server holds its answer to 41 until its next message.
    let session = gw.initialize("s");
    let first_body = bytes(
        r#"{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"echo","arguments":{"tag":"s-pending-1","ok":true},"_meta":{"fake/defer":true}}}"#,
    );
    std::thread::scope(|scope| {
        let first = scope.spawn(|| gw.post("s", Some(&session), &first_body));
        gw.wait_decided("s-pending-1");
        let second = gw.post(
            "s",
            Some(&session),
            &call(
                "41",
                "echo",
                json!({"tag": "s-pending-2", "m": "s-pending-2"}),
            ),
        );
        let text = String::from_utf8_lossy(&second.body).into_owned();
        failures.expect("s-pending", text.contains("-32600"), || {
            format!("the reused id was not refused: {} {text}", second.status)
        });
        // The next message releases the first answer.
        let ping = gw.post(
            "s",
            Some(&session),
            br#"{"jsonrpc":"2.0","id":"release","method":"ping"}"#,
        );
        failures.expect("s-pending", ping.status == 200, || {
            format!("ping: {}", ping.status)
        });
        let first = first.join().expect("the first request's thread");
        failures.expect("s-pending", first.status == 200 && !first.timed_out, || {
            format!("the first call was not answered: {}", first.status)
        });
    });
    let mut gw = gw;
    let probe = gw.probe("s", Some(&session), &[]);
    never_reached(&mut failures, "s-pending", &probe, "s-pending-2");
    judge(&mut failures, "s-pending", &probe);
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    evidence.check_decisions(
        &mut failures,
        &[
            ("s-held-1", vec![("ask", "hold")]),
            ("s-held-2", vec![]),
            ("u-held-1", vec![("ask", "hold")]),
            ("u-held-2", vec![]),
            ("s-pending-1", vec![("echo", "allow")]),
            ("s-pending-2", vec![]),
        ],
    );
    failures.assert_none();
}

#[test]
fn serve_a_servers_own_request_with_a_clients_id_neither_leaks_tools_nor_swallows_answers() {
    let mut gw = Serve::start(POLICY, &[]);
    let mut failures = Failures::default();
    let session = gw.initialize("s");
    let (asked_tx, asked) = std::sync::mpsc::channel();
    let body = list("60", json!({"fake/ask_first": true}));
    std::thread::scope(|scope| {
        let listing = scope.spawn(|| {
            gw.post_watching(
                "s",
                Some(&session),
                &body,
                Some(("sampling/createMessage", asked_tx)),
            )
        });
        let came = asked.recv_timeout(support::ANSWER_WITHIN).is_ok();
        failures.expect("server-request", came, || {
            "the server's request never reached the client".into()
        });
        let answer = gw.post(
            "s",
            Some(&session),
            br#"{"jsonrpc":"2.0","id":60,"result":{"role":"assistant","content":{"type":"text","text":"answer-60"},"model":"m"}}"#,
        );
        failures.expect("server-request", answer.status == 202, || {
            format!(
                "the client's answer was refused: {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )
        });
        let listed = listing.join().expect("the listing thread");
        let probe = Probe {
            output: vec![listed.body],
            ..Probe::default()
        };
        judge(&mut failures, "server-request", &probe);
        let shown = probe.messages().iter().any(|m| {
            m["id"] == 60
                && m["result"]["tools"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t["name"] == "echo"))
        });
        failures.expect("server-request", shown, || {
            format!("the filtered list never came: {}", probe.summary())
        });
    });
    let after = gw.probe("s", Some(&session), &[]);
    failures.expect("server-request", after.reached_server("answer-60"), || {
        "the client's answer to the server's request never reached it".into()
    });
    gw.finish().assert_audit_matches_events();
    failures.assert_none();
}

#[test]
fn wrap_memory_follows_a_smaller_max_message_in_both_directions() {
    let mut gw = Wrap::start(POLICY, &["--max-message", "1MiB"]);
    let mut failures = Failures::default();
    let warm = gw.probe(&[list("1", json!({}))]);
    judge(&mut failures, "warm-up", &warm);
    // Within the cap: passes both ways.
    let small = gw.probe(&[padded_call("90", 512 * 1024, r#""tag":"small","ok":true"#)]);
    judge(&mut failures, "under-the-cap", &small);
    failures.expect("under-the-cap", small.answered(&json!(90)), || {
        format!(
            "a message under the cap was not answered: {}",
            small.summary()
        )
    });
    for (variant, lines) in [
        ("client-line", vec![huge_call("91", HUGE)]),
        ("server-line", vec![oversize_answer("92", HUGE, true)]),
    ] {
        let base = reset_peak(gw.pid());
        let probe = gw.probe(&lines);
        judge(&mut failures, variant, &probe);
        let peak = peak_rss(gw.pid()).expect("the gateway's memory");
        let grew = peak.saturating_sub(base);
        eprintln!(
            "figure [{variant} with --max-message 1MiB]: peak {} MiB, {} KiB above before, for a {} MiB message",
            peak >> 20,
            grew >> 10,
            HUGE >> 20
        );
        failures.expect(variant, grew < 8 * 1024 * 1024, || {
            format!("peak memory grew by {} KiB with a 1 MiB cap", grew >> 10)
        });
        failures.expect(
            variant,
            probe.output.iter().all(|l| l.len() < 1 << 20),
            || "a message over the cap reached the client".into(),
        );
        failures.expect(
            variant,
            probe.received.iter().all(|u| u.len() < 1 << 20),
            || "a message over the cap reached the server".into(),
        );
    }
    let evidence = gw.finish();
    evidence.assert_audit_matches_events();
    failures.assert_none();
}
