//! Just enough JSON-RPC for a transparent proxy: classify a line by its `method` and `id`
//! without building a tree, and build the few messages the gateway writes itself (refusals,
//! errors, progress).
//!
//! The gateway forwards every message it does not need to change as the exact bytes it
//! received, so this module never re-serialises a message it only looked at. That is only
//! safe if every JSON parser downstream reads those bytes the way the gateway did, so a line
//! is classified only once it is beyond dispute ([`parse`]): valid UTF-8, one JSON value and
//! nothing after it, no object anywhere with a key twice (parsers disagree on which one
//! wins), no string that does not decode (a lone surrogate). A message is then an object
//! ([`Envelope`]) of one of three [`Shape`]s; anything else is refused, never forwarded.
//!
//! Request ids are compared by value ([`IdKey`]): a string after decoding, an integer by
//! value. Anything else (a fraction, an exponent, `true`, `null`, an object) is not an id.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

mod scan;

pub(crate) use scan::{ParamsMembers, ResultMembers, plain_prefix};

/// JSON-RPC error codes the gateway answers with.
pub(crate) mod code {
    pub(crate) const PARSE_ERROR: i64 = -32700;
    pub(crate) const INVALID_REQUEST: i64 = -32600;
    pub(crate) const INVALID_PARAMS: i64 = -32602;
    pub(crate) const INTERNAL_ERROR: i64 = -32603;
    /// Implementation-defined server error: the upstream went away before answering.
    pub(crate) const UPSTREAM_GONE: i64 = -32000;
    /// Implementation-defined: the answer was larger than `--max-message`, or could not be
    /// read, and was replaced by this error.
    pub(crate) const ANSWER_REFUSED: i64 = -32004;
    /// Implementation-defined: too many requests of this side are waiting for answers.
    pub(crate) const TOO_MANY_IN_FLIGHT: i64 = -32005;
}

/// The `_meta` key 2026-07-28 clients stamp on every request with their protocol version.
pub(crate) const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// The largest integer id accepted, in magnitude: 2^53 - 1, the range in which every JSON
/// parser (JavaScript's numbers are doubles) reads the same integer. Beyond it two ids that
/// differ here could be the same id to the server.
pub(crate) const MAX_INTEGER_ID: i64 = (1 << 53) - 1;

/// The longest string id accepted, in bytes of its JSON text. Ids are kept for as long as a
/// request is in flight (up to 1,024 a side), so their size must be bounded apart from
/// `--max-message`; real clients use numbers or short strings (a UUID is 38 bytes).
pub(crate) const MAX_STRING_ID: usize = 256;

/// The JSON text of one value inside a line that [`parse`] accepted, borrowed from the line:
/// valid JSON, with nothing before or after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raw<'a>(&'a str);

impl<'a> Raw<'a> {
    /// The value's JSON text, as received.
    pub(crate) fn get(self) -> &'a str {
        self.0
    }

    /// An owned copy, for the few places that keep a value beyond its line.
    pub(crate) fn to_raw_value(self) -> Box<RawValue> {
        // The text is JSON [`parse`] accepted, so this never falls back.
        RawValue::from_string(self.0.to_owned()).unwrap_or_else(|_| RawValue::NULL.to_owned())
    }

    /// Valid JSON text from elsewhere (tests, and values already held as `RawValue`).
    pub(crate) fn of(value: &'a RawValue) -> Raw<'a> {
        Raw(value.get())
    }
}

/// The top-level members of a JSON-RPC message, borrowed from the line. A member that is
/// present is `Some` even when its value is `null` (`"result": null` is a result; `"id":
/// null` is an id this gateway refuses).
#[derive(Debug)]
pub(crate) struct Envelope<'a> {
    pub id: Option<Raw<'a>>,
    /// A string when present: `"method": null` is not "no method".
    pub method: Option<Cow<'a, str>>,
    pub params: Option<Raw<'a>>,
    pub result: Option<Raw<'a>>,
    pub error: Option<Raw<'a>>,
    /// The members of `params` a `tools/call` is read from, when `params` is an object.
    pub params_members: ParamsMembers<'a>,
    /// The members of `result` a `tools/call`'s outcome is read from, when `result` is an
    /// object.
    pub result_members: ResultMembers<'a>,
}

/// What one line is, as far as the gateway cares.
// A message is most lines: boxing its envelope would be an allocation per line, for an
// enum that lives on the stack only until it is matched.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    /// A single JSON-RPC message (object); its [`Envelope::shape`] says which kind.
    Message(Envelope<'a>),
    /// An old-style batch: each element is handled on its own ([`parse_element`]).
    Batch(Vec<&'a RawValue>),
    /// Valid JSON, but neither an object nor an array (or an empty array): an invalid
    /// request, answered `-32600`.
    NotAMessage(&'static str),
    /// Not JSON, or JSON that no two parsers are sure to read alike.
    Malformed(String),
}

/// Classifies one line (a trailing newline is ignored), in one pass over it ([`scan`]):
/// refused unless it is UTF-8 and exactly one JSON value that every parser reads alike (no
/// key twice in any object at any depth, compared after decoding; no lone surrogate; at
/// most 127 levels of nesting; no number beyond `f64`).
pub(crate) fn parse(line: &[u8]) -> Parsed<'_> {
    let text = match std::str::from_utf8(line) {
        Ok(text) => text,
        Err(e) => return Parsed::Malformed(format!("not UTF-8 (byte {})", e.valid_up_to())),
    };
    let (first, found) = match scan::scan(text) {
        Ok(scanned) => scanned,
        Err(e) => return Parsed::Malformed(e),
    };
    match first {
        b'[' => match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(items) if items.is_empty() => Parsed::NotAMessage("an empty batch"),
            Ok(items) => Parsed::Batch(items),
            Err(e) => Parsed::Malformed(e.to_string()),
        },
        b'{' => envelope(found),
        _ => Parsed::NotAMessage("a JSON-RPC message is an object"),
    }
}

