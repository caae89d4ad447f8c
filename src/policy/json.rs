//! A small strict JSON parser that remembers where everything starts.
//!
//! Policy diagnostics must point at the offending value (`FILE:LINE:COL`) and name it with
//! a JSON Pointer, and a key written twice in one object must be an error rather than one
//! rule silently replacing another. `serde_json` gives neither, so the policy text is parsed
//! here into a tree of [`Node`]s that carry the byte offset of every value and key. Offsets
//! become line and column (in characters) only when a diagnostic is made, through
//! [`Locator`].
//!
//! The grammar is RFC 8259 JSON, nothing more: no comments, no trailing commas. A UTF-8
//! byte-order mark at the very start is skipped (some editors write one). Nesting deeper
//! than [`MAX_DEPTH`] is refused, so hostile input cannot exhaust the stack.

/// How deep arrays and objects may nest. Policies need about six levels.
pub(super) const MAX_DEPTH: usize = 128;

/// A JSON value and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Node {
    pub offset: usize,
    pub value: Value,
}

/// A JSON value. Numbers keep their source text so that the reader decides how strict to be.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Node>),
    Object(Vec<Member>),
}

/// One `"key": value` of an object, in source order.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Member {
    pub key: String,
    pub key_offset: usize,
    pub value: Node,
}

/// The text is not JSON; parsing stops at the first such problem.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SyntaxError {
    pub offset: usize,
    pub message: String,
    /// JSON Pointer of the value being read when the problem was found.
    pub pointer: String,
}

/// A key written a second time in one object. The second one is dropped from the tree.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DuplicateKey {
    pub key_offset: usize,
    pub pointer: String,
    pub key: String,
}

/// A parsed document: the root value and the duplicate keys found on the way.
#[derive(Debug)]
pub(super) struct Document {
    pub root: Node,
    pub duplicates: Vec<DuplicateKey>,
}

impl Node {
    /// A short name of the value's type, for messages ("expected a string, found a number").
    pub(super) fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }

    /// Converts to a `serde_json::Value` (for condition values compared against arguments).
    /// Fails on a number `serde_json` cannot represent (such as `1e400`), with its offset.
    pub(super) fn to_serde(&self) -> Result<serde_json::Value, usize> {
        Ok(match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(raw) => {
                // Through serde_json's own number parser: the call arguments compared against
                // these values are read by serde_json, so both sides round alike.
                match raw.parse::<serde_json::Number>() {
                    Ok(n) => serde_json::Value::Number(n),
                    Err(_) => return Err(self.offset),
                }
            }
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Array(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(Node::to_serde)
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Value::Object(members) => {
                let mut map = serde_json::Map::new();
                for m in members {
                    map.insert(m.key.clone(), m.value.to_serde()?);
                }
                serde_json::Value::Object(map)
            }
        })
    }
}

/// Escapes one reference token of a JSON Pointer (RFC 6901: `~` as `~0`, `/` as `~1`).
pub(super) fn escape_token(token: &str) -> String {
    if !token.contains(['~', '/']) {
        return token.to_string();
    }
    token.replace('~', "~0").replace('/', "~1")
}

/// Parses `text` as one JSON document.
pub(super) fn parse(text: &str) -> Result<Document, SyntaxError> {
    let start = if text.starts_with('\u{feff}') { 3 } else { 0 };
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos: start,
        path: Vec::new(),
        duplicates: Vec::new(),
    };
    parser.skip_whitespace();
    if parser.pos >= parser.bytes.len() {
        return Err(parser.error("the file is empty; expected a JSON object like {\"version\": \"1\", \"default\": \"deny\"}"));
    }
    let root = parser.value(0)?;
    parser.skip_whitespace();
    if parser.pos < parser.bytes.len() {
        return Err(parser.error("unexpected text after the end of the JSON document"));
    }
    Ok(Document {
        root,
        duplicates: parser.duplicates,
    })
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Escaped pointer tokens of the value being parsed, for messages and duplicates.
    path: Vec<String>,
    duplicates: Vec<DuplicateKey>,
}

