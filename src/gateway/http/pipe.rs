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

/// A readable stream of the lines queued on a channel (a newline after each).
///
/// It ends when every sender is gone and the queue is empty. Dropping it closes the
/// budget, as a writer task that ends does: whoever waits for room stops waiting.
pub(crate) struct LineSource {
    rx: mpsc::Receiver<(Vec<u8>, Charge)>,
    budget: ByteBudget,
    /// The line being read, how much of it was read, and its charge (given back with it).
    current: Option<(Vec<u8>, usize, Charge)>,
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

impl Drop for LineSource {
    fn drop(&mut self) {
        self.budget.close();
    }
}

impl AsyncBufRead for LineSource {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        loop {
            if this
                .current
                .as_ref()
                .is_some_and(|(line, read, _)| *read < line.len())
            {
                break;
            }
            // The previous line is read whole: its bytes go back to the budget.
            this.current = None;
            match ready!(this.rx.poll_recv(cx)) {
                Some((mut line, charge)) => {
                    if line.last() != Some(&b'\n') {
                        line.push(b'\n');
                    }
                    this.current = Some((line, 0, charge));
                }
                None => return Poll::Ready(Ok(&[])),
            }
        }
        match &this.current {
            Some((line, read, _)) => Poll::Ready(Ok(&line[*read..])),
            None => Poll::Ready(Ok(&[])),
        }
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        let this = self.get_mut();
        if let Some((line, read, _)) = this.current.as_mut() {
            *read = (*read + amount).min(line.len());
            if *read == line.len() {
                this.current = None;
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
}