/// Classifies one element of a batch: an object, or not a message. A batch in a batch is
/// not a message either: batches are one level deep.
pub(crate) fn parse_element(item: &RawValue) -> Parsed<'_> {
    match scan::scan(item.get()) {
        Ok((b'{', found)) => envelope(found),
        Ok(_) => Parsed::NotAMessage("a batch element is an object"),
        Err(e) => Parsed::Malformed(e),
    }
}

/// The decoded text of a JSON string value from a line [`parse`] accepted (`raw` with its
/// quotes), borrowed when it has no escapes; `None` when it is not a string.
pub(crate) fn string_value(raw: &str) -> Option<Cow<'_, str>> {
    scan::string_value(raw)
}

/// The envelope of an object [`scan`] accepted: a message, unless its method is not a
/// string.
fn envelope(found: scan::Found<'_>) -> Parsed<'_> {
    let method = match found.method.map(scan::string_value) {
        Some(Some(method)) => Some(method),
        Some(None) => {
            return Parsed::NotAMessage(
                "a member of the message has the wrong type (method is a string)",
            );
        }
        None => None,
    };
    Parsed::Message(Envelope {
        id: found.id.map(Raw),
        method,
        params: found.params.map(Raw),
        result: found.result.map(Raw),
        error: found.error.map(Raw),
        params_members: found.params_members,
        result_members: found.result_members,
    })
}

/// Where [`parse`] found the members of one line, as byte ranges of it ([`Envelope::read`]).
/// A line queued with it is not scanned again by whoever reads it ([`Read::envelope`]):
/// `serve`'s HTTP side and upstream hop read each message whole before the core does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Read {
    /// The length of the text it was found in.
    len: u32,
    /// [`scan::Found::parts`]' ranges; `(0, 0)` for a member that is absent (a value is
    /// never empty).
    at: [(u32, u32); 15],
}

/// The range of a member that is absent.
const ABSENT: (u32, u32) = (0, 0);

impl Read {
    /// The same ranges in `len` bytes of the text starting at `start` (the text trimmed of
    /// whitespace around the message); `None` when one falls outside them.
    pub(crate) fn within(self, start: usize, len: usize) -> Option<Read> {
        let start = u32::try_from(start).ok()?;
        let len = u32::try_from(len).ok()?;
        let mut at = self.at;
        for range in at.iter_mut().filter(|range| **range != ABSENT) {
            let (from, to) = (range.0.checked_sub(start)?, range.1.checked_sub(start)?);
            if to > len {
                return None;
            }
            *range = (from, to);
        }
        Some(Read { len, at })
    }

    /// The envelope [`parse`] gives for `line`, taken from where it was found before instead
    /// of a scan. `None` when `line` cannot be the text it was found in (another length, not
    /// UTF-8, a range off its characters): the caller parses it then. Only the line it was
    /// read from may be given it, unchanged (or changed only as [`Read::within`] says).
    pub(crate) fn envelope<'a>(&self, line: &'a [u8]) -> Option<Envelope<'a>> {
        if line.len() != self.len as usize {
            return None;
        }
        let text = std::str::from_utf8(line).ok()?;
        let mut parts = [None; 15];
        for (part, (from, to)) in parts.iter_mut().zip(self.at) {
            if (from, to) != ABSENT {
                *part = Some(text.get(from as usize..to as usize)?);
            }
        }
        match envelope(scan::Found::from_parts(parts)) {
            Parsed::Message(env) => Some(env),
            _ => None,
        }
    }
}

/// What a message is, once its members are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape<'e> {
    /// `method` and a valid id: an answer is owed.
    Request { id: IdKey, method: &'e str },
    /// `method` and no id.
    Notification { method: &'e str },
    /// No method, exactly one of `result` and `error`, and a valid id.
    Response { id: IdKey },
}

/// Why a message's members do not make a JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    /// It has a method: its sender expects an answer, an error with a null id.
    pub request: bool,
    /// The id, when it is a valid one (a response with both `result` and `error`).
    pub id: Option<IdKey>,
    pub why: String,
}

impl Envelope<'_> {
    /// Where its members are in `text`, the text it was parsed from, for a reader of the
    /// same text ([`Read::envelope`]). `None` for a text beyond 4 GiB, a method spelled with
    /// escapes (rare: the reader parses such a line), or a text it was not parsed from.
    pub(crate) fn read(&self, text: &[u8]) -> Option<Read> {
        let base = text.as_ptr() as usize;
        let len = u32::try_from(text.len()).ok()?;
        // Where a member's text is in `text`; a value is never empty.
        let range = |part: &str| -> Option<(u32, u32)> {
            let from = u32::try_from((part.as_ptr() as usize).checked_sub(base)?).ok()?;
            let to = from.checked_add(u32::try_from(part.len()).ok()?)?;
            (to <= len && from < to).then_some((from, to))
        };
        let method = match &self.method {
            None => ABSENT,
            // A method without escapes is kept as the inside of its JSON string: with its
            // quotes around it, it is the member's text.
            Some(Cow::Borrowed(inner)) => {
                let (from, to) = range(inner)?;
                let (from, to) = (from.checked_sub(1)?, to.checked_add(1)?);
                let quoted = text.get(from as usize..to as usize)?;
                if quoted.first() != Some(&b'"') || quoted.last() != Some(&b'"') {
                    return None;
                }
                (from, to)
            }
            Some(Cow::Owned(_)) => return None,
        };
        let found = scan::Found {
            id: self.id.map(Raw::get),
            method: None,
            params: self.params.map(Raw::get),
            result: self.result.map(Raw::get),
            error: self.error.map(Raw::get),
            params_members: self.params_members,
            result_members: self.result_members,
        };
        let mut at = [ABSENT; 15];
        for (slot, part) in at.iter_mut().zip(found.parts()) {
            if let Some(part) = part {
                *slot = range(part)?;
            }
        }
        at[scan::Found::METHOD] = method;
        Some(Read { len, at })
    }

    /// The message's kind, or why it is not a valid message.
    pub(crate) fn shape(&self) -> Result<Shape<'_>, Invalid> {
        let invalid = |request: bool, id: Option<IdKey>, why: String| Invalid { request, id, why };
        match self.method.as_deref() {
            Some(method) => {
                if self.result.is_some() || self.error.is_some() {
                    return Err(invalid(
                        true,
                        None,
                        "a request or notification cannot carry result or error".into(),
                    ));
                }
                match self.id {
                    None => Ok(Shape::Notification { method }),
                    Some(raw) => match IdKey::from_raw(raw) {
                        Ok(id) => Ok(Shape::Request { id, method }),
                        Err(e) => Err(invalid(true, None, e.to_string())),
                    },
                }
            }
            None => {
                let id = self.id.map(IdKey::from_raw);
                match (self.result.is_some(), self.error.is_some(), id) {
                    (true, false, Some(Ok(id))) | (false, true, Some(Ok(id))) => {
                        Ok(Shape::Response { id })
                    }
                    // An answer whose id is a number spelled as no id may be (`6.0`,
                    // `1e1`) is not passed on, but the request it plainly answers is
                    // owed an error rather than a wait that never ends.
                    (_, _, Some(Err(e))) => Err(invalid(
                        false,
                        self.id.and_then(IdKey::integral_number),
                        e.to_string(),
                    )),
                    (_, _, None) => Err(invalid(
                        false,
                        None,
                        "a message without a method is a response, and needs an id".into(),
                    )),
                    (_, _, Some(Ok(id))) => Err(invalid(
                        false,
                        Some(id),
                        "a response carries exactly one of result and error".into(),
                    )),
                }
            }
        }
    }
}

