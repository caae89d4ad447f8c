//! The one pass [`super::parse`] makes over a line: it checks that the text is JSON every
//! parser reads alike and, in the same walk, notes where the members the gateway reads are,
//! borrowing them from the line. No tree is built and no value is decoded except object keys
//! that contain escapes (so `"n\u0061me"` is `name`, for duplicates and for the members).
//!
//! It accepts exactly what `serde_json` accepts (the same grammar, the same nesting limit of
//! 127 levels, the same numbers out of range, the same string escapes, lone surrogates
//! refused), and refuses in addition an object with a key twice at any depth, compared after
//! decoding. The tests hold it to a `serde_json` reference on random and adversarial input.

use std::borrow::Cow;

/// `serde_json`'s nesting limit: a 128th level of arrays or objects is refused.
const MAX_DEPTH: u32 = 128;

/// Keys of one object compared with each other in place; an object with more is checked by
/// sorting, so a huge object costs `n log n`, never `n²`.
const INLINE_KEYS: usize = 8;

/// Integers with more digits than this may be beyond `f64` (about 1.8e308): those, and every
/// number with an exponent, are checked by `serde_json` itself, so the range is its own.
const SURELY_IN_RANGE_DIGITS: usize = 300;

/// The members of a message the gateway reads, as the JSON text of their values (strings
/// with their quotes). A member that is absent is `None`.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Found<'a> {
    pub id: Option<&'a str>,
    pub method: Option<&'a str>,
    pub params: Option<&'a str>,
    pub result: Option<&'a str>,
    pub error: Option<&'a str>,
    /// Members of `params`, when it is an object.
    pub params_members: ParamsMembers<'a>,
    /// Members of `result`, when it is an object.
    pub result_members: ResultMembers<'a>,
}

/// The members of an answer's `result` object that a `tools/call`'s outcome is read from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResultMembers<'a> {
    pub is_error: Option<&'a str>,
    pub result_type: Option<&'a str>,
    pub content: Option<&'a str>,
    /// The first element of `content`, when it is an array.
    pub first_content: Option<&'a str>,
    /// The `text` member of that element, when it is an object.
    pub first_text: Option<&'a str>,
}

/// The members of a request's `params` object that a `tools/call` is read from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParamsMembers<'a> {
    pub name: Option<&'a str>,
    pub arguments: Option<&'a str>,
    pub meta: Option<&'a str>,
    pub input_responses: Option<&'a str>,
    pub request_state: Option<&'a str>,
}

/// Whose members an object's keys are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The message itself.
    Top,
    /// The message's `params`.
    Params,
    /// The message's `result`.
    Result,
    /// The elements of `result.content`.
    Content,
    /// The first element of `result.content`.
    FirstContent,
    /// Anything deeper: only checked.
    Inside,
}

/// Checks `text` (already known to be UTF-8) and notes the members of its top-level object.
/// Returns the first non-whitespace byte (what kind of value it is) with the members found.
pub(super) fn scan(text: &str) -> Result<(u8, Found<'_>), String> {
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        i: 0,
        found: Found::default(),
        refused: Refused { what: "", at: 0 },
        twice: None,
    };
    s.ws();
    let first = s.peek().unwrap_or(0);
    let scanned = match s.value(0, Place::Top) {
        Ok(()) => s.end(),
        Err(stop) => Err(stop),
    };
    if scanned.is_ok() {
        return Ok((first, s.found));
    }
    let Refused { what, at } = s.refused;
    Err(match s.twice {
        Some(key) => {
            format!("duplicate key {key:?} (parsers disagree on which one counts) (byte {at})")
        }
        None => format!("{what} (byte {at})"),
    })
}

/// Why a text was refused, and where; made into a message only once, at the end.
#[derive(Debug, Clone, Copy)]
struct Refused {
    what: &'static str,
    at: usize,
}