impl Parser<'_> {
    fn pointer(&self) -> String {
        let mut p = String::new();
        for t in &self.path {
            p.push('/');
            p.push_str(t);
        }
        p
    }

    fn error(&self, message: &str) -> SyntaxError {
        self.error_at(self.pos, message.to_string())
    }

    fn error_at(&self, offset: usize, message: String) -> SyntaxError {
        SyntaxError {
            offset,
            message,
            pointer: self.pointer(),
        }
    }

    /// Describes what is at the current position, for "expected X, found Y" messages.
    fn found(&self) -> String {
        match self.text[self.pos..].chars().next() {
            None => "the end of the file".to_string(),
            Some(c) if c.is_control() => format!("control character U+{:04X}", c as u32),
            Some(c) => format!("`{c}`"),
        }
    }

    fn skip_whitespace(&mut self) {
        while let Some(&b) = self.bytes.get(self.pos) {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.error(&format!(
                "values nested more than {MAX_DEPTH} levels deep; a policy never needs that"
            )));
        }
        let offset = self.pos;
        let value = match self.bytes.get(self.pos) {
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => Value::String(self.string()?),
            Some(b't') => self.literal("true", Value::Bool(true))?,
            Some(b'f') => self.literal("false", Value::Bool(false))?,
            Some(b'n') => self.literal("null", Value::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => {
                return Err(self.error_at(
                    offset,
                    format!(
                        "expected a value (object, array, string, number, true, false or null), found {}",
                        self.found()
                    ),
                ));
            }
        };
        Ok(Node { offset, value })
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, SyntaxError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error(&format!(
                "expected a value, found {}; strings need double quotes",
                self.found()
            )))
        }
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let s = p.pos;
            while matches!(p.bytes.get(p.pos), Some(b'0'..=b'9')) {
                p.pos += 1;
            }
            p.pos - s
        };
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.bytes.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.error(&format!("expected a digit, found {}", self.found()))),
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return Err(self.error(&format!(
                    "expected a digit after the decimal point, found {}",
                    self.found()
                )));
            }
        }
        if matches!(self.bytes.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.bytes.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.error(&format!(
                    "expected a digit in the exponent, found {}",
                    self.found()
                )));
            }
        }
        if matches!(self.bytes.get(self.pos), Some(b'0'..=b'9')) {
            return Err(self.error("numbers must not have leading zeros"));
        }
        Ok(Value::Number(self.text[start..self.pos].to_string()))
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.bytes.get(self.pos) {
                Some(b) if b.is_ascii_hexdigit() => (*b as char).to_digit(16).unwrap_or(0),
                _ => {
                    return Err(self.error(&format!(
                        "expected four hex digits after \\u, found {}",
                        self.found()
                    )));
                }
            };
            v = v * 16 + d;
            self.pos += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            // Copy the run of plain characters in one go.
            let run_start = self.pos;
            while let Some(&b) = self.bytes.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.text[run_start..self.pos]);
            match self.bytes.get(self.pos) {
                None => {
                    return Err(self.error_at(
                        open,
                        "this string is never closed; add the closing `\"`".to_string(),
                    ));
                }
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let esc = self.bytes.get(self.pos).copied();
                    self.pos += 1;
                    match esc {
                        Some(b'"') => out.push('"'),
                        Some(b'\\') => out.push('\\'),
                        Some(b'/') => out.push('/'),
                        Some(b'b') => out.push('\u{8}'),
                        Some(b'f') => out.push('\u{c}'),
                        Some(b'n') => out.push('\n'),
                        Some(b'r') => out.push('\r'),
                        Some(b't') => out.push('\t'),
                        Some(b'u') => {
                            let esc_at = self.pos - 2;
                            let first = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&first) {
                                if self.bytes[self.pos..].starts_with(b"\\u") {
                                    self.pos += 2;
                                    let second = self.hex4()?;
                                    if !(0xDC00..0xE000).contains(&second) {
                                        return Err(self.error_at(
                                            esc_at,
                                            "a \\u escape starts a surrogate pair that is not completed".to_string(),
                                        ));
                                    }
                                    0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                                } else {
                                    return Err(self.error_at(
                                        esc_at,
                                        "a \\u escape starts a surrogate pair that is not completed".to_string(),
                                    ));
                                }
                            } else {
                                first
                            };
                            match char::from_u32(code) {
                                Some(c) => out.push(c),
                                None => {
                                    return Err(self.error_at(
                                        esc_at,
                                        "a \\u escape names a lone surrogate, which is not a character".to_string(),
                                    ));
                                }
                            }
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.error_at(
                                self.pos - 1,
                                format!(
                                    "unknown escape `\\{}` in a string; write a backslash as `\\\\`",
                                    self.text[self.pos..].chars().next().unwrap_or(' ')
                                ),
                            ));
                        }
                    }
                }
                Some(_) => {
                    return Err(self.error(&format!(
                        "{} inside a string; write it as an escape such as \\n or \\t",
                        self.found()
                    )));
                }
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.bytes.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_whitespace();
            self.path.push(items.len().to_string());
            let item = self.value(depth + 1);
            self.path.pop();
            items.push(item?);
            self.skip_whitespace();
            match self.bytes.get(self.pos) {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_whitespace();
                    if self.bytes.get(self.pos) == Some(&b']') {
                        return Err(self.error("trailing comma before `]`; remove it"));
                    }
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => {
                    return Err(self.error(&format!(
                        "expected `,` or `]` after an array element, found {}",
                        self.found()
                    )));
                }
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.pos += 1;
        let mut members: Vec<Member> = Vec::new();
        self.skip_whitespace();
        if self.bytes.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_whitespace();
            if self.bytes.get(self.pos) != Some(&b'"') {
                return Err(self.error(&format!(
                    "expected a field name in double quotes, found {}",
                    self.found()
                )));
            }
            let key_offset = self.pos;
            let key = self.string()?;
            self.skip_whitespace();
            if self.bytes.get(self.pos) != Some(&b':') {
                return Err(self.error(&format!(
                    "expected `:` after the field name, found {}",
                    self.found()
                )));
            }
            self.pos += 1;
            self.skip_whitespace();
            self.path.push(escape_token(&key));
            let value = self.value(depth + 1);
            let pointer = self.pointer();
            self.path.pop();
            let value = value?;
            // Objects in a policy are small; a linear scan beats hashing here.
            if members.iter().any(|m| m.key == key) {
                self.duplicates.push(DuplicateKey {
                    key_offset,
                    pointer,
                    key,
                });
            } else {
                members.push(Member {
                    key,
                    key_offset,
                    value,
                });
            }
            self.skip_whitespace();
            match self.bytes.get(self.pos) {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_whitespace();
                    if self.bytes.get(self.pos) == Some(&b'}') {
                        return Err(self.error("trailing comma before `}`; remove it"));
                    }
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                _ => {
                    return Err(self.error(&format!(
                        "expected `,` or `}}` after a field, found {}",
                        self.found()
                    )));
                }
            }
        }
    }
}

