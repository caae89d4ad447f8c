//! Conditions on a call's arguments (`require` and `deny_if` entries) and how they evaluate.
//!
//! A condition evaluates to true, false or *unknown* ([`Truth`]), and never fails. The rules,
//! which are the policy format's (`policy-format.md`, "Condition"):
//!
//! - A path that does not exist (a key absent from an object, an index past the end of an
//!   array, or `null` on the way) makes every op false except `not_exists`.
//! - Unknown: the op cannot be evaluated on the value that is there (`gt` on an array,
//!   `regex` on a number, `under` on a relative path), or the path runs into a value it
//!   cannot go into (`args.filter.owner` when `filter` is a string). The caller decides what
//!   unknown means: `deny_if` holds, `require` fails. Either way the call is denied, and
//!   [`Unknown`] says why in words (`args.amount is an array; gt compares numbers`).
//! - `eq`, `neq`, `in`, `not_in` compare values of one type: a string with a string, a
//!   boolean with a boolean, arrays and objects member by member. The policy's number also
//!   equals a string that is exactly that JSON number (`"5000"` is 5000, see [`number`]);
//!   a policy value of `null` can be compared with anything and equals only `null`. Any other
//!   pair of types cannot be compared: unknown. Arrays of different lengths or objects with
//!   different keys are not equal (false), whatever their members; otherwise one member not
//!   equal makes them unequal, and one that cannot be compared makes them unknown. `in` is
//!   true when a listed value equals the argument, false when some listed value can be
//!   compared with it, unknown when none can.
//! - `lt`, `lte`, `gt`, `gte` take a number or a string that is exactly a JSON number.
//! - `regex` takes a string; `contains` a string (for a string value) or an array, whose
//!   elements are compared as `eq` does: true when one equals the value, unknown when none
//!   does but one cannot be compared, false otherwise.
//! - `under` takes a string, an absolute path, read lexically (see [`path`]).
//!
//! `docs/policy-conditions.md` is the same reading for people, with a table of every op on
//! every type.
//!
//! [`number`]: super::number
//! [`path`]: super::path

use std::cmp::Ordering;

use regex::Regex;
use serde_json::{Number, Value};

use super::number::{self, NumberText};
use super::path::{PathProblem, Root};

/// The comparison a condition makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Neq,
    In,
    NotIn,
    Lt,
    Lte,
    Gt,
    Gte,
    Regex,
    Contains,
    Exists,
    NotExists,
    Under,
}

impl Op {
    pub(crate) const NAMES: &'static [&'static str] = &[
        "eq",
        "neq",
        "in",
        "not_in",
        "lt",
        "lte",
        "gt",
        "gte",
        "regex",
        "contains",
        "exists",
        "not_exists",
        "under",
    ];

    pub(crate) fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "in" => Op::In,
            "not_in" => Op::NotIn,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "regex" => Op::Regex,
            "contains" => Op::Contains,
            "exists" => Op::Exists,
            "not_exists" => Op::NotExists,
            "under" => Op::Under,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::In => "in",
            Op::NotIn => "not_in",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Regex => "regex",
            Op::Contains => "contains",
            Op::Exists => "exists",
            Op::NotExists => "not_exists",
            Op::Under => "under",
        }
    }
}

/// A validated condition, ready to evaluate.
#[derive(Debug, Clone)]
pub(super) struct Condition {
    /// The path as written (`args.filter.owner`).
    pub path: String,
    /// The segments after `args.`.
    pub segments: Vec<String>,
    pub op: Op,
    /// `Null` for `exists`/`not_exists`.
    pub value: Value,
    /// Compiled when `op` is `regex`.
    pub regex: Option<Regex>,
    /// Normalised when `op` is `under`.
    pub(crate) root: Option<Root>,
}

/// What a condition says about one call's arguments.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Truth {
    True,
    False,
    Unknown(Unknown),
}

impl Truth {
    fn from_bool(b: bool) -> Truth {
        if b { Truth::True } else { Truth::False }
    }

    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            unknown => unknown,
        }
    }
}