/// The walk stopped at a refusal, which [`Scanner::refused`] holds. Zero-sized, so every
/// step's `Result` is a flag in a register rather than a value written through memory.
#[derive(Debug, Clone, Copy)]
struct Stop;

/// What each step of the walk returns.
type Step<T = ()> = Result<T, Stop>;

/// How many bytes at the start of `bytes` a JSON string holds as they are: none of them is
/// `"`, `\` or a control character (every other byte, those of multi-byte characters
/// included, needs no attention). Eight bytes at a time: this is most of a line's walk, and
/// of writing an audit record's strings.
#[inline]
pub(crate) fn plain_prefix(bytes: &[u8]) -> usize {
    let word = |chunk: &[u8]| u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or_default());
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let special = special_bytes(word(chunk));
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    if i == bytes.len() {
        return i;
    }
    // Fewer than eight bytes left. With eight or more in all, the last eight are read as one
    // word: those before `i` are plain already, so the first flagged byte is at `i` or after.
    if let Some(last) = bytes.len().checked_sub(8)
        && let Some(chunk) = bytes.get(last..)
    {
        return match special_bytes(word(chunk)) {
            0 => bytes.len(),
            special => last + (special.trailing_zeros() / 8) as usize,
        };
    }
    let mut j = i;
    while let Some(&c) = bytes.get(j) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        j += 1;
    }
    j
}

/// The high bit of each byte of `word` (eight bytes of text, the first lowest) that is `"`,
/// `\` or a control character. A flag can be wrong only above a right one (a borrow moves
/// up), so only the lowest flag may be read.
#[inline(always)]
fn special_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\'))) | control
}

/// The decoded text of a JSON string value (`raw` with its quotes), borrowed when it has no
/// escapes; `None` when `raw` is not a string. Only for text [`scan`] accepted.
pub(super) fn string_value(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    found: Found<'a>,
    /// Why and where the walk stopped, once a step returned [`Stop`].
    refused: Refused,
    /// The key found twice, when that is why the text is refused.
    twice: Option<String>,
}

/// An object key as written (between its quotes), and whether it has escapes.
#[derive(Clone, Copy)]
struct Key<'a> {
    raw: &'a str,
    escaped: bool,
}

impl<'a> Key<'a> {
    #[inline]
    fn decoded(self) -> Cow<'a, str> {
        if !self.escaped {
            return Cow::Borrowed(self.raw);
        }
        decode_inner(self.raw)
    }

    #[inline]
    fn same(self, other: Key<'a>) -> bool {
        if !self.escaped && !other.escaped {
            let (a, b) = (self.raw.as_bytes(), other.raw.as_bytes());
            // Most keys of one object differ in length or in their first or last byte:
            // settled without a call to `memcmp`.
            return a.len() == b.len() && a.first() == b.first() && a.last() == b.last() && a == b;
        }
        self.decoded() == other.decoded()
    }
}

/// Decodes the inside of a string [`Scanner::string`] accepted.
fn decode_inner(inner: &str) -> Cow<'_, str> {
    // Accepted strings always decode; an empty key is only a fallback that cannot happen.
    let quoted = format!("\"{inner}\"");
    Cow::Owned(serde_json::from_str::<String>(&quoted).unwrap_or_default())
}

/// The keys of one object, for the duplicate check.
struct Keys<'a> {
    few: [Option<Key<'a>>; INLINE_KEYS],
    held: usize,
    many: Vec<Cow<'a, str>>,
}

