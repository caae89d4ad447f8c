//! The proxy loop: newline-delimited JSON-RPC between a client and an upstream server, every
//! `tools/call` decided by the policy on the way.
//!
//! Transparency is the rule, for messages beyond dispute. Each line is classified by
//! [`jsonrpc::parse`] (one JSON object or a batch of them, with no duplicate key, no lone
//! surrogate, nothing after it) and by its [`Shape`]; what fails is refused — answered with
//! an error when its sender waits for one — and never forwarded. Only `tools/call`,
//! `tools/list` and `notifications/cancelled` from the client, and the answers to the
//! client's requests, are looked into. Every other message is forwarded as the exact bytes
//! received; a `tools/list` answer is always re-encoded from what `hide` filtered.
//!
//! Each side has its own id space: the client's requests (waiting for the upstream, held,
//! by id) and the upstream's requests to the client (sampling, elicitation, roots). A
//! message without a method is forwarded only as the answer to a request the other side
//! sent and still waits on; a request reusing an id still in flight is refused, and at most
//! [`MAX_IN_FLIGHT`] requests per side wait at once. No line is kept beyond
//! `--max-message` ([`super::lines`]): a longer request is answered with an error, a longer
//! answer replaced by one.
//!
//! One connection is a few tasks around `Shared`: a reader per side, a writer per side fed
//! by a bounded queue (so the writers coalesce flushes and a slow peer pushes back), one
//! task per held call, and one task ([`admissions`]) that goes on with the limited calls as
//! the counter store answers them (through one channel, a batch's answers at once). A
//! transport that takes whole lines itself (`serve`'s links, [`Output::Lines`]) has no
//! writer task on its side: each line is handed on in the task that sends it, charged to
//! the same budget until the transport is done with it. `wrap`'s pipes ([`Output::Pipe`])
//! have a writer task, but the task that sends a burst of lines writes its first lines
//! itself ([`PipeLines`]), so the peer starts on them while the rest are decided. Each
//! queue is bounded in bytes by a [`ByteBudget`] of
//! 2 × `--max-message` + 64 KiB as well as in count: a line is charged before it is queued
//! and its bytes come back once the writer wrote it, so a peer that stops reading makes the
//! sender's reader wait (it stops reading in turn) instead of growing the gateway's memory.
//! The gateway's own answers wait for room like any line, except the progress notes of held
//! calls, which are skipped when there is none; the answers owed when a connection ends wait
//! at most [`CLIENT_DRAIN`]. Held calls' lines have a budget of the same size per
//! connection: a call the policy would hold beyond it is denied instead.
//!
//! The bookkeeping of a connection is `ConnState`: which client requests are waiting for the
//! upstream (so a server that dies answers each of them), which calls are held, which
//! upstream requests wait for the client, and which 2026-07-28 calls asked for more input
//! (so their retry is not counted twice).
//!
//! Ownership rule for held calls: whoever removes a hold from `ConnState::holds` answers
//! it and settles its reservation; the others back off. That makes operator approval,
//! timeout, cancellation and shutdown race-free without further locking.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::{AbortHandle, Abortable, join};
use serde_json::Value;
use serde_json::value::RawValue;
use smol_str::SmolStr;
use tokio::io::{AsyncBufRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};

use super::Gateway;
use super::args::RawArgs;
use super::budget::{ByteBudget, Charge};
use super::call::{CallAnswer, Deciding, Queued, ToolsPage};
use super::handover::{HandOver, Taken};
use super::jsonrpc::{self, CallParams, Envelope, IdKey, Invalid, Parsed, Raw, Read, Shape, code};
use super::line_writer::{EARLY, Out, PipeHandle, PipeLines, write_lines};
use super::lines::{DEFAULT_MAX_MESSAGE, Line, LineReader, Plain, ReadAhead};
use crate::control::Resolution;
use crate::policy::store::worker::{Answered, AnsweredBatch, Answers, FirstThing};
use crate::policy::{Admission, Decision, PinMode, Reservation, StoreError, Verdict};
use crate::telemetry::CallSpans;
use crate::wire::{EventKind, ResolvedBy, ToolInfo, Tools};

/// At most this many 2026-07-28 calls wait for their `input_required` retry.
const MAX_CONTINUATIONS: usize = 1024;
/// At most this many of the gateway's own `tools/list` requests wait for their answers.
const MAX_RELISTS: usize = 16;
/// How long the last answers may take to reach the client when the connection ends.
const CLIENT_DRAIN: Duration = Duration::from_secs(5);
/// Queue length between a reader and the other side's writer (its bytes are bounded by a
/// [`ByteBudget`] too).
const QUEUE: usize = 1024;
/// At most this many requests of one side wait for the other side's answer (for the
/// client: forwarded or held); more are answered with an error.
pub const MAX_IN_FLIGHT: usize = 1024;

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed its side (or the gateway was shut down) and the upstream then
    /// closed its output. A clean end.
    ClientClosed,
    /// The upstream closed its output while the client was still connected: the server
    /// died. Every pending request was answered with an error.
    UpstreamClosed,
    /// One of the gateway's own readers (of the client or of the upstream) panicked: a bug,
    /// logged as one. The connection ended as it would have had that peer gone (no further
    /// request reached the upstream; held and pending calls were answered with errors), and
    /// the transport reports a failure, not a clean end.
    Panicked,
}

/// Per-connection settings and hooks.
#[derive(Debug)]
pub struct RunOptions {
    /// The MCP session the calls of this connection belong to (limits with scope `session`).
    pub session: String,
    /// Becomes `true` when the gateway shuts down: holds are denied, the upstream's input is
    /// closed, and the connection ends when the upstream closes its output.
    pub shutdown: Option<watch::Receiver<bool>>,
    /// Fired once the client side is done (closed, or shutdown): the upstream's input has
    /// been closed, and the transport may now start stopping the server.
    pub client_closed: Option<oneshot::Sender<()>>,
    /// The largest message accepted from either side, in bytes (`--max-message`).
    pub max_message: usize,
}

impl RunOptions {
    pub fn new(session: impl Into<String>) -> RunOptions {
        RunOptions {
            session: session.into(),
            shutdown: None,
            client_closed: None,
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }
}

/// Proxies one connection until the upstream closes its output.
pub async fn run<CR, CW, UR, UW>(
    gateway: Arc<Gateway>,
    client_reader: CR,
    client_writer: CW,
    upstream_reader: UR,
    upstream_writer: UW,
    options: RunOptions,
) -> End
where
    CR: AsyncBufRead + Unpin + Send + 'static,
    CW: AsyncWrite + Unpin + Send + 'static,
    UR: AsyncBufRead + Unpin + Send + 'static,
    UW: AsyncWrite + Unpin + Send + 'static,
{
    run_outputs(
        gateway,
        Plain(client_reader),
        Output::Stream(client_writer),
        Plain(upstream_reader),
        Output::Stream(upstream_writer),
        options,
        None,
    )
    .await
}

/// What produces the upstream's lines, polled in the same task as the core's readers (see
/// [`run_outputs`]).
pub(crate) type UpstreamDriver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// [`run`], with each side's lines written to a byte stream by a writer task of its own,
/// handed to the transport in the task that sends them ([`Output::Lines`]: `serve`'s links,
/// where a writer task would be one more hand-over per message), or written to a pipe
/// partly by the senders ([`Output::Pipe`]: `wrap`).
///
/// With a `driver`, it is polled in one task with the core's two readers, beside them, until
/// all three end: `serve`'s URL upstream ([`crate::gateway::http`]'s `remote::run_queued`),
/// so a request the client reader forwards reaches the driver, and its answer the upstream
/// reader, without a hand-over between tasks (a queue, a wake and a poll of another task
/// each). Whatever one of them waits for, the others are still polled: an answer the
/// upstream reader waits to pass on does not stop the driver's requests in flight, nor does
/// a line either reader sends the upstream wait for a driver that is not polled. The client
/// reader's end, abort and panic are seen as with a task of its own ([`ClientSide`]).
/// Without one, each reader has a task of its own.
pub(crate) async fn run_outputs<CR, CW, UR, UW>(
    gateway: Arc<Gateway>,
    client_reader: CR,
    client_out: Output<CW>,
    upstream_reader: UR,
    upstream_out: Output<UW>,
    mut options: RunOptions,
    driver: Option<UpstreamDriver>,
) -> End
where
    CR: AsyncBufRead + ReadAhead + Unpin + Send + 'static,
    CW: AsyncWrite + Unpin + Send + 'static,
    UR: AsyncBufRead + ReadAhead + Unpin + Send + 'static,
    UW: AsyncWrite + Unpin + Send + 'static,
{
    let (shared, answered, client_writer, closing_tx) =
        connect(gateway, client_out, upstream_out, &options);
    if let Some(answered) = answered {
        tokio::spawn(admissions(shared.clone(), answered));
    }

    let client_reader = LineReader::new(client_reader, options.max_message);
    let upstream_reader = LineReader::new(upstream_reader, options.max_message);
    let client = client_loop(shared.clone(), client_reader);
    let upstream = upstream_loop(shared.clone(), upstream_reader);
    let (client_side, mut upstream_side) = match driver {
        Some(driver) => ClientSide::beside(client, upstream, driver),
        None => (
            ClientSide::Task(tokio::spawn(client)),
            tokio::spawn(upstream),
        ),
    };
    let mut client_side = Some(client_side);
    let mut shutdown = options.shutdown.clone();
    let watching_shutdown = shutdown.is_some();

    // A reader that panicked must not read as a peer that closed: it is said, and the
    // connection ends failing closed.
    let mut panicked = false;
    let end = loop {
        tokio::select! {
            done = &mut upstream_side => {
                if reader_panicked("upstream", done) || panicked {
                    break End::Panicked;
                }
                if client_side.is_none() {
                    break End::ClientClosed;
                }
                break End::UpstreamClosed;
            }
            done = async { client_side.as_mut().expect("guarded").ended().await }, if client_side.is_some() => {
                client_side = None;
                panicked = done;
                finish_client(&shared, &closing_tx, &mut options).await;
            }
            stop = wait_shutdown(&mut shutdown), if client_side.is_some() && watching_shutdown => {
                if stop {
                    if let Some(task) = client_side.take() {
                        task.abort();
                    }
                    finish_client(&shared, &closing_tx, &mut options).await;
                }
            }
        }
    };

    if end != End::ClientClosed {
        if let Some(task) = client_side.take() {
            task.abort();
        }
        let _ = closing_tx.send(true);
    }
    if end == End::UpstreamClosed {
        tracing::error!("the MCP server closed its output; answering pending requests");
    }
    let why = match end {
        End::UpstreamClosed => "the MCP server exited before answering",
        // Anything still waiting can no longer be answered by the upstream.
        End::ClientClosed => "the MCP server closed before answering",
        End::Panicked => "the gateway failed (an internal error) before the answer came",
    };
    let owed = shared.fail_pending(why);
    // A client that stopped reading must not keep the gateway from ending.
    let drained = async {
        for line in owed {
            shared.send_client(line).await;
        }
        shared.to_client.close().await;
        if let Some(writer) = client_writer {
            let _ = writer.await;
        }
    };
    if tokio::time::timeout(CLIENT_DRAIN, drained).await.is_err() {
        tracing::warn!("the client is not reading; its last answers are dropped");
    }
    end
}

/// What [`connect`] starts: the connection's state, the receiving end of its admissions'
/// answers (for [`admissions`]), the client's writer task, the closing signal.
type Connected = (
    Arc<Shared>,
    Option<mpsc::UnboundedReceiver<AnsweredBatch>>,
    Option<tokio::task::JoinHandle<()>>,
    watch::Sender<bool>,
);

/// The state of one connection, with its queues to both sides started.
fn connect<CW, UW>(
    gateway: Arc<Gateway>,
    client_out: Output<CW>,
    upstream_out: Output<UW>,
    options: &RunOptions,
) -> Connected
where
    CW: AsyncWrite + Unpin + Send + 'static,
    UW: AsyncWrite + Unpin + Send + 'static,
{
    let (to_client, client_writer) = Queue::start(client_out, options.max_message, "client");
    let (to_upstream, _) = Queue::start(upstream_out, options.max_message, "upstream");
    let (closing_tx, closing) = watch::channel(false);
    let (answers, answered) = match gateway.store.is_threaded() {
        true => {
            let (answers, answered) = Answers::channel();
            (Some(answers), Some(answered))
        }
        false => (None, None),
    };
    // `wrap`'s pipe to the server, with a store on its own thread and no traces (a traced
    // call's line is rewritten as it goes): the store thread writes an admitted call's line
    // itself (`handover.rs`).
    let hand_over = match (&answers, &gateway.traces) {
        (Some(_), None) => to_upstream.pipe_handle(),
        _ => None,
    };
    let shared = Arc::new(Shared {
        gateway,
        session: SmolStr::new(&options.session),
        to_client,
        to_upstream,
        state: Mutex::new(ConnState::default()),
        closing,
        max_message: options.max_message,
        held_lines: ByteBudget::for_messages(options.max_message),
        protocol_version: std::sync::OnceLock::new(),
        server_name: OnceLock::new(),
        next_relist: AtomicU64::new(1),
        answers,
        hand_over,
    });
    (shared, answered, client_writer, closing_tx)
}

/// Resolves `true` when the gateway shuts down, `false` when its signal is dropped (after
/// which it is not watched any more).
async fn wait_shutdown(signal: &mut Option<watch::Receiver<bool>>) -> bool {
    let Some(rx) = signal.as_mut() else {
        return std::future::pending().await;
    };
    let stop = rx.wait_for(|stop| *stop).await.is_ok();
    if !stop {
        *signal = None;
    }
    stop
}

/// Whether a reader task ended by panicking (logged, naming its side) rather than by its
/// peer closing.
fn reader_panicked(side: &str, done: Result<(), tokio::task::JoinError>) -> bool {
    match done {
        Err(e) if e.is_panic() => {
            tracing::error!(
                "the gateway's reader of the {side} panicked ({e}); ending the connection: \
                 held calls are denied and pending requests answered with an error"
            );
            true
        }
        _ => false,
    }
}

/// The core's client reader as [`run_outputs`]'s loop sees it: a task of its own, or a
/// future polled beside the upstream reader in the upstream's task.
enum ClientSide {
    Task(tokio::task::JoinHandle<()>),
    Beside {
        /// `true` when the reader ended by itself, `false` when the upstream's end aborted
        /// it; dropped unsent when the shared task panicked.
        done: oneshot::Receiver<bool>,
        abort: AbortHandle,
    },
}

impl ClientSide {
    /// Starts the client reader, the upstream reader and `driver` in one task. The task's
    /// handle ends when the upstream reader and the driver both have (the client reader is
    /// then aborted, as [`run_outputs`] aborts a client task when the upstream ends), or when
    /// anything in it panicked.
    fn beside(
        client: impl Future<Output = ()> + Send + 'static,
        upstream: impl Future<Output = ()> + Send + 'static,
        driver: UpstreamDriver,
    ) -> (ClientSide, tokio::task::JoinHandle<()>) {
        let (abort, registration) = AbortHandle::new_pair();
        let (done_tx, done) = oneshot::channel();
        let client = async move {
            let ended = Abortable::new(client, registration).await.is_ok();
            let _ = done_tx.send(ended);
        };
        let upstream_ended = abort.clone();
        // Polled in the order a call goes at every wake (the client reader, the driver, the
        // upstream reader; `tokio::join!` would rotate it): what the client reader forwards
        // is posted, and an answer the driver reads is passed on, in the same pass.
        let upstream = async move {
            join(driver, upstream).await;
            upstream_ended.abort();
        };
        let task = tokio::spawn(async move {
            join(client, upstream).await;
        });
        (ClientSide::Beside { done, abort }, task)
    }