/// A request id, by value: a string (decoded: `"\u0061"` is `"a"`) or an integer (`-0` is
/// `0`) of magnitude at most [`MAX_INTEGER_ID`]. `1` and `"1"` stay distinct.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IdKey {
    Int(i64),
    Str(Box<str>),
}

/// A value that is not an id MCP allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a request id is a string (at most 256 bytes) or an integer (at most 2^53-1 in magnitude), not {0}"
)]
pub(crate) struct BadId(String);

/// The value of an id's text when it is a bare non-negative JSON integer (no whitespace, no
/// sign, no leading zero) within [`MAX_INTEGER_ID`]: the texts [`IdKey::from_json`]'s
/// general path reads as that integer. Anything else is `None`, left to the general path.
fn plain_integer(text: &[u8]) -> Option<i64> {
    let (&first, rest) = text.split_first()?;
    if !first.is_ascii_digit() || (first == b'0' && !rest.is_empty()) || text.len() > 16 {
        return None;
    }
    let mut n = i64::from(first - b'0');
    for &b in rest {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(b - b'0');
    }
    (n <= MAX_INTEGER_ID).then_some(n)
}

impl IdKey {
    /// Reads an id from its JSON text.
    pub(crate) fn from_raw(raw: Raw<'_>) -> Result<IdKey, BadId> {
        IdKey::from_json(raw.get())
    }

    /// Reads an id from its JSON text (surrounding whitespace allowed).
    pub(crate) fn from_json(text: &str) -> Result<IdKey, BadId> {
        // Every call and every answer carries an id, nearly always a plain small integer:
        // read in one pass over the bytes, without trimming or parsing twice.
        if let Some(n) = plain_integer(text.as_bytes()) {
            return Ok(IdKey::Int(n));
        }
        let text = text.trim_matches([' ', '\t', '\n', '\r']);
        let bad = || {
            let shown: String = text.chars().take(40).collect();
            BadId(shown)
        };
        if text.starts_with('"') {
            if text.len() > MAX_STRING_ID {
                return Err(bad());
            }
            return serde_json::from_str::<String>(text)
                .map(|s| IdKey::Str(s.into()))
                .map_err(|_| bad());
        }
        let digits = text.strip_prefix('-').unwrap_or(text);
        // JSON's integer grammar: no fraction, no exponent, no leading zero, no plus.
        let integer = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'))
            && digits.len() <= 16;
        if !integer {
            return Err(bad());
        }
        match text.parse::<i64>() {
            Ok(n) if n.abs() <= MAX_INTEGER_ID => Ok(IdKey::Int(n)),
            _ => Err(bad()),
        }
    }

    /// The integer a number that is not a valid id stands for (`6.0`, `1e1`), if it is one
    /// within range: only ever used to fail the request it answers, never to match an answer.
    fn integral_number(raw: Raw<'_>) -> Option<IdKey> {
        let n = serde_json::from_str::<f64>(raw.get()).ok()?;
        let whole = n.is_finite() && n.fract() == 0.0 && n.abs() <= MAX_INTEGER_ID as f64;
        // The cast is exact: a whole number of magnitude at most 2^53 - 1.
        whole.then_some(IdKey::Int(n as i64))
    }

    /// The id's canonical JSON text, to write into a message.
    pub(crate) fn json(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for IdKey {
    /// The canonical JSON text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdKey::Int(n) => write!(f, "{n}"),
            IdKey::Str(s) => write!(f, "{}", Value::String(s.to_string())),
        }
    }
}

/// What could be read of a message that was too large to keep, or that does not parse:
/// the top-level members seen before it stopped making sense.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Sniffed {
    /// The top-level id, when its whole value was seen and is a valid id.
    pub id: Option<IdKey>,
    /// A top-level `method` member was seen.
    pub method: bool,
    /// A top-level `result` or `error` member was seen.
    pub answer: bool,
}