impl<'a> Keys<'a> {
    fn new() -> Keys<'a> {
        Keys {
            few: [None; INLINE_KEYS],
            held: 0,
            many: Vec::new(),
        }
    }

    /// Adds a key; whether it is one of the first few already held (a duplicate).
    #[inline]
    fn push(&mut self, key: Key<'a>) -> bool {
        if !self.many.is_empty() {
            self.many.push(key.decoded());
            return false;
        }
        if self.few[..self.held].iter().flatten().any(|k| k.same(key)) {
            return true;
        }
        if self.held < INLINE_KEYS {
            self.few[self.held] = Some(key);
            self.held += 1;
        } else {
            self.many
                .extend(self.few.iter().flatten().map(|k| k.decoded()));
            self.many.push(key.decoded());
        }
        false
    }

    /// The duplicate among many keys, if any.
    #[inline]
    fn finish(&mut self) -> Option<Cow<'a, str>> {
        match self.many.is_empty() {
            true => None,
            false => self.sorted_duplicate(),
        }
    }

    #[cold]
    fn sorted_duplicate(&mut self) -> Option<Cow<'a, str>> {
        self.many.sort_unstable();
        self.many
            .windows(2)
            .find(|w| w[0] == w[1])
            .map(|twice| twice[0].clone())
    }
}

impl<'a> Scanner<'a> {
    #[cold]
    fn error(&mut self, what: &'static str) -> Stop {
        self.refused = Refused { what, at: self.i };
        Stop
    }

    /// After the value: only whitespace may follow.
    fn end(&mut self) -> Step {
        self.ws();
        match self.i < self.b.len() {
            true => Err(self.error("trailing characters after the JSON value")),
            false => Ok(()),
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The text from `start` to the current position (both at ASCII bytes, so on character
    /// boundaries).
    #[inline]
    fn since(&self, start: usize) -> &'a str {
        self.text.get(start..self.i).unwrap_or_default()
    }

    /// One value. Strings, most of a line's values, are read in place: the call for
    /// everything else ([`Scanner::other`]) sets up the whole object walk, which a string
    /// does not need.
    #[inline(always)]
    fn value(&mut self, depth: u32, place: Place) -> Step {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            _ => self.other(depth, place),
        }
    }

    /// A value other than a string.
    fn other(&mut self, depth: u32, place: Place) -> Step {
        match self.peek() {
            Some(b'{') => self.object(depth + 1, place),
            Some(b'[') => self.array(depth + 1, place),
            Some(b'"') => self.string().map(|_| ()),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected a JSON value")),
            None => Err(self.error("the text ends where a value was expected")),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Step {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.error("expected a JSON value"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.b.get(self.i) {
            self.i += 1;
        }
        self.i - start
    }

    /// JSON's number grammar; numbers that may be out of `f64`'s range are asked of
    /// `serde_json`, which refuses them.
    fn number(&mut self) -> Step {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let whole = match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.error("a number with a leading zero"));
                }
                1
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("an invalid number")),
        };
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.error("an invalid number"));
            }
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            exponent = true;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("an invalid number"));
            }
        }
        if (exponent || whole > SURELY_IN_RANGE_DIGITS)
            && serde_json::from_str::<serde_json::Number>(self.since(start)).is_err()
        {
            return Err(self.error("a number out of range"));
        }
        Ok(())
    }

    /// At an opening quote: reads through the closing one; whether the text between them has
    /// escapes.
    #[inline(always)]
    fn string(&mut self) -> Step<bool> {
        self.i += 1;
        let mut escaped = false;
        loop {
            // Bytes of multi-byte characters are all >= 0x80: only these three stop the scan.
            self.i += plain_prefix(self.b.get(self.i..).unwrap_or_default());
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    self.escape()?;
                }
                Some(_) => return Err(self.error("a control character in a string")),
                None => return Err(self.error("the text ends inside a string")),
            }
        }
    }

    /// After a backslash: one escape; a `\u` of a leading surrogate must be followed by the
    /// `\u` of a trailing one.
    fn escape(&mut self) -> Step {
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.i += 1;
                Ok(())
            }
            Some(b'u') => {
                self.i += 1;
                match self.hex4()? {
                    0xDC00..=0xDFFF => Err(self.error("a lone surrogate in a string")),
                    0xD800..=0xDBFF => {
                        if !self.b[self.i..].starts_with(b"\\u") {
                            return Err(self.error("a lone surrogate in a string"));
                        }
                        self.i += 2;
                        match self.hex4()? {
                            0xDC00..=0xDFFF => Ok(()),
                            _ => Err(self.error("a lone surrogate in a string")),
                        }
                    }
                    _ => Ok(()),
                }
            }
            _ => Err(self.error("an invalid escape in a string")),
        }
    }

    fn hex4(&mut self) -> Step<u16> {
        let mut n = 0u16;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.error("an invalid \\u escape in a string")),
            };
            n = n << 4 | u16::from(digit);
            self.i += 1;
        }
        Ok(n)
    }

    fn array(&mut self, depth: u32, place: Place) -> Step {
        if depth >= MAX_DEPTH {
            return Err(self.error("nested too deep (at most 127 levels)"));
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        let mut first = place == Place::Content;
        loop {
            if first {
                let start = self.i;
                self.value(depth, Place::FirstContent)?;
                self.found.result_members.first_content = Some(self.since(start));
                first = false;
            } else {
                self.value(depth, Place::Inside)?;
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected `,` or `]` in an array")),
            }
        }
    }

    fn object(&mut self, depth: u32, place: Place) -> Step {
        if depth >= MAX_DEPTH {
            return Err(self.error("nested too deep (at most 127 levels)"));
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        let mut keys = Keys::new();
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a key (a string) in an object"));
            }
            let key_start = self.i + 1;
            let escaped = self.string()?;
            let key = Key {
                raw: self.text.get(key_start..self.i - 1).unwrap_or_default(),
                escaped,
            };
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.error("expected `:` after a key"));
            }
            self.i += 1;
            self.ws();
            let start = self.i;
            let member = match place {
                Place::Inside | Place::Content => None,
                Place::Top | Place::Params | Place::Result | Place::FirstContent => {
                    Member::of(place, key)
                }
            };
            let inner = match member {
                Some(Member::Params) => Place::Params,
                Some(Member::Result) => Place::Result,
                Some(Member::Content) => Place::Content,
                _ => Place::Inside,
            };
            self.value(depth, inner)?;
            if let Some(member) = member {
                *self.found.slot(member) = Some(self.since(start));
            }
            if keys.push(key) {
                return Err(self.duplicate(key.decoded()));
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.error("expected `,` or `}` in an object")),
            }
        }
        match keys.finish() {
            None => Ok(()),
            Some(twice) => Err(self.duplicate(twice)),
        }
    }

    #[cold]
    fn duplicate(&mut self, key: Cow<'_, str>) -> Stop {
        self.twice = Some(key.into_owned());
        self.error("duplicate key")
    }
}

