//! A call's arguments as the agent sent them: the JSON text of an object, already checked by
//! the line's one pass (`jsonrpc/scan.rs`: UTF-8, serde_json's grammar and nesting limit, no
//! key twice), kept as text and read from it.
//!
//! The common call needs no tree of its arguments: the audit record's keys and HMAC, the
//! call event's arguments (secrets redacted, capped) and the continuation key are all read
//! from the text here, each byte-identical to what the `serde_json::Value` path gives (the
//! tests hold them to it). A tree is built once, and only when something asks for one: a
//! rule's conditions (through [`ArgsTree`]), learn mode, `--audit-args full`, or arguments
//! whose event must be rewritten because they hold a secret.
//!
//! Fail closed: a text this reader cannot follow is refused when the call arrives
//! ([`RawArgs::read`]), so it is never decided; should a tree still not be had later, every
//! condition is unknown, which denies.

use std::borrow::Cow;
use std::sync::OnceLock;

use serde_json::Value;
use smol_str::SmolStr;

use crate::policy::ArgsTree;
use crate::wire::CallArgs;

/// Arguments in call events are cut to this many bytes of JSON.
pub(crate) const EVENT_ARGS_CAP: usize = 4096;

/// serde_json's nesting limit (a 128th level is refused), kept here too so that no text
/// makes the walks below recurse deeper, whoever made it.
const MAX_DEPTH: u32 = 128;

/// The text could not be read as the JSON object the scan said it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unreadable;

/// A call's arguments: an object's JSON text, and its tree once something needed it.
pub struct RawArgs {
    /// Inline up to 23 bytes (most calls' arguments), else shared.
    text: SmolStr,
    /// What the walk at arrival found.
    seen: Seen,
    /// Boxed: most calls never build it, and a call is moved a few times on its way.
    tree: OnceLock<Option<Box<Value>>>,
}

impl std::fmt::Debug for RawArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawArgs")
            .field("len", &self.text.len())
            .finish_non_exhaustive()
    }
}

/// What one walk over the text found, for the call event.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// A secret-looking key, or a credential-shaped string: the event's copy is redacted.
    secret: bool,
    /// The text is already what `serde_json` writes for its tree (no whitespace, no escape,
    /// numbers in serde_json's form): the event carries it as it is.
    compact: bool,
    /// Compact, and every object's keys in byte order: the text is its own canonical form
    /// (what the audit HMAC hashes), so it is hashed as it is.
    canonical: bool,
    /// Where the top-level keys are in the text (start, end), when there are at most
    /// [`NOTED_KEYS`] and none has escapes (`noted` of them); else the audit record's keys
    /// are read by walking the text again.
    keys: [(u32, u32); NOTED_KEYS],
    noted: Option<u8>,
}

/// Top-level keys noted while the text is first read: most calls have a few.
const NOTED_KEYS: usize = 4;

impl Seen {
    /// Notes where a top-level key is, while there is room and no key has escapes.
    fn note_key(&mut self, text: &str, key: Str<'_>) {
        let Some(noted) = self.noted else { return };
        let start = (key.inner.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
        let span = u32::try_from(start)
            .ok()
            .zip(u32::try_from(start + key.inner.len()).ok());
        match span {
            Some(span) if !key.escaped && usize::from(noted) < NOTED_KEYS => {
                self.keys[usize::from(noted)] = span;
                self.noted = Some(noted + 1);
            }
            _ => self.noted = None,
        }
    }
}

impl ArgsTree for RawArgs {
    fn tree(&self) -> Option<&Value> {
        self.tree
            .get_or_init(|| serde_json::from_str(&self.text).ok())
            .as_deref()
    }
}

impl RawArgs {
    /// The arguments of a call that sent none (or `null`).
    pub(crate) fn empty() -> RawArgs {
        RawArgs {
            text: SmolStr::new_static("{}"),
            seen: Seen {
                secret: false,
                compact: true,
                canonical: true,
                keys: [(0, 0); NOTED_KEYS],
                noted: Some(0),
            },
            tree: OnceLock::new(),
        }
    }

    /// Reads an object's JSON text (the scan checked it); refused when it is not an object
    /// or cannot be followed.
    pub(crate) fn read(text: &str) -> Result<RawArgs, Unreadable> {
        let text = trim_whitespace(text);
        if !text.starts_with('{') {
            return Err(Unreadable);
        }
        let mut walk = Walk::new(text);
        let mut seen = Seen {
            secret: false,
            compact: true,
            canonical: true,
            keys: [(0, 0); NOTED_KEYS],
            noted: Some(0),
        };
        walk.inspect(0, &mut seen)?;
        walk.end()?;
        seen.compact &= !walk.spaced;
        seen.canonical &= seen.compact;
        Ok(RawArgs {
            text: SmolStr::new(text),
            seen,
            tree: OnceLock::new(),
        })
    }