    /// Waits for the reader's end; whether it panicked (said, as [`reader_panicked`] does).
    /// A reader beside the upstream that the upstream's end aborted never ends here: the
    /// upstream's handle says what ended.
    async fn ended(&mut self) -> bool {
        match self {
            ClientSide::Task(task) => reader_panicked("client", task.await),
            ClientSide::Beside { done, .. } => match done.await {
                Ok(true) => false,
                Ok(false) => std::future::pending().await,
                Err(_) => {
                    tracing::error!(
                        "the gateway's readers panicked; ending the connection: held calls \
                         are denied and pending requests answered with an error"
                    );
                    true
                }
            },
        }
    }

    fn abort(&self) {
        match self {
            ClientSide::Task(task) => task.abort(),
            ClientSide::Beside { abort, .. } => abort.abort(),
        }
    }
}

/// The client is gone (or the gateway shuts down): deny the holds, close the upstream's
/// input, and let the transport start stopping the server.
async fn finish_client(
    shared: &Arc<Shared>,
    closing_tx: &watch::Sender<bool>,
    options: &mut RunOptions,
) {
    let _ = closing_tx.send(true);
    let owed = shared.fail_holds("the gateway is shutting down");
    shared.to_upstream.close().await;
    if let Some(tx) = options.client_closed.take() {
        let _ = tx.send(());
    }
    // The denied holds' answers wait for room like any line, but a client that stopped
    // reading must not keep the connection from ending.
    let answered = async {
        for line in owed {
            shared.send_client(line).await;
        }
    };
    if tokio::time::timeout(CLIENT_DRAIN, answered).await.is_err() {
        tracing::warn!("the client is not reading; the answers to its held calls are dropped");
    }
}

/// Where the core writes one side's lines.
pub(crate) enum Output<W> {
    /// A byte stream, written by a writer task of its own (which coalesces flushes).
    Stream(W),
    /// A transport's own hand-over, called in the task that sends each line.
    Lines(Box<dyn LineOut>),
    /// A non-blocking pipe, written by the tasks that send the lines or by a writer task
    /// ([`PipeLines`]: `wrap`'s pipes).
    Pipe(tokio::net::unix::pipe::Sender),
}

/// What an [`Output::Lines`] transport does with the lines the core sends one side.
pub(crate) trait LineOut: Send + 'static {
    /// A line (no newline), charged to the side's queue budget: its bytes come back when
    /// whoever takes the line drops `charge`, so a consumer that stops taking lines pushes
    /// back on the core as a stream that stops reading does. `known` is what the core read
    /// of the line's own bytes, so the transport need not read them again.
    fn line(&mut self, line: Vec<u8>, charge: Charge, known: Known);

    /// No line will follow (the core closed the side, or ended). Called once.
    fn end(&mut self);
}

/// What the core read of a line it hands an [`Output::Lines`] transport: a message it
/// forwards as it came (the bytes it parsed, unchanged) is named by its shape; a line the
/// core built, or one it did not read as one message, is [`Known::Nothing`] (the transport
/// reads it itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Known {
    Nothing,
    /// A request with this id.
    Request(IdKey),
    /// An answer (a result or an error) to the request with this id.
    Answer(IdKey),
}

impl Known {
    /// What `env` (parsed from the bytes handed on) is.
    fn of(env: &Envelope<'_>) -> Known {
        match env.shape() {
            Ok(Shape::Request { id, .. }) => Known::Request(id),
            Ok(Shape::Response { id }) => Known::Answer(id),
            Ok(Shape::Notification { .. }) | Err(_) => Known::Nothing,
        }
    }
}

/// The sending end of one side's output: bounded in bytes, and in count for a writer task.
struct Queue {
    to: To,
    budget: ByteBudget,
}

enum To {
    /// The queue of a writer task.
    Writer(mpsc::Sender<Out>),
    /// Handed on in place; `None` once closed.
    Lines(Mutex<Option<Box<dyn LineOut>>>),
    /// A pipe's buffer, written by the senders or its writer task.
    Pipe(PipeLines),
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let to = match self.to {
            To::Writer(_) => "writer task",
            To::Lines(_) => "lines handed on",
            To::Pipe(_) => "pipe",
        };
        f.debug_struct("Queue")
            .field("to", &to)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// The queue for `out`, and the writer task that writes a stream.
    fn start<W>(
        out: Output<W>,
        max_message: usize,
        side: &'static str,
    ) -> (Queue, Option<tokio::task::JoinHandle<()>>)
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let budget = ByteBudget::for_messages(max_message);
        match out {
            Output::Stream(writer) => {
                let (tx, rx) = mpsc::channel(QUEUE);
                let task = tokio::spawn(write_lines(writer, rx, budget.clone(), side));
                let queue = Queue {
                    to: To::Writer(tx),
                    budget,
                };
                (queue, Some(task))
            }
            Output::Lines(lines) => {
                let queue = Queue {
                    to: To::Lines(Mutex::new(Some(lines))),
                    budget,
                };
                (queue, None)
            }
            Output::Pipe(pipe) => {
                let (lines, task) = PipeLines::start(pipe, budget.clone(), side, EARLY);
                let queue = Queue {
                    to: To::Pipe(lines),
                    budget,
                };
                (queue, Some(task))
            }
        }
    }

    /// Hands a charged line on; gives it back when the side is closed.
    fn hand_on(
        lines: &Mutex<Option<Box<dyn LineOut>>>,
        line: Vec<u8>,
        charge: Charge,
        known: Known,
    ) -> Result<(), Vec<u8>> {
        match crate::sync::lock(lines).as_mut() {
            Some(out) => {
                out.line(line, charge, known);
                Ok(())
            }
            None => Err(line),
        }
    }

    /// Whether lines are handed to a transport that can use what the core read of them.
    fn takes_known(&self) -> bool {
        matches!(self.to, To::Lines(_))
    }

    /// Queues a line once its bytes fit; gives it back when the writer is gone.
    async fn send(&self, line: Vec<u8>) -> Result<(), Vec<u8>> {
        self.send_known(line, Known::Nothing).await
    }

    /// [`Queue::send`], with what the core read of the line (used only by
    /// [`Output::Lines`]).
    async fn send_known(&self, line: Vec<u8>, known: Known) -> Result<(), Vec<u8>> {
        // Room now is taken without setting up a wait (two per line otherwise). No one is
        // overtaken: bytes and places given back go to whoever waits first, so there is room
        // now only when no one waits.
        let charge = match self.budget.try_charge(line.len()) {
            Some(charge) => charge,
            None => match self.budget.charge(line.len()).await {
                Some(charge) => charge,
                None => return Err(line),
            },
        };
        let sent = match &self.to {
            To::Writer(tx) => {
                let out = match tx.try_send(Out::Line(line, charge)) {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::TrySendError::Full(out)) => Err(out),
                    Err(mpsc::error::TrySendError::Closed(out)) => {
                        return Err(Self::given_back(out));
                    }
                };
                if let Err(out) = out {
                    return match tx.send(out).await {
                        Ok(()) => Ok(()),
                        Err(mpsc::error::SendError(out)) => Err(Self::given_back(out)),
                    };
                }
                Ok(())
            }
            To::Lines(lines) => Queue::hand_on(lines, line, charge, known),
            To::Pipe(pipe) => pipe.line(line, charge),
        };
        if sent.is_ok() {
            // The waits taken before counted against the task's share of the runtime, so a
            // reader with a buffer full of lines let the others run every few dozen lines
            // (hold timers, the event websocket, the writers); it still does.
            tokio::task::coop::consume_budget().await;
        }
        sent
    }

    /// The line of what the writer will never take.
    fn given_back(out: Out) -> Vec<u8> {
        match out {
            Out::Line(line, _) => line,
            Out::Close => Vec::new(),
        }
    }

    /// Queues a line only if there is room now.
    fn try_send(&self, line: Vec<u8>) -> bool {
        let Some(charge) = self.budget.try_charge(line.len()) else {
            return false;
        };
        match &self.to {
            To::Writer(tx) => tx.try_send(Out::Line(line, charge)).is_ok(),
            To::Lines(lines) => Queue::hand_on(lines, line, charge, Known::Nothing).is_ok(),
            To::Pipe(pipe) => pipe.line(line, charge).is_ok(),
        }
    }

    /// The handle through which the counter store's thread adds lines to this side, when it
    /// is a pipe ([`PipeHandle`]).
    fn pipe_handle(&self) -> Option<PipeHandle> {
        match &self.to {
            To::Pipe(pipe) => Some(pipe.handle(self.budget.clone())),
            To::Writer(_) | To::Lines(_) => None,
        }
    }

    /// Asks the writer to flush and close (after what is queued).
    async fn close(&self) {
        match &self.to {
            To::Writer(tx) => {
                let _ = tx.send(Out::Close).await;
            }
            To::Lines(lines) => {
                // Taken out first: `end` runs without the lock held.
                let out = crate::sync::lock(lines).take();
                if let Some(mut out) = out {
                    out.end();
                }
                // As when a writer task ends: whoever waits for room stops waiting.
                self.budget.close();
            }
            To::Pipe(pipe) => pipe.close(),
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // The core ended without closing this side: the transport still hears of it.
        if let To::Lines(lines) = &self.to
            && let Some(mut out) = crate::sync::lock(lines).take()
        {
            out.end();
        }
    }
}

