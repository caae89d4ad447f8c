//! The task that writes a queue of lines to one peer: the stdio core's client and upstream
//! sides, and the HTTP transport's pipes into a core.
//!
//! Each line arrives with the [`Charge`] it took from its queue's [`ByteBudget`]; the bytes
//! go back to the budget once the line is written into the buffer (or dropped), a burst's
//! lines together. Lines already queued are
//! written before one flush, so a burst costs one system call, not one per line. When the
//! task ends, for whatever reason, the budget is closed: nothing will give bytes back any
//! more, so whoever waits for room stops waiting instead of hanging.

use std::sync::{Arc, Mutex};

use futures_util::FutureExt as _;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::unix::pipe;
use tokio::sync::{Notify, mpsc};

use super::budget::{ByteBudget, Charge};

/// The write buffer: a burst of lines is one system call.
const BUFFER: usize = 64 * 1024;

/// Most lines taken from the queue at once.
const BATCH: usize = 128;

/// What a writer task is asked to do.
#[derive(Debug)]
pub(crate) enum Out {
    /// Write this line (a newline is added when missing); its bytes are given back to the
    /// queue's budget once written (or dropped).
    Line(Vec<u8>, Charge),
    /// Flush and close the stream.
    Close,
}

impl From<(Vec<u8>, Charge)> for Out {
    fn from((line, charge): (Vec<u8>, Charge)) -> Out {
        Out::Line(line, charge)
    }
}

/// Writes what `rx` brings to `writer` until the queue closes, [`Out::Close`] or a write
/// error; then closes `budget`. `side` names the peer in the log.
pub(crate) async fn write_lines<W, T>(
    writer: W,
    rx: mpsc::Receiver<T>,
    budget: ByteBudget,
    side: &'static str,
) where
    W: AsyncWrite + Unpin,
    T: Into<Out>,
{
    write_queued(writer, rx, side).await;
    // Nothing will give bytes back any more (what was queued is dropped with the
    // receiver): whoever waits for room stops waiting.
    budget.close();
}

