//! The Live view's filter: `tool:create_* decision:deny grant:ci free text`.
//!
//! A filter is a list of terms that must all match. `key:value` terms compare one field with a
//! glob (`*` any run, `?` one character, case-insensitive); any other word must appear
//! (case-insensitive) in the tool, grant, server, gateway, rule, reason or call id.
//! `shadow:` selects the calls with a shadow decision (a shadow rule or the shadow policy
//! would have decided otherwise), `shadow:deny` those whose shadow would deny (`allow`,
//! `rate_limited`, `hold` alike); any other `shadow:VALUE` is a glob on the shadow's rule
//! pointer. Parsing
//! never fails: an unknown `key:` is taken as free text, so what the operator typed still
//! narrows the list instead of being silently ignored.

use crate::wire::Verdict;

use super::history::{CallRow, Interner};

/// One term of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    Tool(String),
    Grant(String),
    Server(String),
    Gateway(String),
    Rule(String),
    Decision(DecisionTerm),
    /// `shadow:`: calls with a shadow decision, of any verdict or of one.
    Shadow(ShadowTerm),
    Text(String),
}

/// What `shadow:` may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowTerm {
    /// `shadow:` or `shadow:*`: any shadow decision.
    Any,
    /// `shadow:deny`: a shadow that would decide this.
    Verdict(Verdict),
    /// `shadow:/tools/x*`: a glob on the shadow's rule pointer.
    Rule(String),
}

/// What `decision:` may name. `held` means held now; `hold` any call the policy held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionTerm {
    Verdict(Verdict),
    Approved,
    Denied,
    Error,
}

/// A parsed filter. The empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub terms: Vec<Term>,
    /// The text it was parsed from, shown in the Live view's title.
    pub source: String,
}