/// Reads the top-level members of the start of a JSON object, leniently: stops at the first
/// byte that does not fit (or the end of `prefix`) and reports what it saw. Values other
/// than the id are skipped, never decoded, so this runs in one pass without allocating
/// more than the id.
pub(crate) fn sniff(prefix: &[u8]) -> Sniffed {
    let mut out = Sniffed::default();
    // A byte order mark makes the text invalid, but the sender still deserves its answer.
    let prefix = prefix.strip_prefix(b"\xef\xbb\xbf").unwrap_or(prefix);
    let mut s = Scan { b: prefix, i: 0 };
    s.ws();
    if !s.eat(b'{') {
        return out;
    }
    loop {
        s.ws();
        let Some(key) = s.string() else { return out };
        let key = std::str::from_utf8(key)
            .ok()
            .and_then(|k| serde_json::from_str::<String>(k).ok());
        s.ws();
        if !s.eat(b':') {
            return out;
        }
        s.ws();
        // A member counts once its key is seen: its value may be what was cut.
        match key.as_deref() {
            Some("method") => out.method = true,
            Some("result" | "error") => out.answer = true,
            _ => {}
        }
        let start = s.i;
        if !s.value() {
            return out;
        }
        if key.as_deref() == Some("id") {
            out.id = std::str::from_utf8(&prefix[start..s.i])
                .ok()
                .and_then(|t| IdKey::from_json(t).ok());
        }
        s.ws();
        if !s.eat(b',') {
            return out;
        }
    }
}

/// A byte cursor for [`sniff`]; every method returns false / `None` at the end of input.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// A whole string, quotes included.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        if !self.eat(b'"') {
            return None;
        }
        while let Some(&c) = self.b.get(self.i) {
            self.i += 1;
            match c {
                b'\\' => self.i += 1,
                b'"' => return (self.i <= self.b.len()).then(|| &self.b[start..self.i]),
                _ => {}
            }
        }
        None
    }

    /// Skips one whole value; false when it does not end within the input.
    fn value(&mut self) -> bool {
        match self.b.get(self.i) {
            Some(b'"') => self.string().is_some(),
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                while let Some(&c) = self.b.get(self.i) {
                    match c {
                        b'"' => {
                            if self.string().is_none() {
                                return false;
                            }
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return true;
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                false
            }
            Some(_) => {
                let start = self.i;
                while let Some(&c) = self.b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                // A scalar cut by the end of the prefix is not known whole.
                self.i > start && self.i < self.b.len()
            }
            None => false,
        }
    }
}

/// A valid JSON text on one line: inside valid JSON a raw CR or LF can only be whitespace
/// between tokens (in strings they must be escaped, and UTF-8 never uses those bytes inside
/// a multi-byte character), so replacing each by a space changes no value. Only for text
/// that [`parse`] accepted.
pub(crate) fn one_line(text: &[u8]) -> Vec<u8> {
    text.trim_ascii()
        .iter()
        .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
        .collect()
}

/// `{"jsonrpc":"2.0","id":ID,"error":{"code":C,"message":M}}` with a `null` id when `id` is
/// `None`.
pub(crate) fn error_response(id: Option<&IdKey>, code: i64, message: &str) -> Vec<u8> {
    let id = id.map_or_else(|| "null".to_owned(), IdKey::json);
    let message = Value::String(message.to_owned());
    format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{message}}}}}"#)
        .into_bytes()
}

/// A successful response carrying `result`.
pub(crate) fn result_response(id: &IdKey, result: &Value) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","id":{},"result":{}}}"#,
        id.json(),
        result
    )
    .into_bytes()
}

/// The tool result an agent gets for a refused call: a result, not an error, so that the
/// model reads the reason. `modern` peers (2026-07-28) also get `resultType`.
pub(crate) fn refusal(id: &IdKey, text: &str, modern: bool) -> Vec<u8> {
    let mut result = serde_json::json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
    });
    if modern {
        result["resultType"] = Value::String("complete".into());
    }
    result_response(id, &result)
}

/// A `notifications/progress` for `token`.
pub(crate) fn progress(token: &Value, progress: u64, message: &str) -> Vec<u8> {
    let params = serde_json::json!({
        "progressToken": token,
        "progress": progress,
        "message": message,
    });
    format!(r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{params}}}"#)
        .into_bytes()
}

/// The parts of `tools/call` params the gateway needs. A member that is `null` counts as
/// absent, as serde reads an `Option`.
#[derive(Debug)]
pub(crate) struct CallParams {
    /// The tool's name: inline when short, as most are (it is repeated in the decision, the
    /// call event and the call in flight).
    pub name: smol_str::SmolStr,
    /// As their text: no tree is built for them unless something needs one (see
    /// [`super::args`]). `Err` when present but not an object (not `null` either).
    pub arguments: Result<Option<super::args::RawArgs>, super::args::Unreadable>,
    /// This and the two below are boxed: most calls have none of them, and a call's params
    /// are moved a few times on its way (each a `Map` or `Value` of 72 or 80 bytes inline).
    pub meta: Option<Box<serde_json::Map<String, Value>>>,
    /// Present on a 2026-07-28 retry after `input_required`.
    pub input_responses: Option<Box<Value>>,
    pub request_state: Option<Box<Value>>,
}

impl CallParams {
    /// Reads the params of a `tools/call` from the members [`parse`] found in its `params`
    /// object: only the members the gateway uses are read, each from its own text.
    pub(crate) fn read(members: &ParamsMembers<'_>) -> Result<CallParams, String> {
        fn member<T: serde::de::DeserializeOwned>(
            text: Option<&str>,
            what: &str,
        ) -> Result<Option<T>, String> {
            match text.map(serde_json::from_str::<Option<T>>) {
                None => Ok(None),
                Some(Ok(value)) => Ok(value),
                Some(Err(e)) => Err(format!("{what}: {e}")),
            }
        }
        let name = match members.name.map(scan::string_value) {
            Some(Some(name)) => smol_str::SmolStr::from(name),
            Some(None) => return Err("name: the tool's name is a string".to_owned()),
            None => return Err("missing field `name`".to_owned()),
        };
        Ok(CallParams {
            name,
            arguments: match members.arguments {
                None | Some("null") => Ok(None),
                Some(text) => super::args::RawArgs::read(text).map(Some),
            },
            meta: member(members.meta, "_meta")?,
            input_responses: member(members.input_responses, "inputResponses")?,
            request_state: member(members.request_state, "requestState")?,
        })
    }