#[cfg(test)]
mod handover_tests;

#[cfg(test)]
mod queue_tests {
    use super::*;

    /// What an `Output::Lines` transport was handed: lines kept with their charges, ends.
    type Handed = Arc<Mutex<(Vec<(Vec<u8>, Charge)>, usize)>>;

    struct Keep(Handed);

    impl LineOut for Keep {
        fn line(&mut self, line: Vec<u8>, charge: Charge, _known: Known) {
            crate::sync::lock(&self.0).0.push((line, charge));
        }
        fn end(&mut self) {
            crate::sync::lock(&self.0).1 += 1;
        }
    }

    fn lines_queue(max_message: usize) -> (Queue, Handed) {
        let handed = Handed::default();
        let out: Output<tokio::io::Sink> = Output::Lines(Box::new(Keep(handed.clone())));
        let (queue, writer) = Queue::start(out, max_message, "test");
        assert!(writer.is_none(), "no writer task for lines handed on");
        (queue, handed)
    }

    #[tokio::test]
    async fn lines_handed_on_wait_for_room_in_the_budget_until_the_taker_drops_them() {
        let (queue, handed) = lines_queue(1024);
        let room = queue.budget.available();
        let big = vec![b'x'; room - 10];
        assert!(queue.send(big.clone()).await.is_ok());
        assert!(
            !queue.try_send(vec![b'y'; 100]),
            "no room left while the first line is held"
        );
        let mut waiting = Box::pin(queue.send(vec![b'z'; 100]));
        let early = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
        assert!(early.is_err(), "a line beyond the budget waited for room");
        assert_eq!(crate::sync::lock(&handed).0.len(), 1);
        // The taker drops the first line: its bytes come back and the second goes through.
        crate::sync::lock(&handed).0.clear();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the line went through once room was given back")
            .expect("handed on");
        assert_eq!(crate::sync::lock(&handed).0[0].0, vec![b'z'; 100]);
    }

    #[tokio::test]
    async fn a_closed_side_ends_once_and_gives_later_lines_back() {
        let (queue, handed) = lines_queue(1024);
        queue.close().await;
        assert_eq!(crate::sync::lock(&handed).1, 1, "ended");
        assert_eq!(queue.send(b"late".to_vec()).await, Err(b"late".to_vec()));
        assert!(!queue.try_send(b"late".to_vec()));
        drop(queue);
        assert_eq!(crate::sync::lock(&handed).1, 1, "ended once");
    }

    #[tokio::test]
    async fn a_side_dropped_without_closing_still_ends() {
        let (queue, handed) = lines_queue(1024);
        assert!(queue.send(b"one".to_vec()).await.is_ok());
        drop(queue);
        let handed = crate::sync::lock(&handed);
        assert_eq!((handed.0.len(), handed.1), (1, 1));
    }
}

#[cfg(test)]
mod beside_tests {
    use super::*;

    /// A future that never ends.
    fn forever() -> impl Future<Output = ()> + Send + 'static {
        std::future::pending()
    }

    #[tokio::test]
    async fn a_client_reader_beside_the_upstream_ends_by_itself_and_the_upstream_goes_on() {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (mut client, task) = ClientSide::beside(
            async {},
            async move {
                let _ = stop_rx.await;
            },
            Box::pin(async {}),
        );
        assert!(!client.ended().await, "ended, not panicked");
        assert!(!task.is_finished(), "the upstream reader still reads");
        stop_tx.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn the_upstreams_end_aborts_the_client_reader_beside_it_and_says_what_ended() {
        let (mut client, task) = ClientSide::beside(forever(), async {}, Box::pin(async {}));
        task.await
            .expect("the task ends with the upstream, the client reader aborted");
        let seen = tokio::time::timeout(Duration::from_millis(50), client.ended()).await;
        assert!(
            seen.is_err(),
            "an aborted reader is not seen as one that ended"
        );
    }

    #[tokio::test]
    async fn a_reader_that_panics_beside_the_upstream_is_seen_as_a_panic() {
        let (mut client, task) = ClientSide::beside(
            async { panic!("a bug in the client reader") },
            forever(),
            Box::pin(forever()),
        );
        assert!(client.ended().await, "panicked");
        assert!(task.await.unwrap_err().is_panic());
    }

    #[tokio::test]
    async fn a_client_reader_beside_the_upstream_can_be_aborted() {
        let (mut client, task) = ClientSide::beside(forever(), async {}, Box::pin(forever()));
        client.abort();
        // `run_outputs` no longer waits for a reader it aborted: nothing says it ended.
        let seen = tokio::time::timeout(Duration::from_millis(50), client.ended()).await;
        assert!(seen.is_err(), "an abort is neither an end nor a panic");
        assert!(!task.is_finished(), "the driver still runs");
        task.abort();
    }
}

/// Resolves once the connection is closing.
async fn until_closing(mut closing: watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

/// The state shared by the tasks of one connection.
#[derive(Debug)]
struct Shared {
    gateway: Arc<Gateway>,
    /// Repeated in every call event: a [`SmolStr`] clones without allocating.
    session: SmolStr,
    to_client: Queue,
    to_upstream: Queue,
    state: Mutex<ConnState>,
    /// Becomes `true` when the connection is closing; hold tasks stop waiting.
    closing: watch::Receiver<bool>,
    /// See [`RunOptions::max_message`].
    max_message: usize,
    /// The bytes of held calls' lines this connection may keep (2 × `--max-message` +
    /// 64 KiB): a call that would be held beyond it is denied instead.
    held_lines: ByteBudget,
    /// The protocol version the connection's `initialize` settled on, read from its answer
    /// only when tracing is on (spans carry it as `mcp.protocol.version`).
    protocol_version: std::sync::OnceLock<Box<str>>,
    /// The server's own name (`serverInfo.name` of its `initialize` or `server/discover`
    /// answer): the identity of its tool pins when the gateway was given none.
    server_name: OnceLock<String>,
    /// Numbers the gateway's own `tools/list` requests (`toolgate-pins-N`).
    next_relist: AtomicU64,
    /// Where the counter store answers this connection's limited calls (drained by
    /// [`admissions`]); `None` for a store asked in place.
    answers: Option<Answers>,
    /// The upstream's pipe, for the store thread to write an admitted call's line to
    /// (`handover.rs`): `wrap` with a threaded store and tracing off; `None` otherwise.
    hand_over: Option<PipeHandle>,
}

/// The ids in flight, hashed cheaply ([`crate::hashing`]): each map holds at most
/// [`MAX_IN_FLIGHT`] of them.
type IdMap<V> = crate::hashing::FastMap<IdKey, V>;

#[derive(Debug, Default)]
struct ConnState {
    /// Client requests forwarded upstream and not answered yet, by id.
    pending: IdMap<Forwarded>,
    /// Calls waiting for an operator, by request id.
    holds: IdMap<HeldCall>,
    /// 2026-07-28 calls that answered `input_required`, by tool and argument hash: their
    /// retry continues the same call.
    continuations: HashMap<(SmolStr, String), CallInFlight>,
    /// The tools seen in the current `tools/list` pagination.
    tools: Vec<ToolInfo>,
    /// Requests the upstream sent the client (sampling, elicitation, roots) and that the
    /// client has not answered yet: the only answers from the client that are forwarded.
    server_pending: crate::hashing::FastSet<IdKey>,
    /// The gateway's own `tools/list` requests upstream (after
    /// `notifications/tools/list_changed`), by id, each with whether it asks for the first
    /// page. Their answers are the gateway's: never forwarded to the client. Their ids are
    /// in flight for the client too, so a client request cannot take one.
    relists: IdMap<bool>,
    /// The `_meta` of the client's latest `tools/list` (2026-07-28 clients send their
    /// protocol version there), repeated on the gateway's own.
    list_meta: Option<Box<RawValue>>,
    /// Limited calls waiting for their admission's answer through `Shared::answers`, in
    /// the order they were asked (which is the order they are answered in); each also has
    /// its `Forwarded::Deciding` entry in `pending` while nothing ended it.
    admitting: VecDeque<Box<Waiting>>,
    /// Set by [`admissions`] as it stops (the connection closed and nothing waits): a call
    /// queued after that is not waited for.
    admissions_closed: bool,
    /// The ticket of the last call put in `admitting`: an answer with a later ticket came
    /// before its call was put there (the store was quicker than the client's reader on a
    /// runtime with several threads), one with an earlier ticket after its call failed.
    last_queued: Option<u64>,
    /// Answers that came before their call (see `last_queued`), for the call to find.
    early: Vec<Answered>,
    /// The turn given to the last call put in `pending` as `Forwarded::Deciding`: each such
    /// call keeps its own, so a call cancelled while it waited, whose id a new request took
    /// since, never takes the new request's entry when its own admission is answered.
    last_turn: u64,
}

impl ConnState {
    /// Whether a client request id is in flight: forwarded and unanswered, or held. (A
    /// call waiting for its `input_required` retry is not: it was answered, and its retry
    /// is found by tool and arguments.)
    fn client_id_in_flight(&self, id: &IdKey) -> bool {
        self.pending.contains_key(id)
            || self.holds.contains_key(id)
            || self.relists.contains_key(id)
    }

    /// Puts a call waiting for the counter store in `pending` under `id` (with its
    /// hand-over, when its line may go upstream from the store thread); returns its turn.
    fn start_deciding(&mut self, id: IdKey, early: Option<Arc<HandOver>>) -> u64 {
        self.last_turn += 1;
        self.pending
            .insert(id, Forwarded::Deciding(self.last_turn, early));
        self.last_turn
    }

    /// Whether the call that waited for the counter store with this turn still owns `id`
    /// (neither cancelled nor failed, and no later request took the id since).
    fn deciding_owns(&self, id: &IdKey, turn: u64) -> bool {
        matches!(self.pending.get(id), Some(Forwarded::Deciding(t, _)) if *t == turn)
    }
}

#[derive(Debug)]
enum Forwarded {
    /// Any request the gateway only forwards (with its spans, when tracing is on).
    Plain(Option<Box<CallSpans>>),
    /// A call waiting for the counter store to admit its limits; not forwarded by the
    /// runtime yet. The task that waits for the store takes it out (forwarding, refusing or
    /// holding the call) unless it was cancelled or failed first. With its turn (see
    /// `ConnState::last_turn`): only the call given that turn may take the entry out. With
    /// its hand-over when the store thread may write its line upstream as it admits it
    /// (`handover.rs`): an upstream answer to its id is kept with the call there once the
    /// line went, and handled after the decision is published; otherwise it is dropped.
    Deciding(u64, Option<Arc<HandOver>>),
    ToolsList {
        first_page: bool,
        spans: Option<Box<CallSpans>>,
    },
    /// `initialize` or `server/discover`: its answer names the server (`serverInfo`).
    /// With its spans, when tracing is on.
    Handshake(Option<Box<CallSpans>>),
    Call(CallInFlight),
}

/// A `tools/call` between its arrival and its decision.
struct Deliberation {
    id: IdKey,
    params: CallParams,
    args: RawArgs,
    arrived: Instant,
    modern: bool,
    /// Room for its line should it be held.
    held_room: Option<Charge>,
    /// Its spans, when tracing is on.
    spans: Option<Box<CallSpans>>,
}

/// A limited call waiting in `ConnState::admitting` for its admission's answer: all it
/// needs to go on once answered (its decision settled, published, then forwarded, refused
/// or held by [`admissions`]). Boxed there: it is large, and moved from the queue to the
/// batch settled to the call's end (copying it was a few percent of the runtime's work per
/// limited call at 64 in flight).
struct Waiting {
    queued: Queued,
    call: Deliberation,
    no_hold: Option<String>,
    line: Vec<u8>,
    /// When it fails (as `--counters-fail` says) if no answer has come.
    deadline: Instant,
    /// Its turn on its `Forwarded::Deciding` entry.
    turn: u64,
    /// Its hand-over (`handover.rs`): once armed, it holds `line` (then empty here) until
    /// the store thread writes it upstream or the runtime takes it back.
    early: Option<Arc<HandOver>>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("ticket", &self.queued.ticket())
            .field("id", &self.call.id)
            .finish_non_exhaustive()
    }
}

