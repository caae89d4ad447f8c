//! Conditions on a call's arguments (`require` and `deny_if` entries) and how they evaluate.
//!
//! Evaluation never fails: a path that does not exist makes every op false except
//! `not_exists`, and a type mismatch (`lt` on a string, `regex` on a number) is false.
//! `eq`/`neq`/`in`/`not_in`/`contains` compare JSON values structurally, numbers by value
//! (`1` equals `1.0`). `neq` and `not_in` on a present value of another type are true (the
//! values are not equal); on a missing path they are false, like every op but `not_exists`.

use regex::Regex;
use serde_json::Value;

/// The comparison a condition makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
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
}

impl Op {
    pub const NAMES: &'static [&'static str] = &[
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
    ];

    pub fn parse(name: &str) -> Option<Op> {
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
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
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
        }
    }
}

/// A validated condition, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The path as written (`args.filter.owner`).
    pub path: String,
    /// The segments after `args.`.
    pub segments: Vec<String>,
    pub op: Op,
    /// `Null` for `exists`/`not_exists`.
    pub value: Value,
    /// Compiled when `op` is `regex`.
    pub regex: Option<Regex>,
}

impl Condition {
    /// Whether the condition holds for these arguments.
    pub fn holds(&self, args: &Value) -> bool {
        let found = lookup(args, &self.segments);
        let Some(actual) = found else {
            return self.op == Op::NotExists;
        };
        match self.op {
            Op::Exists => true,
            Op::NotExists => false,
            Op::Eq => json_eq(actual, &self.value),
            Op::Neq => !json_eq(actual, &self.value),
            Op::In => as_list(&self.value).any(|v| json_eq(actual, v)),
            Op::NotIn => !as_list(&self.value).any(|v| json_eq(actual, v)),
            Op::Lt | Op::Lte | Op::Gt | Op::Gte => match (actual.as_f64(), self.value.as_f64()) {
                (Some(a), Some(b)) => match self.op {
                    Op::Lt => a < b,
                    Op::Lte => a <= b,
                    Op::Gt => a > b,
                    _ => a >= b,
                },
                _ => false,
            },
            Op::Regex => match (actual, &self.regex) {
                (Value::String(s), Some(re)) => re.is_match(s),
                _ => false,
            },
            Op::Contains => match (actual, &self.value) {
                (Value::String(s), Value::String(needle)) => s.contains(needle.as_str()),
                (Value::Array(items), v) => items.iter().any(|i| json_eq(i, v)),
                _ => false,
            },
        }
    }

    /// The condition in words: `args.amount lte 10000`.
    pub fn describe(&self) -> String {
        match self.op {
            Op::Exists | Op::NotExists => format!("{} {}", self.path, self.op.name()),
            _ => format!("{} {} {}", self.path, self.op.name(), self.value),
        }
    }
}

fn as_list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// Follows `segments` into `args`: object keys by name, array elements by index.
fn lookup<'v>(args: &'v Value, segments: &[String]) -> Option<&'v Value> {
    let mut cur = args;
    for seg in segments {
        cur = match cur {
            Value::Object(map) => map.get(seg.as_str())?,
            Value::Array(items) => items.get(parse_index(seg)?)?,
            _ => return None,
        };
    }
    Some(cur)
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

/// Structural equality with numbers compared by value.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(path: &str, op: Op, value: Value) -> Condition {
        let regex = (op == Op::Regex).then(|| Regex::new(value.as_str().unwrap()).unwrap());
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
        }
    }

    #[test]
    fn every_op_on_matching_and_mismatching_values() {
        let args =
            json!({"n": 5, "s": "hello world", "a": ["x", 2], "o": {"k": [10, {"z": true}]}});
        let cases: &[(&str, Op, Value, bool)] = &[
            ("args.n", Op::Eq, json!(5), true),
            ("args.n", Op::Eq, json!(5.0), true),
            ("args.n", Op::Eq, json!("5"), false),
            ("args.n", Op::Neq, json!(6), true),
            ("args.n", Op::Neq, json!(5), false),
            ("args.s", Op::In, json!(["a", "hello world"]), true),
            ("args.s", Op::In, json!(["a"]), false),
            ("args.s", Op::NotIn, json!(["a"]), true),
            ("args.s", Op::NotIn, json!(["hello world"]), false),
            ("args.n", Op::Lt, json!(6), true),
            ("args.n", Op::Lt, json!(5), false),
            ("args.n", Op::Lte, json!(5), true),
            ("args.n", Op::Lte, json!(4.5), false),
            ("args.n", Op::Gt, json!(4), true),
            ("args.n", Op::Gt, json!(5), false),
            ("args.n", Op::Gte, json!(5), true),
            ("args.n", Op::Gte, json!(5.5), false),
            ("args.s", Op::Lt, json!(6), false),
            ("args.s", Op::Regex, json!("wor"), true),
            ("args.s", Op::Regex, json!("^wor"), false),
            ("args.n", Op::Regex, json!("5"), false),
            ("args.s", Op::Contains, json!("lo w"), true),
            ("args.s", Op::Contains, json!("xyz"), false),
            ("args.a", Op::Contains, json!(2), true),
            ("args.a", Op::Contains, json!("y"), false),
            ("args.n", Op::Contains, json!(5), false),
            ("args.o.k.1.z", Op::Eq, json!(true), true),
            ("args.o.k.0", Op::Exists, Value::Null, true),
            ("args.o.k.2", Op::Exists, Value::Null, false),
            ("args.o.k.2", Op::NotExists, Value::Null, true),
            ("args.n", Op::NotExists, Value::Null, false),
        ];
        for (path, op, value, want) in cases {
            let c = cond(path, *op, value.clone());
            assert_eq!(c.holds(&args), *want, "{}", c.describe());
        }
    }

    #[test]
    fn a_missing_path_makes_every_op_false_but_not_exists() {
        let args = json!({"a": 1});
        for name in Op::NAMES {
            let op = Op::parse(name).unwrap();
            let value = match op {
                Op::In | Op::NotIn => json!([1]),
                Op::Regex => json!("."),
                _ => json!(1),
            };
            let c = cond("args.missing.deeper", op, value);
            assert_eq!(c.holds(&args), op == Op::NotExists, "{name}");
        }
    }

    #[test]
    fn array_indexes_must_be_canonical() {
        let args = json!({"a": [1, 2]});
        assert!(cond("args.a.1", Op::Eq, json!(2)).holds(&args));
        assert!(!cond("args.a.01", Op::Exists, Value::Null).holds(&args));
        assert!(!cond("args.a.x", Op::Exists, Value::Null).holds(&args));
    }
}
