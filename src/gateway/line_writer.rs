//! The task that writes a queue of lines to one peer: the stdio core's client and upstream
//! sides, and the HTTP transport's pipes into a core.
//!
//! Each line arrives with the [`Charge`] it took from its queue's [`ByteBudget`]; the bytes
//! go back to the budget once the line is written into the buffer (or dropped), a burst's
//! lines together. Lines already queued are
//! written before one flush, so a burst costs one system call, not one per line. When the
//! task ends, for whatever reason, the budget is closed: nothing will give bytes back any
//! more, so whoever waits for room stops waiting instead of hanging.
//!
//! `wrap`'s pipes (the agent's stdout when it is a pipe, the server's stdin) are written by
//! [`PipeLines`] instead: the tasks that send the lines write the first lines of a burst
//! themselves, so the peer starts on them while the gateway still decides the rest.

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

/// A line queued for a core, written as bytes: what was read of it is for a core that takes
/// it from the queue itself.
impl From<(Vec<u8>, Charge, Option<Box<super::jsonrpc::Read>>)> for Out {
    fn from((line, charge, _): (Vec<u8>, Charge, Option<Box<super::jsonrpc::Read>>)) -> Out {
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

/// How many lines a sender adds to a [`PipeLines`] buffer before it writes the buffer to
/// the pipe itself, in both directions of `wrap`. Measured at 64 calls in flight
/// (docs/performance.md, "`wrap` with many calls in flight"), with a core free for the
/// peers: every 16 lines 59 % of direct at the median against 35 % for the writer task
/// alone; 8, 24 and 32 lines 53–55 %; toward the agent only 56 %, toward the server only
/// 43 %. Where no core is free each early write wakes a peer that cannot run yet: about 5 %
/// more CPU per call.
pub(crate) const EARLY: usize = 16;

/// Lines for a non-blocking pipe, written by the tasks that send them or by a writer task
/// of their own ([`PipeLines::start`]): `wrap`'s pipes (the agent's stdout, the server's
/// stdin).
///
/// A task that sends a line appends it to one buffer, its [`Charge`] with it. Every
/// [`EARLY`] lines the sender tries one non-blocking write of the whole buffer (a pipe that
/// would block, or failed, is left to the writer task: never waited for in the sender).
/// Whatever is left is written by the writer task once the senders yield, in one write as
/// [`write_lines`] does. With many calls in flight the peer then starts on a burst's first
/// lines while the gateway still decides the rest, instead of the three processes taking
/// turns on one core.
///
/// Order: bytes leave only from the buffer's start, and a sender writes only while no write
/// of the writer task is under way (`writing`), so no line is ever written past one still
/// queued. Back-pressure: a line's charge is given back only once its bytes are in the
/// pipe, so the queue's [`ByteBudget`] bounds what waits here and a peer that stops reading
/// stops the senders.
#[derive(Debug)]
pub(crate) struct PipeLines {
    shared: Arc<PipeShared>,
    /// Lines added between a sender's own writes (`0`: never, the writer task writes all).
    early: usize,
}

#[derive(Debug)]
struct PipeShared {
    state: Mutex<PipeState>,
    /// Wakes the writer task: bytes to write, or closing.
    wake: Notify,
}

#[derive(Debug, Default)]
struct PipeState {
    /// `None` once closed or after a write failed: later lines are given back.
    pipe: Option<Arc<pipe::Sender>>,
    /// Lines not written yet, each with its newline, in order; empty once all is written.
    buf: Vec<u8>,
    /// Bytes at `buf`'s start already in the pipe (an early write that took part of it):
    /// skipped, not moved, so a large buffer is never shifted per write.
    done: usize,
    /// The charges of the bytes in `buf`.
    charge: Option<Charge>,
    /// Lines added since the last write tried.
    since_write: usize,
    /// The writer task writes bytes it took from `buf`: no sender may write until it is done.
    writing: bool,
    /// No line will be added: the writer task writes what is left and closes the pipe.
    closing: bool,
}

/// A buffer that grew past this (a large message, or a peer that stopped reading) is not
/// kept once written.
const KEPT_CAPACITY: usize = 4 * BUFFER;

impl PipeLines {
    /// The lines' buffer of `pipe`, and its writer task (which closes `budget` when it ends,
    /// as [`write_lines`] does). `side` names the peer in the log; the senders write
    /// themselves every `early` lines ([`EARLY`] in `wrap`).
    pub(crate) fn start(
        pipe: pipe::Sender,
        budget: ByteBudget,
        side: &'static str,
        early: usize,
    ) -> (PipeLines, tokio::task::JoinHandle<()>) {
        let shared = Arc::new(PipeShared {
            state: Mutex::new(PipeState {
                pipe: Some(Arc::new(pipe)),
                ..PipeState::default()
            }),
            wake: Notify::new(),
        });
        let task = tokio::spawn(write_pipe(shared.clone(), budget, side));
        (PipeLines { shared, early }, task)
    }

    /// Adds `line` (a newline is added when missing), written now or soon; gives it back
    /// when the pipe is closed or failed.
    pub(crate) fn line(&self, line: Vec<u8>, charge: Charge) -> Result<(), Vec<u8>> {
        let written = {
            let mut state = crate::sync::lock(&self.shared.state);
            if state.closing || state.pipe.is_none() {
                return Err(line);
            }
            let was_empty = state.buf.is_empty();
            append(&mut state, &line, charge);
            state.since_write += 1;
            let written = self.write_early(&mut state);
            if was_empty && !state.buf.is_empty() {
                self.shared.wake.notify_one();
            }
            written
        };
        super::lines::recycle(line);
        // Given back outside the lock.
        drop(written);
        Ok(())
    }

    /// One non-blocking write of the buffer when it is time for one; the charges of the
    /// buffer once it is all written.
    fn write_early(&self, state: &mut PipeState) -> Option<Charge> {
        if self.early == 0 || state.since_write < self.early || state.writing {
            return None;
        }
        write_now(state)
    }

    /// A handle that adds lines from outside the runtime ([`PipeHandle::try_append`], [`PipeHandle::flush_now`]),
    /// charged to `budget` (the queue's, which this pipe gives back to).
    pub(crate) fn handle(&self, budget: ByteBudget) -> PipeHandle {
        PipeHandle {
            shared: self.shared.clone(),
            budget,
        }
    }

    /// No line will follow: the writer task writes what is left, then closes the pipe.
    pub(crate) fn close(&self) {
        crate::sync::lock(&self.shared.state).closing = true;
        self.shared.wake.notify_one();
    }
}

/// Appends `line` and its newline to the buffer, its charge with the buffer's.
fn append(state: &mut PipeState, line: &[u8], charge: Charge) {
    state.buf.extend_from_slice(line);
    if line.last() != Some(&b'\n') {
        state.buf.push(b'\n');
    }
    state.charge = Some(match state.charge.take() {
        None => charge,
        Some(mut held) => match held.absorb(charge) {
            Ok(()) => held,
            // Another budget's (never the case): kept until the buffer is written.
            Err(other) => {
                drop(held);
                other
            }
        },
    });
}

/// One non-blocking write of the whole buffer (the caller checked that the writer task is
/// not writing); the charges of the buffer once it is all written.
fn write_now(state: &mut PipeState) -> Option<Charge> {
    state.since_write = 0;
    let pipe = state.pipe.as_ref()?;
    // A pipe that would block, or failed, is the writer task's to wait for (or report).
    let written = pipe.try_write(&state.buf[state.done..]).ok()?;
    state.done += written;
    if state.done < state.buf.len() {
        return None;
    }
    state.buf.clear();
    if state.buf.capacity() > KEPT_CAPACITY {
        state.buf = Vec::new();
    }
    state.done = 0;
    state.charge.take()
}

/// A [`PipeLines`] buffer as the counter store's thread adds an admitted call's line to it
/// (see `gateway/handover.rs`): never waiting, on the runtime or anything else; a batch's
/// lines added one by one, then written at once.
#[derive(Debug, Clone)]
pub(crate) struct PipeHandle {
    shared: Arc<PipeShared>,
    budget: ByteBudget,
}

impl PipeHandle {
    /// Adds `line` (a newline is added when missing) after every line already in the
    /// buffer, without writing: [`PipeHandle::flush_now`] writes what a batch of calls
    /// added, in one write. The order and back-pressure rules of [`PipeLines`] hold: the
    /// line is charged to the queue's budget, but only with room there now. Gives the line
    /// back, having added nothing, when the budget has no room now or the pipe is closed or
    /// failed: its sender then sends it the usual way.
    pub(crate) fn try_append(&self, line: Vec<u8>) -> Result<(), Vec<u8>> {
        let Some(charge) = self.budget.try_charge(line.len()) else {
            return Err(line);
        };
        let mut state = crate::sync::lock(&self.shared.state);
        if state.closing || state.pipe.is_none() {
            drop(state);
            drop(charge);
            return Err(line);
        }
        append(&mut state, &line, charge);
        // The line's buffer is not recycled: this thread reads no lines.
        Ok(())
    }

    /// Unless the writer task is writing (then it takes the buffer next), writes the whole
    /// buffer at once with one non-blocking write; what the pipe does not take now is left
    /// to the writer task, woken for it, as for any sender. Never waits.
    pub(crate) fn flush_now(&self) {
        let written = {
            let mut state = crate::sync::lock(&self.shared.state);
            if state.buf.is_empty() || state.writing {
                return;
            }
            let written = write_now(&mut state);
            if !state.buf.is_empty() {
                self.shared.wake.notify_one();
            }
            written
        };
        // Given back outside the lock.
        drop(written);
    }
}

impl Drop for PipeLines {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer task of a [`PipeLines`]: writes what the senders left in the buffer until
/// closing (or a write error); then closes the pipe and `budget`.
async fn write_pipe(shared: Arc<PipeShared>, budget: ByteBudget, side: &'static str) {
    let mut chunk: Vec<u8> = Vec::new();
    loop {
        let taken = {
            let mut state = crate::sync::lock(&shared.state);
            if !state.buf.is_empty() {
                std::mem::swap(&mut state.buf, &mut chunk);
                let done = std::mem::take(&mut state.done);
                state.writing = true;
                state.since_write = 0;
                Some((state.pipe.clone(), state.charge.take(), done))
            } else if state.closing {
                state.pipe = None;
                break;
            } else {
                None
            }
        };
        let Some((pipe, charge, done)) = taken else {
            shared.wake.notified().await;
            continue;
        };
        let result = match &pipe {
            Some(pipe) => write_all(pipe, &chunk[done..]).await,
            None => Ok(()),
        };
        drop(pipe);
        chunk.clear();
        if chunk.capacity() > KEPT_CAPACITY {
            chunk = Vec::new();
        }
        // In the pipe: the bytes go back to the budget.
        drop(charge);
        let mut state = crate::sync::lock(&shared.state);
        state.writing = false;
        if let Err(e) = result {
            tracing::debug!("{side} stream closed: {e}");
            // Nothing will be written any more: what is buffered is dropped (its charges
            // with it), and later lines are given back to their senders.
            state.pipe = None;
            state.buf = Vec::new();
            state.done = 0;
            let charge = state.charge.take();
            drop(state);
            drop(charge);
            break;
        }
    }
    // Nothing will give bytes back any more: whoever waits for room stops waiting.
    budget.close();
}

/// Writes all of `bytes` to `pipe`, waiting for room (readiness, never a spin).
async fn write_all(pipe: &pipe::Sender, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        pipe.writable().await?;
        match pipe.try_write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            // tokio cleared the readiness: the next `writable` waits for room.
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

    /// The read end of a pipe as a blocking file, read without the runtime (reading
    /// through it would let the writer task run).
    fn blocking_reader(rx: pipe::Receiver) -> std::fs::File {
        let fd = rx.into_blocking_fd().expect("the read end");
        std::fs::File::from(fd)
    }

    #[tokio::test]
    async fn pipe_lines_go_out_early_in_order_the_rest_at_close_and_every_byte_comes_back() {
        use std::io::Read as _;

        const BYTES: usize = 64 * 1024;
        let budget = ByteBudget::new(BYTES);
        let (tx, rx) = pipe::pipe().expect("a pipe");
        let mut rx = std::fs::File::from(rx.into_nonblocking_fd().expect("the read end"));
        // Known writable, as it is once a first write went through (how a session starts).
        tx.writable().await.expect("an empty pipe is writable");
        let (lines, task) = PipeLines::start(tx, budget.clone(), "test", EARLY);
        let sent: Vec<String> = (0..EARLY * 3 + 5).map(|n| format!("line {n}")).collect();
        // The writer task has not run (this task never yielded): what the pipe holds now
        // was written by the sender itself, a whole number of batches of `EARLY` lines.
        send_all(&lines, &budget, &sent);
        let mut early = vec![0u8; BYTES];
        let n = rx.read(&mut early).expect("lines written before any yield");
        let expected: String = sent.iter().map(|l| format!("{l}\n")).collect();
        assert_eq!(
            &early[..n],
            &expected.as_bytes()[..n],
            "the early writes are the first lines, in order"
        );
        let early_lines = early[..n].iter().filter(|&&b| b == b'\n').count();
        assert_eq!(early_lines, EARLY * 3, "every full batch went out at once");
        assert_eq!(
            budget.available(),
            BYTES - "line 48line 49line 50line 51line 52".len(),
            "only the lines not written yet are still charged"
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
    async fn a_line_added_from_another_thread_goes_out_at_once_after_those_buffered_or_comes_back()
    {
        use std::io::Read as _;

        const BYTES: usize = 64 * 1024;
        let budget = ByteBudget::new(BYTES);
        let (tx, rx) = pipe::pipe().expect("a pipe");
        let mut rx = std::fs::File::from(rx.into_nonblocking_fd().expect("the read end"));
        tx.writable().await.expect("an empty pipe is writable");
        let (lines, task) = PipeLines::start(tx, budget.clone(), "test", EARLY);
        // Two lines buffered (fewer than `EARLY`: not written yet), then one from a thread
        // that is not the runtime's, as the counter store's.
        let sent: Vec<String> = (0..2).map(|n| format!("line {n}")).collect();
        send_all(&lines, &budget, &sent);
        let handle = lines.handle(budget.clone());
        std::thread::spawn(move || {
            handle
                .try_append(b"handed over".to_vec())
                .expect("room now");
            handle.flush_now();
        })
        .join()
        .expect("the thread ends");
        let mut now = vec![0u8; BYTES];
        let n = rx.read(&mut now).expect("written by the thread itself");
        assert_eq!(&now[..n], b"line 0\nline 1\nhanded over\n");
        assert_eq!(
            budget.available(),
            BYTES,
            "all of it in the pipe: no charge left"
        );
        // Without room in the budget now, nothing is added: the line comes back.
        let hog = budget.try_charge(BYTES - 4).expect("room");
        let handle = lines.handle(budget.clone());
        assert_eq!(
            handle.try_append(b"too long".to_vec()),
            Err(b"too long".to_vec())
        );
        drop(hog);
        drop(lines);
        task.await.expect("the writer task ends");
        let mut rest = String::new();
        rx.read_to_string(&mut rest).expect("the end");
        assert_eq!(rest, "", "nothing was added for the line given back");
    }

    #[tokio::test]
    async fn pipe_lines_without_early_writes_leave_everything_to_the_writer_task() {
        use std::io::Read as _;

        let budget = ByteBudget::new(64 * 1024);
        let (tx, rx) = pipe::pipe().expect("a pipe");
        let mut rx = std::fs::File::from(rx.into_nonblocking_fd().expect("the read end"));
        tx.writable().await.expect("an empty pipe is writable");
        let (lines, task) = PipeLines::start(tx, budget.clone(), "test", 0);
        let sent: Vec<String> = (0..100).map(|n| format!("line {n}")).collect();
        send_all(&lines, &budget, &sent);
        let mut nothing = [0u8; 16];
        let early = rx.read(&mut nothing);
        assert_eq!(
            early.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "nothing written before the senders yield"
        );
        drop(lines);
        task.await.expect("the writer task ends");
        let mut text = String::new();
        rx.read_to_string(&mut text).expect("the lines");
        let expected: String = sent.iter().map(|l| format!("{l}\n")).collect();
        assert_eq!(text, expected, "every line, in order, in one go");
    }

    /// A reader slower than the senders, so the writer task keeps waiting for room mid-write
    /// while the senders try early writes: the order must hold all the same (it breaks when
    /// a sender may write while the writer task has bytes in hand).
    #[tokio::test]
    async fn pipe_lines_keep_their_order_while_the_writer_task_waits_for_room() {
        use std::io::BufRead as _;

        const LINES: usize = 3000;
        let budget = ByteBudget::new(256 * 1024);
        let (tx, rx) = pipe::pipe().expect("a pipe");
        let rx = blocking_reader(rx);
        let reader = std::thread::spawn(move || {
            let mut rx = std::io::BufReader::with_capacity(4096, rx);
            let mut got = Vec::new();
            let mut line = String::new();
            loop {
                line.clear();
                match rx.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                got.push(line.trim_end_matches('\n').to_owned());
                if got.len() % 50 == 0 {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            }
            got
        });
        let (lines, task) = PipeLines::start(tx, budget.clone(), "test", 3);
        let mut sent = Vec::with_capacity(LINES);
        for n in 0..LINES {
            // Lines of different lengths (a few bytes to a few KiB): writes end mid-line.
            let line = format!("{n} {}", "x".repeat((n * 7919) % 4000));
            let charge = budget.charge(line.len()).await.expect("the budget is open");
            lines
                .line(line.clone().into_bytes(), charge)
                .expect("the pipe is open");
            sent.push(line);
            if n % 5 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(lines);
        tokio::time::timeout(std::time::Duration::from_secs(30), task)
            .await
            .expect("the writer task ends within 30 s")
            .expect("the writer task ends");
        let got = reader.join().expect("the reader thread");
        assert_eq!(got.len(), sent.len(), "every line arrived");
        for (n, (got, sent)) in got.iter().zip(&sent).enumerate() {
            assert!(got == sent, "line {n} arrived out of order or torn");
        }
    }

    #[tokio::test]
    async fn pipe_lines_hold_back_a_peer_that_does_not_read_and_lose_nothing() {
        const BYTES: usize = 256 * 1024;
        let budget = ByteBudget::new(BYTES);
        let (tx, mut rx) = pipe::pipe().expect("a pipe");
        let (lines, task) = PipeLines::start(tx, budget.clone(), "test", 4);
        let line = "x".repeat(999);
        // Far more than the pipe and the budget hold: the budget must run out first.
        let mut sent = 0usize;
        for _ in 0..10 * BYTES / 1000 {
            let Some(charge) = budget.try_charge(line.len()) else {
                break;
            };
            lines
                .line(line.as_bytes().to_vec(), charge)
                .expect("the pipe is open");
            sent += 1;
            tokio::task::yield_now().await;
        }
        // Linux pipes hold at most 1 MiB by default (64 KiB unless resized).
        assert!(
            sent * 1000 <= BYTES + 1024 * 1024,
            "the senders were stopped once the budget and the pipe were full ({sent} lines)"
        );
        assert!(
            sent * 1000 > 64 * 1024,
            "more was sent than the pipe holds ({sent} lines)"
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
        tokio::time::timeout(std::time::Duration::from_secs(30), task)
            .await
            .expect("the writer task ends within 30 s")
            .expect("the writer task ends");
        let text = reading.await.expect("the reader").expect("the text");
        assert!(
            text == format!("{line}\n").repeat(sent),
            "every line, in order"
        );
        assert_eq!(budget.available(), BYTES, "every charge was given back");
    }

    #[tokio::test]
    async fn pipe_lines_after_the_peer_is_gone_are_given_back_and_the_budget_closes() {
        let budget = ByteBudget::new(64 * 1024);
        let (tx, rx) = pipe::pipe().expect("a pipe");
        drop(rx);
        let (lines, task) = PipeLines::start(tx, budget.clone(), "test", 1);
        let charge = budget.try_charge(5).expect("room");
        lines
            .line(b"first".to_vec(), charge)
            .expect("taken: the write error is the writer task's to report");
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the writer task ends within 10 s")
            .expect("the writer task ends on the write error");
        assert!(
            budget.try_charge(4).is_none(),
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