/// A call admitted upstream, until its answer.
#[derive(Debug)]
struct CallInFlight {
    call_id: SmolStr,
    tool: SmolStr,
    /// The arguments' hash, by which an `input_required` retry finds this call (2026-07-28
    /// calls only). The arguments themselves are not kept: up to `--max-message` each,
    /// for every call in flight.
    continuation: Option<String>,
    arrived: Instant,
    reservation: Reservation,
    /// Its spans, when tracing is on; ended with the answer.
    spans: Option<Box<CallSpans>>,
}

#[derive(Debug)]
struct HeldCall {
    call_id: SmolStr,
    tool: SmolStr,
    /// See [`CallInFlight::continuation`].
    continuation: Option<String>,
    arrived: Instant,
    reservation: Reservation,
    modern: bool,
    /// Dropped or fired when someone else settled the hold; ends the hold task.
    _stop: oneshot::Sender<()>,
    /// The original request line, forwarded as is when approved.
    line: Vec<u8>,
    /// The line's bytes in `Shared::held_lines`, given back with the hold.
    _room: Charge,
    /// See [`CallInFlight::spans`].
    spans: Option<Box<CallSpans>>,
}

async fn client_loop<R>(shared: Arc<Shared>, mut reader: LineReader<R>)
where
    R: AsyncBufRead + ReadAhead + Unpin,
{
    while let Some((line, read)) = reader.next_read("client").await {
        match line {
            Line::Whole(line) => shared.on_line(Side::Client, line, read).await,
            Line::TooLong { prefix, len } => shared.too_long(Side::Client, &prefix, len).await,
        }
    }
}

async fn upstream_loop<R>(shared: Arc<Shared>, mut reader: LineReader<R>)
where
    R: AsyncBufRead + ReadAhead + Unpin,
{
    while let Some((line, read)) = reader.next_read("upstream").await {
        match line {
            Line::Whole(line) => shared.on_line(Side::Upstream, line, read).await,
            Line::TooLong { prefix, len } => shared.too_long(Side::Upstream, &prefix, len).await,
        }
    }
}

/// Which peer a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Upstream,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }
}

