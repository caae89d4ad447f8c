//! In-process line streams between `serve`'s tasks and a core, without a task in between.
//!
//! The core ([`crate::gateway::core::run`]) reads and writes byte streams. Between the HTTP
//! side and a core, and between a core and [`super::remote`], `serve` used to put an
//! in-memory pipe with a writer task in front of it: a request line went handler → queue →
//! writer task → pipe → core, and an answer core → pipe → router task → the waiting
//! handler. Each task in the way is one more wake-up per message (on two cores, often on
//! the other thread). These two ends take the tasks out:
//!
//! - [`LineSource`] is a stream the core reads, fed by a queue of lines, each with the
//!   [`Charge`] it took from its queue's [`ByteBudget`]; the bytes come back once the core
//!   has read the line. Whoever queues a line wakes the core's reader directly.
//! - [`LineSink`] is a stream the core writes: each complete line is charged to a budget
//!   (waiting for room is the backpressure, as a pipe's full buffer was) and handed to a
//!   callback in the writer's own task. A line longer than its limit is dropped as it
//!   streams past, never kept whole.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
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

/// What a [`LineSink`] does with the lines written to it.
pub(crate) trait LineHandler: Send + 'static {
    /// A complete line (without its newline or a CR before it; never blank), charged to the
    /// sink's budget.
    fn line(&mut self, line: Vec<u8>, charge: Charge);

    /// A line longer than the sink's limit was dropped.
    fn too_long(&mut self);

    /// The writer closed the stream, or dropped it: no line will follow. Called once.
    fn end(&mut self);
}

type Charging = Pin<Box<dyn Future<Output = Option<Charge>> + Send>>;

/// A writable stream that hands each complete line to a [`LineHandler`], in the writer's
/// task, once the line's bytes fit its budget.
pub(crate) struct LineSink<H: LineHandler> {
    handler: H,
    budget: ByteBudget,
    max: usize,
    /// The start of a line whose newline has not been written yet.
    partial: Vec<u8>,
    /// Set while the rest of a line longer than `max` streams past.
    skipping: bool,
    /// A complete line waiting for room in the budget.
    waiting: Option<(Vec<u8>, Charging)>,
    ended: bool,
}

impl<H: LineHandler> LineSink<H> {
    /// A sink for lines of at most `max` bytes, charged to `budget`.
    pub(crate) fn new(handler: H, budget: ByteBudget, max: usize) -> LineSink<H> {
        LineSink {
            handler,
            budget,
            max,
            partial: Vec::new(),
            skipping: false,
            waiting: None,
            ended: false,
        }
    }

    /// Hands on the line waiting for room, once it fits. `Err` once the budget is closed.
    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((_, charging)) = self.waiting.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let charge = ready!(charging.as_mut().poll(cx));
        let Some((line, _)) = self.waiting.take() else {
            return Poll::Ready(Ok(()));
        };
        match charge {
            Some(charge) => {
                self.handler.line(line, charge);
                Poll::Ready(Ok(()))
            }
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    /// A complete line: handed on now if it fits, else kept waiting for room.
    fn complete(&mut self, mut line: Vec<u8>) {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match self.budget.try_charge(line.len()) {
            Some(charge) => self.handler.line(line, charge),
            None => {
                let budget = self.budget.clone();
                let len = line.len();
                let charging: Charging = Box::pin(async move { budget.charge(len).await });
                self.waiting = Some((line, charging));
            }
        }
    }

    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.handler.end();
        }
    }
}

impl<H: LineHandler> Drop for LineSink<H> {
    fn drop(&mut self) {
        self.end();
    }
}

