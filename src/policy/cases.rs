//! Policy test cases (`toolgate test`): the case file format, validated like a policy.
//!
//! A case file is a JSON object whose top level has `cases` (that is how `toolgate check`
//! tells one from a policy). Each case is one call, or a sequence of calls at virtual times,
//! and the decision expected for the last one. The format is `docs/policy-tests.md`, with a
//! JSON Schema beside it (`docs/policy-cases.schema.json`). Reading goes through the same
//! strict parser as policies, so every problem is reported at once with `FILE:LINE:COL` and a
//! JSON Pointer, and a key written twice is an error rather than one expectation silently
//! replacing another. Running the cases is [`super::case_run`].

use serde_json::Value as Json;

use super::compile::{Problem, child, parse_duration, quote, read_document, whole_number};
use super::json::{self, Member, Node, Value};
use super::{Diagnostic, Verdict};

/// Most calls one case may make, `repeat`s added up: every call is decided and counted in
/// memory, so a case file cannot make `toolgate test` hold or spend without bound.
pub(crate) const MAX_CALLS_PER_CASE: u64 = 100_000;

/// The latest a call may be placed (`at`), from the first call: a year.
const MAX_AT_MS: u64 = 366 * 86_400_000;

/// The grant and session a call has when the case does not name them.
pub(crate) const DEFAULT_GRANT: &str = "default";
pub(crate) const DEFAULT_SESSION: &str = "default";

const TOP_FIELDS: &[&str] = &["cases"];
const CASE_FIELDS: &[&str] = &["name", "call", "calls", "expect"];
const CALL_FIELDS: &[&str] = &["tool", "args", "grant", "session", "at", "repeat"];
const EXPECT_FIELDS: &[&str] = &["decision", "rule", "reason_contains", "shadow"];

/// A validated case file.
#[derive(Debug, Clone)]
pub(crate) struct CaseFile {
    pub cases: Vec<Case>,
}

/// One case: calls made in order, and what the last one must be decided.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub name: String,
    /// Where the case is written, for failures (`cases.json:3:5`).
    pub line: usize,
    pub column: usize,
    /// `/cases/0`.
    pub pointer: String,
    /// At least one.
    pub calls: Vec<CaseCall>,
    pub expect: Expect,
}

/// One call of a case (made `repeat` times at the same virtual time).
#[derive(Debug, Clone)]
pub(crate) struct CaseCall {
    pub tool: String,
    pub args: Json,
    pub grant: String,
    pub session: String,
    /// Milliseconds after the case's first call; never earlier than the call before.
    pub at_ms: u64,
    pub repeat: u64,
}

/// What the last call's decision must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expect {
    pub decision: Verdict,
    /// The deciding rule's JSON Pointer, exactly.
    pub rule: Option<String>,
    /// Text the decision's reason must contain.
    pub reason_contains: Option<String>,
    /// What the call's shadow must be: `Some(None)` for none (`"shadow": "none"`: no shadow
    /// rule would decide otherwise), `Some(Some(v))` for a shadow rule that would decide `v`.
    pub shadow: Option<Option<Verdict>>,
}

/// Whether `text` is a case file rather than a policy: a JSON object with `cases` at its top
/// level. Anything else (including text that is not JSON) is read as a policy, so its
/// diagnostics come from the policy's checks.
pub(crate) fn is_case_file(text: &str) -> bool {
    match json::parse(text) {
        Ok(doc) => match &doc.root.value {
            Value::Object(members) => members.iter().any(|m| m.key == "cases"),
            _ => false,
        },
        Err(_) => false,
    }
}

struct Reader<'t> {
    problems: Vec<Problem>,
    locator: &'t json::Locator<'t>,
}

fn get<'n>(members: &'n [Member], name: &str) -> Option<&'n Node> {
    members.iter().find(|m| m.key == name).map(|m| &m.value)
}

impl CaseFile {
    /// Parses and validates a case file; `file` is the name diagnostics are reported under.
    pub(crate) fn parse(text: &str, file: &str) -> Result<CaseFile, Vec<Diagnostic>> {
        read_document(text, file, |root, locator, problems| {
            let mut r = Reader { problems, locator };
            let cases = r.top(root);
            (cases.map(|cases| CaseFile { cases }), r.problems)
        })
    }
}

