//! Newline-delimited messages from a peer, never buffered beyond `--max-message`.
//!
//! A peer decides how long its lines are, so a reader that keeps a whole line before looking
//! at it lets one peer take the gateway's memory (a 1 GiB line, or bytes with no newline
//! at all). [`LineReader`] keeps at most `max` bytes of a line; a longer one is discarded as
//! it streams past, keeping only its first [`PREFIX`] bytes, from which the caller can still
//! tell whose request it was ([`super::jsonrpc::sniff`]) and answer it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, ReadBuf};

use super::jsonrpc::Read;

/// Default largest message, in either direction (`--max-message`).
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// How much of an oversized line is kept to find its id.
pub(crate) const PREFIX: usize = 64 * 1024;

/// One line from a peer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A line within the limit, without its newline (nor a CR before it).
    Whole(Vec<u8>),
    /// A line over the limit: its first bytes, and its length in bytes (newline excluded).
    TooLong { prefix: Vec<u8>, len: u64 },
}

/// Reads lines of at most `max` bytes from a buffered stream.
#[derive(Debug)]
pub(crate) struct LineReader<R> {
    inner: R,
    max: usize,
}

/// A stream of lines of which some come already read whole, with where their members are
/// ([`Read`]): `serve`'s queues to the core, whose senders read every message before it
/// does ([`crate::gateway::http`]). The core takes such a line as it is, without copying or
/// scanning it again.
pub(crate) trait ReadAhead {
    /// The next line and what was read of it, when the stream is between two lines and its
    /// next one came read, at most `max` bytes long, without a newline; `None`: read the
    /// stream's bytes instead (the next line came as bytes, or the stream ended).
    fn poll_read_ahead(
        &mut self,
        _cx: &mut Context<'_>,
        _max: usize,
    ) -> Poll<Option<(Vec<u8>, Box<Read>)>> {
        Poll::Ready(None)
    }
}

/// A stream whose lines are all read from its bytes (a pipe, a socket).
#[derive(Debug)]
pub(crate) struct Plain<R>(pub(crate) R);

impl<R> ReadAhead for Plain<R> {}

impl<R: AsyncRead + Unpin> AsyncRead for Plain<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<R: AsyncBufRead + Unpin> AsyncBufRead for Plain<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().0).poll_fill_buf(cx)
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        Pin::new(&mut self.get_mut().0).consume(amount);
    }
}

impl<R: AsyncBufRead + ReadAhead + Unpin> LineReader<R> {
    /// The next line that is not blank, with what was read of it when it came read
    /// ([`ReadAhead`]); `None` at the end of the stream or on a read error (logged with
    /// `side`).
    pub(crate) async fn next_read(&mut self, side: &str) -> Option<(Line, Option<Box<Read>>)> {
        let max = self.max;
        let inner = &mut self.inner;
        if let Some((line, read)) = std::future::poll_fn(|cx| inner.poll_read_ahead(cx, max)).await
        {
            return Some((Line::Whole(line), Some(read)));
        }
        self.next(side).await.map(|line| (line, None))
    }
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub(crate) fn new(inner: R, max: usize) -> LineReader<R> {
        LineReader { inner, max }
    }

    /// The next line that is not blank; `None` at the end of the stream or on a read error
    /// (logged with `side`). A last line without a newline still counts.
    pub(crate) async fn next(&mut self, side: &str) -> Option<Line> {
        match self.try_next().await {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!("reading from the {side}: {e}");
                None
            }
        }
    }

    /// The next line that is not blank, `None` at the end of the stream; a read error is
    /// the caller's to report.
    pub(crate) async fn try_next(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            match self.read_line().await? {
                Some(Line::Whole(line)) if line.iter().all(u8::is_ascii_whitespace) => {}
                line => return Ok(line),
            }
        }
    }

    async fn read_line(&mut self) -> std::io::Result<Option<Line>> {
        let mut line = reused();
        // Set once the line outgrew `max`: `line` then only keeps the prefix.
        let mut too_long: Option<u64> = None;
        let mut any = false;
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                if !any {
                    return Ok(None);
                }
                break;
            }
            any = true;
            let newline = newline_in(buf);
            let chunk = &buf[..newline.unwrap_or(buf.len())];
            match too_long.as_mut() {
                None if line.len() + chunk.len() <= self.max => {
                    if line.is_empty() {
                        // Room for the newline its writer adds: no second allocation.
                        line.reserve_exact(chunk.len() + 1);
                    }
                    line.extend_from_slice(chunk);
                }
                None => {
                    let total = (line.len() + chunk.len()) as u64;
                    line.truncate(PREFIX);
                    let room = PREFIX - line.len();
                    line.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    // What was kept beyond the prefix is given back.
                    line.shrink_to(PREFIX);
                    too_long = Some(total);
                }
                Some(len) => {
                    let room = PREFIX.saturating_sub(line.len());
                    line.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    *len += chunk.len() as u64;
                }
            }
            let used = newline.map_or(buf.len(), |at| at + 1);
            self.inner.consume(used);
            if newline.is_some() {
                break;
            }
        }
        Ok(Some(match too_long {
            None => {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Line::Whole(line)
            }
            Some(len) => Line::TooLong { prefix: line, len },
        }))
    }
}

/// The most buffers [`recycle`] keeps per thread.
const POOL: usize = 64;
/// The largest buffer [`recycle`] keeps: a line longer than most calls and answers.
const POOLED_CAPACITY: usize = 4096;

