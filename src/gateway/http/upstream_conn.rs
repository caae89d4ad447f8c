//! One HTTP/1.1 connection to a URL upstream, spoken directly: a request written in one
//! piece, an answer's head parsed by `httparse` (hyper's parser), its body framed here.
//!
//! Every byte the server sends is hostile, so the framing is strict and fails closed:
//! - the head is at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields, obsolete line folding
//!   is refused (`httparse`'s default), and interim `1xx` answers are skipped, at most
//!   [`MAX_INTERIM`] of them (`101` is refused: nothing here asks for an upgrade);
//! - `Transfer-Encoding` must be `chunked` alone; with a `Content-Length` beside it the answer
//!   is refused (RFC 9112 §6.3: the sign of an attempt to split or smuggle answers);
//! - `Content-Length` values (several fields, or a list) must all be the same digits;
//! - a chunk's size line is `httparse`'s, its data must end in CRLF, trailers are read and
//!   dropped, at most [`MAX_TRAILERS`] bytes;
//! - without either, the body runs to the connection's end, which is then not reused.
//!
//! A connection goes back to its session's idle list ([`super::upstream_pool`]) only when its
//! answer was read to the end, said nothing of closing, was HTTP/1.1, and left no byte
//! behind it. Nothing here gives the server more than it has anyway: it alone writes on its
//! connection, and whatever it makes the gateway read is an answer from it, checked by the
//! core like any other.
//!
//! Until session 18 these connections were hyper's (`client::conn::http1`): its dispatch
//! (a channel and a oneshot per request), its body channel and its generic head encoding
//! were about a tenth of `serve`'s CPU per call.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most an answer's head may take (status line and fields).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// The most fields an answer's head may have.
pub(super) const MAX_HEADERS: usize = 100;
/// The most interim (`1xx`) answers skipped before the answer.
pub(super) const MAX_INTERIM: usize = 16;
/// The most a chunk's size line may take (with its extensions).
pub(super) const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The most the trailers of a chunked body may take.
pub(super) const MAX_TRAILERS: usize = 64 * 1024;
/// How much room a read asks for at least.
const READ_ROOM: usize = 8 * 1024;

/// A connection, and the bytes read from it and not yet taken.
pub(super) struct Connection {
    stream: TcpStream,
    buf: BytesMut,
}

/// Why a request was not written whole.
pub(super) enum WriteFailed {
    /// Not one byte of it was taken: it can go on another connection.
    Untaken(String),
    /// Some of it went: the server may have acted on it.
    PartWay(String),
}

/// An answer's head.
pub(super) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
}

/// How the rest of an answer is read, and whether its connection may carry another.
pub(super) struct Body {
    framing: Framing,
    /// HTTP/1.1, no `Connection: close`, and an end of its own (not the connection's).
    keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// So many bytes are left.
    Length(u64),
    /// Chunked, at this point.
    Chunked(Chunked),
    /// Until the connection ends.
    UntilClose,
    /// Read to its end.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// A size line comes next.
    Size,
    /// So many bytes of a chunk's data are left.
    Data(u64),
    /// The CRLF after a chunk's data comes next.
    DataEnd,
    /// The trailer fields: so many bytes of them taken, and so many of the line now in the
    /// buffer already looked through for its end.
    Trailers { taken: usize, scanned: usize },
}

impl Body {
    /// Whether the body was read to its end.
    pub(super) fn is_done(&self) -> bool {
        self.framing == Framing::Done
    }

    /// Whether the connection may carry another request once the body is done.
    pub(super) fn reusable(&self, connection: &Connection) -> bool {
        self.is_done() && self.keep_alive && connection.buf.is_empty()
    }
}

