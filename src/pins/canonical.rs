//! RFC 8785, the JSON Canonicalization Scheme (JCS): one byte string per JSON value, so that
//! two servers (or two runs of one) that send the same tool in a different key order, with
//! different whitespace or escapes, get the same fingerprint.
//!
//! What the RFC fixes, and this writes:
//! - object members sorted by their names' UTF-16 code units (not by UTF-8 bytes, nor by
//!   code points: the two differ above U+FFFF);
//! - strings with only `"`, `\` and the C0 controls escaped (`\b \t \n \f \r` in their short
//!   forms, the others as `\u00xx` in lower case), every other character as itself in UTF-8;
//! - numbers as ECMAScript's `Number.prototype.toString` writes the IEEE 754 double: the
//!   shortest digits that read back as the same double, `-0` as `0`, exponents from `1e21`
//!   and below `1e-6`. Integers beyond 2^53 are rounded to a double first, as the RFC (I-JSON)
//!   says numbers are.
//!
//! Numbers are canonicalised as the doubles serde_json read. Without serde_json's
//! `float_roundtrip` feature (this crate does not enable it) a decimal of 17 or more
//! significant digits may be read as a neighbouring double, so two spellings of one number
//! can canonicalise differently (a spurious "changed", failing closed), and two numbers that
//! differ only beyond the 16th digit may read as one (as they do in any double-based JCS).
//!
//! Nesting is capped at [`MAX_DEPTH`] so that a hostile value cannot exhaust the stack.

use std::fmt::Write;

use serde_json::Value;

/// Deepest nesting canonicalised (serde_json's own reader stops at 128).
pub(crate) const MAX_DEPTH: usize = 128;

/// The value nests deeper than [`MAX_DEPTH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the JSON value nests deeper than {MAX_DEPTH} levels")]
pub struct TooDeep;

/// The canonical form of `value`.
pub fn canonical(value: &Value) -> Result<String, TooDeep> {
    let mut out = String::new();
    write_value(value, &mut out, 0)?;
    Ok(out)
}

/// Appends the canonical form of `value` to `out`.
pub(crate) fn write_value(value: &Value, out: &mut String, depth: usize) -> Result<(), TooDeep> {
    if depth > MAX_DEPTH {
        return Err(TooDeep);
    }
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // An integer of at most 2^53 in magnitude is its own shortest form: ECMAScript
        // writes it as plain digits (it is below 1e21), so no float formatting is needed.
        Value::Number(n) if n.as_i64().is_some_and(|i| i.unsigned_abs() <= 1 << 53) => {
            let _ = write!(out, "{}", n.as_i64().unwrap_or(0));
        }
        Value::Number(n) => match n.as_f64() {
            Some(x) => write_number(x, out),
            // Without serde_json's arbitrary precision every number is an i64, a u64 or a
            // finite f64, all of which as_f64 reads.
            None => out.push_str("null"),
        },
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out, depth + 1)?;
            }
            out.push(']');
        }
        Value::Object(map) => write_map(map, out, depth)?,
    }
    Ok(())
}

/// Appends the canonical form of an object at `depth`.
pub(crate) fn write_map(
    map: &serde_json::Map<String, Value>,
    out: &mut String,
    depth: usize,
) -> Result<(), TooDeep> {
    if depth > MAX_DEPTH {
        return Err(TooDeep);
    }
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    members.sort_by(|a, b| utf16_order(a.0, b.0));
    out.push('{');
    for (i, (name, item)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(name, out);
        out.push(':');
        write_value(item, out, depth + 1)?;
    }
    out.push('}');
    Ok(())
}