/// Why a condition cannot be evaluated: the value at `at` is `found`, and the op `needs`
/// something else. Reads `args.amount is an array; gt compares numbers`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Unknown {
    /// The condition's path, or a path into the value (`args.items.2`).
    pub(crate) at: String,
    /// What is there: `an array`, `a string that is not exactly a JSON number`.
    pub(crate) found: &'static str,
    /// What the op needs: `gt compares numbers`.
    pub(crate) needs: String,
}

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is {}; {}", self.at, self.found, self.needs)
    }
}

impl Unknown {
    /// Any condition on arguments that cannot be read as JSON at all (the gateway refuses
    /// such a call when it arrives; were one decided, its conditions deny).
    pub(crate) fn unreadable() -> Unknown {
        Unknown {
            at: "args".to_owned(),
            found: "not readable as JSON",
            needs: "conditions read a JSON object".to_owned(),
        }
    }

    /// `at` is relative to a value nested under `prefix` (`.2` under `args.items`).
    fn under_prefix(mut self, prefix: &str) -> Unknown {
        self.at.insert_str(0, prefix);
        self
    }
}

/// Where a condition's path leads in the arguments.
enum Found<'v> {
    Value(&'v Value),
    Missing,
    /// The path runs into a value it cannot go into: the segments walked so far, and it.
    Blocked(usize, &'v Value),
}

impl Condition {
    /// True, false or unknown for these arguments. Never panics.
    pub(crate) fn evaluate(&self, args: &Value) -> Truth {
        let actual = match lookup(args, &self.segments) {
            Found::Value(v) => v,
            Found::Missing => return Truth::from_bool(self.op == Op::NotExists),
            Found::Blocked(walked, v) => {
                let at = std::iter::once("args")
                    .chain(self.segments[..walked].iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(".");
                return Truth::Unknown(Unknown {
                    at,
                    found: kind(v),
                    needs: format!("the path {} goes on inside it", self.path),
                });
            }
        };
        let op = self.op.name();
        let truth = match self.op {
            Op::Exists => Truth::True,
            Op::NotExists => Truth::False,
            Op::Eq => equal(actual, &self.value, op),
            Op::Neq => equal(actual, &self.value, op).not(),
            Op::In => is_in(actual, &self.value, op),
            Op::NotIn => is_in(actual, &self.value, op).not(),
            Op::Lt | Op::Lte | Op::Gt | Op::Gte => self.order(actual),
            Op::Regex => match (actual, &self.regex) {
                (Value::String(s), Some(re)) => Truth::from_bool(re.is_match(s)),
                _ => unknown(kind(actual), "regex matches strings".to_string()),
            },
            Op::Contains => contains(actual, &self.value),
            Op::Under => match (actual, &self.root) {
                (Value::String(s), Some(root)) => match root.contains(s) {
                    Ok(inside) => Truth::from_bool(inside),
                    Err(PathProblem::Relative) => unknown(
                        PathProblem::Relative.description(),
                        "under needs an absolute path".to_string(),
                    ),
                    Err(problem) => unknown(
                        problem.description(),
                        "under cannot tell where it leads".to_string(),
                    ),
                },
                _ => unknown(kind(actual), "under needs a string path".to_string()),
            },
        };
        match truth {
            Truth::Unknown(u) => Truth::Unknown(u.under_prefix(&self.path)),
            known => known,
        }
    }

    /// `lt`, `lte`, `gt`, `gte`: the policy's value is a number (checked at load).
    fn order(&self, actual: &Value) -> Truth {
        let needs = || format!("{} compares numbers", self.op.name());
        let Value::Number(limit) = &self.value else {
            return unknown("compared with a value that is not a number", needs());
        };
        let ord = match as_number(actual) {
            Ok(n) => number::compare(&n, limit),
            Err(found) => return unknown(found, needs()),
        };
        Truth::from_bool(match self.op {
            Op::Lt => ord == Ordering::Less,
            Op::Lte => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            _ => ord != Ordering::Less,
        })
    }

    /// The condition in words: `args.amount lte 10000`.
    pub(super) fn describe(&self) -> String {
        match self.op {
            Op::Exists | Op::NotExists => format!("{} {}", self.path, self.op.name()),
            _ => format!("{} {} {}", self.path, self.op.name(), self.value),
        }
    }
}

/// An unknown at the value itself (the caller adds the path).
fn unknown(found: &'static str, needs: String) -> Truth {
    Truth::Unknown(Unknown {
        at: String::new(),
        found,
        needs,
    })
}

/// The type of a value, as messages say it.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A number, or a string that is exactly a JSON number; otherwise what the value is.
fn as_number(v: &Value) -> Result<Number, &'static str> {
    match v {
        Value::Number(n) => Ok(n.clone()),
        Value::String(s) => match number::parse(s) {
            NumberText::Number(n) => Ok(n),
            NumberText::OutOfRange => Err("a string holding a number too large to compare"),
            NumberText::NotANumber => Err("a string that is not exactly a JSON number"),
        },
        other => Err(kind(other)),
    }
}

/// `eq` between the argument and the policy's value (see the module doc).
fn equal(actual: &Value, expected: &Value, op: &str) -> Truth {
    let mismatch = || {
        unknown(
            kind(actual),
            format!("{op} compares it with {}", kind(expected)),
        )
    };
    match (expected, actual) {
        (Value::Null, _) => Truth::from_bool(actual.is_null()),
        (Value::Number(e), _) => match as_number(actual) {
            Ok(a) => Truth::from_bool(number::compare(&a, e) == Ordering::Equal),
            Err(found) => unknown(found, format!("{op} compares it with a number")),
        },
        (Value::String(e), Value::String(a)) => Truth::from_bool(a == e),
        (Value::Bool(e), Value::Bool(a)) => Truth::from_bool(a == e),
        (Value::Array(es), Value::Array(items)) => {
            if es.len() != items.len() {
                return Truth::False;
            }
            all(items
                .iter()
                .zip(es)
                .enumerate()
                .map(|(i, (a, e))| (i.to_string(), equal(a, e, op))))
        }
        (Value::Object(es), Value::Object(members)) => {
            if es.len() != members.len() || es.keys().any(|k| !members.contains_key(k)) {
                return Truth::False;
            }
            all(es.iter().map(|(k, e)| {
                let truth = match members.get(k) {
                    Some(a) => equal(a, e, op),
                    None => Truth::False,
                };
                (k.clone(), truth)
            }))
        }
        _ => mismatch(),
    }
}

/// Every member equal: false if one is not, else unknown if one is unknown.
fn all(results: impl Iterator<Item = (String, Truth)>) -> Truth {
    let mut first_unknown = None;
    for (at, truth) in results {
        match truth {
            Truth::False => return Truth::False,
            Truth::Unknown(u) if first_unknown.is_none() => {
                first_unknown = Some(u.under_prefix(&format!(".{at}")));
            }
            _ => {}
        }
    }
    first_unknown.map_or(Truth::True, Truth::Unknown)
}

/// `in`: one listed value equals the argument; unknown when none can be compared with it.
fn is_in(actual: &Value, list: &Value, op: &str) -> Truth {
    let mut first_unknown = None;
    let mut comparable = false;
    for candidate in as_list(list) {
        match equal(actual, candidate, op) {
            Truth::True => return Truth::True,
            Truth::False => comparable = true,
            Truth::Unknown(u) => {
                first_unknown.get_or_insert(u);
            }
        }
    }
    match first_unknown {
        Some(u) if !comparable => Truth::Unknown(u),
        _ => Truth::False,
    }
}

/// `contains`: a substring of a string, or an element of an array (compared as `eq`).
fn contains(actual: &Value, needle: &Value) -> Truth {
    match (actual, needle) {
        (Value::String(s), Value::String(n)) => Truth::from_bool(s.contains(n.as_str())),
        (Value::String(_), _) => unknown(
            "a string",
            format!("contains looks for {} in arrays only", kind(needle)),
        ),
        (Value::Array(items), _) => {
            let mut first_unknown = None;
            for (i, item) in items.iter().enumerate() {
                match equal(item, needle, "contains") {
                    Truth::True => return Truth::True,
                    Truth::False => {}
                    Truth::Unknown(u) => {
                        first_unknown.get_or_insert_with(|| u.under_prefix(&format!(".{i}")));
                    }
                }
            }
            first_unknown.map_or(Truth::False, Truth::Unknown)
        }
        _ => unknown(
            kind(actual),
            "contains looks in strings and arrays".to_string(),
        ),
    }
}

fn as_list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// Follows `segments` into `args`: object keys by name, array elements by index.
fn lookup<'v>(args: &'v Value, segments: &[String]) -> Found<'v> {
    let mut cur = args;
    for (walked, seg) in segments.iter().enumerate() {
        let next = match cur {
            Value::Object(map) => map.get(seg.as_str()),
            Value::Array(items) => match parse_index(seg) {
                Some(i) => items.get(i),
                None => return Found::Blocked(walked, cur),
            },
            Value::Null => None,
            _ => return Found::Blocked(walked, cur),
        };
        match next {
            Some(v) => cur = v,
            None => return Found::Missing,
        }
    }
    Found::Value(cur)
}

