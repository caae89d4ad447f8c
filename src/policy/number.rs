//! Numbers in conditions: exact comparison, and which strings count as numbers.
//!
//! Servers coerce: JavaScript's `Number("5000")` and Python's `int("5000")` both give 5000, so
//! a policy that compares numbers must read `"5000"` as 5000 too. But coercions disagree at
//! the edges (`Number(" 5e3 ")`, `Number("0x10")`, `int("1_000")`, `parseInt("5000abc")`,
//! `float("inf")`), so only a string that is *exactly* a JSON number (RFC 8259: `-?`, then
//! `0` or a digit 1–9 and more digits, an optional `.digits`, an optional `e`/`E`, sign and
//! digits; nothing before or after) is read as one. Every other string is not comparable with
//! a number: the condition is unknown and fails closed, whatever a server would make of it.
//! A number string too large for a double (`"1e400"`, which JavaScript reads as Infinity) is
//! unknown as well.
//!
//! Integers compare exactly (no rounding through `f64` around 2^53); an integer and a
//! fraction compare by exact value too. `-0` equals `0`.

use std::cmp::Ordering;

use serde_json::Number;

/// What a string holds, for comparisons with a number.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NumberText {
    /// Exactly a JSON number, in range.
    Number(Number),
    /// Exactly a JSON number, too large to represent.
    OutOfRange,
    /// Anything else.
    NotANumber,
}

/// Reads `text` as a JSON number if, and only if, it is exactly one.
pub(crate) fn parse(text: &str) -> NumberText {
    if !is_json_number(text.as_bytes()) {
        return NumberText::NotANumber;
    }
    match text.parse::<Number>() {
        Ok(n) if n.as_f64().is_some_and(f64::is_finite) => NumberText::Number(n),
        _ => NumberText::OutOfRange,
    }
}

/// RFC 8259's `number` production, whole.
fn is_json_number(b: &[u8]) -> bool {
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// The exact order of two JSON numbers.
pub(crate) fn compare(a: &Number, b: &Number) -> Ordering {
    match (integer(a), integer(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(x), None) => compare_integer_float(x, float(b)),
        (None, Some(y)) => compare_integer_float(y, float(a)).reverse(),
        // Finite doubles are totally ordered by partial_cmp, and -0 equals 0.
        (None, None) => float(a).partial_cmp(&float(b)).unwrap_or(Ordering::Equal),
    }
}

fn integer(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// serde_json only makes finite numbers; 0 is never used for a real one.
fn float(n: &Number) -> f64 {
    n.as_f64().unwrap_or(0.0)
}

/// `i` against `f`, exactly. Rounding `i` to a double is monotonic, so a strict order between
/// the rounded value and `f` is the true order; when they are equal, `f` is a whole number
/// within i128's range and the two compare as integers.
fn compare_integer_float(i: i128, f: f64) -> Ordering {
    let rounded = i as f64;
    if rounded < f {
        Ordering::Less
    } else if rounded > f {
        Ordering::Greater
    } else {
        i.cmp(&(f as i128))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(text: &str) -> Number {
        text.parse().expect("a number")
    }

    #[test]
    fn only_exact_json_numbers_are_read_as_numbers() {
        for yes in [
            "0",
            "-0",
            "5000",
            "-12",
            "0.5",
            "-0.0",
            "1e3",
            "1E3",
            "1e+3",
            "1e-3",
            "2.5E-10",
            "12345678901234567890123",
        ] {
            assert!(matches!(parse(yes), NumberText::Number(_)), "{yes:?}");
        }
        for no in [
            "",
            "-",
            "+5",
            " 5",
            "5 ",
            "5\n",
            "05",
            "-05",
            "00",
            "5.",
            ".5",
            "1e",
            "1e+",
            "0x10",
            "0b1",
            "0o7",
            "1_000",
            "1,000",
            "NaN",
            "nan",
            "Infinity",
            "-Infinity",
            "inf",
            "5000abc",
            "５０００",
            "٥",
            "1.0.0",
            "--1",
            "1e3.5",
            "\u{200b}5",
            "5e3 ",
            "true",
        ] {
            assert_eq!(parse(no), NumberText::NotANumber, "{no:?}");
        }
        assert_eq!(parse("1e400"), NumberText::OutOfRange);
        assert_eq!(parse("-1e400"), NumberText::OutOfRange);
        assert_eq!(parse(&"9".repeat(400)), NumberText::OutOfRange);
    }

    #[test]
    fn numbers_compare_by_exact_value() {
        use Ordering::*;
        let cases: &[(&str, &str, Ordering)] = &[
            ("5000", "1000", Greater),
            ("1", "1.0", Equal),
            ("-0", "0", Equal),
            ("-0.0", "0", Equal),
            ("-0.0", "0.0", Equal),
            ("0.1", "0.1", Equal),
            ("1e3", "1000", Equal),
            ("9007199254740993", "9007199254740992", Greater),
            ("9007199254740993", "9007199254740992.0", Greater),
            ("9007199254740992.0", "9007199254740993", Less),
            ("18446744073709551615", "18446744073709551614", Greater),
            ("18446744073709551615", "-9223372036854775808", Greater),
            ("-1", "18446744073709551615", Less),
            ("1e300", "18446744073709551615", Greater),
            ("-1e300", "-9223372036854775808", Less),
            ("2.5", "2", Greater),
            ("-2.5", "-2", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(&n(a), &n(b)), *want, "{a} vs {b}");
            assert_eq!(compare(&n(b), &n(a)), want.reverse(), "{b} vs {a}");
        }
    }

    proptest::proptest! {
        /// The grammar agrees with RFC 8259's `number` written as a regex, on strings made of
        /// the characters that matter.
        #[test]
        fn the_grammar_is_rfc_8259s_number(text in "[-+0-9.eE x]{0,8}") {
            let rfc = regex::Regex::new(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$")
                .expect("the oracle compiles");
            proptest::prop_assert_eq!(is_json_number(text.as_bytes()), rfc.is_match(&text));
        }

        /// A number in a string reads as the same number unquoted does (serde_json reads the
        /// call's arguments and the policy's values), so `"0.1"` and `0.1` are equal.
        #[test]
        fn a_number_in_a_string_reads_as_the_same_number_unquoted(
            i in proptest::num::i64::ANY,
            u in proptest::num::u64::ANY,
            f in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO,
        ) {
            for number in [Number::from(i), Number::from(u), Number::from_f64(f).expect("finite")] {
                let text = number.to_string();
                let unquoted: Number = serde_json::from_str(&text).expect("serde_json reads its own");
                match parse(&text) {
                    NumberText::Number(quoted) => proptest::prop_assert_eq!(
                        compare(&quoted, &unquoted),
                        Ordering::Equal,
                        "{}",
                        text
                    ),
                    other => proptest::prop_assert!(false, "{} read as {:?}", text, other),
                }
            }
        }
    }
}