    pub(crate) fn progress_token(&self) -> Option<&Value> {
        self.meta.as_ref()?.get("progressToken")
    }

    /// Whether the request says it speaks 2026-07-28 or later.
    pub(crate) fn is_modern(&self) -> bool {
        self.meta
            .as_ref()
            .is_some_and(|m| m.contains_key(META_PROTOCOL_VERSION))
    }

    /// A retry of an earlier call that answered `input_required`.
    pub(crate) fn is_input_retry(&self) -> bool {
        self.input_responses.is_some() || self.request_state.is_some()
    }
}

/// The cursor of a paginated request (`tools/list`), if any.
pub(crate) fn cursor(params: Option<Raw<'_>>) -> Option<String> {
    #[derive(Deserialize)]
    struct P {
        #[serde(default)]
        cursor: Option<String>,
    }
    params
        .and_then(|p| serde_json::from_str::<P>(p.get()).ok())
        .and_then(|p| p.cursor)
}

/// The `protocolVersion` of an `initialize` answer's result, when it is a string.
pub(crate) fn protocol_version(result: Option<Raw<'_>>) -> Option<String> {
    #[derive(Deserialize)]
    struct R {
        #[serde(default, rename = "protocolVersion")]
        protocol_version: Option<String>,
    }
    result
        .filter(|r| r.get().starts_with('{'))
        .and_then(|r| serde_json::from_str::<R>(r.get()).ok())
        .and_then(|r| r.protocol_version)
}

/// The `code` of an error answer's `error`, when it is an integer.
pub(crate) fn error_code(error: Option<Raw<'_>>) -> Option<i64> {
    #[derive(Deserialize)]
    struct E {
        #[serde(default)]
        code: Option<i64>,
    }
    let error = error?;
    // An error answer with a code that is not an integer still failed.
    Some(
        serde_json::from_str::<E>(error.get())
            .ok()
            .and_then(|e| e.code)
            .unwrap_or(code::INTERNAL_ERROR),
    )
}

/// Whether a JSON text may hold any of `words`: it spells one, or has an escape (which could
/// spell any). Most messages spell none, and are then not read again for them. The
/// searchers are built once: building one per search cost more than the search of a
/// message of a few hundred bytes.
pub(crate) fn may_spell(text: &[u8], words: &[Spelled]) -> bool {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    static META: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("_meta"));
    static INITIALIZE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("initialize"));
    memchr::memchr(b'\\', text).is_some()
        || words.iter().any(|word| {
            let finder = match word {
                Spelled::Meta => &META,
                Spelled::Initialize => &INITIALIZE,
            };
            finder.find(text).is_some()
        })
}

/// A word [`may_spell`] looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spelled {
    /// `_meta`, the key of a request's metadata.
    Meta,
    /// `initialize`, the method that opens a session.
    Initialize,
}

/// The `_meta` of a request's params, as sent, when it is an object.
pub(crate) fn meta(params: Option<Raw<'_>>) -> Option<Box<RawValue>> {
    #[derive(Deserialize)]
    struct P<'a> {
        #[serde(default, borrow, rename = "_meta")]
        meta: Option<&'a RawValue>,
    }
    let p: P<'_> = serde_json::from_str(params?.get()).ok()?;
    p.meta
        .filter(|m| m.get().starts_with('{'))
        .map(ToOwned::to_owned)
}