thread_local! {
    /// Line buffers given back once written, for the next lines read on this thread: at most
    /// [`POOL`] of at most [`POOLED_CAPACITY`] bytes (256 KiB a thread), so a gateway that
    /// reads and writes lines on one thread (`wrap`) allocates none per line once warm.
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty buffer for the next line: a spare one when this thread has one.
fn reused() -> Vec<u8> {
    SPARE
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Gives a written line's buffer back for the next line read on this thread (emptied); a
/// large one, or one beyond the [`POOL`], is freed.
pub(crate) fn recycle(mut line: Vec<u8>) {
    if line.capacity() == 0 || line.capacity() > POOLED_CAPACITY {
        return;
    }
    line.clear();
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < POOL {
            spare.push(line);
        }
    });
}

/// Where the first `\n` of `bytes` is (every byte of every line passes here: `memchr`
/// looks at a word or a vector register at a time).
pub(crate) fn newline_in(bytes: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', bytes)
}

#[cfg(test)]
mod tests {

    proptest::proptest! {
        #[test]
        fn the_first_newline_is_found_wherever_it_is(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b'\n'),
                    proptest::strategy::Just(0x0a ^ 0x80),
                    proptest::strategy::Just(0x0b),
                    proptest::strategy::Just(0x09),
                    proptest::num::u8::ANY,
                ],
                0..40,
            ),
        ) {
            proptest::prop_assert_eq!(
                newline_in(&bytes),
                bytes.iter().position(|&b| b == b'\n')
            );
        }
    }
    use super::*;

    /// Reads every line of `input` in chunks of `chunk` bytes.
    async fn lines(input: &[u8], max: usize, chunk: usize) -> Vec<Line> {
        let reader = tokio::io::BufReader::with_capacity(chunk, input);
        let mut reader = LineReader::new(reader, max);
        let mut out = Vec::new();
        while let Some(line) = reader.next("test").await {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn lines_within_the_limit_come_whole_whatever_the_chunking() {
        for chunk in [1, 3, 64] {
            assert_eq!(
                lines(b"abc\r\n\n  \nde\nlast", 5, chunk).await,
                vec![
                    Line::Whole(b"abc".to_vec()),
                    Line::Whole(b"de".to_vec()),
                    Line::Whole(b"last".to_vec()),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_cut_to_its_prefix_and_the_next_line_survives() {
        let mut input = vec![b'x'; PREFIX * 3];
        input.extend_from_slice(b"\nok\n");
        for chunk in [7, 4096, PREFIX * 4] {
            let got = lines(&input, 100, chunk).await;
            assert_eq!(got.len(), 2, "chunk {chunk}");
            let Line::TooLong { prefix, len } = &got[0] else {
                panic!("not cut: chunk {chunk}")
            };
            assert_eq!(prefix.len(), PREFIX);
            assert_eq!(*len, (PREFIX * 3) as u64);
            assert_eq!(got[1], Line::Whole(b"ok".to_vec()));
        }
        // Exactly the limit is still whole; one more byte is not.
        assert_eq!(
            lines(b"12345\n", 5, 2).await,
            vec![Line::Whole(b"12345".to_vec())]
        );
        assert!(matches!(
            &lines(b"123456\n", 5, 2).await[0],
            Line::TooLong { len: 6, .. }
        ));
    }

    #[test]
    fn a_written_line_s_buffer_is_read_into_again_and_a_large_one_is_freed() {
        SPARE.with(|spare| spare.borrow_mut().clear());
        let small = Vec::with_capacity(200);
        let at = small.as_ptr();
        recycle(small);
        let again = reused();
        assert_eq!(again.as_ptr(), at, "the spare buffer was not reused");
        assert!(again.is_empty() && again.capacity() >= 200);
        recycle(Vec::with_capacity(POOLED_CAPACITY + 1));
        assert_eq!(reused().capacity(), 0, "a large buffer was kept");
        for _ in 0..POOL + 10 {
            recycle(Vec::with_capacity(16));
        }
        assert_eq!(SPARE.with(|spare| spare.borrow().len()), POOL);
    }

    #[tokio::test]
    async fn lines_read_into_spare_buffers_come_out_the_same() {
        let mut dirty = b"left over from an earlier line".to_vec();
        dirty.reserve(100);
        recycle(dirty);
        assert_eq!(
            lines(b"{\"id\":1}\nx\n", 100, 4).await,
            vec![
                Line::Whole(b"{\"id\":1}".to_vec()),
                Line::Whole(b"x".to_vec())
            ]
        );
    }

    #[tokio::test]
    async fn a_stream_without_newlines_never_grows_past_the_prefix() {
        // 64 MiB of bytes with no newline, streamed: only the prefix is ever kept.
        struct Endless(usize);
        impl tokio::io::AsyncRead for Endless {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                let n = buf.remaining().min(self.0);
                buf.put_slice(&vec![b'a'; n]);
                self.0 -= n;
                std::task::Poll::Ready(Ok(()))
            }
        }
        let reader = tokio::io::BufReader::with_capacity(64 * 1024, Endless(64 << 20));
        let mut reader = LineReader::new(reader, 1024);
        let Some(Line::TooLong { prefix, len }) = reader.next("test").await else {
            panic!("expected a cut line")
        };
        assert_eq!(prefix.len(), PREFIX);
        assert!(prefix.capacity() <= 2 * PREFIX, "{}", prefix.capacity());
        assert_eq!(len, 64 << 20);
        assert_eq!(reader.next("test").await, None);
    }
}