async fn write_queued<W, T>(writer: W, mut rx: mpsc::Receiver<T>, side: &'static str)
where
    W: AsyncWrite + Unpin,
    T: Into<Out>,
{
    let mut writer = BufWriter::with_capacity(BUFFER, writer);
    // What is queued is taken in one go: the queue's places come back once per batch, not
    // once per line.
    let mut batch: Vec<T> = Vec::new();
    let mut closing = false;
    while !closing && rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut result = Ok(());
        // The charges of the lines copied into the buffer, given back together.
        let mut written: Option<Charge> = None;
        // Write everything already queued before paying for one flush.
        while !batch.is_empty() {
            for out in batch.drain(..) {
                let (mut line, charge) = match out.into() {
                    Out::Line(line, charge) => (line, charge),
                    Out::Close => {
                        closing = true;
                        break;
                    }
                };
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                if writer.buffer().len() + line.len() > BUFFER {
                    // This write goes to the stream and may wait for the peer: what is
                    // written already goes back first, as it would line by line.
                    drop(written.take());
                }
                if result.is_ok() {
                    result = writer.write_all(&line).await;
                }
                // Written (at most the buffer's 64 KiB wait for the flush): the bytes go
                // back to the budget with the batch, before its flush, in one release
                // instead of one per line.
                written = match written.take() {
                    None => Some(charge),
                    Some(mut held) => match held.absorb(charge) {
                        Ok(()) => Some(held),
                        Err(other) => {
                            drop(held);
                            Some(other)
                        }
                    },
                };
                super::lines::recycle(line);
            }
            if closing {
                break;
            }
            // Lines queued while these were written join the same flush.
            let _ = rx.recv_many(&mut batch, BATCH).now_or_never();
        }
        drop(written);
        if result.is_ok() {
            result = writer.flush().await;
        }
        if let Err(e) = result {
            tracing::debug!("{side} stream closed: {e}");
            return;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

/// After this many lines added to a [`PipeLines`] buffer since its last write, the sender
/// writes them itself (when the pipe takes them now and no write of the writer task is under
/// way), instead of leaving them all to the writer task, which runs only once the sender
/// yields: with many calls in flight the peer starts on the first lines of a burst while the
/// gateway still decides the rest, instead of the three processes taking turns.
const EARLY: usize = 16;

// TEMPORARY (measurement only): TOOLGATE_PIPE_ONCE=1: one early write per burst.
fn once() -> bool {
    static ONCE_SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ONCE_SET.get_or_init(|| std::env::var_os("TOOLGATE_PIPE_ONCE").is_some())
}

// TEMPORARY (measurement only): TOOLGATE_PIPE_EARLY overrides EARLY.
fn early() -> usize {
    static EARLY_SET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *EARLY_SET.get_or_init(|| {
        std::env::var("TOOLGATE_PIPE_EARLY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(EARLY)
    })
}

/// Lines for a non-blocking pipe, written by whoever sends them or by a writer task of
/// their own ([`PipeLines::start`]). Used for `wrap`'s pipes (the agent's stdout, the
/// server's stdin).
///
/// The senders add each line to one buffer, its [`Charge`] with it. Every [`EARLY`] lines
/// the sender tries one write of the whole buffer (a `write` the pipe would block is left
/// to the writer task, never waited for); what is left is written by the writer task when
/// the senders yield, in one write as [`write_lines`] does. Order is kept: a sender writes
/// only when no write of the writer task is under way, and always from the buffer's start.
/// The charges come back once the buffer is empty, so the queue's [`ByteBudget`] bounds the
/// bytes waiting here (back-pressure: a peer that stops reading stops the senders).
#[derive(Debug)]
pub(crate) struct PipeLines {
    shared: Arc<PipeShared>,
}

#[derive(Debug)]
struct PipeShared {
    state: Mutex<PipeState>,
    /// Wakes the writer task: bytes to write, or closing.
    wake: Notify,
}

#[derive(Debug, Default)]
struct PipeState {
    /// `None` once closed, or after a write failed: later lines are given back.
    pipe: Option<Arc<pipe::Sender>>,
    /// Lines not written yet, each with its newline, in order.
    buf: Vec<u8>,
    /// The charges of the lines in `buf` (and of bytes the writer task is writing).
    charge: Option<Charge>,
    /// Lines added since the last write tried.
    since_write: usize,
    /// TEMPORARY: an early write was made since the writer task last took the buffer.
    early_done: bool,
    /// The writer task writes bytes taken from `buf`: nothing may be written before it is
    /// done.
    writing: bool,
    /// No line will be added: the writer task writes what is left and closes the pipe.
    closing: bool,
}

impl PipeLines {
    /// The lines' buffer of `pipe`, and its writer task (which closes `budget` when it ends,
    /// as [`write_lines`] does). `side` names the peer in the log.
    pub(crate) fn start(
        pipe: pipe::Sender,
        budget: ByteBudget,
        side: &'static str,
    ) -> (PipeLines, tokio::task::JoinHandle<()>) {
        let shared = Arc::new(PipeShared {
            state: Mutex::new(PipeState {
                pipe: Some(Arc::new(pipe)),
                ..PipeState::default()
            }),
            wake: Notify::new(),
        });
        let task = tokio::spawn(write_pipe(shared.clone(), budget, side));
        (PipeLines { shared }, task)
    }

    /// Adds `line` (a newline is added when missing), written now or soon; gives it back
    /// when the pipe is closed or failed.
    pub(crate) fn line(&self, mut line: Vec<u8>, charge: Charge) -> Result<(), Vec<u8>> {
        let mut state = crate::sync::lock(&self.shared.state);
        if state.closing {
            return Err(line);
        }
        let Some(pipe) = state.pipe.clone() else {
            return Err(line);
        };
        let was_empty = state.buf.is_empty();
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        state.buf.extend_from_slice(&line);
        super::lines::recycle(line);
        state.charge = match state.charge.take() {
            None => Some(charge),
            Some(mut held) => match held.absorb(charge) {
                Ok(()) => Some(held),
                // Not this queue's budget (never the case): given back now.
                Err(_) => Some(held),
            },
        };
        state.since_write += 1;
        if state.since_write >= early() && !state.writing && !(once() && state.early_done) {
            state.since_write = 0;
            state.early_done = true;
            // One try; a pipe that would block (or failed) is the writer task's to wait for
            // (or to report).
            if let Ok(written) = pipe.try_write(&state.buf) {
                state.buf.drain(..written);
                if state.buf.is_empty() {
                    state.charge = None;
                    return Ok(());
                }
            }
        }
        if was_empty {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// No line will follow: the writer task writes what is left, then closes the pipe.
    pub(crate) fn close(&self) {
        crate::sync::lock(&self.shared.state).closing = true;
        self.shared.wake.notify_one();
    }
}

impl Drop for PipeLines {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer task of a [`PipeLines`]: writes what the senders left in the buffer, until
/// closing (or a write error); then closes the pipe and `budget`.
async fn write_pipe(shared: Arc<PipeShared>, budget: ByteBudget, side: &'static str) {
    let mut chunk: Vec<u8> = Vec::new();
    loop {
        let taken = {
            let mut state = crate::sync::lock(&shared.state);
            if state.buf.is_empty() {
                if state.closing {
                    state.pipe = None;
                    break;
                }
                None
            } else {
                std::mem::swap(&mut state.buf, &mut chunk);
                state.writing = true;
                state.since_write = 0;
                state.early_done = false;
                Some((state.pipe.clone(), state.charge.take()))
            }
        };
        let Some((pipe, charge)) = taken else {
            shared.wake.notified().await;
            continue;
        };
        let result = match pipe {
            Some(pipe) => write_all(&pipe, &chunk).await,
            None => Ok(()),
        };
        chunk.clear();
        // Written: the bytes go back to the budget.
        drop(charge);
        let mut state = crate::sync::lock(&shared.state);
        state.writing = false;
        if let Err(e) = result {
            tracing::debug!("{side} stream closed: {e}");
            // Nothing will be written any more: what is buffered is dropped, and later
            // lines are given back to their senders.
            state.pipe = None;
            state.buf = Vec::new();
            state.charge = None;
            break;
        }
    }
    // Nothing will give bytes back any more: whoever waits for room stops waiting.
    budget.close();
}

/// Writes all of `bytes` to `pipe`, waiting for room.
async fn write_all(pipe: &pipe::Sender, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        pipe.writable().await?;
        match pipe.try_write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// Queues `lines` charged against `budget`, then `Close`, then one more line.
    async fn queued(budget: &ByteBudget, lines: &[&str]) -> mpsc::Receiver<Out> {
        let (tx, rx) = mpsc::channel(lines.len() + 2);
        for line in lines {
            let charge = budget.try_charge(line.len()).expect("room in the budget");
            tx.send(Out::Line(line.as_bytes().to_vec(), charge))
                .await
                .expect("the queue is open");
        }
        tx.send(Out::Close).await.expect("the queue is open");
        let late = budget.try_charge(4).expect("room in the budget");
        tx.send(Out::Line(b"late".to_vec(), late))
            .await
            .expect("the queue is open");
        rx
    }

    #[tokio::test]
    async fn a_burst_is_written_in_order_up_to_close_and_every_byte_comes_back() {
        const BYTES: usize = 64 * 1024;
        let budget = ByteBudget::new(BYTES);
        let lines: Vec<String> = (0..300).map(|n| format!("line {n}")).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let rx = queued(&budget, &lines).await;
        assert!(budget.available() < BYTES - 2000, "the lines are charged");
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        write_lines(ours, rx, budget.clone(), "test").await;
        let mut text = String::new();
        theirs
            .read_to_string(&mut text)
            .await
            .expect("the stream's text");
        let expected: String = lines.iter().map(|l| format!("{l}\n")).collect();
        assert_eq!(
            text, expected,
            "every line before Close, in order, and none after"
        );
        assert_eq!(budget.available(), BYTES, "every charge was given back");
    }

    /// Sends `lines` to `pipe` charged against `budget`, without yielding.
    fn send_all(pipe: &PipeLines, budget: &ByteBudget, lines: &[String]) {
        for line in lines {
            let charge = budget.try_charge(line.len()).expect("room in the budget");
            pipe.line(line.as_bytes().to_vec(), charge)
                .expect("the pipe is open");
        }
    }

    #[tokio::test]
    async fn pipe_lines_go_out_early_in_order_the_rest_at_close_and_every_byte_comes_back() {
        use std::io::Read as _;

        const BYTES: usize = 64 * 1024;
        let budget = ByteBudget::new(BYTES);
        let (tx, rx) = pipe::pipe().expect("a pipe");
        // Read without the runtime: reading through it would let the writer task run.
        let mut rx = std::fs::File::from(rx.into_nonblocking_fd().expect("the read end"));
        // Known writable, as it is once the writer task has written (how a session starts).
        tx.writable().await.expect("an empty pipe is writable");
        let (lines, task) = PipeLines::start(tx, budget.clone(), "test");
        let sent: Vec<String> = (0..EARLY * 3 + 5).map(|n| format!("line {n}")).collect();
        // The writer task has not run (this task never yielded): what the pipe holds now
        // was written by the sender itself, a whole number of batches of `EARLY` lines.
        send_all(&lines, &budget, &sent);
        let mut early = vec![0u8; BYTES];
        let n = rx.read(&mut early).expect("lines written before any yield");
        let expected: String = sent.iter().map(|l| format!("{l}\n")).collect();
        assert_eq!(
            &early[..n],
            expected[..n].as_bytes(),
            "the early write is the first lines, in order"
        );
        let early_lines = early[..n].iter().filter(|&&b| b == b'\n').count();
        assert_eq!(early_lines, EARLY * 3, "every full batch went out at once");
        assert!(
            budget.available() < BYTES,
            "the last lines are still charged"
        );
        drop(lines);
        task.await.expect("the writer task ends");
        let mut rest = String::new();
        rx.read_to_string(&mut rest)
            .expect("the rest, then the end (all of it in the pipe by now)");
        assert_eq!(
            rest,
            expected[n..],
            "the rest in order, and the pipe closed"
        );
        assert_eq!(budget.available(), BYTES, "every charge was given back");
    }

    #[tokio::test]
    async fn pipe_lines_hold_back_a_peer_that_does_not_read_and_lose_nothing() {
        const BYTES: usize = 256 * 1024;
        let budget = ByteBudget::new(BYTES);
        let (tx, mut rx) = pipe::pipe().expect("a pipe");
        let (lines, task) = PipeLines::start(tx, budget.clone(), "test");
        // Far more than the pipe holds: the budget runs out, and nothing is lost.
        let line = "x".repeat(999);
        let mut sent = 0usize;
        while let Some(charge) = budget.try_charge(line.len() + 1) {
            lines
                .line(line.as_bytes().to_vec(), charge)
                .expect("the pipe is open");
            sent += 1;
            tokio::task::yield_now().await;
        }
        assert!(
            sent * 1000 > 128 * 1024,
            "more was sent than the pipe holds"
        );
        let reading = tokio::spawn(async move {
            let mut text = String::new();
            rx.read_to_string(&mut text).await.map(|_| text)
        });
        lines.close();
        assert!(
            lines
                .line(
                    b"late".to_vec(),
                    ByteBudget::new(8).try_charge(4).expect("room")
                )
                .is_err(),
            "a line after close is given back"
        );
        task.await.expect("the writer task ends");
        let text = reading.await.expect("the reader").expect("the text");
        assert_eq!(
            text,
            format!("{line}\n").repeat(sent),
            "every line, in order"
        );
        assert_eq!(budget.available(), BYTES, "every charge was given back");
    }

    #[tokio::test]
    async fn pipe_lines_after_the_peer_is_gone_are_given_back_and_the_budget_closes() {
        let budget = ByteBudget::new(64 * 1024);
        let (tx, rx) = pipe::pipe().expect("a pipe");
        drop(rx);
        let (lines, task) = PipeLines::start(tx, budget.clone(), "test");
        let charge = budget.try_charge(5).expect("room");
        lines
            .line(b"first".to_vec(), charge)
            .expect("taken: written later");
        task.await.expect("the writer task ends on the write error");
        let charge = budget.try_charge(4);
        assert!(
            charge.is_none(),
            "the budget is closed: no one waits for room"
        );
        assert_eq!(
            lines.line(
                b"next".to_vec(),
                ByteBudget::new(8).try_charge(4).expect("room")
            ),
            Err(b"next".to_vec()),
            "given back to its sender"
        );
    }
}