/// The `requestId` of a `notifications/cancelled`, when it is a valid id.
pub(crate) fn cancelled_request(params: Option<Raw<'_>>) -> Option<IdKey> {
    #[derive(Deserialize)]
    struct P<'a> {
        #[serde(borrow, rename = "requestId")]
        request_id: &'a RawValue,
    }
    let p: P<'_> = serde_json::from_str(params?.get()).ok()?;
    IdKey::from_raw(Raw::of(p.request_id)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_may_spell_a_key_plainly_or_through_any_escape() {
        let meta = &[Spelled::Meta][..];
        let init = &[Spelled::Initialize][..];
        let both = &[Spelled::Meta, Spelled::Initialize][..];
        assert!(may_spell(br#"{"_meta":{}}"#, meta));
        assert!(
            may_spell(br#"{"a":"_meta"}"#, meta),
            "a value spelling it counts too"
        );
        // An escape anywhere could spell the key: `"\u005fmeta"` is `_meta`.
        assert!(may_spell(br#"{"\u005fmeta":{}}"#, meta));
        assert!(may_spell(br#"{"a":"\n"}"#, init));
        assert!(may_spell(br#"{"method":"initialize"}"#, init));
        assert!(!may_spell(br#"{"method":"initialize"}"#, meta));
        assert!(!may_spell(br#"{"_met":"a","meta":1}"#, meta));
        assert!(!may_spell(br#"{"method":"initializ"}"#, init));
        assert!(!may_spell(b"", meta));
        assert!(may_spell(br#"{"method":"initialize"}"#, both));
        assert!(may_spell(br#"{"params":{"_meta":{}}}"#, both));
        assert!(!may_spell(br#"{"method":"tools/call"}"#, both));
        assert!(!may_spell(br#"{"_meta":{}}"#, &[]), "no word, no escape");
    }

    #[test]
    fn the_plain_integer_path_reads_ids_as_the_general_path_does() {
        let max = MAX_INTEGER_ID.to_string();
        let over = (MAX_INTEGER_ID + 1).to_string();
        let texts = [
            "0",
            "7",
            "42",
            "1000",
            " 1",
            "1 ",
            "01",
            "00",
            "-1",
            "-0",
            "+1",
            "1.0",
            "1e3",
            "",
            "-",
            "12a",
            "\"1\"",
            &max,
            &over,
            "9999999999999999",
            "99999999999999999",
        ];
        for text in texts {
            let general = {
                let trimmed = text.trim_matches([' ', '\t', '\n', '\r']);
                let digits = trimmed.strip_prefix('-').unwrap_or(trimmed);
                (!digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && (digits == "0" || !digits.starts_with('0'))
                    && digits.len() <= 16)
                    .then(|| trimmed.parse::<i64>().ok())
                    .flatten()
                    .filter(|n| n.abs() <= MAX_INTEGER_ID)
            };
            let fast = plain_integer(text.as_bytes());
            if let Some(n) = fast {
                assert_eq!(general, Some(n), "{text:?}");
            }
            if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                assert_eq!(
                    fast, general,
                    "{text:?}: a plain integer the fast path missed"
                );
            }
            if !text.starts_with('"') {
                assert_eq!(
                    IdKey::from_json(text).ok(),
                    general.map(IdKey::Int),
                    "{text:?}"
                );
            }
        }
        assert_eq!(IdKey::from_json(&max), Ok(IdKey::Int(MAX_INTEGER_ID)));
        assert!(IdKey::from_json(&over).is_err());
        assert!(IdKey::from_json("01").is_err());
        assert_eq!(IdKey::from_json(" 12\n"), Ok(IdKey::Int(12)));
    }

    fn shape_of(line: &str) -> Result<Shape<'static>, Invalid> {
        let line: &'static str = Box::leak(line.to_owned().into_boxed_str());
        let Parsed::Message(env) = parse(line.as_bytes()) else {
            panic!("not a message: {line}")
        };
        let env: &'static Envelope<'static> = Box::leak(Box::new(env));
        env.shape()
    }

    fn id(text: &str) -> Result<IdKey, BadId> {
        IdKey::from_json(text)
    }

    #[test]
    fn an_answer_with_a_number_spelled_as_no_id_may_be_names_the_request_it_fails() {
        for (text, owed) in [
            (r#"{"id":6.0,"result":{}}"#, Some(IdKey::Int(6))),
            (
                r#"{"id":1e1,"error":{"code":1,"message":"x"}}"#,
                Some(IdKey::Int(10)),
            ),
            (r#"{"id":-0.0,"result":{}}"#, Some(IdKey::Int(0))),
            (r#"{"id":6.5,"result":{}}"#, None),
            (r#"{"id":1e300,"result":{}}"#, None),
            (r#"{"id":true,"result":{}}"#, None),
        ] {
            let Err(invalid) = shape_of(text) else {
                panic!("{text} was taken for a valid message")
            };
            assert!(!invalid.request, "{text}");
            assert_eq!(invalid.id, owed, "{text}");
        }
    }

    #[test]
    fn string_ids_are_bounded_in_length() {
        let longest = format!("\"{}\"", "x".repeat(MAX_STRING_ID - 2));
        assert_eq!(
            id(&longest),
            Ok(IdKey::Str("x".repeat(MAX_STRING_ID - 2).into()))
        );
        let too_long = format!("\"{}\"", "x".repeat(MAX_STRING_ID - 1));
        assert!(id(&too_long).is_err(), "a {}-byte id", too_long.len());
        // Escapes count as written: a short id spelled long is refused too.
        let spelled_long = format!("\"{}\"", "\\u0061".repeat(60));
        assert!(id(&spelled_long).is_err());
    }

    #[test]
    fn requests_responses_and_notifications_are_told_apart() {
        assert_eq!(
            shape_of(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#),
            Ok(Shape::Request {
                id: IdKey::Int(7),
                method: "tools/call"
            })
        );
        assert_eq!(
            shape_of(r#"{"result":{},"jsonrpc":"2.0","id":"a"}"#),
            Ok(Shape::Response {
                id: IdKey::Str("a".into())
            })
        );
        assert_eq!(
            shape_of(r#"{"jsonrpc":"2.0","id":"a","result":null}"#),
            Ok(Shape::Response {
                id: IdKey::Str("a".into())
            }),
            "a null result is a result"
        );
        assert_eq!(
            shape_of(r#"{"jsonrpc":"2.0","method":"notifications/x"}"#),
            Ok(Shape::Notification {
                method: "notifications/x"
            })
        );
    }

    #[test]
    fn messages_that_are_neither_request_nor_response_are_invalid() {
        for (line, request) in [
            (r#"{"id":null,"method":"tools/call"}"#, true),
            (r#"{"id":1.5,"method":"tools/call"}"#, true),
            (r#"{"id":1,"method":"ping","result":{}}"#, true),
            (r#"{"method":"ping","error":{}}"#, true),
            (r#"{"id":1}"#, false),
            (r#"{"id":1,"result":{},"error":{}}"#, false),
            (r#"{"result":{}}"#, false),
            (r#"{"id":null,"error":{"code":1}}"#, false),
            (r#"{"id":[1],"result":{}}"#, false),
            (r#"{}"#, false),
        ] {
            let err = shape_of(line).expect_err(line);
            assert_eq!(err.request, request, "{line}");
        }
    }

    #[test]
    fn ids_are_strings_or_safe_integers_compared_by_value() {
        assert_eq!(id(r#""\u0061""#), id(r#""a""#));
        assert_eq!(id("-0"), id("0"));
        assert_eq!(id("9007199254740991"), Ok(IdKey::Int(MAX_INTEGER_ID)));
        assert_eq!(id("-9007199254740991"), Ok(IdKey::Int(-MAX_INTEGER_ID)));
        assert_ne!(id("1"), id(r#""1""#));
        for bad in [
            "6.0",
            "1e1",
            "1E1",
            "-",
            "01",
            "+1",
            "true",
            "null",
            "{}",
            "[]",
            "0x1",
            "9007199254740992",
            "-9007199254740992",
            "123456789012345678901234567890",
            r#""\ud800""#,
            r#""a"#,
        ] {
            assert!(id(bad).is_err(), "{bad} is not an id");
        }
    }

    #[test]
    fn ids_are_written_back_canonically() {
        assert_eq!(id(r#""\u0061\"""#).unwrap().json(), r#""a\"""#);
        assert_eq!(id("-0").unwrap().json(), "0");
        assert_eq!(IdKey::from_raw(Raw(" 42 ")), Ok(IdKey::Int(42)));
    }

    #[test]
    fn batches_split_into_their_elements_and_only_objects_are_messages() {
        let Parsed::Batch(items) =
            parse(br#"[{"id":1,"method":"a"}, {"method":"b"}, [{"id":2,"method":"c"}], 3, null]"#)
        else {
            panic!("not a batch")
        };
        assert_eq!(items.len(), 5);
        assert!(matches!(parse_element(items[0]), Parsed::Message(_)));
        assert!(matches!(parse_element(items[1]), Parsed::Message(_)));
        for nested in &items[2..] {
            assert!(
                matches!(parse_element(nested), Parsed::NotAMessage(_)),
                "{nested}"
            );
        }
        assert!(matches!(parse(b"[]"), Parsed::NotAMessage(_)));
    }

    #[test]
    fn json_that_is_not_an_object_is_not_a_message() {
        for line in [
            &b"42"[..],
            b"\"x\"",
            b"null",
            b"true",
            br#"{"method":5}"#,
            br#"{"id":1,"method":null,"result":{}}"#,
        ] {
            assert!(matches!(parse(line), Parsed::NotAMessage(_)), "{line:?}");
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for line in [&b"{"[..], b"nul", b"\xff\xfe", b"[1,", b"", b"   "] {
            assert!(matches!(parse(line), Parsed::Malformed(_)), "{line:?}");
        }
    }

    #[test]
    fn text_parsers_could_read_differently_is_refused() {
        for line in [
            // Duplicate keys, at the top, in params, deep in arguments, spelled with escapes.
            &br#"{"method":"ping","method":"tools/call","id":1}"#[..],
            br#"{"jsonrpc":"2.0","jsonrpc":"2.0","method":"ping"}"#,
            br#"{"id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            br#"{"id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":[{"p":1,"p":2}]}}}"#,
            br#"{"id":1,"method":"tools/call","params":{"name":"a","n\u0061me":"b"}}"#,
            // A byte order mark, trailing garbage, a second value, invalid UTF-8.
            b"\xef\xbb\xbf{\"method\":\"ping\"}",
            br#"{"method":"ping"} x"#,
            br#"{"method":"ping"}{"method":"tools/call"}"#,
            b"{\"method\":\"ping\",\"x\":\"\xff\"}",
            // Lone surrogates, in the method, a name, or anywhere.
            br#"{"id":1,"method":"tools/call\ud800"}"#,
            br#"{"id":1,"method":"tools/call","params":{"name":"a\udc00"}}"#,
            br#"{"id":1,"method":"x","params":{"z":["\ud800x"]}}"#,
            // Numbers no parser can hold, NaN, comments.
            br#"{"id":1,"method":"x","params":{"n":1e400}}"#,
            br#"{"id":1,"method":"x","params":{"n":NaN}}"#,
            br#"{"id":1,"method":"x"} // hi"#,
        ] {
            assert!(
                matches!(parse(line), Parsed::Malformed(_)),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        // The same keys in different objects are fine, and escapes that decode are fine.
        assert!(matches!(
            parse(
                br#"{"id":1,"method":"x","params":{"a":{"b":1},"c":{"b":1},"d":"\ud83d\ude00"}}"#
            ),
            Parsed::Message(_)
        ));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!(
            r#"{{"method":"x","params":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(matches!(parse(deep.as_bytes()), Parsed::Malformed(_)));
    }

    #[test]
    fn sniffing_finds_top_level_members_of_a_prefix() {
        let s = sniff(br#"{"jsonrpc":"2.0","id":"x\"y","method":"tools/call","params":{"arguments":{"id":9,"s":"#);
        assert_eq!(s.id, Some(IdKey::Str("x\"y".into())));
        assert!(s.method && !s.answer);
        let s = sniff(br#" { "result" : {"id":3, "a":[1,{"b":"}"}]}, "\u0069d": 5 , "#);
        assert_eq!(s.id, Some(IdKey::Int(5)));
        assert!(s.answer && !s.method);
        // The id nested deeper, or cut by the end of the prefix, is not the id.
        assert_eq!(sniff(br#"{"params":{"id":1},"x":"#).id, None);
        assert_eq!(sniff(br#"{"id":12"#).id, None);
        assert_eq!(sniff(br#"{"id":1.0,"method":"a"}"#).id, None);
        assert_eq!(sniff(b"not json"), Sniffed::default());
        assert_eq!(
            sniff(br#"{"result":"\"#),
            Sniffed {
                answer: true,
                ..Sniffed::default()
            }
        );
        assert!(sniff(b"\xef\xbb\xbf{\"method\":").method);
    }

    #[test]
    fn one_line_changes_no_value() {
        let body = b" {\r\n \"method\" :\t\"x\",\n\"params\":{\"s\":\"a\\nb\"}}\n";
        let line = one_line(body);
        assert!(!line.contains(&b'\n') && !line.contains(&b'\r'));
        let before: Value = serde_json::from_slice(body).unwrap();
        let after: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn refusal_is_a_tool_result_with_result_type_for_modern_peers() {
        let id = IdKey::Int(3);
        let legacy: Value = serde_json::from_slice(&refusal(&id, "no", false)).unwrap();
        assert_eq!(legacy["result"]["isError"], true);
        assert_eq!(legacy["result"]["content"][0]["text"], "no");
        assert!(legacy["result"].get("resultType").is_none());
        let modern: Value = serde_json::from_slice(&refusal(&id, "no", true)).unwrap();
        assert_eq!(modern["result"]["resultType"], "complete");
        assert_eq!(modern["id"], 3);
    }

    #[test]
    fn error_response_escapes_its_message() {
        let v: Value =
            serde_json::from_slice(&error_response(None, code::PARSE_ERROR, "bad \"x\"\n"))
                .unwrap();
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["error"]["message"], "bad \"x\"\n");
    }

    #[test]
    fn cancellations_name_ids_by_value() {
        let p = RawValue::from_string(r#"{"requestId":"\u0061"}"#.into()).unwrap();
        assert_eq!(
            cancelled_request(Some(Raw::of(&p))),
            Some(IdKey::Str("a".into()))
        );
        let p = RawValue::from_string(r#"{"requestId":1.0}"#.into()).unwrap();
        assert_eq!(cancelled_request(Some(Raw::of(&p))), None);
    }

    /// Messages with `~` where whitespace may go ([`read_tests`]).
    const SHAPES: &[&str] = &[
        r#"~{~"jsonrpc"~:~"2.0"~,~"id"~:~7~,~"method"~:~"tools/call"~,~"params"~:~{~"name"~:~"echo"~,~"arguments"~:~{~"t"~:~[~1~,~"a\nb"~]~}~,~"_meta"~:~{~"progressToken"~:~"p"~}~}~}~"#,
        r#"~{~"id"~:~"x\u0041"~,~"result"~:~{~"isError"~:~false~,~"content"~:~[~{~"type"~:~"text"~,~"text"~:~"hi"~}~]~,~"resultType"~:~"complete"~}~,~"jsonrpc"~:~"2.0"~}~"#,
        r#"~{~"jsonrpc"~:~"2.0"~,~"id"~:~1~,~"error"~:~{~"code"~:~-32601~,~"message"~:~"no"~}~}~"#,
        r#"~{~"jsonrpc"~:~"2.0"~,~"method"~:~"notifications/progress"~,~"params"~:~{~"inputResponses"~:~{}~,~"requestState"~:~"s\u0073"~}~}~"#,
        r#"~{~"jsonrpc"~:~"2.0"~,~"method"~:~"notifications/\u0070rogress"~,~"params"~:~{}~}~"#,
    ];

    mod read_tests {
        use proptest::prelude::*;

        use super::*;

        /// `shape` with each `~` replaced by the next of `spaces`.
        fn spaced(shape: &str, spaces: &[&str]) -> String {
            let mut text = String::new();
            for (i, piece) in shape.split('~').enumerate() {
                if i > 0 {
                    text.push_str(spaces[(i - 1) % spaces.len()]);
                }
                text.push_str(piece);
            }
            text
        }

        fn whitespace() -> impl Strategy<Value = Vec<&'static str>> {
            prop::collection::vec(
                prop::sample::select(vec!["", " ", "\t", "\r\n", "\n"]),
                1..40,
            )
        }

        type Members<'a> = (
            Option<Raw<'a>>,
            Option<Cow<'a, str>>,
            Option<Raw<'a>>,
            Option<Raw<'a>>,
            Option<Raw<'a>>,
            ParamsMembers<'a>,
            ResultMembers<'a>,
        );

        /// What a parse found, member by member.
        fn members<'a>(env: &Envelope<'a>) -> Members<'a> {
            (
                env.id,
                env.method.clone(),
                env.params,
                env.result,
                env.error,
                env.params_members,
                env.result_members,
            )
        }

        proptest! {
            /// A line taken with what was read of it reads as a scan of it does; so does the
            /// line made of it as `serve`'s upstream hop makes one (trimmed, its line breaks
            /// made spaces), with the ranges moved as `within` moves them.
            #[test]
            fn a_read_line_reads_as_its_scan(shape in prop::sample::select(SHAPES), spaces in whitespace()) {
                let text = spaced(shape, &spaces);
                let Parsed::Message(scanned) = parse(text.as_bytes()) else {
                    panic!("not a message: {text}");
                };
                let Some(read) = scanned.read(text.as_bytes()) else {
                    // Only a method spelled with escapes is not read ahead.
                    prop_assert!(matches!(scanned.method, Some(Cow::Owned(_))));
                    return Ok(());
                };
                let again = read.envelope(text.as_bytes()).expect("the same text");
                prop_assert_eq!(members(&again), members(&scanned));
                prop_assert_eq!(again.read(text.as_bytes()), Some(read));

                let start = text.len() - text.trim_ascii_start().len();
                let line: Vec<u8> = text
                    .trim_ascii()
                    .bytes()
                    .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b })
                    .collect();
                let moved = read.within(start, line.len()).expect("within the line");
                let Parsed::Message(rescanned) = parse(&line) else {
                    panic!("the line is a message");
                };
                let taken = moved.envelope(&line).expect("the line");
                prop_assert_eq!(members(&taken), members(&rescanned));
                prop_assert_eq!(rescanned.read(&line), Some(moved));
            }
        }

        #[test]
        fn a_read_is_refused_for_another_text() {
            let text = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}"#;
            let Parsed::Message(env) = parse(text) else {
                panic!("a message");
            };
            let read = env.read(text).unwrap();
            // Another length.
            assert!(read.envelope(&text[1..]).is_none());
            let mut longer = text.to_vec();
            longer.push(b' ');
            assert!(read.envelope(&longer).is_none());
            // Not UTF-8, or a range that cuts a character.
            let mut broken = text.to_vec();
            broken[30] = 0xff;
            assert!(read.envelope(&broken).is_none());
            // The same length, but the method's range ends inside a character.
            let ascii = r#"{"id":1,"method":"a","x":"bb"}"#;
            let wide = r#"{"id":1,"method":"€","x":""}"#;
            assert_eq!(ascii.len(), wide.len());
            let Parsed::Message(env) = parse(ascii.as_bytes()) else {
                panic!("a message");
            };
            assert!(
                env.read(ascii.as_bytes())
                    .unwrap()
                    .envelope(wide.as_bytes())
                    .is_none()
            );
            // Ranges outside what is left of a trimmed text: the id begins before half of
            // it, `params` ends one byte before its end.
            assert!(read.within(text.len() / 2, text.len()).is_none());
            assert!(read.within(0, text.len() - 2).is_none());
            assert!(read.within(0, text.len() - 1).is_some());
        }
    }
}