/// A member the gateway reads, named once when its key is read: its value's place in
/// [`Found`], and for `params`, `result` and `content` the place of their own members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Id,
    Method,
    Params,
    Result,
    Error,
    Name,
    Arguments,
    Meta,
    InputResponses,
    RequestState,
    IsError,
    ResultType,
    Content,
    FirstText,
}

impl Member {
    /// The member `key` names in an object at `place`, if the gateway reads it.
    #[inline]
    fn of(place: Place, key: Key<'_>) -> Option<Member> {
        match key.escaped {
            false => Member::named(place, key.raw),
            true => Member::named(place, &key.decoded()),
        }
    }

    #[inline]
    fn named(place: Place, name: &str) -> Option<Member> {
        Some(match (place, name) {
            (Place::Top, "id") => Member::Id,
            (Place::Top, "method") => Member::Method,
            (Place::Top, "params") => Member::Params,
            (Place::Top, "result") => Member::Result,
            (Place::Top, "error") => Member::Error,
            (Place::Params, "name") => Member::Name,
            (Place::Params, "arguments") => Member::Arguments,
            (Place::Params, "_meta") => Member::Meta,
            (Place::Params, "inputResponses") => Member::InputResponses,
            (Place::Params, "requestState") => Member::RequestState,
            (Place::Result, "isError") => Member::IsError,
            (Place::Result, "resultType") => Member::ResultType,
            (Place::Result, "content") => Member::Content,
            (Place::FirstContent, "text") => Member::FirstText,
            _ => return None,
        })
    }
}