impl Connection {
    pub(super) fn new(stream: TcpStream) -> Connection {
        Connection {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection is still good to use: the server has neither closed it
    /// nor sent anything unasked. Reads only what the runtime already saw come.
    pub(super) fn idle_and_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Writes a request whole.
    pub(super) async fn write(&mut self, request: &[u8]) -> Result<(), WriteFailed> {
        let first = match self.stream.write(request).await {
            Ok(0) => return Err(WriteFailed::Untaken("the connection is closed".into())),
            Ok(n) => n,
            Err(e) => return Err(WriteFailed::Untaken(e.to_string())),
        };
        self.stream
            .write_all(&request[first..])
            .await
            .map_err(|e| WriteFailed::PartWay(e.to_string()))
    }

    /// Reads more into the buffer; `Ok(false)` at the connection's end.
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 4 {
            self.buf.reserve(READ_ROOM);
        }
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// Reads an answer's head (skipping interim ones).
    pub(super) async fn head(&mut self, method: &Method) -> Result<Head, String> {
        let mut interim = 0;
        // How much of the buffer the last parse saw. A head is parsed again only when a line
        // of it has ended since: it has at most `MAX_HEADERS` lines before it is refused, so
        // one that comes a byte at a time costs at most that many parses, not one per byte.
        let mut scanned = 0;
        loop {
            if line_ended_since(&self.buf, scanned)
                && let Some(head) = self.parse_head(method)?
            {
                if head.status.is_informational() {
                    interim += 1;
                    if head.status == StatusCode::SWITCHING_PROTOCOLS || interim > MAX_INTERIM {
                        return Err(format!("the MCP server answered {}", head.status));
                    }
                    scanned = 0;
                    continue;
                }
                return Ok(head);
            }
            scanned = self.buf.len();
            if self.buf.len() >= MAX_HEAD {
                return Err(format!(
                    "the MCP server's answer has a head over {} KiB",
                    MAX_HEAD / 1024
                ));
            }
            match self.fill().await {
                Ok(true) => {}
                Ok(false) if self.buf.is_empty() => {
                    return Err("the MCP server closed the connection without answering".into());
                }
                Ok(false) => return Err("the MCP server's answer ended in its head".into()),
                Err(e) => return Err(format!("reading the MCP server's answer: {e}")),
            }
        }
    }

    /// A complete head at the start of the buffer, taken off it; `None` when it is not all
    /// there yet.
    fn parse_head(&mut self, method: &Method) -> Result<Option<Head>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let end = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &self.buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(end)) => end,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("the MCP server's answer is not HTTP/1.1: {e}")),
        };
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| format!("the MCP server's answer has status {code}"))?;
        let mut headers = HeaderMap::with_capacity(parsed.headers.len());
        let mut keep_alive = parsed.version == Some(1);
        let mut length: Option<u64> = None;
        let mut chunked = false;
        for field in parsed.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| {
                format!(
                    "the MCP server's answer has a bad field name {:?}",
                    field.name
                )
            })?;
            let value = HeaderValue::from_bytes(field.value)
                .map_err(|_| format!("the MCP server's answer has a bad value for {name}"))?;
            if name == header::CONTENT_LENGTH {
                length = Some(content_length(length, field.value)?);
            } else if name == header::TRANSFER_ENCODING {
                if chunked || !is_chunked_alone(field.value) {
                    return Err(
                        "the MCP server's answer has a transfer coding other than chunked".into(),
                    );
                }
                chunked = true;
            } else if name == header::CONNECTION && names_token(field.value, "close") {
                keep_alive = false;
            }
            headers.append(name, value);
        }
        self.buf.advance(end);
        let framing = if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || method == Method::HEAD
        {
            Framing::Done
        } else if chunked {
            if length.is_some() {
                return Err(
                    "the MCP server's answer has both Content-Length and Transfer-Encoding".into(),
                );
            }
            Framing::Chunked(Chunked::Size)
        } else {
            match length {
                Some(0) => Framing::Done,
                Some(n) => Framing::Length(n),
                // Its end is the connection's: nothing can follow it.
                None => {
                    keep_alive = false;
                    Framing::UntilClose
                }
            }
        };
        Ok(Some(Head {
            status,
            headers,
            body: Body {
                framing,
                keep_alive,
            },
        }))
    }

    /// The next piece of `body`; `None` at its end.
    pub(super) async fn chunk(&mut self, body: &mut Body) -> Result<Option<Bytes>, String> {
        loop {
            match body.framing {
                Framing::Done => return Ok(None),
                Framing::Length(left) => {
                    if self.buf.is_empty() && !self.fill().await.map_err(|e| e.to_string())? {
                        return Err("the MCP server's answer ended before its length".into());
                    }
                    let (data, left) = self.take_up_to(left);
                    body.framing = if left == 0 {
                        Framing::Done
                    } else {
                        Framing::Length(left)
                    };
                    return Ok(Some(data));
                }
                Framing::UntilClose => {
                    if self.buf.is_empty() && !self.fill().await.map_err(|e| e.to_string())? {
                        body.framing = Framing::Done;
                        return Ok(None);
                    }
                    return Ok(Some(self.buf.split().freeze()));
                }
                Framing::Chunked(state) => {
                    if let Some(data) = self.chunked(&mut body.framing, state)? {
                        return Ok(Some(data));
                    }
                    if matches!(body.framing, Framing::Chunked(now) if now == state)
                        && !self.fill().await.map_err(|e| e.to_string())?
                    {
                        return Err("the MCP server's answer ended inside its chunks".into());
                    }
                }
            }
        }
    }

    /// As much of the next `left` bytes as the buffer holds, taken off it, and how many of
    /// them are still to come.
    fn take_up_to(&mut self, left: u64) -> (Bytes, u64) {
        let take = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        (self.buf.split_to(take).freeze(), left - take as u64)
    }

    /// One step of a chunked body, on what the buffer holds: data when some was taken; the
    /// framing left as it was when more must be read first.
    fn chunked(&mut self, framing: &mut Framing, state: Chunked) -> Result<Option<Bytes>, String> {
        let bad = |what: &str| format!("the MCP server's chunked answer is malformed ({what})");
        match state {
            Chunked::Size => match httparse::parse_chunk_size(&self.buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    self.buf.advance(used);
                    *framing = Framing::Chunked(if size == 0 {
                        Chunked::Trailers {
                            taken: 0,
                            scanned: 0,
                        }
                    } else {
                        Chunked::Data(size)
                    });
                }
                Ok(httparse::Status::Partial) if self.buf.len() > MAX_CHUNK_LINE => {
                    return Err(bad("a size line too long"));
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(bad("a bad chunk size")),
            },
            Chunked::Data(left) => {
                if !self.buf.is_empty() {
                    let (data, left) = self.take_up_to(left);
                    *framing = Framing::Chunked(if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    });
                    return Ok(Some(data));
                }
            }
            Chunked::DataEnd => {
                if self.buf.len() >= 2 {
                    if &self.buf[..2] != b"\r\n" {
                        return Err(bad("no CRLF after a chunk"));
                    }
                    self.buf.advance(2);
                    *framing = Framing::Chunked(Chunked::Size);
                } else if !self.buf.is_empty() && self.buf[0] != b'\r' {
                    return Err(bad("no CRLF after a chunk"));
                }
            }
            Chunked::Trailers { mut taken, scanned } => {
                // Lines up to an empty one, each ending in CRLF; a line's bytes are looked
                // through once however slowly it comes.
                let mut from = scanned;
                while let Some(found) = memchr::memchr(b'\n', &self.buf[from..]) {
                    let at = from + found;
                    if at == 0 || self.buf[at - 1] != b'\r' {
                        return Err(bad("a trailer line without CRLF"));
                    }
                    taken += at + 1;
                    if taken > MAX_TRAILERS {
                        return Err(bad("trailers too long"));
                    }
                    self.buf.advance(at + 1);
                    from = 0;
                    if at == 1 {
                        *framing = Framing::Done;
                        return Ok(None);
                    }
                }
                if taken + self.buf.len() > MAX_TRAILERS {
                    return Err(bad("trailers too long"));
                }
                *framing = Framing::Chunked(Chunked::Trailers {
                    taken,
                    scanned: self.buf.len(),
                });
            }
        }
        Ok(None)
    }
}

