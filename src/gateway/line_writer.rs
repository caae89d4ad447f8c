//! The task that writes a queue of lines to one peer: the stdio core's client and upstream
//! sides, and the HTTP transport's pipes into a core.
//!
//! Each line arrives with the [`Charge`] it took from its queue's [`ByteBudget`]; the bytes
//! go back to the budget once the line is written into the buffer (or dropped), a burst's
//! lines together. Lines already queued are
//! written before one flush, so a burst costs one system call, not one per line. When the
//! task ends, for whatever reason, the budget is closed: nothing will give bytes back any
//! more, so whoever waits for room stops waiting instead of hanging.

use futures_util::FutureExt as _;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

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
}