impl<'a> Found<'a> {
    /// Where the value of `member` is kept.
    #[inline]
    fn slot(&mut self, member: Member) -> &mut Option<&'a str> {
        match member {
            Member::Id => &mut self.id,
            Member::Method => &mut self.method,
            Member::Params => &mut self.params,
            Member::Result => &mut self.result,
            Member::Error => &mut self.error,
            Member::Name => &mut self.params_members.name,
            Member::Arguments => &mut self.params_members.arguments,
            Member::Meta => &mut self.params_members.meta,
            Member::InputResponses => &mut self.params_members.input_responses,
            Member::RequestState => &mut self.params_members.request_state,
            Member::IsError => &mut self.result_members.is_error,
            Member::ResultType => &mut self.result_members.result_type,
            Member::Content => &mut self.result_members.content,
            Member::FirstText => &mut self.result_members.first_text,
        }
    }

    /// Where [`Found::parts`] puts the method.
    pub(super) const METHOD: usize = 1;

    /// Every member found, in a fixed order ([`Found::from_parts`] reads it back).
    pub(super) fn parts(&self) -> [Option<&'a str>; 15] {
        let (p, r) = (&self.params_members, &self.result_members);
        [
            self.id,
            self.method,
            self.params,
            self.result,
            self.error,
            p.name,
            p.arguments,
            p.meta,
            p.input_responses,
            p.request_state,
            r.is_error,
            r.result_type,
            r.content,
            r.first_content,
            r.first_text,
        ]
    }

    /// The members [`Found::parts`] gave, back in their places.
    pub(super) fn from_parts(parts: [Option<&'a str>; 15]) -> Found<'a> {
        let [
            id,
            method,
            params,
            result,
            error,
            name,
            arguments,
            meta,
            input_responses,
            request_state,
            is_error,
            result_type,
            content,
            first_content,
            first_text,
        ] = parts;
        Found {
            id,
            method,
            params,
            result,
            error,
            params_members: ParamsMembers {
                name,
                arguments,
                meta,
                input_responses,
                request_state,
            },
            result_members: ResultMembers {
                is_error,
                result_type,
                content,
                first_content,
                first_text,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use proptest::prelude::*;
    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::Value;

    use super::*;

    /// The reference the scanner is held to, written on `serde_json` alone: its parser
    /// walks the whole text, decoding every string, and an object with a key twice (compared
    /// after decoding) is refused.
    fn reference(text: &str) -> Result<(), String> {
        let mut de = serde_json::Deserializer::from_str(text);
        Walk.deserialize(&mut de)
            .and_then(|()| de.end())
            .map_err(|e| e.to_string())
    }

    struct Walk;

    impl<'de> DeserializeSeed<'de> for Walk {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Walk)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value_seed(Walk)?;
                if !seen.insert(key.clone()) {
                    return Err(de::Error::custom(format!("duplicate key {key:?}")));
                }
            }
            Ok(())
        }
    }

    /// The value of `member` in `object`, by `serde_json`.
    fn member_of<'v>(object: &'v Value, member: &str) -> Option<&'v Value> {
        object.as_object()?.get(member)
    }

    /// A member's text as the scanner gives it: exactly the value, nothing around it.
    fn value_of(text: Option<&str>) -> Option<Value> {
        text.map(|t| {
            assert_eq!(t, t.trim(), "a member's text has whitespace around it");
            serde_json::from_str(t).unwrap_or_else(|e| panic!("{t:?} is not one value: {e}"))
        })
    }

    /// The scanner and the reference agree on `text`, and what the scanner found is what
    /// `serde_json` reads there.
    fn agree(text: &str) -> Result<(), TestCaseError> {
        let ours = scan(text);
        let theirs = reference(text);
        prop_assert_eq!(
            ours.is_ok(),
            theirs.is_ok(),
            "{:?}: scanner {:?}, serde_json {:?}",
            text,
            ours.as_ref().err(),
            theirs.err()
        );
        let Ok((first, found)) = ours else {
            return Ok(());
        };
        let value: Value =
            serde_json::from_str(text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(first == b'{', value.is_object(), "{:?}", text);
        let top = [
            ("id", found.id),
            ("method", found.method),
            ("params", found.params),
            ("result", found.result),
            ("error", found.error),
        ];
        for (name, text_found) in top {
            let read = value_of(text_found);
            prop_assert_eq!(
                read.as_ref(),
                member_of(&value, name),
                "{} of {:?}",
                name,
                text
            );
        }
        let params = member_of(&value, "params").filter(|p| p.is_object());
        let m = found.params_members;
        let inner = [
            ("name", m.name),
            ("arguments", m.arguments),
            ("_meta", m.meta),
            ("inputResponses", m.input_responses),
            ("requestState", m.request_state),
        ];
        for (name, text_found) in inner {
            let expected = params.and_then(|p| member_of(p, name));
            let read = value_of(text_found);
            prop_assert_eq!(read.as_ref(), expected, "params.{} of {:?}", name, text);
        }
        let result = member_of(&value, "result").filter(|r| r.is_object());
        let r = found.result_members;
        for (name, text_found) in [
            ("isError", r.is_error),
            ("resultType", r.result_type),
            ("content", r.content),
        ] {
            let read = value_of(text_found);
            let expected = result.and_then(|p| member_of(p, name));
            prop_assert_eq!(read.as_ref(), expected, "result.{} of {:?}", name, text);
        }
        let first = result
            .and_then(|r| member_of(r, "content"))
            .and_then(Value::as_array)
            .and_then(|c| c.first());
        let read = value_of(r.first_content);
        prop_assert_eq!(read.as_ref(), first, "result.content[0] of {:?}", text);
        let read = value_of(r.first_text);
        let expected = first.and_then(|f| member_of(f, "text"));
        prop_assert_eq!(
            read.as_ref(),
            expected,
            "result.content[0].text of {:?}",
            text
        );
        if let Some(method) = found.method {
            let decoded = string_value(method);
            prop_assert_eq!(
                decoded.as_deref(),
                member_of(&value, "method").and_then(Value::as_str),
                "{:?}",
                text
            );
        }
        Ok(())
    }

    fn check(text: &str) {
        if let Err(e) = agree(text) {
            panic!("{e}");
        }
    }

    const NUMBERS: &[&str] = &[
        "0",
        "-0",
        "1",
        "-1",
        "01",
        "-01",
        "00",
        "1.",
        ".5",
        "-",
        "+1",
        "1.5",
        "-1.5e3",
        "1e400",
        "-1e400",
        "1e-400",
        "1E+2",
        "1e",
        "1e+",
        "2.5E-3",
        "0.0",
        "0e0",
        "0e999999",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "1.8e308",
        "9007199254740993",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "1x",
        "NaN",
        "Infinity",
        "-Infinity",
        "0x1",
        "1_0",
    ];

    const STRINGS: &[&str] = &[
        r#""""#,
        r#""a""#,
        r#""id""#,
        r#""\u0069d""#,
        r#""method""#,
        r#""n\u0061me""#,
        r#""\ud83d\ude00""#,
        r#""\ud800""#,
        r#""\udc00""#,
        r#""\ud800x""#,
        r#""\ud800\u0041""#,
        r#""\ud800\ud800""#,
        r#""\uDBFF\uDFFF""#,
        r#""\u00e9""#,
        r#""é""#,
        "\"\u{1}\"",
        "\"\u{7f}\"",
        r#""\x""#,
        r#""\u12""#,
        r#""\u12g4""#,
        r#""\"""#,
        r#""\\""#,
        r#""\/""#,
        r#""\b\f\n\r\t""#,
        r#""a"#,
        "\"tab\there\"",
        r#""\""#,
        r#""\u0000""#,
    ];

    const KEYS: &[&str] = &[
        r#""id""#,
        r#""method""#,
        r#""params""#,
        r#""result""#,
        r#""error""#,
        r#""name""#,
        r#""arguments""#,
        r#""_meta""#,
        r#""inputResponses""#,
        r#""requestState""#,
        r#""\u0069d""#,
        r#""n\u0061me""#,
        r#""a""#,
        r#""b""#,
        r#""""#,
        r#""\ud800""#,
        "1",
    ];

    const JUNK: &[&str] = &[
        "{", "}", "[", "]", ",", ":", "\"", "\\", " ", "\n", "x", "\u{0}", "\u{feff}", "é", "0",
        "-", "e", "null", "//", "/*",
    ];

    fn ws() -> impl Strategy<Value = &'static str> {
        prop::sample::select(&["", "", "", " ", "\n", "\t", "\r\n ", "\u{a0}", "\u{b}"][..])
    }

    fn leaf() -> impl Strategy<Value = String> {
        prop_oneof![
            1 => prop::sample::select(&["null", "true", "false", "nul", "tru", "falsey"][..])
                .prop_map(str::to_owned),
            1 => prop::sample::select(NUMBERS).prop_map(str::to_owned),
            1 => prop::sample::select(STRINGS).prop_map(str::to_owned),
            3 => any::<i64>().prop_map(|n| n.to_string()),
            1 => any::<f64>().prop_map(|f| format!("{f:e}")),
            3 => any::<String>().prop_map(|s| Value::String(s).to_string()),
        ]
    }

    fn json() -> impl Strategy<Value = String> {
        leaf().prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec((ws(), inner.clone(), ws()), 0..5).prop_map(|items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(a, v, b)| format!("{a}{v}{b}"))
                        .collect();
                    format!("[{}]", items.join(","))
                }),
                prop::collection::vec((prop::sample::select(KEYS), ws(), inner), 0..10).prop_map(
                    |members| {
                        let members: Vec<String> = members
                            .into_iter()
                            .map(|(k, w, v)| format!("{w}{k}{w}:{w}{v}"))
                            .collect();
                        format!("{{{}}}", members.join(","))
                    }
                ),
            ]
        })
    }

    /// JSON and near-JSON: values, then a few bytes cut, inserted or doubled.
    fn text() -> impl Strategy<Value = String> {
        let edit = (
            0usize..4,
            any::<prop::sample::Index>(),
            prop::sample::select(JUNK),
        );
        (ws(), json(), ws(), prop::collection::vec(edit, 0..2)).prop_map(|(a, v, b, edits)| {
            let mut text = format!("{a}{v}{b}");
            for (kind, at, junk) in edits {
                let mut cut = at.index(text.len() + 1);
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                match kind {
                    0 => text.truncate(cut),
                    1 => text.insert_str(cut, junk),
                    2 => {
                        let tail = text[cut..].to_owned();
                        text.push_str(&tail);
                    }
                    _ => {}
                }
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn plain_prefixes_stop_at_the_first_byte_a_string_cannot_hold_as_is(
            bytes in prop::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), Just(0x1f), Just(0x20), Just(0x7f), Just(0x80), Just(0xff), any::<u8>(), b'a'..=b'z'],
                0..40,
            ),
        ) {
            let naive = bytes
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .unwrap_or(bytes.len());
            prop_assert_eq!(plain_prefix(&bytes), naive);
        }

        #[test]
        fn the_scanner_accepts_exactly_what_serde_json_reads_one_way(text in text()) {
            agree(&text)?;
        }

        #[test]
        fn messages_are_read_member_for_member_as_serde_json_reads_them(
            id in prop_oneof![leaf(), json()],
            method in prop_oneof![Just(r#""tools/call""#.to_owned()), leaf()],
            name in leaf(),
            arguments in json(),
            extra in prop::sample::select(KEYS),
            order in any::<bool>(),
        ) {
            let params = format!(r#"{{"name":{name},"arguments":{arguments},{extra}:1}}"#);
            let text = if order {
                format!(r#"{{"jsonrpc":"2.0","id":{id},"method":{method},"params":{params}}}"#)
            } else {
                format!(r#"{{"params" : {params} , "method":{method},"id":{id}}}"#)
            };
            agree(&text)?;
        }

        #[test]
        fn answers_are_read_member_for_member_as_serde_json_reads_them(
            is_error in leaf(),
            result_type in prop_oneof![Just(r#""input_required""#.to_owned()), leaf()],
            first in prop_oneof![
                leaf().prop_map(|t| format!(r#"{{"type":"text","text":{t}}}"#)),
                json(),
            ],
            rest in json(),
            order in any::<bool>(),
        ) {
            let result = if order {
                format!(r#"{{"content":[{first},{rest}],"isError":{is_error},"resultType":{result_type}}}"#)
            } else {
                format!(r#"{{"resultType":{result_type},"isError":{is_error},"content":[ {first} ]}}"#)
            };
            agree(&format!(r#"{{"jsonrpc":"2.0","id":1,"result":{result}}}"#))?;
        }
    }

    /// The property above says something only if the texts it is given are both accepted
    /// and refused often.
    #[test]
    fn the_random_texts_are_often_json_and_often_not() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = text();
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..2000 {
            let text = strategy.new_tree(&mut runner).map(|t| t.current());
            match text.map(|t| reference(&t).is_ok()) {
                Ok(true) => accepted += 1,
                Ok(false) => refused += 1,
                Err(e) => panic!("no text generated: {e}"),
            }
        }
        assert!(
            accepted > 200 && refused > 200,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn nesting_is_refused_where_serde_json_refuses_it() {
        for depth in [1, 126, 127, 128, 129, 10_000] {
            for (open, close) in [("[", "]"), (r#"{"a":"#, "}")] {
                let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                check(&text);
                assert_eq!(scan(&text).is_ok(), depth <= 127, "depth {depth}");
            }
        }
    }

    #[test]
    fn keys_are_compared_after_decoding_however_many_there_are() {
        let keys = |n: usize| (0..n).map(|i| format!(r#""k{i}":{i}"#)).collect::<Vec<_>>();
        for n in [1, 7, 8, 9, 50, 20_000] {
            let distinct = keys(n);
            check(&format!("{{{}}}", distinct.join(",")));
            assert!(
                scan(&format!("{{{}}}", distinct.join(","))).is_ok(),
                "{n} keys"
            );
            for twice in [0, n / 2, n - 1] {
                let mut members = distinct.clone();
                members.push(format!(r#""k{twice}":"again""#));
                let text = format!("{{{}}}", members.join(","));
                check(&text);
                assert!(scan(&text).is_err(), "{n} keys, k{twice} twice");
                // The same key spelled with an escape.
                let spelled = format!(r#""\u006b{twice}":0"#);
                let text = format!("{{{},{spelled}}}", distinct.join(","));
                check(&text);
                assert!(scan(&text).is_err(), "{n} keys, k{twice} twice, escaped");
            }
        }
    }

    #[test]
    fn the_examples_of_the_reference_agree() {
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}"#,
            r#"{"id":1,"method":"tools/call","params":{"name":"a","n\u0061me":"b"}}"#,
            r#"{"\u0069d":1,"id":2}"#,
            r#"{"id":1,"method":"x","params":{"a":{"b":1},"c":{"b":1},"d":"\ud83d\ude00"}}"#,
            r#"{"params":[1,{"name":2}],"method":"m"}"#,
            r#"{"params":{"name":"x","arguments":null,"_meta":null}}"#,
            r#"{"method":"a\"b","id":"\u00e9"}"#,
            "  {\"method\" :\t\"x\" }\n",
            "[]",
            "[{\"id\":1},{\"id\":1}]",
            "\u{feff}{}",
            "",
            " ",
            "\"\\ud800\\udc00\"",
        ] {
            check(text);
        }
    }
}