impl Reader<'_> {
    fn problem(&mut self, offset: usize, pointer: String, message: String, hint: String) {
        self.problems.push(Problem {
            offset,
            pointer,
            message,
            hint,
        });
    }

    fn error(&mut self, node: &Node, pointer: &str, message: String, hint: &str) {
        self.problem(node.offset, pointer.to_string(), message, hint.to_string());
    }

    fn object<'n>(
        &mut self,
        node: &'n Node,
        pointer: &str,
        what: &str,
        allowed: &[&str],
    ) -> Option<&'n [Member]> {
        let Value::Object(members) = &node.value else {
            self.error(
                node,
                pointer,
                format!("{what} must be an object, found {}", node.kind()),
                "",
            );
            return None;
        };
        for m in members {
            if !allowed.contains(&m.key.as_str()) {
                self.problem(
                    m.key_offset,
                    child(pointer, &m.key),
                    format!("unknown field {} in {what}", quote(&m.key)),
                    format!("expected one of: {}", allowed.join(", ")),
                );
            }
        }
        Some(members)
    }

    fn string(&mut self, node: &Node, pointer: &str, what: &str) -> Option<String> {
        match &node.value {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::String(_) => {
                self.error(node, pointer, format!("{what} must not be empty"), "");
                None
            }
            _ => {
                self.error(
                    node,
                    pointer,
                    format!("{what} must be a string, found {}", node.kind()),
                    "",
                );
                None
            }
        }
    }

    fn top(&mut self, root: &Node) -> Option<Vec<Case>> {
        let members = self.object(root, "", "a case file", TOP_FIELDS)?;
        let Some(list) = get(members, "cases") else {
            self.error(
                root,
                "",
                "a case file is missing the required field \"cases\"".to_string(),
                "",
            );
            return None;
        };
        let Value::Array(items) = &list.value else {
            self.error(
                list,
                "/cases",
                format!("\"cases\" must be an array, found {}", list.kind()),
                "",
            );
            return None;
        };
        if items.is_empty() {
            self.error(
                list,
                "/cases",
                "\"cases\" is empty: a case file tests nothing".to_string(),
                "add a case like {\"name\": \"...\", \"call\": {\"tool\": \"...\"}, \"expect\": {\"decision\": \"deny\"}}",
            );
            return None;
        }
        let mut cases = Vec::new();
        let mut names: Vec<(String, usize)> = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let ptr = format!("/cases/{i}");
            match self.case(item, &ptr) {
                Some(case) => {
                    if let Some((_, first)) = names.iter().find(|(n, _)| *n == case.name) {
                        self.problem(
                            item.offset,
                            child(&ptr, "name"),
                            format!("case name {} is used twice", quote(&case.name)),
                            format!("the first is /cases/{first}; names identify cases in reports, so make each one different"),
                        );
                    }
                    names.push((case.name.clone(), i));
                    cases.push(case);
                }
                None => ok = false,
            }
        }
        ok.then_some(cases)
    }

    fn case(&mut self, node: &Node, ptr: &str) -> Option<Case> {
        let members = self.object(node, ptr, "a case", CASE_FIELDS)?;
        let name = match get(members, "name") {
            Some(n) => self.string(n, &child(ptr, "name"), "\"name\""),
            None => {
                self.error(
                    node,
                    ptr,
                    "a case is missing the required field \"name\"".to_string(),
                    "name it by the behaviour it pins down, e.g. \"deletes need a person\"",
                );
                None
            }
        };
        let calls = match (get(members, "call"), get(members, "calls")) {
            (Some(_), Some(_)) => {
                self.error(
                    node,
                    ptr,
                    "a case has both \"call\" and \"calls\"".to_string(),
                    "use \"call\" for one call, or \"calls\" for a sequence whose last call is the one expected",
                );
                None
            }
            (None, None) => {
                self.error(
                    node,
                    ptr,
                    "a case has neither \"call\" nor \"calls\"".to_string(),
                    "add \"call\": {\"tool\": \"...\"}",
                );
                None
            }
            (Some(call), None) => {
                self.calls(std::slice::from_ref(call), &child(ptr, "call"), false)
            }
            (None, Some(list)) => match &list.value {
                Value::Array(items) if !items.is_empty() => {
                    self.calls(items, &child(ptr, "calls"), true)
                }
                _ => {
                    self.error(
                        list,
                        &child(ptr, "calls"),
                        format!("\"calls\" must be a non-empty array, found {}", list.kind()),
                        "",
                    );
                    None
                }
            },
        };
        let expect = match get(members, "expect") {
            Some(e) => self.expect(e, &child(ptr, "expect")),
            None => {
                self.error(
                    node,
                    ptr,
                    "a case is missing the required field \"expect\"".to_string(),
                    "add \"expect\": {\"decision\": \"allow\"} (or deny, rate_limited, hold)",
                );
                None
            }
        };
        let (line, column) = self.locator.locate(node.offset);
        Some(Case {
            name: name?,
            line,
            column,
            pointer: ptr.to_string(),
            calls: calls?,
            expect: expect?,
        })
    }

    /// The calls of a case; `indexed`: the pointer names each (`/calls/3`), else it is the
    /// one `call`.
    fn calls(&mut self, items: &[Node], ptr: &str, indexed: bool) -> Option<Vec<CaseCall>> {
        let mut out = Vec::new();
        let mut ok = true;
        let mut at_ms = 0u64;
        let mut total = 0u64;
        for (i, item) in items.iter().enumerate() {
            let p = if indexed {
                format!("{ptr}/{i}")
            } else {
                ptr.to_string()
            };
            match self.call(item, &p, at_ms) {
                Some(call) => {
                    at_ms = call.at_ms;
                    total = total.saturating_add(call.repeat);
                    if total > MAX_CALLS_PER_CASE {
                        self.error(
                            item,
                            &p,
                            format!("this case makes more than {MAX_CALLS_PER_CASE} calls"),
                            "a limit is tested with max + 1 calls; split the case or lower the repeats",
                        );
                        return None;
                    }
                    out.push(call);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn call(&mut self, node: &Node, ptr: &str, earliest_ms: u64) -> Option<CaseCall> {
        let members = self.object(node, ptr, "a call", CALL_FIELDS)?;
        let tool = match get(members, "tool") {
            Some(t) => self.string(t, &child(ptr, "tool"), "\"tool\""),
            None => {
                self.error(
                    node,
                    ptr,
                    "a call is missing the required field \"tool\"".to_string(),
                    "",
                );
                None
            }
        };
        let args = match get(members, "args") {
            None => Some(Json::Object(Default::default())),
            Some(a) => match (&a.value, a.to_serde()) {
                (Value::Object(_), Ok(v)) => Some(v),
                (Value::Object(_), Err(offset)) => {
                    self.problem(
                        offset,
                        child(ptr, "args"),
                        "a number in \"args\" cannot be represented".to_string(),
                        String::new(),
                    );
                    None
                }
                _ => {
                    self.error(
                        a,
                        &child(ptr, "args"),
                        format!("\"args\" must be an object, found {}", a.kind()),
                        "the arguments as the agent sends them: {\"id\": \"a1\"}",
                    );
                    None
                }
            },
        };
        let grant = match get(members, "grant") {
            Some(g) => self.string(g, &child(ptr, "grant"), "\"grant\""),
            None => Some(DEFAULT_GRANT.to_string()),
        };
        let session = match get(members, "session") {
            Some(s) => self.string(s, &child(ptr, "session"), "\"session\""),
            None => Some(DEFAULT_SESSION.to_string()),
        };
        let at_ms = match get(members, "at") {
            None => Some(earliest_ms),
            Some(a) => self.at(a, &child(ptr, "at"), earliest_ms),
        };
        let repeat = match get(members, "repeat") {
            None => Some(1),
            Some(r) => match whole_number(r) {
                Some(n) if n >= 1 => Some(n),
                _ => {
                    self.error(
                        r,
                        &child(ptr, "repeat"),
                        "\"repeat\" must be a whole number >= 1".to_string(),
                        "",
                    );
                    None
                }
            },
        };
        Some(CaseCall {
            tool: tool?,
            args: args?,
            grant: grant?,
            session: session?,
            at_ms: at_ms?,
            repeat: repeat?,
        })
    }

    /// An `at`: seconds (`61`) or a duration (`"61s"`, `"2m"`, `"1h"`, `"1d"`, `"0s"`) after
    /// the case's first call, never before the call it follows.
    fn at(&mut self, node: &Node, ptr: &str, earliest_ms: u64) -> Option<u64> {
        const HINT: &str =
            "an offset from the case's first call: seconds (61) or \"61s\", \"2m\", \"1h\", \"1d\"";
        let ms = match &node.value {
            Value::Number(_) => whole_number(node).and_then(|s| s.checked_mul(1000)),
            Value::String(s) => parse_duration(s).flatten(),
            _ => None,
        };
        match ms {
            Some(ms) if ms > MAX_AT_MS => {
                self.error(
                    node,
                    ptr,
                    "\"at\" is more than a year after the first call".to_string(),
                    HINT,
                );
                None
            }
            Some(ms) if ms < earliest_ms => {
                self.error(
                    node,
                    ptr,
                    format!(
                        "\"at\" is {} s, before the call it follows ({} s)",
                        ms / 1000,
                        earliest_ms / 1000
                    ),
                    "calls run in order: each one's \"at\" is the same as the one before or later",
                );
                None
            }
            Some(ms) => Some(ms),
            None => {
                self.error(
                    node,
                    ptr,
                    format!(
                        "\"at\" must be a whole number of seconds or a duration, found {}",
                        shown(node)
                    ),
                    HINT,
                );
                None
            }
        }
    }

    fn expect(&mut self, node: &Node, ptr: &str) -> Option<Expect> {
        let members = self.object(node, ptr, "an expectation", EXPECT_FIELDS)?;
        let decision = match get(members, "decision") {
            None => {
                self.error(
                    node,
                    ptr,
                    "an expectation is missing the required field \"decision\"".to_string(),
                    "expected one of: allow, deny, rate_limited, hold",
                );
                None
            }
            Some(d) => {
                let verdict = match &d.value {
                    Value::String(s) => verdict(s),
                    _ => None,
                };
                if verdict.is_none() {
                    self.error(
                        d,
                        &child(ptr, "decision"),
                        format!("unknown decision {}", shown(d)),
                        "expected one of: allow, deny, rate_limited, hold",
                    );
                }
                verdict
            }
        };
        let rule = match get(members, "rule") {
            None => Some(None),
            Some(r) => {
                let p = child(ptr, "rule");
                match self.string(r, &p, "\"rule\"") {
                    Some(s) if s.starts_with('/') => Some(Some(s)),
                    Some(s) => {
                        self.error(
                            r,
                            &p,
                            format!("\"rule\" {} is not a JSON Pointer", quote(&s)),
                            "a pointer into the policy starts with /, e.g. \"/tools/create_api_key/limits/0\" or \"/default\"",
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        let reason_contains = match get(members, "reason_contains") {
            None => Some(None),
            Some(r) => self
                .string(r, &child(ptr, "reason_contains"), "\"reason_contains\"")
                .map(Some),
        };
        let shadow = match get(members, "shadow") {
            None => Some(None),
            Some(node) => match &node.value {
                Value::String(s) if s == "none" => Some(Some(None)),
                Value::String(s) if verdict(s).is_some() => Some(Some(verdict(s))),
                _ => {
                    self.error(
                        node,
                        &child(ptr, "shadow"),
                        format!("unknown shadow decision {}", shown(node)),
                        "expected one of: allow, deny, rate_limited, hold, or none (no shadow rule decides otherwise)",
                    );
                    None
                }
            },
        };
        Some(Expect {
            decision: decision?,
            rule: rule?,
            reason_contains: reason_contains?,
            shadow: shadow?,
        })
    }
}

fn verdict(s: &str) -> Option<Verdict> {
    match s {
        "allow" => Some(Verdict::Allow),
        "deny" => Some(Verdict::Deny),
        "rate_limited" => Some(Verdict::RateLimited),
        "hold" => Some(Verdict::Hold),
        _ => None,
    }
}

fn shown(node: &Node) -> String {
    match &node.value {
        Value::String(s) => quote(s),
        Value::Number(n) => n.clone(),
        _ => node.kind().to_string(),
    }
}
