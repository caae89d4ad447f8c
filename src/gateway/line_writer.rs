//! The task that writes a queue of lines to one peer: the stdio core's client and upstream
//! sides, and the HTTP transport's pipes into a core.
//!
//! Each line arrives with the [`Charge`] it took from its queue's [`ByteBudget`]; the bytes
//! go back to the budget once the line is written (or dropped). Lines already queued are
//! written before one flush, so a burst costs one system call, not one per line. When the
//! task ends, for whatever reason, the budget is closed: nothing will give bytes back any
//! more, so whoever waits for room stops waiting instead of hanging.

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::budget::{ByteBudget, Charge};

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
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let mut closing = false;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first.into());
        let mut result = Ok(());
        // Write everything already queued before paying for one flush.
        while let Some(out) = next.take() {
            match out {
                Out::Line(mut line, charge) => {
                    if line.last() != Some(&b'\n') {
                        line.push(b'\n');
                    }
                    if result.is_ok() {
                        result = writer.write_all(&line).await;
                    }
                    // Written (at most the BufWriter's 64 KiB wait for the flush): the
                    // bytes go back to the budget with the line.
                    drop(charge);
                    super::lines::recycle(line);
                }
                Out::Close => closing = true,
            }
            if closing {
                break;
            }
            next = rx.try_recv().ok().map(Into::into);
        }
        if result.is_ok() {
            result = writer.flush().await;
        }
        if let Err(e) = result {
            tracing::debug!("{side} stream closed: {e}");
            return;
        }
        if closing {
            break;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}