    /// The arguments of `value` (the gateway's API for tests and the demo: `decide_call`).
    pub(crate) fn from_value(value: &Value) -> Result<RawArgs, Unreadable> {
        let text = serde_json::to_string(value).map_err(|_| Unreadable)?;
        RawArgs::read(&text)
    }

    /// The top-level keys, in their order, decoded.
    pub(crate) fn keys(&self) -> Keys<'_> {
        if let Some(noted) = self.seen.noted {
            let spans = &self.seen.keys[..usize::from(noted).min(NOTED_KEYS)];
            return Keys(KeysFrom::Noted(&self.text, spans.iter()));
        }
        let mut walk = Walk::new(&self.text);
        let open = walk.byte() == Some(b'{');
        if open {
            walk.i += 1;
        }
        Keys(KeysFrom::Walked {
            walk,
            first: true,
            done: !open,
        })
    }

    /// Streams the canonical JSON (keys sorted by their bytes, no whitespace, strings and
    /// numbers as `serde_json` writes them) into `out`: the same bytes
    /// `audit::canonical` streams for the arguments' tree.
    pub(crate) fn canonical<O: Out>(&self, out: &mut O) -> Result<(), Unreadable> {
        if self.seen.canonical {
            out.put(self.text.as_bytes());
            return Ok(());
        }
        // Gathered into pieces of up to a block, so a hash is handed a few pieces, not
        // every token on its own.
        let mut pieces = Pieces {
            out,
            buf: [0; 256],
            len: 0,
        };
        let mut walk = Walk::new(&self.text);
        walk.emit(0, true, &mut pieces)?;
        pieces.flush();
        walk.end()
    }

    /// The arguments as a call event carries them: secrets redacted, cut to
    /// [`EVENT_ARGS_CAP`] bytes of JSON (then a string of the first bytes, and `true`).
    /// Text already in serde_json's form is carried as it is; anything else is written as
    /// `serde_json` would write its tree, without building the tree unless a secret is to
    /// be redacted.
    pub(crate) fn into_event(self) -> (CallArgs, bool) {
        if self.seen.secret {
            return match self.tree() {
                Some(tree) => event_args(crate::redact::redact(tree)),
                // Not reached: the text was read at arrival. Nothing of it is shown.
                None => (CallArgs::Tree(Value::Null), true),
            };
        }
        let text = if self.seen.compact {
            self.text
        } else {
            let mut compact = Vec::with_capacity(self.text.len());
            let mut walk = Walk::new(&self.text);
            match walk.emit(0, false, &mut compact).and_then(|()| walk.end()) {
                // Only whole strings and ASCII punctuation were written: UTF-8.
                Ok(()) => SmolStr::new(String::from_utf8_lossy(&compact)),
                Err(Unreadable) => return (CallArgs::Tree(Value::Null), true),
            }
        };
        if text.len() <= EVENT_ARGS_CAP {
            return (CallArgs::Text(text), false);
        }
        let mut cut = EVENT_ARGS_CAP;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        (CallArgs::Tree(Value::String(text[..cut].to_owned())), true)
    }
}

/// The arguments' tree as a call event carries it: secrets redacted already, capped in
/// size (the arguments of a call that held a secret, and of the Value-built events).
pub(crate) fn event_args(args: Value) -> (CallArgs, bool) {
    // Almost every call's arguments fit: a bound on their text settles it without writing
    // them; otherwise they are measured without building the text.
    if json_len_bound(&args, EVENT_ARGS_CAP).is_some() {
        return (CallArgs::Tree(args), false);
    }
    let mut size = ByteCount(0);
    if serde_json::to_writer(&mut size, &args).is_ok() && size.0 <= EVENT_ARGS_CAP {
        return (CallArgs::Tree(args), false);
    }
    let text = args.to_string();
    let mut cut = EVENT_ARGS_CAP;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    (CallArgs::Tree(Value::String(text[..cut].to_owned())), true)
}

/// At least as many bytes as `value`'s compact JSON text has, if that is at most `cap`;
/// `None` beyond `cap` (the text may still fit: then it has to be measured). A string's
/// byte may take six (`\u001f`), a number at most 24 (`-2.2250738585072014e-308`).
fn json_len_bound(value: &Value, cap: usize) -> Option<usize> {
    let len = match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(text) => string_len_bound(text)?,
        Value::Array(items) => {
            let mut len = 2 + items.len();
            for item in items {
                len = len.checked_add(json_len_bound(item, cap)?)?;
                if len > cap {
                    return None;
                }
            }
            len
        }
        Value::Object(map) => {
            let mut len = 2 + 2 * map.len();
            for (key, value) in map {
                len = len.checked_add(string_len_bound(key)?)?;
                len = len.checked_add(json_len_bound(value, cap)?)?;
                if len > cap {
                    return None;
                }
            }
            len
        }
    };
    (len <= cap).then_some(len)
}

/// See [`json_len_bound`]: the quotes, and six bytes for every byte of `text`.
fn string_len_bound(text: &str) -> Option<usize> {
    text.len().checked_mul(6)?.checked_add(2)
}

/// Counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where the walks write JSON text: a hash, or a buffer.
pub(crate) trait Out {
    fn put(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Text for an [`Out`], handed on in pieces of up to 256 bytes.
struct Pieces<'o, O: Out> {
    out: &'o mut O,
    buf: [u8; 256],
    len: usize,
}

impl<O: Out> Pieces<'_, O> {
    fn flush(&mut self) {
        self.out.put(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl<O: Out> Out for Pieces<'_, O> {
    fn put(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > self.buf.len() {
            self.flush();
        }
        if bytes.len() >= self.buf.len() {
            self.out.put(bytes);
        } else {
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }
}

/// Hands what `serde_json` writes to an [`Out`].
struct Writer<'o, O>(&'o mut O);

impl<O: Out> std::io::Write for Writer<'_, O> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.put(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The top-level keys of [`RawArgs`], decoded.
pub(crate) struct Keys<'a>(KeysFrom<'a>);

enum KeysFrom<'a> {
    /// Where the first read noted them (none has escapes).
    Noted(&'a str, std::slice::Iter<'a, (u32, u32)>),
    /// Found by walking the text.
    Walked {
        walk: Walk<'a>,
        first: bool,
        done: bool,
    },
}

impl<'a> Iterator for Keys<'a> {
    type Item = Cow<'a, str>;

    fn next(&mut self) -> Option<Cow<'a, str>> {
        let (walk, first, done) = match &mut self.0 {
            KeysFrom::Noted(text, spans) => {
                let &(start, end) = spans.next()?;
                // Spans of this text, noted at a character boundary (after a quote).
                return text.get(start as usize..end as usize).map(Cow::Borrowed);
            }
            KeysFrom::Walked { walk, first, done } => (walk, first, done),
        };
        if *done {
            return None;
        }
        let key = walk.next_member(first).and_then(|member| {
            let Some(key) = member else { return Ok(None) };
            walk.skip(1)?;
            Ok(Some(key))
        });
        match key {
            Ok(Some(key)) => Some(key.decoded()),
            // The end of the object; or a text that cannot be followed, whose keys stop
            // (it was refused at arrival: not reached).
            Ok(None) | Err(Unreadable) => {
                *done = true;
                None
            }
        }
    }
}

/// `text` without JSON's whitespace (space, tab, line feed, carriage return) at either end.
/// Compared byte by byte: `str::trim_matches` with a set of `char`s decodes each character
/// and costs about a hundred instructions a call even when there is nothing to trim.
fn trim_whitespace(text: &str) -> &str {
    let is_whitespace = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let bytes = text.as_bytes();
    let start = bytes
        .iter()
        .position(|b| !is_whitespace(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_whitespace(b))
        .map_or(start, |last| last + 1);
    // Both ends are next to an ASCII byte, so on a character boundary.
    text.get(start..end).unwrap_or_default()
}

/// A string token as written: its text between the quotes, and whether it has escapes.
#[derive(Clone, Copy)]
struct Str<'a> {
    inner: &'a str,
    escaped: bool,
}

impl<'a> Str<'a> {
    fn decoded(self) -> Cow<'a, str> {
        if !self.escaped {
            return Cow::Borrowed(self.inner);
        }
        // The escapes of a checked string always decode; were one not to, the text is kept
        // as written (it was refused at arrival: not reached).
        let quoted = format!("\"{}\"", self.inner);
        match serde_json::from_str::<String>(&quoted) {
            Ok(text) => Cow::Owned(text),
            Err(_) => Cow::Borrowed(self.inner),
        }
    }

    /// Writes the string as `serde_json` writes its decoded text.
    fn emit<O: Out>(self, out: &mut O) -> Result<(), Unreadable> {
        if self.escaped {
            let text = self.try_decoded()?;
            serde_json::to_writer(Writer(out), text.as_str()).map_err(|_| Unreadable)
        } else {
            // No `"`, `\` or control character inside (the grammar): serde_json writes it
            // as it is.
            out.put(b"\"");
            out.put(self.inner.as_bytes());
            out.put(b"\"");
            Ok(())
        }
    }

    /// The decoded text, or why its escapes are not JSON's.
    #[inline]
    fn checked(self) -> Result<Cow<'a, str>, Unreadable> {
        if self.escaped {
            self.try_decoded().map(Cow::Owned)
        } else {
            Ok(Cow::Borrowed(self.inner))
        }
    }

    fn try_decoded(self) -> Result<String, Unreadable> {
        let quoted = format!("\"{}\"", self.inner);
        serde_json::from_str::<String>(&quoted).map_err(|_| Unreadable)
    }
}

/// A cursor over JSON text that the scan has checked; every step still says when the text
/// is not what it expects (never a panic, never a guess).
struct Walk<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    /// Whitespace was read past somewhere (the text is not serde_json's compact form).
    spaced: bool,
}