/// Orders member names by their UTF-16 code units. UTF-8 byte order is the same below U+E000
/// (it is code point order, and UTF-16 differs only where surrogates sort below U+E000..FFFF),
/// so names with no byte from that range's lead bytes on compare as bytes.
fn utf16_order(a: &str, b: &str) -> std::cmp::Ordering {
    // 0xEE and 0xEF lead U+E000..U+FFFF, 0xF0..0xF4 lead U+10000.. (surrogate pairs).
    let plain = |s: &str| !s.bytes().any(|b| b >= 0xEE);
    if plain(a) && plain(b) {
        a.as_bytes().cmp(b.as_bytes())
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// Appends the canonical form of a string.
pub(crate) fn write_string(s: &str, out: &mut String) {
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// ECMAScript's Number::toString for a finite double.
fn write_number(x: f64, out: &mut String) {
    if x == 0.0 || !x.is_finite() {
        // -0 is written as 0; JSON has no infinities or NaN (and serde_json holds none).
        out.push('0');
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` is the shortest round-trip form, `d[.ddd]e<exp>`: it says how many digits
    // ECMAScript's s has (k). Among the k-digit decimals that read back as x, ECMAScript takes
    // the closest to x, and the even one on a tie, which `{:e}` does not always pick
    // (1424953923781206.25 has .2 and .3); `{:.(k-1)e}` rounds x's exact value to k digits,
    // half to even, which is that choice. n = exp + 1.
    let shortest = format!("{:e}", x.abs());
    let k = shortest
        .split_once('e')
        .map_or(shortest.as_str(), |(m, _)| m)
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    let sci = format!("{:.*e}", k.saturating_sub(1), x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let mut digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let k = digits.len() as i64;
    let n = exp.parse::<i64>().unwrap_or(0) + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        let e = n - 1;
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let _ = write!(out, "e{}{}", if e < 0 { '-' } else { '+' }, e.abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(bits: u64) -> String {
        let mut out = String::new();
        write_number(f64::from_bits(bits), &mut out);
        out
    }

    /// RFC 8785 Appendix B: IEEE 754 doubles and their canonical text.
    #[test]
    fn numbers_are_written_as_the_rfc_appendix_says() {
        let cases: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, want) in cases {
            assert_eq!(number(*bits), *want, "{bits:#018x}");
        }
    }

    /// RFC 8785 section 3.2.2's example: numbers, escapes and literals, keys sorted. The
    /// numbers are Rust literals: serde_json (without its `float_roundtrip` feature) may read
    /// a 17-digit decimal as a neighbouring double, which is the reader's rounding, not the
    /// canonical writer's (see the module doc).
    #[test]
    fn the_rfc_example_canonicalises_to_its_published_form() {
        let input = r#"{
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#;
        let mut value: Value = serde_json::from_str(input).expect("the RFC's example is JSON");
        #[allow(clippy::excessive_precision)]
        let numbers = serde_json::json!([
            333333333.33333329,
            1E30,
            4.50,
            2e-3,
            0.000000000000000000000000001
        ]);
        value["numbers"] = numbers;
        assert_eq!(
            canonical(&value).expect("shallow"),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    /// RFC 8785 section 3.2.3: member names sort by UTF-16 code units, so the emoji (a
    /// surrogate pair, D83D) sorts before U+FB33 although its code point is larger.
    #[test]
    fn member_names_sort_by_utf16_code_units() {
        let input = r#"{
            "\u20ac": "Euro Sign",
            "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\ud83d\ude00": "Emoji: Grinning Face",
            "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let value: Value = serde_json::from_str(input).expect("the RFC's example is JSON");
        let text = canonical(&value).expect("shallow");
        let back: serde_json::Map<String, Value> =
            serde_json::from_str(&text).expect("canonical text is JSON");
        let order: Vec<&str> = back.values().filter_map(Value::as_str).collect();
        assert_eq!(
            order,
            [
                "Carriage Return",
                "One",
                "Control",
                "Latin Small Letter O With Diaeresis",
                "Euro Sign",
                "Emoji: Grinning Face",
                "Hebrew Letter Dalet With Dagesh",
            ]
        );
    }

    #[test]
    fn key_order_and_whitespace_do_not_change_the_canonical_form() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1, {"y":2,"x":1}], "a": "s"}"#).expect("json");
        let b: Value =
            serde_json::from_str(r#"{"a":"s","b":[1.0,{"x":1,"y":2.0}]}"#).expect("json");
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(
            canonical(&a).expect("shallow"),
            r#"{"a":"s","b":[1,{"x":1,"y":2}]}"#
        );
    }

    #[test]
    fn nesting_beyond_the_cap_is_refused_not_recursed() {
        let mut deep = Value::Null;
        for _ in 0..=MAX_DEPTH + 1 {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(canonical(&deep), Err(TooDeep));
    }
}