/// Turns byte offsets into 1-based line and column (counted in characters).
pub(super) struct Locator<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Locator { text, line_starts }
    }

    pub(super) fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line.saturating_sub(1)];
        // Offsets always fall on character boundaries, but be safe with hostile input.
        let column = self
            .text
            .get(start..offset)
            .map(|s| s.chars().filter(|&c| c != '\u{feff}' || start != 0).count())
            .unwrap_or(offset - start);
        (line.max(1), column + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> Node {
        parse(text).expect("valid JSON").root
    }

    #[test]
    fn records_offsets_of_values_and_keys() {
        let n = root("{\n  \"a\": [1, \"x\"]\n}");
        let Value::Object(m) = &n.value else {
            panic!("object")
        };
        assert_eq!(m[0].key_offset, 4);
        assert_eq!(m[0].value.offset, 9);
        let Value::Array(items) = &m[0].value.value else {
            panic!("array")
        };
        assert_eq!(items[1].offset, 13);
    }

    #[test]
    fn duplicate_keys_are_reported_with_their_pointer_and_dropped() {
        let doc = parse(r#"{"t": {"a/b": 1, "a/b": 2}}"#).unwrap();
        assert_eq!(doc.duplicates.len(), 1);
        assert_eq!(doc.duplicates[0].pointer, "/t/a~1b");
        assert_eq!(doc.duplicates[0].key_offset, 17);
        let Value::Object(m) = &doc.root.value else {
            panic!()
        };
        let Value::Object(inner) = &m[0].value.value else {
            panic!()
        };
        assert_eq!(inner.len(), 1);
        assert_eq!(inner[0].value.value, Value::Number("1".into()));
    }

    #[test]
    fn rejects_what_strict_json_rejects() {
        for bad in [
            "{,}",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            "1e",
            "'x'",
            "\"\\x\"",
            "\"a\nb\"",
            "\"\\ud800\"",
            "{} {}",
            "",
            "tru",
            "{\"a\" 1}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn decodes_escapes_and_surrogate_pairs() {
        let n = root(r#""a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00""#);
        assert_eq!(
            n.value,
            Value::String("a\"\\/\u{8}\u{c}\n\r\t\u{e9}\u{1F600}".into())
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let text = "[".repeat(100_000);
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("nested"));
    }

    #[test]
    fn unterminated_string_points_at_its_opening_quote() {
        let err = parse("{\"a\": \"xyz").unwrap_err();
        assert_eq!(err.offset, 6);
        assert_eq!(err.pointer, "/a");
    }

    #[test]
    fn locator_counts_columns_in_characters() {
        let text = "{\"é\": \n  \"ü\": 1}";
        let loc = Locator::new(text);
        let at = text.find("1}").unwrap();
        assert_eq!(loc.locate(at), (2, 8));
        assert_eq!(loc.locate(0), (1, 1));
    }

    #[test]
    fn pointer_tokens_escape_tilde_and_slash() {
        assert_eq!(escape_token("a~b/c"), "a~0b~1c");
        assert_eq!(escape_token("plain"), "plain");
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e9f64..1e9).prop_map(serde_json::Value::from),
            "\\PC{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::vec(("\\PC{0,6}", inner), 0..6).prop_map(|members| {
                    serde_json::Value::Object(members.into_iter().collect())
                }),
            ]
        })
    }

    /// Every value's offset is where its text starts.
    fn offsets_start_their_values(text: &str, node: &Node) -> bool {
        let first = text.as_bytes().get(node.offset).copied();
        let ok = match &node.value {
            Value::Null => first == Some(b'n'),
            Value::Bool(b) => first == Some(if *b { b't' } else { b'f' }),
            Value::Number(raw) => text[node.offset..].starts_with(raw.as_str()),
            Value::String(_) => first == Some(b'"'),
            Value::Array(_) => first == Some(b'['),
            Value::Object(_) => first == Some(b'{'),
        };
        ok && match &node.value {
            Value::Array(items) => items.iter().all(|n| offsets_start_their_values(text, n)),
            Value::Object(members) => members.iter().all(|m| {
                text.as_bytes().get(m.key_offset) == Some(&b'"')
                    && offsets_start_their_values(text, &m.value)
            }),
            _ => true,
        }
    }

    proptest::proptest! {
        #[test]
        fn reads_what_serde_json_writes_and_knows_where_each_value_starts(v in any_json()) {
            for text in [v.to_string(), serde_json::to_string_pretty(&v).unwrap()] {
                let doc = parse(&text).expect("serde_json output is JSON");
                proptest::prop_assert!(doc.duplicates.is_empty());
                let as_serde_reads: serde_json::Value = serde_json::from_str(&text).unwrap();
                proptest::prop_assert_eq!(doc.root.to_serde().expect("in range"), as_serde_reads);
                proptest::prop_assert!(offsets_start_their_values(&text, &doc.root));
            }
        }
    }
}