/// What to do with one message.
enum Disposition {
    /// Send the message's own bytes to the other side.
    Forward,
    /// Send this to the other side instead.
    Replace(Vec<u8>),
    /// Answer the sender with this.
    Answer(Vec<u8>),
    /// An upstream answer to the client's `tools/list`: pins checked (which may wait for
    /// the pin store), then filtered and sent to the client.
    Listed {
        id: IdKey,
        result: Box<RawValue>,
        first_page: bool,
    },
    /// An upstream answer to the gateway's own `tools/list`: pins checked, the next page
    /// asked for; nothing reaches the client.
    Relisted {
        result: Box<RawValue>,
    },
    /// Forward the upstream's `notifications/tools/list_changed`, then list the tools again
    /// for the pins.
    ForwardThenRelist,
    /// A limited call whose admission is queued at the counter store: it begins its wait
    /// with the message's line ([`Shared::waiting_begun`], before [`Shared::act`]).
    Admitting(Box<Waiting>),
    Nothing,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        crate::sync::lock(&self.state)
    }

    async fn send_client(&self, line: Vec<u8>) {
        let _ = self.to_client.send(line).await;
    }

    /// Handles one whole line from `side`; `read`: where its sender found its members when
    /// it read the same line whole ([`ReadAhead`]), so it is not scanned again.
    async fn on_line(self: &Arc<Self>, side: Side, line: Vec<u8>, read: Option<Box<Read>>) {
        let parsed = match read.and_then(|read| read.envelope(&line)) {
            Some(env) => {
                // Every test holds the shortcut to the scan it saves.
                #[cfg(debug_assertions)]
                if let Parsed::Message(scanned) = jsonrpc::parse(&line) {
                    assert_eq!(
                        scanned.read(&line),
                        env.read(&line),
                        "a line read ahead reads the same"
                    );
                } else {
                    panic!("a line read ahead is one message");
                }
                Parsed::Message(env)
            }
            None => jsonrpc::parse(&line),
        };
        match parsed {
            Parsed::Message(env) => {
                let action = self.message(side, &env, &line);
                // The line itself is forwarded, or kept by a limited call: no copy. What
                // was read of a forwarded line goes with it to a transport that would
                // otherwise read it again.
                if matches!(action, Disposition::Forward) {
                    let to = match side {
                        Side::Client => &self.to_upstream,
                        Side::Upstream => &self.to_client,
                    };
                    if to.takes_known() {
                        let known = Known::of(&env);
                        drop(env);
                        return self.forward(side, line, known).await;
                    }
                }
                drop(env);
                let mut line = line;
                if let Disposition::Admitting(waiting) = action {
                    let action = self.wait_for_admission(waiting, &mut line);
                    self.act(side, action, line).await;
                } else {
                    self.act(side, action, line).await;
                }
            }
            Parsed::Batch(items) => {
                for item in items {
                    let bytes = item.get().as_bytes();
                    let action = match jsonrpc::parse_element(item) {
                        Parsed::Message(env) => self.message(side, &env, bytes),
                        Parsed::NotAMessage(why) => not_a_message(side, why),
                        Parsed::Batch(_) | Parsed::Malformed(_) => {
                            not_a_message(side, "a batch element is an object")
                        }
                    };
                    let mut bytes = bytes.to_vec();
                    let action = self.waiting_begun(action, &mut bytes);
                    self.act(side, action, bytes).await;
                }
            }
            Parsed::NotAMessage(why) => {
                let action = not_a_message(side, why);
                self.act(side, action, line).await;
            }
            Parsed::Malformed(err) => {
                let action = self.unreadable(side, &line, &err, false);
                self.act(side, action, line).await;
            }
        }
    }

    /// Handles a line from `side` that was longer than `--max-message`, from its prefix.
    async fn too_long(self: &Arc<Self>, side: Side, prefix: &[u8], len: u64) {
        let why = format!(
            "a message of {len} bytes is larger than the gateway accepts ({} bytes; --max-message)",
            self.max_message
        );
        let action = self.unreadable(side, prefix, &why, true);
        self.act(side, action, Vec::new()).await;
    }

    async fn act(&self, side: Side, action: Disposition, bytes: Vec<u8>) {
        match (side, action) {
            (_, Disposition::Nothing) => {}
            // Not reached: every caller begins the wait first (`waiting_begun`).
            // If one ever did, the call is neither forwarded nor answered: closed, never let
            // through.
            (_, Disposition::Admitting(waiting)) => {
                if cfg!(debug_assertions) {
                    panic!("a limited call reached `act` before its wait began");
                }
                tracing::error!(
                    "a limited call reached the gateway's send step before its wait: {waiting:?}"
                );
            }
            (
                Side::Upstream,
                Disposition::Listed {
                    id,
                    result,
                    first_page,
                },
            ) => {
                let line = self.tools_listed(&id, &result, first_page).await;
                self.send_client(line).await;
            }
            (Side::Upstream, Disposition::Relisted { result }) => self.relisted(&result).await,
            (Side::Upstream, Disposition::ForwardThenRelist) => {
                self.send_client(bytes).await;
                if self.gateway.pins.is_some() && self.gateway.policy.load().pins() != PinMode::Off
                {
                    self.relist(None);
                }
            }
            // Only upstream messages are listed.
            (
                Side::Client,
                Disposition::Listed { .. }
                | Disposition::Relisted { .. }
                | Disposition::ForwardThenRelist,
            ) => {}
            (Side::Client, Disposition::Forward) => self.forward_upstream(bytes).await,
            (Side::Client, Disposition::Replace(other))
            | (Side::Upstream, Disposition::Answer(other)) => {
                let _ = self.to_upstream.send(other).await;
            }
            (Side::Upstream, Disposition::Forward) => self.send_client(bytes).await,
            (Side::Upstream, Disposition::Replace(other))
            | (Side::Client, Disposition::Answer(other)) => {
                self.send_client(other).await;
            }
        }
    }

    fn message(self: &Arc<Self>, side: Side, env: &Envelope<'_>, bytes: &[u8]) -> Disposition {
        match env.shape() {
            Ok(shape) => match side {
                Side::Client => self.client_message(shape, env, bytes),
                Side::Upstream => self.upstream_message(shape, env, bytes),
            },
            Err(invalid) => self.invalid(side, invalid),
        }
    }

    /// A message whose members make no JSON-RPC message: refused, never forwarded.
    fn invalid(&self, side: Side, invalid: Invalid) -> Disposition {
        tracing::warn!(
            "invalid JSON-RPC message from the {}: {}",
            side.name(),
            invalid.why
        );
        if invalid.request {
            return Disposition::Answer(jsonrpc::error_response(
                None,
                code::INVALID_REQUEST,
                &format!("invalid request: {}", invalid.why),
            ));
        }
        // An answer that makes no sense, to a request the other side waits for: that side
        // gets an error instead of waiting forever.
        match invalid
            .id
            .and_then(|id| self.answer_refused(side, &id, &invalid.why))
        {
            Some(reply) => Disposition::Replace(reply),
            None => Disposition::Nothing,
        }
    }

    /// A line from `side` that cannot be read (malformed) or was too long to keep
    /// (`too_long`, then `bytes` is its prefix): whatever its top-level members reveal says
    /// who is owed an answer.
    fn unreadable(&self, side: Side, bytes: &[u8], why: &str, too_long: bool) -> Disposition {
        let preview = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        tracing::warn!(
            "{} from the {}: {why}: {}",
            if too_long {
                "dropped a message"
            } else {
                "malformed JSON-RPC"
            },
            side.name(),
            preview.trim_end()
        );
        let seen = jsonrpc::sniff(bytes);
        if seen.answer && !seen.method {
            let reply = seen.id.and_then(|id| self.answer_refused(side, &id, why));
            return reply.map_or(Disposition::Nothing, Disposition::Replace);
        }
        if too_long {
            // A request, or a message that cannot be told apart from one: its sender gets an
            // error (with the id when the prefix shows it) instead of an answer.
            return Disposition::Answer(jsonrpc::error_response(
                seen.id.as_ref(),
                code::INVALID_REQUEST,
                why,
            ));
        }
        if seen.method {
            // JSON-RPC: the id of a request that does not parse is not known.
            return Disposition::Answer(jsonrpc::error_response(
                None,
                code::PARSE_ERROR,
                &format!("parse error: {why}"),
            ));
        }
        Disposition::Nothing
    }

    /// An answer from `side` to the other side's request `id` was refused: returns the
    /// error the other side gets instead, when it waits for such an answer.
    fn answer_refused(&self, side: Side, id: &IdKey, why: &str) -> Option<Vec<u8>> {
        let message = match side {
            Side::Upstream => {
                let pending = {
                    let mut state = self.lock();
                    match state.pending.remove(id)? {
                        Forwarded::Deciding(turn, early) => {
                            // Its line went upstream from the store thread: the refusal is
                            // its answer, handled once its decision is published.
                            // Otherwise the upstream answers nothing of it.
                            if let Some(early) = &early {
                                let reply = jsonrpc::error_response(
                                    Some(id),
                                    code::ANSWER_REFUSED,
                                    &format!(
                                        "the MCP server's answer was withheld by the gateway: {why}"
                                    ),
                                );
                                let _ = early.keep_answer(reply);
                            }
                            state
                                .pending
                                .insert(id.clone(), Forwarded::Deciding(turn, early));
                            return None;
                        }
                        other => other,
                    }
                };
                if let Forwarded::Call(call) = &pending {
                    self.finish_call(call, true, Some(SmolStr::new(why)));
                }
                format!("the MCP server's answer was withheld by the gateway: {why}")
            }
            Side::Client => {
                if !self.lock().server_pending.remove(id) {
                    return None;
                }
                format!("the client's answer was withheld by the gateway: {why}")
            }
        };
        Some(jsonrpc::error_response(
            Some(id),
            code::ANSWER_REFUSED,
            &message,
        ))
    }

    /// Decides what to do with one client message; `bytes` are its own bytes.
    fn client_message(
        self: &Arc<Self>,
        shape: Shape<'_>,
        env: &Envelope<'_>,
        bytes: &[u8],
    ) -> Disposition {
        let (id, method) = match shape {
            Shape::Response { id } => {
                // Only the answer to a request the upstream sent, and once.
                if self.lock().server_pending.remove(&id) {
                    return Disposition::Forward;
                }
                tracing::warn!(
                    "dropped an answer from the client to no request of the upstream (id {id})"
                );
                return Disposition::Nothing;
            }
            Shape::Notification { method } => {
                return match method {
                    "notifications/cancelled" => self.client_cancelled(env),
                    // A call without an id cannot be answered, so it cannot be refused
                    // either: it never reaches the server undecided.
                    "tools/call" => {
                        tracing::warn!("dropped a tools/call without an id");
                        Disposition::Nothing
                    }
                    _ => Disposition::Forward,
                };
            }
            Shape::Request { id, method } => (id, method),
        };
        // Whether nothing else of the connection is in flight (for the hand-over, below),
        // read under the lock taken here anyway.
        let alone = {
            let state = self.lock();
            if state.client_id_in_flight(&id) {
                return Disposition::Answer(jsonrpc::error_response(
                    Some(&id),
                    code::INVALID_REQUEST,
                    &format!("a request with id {id} is already in flight; use a new id"),
                ));
            }
            if state.pending.len() + state.holds.len() >= MAX_IN_FLIGHT {
                return Disposition::Answer(jsonrpc::error_response(
                    Some(&id),
                    code::TOO_MANY_IN_FLIGHT,
                    &format!(
                        "{MAX_IN_FLIGHT} requests are already waiting for answers; wait for some before sending more"
                    ),
                ));
            }
            state.pending.is_empty()
        };
        // Client requests are handled one at a time (this task): nothing else can take
        // the id between the check above and the insertions below.
        match method {
            "tools/call" => self.client_call(id, env, bytes, alone),
            "tools/list" => {
                let first_page = jsonrpc::cursor(env.params).is_none();
                let (spans, traced) = self.trace_request(&id, method, env.params, bytes);
                let mut state = self.lock();
                state.list_meta = jsonrpc::meta(env.params);
                state
                    .pending
                    .insert(id, Forwarded::ToolsList { first_page, spans });
                traced.map_or(Disposition::Forward, Disposition::Replace)
            }
            "initialize" | "server/discover" => {
                let (spans, traced) = self.trace_request(&id, method, env.params, bytes);
                self.lock().pending.insert(id, Forwarded::Handshake(spans));
                traced.map_or(Disposition::Forward, Disposition::Replace)
            }
            _ => {
                let (spans, traced) = self.trace_request(&id, method, env.params, bytes);
                self.lock().pending.insert(id, Forwarded::Plain(spans));
                traced.map_or(Disposition::Forward, Disposition::Replace)
            }
        }
    }

    fn client_cancelled(self: &Arc<Self>, env: &Envelope<'_>) -> Disposition {
        let Some(target) = jsonrpc::cancelled_request(env.params) else {
            return Disposition::Forward;
        };
        let held = self.lock().holds.remove(&target);
        if let Some(held) = held {
            // The upstream never saw this call: nothing to forward, and per MCP
            // cancellation semantics nothing goes back to the client.
            let _ = self.gateway.hub.resolve(
                &held.call_id,
                Resolution {
                    approved: false,
                    by: ResolvedBy::Cancellation,
                    operator: None,
                    reason: Some("cancelled by the client".into()),
                },
            );
            self.gateway.release(&held.reservation);
            return Disposition::Nothing;
        }
        let pending = {
            let mut state = self.lock();
            match state.pending.remove(&target) {
                // A `tools/list` stays pending: its late answer must still be filtered, and
                // must never be taken for the answer to a new request reusing the id.
                Some(list @ Forwarded::ToolsList { .. }) => {
                    state.pending.insert(target, list);
                    None
                }
                other => other,
            }
        };
        match pending {
            Some(Forwarded::Call(call)) => {
                self.finish_call(
                    &call,
                    true,
                    Some(SmolStr::new_static("cancelled by the client")),
                );
            }
            // Its line went upstream from the store thread as it was admitted: the server
            // is told, as for a forwarded call; it is settled as one once its decision is
            // published.
            Some(Forwarded::Deciding(_, Some(early))) if early.take() == Taken::Sent => {}
            // The upstream never saw this call: it is settled (and its units given back)
            // once its admission is answered.
            Some(Forwarded::Deciding(..)) => return Disposition::Nothing,
            _ => {}
        }
        Disposition::Forward
    }

    /// A `tools/call`; `alone`: no other request of the connection was in flight when it
    /// came (then its line may be handed over, `handover.rs`).
    fn client_call(
        self: &Arc<Self>,
        id: IdKey,
        env: &Envelope<'_>,
        bytes: &[u8],
        alone: bool,
    ) -> Disposition {
        // Params that are not an object (an array read by position, a string) name no tool.
        let params = env.params.filter(|p| p.get().starts_with('{'));
        let mut params = match params.map(|_| CallParams::read(&env.params_members)) {
            Some(Ok(params)) => params,
            Some(Err(e)) => {
                return Disposition::Answer(jsonrpc::error_response(
                    Some(&id),
                    code::INVALID_PARAMS,
                    &format!("invalid tools/call params: {e}"),
                ));
            }
            None => {
                return Disposition::Answer(jsonrpc::error_response(
                    Some(&id),
                    code::INVALID_PARAMS,
                    "tools/call needs params, an object with the tool's name",
                ));
            }
        };
        // The policy judges an object; a server could read a string as JSON, or an array
        // by position. (Arguments the reader of their text cannot follow are refused here
        // too: never decided, so never allowed.)
        let args = match std::mem::replace(&mut params.arguments, Ok(None)) {
            Ok(Some(args)) => args,
            Ok(None) => RawArgs::empty(),
            Err(_) => {
                return Disposition::Answer(jsonrpc::error_response(
                    Some(&id),
                    code::INVALID_PARAMS,
                    "tools/call arguments must be an object",
                ));
            }
        };
        let arrived = Instant::now();

        if params.is_input_retry() {
            let key = (params.name.clone(), super::audit::raw_args_sha256(&args));
            let continued = self.lock().continuations.remove(&key);
            if let Some(call) = continued {
                // The same call, one more round: already decided and counted.
                self.lock().pending.insert(id, Forwarded::Call(call));
                return Disposition::Forward;
            }
        }

        let modern = params.is_modern();
        // A held call keeps its line until an operator answers: the room for it is taken
        // now (one atomic), and given back below unless the call is held.
        let held_room = self.held_lines.try_charge(bytes.len());
        let no_hold = held_room.is_none().then(|| {
            format!(
                "this connection already holds {} bytes of calls waiting for an operator \
                 (at most 2 × --max-message + 64 KiB); denied instead of held",
                self.held_lines.charged()
            )
        });
        let spans = self.gateway.traces.as_ref().map(|traces| {
            let version = self.protocol_version.get().map(|v| &**v);
            Box::new(traces.start_call(
                &self.session,
                &id,
                &params.name,
                params.meta.as_deref(),
                version,
            ))
        });
        let call = Deliberation {
            id,
            params,
            args,
            arrived,
            modern,
            held_room,
            spans,
        };
        // A quarantined tool is refused before the policy is asked: it takes no units.
        if let Some(decision) = self
            .gateway
            .pin_refusal(self.server_identity(), &call.params.name)
        {
            return self.decided(call, decision, no_hold, bytes, None, None);
        }
        // Made only for a call whose admission may hand its line over (`handover.rs`), and
        // only while no other request of the connection is in flight (waiting for the store
        // or the upstream): with many calls in flight the runtime is awake anyway, and the
        // hand-over cost CPU per call there and gained nothing (docs/performance.md,
        // "Hand-over").
        // `alone` was read when the request came, under the lock taken then: a request
        // answered since only makes it out of date towards "not alone" (no hand-over).
        let mut early: Option<Arc<HandOver>> = None;
        let mut make_early = |pipe: &PipeHandle| -> Option<FirstThing> {
            let made = Arc::new(HandOver::new(pipe.clone()));
            early = Some(made.clone());
            Some(made)
        };
        let hand_over = self
            .hand_over
            .as_ref()
            .filter(|_| alone && call.spans.is_none());
        let mut first = hand_over.map(|pipe| move || make_early(pipe));
        let deciding = self.gateway.start_decision_into(
            &self.session,
            &call.params.name,
            &call.args,
            self.answers.as_ref(),
            first
                .as_mut()
                .map(|make| make as &mut dyn FnMut() -> Option<FirstThing>),
        );
        match deciding {
            Deciding::Decided(decision) => self.decided(call, decision, no_hold, bytes, None, None),
            Deciding::Queued(queued) => {
                // The store may take a while (another process's lock): the id stays in
                // flight while this call waits, and the connection goes on with the others.
                // Its answer comes through `answers`, drained by one task for every call.
                let within = self.gateway.store.answer_within();
                // Its line is moved in by `wait_for_admission`, not copied here.
                Disposition::Admitting(Box::new(Waiting {
                    queued,
                    deadline: call.arrived + within,
                    call,
                    no_hold,
                    line: Vec::new(),
                    // Given once it is put in `pending`.
                    turn: 0,
                    early,
                }))
            }
            Deciding::Admitting(admitting) => {
                // As above, for a call with shadow decisions (more than one admission): a
                // task of its own waits for them.
                let turn = self.lock().start_deciding(call.id.clone(), None);
                let shared = self.clone();
                let line = bytes.to_vec();
                tokio::spawn(async move {
                    let decision = admitting.decision().await;
                    let ended = !shared.lock().deciding_owns(&call.id, turn);
                    shared
                        .admitted(call, decision, (turn, ended), no_hold, line, None)
                        .await;
                });
                Disposition::Nothing
            }
        }
    }

    /// What a message's [`Disposition`] is once a limited call's wait for its admission is
    /// begun ([`Shared::wait_for_admission`]); any other is itself.
    fn waiting_begun(self: &Arc<Self>, action: Disposition, line: &mut Vec<u8>) -> Disposition {
        match action {
            Disposition::Admitting(waiting) => self.wait_for_admission(waiting, line),
            action => action,
        }
    }

    /// Puts a limited call whose admission is queued in `admitting` (and its
    /// `Forwarded::Deciding` entry in `pending`), moving its `line` there: the reader's own
    /// buffer, not a copy. Settled at once instead when its answer came first or its
    /// connection's admissions stopped; then `line` stays for the disposition returned.
    // Not inlined: `on_line`, which every message goes through, stays as small as before.
    #[inline(never)]
    fn wait_for_admission(
        self: &Arc<Self>,
        mut waiting: Box<Waiting>,
        line: &mut Vec<u8>,
    ) -> Disposition {
        let ticket = waiting.queued.ticket();
        let mut state = self.lock();
        if let Some(at) = state.early.iter().position(|a| a.ticket == ticket) {
            let answer = state.early.swap_remove(at).answer;
            drop(state);
            return self.decided_at_once(waiting, answer, false, line);
        }
        if state.admissions_closed {
            drop(state);
            // Its answer will find nobody: the store gives its units back then.
            return self.decided_at_once(waiting, Err(connection_ended()), true, line);
        }
        waiting.turn = state.start_deciding(waiting.call.id.clone(), waiting.early.clone());
        let line = std::mem::take(line);
        // In `pending` now, so an upstream answer finds it: its line may go.
        match &waiting.early {
            Some(early) => early.arm(line),
            None => waiting.line = line,
        }
        state.last_queued = Some(ticket);
        state.admitting.push_back(waiting);
        Disposition::Nothing
    }

    /// Settles a limited call that never waited in `admitting` (its answer came first, or
    /// its connection's admissions had stopped) with `answer`; `ended`: nobody waits for
    /// it any more, so it is recorded as denied for that reason. Its line is `line`.
    fn decided_at_once(
        self: &Arc<Self>,
        waiting: Box<Waiting>,
        answer: Result<Admission, StoreError>,
        ended: bool,
        line: &[u8],
    ) -> Disposition {
        let Waiting {
            queued,
            call,
            no_hold,
            ..
        } = *waiting;
        let mut decision = queued.settle(answer);
        if ended {
            let _ = self::ended(&mut decision);
        }
        self.decided(call, decision, no_hold, line, None, None)
    }

    /// Goes on with a call that waited for the counter store, once decided: publishes the
    /// decision and forwards, refuses or holds the call. `turn`: the turn of its
    /// `Forwarded::Deciding` entry, and whether that entry was gone or another request's
    /// (cancelled, or the connection closed): then nobody waits for it any more.
    /// `sent`: the hand-over through which the store thread already wrote the call's line
    /// upstream (then the decision is an admitted allow, published as such even if the
    /// call ended since, and an upstream answer kept meanwhile is handled after it).
    async fn admitted(
        self: &Arc<Self>,
        call: Deliberation,
        decision: Decision,
        (turn, ended): (u64, bool),
        no_hold: Option<String>,
        line: Vec<u8>,
        sent: Option<Arc<HandOver>>,
    ) {
        let action = self.settle_admitted(
            call,
            decision,
            (turn, ended),
            no_hold,
            &line,
            sent.as_deref(),
        );
        self.after_admitted(action, line, sent).await;
    }

    /// [`Shared::admitted`]'s first part, which waits for nothing: publishes the decision
    /// and says what to do with the call. Apart from the part that may wait
    /// ([`Shared::after_admitted`]), so that the call and its decision (several hundred
    /// bytes) are not moved into a future for every limited call.
    fn settle_admitted(
        self: &Arc<Self>,
        call: Deliberation,
        mut decision: Decision,
        (turn, ended): (u64, bool),
        no_hold: Option<String>,
        line: &[u8],
        sent: Option<&HandOver>,
    ) -> Disposition {
        // Recorded as what happened to it (the decision first, then the units it took
        // going back). A call whose line went upstream keeps its units, as any forwarded
        // call does.
        let taken = if ended && sent.is_none() {
            self::ended(&mut decision)
        } else {
            Reservation::default()
        };
        let action = self.decided(call, decision, no_hold, line, Some(turn), sent);
        self.gateway.release(&taken);
        action
    }

    /// [`Shared::admitted`]'s second part: forwards, refuses or holds the call, then handles
    /// an upstream answer kept meanwhile for a call whose line went upstream (`sent`).
    async fn after_admitted(
        self: &Arc<Self>,
        action: Disposition,
        line: Vec<u8>,
        sent: Option<Arc<HandOver>>,
    ) {
        self.act(Side::Client, action, line).await;
        if let Some(answer) = sent.and_then(|early| early.take_answer()) {
            // The upstream answered before the decision was published: now it is. Boxed:
            // `on_line`'s future is large, and held inline it made this one (built and
            // moved by `admissions` for every limited call) larger for all of them.
            Box::pin(self.on_line(Side::Upstream, answer, None)).await;
        }
    }

    /// Acts on a call's decision: publishes it, then forwards, refuses or holds the call.
    /// `deciding`: the call waited for the counter store as `Forwarded::Deciding` with this
    /// turn, which it leaves now; if that entry is gone (cancelled, or the connection ended
    /// and answered it) or is another request's (one that took the id after a
    /// cancellation), the call is not forwarded and its units are given back. `sent`: the
    /// hand-over through which the store thread already wrote its line upstream
    /// (`handover.rs`; an admitted allow): it is registered as forwarded, and nothing is
    /// sent; if its entry is gone, its outcome says it ended, an answer kept for it is
    /// dropped (its id may be another request's by now), and it keeps its units, as a
    /// forwarded call cancelled does.
    fn decided(
        self: &Arc<Self>,
        call: Deliberation,
        mut decision: Decision,
        no_hold: Option<String>,
        bytes: &[u8],
        deciding: Option<u64>,
        sent: Option<&HandOver>,
    ) -> Disposition {
        let Deliberation {
            id,
            params,
            args,
            arrived,
            modern,
            held_room,
            spans,
        } = call;
        // Taken before the arguments move into the call's event.
        let continuation = continuation_key(modern, &args);
        // Learn mode keeps a copy, recorded once the decision is final.
        let observed = self
            .gateway
            .observing()
            .then(|| crate::policy::ArgsTree::tree(&args).cloned())
            .flatten();
        let call_id = self.gateway.publish_decision(
            &self.session,
            &params.name,
            args,
            &mut decision,
            no_hold,
            spans.as_deref(),
        );
        if let Some(spans) = &spans {
            spans.decided(&self.gateway.grant, &decision);
        }
        if let Some(args) = observed {
            self.gateway.observe(
                self.server_identity(),
                &params.name,
                args,
                &call_id,
                decision.verdict,
            );
        }
        // Whether this call still owns its id (always, unless it waited for the store).
        let owns_id =
            |state: &ConnState| deciding.is_none_or(|turn| state.deciding_owns(&id, turn));
        // Settling an admitted allow keeps it an allow (`Policy::settle`), and publishing
        // changes only a hold: a call handed over is never refused here.
        debug_assert!(sent.is_none() || decision.verdict == Verdict::Allow);
        match decision.verdict {
            Verdict::Allow => {
                // A line already sent was never traced (no hand-over with tracing on).
                let traced = match sent {
                    Some(_) => None,
                    None => self.traced(spans.as_deref(), bytes),
                };
                let forwarded = CallInFlight {
                    call_id,
                    tool: params.name,
                    continuation,
                    arrived,
                    reservation: decision.reservation,
                    spans,
                };
                let mut state = self.lock();
                if !owns_id(&state) {
                    drop(state);
                    if let Some(early) = sent {
                        // The server has it (and was told of a cancellation): it ends as a
                        // forwarded call cancelled does, its units kept.
                        drop(early.take_answer());
                        self.finish_call(
                            &forwarded,
                            true,
                            Some(SmolStr::new_static(
                                "the call ended (cancelled, or its connection closed) after it was forwarded",
                            )),
                        );
                    } else {
                        self.gateway.release(&forwarded.reservation);
                    }
                    return Disposition::Nothing;
                }
                state.pending.insert(id, Forwarded::Call(forwarded));
                match (sent, traced) {
                    (Some(_), _) => Disposition::Nothing,
                    (None, Some(line)) => Disposition::Replace(line),
                    (None, None) => Disposition::Forward,
                }
            }
            Verdict::Deny | Verdict::RateLimited => {
                if deciding.is_some() {
                    let mut state = self.lock();
                    if !owns_id(&state) {
                        return Disposition::Nothing;
                    }
                    state.pending.remove(&id);
                }
                Disposition::Answer(jsonrpc::refusal(&id, &decision.agent_text(), modern))
            }
            Verdict::Hold => match held_room {
                Some(room) => {
                    let call = (
                        call_id,
                        decision,
                        params,
                        continuation,
                        arrived,
                        modern,
                        spans,
                    );
                    self.start_hold(id, call, bytes, room, deciding);
                    Disposition::Nothing
                }
                // publish_decision denied it: not reached.
                None => Disposition::Answer(jsonrpc::refusal(&id, &decision.agent_text(), modern)),
            },
        }
    }

    fn start_hold(
        self: &Arc<Self>,
        id: IdKey,
        (call_id, decision, params, continuation, arrived, modern, spans): (
            SmolStr,
            Decision,
            CallParams,
            Option<String>,
            Instant,
            bool,
            Option<Box<CallSpans>>,
        ),
        line: &[u8],
        room: Charge,
        deciding: Option<u64>,
    ) {
        let timeout = Duration::from_millis(decision.approval_timeout_ms.unwrap_or(120_000));
        let ticket = self.gateway.hub.hold_call(&call_id);
        let (stop_tx, stop_rx) = oneshot::channel();
        let mut state = self.lock();
        if let Some(turn) = deciding {
            // From deciding to held in one step: the id never looks free in between.
            if !state.deciding_owns(&id, turn) {
                drop(state);
                // Ended in the instant since the decision was published.
                let _ = self.gateway.hub.resolve(
                    &call_id,
                    Resolution {
                        approved: false,
                        by: ResolvedBy::Cancellation,
                        operator: None,
                        reason: Some("the call ended while its limits were counted".into()),
                    },
                );
                self.gateway.release(&decision.reservation);
                return;
            }
            state.pending.remove(&id);
        }
        state.holds.insert(
            id.clone(),
            HeldCall {
                call_id: call_id.clone(),
                tool: params.name.clone(),
                continuation,
                arrived,
                reservation: decision.reservation,
                modern,
                _stop: stop_tx,
                line: line.to_vec(),
                _room: room,
                spans,
            },
        );
        drop(state);
        let shared = self.clone();
        let token = params.progress_token().cloned();
        tokio::spawn(async move {
            shared
                .wait_hold(id, call_id, ticket, timeout, token, stop_rx)
                .await;
        });
    }

    async fn wait_hold(
        self: Arc<Self>,
        id: IdKey,
        call_id: SmolStr,
        ticket: crate::control::HoldTicket,
        timeout: Duration,
        progress_token: Option<Value>,
        stop: oneshot::Receiver<()>,
    ) {
        let shared = self.clone();
        let progress = progress_token.map(|token| {
            let message = format!("waiting for an operator to approve call {call_id}");
            move |n: u64| {
                // A progress note that does not fit the queue is skipped; the next one will.
                let _ = shared
                    .to_client
                    .try_send(jsonrpc::progress(&token, n, &message));
            }
        });
        let closing = until_closing(self.closing.clone());
        let stopped = async move {
            tokio::select! {
                _ = stop => {}
                _ = closing => {}
            }
        };
        let Some(resolution) = self
            .gateway
            .await_resolution(ticket, timeout, progress, stopped)
            .await
        else {
            return;
        };
        self.gateway.observe_resolution(&call_id, &resolution);
        let held = {
            let mut state = self.lock();
            let Some(held) = state.holds.remove(&id) else {
                return;
            };
            if let Some(spans) = &held.spans {
                spans.resolved(&resolution);
            }
            if resolution.approved {
                let line = self
                    .traced(held.spans.as_deref(), &held.line)
                    .unwrap_or(held.line);
                let call = CallInFlight {
                    call_id: held.call_id,
                    tool: held.tool,
                    continuation: held.continuation,
                    arrived: held.arrived,
                    reservation: held.reservation,
                    spans: held.spans,
                };
                // Held to pending in one step: the id never looks free in between.
                state.pending.insert(id.clone(), Forwarded::Call(call));
                Err(line)
            } else {
                Ok(held)
            }
        };
        let held = match held {
            Ok(held) => held,
            Err(line) => {
                self.forward_upstream(line).await;
                return;
            }
        };
        self.gateway.release(&held.reservation);
        if resolution.by == ResolvedBy::Cancellation {
            return;
        }
        let text = super::call::refusal_text(&resolution);
        self.send_client(jsonrpc::refusal(&id, &text, held.modern))
            .await;
    }

    /// Forwards a message from `side` as it came, with what was read of it.
    async fn forward(&self, side: Side, line: Vec<u8>, known: Known) {
        match side {
            Side::Client => self.forward_upstream_known(line, known).await,
            Side::Upstream => {
                let _ = self.to_client.send_known(line, known).await;
            }
        }
    }

    /// Sends a client message upstream; when the upstream is gone, answers the request
    /// that carried it with an error (and gives a call's units back).
    async fn forward_upstream(&self, line: Vec<u8>) {
        self.forward_upstream_known(line, Known::Nothing).await;
    }

    /// [`Shared::forward_upstream`], with what was read of the line.
    async fn forward_upstream_known(&self, line: Vec<u8>, known: Known) {
        let Err(line) = self.to_upstream.send_known(line, known).await else {
            return;
        };
        if let Parsed::Message(env) = jsonrpc::parse(&line)
            && let Ok(Shape::Request { id, .. }) = env.shape()
        {
            let pending = self.lock().pending.remove(&id);
            if let Some(Forwarded::Call(call)) = &pending {
                self.gateway.release(&call.reservation);
            }
            if pending.is_some() {
                self.send_client(jsonrpc::error_response(
                    Some(&id),
                    code::UPSTREAM_GONE,
                    "the MCP server is not running",
                ))
                .await;
            }
        }
    }

    /// Decides what to do with one upstream message; `bytes` are its own bytes.
    fn upstream_message(&self, shape: Shape<'_>, env: &Envelope<'_>, bytes: &[u8]) -> Disposition {
        match shape {
            Shape::Response { id } => {
                let pending = {
                    let mut state = self.lock();
                    if state.relists.remove(&id).is_some() {
                        drop(state);
                        return match env.result {
                            Some(result) => Disposition::Relisted {
                                result: result.to_raw_value(),
                            },
                            None => {
                                tracing::warn!(
                                    "the MCP server answered the gateway's own tools/list with an error"
                                );
                                Disposition::Nothing
                            }
                        };
                    }
                    match state.pending.remove(&id) {
                        Some(Forwarded::Deciding(turn, early)) => {
                            // Its line went upstream from the store thread: the answer
                            // waits with the call until its decision is published.
                            let kept = early
                                .as_ref()
                                .is_some_and(|early| early.keep_answer(bytes.to_vec()).is_ok());
                            state
                                .pending
                                .insert(id.clone(), Forwarded::Deciding(turn, early));
                            if kept {
                                return Disposition::Nothing;
                            }
                            // Otherwise the upstream has not been sent this call yet.
                            None
                        }
                        other => other,
                    }
                };
                let Some(pending) = pending else {
                    tracing::warn!(
                        "dropped an answer from the upstream to no request of the client (id {id})"
                    );
                    return Disposition::Nothing;
                };
                match pending {
                    Forwarded::Deciding(..) => Disposition::Nothing,
                    Forwarded::Plain(spans) => {
                        if let Some(spans) = spans {
                            self.request_answered(&spans, env);
                        }
                        Disposition::Forward
                    }
                    Forwarded::Handshake(spans) => {
                        if let Some(spans) = spans {
                            self.request_answered(&spans, env);
                        }
                        if let Some(name) = env.result.and_then(server_name) {
                            let _ = self.server_name.set(name);
                        }
                        Disposition::Forward
                    }
                    Forwarded::ToolsList { first_page, spans } => {
                        if let Some(spans) = spans {
                            self.request_answered(&spans, env);
                        }
                        match env.result {
                            Some(result) => Disposition::Listed {
                                id,
                                result: result.to_raw_value(),
                                first_page,
                            },
                            // An error lists no tools.
                            None => Disposition::Forward,
                        }
                    }
                    Forwarded::Call(call) => {
                        let answer = CallAnswer::of(env);
                        if answer.input_required
                            && let Some(hash) = call.continuation.clone()
                        {
                            let key = (call.tool.clone(), hash);
                            let mut state = self.lock();
                            // Calls whose retry never comes must not pile up; forgetting them
                            // only means a very late retry is counted again (fail closed).
                            if state.continuations.len() >= MAX_CONTINUATIONS {
                                state.continuations.clear();
                            }
                            state.continuations.insert(key, call);
                        } else {
                            self.finish_call(&call, answer.error, answer.summary);
                        }
                        Disposition::Forward
                    }
                }
            }
            Shape::Request { id, .. } => {
                let mut state = self.lock();
                if state.server_pending.contains(&id) {
                    return Disposition::Answer(jsonrpc::error_response(
                        Some(&id),
                        code::INVALID_REQUEST,
                        &format!("a request with id {id} is already in flight; use a new id"),
                    ));
                }
                if state.server_pending.len() >= MAX_IN_FLIGHT {
                    return Disposition::Answer(jsonrpc::error_response(
                        Some(&id),
                        code::TOO_MANY_IN_FLIGHT,
                        &format!("{MAX_IN_FLIGHT} requests already wait for the client's answers"),
                    ));
                }
                state.server_pending.insert(id);
                Disposition::Forward
            }
            Shape::Notification { method } => {
                if method == "notifications/cancelled"
                    && let Some(target) = jsonrpc::cancelled_request(env.params)
                {
                    // The client's late answer to it is not owed any more.
                    self.lock().server_pending.remove(&target);
                }
                if method == "notifications/tools/list_changed" {
                    return Disposition::ForwardThenRelist;
                }
                Disposition::Forward
            }
        }
    }

    /// Publishes the outcome of a call that went upstream and audits it.
    fn finish_call(&self, call: &CallInFlight, error: bool, summary: Option<SmolStr>) {
        if let Some(spans) = &call.spans {
            spans.answered(error);
        }
        self.gateway.record_outcome(
            &self.session,
            &call.call_id,
            &call.tool,
            call.arrived,
            error,
            summary,
            call.spans.as_deref(),
        );
    }

    /// Starts the spans of a request other than `tools/call` when tracing is on; with them,
    /// the line to forward instead when the gateway adds its `traceparent`.
    fn trace_request(
        &self,
        id: &IdKey,
        method: &str,
        params: Option<Raw<'_>>,
        line: &[u8],
    ) -> (Option<Box<CallSpans>>, Option<Vec<u8>>) {
        let Some(traces) = &self.gateway.traces else {
            return (None, None);
        };
        let version = self.protocol_version.get().map(|v| &**v);
        let params = params.map(Raw::to_raw_value);
        let spans = traces.start_request(&self.session, id, method, params.as_deref(), version);
        let traced = traces.forwarded(&spans, line);
        (Some(Box::new(spans)), traced)
    }

    /// Ends a traced request's spans with the upstream's answer; an `initialize` answer
    /// also says the protocol version the connection's later spans carry.
    fn request_answered(&self, spans: &CallSpans, answer: &Envelope<'_>) {
        if spans.is_initialize()
            && let Some(version) = jsonrpc::protocol_version(answer.result)
        {
            let _ = self.protocol_version.set(version.into());
        }
        spans.answered_with(jsonrpc::error_code(answer.error));
    }

    /// Starts a traced call's CLIENT span as it goes upstream; the line to forward instead
    /// when the gateway adds its `traceparent` (see [`crate::telemetry::trace`]).
    fn traced(&self, spans: Option<&CallSpans>, line: &[u8]) -> Option<Vec<u8>> {
        self.gateway.traces.as_ref()?.forwarded(spans?, line)
    }

    /// The identity this connection's tool pins belong to: the gateway's (`--server-id`,
    /// the `serve` name), else the server's own name, else the gateway's name for it.
    fn server_identity(&self) -> &str {
        self.gateway
            .server_id
            .as_deref()
            .or_else(|| self.server_name.get().map(String::as_str))
            .unwrap_or(&self.gateway.server)
    }

    /// Checks a `tools/list` page against the pins; answers the tools to withhold.
    async fn pins_withheld(&self, page: &ToolsPage) -> HashSet<String> {
        let Some(pins) = &self.gateway.pins else {
            return HashSet::new();
        };
        let policy = self.gateway.policy.load_full();
        pins.check_page(self.server_identity(), &policy, page.tools())
            .await
    }

    /// Sends the gateway's own `tools/list` upstream (the page after `cursor`, or the first),
    /// under an id of its own that no client request holds.
    fn relist(&self, cursor: Option<String>) {
        let (id, meta) = {
            let mut state = self.lock();
            if state.relists.len() >= MAX_RELISTS {
                tracing::warn!(
                    "{MAX_RELISTS} of the gateway's own tools/list requests are unanswered; not sending another"
                );
                return;
            }
            let id = loop {
                let n = self.next_relist.fetch_add(1, Ordering::Relaxed);
                let id = IdKey::Str(format!("toolgate-pins-{n}").into());
                if !state.client_id_in_flight(&id) {
                    break id;
                }
            };
            state.relists.insert(id.clone(), cursor.is_none());
            (id, state.list_meta.as_ref().map(|m| m.get().to_owned()))
        };
        let mut params = String::from("{");
        if let Some(cursor) = &cursor {
            params.push_str(&format!("\"cursor\":{}", Value::String(cursor.clone())));
        }
        if let Some(meta) = meta {
            if cursor.is_some() {
                params.push(',');
            }
            params.push_str(&format!("\"_meta\":{meta}"));
        }
        params.push('}');
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/list","params":{params}}}"#,
            id.json()
        );
        // Never waits for room: this runs on the upstream's reader, which must keep reading
        // for the upstream to drain its input. A list that does not fit now is skipped.
        if !self.to_upstream.try_send(line.into_bytes()) {
            tracing::warn!("the upstream's queue is full; the gateway's own tools/list is skipped");
            self.lock().relists.remove(&id);
        }
    }

    /// The answer to one of the gateway's own `tools/list` requests: pins checked, the next
    /// page asked for.
    async fn relisted(&self, result: &RawValue) {
        let page = match ToolsPage::read(result) {
            Ok(page) => page,
            Err(why) => {
                tracing::warn!("the MCP server's answer to the gateway's own tools/list: {why}");
                return;
            }
        };
        self.pins_withheld(&page).await;
        if let Some(cursor) = page.next_cursor() {
            self.relist(Some(cursor));
        }
    }

    /// Applies `hide` and the pins to a `tools/list` answer and publishes the tools offered;
    /// returns what the client gets instead: the filtered list, re-encoded, or an error when
    /// the answer cannot be filtered (never the upstream's bytes).
    async fn tools_listed(&self, id: &IdKey, result: &RawValue, first_page: bool) -> Vec<u8> {
        let page = match ToolsPage::read(result) {
            Ok(page) => {
                let withheld = self.pins_withheld(&page).await;
                Ok(self.gateway.filter_tools_page(page, &withheld))
            }
            Err(why) => Err(why),
        };
        let listed = match page {
            Ok(listed) => listed,
            Err(why) => {
                tracing::warn!("withheld a tools/list answer from the upstream: {why}");
                return jsonrpc::error_response(
                    Some(id),
                    code::ANSWER_REFUSED,
                    &format!(
                        "the MCP server's tools/list answer was withheld by the gateway: {why}"
                    ),
                );
            }
        };
        let all = {
            let mut state = self.lock();
            if first_page {
                state.tools.clear();
            }
            state.tools.extend(listed.offered);
            state.tools.clone()
        };
        self.gateway.hub.publish(EventKind::Tools(Tools {
            server: self.gateway.server.to_string(),
            tools: all,
        }));
        jsonrpc::result_response(id, &listed.result)
    }

    /// Denies every held call (the connection is closing); returns the answers owed to the
    /// client, for the caller to send when it may wait for room.
    fn fail_holds(&self, why: &str) -> Vec<Vec<u8>> {
        let mut owed = Vec::new();
        let holds: Vec<(IdKey, HeldCall)> = self.lock().holds.drain().collect();
        for (id, held) in holds {
            let _ = self.gateway.hub.resolve(
                &held.call_id,
                Resolution {
                    approved: false,
                    by: ResolvedBy::Shutdown,
                    operator: None,
                    reason: Some(why.to_owned()),
                },
            );
            self.gateway.release(&held.reservation);
            owed.push(jsonrpc::error_response(Some(&id), code::UPSTREAM_GONE, why));
        }
        owed
    }

    /// Settles every request still waiting for the upstream (held or forwarded); returns
    /// the error answers owed to the client.
    fn fail_pending(&self, why: &str) -> Vec<Vec<u8>> {
        let mut owed = self.fail_holds(why);
        let pending: Vec<(IdKey, Forwarded)> = self.lock().pending.drain().collect();
        for (id, pending) in pending {
            match &pending {
                Forwarded::Call(call) => self.finish_call(call, true, Some(SmolStr::new(why))),
                // Its line no longer goes upstream from the store thread (one already sent
                // is settled as a forwarded call once its decision is published).
                Forwarded::Deciding(_, Some(early)) => {
                    let _ = early.take();
                }
                Forwarded::Plain(Some(spans))
                | Forwarded::Handshake(Some(spans))
                | Forwarded::ToolsList {
                    spans: Some(spans), ..
                } => spans.failed("upstream_gone"),
                _ => {}
            }
            owed.push(jsonrpc::error_response(Some(&id), code::UPSTREAM_GONE, why));
        }
        owed
    }
}