/// Whether a parse of `buf` could say more than one of its first `scanned` bytes did: on a
/// first look, or when a line has ended since.
fn line_ended_since(buf: &[u8], scanned: usize) -> bool {
    scanned == 0 || memchr::memchr(b'\n', &buf[scanned..]).is_some()
}

/// A `Content-Length` field's value (`1*DIGIT`, or a list of the same), checked against the
/// one seen before it.
fn content_length(before: Option<u64>, value: &[u8]) -> Result<u64, String> {
    let bad = || "the MCP server's answer has a bad Content-Length".to_owned();
    let mut length = before;
    for item in value.split(|&b| b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let n = item.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        match length {
            Some(seen) if seen != n => return Err(bad()),
            _ => length = Some(n),
        }
    }
    length.ok_or_else(bad)
}

/// Whether a `Transfer-Encoding` value is `chunked` and nothing else.
fn is_chunked_alone(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// Whether a comma-separated list of tokens names `token` (case-insensitively).
fn names_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A request's bytes: its line, `Host`, the caller's fields (less those that frame the
/// message, which are this module's), its length, its body.
pub(super) fn request(
    method: &Method,
    target: &str,
    host: &HeaderValue,
    headers: &HeaderMap,
    body: &[u8],
) -> Vec<u8> {
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let mut out = Vec::with_capacity(64 + target.len() + host.len() + fields + body.len());
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || method == Method::POST {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose server side writes `answer` (then stays open unless `close`), and
    /// the server's end kept so the connection does not end on its own.
    async fn connection(answer: &[u8], close: bool) -> (Connection, Option<TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (mut server, _) = accepted.unwrap();
        server.write_all(answer).await.unwrap();
        let server = if close {
            drop(server);
            None
        } else {
            Some(server)
        };
        (Connection::new(client.unwrap()), server)
    }

    /// The answer's status, body and whether its connection may be reused; `Err` with what
    /// went wrong, from the head or the body.
    async fn read(answer: &[u8], close: bool) -> Result<(u16, Vec<u8>, bool), String> {
        let (mut conn, _server) = connection(answer, close).await;
        let read = async {
            let head = conn.head(&Method::POST).await?;
            let mut body = head.body;
            let mut got = Vec::new();
            while let Some(chunk) = conn.chunk(&mut body).await? {
                assert!(!chunk.is_empty(), "an empty chunk");
                got.extend_from_slice(&chunk);
            }
            Ok((head.status.as_u16(), got, body.reusable(&conn)))
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("an answer or an error within 5 s, not a wait for more")
    }

    fn refused(result: Result<(u16, Vec<u8>, bool), String>, says: &str) {
        match result {
            Err(e) => assert!(e.contains(says), "{e:?} does not say {says:?}"),
            Ok(got) => panic!("accepted: {got:?}"),
        }
    }

    #[tokio::test]
    async fn a_sized_answer_is_read_and_its_connection_kept() {
        let got = read(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false).await;
        assert_eq!(got, Ok((200, b"hello".to_vec(), true)));
        // The same length twice, as a list or in two fields, is one length.
        let twice = b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(read(twice, false).await, Ok((200, b"hello".to_vec(), true)));
        let empty = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(read(empty, false).await, Ok((202, Vec::new(), true)));
    }

    #[tokio::test]
    async fn a_chunked_answer_is_read_whole_with_extensions_and_trailers_dropped() {
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n\
            3;name=value\r\nabc\r\n2 \r\nde\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(
            read(answer, false).await,
            Ok((200, b"abcde".to_vec(), true))
        );
    }

    #[tokio::test]
    async fn framing_that_could_split_answers_is_refused() {
        let both = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        refused(
            read(both, false).await,
            "both Content-Length and Transfer-Encoding",
        );
        for coding in ["gzip", "gzip, chunked", "chunked, chunked", "identity"] {
            let answer = format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: {coding}\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            );
            refused(read(answer.as_bytes(), false).await, "transfer coding");
        }
        let twice = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        refused(read(twice, false).await, "transfer coding");
        for length in ["5, 6", "+5", "0x5", "5.0", "", "-1", "99999999999999999999"] {
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\nhello");
            refused(read(answer.as_bytes(), false).await, "Content-Length");
        }
        let differ = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 4\r\n\r\nhello";
        refused(read(differ, false).await, "Content-Length");
    }

    #[tokio::test]
    async fn malformed_chunks_are_refused() {
        let cases: [&[u8]; 5] = [
            // More hex digits than a size can hold.
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            // The data longer than its size said.
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx: 1\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        ];
        for answer in cases {
            refused(read(answer, false).await, "chunked answer is malformed");
        }
    }

    #[tokio::test]
    async fn endless_heads_size_lines_and_trailers_are_cut_off() {
        // A field that never ends: the head is refused at the cap, not buffered on.
        let mut head = b"HTTP/1.1 200 OK\r\nx-filler: ".to_vec();
        head.resize(MAX_HEAD + 4096, b'a');
        refused(read(&head, false).await, "head over");
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            many.extend_from_slice(b"x: 1\r\n");
        }
        many.extend_from_slice(b"content-length: 0\r\n\r\n");
        refused(read(&many, false).await, "not HTTP/1.1");
        let mut size = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;".to_vec();
        size.resize(size.len() + MAX_CHUNK_LINE + 10, b'a');
        refused(read(&size, false).await, "size line too long");
        let mut trailers = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n".to_vec();
        while trailers.len() <= MAX_TRAILERS + 100 {
            trailers.extend_from_slice(b"x-trailer: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        refused(read(&trailers, false).await, "trailers too long");
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_but_not_an_upgrade_or_endless_ones() {
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\n\
            HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(read(answer, false).await, Ok((200, b"{}".to_vec(), true)));
        let upgrade = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n";
        refused(read(upgrade, false).await, "101");
        let endless = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM + 1);
        refused(read(&endless, false).await, "100");
    }

    #[tokio::test]
    async fn bad_heads_are_refused() {
        let folded = b"HTTP/1.1 200 OK\r\nx-a: 1\r\n  folded\r\ncontent-length: 0\r\n\r\n";
        refused(read(folded, false).await, "not HTTP/1.1");
        refused(read(b"HTTP/2 200 OK\r\n\r\n", false).await, "not HTTP/1.1");
        refused(
            read(b"{\"jsonrpc\":\"2.0\"}\n", false).await,
            "not HTTP/1.1",
        );
        refused(
            read(b"HTTP/1.1 200 OK\r\ncontent-le", true).await,
            "ended in its head",
        );
        refused(
            read(b"", true).await,
            "closed the connection without answering",
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error() {
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
        refused(read(sized, true).await, "ended before its length");
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel";
        refused(read(chunked, true).await, "ended inside its chunks");
    }

    #[tokio::test]
    async fn connections_that_cannot_carry_another_answer_are_not_kept() {
        // Read to the close.
        let unframed = b"HTTP/1.1 200 OK\r\n\r\nall of it";
        assert_eq!(
            read(unframed, true).await,
            Ok((200, b"all of it".to_vec(), false))
        );
        let close =
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(read(close, false).await, Ok((200, b"{}".to_vec(), false)));
        let old = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(read(old, false).await, Ok((200, b"{}".to_vec(), false)));
        // Bytes after the answer: nobody asked for them.
        let more = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n";
        assert_eq!(read(more, false).await, Ok((200, b"{}".to_vec(), false)));
        // No body, whatever the fields say; what follows is unasked for.
        let none = b"HTTP/1.1 204 No Content\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(read(none, false).await, Ok((204, Vec::new(), false)));
    }

    /// Answers of each framing, valid or not, fed a byte at a time: the same outcome as
    /// whole, so no state is lost between reads.
    #[tokio::test]
    async fn an_answer_read_a_byte_at_a_time_reads_as_whole() {
        let answers: [&[u8]; 4] = [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\nx: y\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n2\r\nde\r\n0\r\nt: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
        ];
        for answer in answers {
            let whole = read(answer, false).await;
            let (mut conn, _server) = connection(b"", false).await;
            let mut fed = answer.iter();
            let mut feed = |conn: &mut Connection| match fed.next() {
                Some(&b) => {
                    conn.buf.extend_from_slice(&[b]);
                    true
                }
                None => false,
            };
            let mut outcome = || -> Result<(u16, Vec<u8>, bool), String> {
                let head = loop {
                    if let Some(head) = conn.parse_head(&Method::POST)?
                        && !head.status.is_informational()
                    {
                        break head;
                    }
                    assert!(feed(&mut conn), "the head never completed");
                };
                let mut body = head.body;
                let mut got = Vec::new();
                loop {
                    match body.framing {
                        Framing::Done => break,
                        Framing::Length(left) => {
                            if conn.buf.is_empty() {
                                assert!(feed(&mut conn), "the body never completed");
                                continue;
                            }
                            let take = (left as usize).min(conn.buf.len());
                            got.extend_from_slice(&conn.buf.split_to(take));
                            body.framing = match left - take as u64 {
                                0 => Framing::Done,
                                left => Framing::Length(left),
                            };
                        }
                        Framing::Chunked(state) => {
                            if let Some(data) = conn.chunked(&mut body.framing, state)? {
                                got.extend_from_slice(&data);
                            } else if body.framing == Framing::Chunked(state) {
                                assert!(feed(&mut conn), "the chunks never completed");
                            }
                        }
                        Framing::UntilClose => unreachable!("every answer here is framed"),
                    }
                }
                Ok((head.status.as_u16(), got, body.reusable(&conn)))
            };
            assert_eq!(outcome(), whole, "{}", String::from_utf8_lossy(answer));
        }
    }

    /// Through `head` and `chunk` on a real connection, each byte in its own write.
    #[tokio::test]
    async fn an_answer_that_comes_a_byte_at_a_time_is_read() {
        let answer: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let (mut conn, server) = connection(b"", false).await;
        let mut server = server.unwrap();
        server.set_nodelay(true).unwrap();
        let writer = tokio::spawn(async move {
            for &b in answer {
                server.write_all(&[b]).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            server
        });
        let read = async {
            let head = conn.head(&Method::POST).await.expect("the head");
            assert_eq!(head.status, StatusCode::OK);
            let mut body = head.body;
            let mut got = Vec::new();
            while let Some(chunk) = conn.chunk(&mut body).await.expect("the body") {
                got.extend_from_slice(&chunk);
            }
            (got, body)
        };
        // A head never parsed again would wait here for ever.
        let (got, body) = tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("the answer within 10 s");
        assert_eq!(got, b"abc");
        let _server = writer.await.unwrap();
        assert!(body.reusable(&conn));
    }

    /// An idle connection is given up when its server closed it or sent something unasked.
    #[tokio::test]
    async fn an_idle_connection_is_taken_only_while_open_and_quiet() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        for (after, open) in [
            (None, true),
            (Some(&b"x"[..]), false),
            (Some(&b""[..]), false),
        ] {
            let (mut conn, server) = connection(answer, false).await;
            let mut server = server.unwrap();
            let mut body = conn.head(&Method::POST).await.expect("the head").body;
            while conn.chunk(&mut body).await.expect("the body").is_some() {}
            assert!(body.reusable(&conn));
            match after {
                Some(b"") => drop(server.shutdown().await),
                Some(bytes) => server.write_all(bytes).await.unwrap(),
                None => {}
            }
            // Time for the runtime to see what came.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert_eq!(conn.idle_and_open(), open, "after {after:?}");
        }
    }

    #[test]
    fn a_head_is_parsed_again_only_once_a_line_of_it_has_ended() {
        let head = b"HTTP/1.1 200 OK\r\nx-long: aaaaaaaa\r\n\r\n";
        assert!(line_ended_since(b"H", 0), "the first look parses");
        let line = head.iter().position(|&b| b == b'\n').unwrap();
        for scanned in 1..=line {
            assert!(line_ended_since(&head[..=line], scanned));
        }
        // Bytes of a field that has not ended: nothing new for the parser.
        assert!(!line_ended_since(&head[..line + 10], line + 1));
        assert!(line_ended_since(head, line + 10));
    }

    #[test]
    fn a_request_is_one_piece_with_its_own_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // Framing fields from elsewhere (a server's configured headers) are not sent.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::HOST, HeaderValue::from_static("elsewhere"));
        let host = HeaderValue::from_static("127.0.0.1:3001");
        let post = request(&Method::POST, "/mcp?a=1", &host, &headers, b"{}");
        assert_eq!(
            String::from_utf8(post).unwrap(),
            "POST /mcp?a=1 HTTP/1.1\r\nhost: 127.0.0.1:3001\r\ncontent-type: application/json\r\n\
             content-length: 2\r\n\r\n{}"
        );
        let delete = request(&Method::DELETE, "/mcp", &host, &HeaderMap::new(), b"");
        assert_eq!(
            String::from_utf8(delete).unwrap(),
            "DELETE /mcp HTTP/1.1\r\nhost: 127.0.0.1:3001\r\n\r\n"
        );
    }
}