/// An array index as JSON Pointer writes them: digits, no leading zeros.
fn parse_index(seg: &str) -> Option<usize> {
    if seg.is_empty() || (seg.len() > 1 && seg.starts_with('0')) {
        return None;
    }
    if !seg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seg.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(path: &str, op: Op, value: Value) -> Condition {
        let regex = (op == Op::Regex).then(|| Regex::new(value.as_str().unwrap()).unwrap());
        let root = (op == Op::Under).then(|| Root::parse(value.as_str().unwrap()).unwrap());
        Condition {
            path: path.into(),
            segments: path
                .strip_prefix("args.")
                .unwrap()
                .split('.')
                .map(String::from)
                .collect(),
            op,
            value,
            regex,
            root,
        }
    }

    /// One value of every JSON type, and the strings that matter for numbers and paths.
    fn args() -> Value {
        json!({
            "null": null, "bool": true, "int": 5000, "frac": 0.5, "neg0": -0.0,
            "numstr": "5000", "neg0str": "-0", "bigstr": "1e400", "spaced": " 5000",
            "hex": "0x1F4", "lead0": "05000", "plus": "+5000", "inf": "Infinity",
            "text": "hello", "truestr": "true",
            "arr": ["a", 5000], "arr2": ["a", "5000"], "strs": ["x", "y"], "empty": [],
            "obj": {"k": "v"},
            "path": "/home/me/notes/a.txt", "near": "/home/me/notes2", "rel": "notes/a.txt",
            "climb": "/home/me/notes/../../../etc/shadow", "above": "/../home/me/notes"
        })
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum T {
        Yes,
        No,
        Unk,
    }

    fn outcome(t: &Truth) -> T {
        match t {
            Truth::True => T::Yes,
            Truth::False => T::No,
            Truth::Unknown(_) => T::Unk,
        }
    }

    fn check(cases: &[(&str, Op, Value, T)]) {
        let args = args();
        for (path, op, value, want) in cases {
            let c = cond(&format!("args.{path}"), *op, value.clone());
            let got = c.evaluate(&args);
            assert_eq!(outcome(&got), *want, "{} gave {got:?}", c.describe());
        }
    }

    const TYPES: [&str; 8] = [
        "null", "bool", "int", "numstr", "text", "arr", "obj", "path",
    ];

    /// For one op and value, the outcome on each of [`TYPES`].
    fn row(op: Op, value: Value, want: [T; 8]) -> Vec<(&'static str, Op, Value, T)> {
        TYPES
            .iter()
            .zip(want)
            .map(|(path, w)| (*path, op, value.clone(), w))
            .collect()
    }

    #[test]
    fn every_op_on_every_type_is_true_false_or_unknown() {
        use T::*;
        let table = [
            //                                   null bool int  numstr text arr  obj  path
            row(
                Op::Eq,
                json!("hello"),
                [Unk, Unk, Unk, No, Yes, Unk, Unk, No],
            ),
            row(
                Op::Eq,
                json!(5000),
                [Unk, Unk, Yes, Yes, Unk, Unk, Unk, Unk],
            ),
            row(
                Op::Eq,
                json!(true),
                [Unk, Yes, Unk, Unk, Unk, Unk, Unk, Unk],
            ),
            row(Op::Eq, json!(null), [Yes, No, No, No, No, No, No, No]),
            row(
                Op::Eq,
                json!(["a", 5000]),
                [Unk, Unk, Unk, Unk, Unk, Yes, Unk, Unk],
            ),
            row(
                Op::Eq,
                json!({"k": "v"}),
                [Unk, Unk, Unk, Unk, Unk, Unk, Yes, Unk],
            ),
            row(
                Op::Neq,
                json!("hello"),
                [Unk, Unk, Unk, Yes, No, Unk, Unk, Yes],
            ),
            row(Op::Neq, json!(5000), [Unk, Unk, No, No, Unk, Unk, Unk, Unk]),
            row(
                Op::Neq,
                json!(null),
                [No, Yes, Yes, Yes, Yes, Yes, Yes, Yes],
            ),
            row(
                Op::In,
                json!(["hello", 1]),
                [Unk, Unk, No, No, Yes, Unk, Unk, No],
            ),
            row(
                Op::In,
                json!([5000]),
                [Unk, Unk, Yes, Yes, Unk, Unk, Unk, Unk],
            ),
            row(Op::In, json!([]), [No, No, No, No, No, No, No, No]),
            row(
                Op::NotIn,
                json!(["hello", 1]),
                [Unk, Unk, Yes, Yes, No, Unk, Unk, Yes],
            ),
            row(
                Op::NotIn,
                json!([5000]),
                [Unk, Unk, No, No, Unk, Unk, Unk, Unk],
            ),
            row(
                Op::NotIn,
                json!([]),
                [Yes, Yes, Yes, Yes, Yes, Yes, Yes, Yes],
            ),
            row(Op::Lt, json!(1000), [Unk, Unk, No, No, Unk, Unk, Unk, Unk]),
            row(
                Op::Lte,
                json!(5000),
                [Unk, Unk, Yes, Yes, Unk, Unk, Unk, Unk],
            ),
            row(
                Op::Gt,
                json!(1000),
                [Unk, Unk, Yes, Yes, Unk, Unk, Unk, Unk],
            ),
            row(
                Op::Gte,
                json!(5000.5),
                [Unk, Unk, No, No, Unk, Unk, Unk, Unk],
            ),
            row(
                Op::Regex,
                json!("^h|^5|^/"),
                [Unk, Unk, Unk, Yes, Yes, Unk, Unk, Yes],
            ),
            row(
                Op::Regex,
                json!("^z"),
                [Unk, Unk, Unk, No, No, Unk, Unk, No],
            ),
            row(
                Op::Contains,
                json!("ell"),
                [Unk, Unk, Unk, No, Yes, Unk, Unk, No],
            ),
            row(
                Op::Contains,
                json!("a"),
                [Unk, Unk, Unk, No, No, Yes, Unk, Yes],
            ),
            row(
                Op::Contains,
                json!(5000),
                [Unk, Unk, Unk, Unk, Unk, Yes, Unk, Unk],
            ),
            row(
                Op::Exists,
                Value::Null,
                [Yes, Yes, Yes, Yes, Yes, Yes, Yes, Yes],
            ),
            row(Op::NotExists, Value::Null, [No, No, No, No, No, No, No, No]),
            row(
                Op::Under,
                json!("/home/me/notes"),
                [Unk, Unk, Unk, Unk, Unk, Unk, Unk, Yes],
            ),
        ];
        for r in &table {
            check(r);
        }
    }

    #[test]
    fn strings_that_are_exactly_json_numbers_compare_as_numbers() {
        use T::*;
        check(&[
            ("numstr", Op::Gt, json!(1000), Yes),
            ("numstr", Op::Lte, json!(1000), No),
            ("numstr", Op::Eq, json!(5000.0), Yes),
            ("numstr", Op::In, json!([1, 5000]), Yes),
            ("numstr", Op::NotIn, json!([5000]), No),
            ("neg0str", Op::Eq, json!(0), Yes),
            ("neg0str", Op::Lt, json!(0), No),
            ("neg0", Op::Gte, json!(0), Yes),
            ("arr2", Op::Eq, json!(["a", 5000]), Yes),
            ("arr2", Op::Contains, json!(5000), Yes),
            // Strings a server might coerce but that are not exactly a JSON number: unknown,
            // so deny_if denies and require fails, whatever the server would make of them.
            ("bigstr", Op::Gt, json!(1000), Unk),
            ("bigstr", Op::Lt, json!(1000), Unk),
            ("spaced", Op::Gt, json!(1000), Unk),
            ("hex", Op::Gt, json!(1000), Unk),
            ("lead0", Op::Eq, json!(5000), Unk),
            ("plus", Op::Gte, json!(0), Unk),
            ("inf", Op::Gt, json!(1000), Unk),
            ("text", Op::Lt, json!(1000), Unk),
            ("truestr", Op::Eq, json!(true), Unk),
            // Only the policy's numbers coerce: a number is not compared with a string.
            ("int", Op::Eq, json!("5000"), Unk),
        ]);
    }

    #[test]
    fn members_compare_one_by_one_and_a_difference_beats_an_unknown() {
        use T::*;
        check(&[
            ("arr", Op::Eq, json!(["a"]), No),
            ("arr", Op::Eq, json!([["a"], 5000]), Unk),
            ("arr", Op::Eq, json!([["a"], 1]), No),
            ("obj", Op::Eq, json!({"k": "w"}), No),
            ("obj", Op::Eq, json!({"j": "v"}), No),
            ("obj", Op::Eq, json!({"k": 1}), Unk),
            ("strs", Op::Contains, json!("y"), Yes),
            ("strs", Op::Contains, json!("z"), No),
            ("arr", Op::Contains, json!("b"), Unk),
            ("empty", Op::Contains, json!("a"), No),
        ]);
    }

    #[test]
    fn under_reads_paths_lexically_and_refuses_what_it_cannot_place() {
        use T::*;
        let notes = json!("/home/me/notes");
        check(&[
            ("path", Op::Under, notes.clone(), Yes),
            ("near", Op::Under, notes.clone(), No),
            ("climb", Op::Under, notes.clone(), No),
            ("climb", Op::Under, json!("/etc"), Yes),
            ("rel", Op::Under, notes.clone(), Unk),
            ("above", Op::Under, notes.clone(), Unk),
        ]);
    }

    #[test]
    fn a_missing_path_makes_every_op_false_but_not_exists() {
        let args = args();
        for name in Op::NAMES {
            let op = Op::parse(name).unwrap();
            let value = match op {
                Op::In | Op::NotIn => json!([1]),
                Op::Regex => json!("."),
                Op::Under => json!("/"),
                _ => json!(1),
            };
            for path in [
                "args.missing",
                "args.missing.deeper",
                "args.arr.7",
                "args.null.x",
            ] {
                let c = cond(path, op, value.clone());
                let want = if op == Op::NotExists { T::Yes } else { T::No };
                assert_eq!(outcome(&c.evaluate(&args)), want, "{name} {path}");
            }
        }
    }

    #[test]
    fn a_path_that_runs_into_a_value_it_cannot_enter_is_unknown_for_every_op() {
        let args = args();
        for name in Op::NAMES {
            let op = Op::parse(name).unwrap();
            let value = match op {
                Op::In | Op::NotIn => json!([1]),
                Op::Regex => json!("."),
                Op::Under => json!("/"),
                _ => json!(1),
            };
            for path in ["args.text.x", "args.int.0", "args.arr.x", "args.obj.k.z"] {
                let c = cond(path, op, value.clone());
                assert_eq!(outcome(&c.evaluate(&args)), T::Unk, "{name} {path}");
            }
        }
        let got = cond("args.obj.k.z", Op::Eq, json!(1)).evaluate(&args);
        let Truth::Unknown(u) = got else {
            panic!("unknown expected, got {got:?}")
        };
        assert_eq!(
            u.to_string(),
            "args.obj.k is a string; the path args.obj.k.z goes on inside it"
        );
    }

    #[test]
    fn unknown_says_what_the_value_is_and_what_the_op_needs() {
        let args = json!({
            "amount": [1], "s": "12abc", "big": "1e400", "to": ["x"], "memo": 7,
            "tags": ["a", {"b": 1}], "p": "notes", "q": "/a/\\b", "o": {"x": 1}
        });
        let cases = [
            (
                cond("args.amount", Op::Gt, json!(1000)),
                "args.amount is an array; gt compares numbers",
            ),
            (
                cond("args.s", Op::Lte, json!(1)),
                "args.s is a string that is not exactly a JSON number; lte compares numbers",
            ),
            (
                cond("args.big", Op::Gt, json!(1)),
                "args.big is a string holding a number too large to compare; gt compares numbers",
            ),
            (
                cond("args.to", Op::Eq, json!("x")),
                "args.to is an array; eq compares it with a string",
            ),
            (
                cond("args.to", Op::In, json!(["x"])),
                "args.to is an array; in compares it with a string",
            ),
            (
                cond("args.memo", Op::Regex, json!("x")),
                "args.memo is a number; regex matches strings",
            ),
            (
                cond("args.tags", Op::Contains, json!("z")),
                "args.tags.1 is an object; contains compares it with a string",
            ),
            (
                cond("args.s", Op::Contains, json!(1)),
                "args.s is a string; contains looks for a number in arrays only",
            ),
            (
                cond("args.o", Op::Contains, json!(1)),
                "args.o is an object; contains looks in strings and arrays",
            ),
            (
                cond("args.memo", Op::Under, json!("/")),
                "args.memo is a number; under needs a string path",
            ),
            (
                cond("args.p", Op::Under, json!("/")),
                "args.p is a relative path; under needs an absolute path",
            ),
            (
                cond("args.q", Op::Under, json!("/")),
                "args.q is a path holding a backslash; under cannot tell where it leads",
            ),
            (
                cond("args.o", Op::Eq, json!({"x": "1"})),
                "args.o.x is a number; eq compares it with a string",
            ),
        ];
        for (c, want) in cases {
            match c.evaluate(&args) {
                Truth::Unknown(u) => assert_eq!(u.to_string(), want),
                other => panic!("{} gave {other:?}, not unknown", c.describe()),
            }
        }
    }

    #[test]
    fn array_indexes_must_be_canonical() {
        let args = json!({"a": [1, 2]});
        assert_eq!(
            cond("args.a.1", Op::Eq, json!(2)).evaluate(&args),
            Truth::True
        );
        assert_eq!(
            outcome(&cond("args.a.01", Op::Exists, Value::Null).evaluate(&args)),
            T::Unk
        );
        assert_eq!(
            cond("args.a.2", Op::Exists, Value::Null).evaluate(&args),
            Truth::False
        );
    }

    #[test]
    fn every_op_name_parses_back_to_itself() {
        for name in Op::NAMES {
            assert_eq!(Op::parse(name).map(Op::name), Some(*name));
        }
        assert!(Op::NAMES.contains(&"under"));
    }

    fn numeric_op() -> impl proptest::strategy::Strategy<Value = Op> {
        proptest::sample::select(vec![
            Op::Eq,
            Op::Neq,
            Op::Lt,
            Op::Lte,
            Op::Gt,
            Op::Gte,
            Op::In,
            Op::NotIn,
        ])
    }

    fn any_number() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            proptest::num::f64::NORMAL.prop_map(Value::from),
            (-3i64..3).prop_map(Value::from),
        ]
    }

    proptest::proptest! {
        /// Quoting a number never changes what a numeric condition says about it: a server
        /// that coerces `"5000"` gets the verdict 5000 gets.
        #[test]
        fn a_quoted_number_is_judged_as_the_number(
            op in numeric_op(),
            actual in any_number(),
            limit in any_number(),
        ) {
            let value = match op {
                Op::In | Op::NotIn => json!([limit]),
                _ => limit,
            };
            let c = cond("args.v", op, value);
            // Both as the gateway reads a call: from text, by serde_json.
            let quoted: Value = serde_json::from_str(&format!(r#"{{"v": "{actual}"}}"#)).unwrap();
            let bare: Value = serde_json::from_str(&format!(r#"{{"v": {actual}}}"#)).unwrap();
            proptest::prop_assert_eq!(c.evaluate(&quoted), c.evaluate(&bare), "{}", c.describe());
        }
    }
}
