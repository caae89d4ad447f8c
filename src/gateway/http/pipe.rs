//! In-process line streams from `serve`'s tasks into a core, without a task in between.
//!
//! The core ([`crate::gateway::core::run`]) reads byte streams. Between the HTTP side and a
//! core, and from [`super::remote`] back to a core, `serve` used to put an in-memory pipe
//! with a writer task in front of it: a request line went handler → queue → writer task →
//! pipe → core. Each task in the way is one more wake-up per message. [`LineSource`] takes
//! it out: a stream the core reads, fed by a queue of lines, each with the [`Charge`] it
//! took from its queue's [`ByteBudget`]; the bytes come back once the core has read the
//! line. Whoever queues a line wakes the core's reader directly. (The other way, the core
//! hands its lines to the link in the task that sends them: [`crate::gateway::core::Output`].)

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::gateway::budget::{ByteBudget, Charge};
use crate::gateway::jsonrpc::Read;
use crate::gateway::lines::{ReadAhead, recycle};

/// A line queued for a core: its bytes (one message, without a newline), its charge of the
/// queue's budget, and what its sender read of it when it read it whole ([`Read`]), so the
/// core need not scan it again ([`ReadAhead`]). Only the line it was read from may carry a
/// `Read`.
pub(crate) type Queued = (Vec<u8>, Charge, Option<Box<Read>>);

/// A readable stream of the lines queued on a channel (a newline after each).
///
/// It ends when every sender is gone and the queue is empty. Dropping it closes the
/// budget, as a writer task that ends does: whoever waits for room stops waiting.
pub(crate) struct LineSource {
    rx: mpsc::Receiver<Queued>,
    budget: ByteBudget,
    /// The line being read.
    current: Option<Current>,
}

/// A line being read, and its charge (given back with it).
struct Current {
    line: Vec<u8>,
    /// How much of the line was read (its newline included, when it has none of its own).
    read: usize,
    /// The line has no newline of its own: one is read after it (not pushed onto it, which
    /// would reallocate a line built without room for it).
    newline: bool,
    _charge: Charge,
}

impl Current {
    fn new(line: Vec<u8>, charge: Charge) -> Current {
        let newline = line.last() != Some(&b'\n');
        Current {
            line,
            read: 0,
            newline,
            _charge: charge,
        }
    }

    fn len(&self) -> usize {
        self.line.len() + usize::from(self.newline)
    }

    fn unread(&self) -> &[u8] {
        match self.line.get(self.read..) {
            Some(rest) if !rest.is_empty() => rest,
            _ if self.newline && self.read == self.line.len() => b"\n",
            _ => &[],
        }
    }
}

impl LineSource {
    /// A stream of what `rx` brings; `budget` is the queue's, closed when this is dropped.
    pub(crate) fn new(rx: mpsc::Receiver<Queued>, budget: ByteBudget) -> LineSource {
        LineSource {
            rx,
            budget,
            current: None,
        }
    }
}

impl LineSource {
    /// Done with the current line: its charge goes back to the budget, and its buffer to
    /// this thread's spare ones, for the next line the core reads (a copy of this one, from
    /// this stream or another: `serve`'s runtime reads them on one thread).
    fn finish(&mut self) {
        if let Some(current) = self.current.take() {
            recycle(current.line);
        }
    }
}

impl Drop for LineSource {
    fn drop(&mut self) {
        self.budget.close();
    }
}

impl AsyncBufRead for LineSource {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        loop {
            if this.current.as_ref().is_some_and(|c| c.read < c.len()) {
                break;
            }
            // The previous line is read whole: its bytes go back to the budget.
            this.finish();
            match ready!(this.rx.poll_recv(cx)) {
                Some((line, charge, _)) => this.current = Some(Current::new(line, charge)),
                None => return Poll::Ready(Ok(&[])),
            }
        }
        match &this.current {
            Some(current) => Poll::Ready(Ok(current.unread())),
            None => Poll::Ready(Ok(&[])),
        }
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        let this = self.get_mut();
        if let Some(current) = this.current.as_mut() {
            current.read = (current.read + amount).min(current.len());
            if current.read == current.len() {
                this.finish();
            }
        }
    }
}