/// Turns the decision of a call that ended while its limits were counted into the denial
/// that says so; returns the units it had taken, to give back after publishing it.
fn ended(decision: &mut Decision) -> Reservation {
    if decision.verdict == Verdict::Deny {
        return Reservation::default();
    }
    decision.verdict = Verdict::Deny;
    decision.reason = SmolStr::new_static(
        "the call ended (cancelled, or its connection closed) while its limits were counted",
    );
    decision.retry_after_ms = None;
    decision.approval_timeout_ms = None;
    std::mem::take(&mut decision.reservation)
}

/// What a call queued after its connection's [`admissions`] stopped is settled with.
fn connection_ended() -> StoreError {
    StoreError::new(
        crate::policy::StoreErrorKind::Other,
        "the connection closed while the call's limits were counted",
    )
}

/// How late, at most, a call waiting for its admission fails after its deadline.
const DEADLINE_STEP: Duration = Duration::from_millis(50);

/// Answers a batch delivers, at most, taken at once.
const ANSWERS_AT_ONCE: usize = 256;

/// The one task of a connection that goes on with its limited calls (`ConnState::admitting`)
/// as the counter store answers them through `Shared::answers`: woken once for the answers
/// a batch delivered, it settles each call's decision and forwards, refuses or holds it, in
/// the order the calls came. A call not answered within its deadline fails as
/// `--counters-fail` says (its late answer's units are given back); an answer the store
/// thread could not give (it stopped) comes as an error, so every call waiting is settled.
/// The task ends once the connection is closing and no call waits; what is answered after
/// that is given back.
async fn admissions(shared: Arc<Shared>, mut answered: mpsc::UnboundedReceiver<AnsweredBatch>) {
    let mut batch: Vec<Answered> = Vec::with_capacity(ANSWERS_AT_ONCE);
    // What the store thread sent: a batch's answers into this connection as one message.
    let mut received: Vec<AnsweredBatch> = Vec::new();
    let mut settled: Vec<(Box<Waiting>, Result<Admission, StoreError>, bool)> = Vec::new();
    let mut late: Vec<Reservation> = Vec::new();
    let within = shared.gateway.store.answer_within();
    let mut closing = shared.closing.clone();
    let mut closed = *closing.borrow();
    // Moved only when it would fire too early or more than a step late: a call fails at
    // most `DEADLINE_STEP` after its deadline, and the timer is not set again per batch.
    let timer = tokio::time::sleep(within);
    tokio::pin!(timer);
    loop {
        let next_deadline = {
            let mut state = shared.lock();
            if closed && state.admitting.is_empty() {
                state.admissions_closed = true;
                late.extend(state.early.drain(..).filter_map(|a| match a.answer {
                    Ok(Admission::Admitted(reservation)) => Some(reservation),
                    _ => None,
                }));
                break;
            }
            state.admitting.front().map(|waiting| waiting.deadline)
        };
        // With nothing waiting, a call queued meanwhile has a later deadline than this.
        let wake_at = next_deadline.unwrap_or_else(|| Instant::now() + within);
        let set_at = timer.deadline().into_std();
        if timer.is_elapsed() || set_at < wake_at || set_at > wake_at + DEADLINE_STEP {
            timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(wake_at + DEADLINE_STEP));
        }
        tokio::select! {
            got = answered.recv_many(&mut received, ANSWERS_AT_ONCE) => {
                if got == 0 {
                    // Not reached: `shared` keeps a sender.
                    break;
                }
                batch.extend(received.drain(..).flatten());
            }
            () = &mut timer => {}
            _ = closing.wait_for(|c| *c), if !closed => closed = true,
        }
        {
            let mut state = shared.lock();
            let now = Instant::now();
            // The oldest first: those past their deadline.
            let mut sent_late: Vec<Box<Waiting>> = Vec::new();
            while state
                .admitting
                .front()
                .is_some_and(|waiting| waiting.deadline <= now)
            {
                let Some(mut waiting) = state.admitting.pop_front() else {
                    break;
                };
                match waiting.early.as_ref().map(|early| early.take()) {
                    // Admitted and its line upstream just now: its answer is on the way
                    // (sent right after), so it is settled by it, not failed.
                    Some(Taken::Sent) => {
                        waiting.deadline = now + DEADLINE_STEP;
                        sent_late.push(waiting);
                        continue;
                    }
                    Some(Taken::Line(line)) => waiting.line = line,
                    Some(Taken::Nothing) | None => {}
                }
                let ended = !state.deciding_owns(&waiting.call.id, waiting.turn);
                settled.push((waiting, shared.gateway.store.timed_out(), ended));
            }
            for waiting in sent_late.into_iter().rev() {
                state.admitting.push_front(waiting);
            }
            for Answered { ticket, answer } in batch.drain(..) {
                let at = state
                    .admitting
                    .iter()
                    .position(|waiting| waiting.queued.ticket() == ticket);
                let Some(waiting) = at.and_then(|at| state.admitting.remove(at)) else {
                    if state.last_queued.is_none_or(|last| ticket > last) {
                        // Its call is not queued yet: it finds its answer there.
                        state.early.push(Answered { ticket, answer });
                    } else if let Ok(Admission::Admitted(reservation)) = answer {
                        // Its call failed at its deadline already.
                        late.push(reservation);
                    }
                    continue;
                };
                let ended = !state.deciding_owns(&waiting.call.id, waiting.turn);
                settled.push((waiting, answer, ended));
            }
        }
        for reservation in late.drain(..) {
            shared.gateway.release(&reservation);
        }
        for (waiting, answer, ended) in settled.drain(..) {
            let Waiting {
                queued,
                call,
                no_hold,
                mut line,
                turn,
                early,
                ..
            } = *waiting;
            // Whether the store thread wrote its line upstream; from now on it will not.
            let sent = match early.as_ref().map(|early| early.take()) {
                Some(Taken::Sent) => early,
                Some(Taken::Line(armed)) => {
                    line = armed;
                    None
                }
                Some(Taken::Nothing) | None => None,
            };
            let decision = queued.settle(answer);
            let action = shared.settle_admitted(
                call,
                decision,
                (turn, ended),
                no_hold,
                &line,
                sent.as_deref(),
            );
            shared.after_admitted(action, line, sent).await;
        }
    }
    // Nothing waits any more: what is still answered is given back.
    for reservation in late.drain(..) {
        shared.gateway.release(&reservation);
    }
    answered.close();
    while let Ok(answers) = answered.try_recv() {
        for Answered { answer, .. } in answers {
            if let Ok(Admission::Admitted(reservation)) = answer {
                shared.gateway.release(&reservation);
            }
        }
    }
}

/// What an `input_required` retry of a call is found by: only 2026-07-28 calls continue
/// that way, so only they pay for the hash.
fn continuation_key(modern: bool, args: &RawArgs) -> Option<String> {
    modern.then(|| super::audit::raw_args_sha256(args))
}

/// Valid JSON that is not a JSON-RPC message (not an object, an empty batch, a batch
/// element that is not an object): answered `-32600` with a null id, never forwarded.
fn not_a_message(side: Side, why: &str) -> Disposition {
    tracing::warn!("invalid JSON-RPC from the {}: {why}", side.name());
    Disposition::Answer(jsonrpc::error_response(
        None,
        code::INVALID_REQUEST,
        &format!("invalid request: {why}"),
    ))
}

/// `serverInfo.name` of an `initialize` or `server/discover` result, when it is a non-empty
/// string of at most 256 bytes.
fn server_name(result: Raw<'_>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Info {
        name: String,
    }
    #[derive(serde::Deserialize)]
    struct Handshake {
        #[serde(rename = "serverInfo")]
        server_info: Info,
    }
    let name = serde_json::from_str::<Handshake>(result.get())
        .ok()?
        .server_info
        .name;
    (!name.is_empty() && name.len() <= 256).then_some(name)
}