impl Filter {
    pub fn parse(text: &str) -> Filter {
        let mut terms: Vec<Term> = text.split_whitespace().map(parse_term).collect();
        // Cheapest tests first: most calls are rejected before any text is scanned.
        terms.sort_by_key(|t| match t {
            Term::Decision(_) | Term::Shadow(_) => 0,
            Term::Text(_) => 2,
            _ => 1,
        });
        Filter {
            terms,
            source: text.trim().to_owned(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether the call (from gateway `gateway`) passes every term.
    pub fn matches(&self, row: &CallRow, gateway: &str) -> bool {
        self.terms.iter().all(|t| term_matches(t, row, gateway))
    }
}

/// A filter applied to many calls of one history: each term is decided once per distinct
/// string (see [`super::history::RowKeys`]), then by id.
pub(crate) struct Matcher<'a> {
    filter: &'a Filter,
    strings: &'a Interner,
    /// Per term, per string id: 0 not yet decided, 1 no, 2 yes.
    memo: Vec<Vec<u8>>,
}

impl<'a> Matcher<'a> {
    pub(crate) fn new(filter: &'a Filter, strings: &'a Interner) -> Matcher<'a> {
        Matcher {
            filter,
            strings,
            memo: vec![vec![0; strings.len()]; filter.terms.len()],
        }
    }

    /// Same answer as [`Filter::matches`], for a row stored in the history `strings` is from.
    pub(crate) fn matches(&mut self, row: &CallRow, gateway: &str) -> bool {
        let k = row.keys;
        for (i, term) in self.filter.terms.iter().enumerate() {
            let ok = match term {
                Term::Tool(p) => self.decide(i, k.tool, |s| glob(p, s)),
                Term::Grant(p) => self.decide(i, k.grant, |s| glob(p, s)),
                Term::Server(p) => self.decide(i, k.server, |s| glob(p, s)),
                Term::Rule(p) => self.decide(i, k.rule, |s| glob(p, s)),
                Term::Text(needle) => {
                    let has = |s: &str| contains_ignore_case(s, needle);
                    [k.tool, k.grant, k.server, k.rule, k.reason]
                        .into_iter()
                        .any(|id| self.decide(i, id, has))
                        || has(gateway)
                        || has(&row.call.call_id)
                }
                Term::Gateway(_) | Term::Decision(_) | Term::Shadow(_) => {
                    term_matches(term, row, gateway)
                }
            };
            if !ok {
                return false;
            }
        }
        true
    }

    fn decide(&mut self, term: usize, id: u32, test: impl Fn(&str) -> bool) -> bool {
        let memo = &mut self.memo[term];
        match memo.get(id as usize) {
            Some(1) => false,
            Some(2) => true,
            _ => {
                let yes = test(self.strings.name(id));
                if let Some(slot) = memo.get_mut(id as usize) {
                    *slot = 1 + u8::from(yes);
                }
                yes
            }
        }
    }
}

fn parse_term(word: &str) -> Term {
    let Some((key, value)) = word.split_once(':') else {
        return Term::Text(word.to_lowercase());
    };
    let value = value.to_owned();
    match key.to_ascii_lowercase().as_str() {
        "tool" => Term::Tool(value),
        "grant" => Term::Grant(value),
        "server" => Term::Server(value),
        "gateway" | "gw" => Term::Gateway(value),
        "rule" => Term::Rule(value),
        "shadow" => Term::Shadow(match value.as_str() {
            "" | "*" | "any" => ShadowTerm::Any,
            v => match decision_term(v) {
                Some(DecisionTerm::Verdict(verdict)) => ShadowTerm::Verdict(verdict),
                _ => ShadowTerm::Rule(value),
            },
        }),
        "decision" | "d" => match decision_term(&value) {
            Some(d) => Term::Decision(d),
            None => Term::Text(word.to_lowercase()),
        },
        _ => Term::Text(word.to_lowercase()),
    }
}

fn decision_term(value: &str) -> Option<DecisionTerm> {
    Some(match value.to_ascii_lowercase().as_str() {
        "allow" | "allowed" | "ok" => DecisionTerm::Verdict(Verdict::Allow),
        "deny" | "denied" | "block" | "blocked" => DecisionTerm::Verdict(Verdict::Deny),
        "rate_limited" | "ratelimited" | "limited" | "limit" | "rate" => {
            DecisionTerm::Verdict(Verdict::RateLimited)
        }
        "hold" | "held" => DecisionTerm::Verdict(Verdict::Hold),
        "approved" => DecisionTerm::Approved,
        "rejected" => DecisionTerm::Denied,
        "error" | "failed" => DecisionTerm::Error,
        _ => return None,
    })
}

fn term_matches(term: &Term, row: &CallRow, gateway: &str) -> bool {
    let call = &row.call;
    match term {
        Term::Tool(p) => glob(p, &call.tool),
        Term::Grant(p) => glob(p, &call.grant),
        Term::Server(p) => glob(p, &call.server),
        Term::Gateway(p) => glob(p, gateway),
        Term::Rule(p) => glob(p, &call.rule),
        Term::Decision(DecisionTerm::Verdict(v)) => call.decision == *v,
        Term::Shadow(want) => call.shadow.as_ref().is_some_and(|s| match want {
            ShadowTerm::Any => true,
            ShadowTerm::Verdict(v) => s.decision == *v,
            ShadowTerm::Rule(p) => glob(p, &s.rule),
        }),
        Term::Decision(DecisionTerm::Approved) => {
            row.resolution.as_ref().is_some_and(|r| r.approved)
        }
        Term::Decision(DecisionTerm::Denied) => {
            row.resolution.as_ref().is_some_and(|r| !r.approved)
        }
        Term::Decision(DecisionTerm::Error) => row.outcome.as_ref().is_some_and(|o| o.error),
        Term::Text(needle) => [
            call.tool.as_str(),
            call.grant.as_str(),
            call.server.as_str(),
            gateway,
            call.rule.as_str(),
            call.reason.as_str(),
            call.call_id.as_str(),
        ]
        .iter()
        .any(|hay| contains_ignore_case(hay, needle)),
    }
}

/// Case-insensitive substring test; `needle` is already lowercase. An ASCII needle is
/// searched for byte by byte, without allocating or decoding (ASCII bytes never occur inside
/// a multi-byte UTF-8 sequence): that is what keeps filtering 100,000 calls fast.
fn contains_ignore_case(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    if needle.is_ascii() {
        let (h, n) = (hay.as_bytes(), needle.as_bytes());
        if h.len() < n.len() {
            return false;
        }
        let (lower, upper) = (n[0].to_ascii_lowercase(), n[0].to_ascii_uppercase());
        let rest = &n[1..];
        return (0..=h.len() - n.len()).any(|i| {
            (h[i] == lower || h[i] == upper) && h[i + 1..i + n.len()].eq_ignore_ascii_case(rest)
        });
    }
    hay.to_lowercase().contains(needle)
}

/// Glob match, case-insensitive: `*` matches any run of characters, `?` exactly one.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    if pattern.is_ascii() && text.is_ascii() {
        // The common case, without allocating: what keeps filtering 100,000 calls fast.
        return glob_units(
            pattern.as_bytes(),
            text.as_bytes(),
            |a, b| a.eq_ignore_ascii_case(b),
            b'*',
            b'?',
        );
    }
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let t: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    glob_units(&p, &t, |a, b| a == b, '*', '?')
}