impl ReadAhead for LineSource {
    fn poll_read_ahead(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Option<(Vec<u8>, Box<Read>)>> {
        if self.current.as_ref().is_some_and(|c| c.read < c.len()) {
            // A line under way is read on as bytes.
            return Poll::Ready(None);
        }
        self.finish();
        match ready!(self.rx.poll_recv(cx)) {
            // Taken whole: its charge goes back now, as when its last byte is read. (Its
            // senders make every message one line; one that still holds a line break is
            // split as bytes, as before.)
            Some((line, _charge, Some(read)))
                if line.len() <= max && memchr::memchr2(b'\n', b'\r', &line).is_none() =>
            {
                Poll::Ready(Some((line, read)))
            }
            // Read as bytes, as every line was before: split at its newlines, cut at `max`.
            Some((line, charge, _)) => {
                self.current = Some(Current::new(line, charge));
                Poll::Ready(None)
            }
            None => Poll::Ready(None),
        }
    }
}

impl AsyncRead for LineSource {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[tokio::test]
    async fn a_source_reads_queued_lines_and_gives_their_bytes_back() {
        let budget = ByteBudget::new(100);
        let (tx, rx) = mpsc::channel(8);
        let mut source = LineSource::new(rx, budget.clone());
        for line in [&b"one"[..], b"two\n"] {
            let charge = budget.try_charge(line.len()).unwrap();
            tx.send((line.to_vec(), charge, None)).await.unwrap();
        }
        drop(tx);
        let mut text = String::new();
        source.read_line(&mut text).await.unwrap();
        assert_eq!(text, "one\n");
        // The first line is read whole; the second is still queued.
        assert_eq!(budget.available(), 96);
        text.clear();
        source.read_line(&mut text).await.unwrap();
        assert_eq!(text, "two\n");
        assert_eq!(source.read_line(&mut text).await.unwrap(), 0, "end");
        assert_eq!(budget.available(), 100);
        drop(source);
        assert!(budget.charge(1).await.is_none(), "the budget is closed");
    }

    #[tokio::test]
    async fn lines_read_in_small_pieces_come_whole_with_one_newline_each() {
        use tokio::io::AsyncReadExt;
        let budget = ByteBudget::new(100);
        let (tx, rx) = mpsc::channel(8);
        let mut source = LineSource::new(rx, budget.clone());
        for line in [&b"abc"[..], b"", b"de\n", b"f"] {
            let charge = budget.try_charge(line.len()).unwrap();
            tx.send((line.to_vec(), charge, None)).await.unwrap();
        }
        drop(tx);
        let mut read = Vec::new();
        let mut piece = [0u8; 2];
        loop {
            let n = source.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            read.extend_from_slice(&piece[..n]);
        }
        assert_eq!(String::from_utf8(read).unwrap(), "abc\n\nde\nf\n");
        assert_eq!(budget.available(), 100, "every line's bytes came back");
    }

    /// What `line` reads as ([`crate::gateway::jsonrpc::Envelope::read`]).
    fn read_of(line: &[u8]) -> Read {
        match crate::gateway::jsonrpc::parse(line) {
            crate::gateway::jsonrpc::Parsed::Message(env) => env.read(line).unwrap(),
            _ => panic!("a message"),
        }
    }

    #[tokio::test]
    async fn a_line_that_came_read_is_taken_whole_and_the_rest_as_bytes() {
        use crate::gateway::lines::{Line, LineReader};
        let budget = ByteBudget::new(1000);
        let (tx, rx) = mpsc::channel(8);
        let message = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let broken = b"{\"jsonrpc\":\"2.0\",\n\"id\":2,\"method\":\"ping\"}";
        let queued: [(&[u8], Option<Read>); 5] = [
            (message, Some(read_of(message))),
            // Bytes: split at their newline, as always.
            (b"a\nb", None),
            (message, Some(read_of(message))),
            // A line break in a line that came read: read as bytes, not taken whole.
            (broken, Some(read_of(broken))),
            // Longer than the reader's limit: cut as bytes.
            (&[b'x'; 100], Some(read_of(message))),
        ];
        for (line, read) in queued {
            let charge = budget.try_charge(line.len()).unwrap();
            tx.send((line.to_vec(), charge, read.map(Box::new)))
                .await
                .unwrap();
        }
        drop(tx);
        let mut reader = LineReader::new(LineSource::new(rx, budget.clone()), 64);
        let mut got = Vec::new();
        while let Some((line, read)) = reader.next_read("test").await {
            let text = match line {
                Line::Whole(line) => String::from_utf8(line).unwrap(),
                Line::TooLong { len, .. } => format!("too long: {len}"),
            };
            got.push((text, read.is_some()));
        }
        let message = String::from_utf8(message.to_vec()).unwrap();
        let expected = [
            (message.clone(), true),
            ("a".into(), false),
            ("b".into(), false),
            (message, true),
            (r#"{"jsonrpc":"2.0","#.into(), false),
            (r#""id":2,"method":"ping"}"#.into(), false),
            ("too long: 100".into(), false),
        ];
        assert_eq!(got, expected);
        assert_eq!(budget.available(), 1000, "every line's bytes came back");
    }
}