impl<'a> Walk<'a> {
    fn new(text: &'a str) -> Walk<'a> {
        Walk {
            text,
            b: text.as_bytes(),
            i: 0,
            spaced: false,
        }
    }

    #[inline]
    fn byte(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.byte() {
            self.i += 1;
            self.spaced = true;
        }
    }

    /// Only whitespace is left.
    fn end(&mut self) -> Result<(), Unreadable> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err(Unreadable)
        }
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Result<(), Unreadable> {
        self.ws();
        if self.byte() == Some(byte) {
            self.i += 1;
            Ok(())
        } else {
            Err(Unreadable)
        }
    }

    /// The string starting at the cursor (its opening quote).
    #[inline]
    fn string(&mut self) -> Result<Str<'a>, Unreadable> {
        if self.byte() != Some(b'"') {
            return Err(Unreadable);
        }
        let start = self.i + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            i += crate::gateway::jsonrpc::plain_prefix(self.b.get(i..).unwrap_or_default());
            match self.b.get(i) {
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    // The escaped character (a `\uXXXX`'s digits are read past as plain).
                    i += 2;
                }
                // A control character or the end: not a checked string.
                _ => return Err(Unreadable),
            }
        }
        let inner = self.text.get(start..i).ok_or(Unreadable)?;
        self.i = i + 1;
        Ok(Str { inner, escaped })
    }

    /// The number starting at the cursor, as written.
    fn number(&mut self) -> Result<&'a str, Unreadable> {
        let start = self.i;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.byte() {
            self.i += 1;
        }
        if self.i == start {
            return Err(Unreadable);
        }
        self.text.get(start..self.i).ok_or(Unreadable)
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Unreadable> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Unreadable)
        }
    }

    /// In an object (after its `{`): the next member's key and its colon, or `None` at the
    /// object's end (its `}` read). `first` says whether a member came before.
    #[inline]
    fn next_member(&mut self, first: &mut bool) -> Result<Option<Str<'a>>, Unreadable> {
        self.ws();
        match self.byte() {
            Some(b'}') => {
                self.i += 1;
                return Ok(None);
            }
            Some(b',') if !*first => {
                self.i += 1;
                self.ws();
            }
            Some(b'"') if *first => {}
            _ => return Err(Unreadable),
        }
        *first = false;
        let key = self.string()?;
        self.expect(b':')?;
        self.ws();
        Ok(Some(key))
    }

    /// In an array (after its `[`): whether another element follows (cursor on it), or the
    /// array's end (its `]` read).
    fn next_element(&mut self, first: &mut bool) -> Result<bool, Unreadable> {
        self.ws();
        match self.byte() {
            Some(b']') => {
                self.i += 1;
                return Ok(false);
            }
            Some(b',') if !*first => {
                self.i += 1;
                self.ws();
            }
            Some(_) if *first => {}
            _ => return Err(Unreadable),
        }
        *first = false;
        Ok(true)
    }

    /// Reads past the value at the cursor.
    fn skip(&mut self, depth: u32) -> Result<(), Unreadable> {
        self.ws();
        match self.byte() {
            Some(b'{') => {
                self.deeper(depth)?;
                let mut first = true;
                while self.next_member(&mut first)?.is_some() {
                    self.skip(depth + 1)?;
                }
                Ok(())
            }
            Some(b'[') => {
                self.deeper(depth)?;
                let mut first = true;
                while self.next_element(&mut first)? {
                    self.skip(depth + 1)?;
                }
                Ok(())
            }
            Some(b'"') => self.string().map(drop),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    /// Steps into an array or object (the cursor on its opening byte), within the limit.
    fn deeper(&mut self, depth: u32) -> Result<(), Unreadable> {
        if depth + 1 >= MAX_DEPTH {
            return Err(Unreadable);
        }
        self.i += 1;
        Ok(())
    }

    /// The text of the value at the cursor, read past.
    fn value_text(&mut self, depth: u32) -> Result<&'a str, Unreadable> {
        self.ws();
        let start = self.i;
        self.skip(depth)?;
        self.text.get(start..self.i).ok_or(Unreadable)
    }

    /// Reads past the value at the cursor noting, in `seen`, whether it holds something
    /// [`crate::redact::redact`] would change, and whether its text is not serde_json's.
    fn inspect(&mut self, depth: u32, seen: &mut Seen) -> Result<(), Unreadable> {
        self.ws();
        match self.byte() {
            Some(b'{') => {
                self.deeper(depth)?;
                let mut first = true;
                let mut last: Option<Cow<'a, str>> = None;
                while let Some(key) = self.next_member(&mut first)? {
                    if depth == 0 {
                        seen.note_key(self.text, key);
                    }
                    let key = key.checked()?;
                    if matches!(key, Cow::Owned(_)) {
                        seen.compact = false;
                        seen.canonical = false;
                    }
                    if seen.canonical {
                        if last
                            .as_ref()
                            .is_some_and(|l| l.as_bytes() >= key.as_bytes())
                        {
                            seen.canonical = false;
                        }
                        last = Some(key.clone());
                    }
                    if !seen.secret && crate::redact::is_secret_key(&key) {
                        // Its value is replaced, unless it says so already.
                        let value = self.value_text(depth + 1)?;
                        let mut again = Walk::new(value);
                        let redacted = again.byte() == Some(b'"')
                            && again
                                .string()
                                .is_ok_and(|s| s.decoded() == crate::redact::REDACTED);
                        if !redacted {
                            seen.secret = true;
                        }
                        let mut within = Walk::new(value);
                        within.inspect(depth + 1, seen)?;
                    } else {
                        self.inspect(depth + 1, seen)?;
                    }
                }
                Ok(())
            }
            Some(b'[') => {
                self.deeper(depth)?;
                let mut first = true;
                while self.next_element(&mut first)? {
                    self.inspect(depth + 1, seen)?;
                }
                Ok(())
            }
            Some(b'"') => {
                let text = self.string()?.checked()?;
                if matches!(text, Cow::Owned(_)) {
                    seen.compact = false;
                }
                if !seen.secret && matches!(crate::redact::redact_text(&text), Cow::Owned(_)) {
                    seen.secret = true;
                }
                Ok(())
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => {
                let number = self.number()?;
                if !is_serde_number(number) {
                    seen.compact = false;
                    // Read as serde_json reads it (its range too), or refused.
                    serde_json::from_str::<serde_json::Number>(number).map_err(|_| Unreadable)?;
                }
                Ok(())
            }
        }
    }

    /// Writes the value at the cursor as `serde_json` writes its tree, with every object's
    /// keys in byte order when `sorted` (the canonical form), else in their order.
    fn emit<O: Out>(&mut self, depth: u32, sorted: bool, out: &mut O) -> Result<(), Unreadable> {
        self.ws();
        match self.byte() {
            Some(b'{') => {
                self.deeper(depth)?;
                let start = self.i;
                let mut first = true;
                let mut in_order = true;
                let mut last: Option<Cow<'a, str>> = None;
                if sorted {
                    // Most objects are written in order (or have one member): then no
                    // sorted copy is made.
                    while let Some(key) = self.next_member(&mut first)? {
                        let key = key.decoded();
                        if last
                            .as_ref()
                            .is_some_and(|last| last.as_bytes() >= key.as_bytes())
                        {
                            in_order = false;
                        }
                        last = Some(key);
                        self.skip(depth + 1)?;
                    }
                    self.i = start;
                    first = true;
                }
                out.put(b"{");
                if in_order {
                    let mut n = 0usize;
                    while let Some(key) = self.next_member(&mut first)? {
                        if n > 0 {
                            out.put(b",");
                        }
                        n += 1;
                        key.emit(out)?;
                        out.put(b":");
                        self.emit(depth + 1, sorted, out)?;
                    }
                } else {
                    let mut members: Vec<(Cow<'a, str>, &'a str)> = Vec::new();
                    while let Some(key) = self.next_member(&mut first)? {
                        members.push((key.decoded(), self.value_text(depth + 1)?));
                    }
                    members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                    for (n, (key, value)) in members.into_iter().enumerate() {
                        if n > 0 {
                            out.put(b",");
                        }
                        serde_json::to_writer(Writer(out), &*key).map_err(|_| Unreadable)?;
                        out.put(b":");
                        Walk::new(value).emit(depth + 1, sorted, out)?;
                    }
                }
                out.put(b"}");
                Ok(())
            }
            Some(b'[') => {
                self.deeper(depth)?;
                out.put(b"[");
                let mut first = true;
                let mut n = 0usize;
                while self.next_element(&mut first)? {
                    if n > 0 {
                        out.put(b",");
                    }
                    n += 1;
                    self.emit(depth + 1, sorted, out)?;
                }
                out.put(b"]");
                Ok(())
            }
            Some(b'"') => self.string()?.emit(out),
            Some(b't') => self.literal(b"true").map(|()| out.put(b"true")),
            Some(b'f') => self.literal(b"false").map(|()| out.put(b"false")),
            Some(b'n') => self.literal(b"null").map(|()| out.put(b"null")),
            _ => {
                let number = self.number()?;
                if is_serde_number(number) {
                    out.put(number.as_bytes());
                    Ok(())
                } else {
                    let parsed: serde_json::Number =
                        serde_json::from_str(number).map_err(|_| Unreadable)?;
                    serde_json::to_writer(Writer(out), &parsed).map_err(|_| Unreadable)
                }
            }
        }
    }
}

/// Whether `serde_json` writes the number `text` back as it is: an integer without sign of
/// up to 19 digits (below `u64::MAX`, and JSON has no leading zeros), or a negative one of up
/// to 18 digits that is not `-0` (serde_json reads that as the float `-0.0`).
fn is_serde_number(text: &str) -> bool {
    let (digits, max) = match text.strip_prefix('-') {
        Some(digits) => (digits, 18),
        None => (text, 19),
    };
    !digits.is_empty()
        && digits.len() <= max
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && !(text.starts_with('-') && digits == "0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::audit::{AuditKey, args_sha256, raw_args_sha256};
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn whitespace_is_trimmed_as_json_defines_it_and_no_more() {
        const JSON_WHITESPACE: &[char] = &[' ', '\t', '\n', '\r'];
        for text in [
            "",
            " ",
            " \t\r\n ",
            "{}",
            " {} ",
            "\n{\"a\":1}\r\n",
            "\u{c}{}\u{c}",
            "\u{a0}{}\u{2003}",
            "é{}é",
            " é ",
        ] {
            assert_eq!(
                trim_whitespace(text),
                text.trim_matches(JSON_WHITESPACE),
                "{text:?}"
            );
        }
    }

    /// The event's arguments as the `Value` path made them (before arguments were read
    /// from their text): redacted when needed, then capped.
    fn by_tree(tree: &Value) -> (CallArgs, bool) {
        let redacted = if crate::redact::needs_redaction(tree) {
            crate::redact::redact(tree)
        } else {
            tree.clone()
        };
        event_args(redacted)
    }

    /// Everything read from the text equals what the tree gives: the audit HMAC and the
    /// continuation hash (the same canonical bytes), the keys, whether a secret is there,
    /// and the call event's JSON, byte for byte.
    fn same_as_tree(text: &str) -> Result<(), TestCaseError> {
        let tree: Value = serde_json::from_str(text).expect("the test's text is JSON");
        let raw =
            RawArgs::read(text).map_err(|_| TestCaseError::fail(format!("{text}: unreadable")))?;
        let key = AuditKey::fixed([7; 32]);
        let (from_text, from_tree) = (key.raw_args_hmac_hex(&raw), key.args_hmac_hex(&tree));
        prop_assert_eq!(from_text.as_str(), from_tree.as_str(), "HMAC of {}", text);
        prop_assert_eq!(
            raw_args_sha256(&raw),
            args_sha256(&tree),
            "SHA-256 of {}",
            text
        );
        let mut canonical = Vec::new();
        raw.canonical(&mut canonical).expect("canonical");
        let keys: Vec<String> = raw.keys().map(Cow::into_owned).collect();
        let tree_keys: Vec<String> = tree
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect();
        prop_assert_eq!(keys, tree_keys, "keys of {}", text);
        prop_assert_eq!(
            raw.seen.secret,
            crate::redact::needs_redaction(&tree),
            "{}",
            text
        );
        let (tree_args, tree_cut) = by_tree(&tree);
        let (raw_args, raw_cut) = raw.into_event();
        prop_assert_eq!(raw_cut, tree_cut, "{}", text);
        prop_assert_eq!(
            serde_json::to_string(&raw_args).expect("serialises"),
            serde_json::to_string(&tree_args).expect("serialises"),
            "event of {}",
            text
        );
        Ok(())
    }

    /// A JSON number in one of the forms the scanner accepts, with its text.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            // Beyond u64 and i64: serde_json reads a float.
            "-?[1-9][0-9]{19,30}",
            Just("-0".to_owned()),
            Just("-0.0".to_owned()),
            Just("0e0".to_owned()),
            Just("0".to_owned()),
            "-?(0|[1-9][0-9]{0,5})\\.[0-9]{1,20}",
            "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,4})?[eE][+-]?[0-9]{1,3}",
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| f.to_string()),
        ]
        .prop_filter("within serde_json's range", |t| {
            serde_json::from_str::<Value>(t).is_ok()
        })
    }

    /// `text` as a JSON string literal, each character written as is or escaped at random
    /// (`seed` picks), as an agent may.
    fn quoted(text: &str, seed: u64) -> String {
        let mut out = String::from("\"");
        for (n, c) in text.chars().enumerate() {
            let pick = (seed >> (n % 61)) & 3;
            let escape = |out: &mut String| {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            };
            match c {
                '"' => out.push_str(if pick == 0 { "\\u0022" } else { "\\\"" }),
                '\\' => out.push_str("\\\\"),
                '\n' if pick != 0 => out.push_str("\\n"),
                '/' if pick == 1 => out.push_str("\\/"),
                c if (c as u32) < 0x20 => escape(&mut out),
                _ if pick == 3 => escape(&mut out),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 _./:-]{0,12}",
            "\\PC{0,8}",
            "[\"\\\\/\n\t\u{1}\u{7f}é🦀\u{2028}]{0,6}",
            Just("[redacted]".to_owned()),
            Just("postgres://me:hunter2@db/app".to_owned()),
            Just("Bearer abcdefghijklmnopqrstuvwxyz".to_owned()),
        ]
    }

    /// Optional whitespace, as an agent may put between tokens.
    fn space(seed: u64, at: usize) -> &'static str {
        match (seed >> (at % 60)) & 7 {
            0 => " ",
            1 => "\n\t ",
            2 => "\r\n",
            _ => "",
        }
    }

    /// Arbitrary JSON text: nested objects (unique keys, secret-looking ones among them)
    /// and arrays, strings written with and without escapes, numbers in every form.
    fn json_text() -> BoxedStrategy<String> {
        let leaf = prop_oneof![
            number(),
            (string(), any::<u64>()).prop_map(|(s, seed)| quoted(&s, seed)),
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("null".to_owned()),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..6), any::<u64>()).prop_map(
                    |(items, seed)| {
                        let s = |n| space(seed, n);
                        let body: Vec<String> = items
                            .iter()
                            .enumerate()
                            .map(|(n, i)| format!("{}{i}{}", s(n), s(n + 7)))
                            .collect();
                        format!("[{}]", body.join(","))
                    }
                ),
                object(inner),
            ]
        })
        .boxed()
    }

    fn object(inner: impl Strategy<Value = String> + Clone) -> impl Strategy<Value = String> {
        let key = prop_oneof![
            "[a-zA-Z_]{0,8}",
            "\\PC{0,4}",
            Just("apiKey".to_owned()),
            Just("db_pwd".to_owned()),
            Just("token".to_owned()),
            Just("\u{1}k\"\\".to_owned()),
        ];
        (prop::collection::vec((key, inner), 0..6), any::<u64>()).prop_map(|(members, seed)| {
            let mut seen = std::collections::HashSet::new();
            let body: Vec<String> = members
                .into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .enumerate()
                .map(|(n, (k, v))| {
                    let s = |m| space(seed, n * 3 + m);
                    format!(
                        "{}{}{}:{}{v}{}",
                        s(0),
                        quoted(&k, seed.rotate_left(n as u32)),
                        s(1),
                        s(2),
                        s(3)
                    )
                })
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn what_is_read_from_the_text_is_what_the_tree_gives(
            text in object(json_text()),
        ) {
            same_as_tree(&text)?;
        }
    }

    #[test]
    fn fixed_arguments_read_from_their_text_as_from_their_tree() {
        let long = format!(r#"{{"s":"{}"}}"#, "x".repeat(EVENT_ARGS_CAP));
        let escaped_long = format!(r#"{{"s":"{}"}}"#, "\\u00e9".repeat(EVENT_ARGS_CAP / 3));
        let near = format!(r#"{{"s":"{}"}}"#, "\\u0001".repeat(EVENT_ARGS_CAP / 6 - 1));
        let numbers_over = format!(r#"{{"n":[{}]}}"#, vec!["1E2"; 1000].join(","));
        for text in [
            r#"{}"#,
            r#"{"message":"hello"}"#,
            r#"{ "message" : "hello" }"#,
            r#"{"b":1,"a":2}"#,
            r#"{"z":{"y":{"x":[{"k2":1,"k1":"v"}]}},"Z":18446744073709551615}"#,
            r#"{"n":[0,-0,-0.0,0e0,1e2,1E2,1e+2,1e-7,0.1e1,2.50,-3e40,123456789012345678901234567890,-9223372036854775808,18446744073709551616,1.7976931348623157e308,5e-324,1234567890123456789,-123456789012345678]}"#,
            r#"{"\u0062":1,"a":2,"\u00e9":3,"e":4}"#,
            r#"{"s":"\ud83e\udd80 \u00e9 \/ \" \\ \n \u0001 \u007f \u2028"}"#,
            r#"{"apiKey":"sk-12345678901234567890","note":"hello"}"#,
            r#"{"apiKey":"[redacted]","note":"hello"}"#,
            r#"{"ap\u0069Key":"x"}"#,
            r#"{"token":{"nested":[1,2]},"db":"postgres://app:hunter2@db/app"}"#,
            r#"{"deep":[{"password":"p"},{"ok":"Bearer abcdefghijklmnopqrstuvwx"}]}"#,
            r#"{"k":[[],{},[null,[true]],{"":{"":[]}}]}"#,
            long.as_str(),
            escaped_long.as_str(),
            near.as_str(),
            numbers_over.as_str(),
        ] {
            if let Err(e) = same_as_tree(text) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn compact_arguments_are_carried_as_they_came() {
        let raw = RawArgs::read(r#"{"message":"hello","n":[1,-2,true,null]}"#).unwrap();
        assert!(raw.seen.compact && raw.seen.canonical && !raw.seen.secret);
        let unsorted = RawArgs::read(r#"{"b":1,"a":{"d":2,"c":3}}"#).unwrap();
        assert!(unsorted.seen.compact && !unsorted.seen.canonical);
        let mut canonical = Vec::new();
        unsorted.canonical(&mut canonical).unwrap();
        assert_eq!(canonical, br#"{"a":{"c":3,"d":2},"b":1}"#);
        let (args, cut) = raw.into_event();
        assert!(!cut);
        assert!(
            matches!(args, CallArgs::Text(t) if t == r#"{"message":"hello","n":[1,-2,true,null]}"#)
        );
        for text in [
            r#"{"a": 1}"#,
            r#"{"a":"\u0041"}"#,
            r#"{"a":1e2}"#,
            r#"{"a":-0}"#,
        ] {
            assert!(!RawArgs::read(text).unwrap().seen.compact, "{text}");
        }
    }

    #[test]
    fn keys_are_noted_on_the_first_read_or_found_again_by_a_walk() {
        let noted = RawArgs::read(r#"{"a":1,"b":{"x":2},"c":"3"}"#).unwrap();
        assert_eq!(noted.seen.noted, Some(3));
        assert_eq!(noted.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        for (text, keys) in [
            (
                r#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#,
                vec!["a", "b", "c", "d", "e"],
            ),
            (r#"{"a":1,"\u0062":2}"#, vec!["a", "b"]),
        ] {
            let walked = RawArgs::read(text).unwrap();
            assert_eq!(walked.seen.noted, None, "{text}");
            assert_eq!(walked.keys().collect::<Vec<_>>(), keys, "{text}");
        }
        assert_eq!(RawArgs::empty().keys().count(), 0);
    }

    #[test]
    fn text_that_is_not_an_object_or_not_json_is_refused() {
        for text in [
            "",
            "[]",
            "\"s\"",
            "1",
            "null",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\":1}x",
            "{\"a\":tru}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"x}",
            "{'a':1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":1e999}",
            "{\"a\":\"\\q\"}",
            "{\"\\ud800\":1}",
            "{\"a\":[1,]}",
            "{\"a\":1 \"b\":2}",
        ] {
            assert_eq!(RawArgs::read(text).err(), Some(Unreadable), "{text:?}");
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(RawArgs::read(&deep).err(), Some(Unreadable));
    }

    #[test]
    fn the_tree_is_built_only_when_asked_and_then_once() {
        let raw = RawArgs::read(r#"{"amount":5}"#).unwrap();
        assert!(raw.tree.get().is_none());
        let _ = raw.keys().count();
        let mut sink = Vec::new();
        raw.canonical(&mut sink).unwrap();
        assert!(
            raw.tree.get().is_none(),
            "keys and canonical form need no tree"
        );
        assert_eq!(raw.tree(), Some(&json!({"amount": 5})));
        assert!(std::ptr::eq(raw.tree().unwrap(), raw.tree().unwrap()));
    }

    #[test]
    fn the_bound_on_an_event_s_arguments_is_never_below_their_text() {
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(-9223372036854775808i64),
            json!(18446744073709551615u64),
            json!(-2.2250738585072014e-308),
            json!(-1.7976931348623157e308),
            json!(1e-7),
            json!(f64::NAN),
            json!(""),
            json!("\u{1}\u{1f}\u{7f}\"\\/\n é 🦀"),
            json!([]),
            json!({}),
            json!([[], {}, [null, [true]], {"": {"": []}}]),
            json!({"message": "hello", "n": [1, 2.5, -3e40], "\u{1}k\"": {"a": null}}),
        ];
        for value in values {
            let text = value.to_string();
            let bound = json_len_bound(&value, usize::MAX).expect("no cap");
            assert!(bound >= text.len(), "{text}: bound {bound}");
            assert_eq!(json_len_bound(&value, text.len() - 1), None, "{text}");
        }
        // Arguments the bound cannot place under the cap are measured, and kept when they fit.
        let fits = json!({"s": "\u{1}".repeat(EVENT_ARGS_CAP / 6 - 1)});
        assert_eq!(json_len_bound(&fits, EVENT_ARGS_CAP), None);
        assert_eq!(event_args(fits.clone()), (CallArgs::Tree(fits), false));
        let over = json!({"s": "x".repeat(EVENT_ARGS_CAP)});
        let (preview, truncated) = event_args(over);
        assert!(truncated);
        assert_eq!(preview.tree().as_str().map(str::len), Some(EVENT_ARGS_CAP));
    }

    /// The redaction fixtures: the call event carries, and so the console reads, what it
    /// did when the event was made from the arguments' tree, and secrets are gone from it.
    #[test]
    fn the_console_sees_the_redaction_fixtures_as_before() {
        for (text, expected) in crate::redact::tests::CREDENTIALS {
            let args = json!({"keyName": "staging", "note": text, "list": [text, 1],
                "apiKey": "sk-1", "nested": [{"token": "t", "x": 1}], "done": "[redacted]"});
            let redacted = json!({"keyName": "staging", "note": expected, "list": [expected, 1],
                "apiKey": "[redacted]", "nested": [{"token": "[redacted]", "x": 1}],
                "done": "[redacted]"});
            let compact = args.to_string();
            let spaced = serde_json::to_string_pretty(&args).unwrap();
            for written in [compact, spaced] {
                if let Err(e) = same_as_tree(&written) {
                    panic!("{e}");
                }
                let (event, cut) = RawArgs::read(&written).unwrap().into_event();
                assert!(!cut);
                let seen: CallArgs =
                    serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
                assert_eq!(seen, redacted, "{written}");
            }
        }
        // Arguments with nothing secret reach the console as they were sent.
        let plain = r#"{"keyName":"staging","apiKey":"[redacted]","n":[1,2.5]}"#;
        let (event, _) = RawArgs::read(plain).unwrap().into_event();
        assert_eq!(serde_json::to_string(&event).unwrap(), plain);
    }
}
