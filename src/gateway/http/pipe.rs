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
use crate::gateway::lines::recycle;

/// A readable stream of the lines queued on a channel (a newline after each).
///
/// It ends when every sender is gone and the queue is empty. Dropping it closes the
/// budget, as a writer task that ends does: whoever waits for room stops waiting.
pub(crate) struct LineSource {
    rx: mpsc::Receiver<(Vec<u8>, Charge)>,
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
    pub(crate) fn new(rx: mpsc::Receiver<(Vec<u8>, Charge)>, budget: ByteBudget) -> LineSource {
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
                Some((line, charge)) => {
                    let newline = line.last() != Some(&b'\n');
                    this.current = Some(Current {
                        line,
                        read: 0,
                        newline,
                        _charge: charge,
                    });
                }
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
            tx.send((line.to_vec(), charge)).await.unwrap();
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
            tx.send((line.to_vec(), charge)).await.unwrap();
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
}