fn glob_units<T: Copy + PartialEq>(
    p: &[T],
    t: &[T],
    eq: impl Fn(&T, &T) -> bool,
    any_run: T,
    any_one: T,
) -> bool {
    // Iterative matcher with one backtrack point: linear in practice, no recursion to blow up
    // on hostile patterns.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] != any_run && (p[pi] == any_one || eq(&p[pi], &t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == any_run {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == any_run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_and_question_marks_ignoring_case() {
        assert!(glob("create_*", "create_api_key"));
        assert!(glob("CREATE_*", "create_api_key"));
        assert!(glob("*_key", "create_api_key"));
        assert!(glob("c?eate*", "create"));
        assert!(glob("*", ""));
        assert!(!glob("create_*", "delete_account"));
        assert!(!glob("create", "create_api_key"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
    }

    #[test]
    fn terms_are_parsed_by_key_and_unknown_keys_become_text() {
        let f = Filter::parse("tool:create_* decision:deny grant:ci foo x:y decision:bogus");
        assert_eq!(
            f.terms,
            vec![
                Term::Decision(DecisionTerm::Verdict(Verdict::Deny)),
                Term::Tool("create_*".into()),
                Term::Grant("ci".into()),
                Term::Text("foo".into()),
                Term::Text("x:y".into()),
                Term::Text("decision:bogus".into()),
            ]
        );
    }

    #[test]
    fn the_memoising_matcher_agrees_with_the_plain_filter() {
        use crate::console::model::history::History;
        let mut h = History::new(100);
        let ts = chrono::Utc::now();
        let tools = [
            "create_api_key",
            "delete_account",
            "list_meetings",
            "Ärger_tool",
        ];
        let verdicts = [
            Verdict::Allow,
            Verdict::Deny,
            Verdict::RateLimited,
            Verdict::Hold,
        ];
        for i in 0..40 {
            let call = crate::wire::CallEvent {
                call_id: format!("gw-{i}").into(),
                tool: tools[i % 4].into(),
                grant: ["ci", "ops"][i % 2].into(),
                session: "s".into(),
                server: "meetings".into(),
                decision: verdicts[i % 4],
                rule: format!("/tools/{}", tools[(i + 1) % 4]).into(),
                reason: ["", "too many", "needs a person"][i % 3].into(),
                args: serde_json::Value::Null.into(),
                args_truncated: false,
                retry_after_ms: None,
                hold_deadline: None,
                shadow: (i % 3 == 0).then(|| {
                    Box::new(crate::wire::ShadowDecision {
                        decision: verdicts[(i + 1) % 4],
                        rule: format!("/tools/{}/deny_if/0", tools[i % 4]),
                        reason: String::new(),
                        source: crate::wire::ShadowSource::Rule,
                    })
                }),
            };
            h.push(CallRow::new(0, ts, call));
        }
        for text in [
            "tool:create_*",
            "decision:deny grant:ci",
            "meeting",
            "person grant:o*",
            "gw-1",
            "rule:*account ärger",
            "nothing-matches",
            "gateway:g*",
            "shadow:",
            "shadow:deny tool:create_*",
            "shadow:/tools/delete*",
        ] {
            let f = Filter::parse(text);
            let mut m = Matcher::new(&f, &h.strings);
            for (_, row) in h.iter() {
                assert_eq!(
                    m.matches(row, "gw"),
                    f.matches(row, "gw"),
                    "{text} on {row:?}"
                );
            }
        }
    }

    #[test]
    fn shadow_selects_calls_with_a_shadow_decision_by_verdict_or_rule() {
        let ts = chrono::Utc::now();
        let row = |shadow: Option<(Verdict, &str)>| {
            let call = crate::wire::CallEvent {
                call_id: "gw-1".into(),
                tool: "get_time".into(),
                grant: "ci".into(),
                session: "s".into(),
                server: "time".into(),
                decision: Verdict::Allow,
                rule: "/default".into(),
                reason: Default::default(),
                args: serde_json::Value::Null.into(),
                args_truncated: false,
                retry_after_ms: None,
                hold_deadline: None,
                shadow: shadow.map(|(decision, rule)| {
                    Box::new(crate::wire::ShadowDecision {
                        decision,
                        rule: rule.into(),
                        reason: "r".into(),
                        source: crate::wire::ShadowSource::Rule,
                    })
                }),
            };
            CallRow::new(0, ts, call)
        };
        let plain = row(None);
        let would_deny = row(Some((Verdict::Deny, "/tools/get_time/deny_if/0")));
        let would_hold = row(Some((Verdict::Hold, "/tools/get_*")));
        let pass = |text: &str, r: &CallRow| Filter::parse(text).matches(r, "gw");
        for text in ["shadow:", "shadow:*", "shadow:any"] {
            assert!(!pass(text, &plain), "{text}");
            assert!(pass(text, &would_deny) && pass(text, &would_hold), "{text}");
        }
        assert!(pass("shadow:deny", &would_deny));
        assert!(!pass("shadow:deny", &would_hold));
        assert!(pass("shadow:held", &would_hold));
        assert!(pass("shadow:/tools/get_time*", &would_deny));
        assert!(!pass("shadow:/tools/get_time*", &would_hold));
        assert!(!pass("shadow:deny", &plain));
    }

    #[test]
    fn free_text_is_case_insensitive_also_beyond_ascii() {
        assert!(contains_ignore_case("Create_API_key", "api"));
        assert!(contains_ignore_case("Ärger", "är"));
        assert!(!contains_ignore_case("abc", "abcd"));
    }
}