impl<H: LineHandler + Unpin> AsyncWrite for LineSink<H> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        ready!(this.poll_waiting(cx))?;
        let mut taken = 0;
        // Stops after a line that must wait for room: the writer offers the rest again.
        while taken < buf.len() && this.waiting.is_none() {
            let rest = &buf[taken..];
            let newline = crate::gateway::lines::newline_in(rest);
            let chunk = &rest[..newline.unwrap_or(rest.len())];
            taken += newline.map_or(rest.len(), |at| at + 1);
            if this.skipping || this.partial.len() + chunk.len() > this.max {
                if !this.skipping {
                    this.skipping = true;
                    this.partial = Vec::new();
                    this.handler.too_long();
                }
                if newline.is_some() {
                    this.skipping = false;
                }
                continue;
            }
            match newline {
                Some(_) if this.partial.is_empty() => this.complete(chunk.to_vec()),
                Some(_) => {
                    let mut line = std::mem::take(&mut this.partial);
                    line.extend_from_slice(chunk);
                    this.complete(line);
                }
                None => this.partial.extend_from_slice(chunk),
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_waiting(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = ready!(this.poll_waiting(cx));
        if !this.partial.is_empty() && !this.skipping {
            // A last line without a newline still counts, as it does for a reader.
            let line = std::mem::take(&mut this.partial);
            this.complete(line);
            ready!(this.poll_waiting(cx))?;
        }
        this.end();
        Poll::Ready(flushed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    /// What a sink handed on: lines, lines too long, ends.
    type Handed = (Vec<Vec<u8>>, usize, usize);

    #[derive(Default, Clone)]
    struct Seen(Arc<Mutex<Handed>>);

    impl LineHandler for Seen {
        fn line(&mut self, line: Vec<u8>, _charge: Charge) {
            self.0.lock().unwrap().0.push(line);
        }
        fn too_long(&mut self) {
            self.0.lock().unwrap().1 += 1;
        }
        fn end(&mut self) {
            self.0.lock().unwrap().2 += 1;
        }
    }

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
    async fn a_sink_hands_on_whole_lines_however_they_are_cut() {
        let seen = Seen::default();
        let mut sink = LineSink::new(seen.clone(), ByteBudget::new(1000), 10);
        for piece in [
            &b"ab"[..],
            b"c\r\n\n  \nde\nfg",
            b"h\n",
            b"0123456789x",
            b"yz\nok\nlast",
        ] {
            sink.write_all(piece).await.unwrap();
        }
        sink.shutdown().await.unwrap();
        let (lines, too_long, ended) = seen.0.lock().unwrap().clone();
        let lines: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        assert_eq!(lines, [&b"abc"[..], b"de", b"fgh", b"ok", b"last"]);
        assert_eq!((too_long, ended), (1, 1));
        drop(sink);
        assert_eq!(seen.0.lock().unwrap().2, 1, "ended once");
    }

    #[tokio::test]
    async fn a_sink_waits_for_room_before_handing_on_a_line() {
        // Lines are kept (with their charges) by the handler until the test drops them.
        type Kept = Vec<(Vec<u8>, Charge)>;
        #[derive(Clone, Default)]
        struct Keep(Arc<Mutex<Kept>>);
        impl LineHandler for Keep {
            fn line(&mut self, line: Vec<u8>, charge: Charge) {
                self.0.lock().unwrap().push((line, charge));
            }
            fn too_long(&mut self) {}
            fn end(&mut self) {}
        }
        let kept = Keep::default();
        let mut sink = LineSink::new(kept.clone(), ByteBudget::new(8), 100);
        sink.write_all(b"123456\n").await.unwrap();
        // Taken, but not handed on: the flush waits for room, and so would the next write.
        sink.write_all(b"abcd\n").await.unwrap();
        let mut blocked = Box::pin(sink.flush());
        let deadline = tokio::time::timeout(std::time::Duration::from_millis(50), &mut blocked);
        assert!(deadline.await.is_err(), "a line beyond the budget waited");
        assert_eq!(kept.0.lock().unwrap().len(), 1);
        kept.0.lock().unwrap().clear();
        tokio::time::timeout(std::time::Duration::from_secs(5), blocked)
            .await
            .expect("the line went through once room was given back")
            .unwrap();
        assert_eq!(kept.0.lock().unwrap()[0].0, b"abcd");
    }
}
