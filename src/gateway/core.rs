//! The proxy loop: newline-delimited JSON-RPC between a client and an upstream server, every
//! `tools/call` decided by the policy on the way.
//!
//! Transparency is the rule. Each line is classified by a borrowed parse of its `method` and
//! `id`; only `tools/call`, `tools/list` and `notifications/cancelled` from the client, and
//! the responses to the client's requests, are looked into. Everything else — and every
//! message the gateway does not change — is forwarded as the exact bytes received.
//!
//! One connection is a few tasks around `Shared`: a reader per side, a writer per side fed
//! by a bounded queue (so the writers coalesce flushes and a slow peer pushes back), and one
//! task per held call. The bookkeeping of a connection is `ConnState`: which client
//! requests are waiting for the upstream (so a server that dies answers each of them), which
//! calls are held, and which 2026-07-28 calls asked for more input (so their retry is not
//! counted twice).
//!
//! Ownership rule for held calls: whoever removes a hold from `ConnState::holds` answers
//! it and settles its reservation; the others back off. That makes operator approval,
//! timeout, cancellation and shutdown race-free without further locking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot, watch};

use super::Gateway;
use super::call::CallAnswer;
use super::jsonrpc::{self, CallParams, Envelope, IdKey, Parsed, code};
use crate::control::Resolution;
use crate::policy::{Decision, Reservation, Verdict};
use crate::wire::{EventKind, ResolvedBy, ToolInfo, Tools};

/// At most this many 2026-07-28 calls wait for their `input_required` retry.
const MAX_CONTINUATIONS: usize = 1024;
/// How long the last answers may take to reach the client when the connection ends.
const CLIENT_DRAIN: Duration = Duration::from_secs(5);
/// Queue length between a reader and the other side's writer.
const QUEUE: usize = 1024;

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed its side (or the gateway was shut down) and the upstream then
    /// closed its output. A clean end.
    ClientClosed,
    /// The upstream closed its output while the client was still connected: the server
    /// died. Every pending request was answered with an error.
    UpstreamClosed,
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
}

impl RunOptions {
    pub fn new(session: impl Into<String>) -> RunOptions {
        RunOptions {
            session: session.into(),
            shutdown: None,
            client_closed: None,
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
    mut options: RunOptions,
) -> End
where
    CR: AsyncBufRead + Unpin + Send + 'static,
    CW: AsyncWrite + Unpin + Send + 'static,
    UR: AsyncBufRead + Unpin + Send + 'static,
    UW: AsyncWrite + Unpin + Send + 'static,
{
    let (to_client, client_rx) = mpsc::channel(QUEUE);
    let (to_upstream, upstream_rx) = mpsc::channel(QUEUE);
    let client_writer = tokio::spawn(write_lines(client_writer, client_rx, "client"));
    tokio::spawn(write_lines(upstream_writer, upstream_rx, "upstream"));
    let (closing_tx, closing) = watch::channel(false);
    let shared = Arc::new(Shared {
        gateway,
        session: options.session.clone(),
        to_client,
        to_upstream,
        state: Mutex::new(ConnState::default()),
        closing,
    });

    let client_side = tokio::spawn(client_loop(shared.clone(), client_reader));
    let mut upstream_side = tokio::spawn(upstream_loop(shared.clone(), upstream_reader));
    let mut client_side = Some(client_side);
    let mut shutdown = options.shutdown.clone();
    let watching_shutdown = shutdown.is_some();

    let end = loop {
        tokio::select! {
            _ = &mut upstream_side => {
                if client_side.is_none() {
                    break End::ClientClosed;
                }
                break End::UpstreamClosed;
            }
            _ = async { client_side.as_mut().expect("guarded").await }, if client_side.is_some() => {
                client_side = None;
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

    if end == End::UpstreamClosed {
        if let Some(task) = client_side.take() {
            task.abort();
        }
        let _ = closing_tx.send(true);
        tracing::error!("the MCP server closed its output; answering pending requests");
        shared.fail_pending("the MCP server exited before answering");
    } else {
        // Anything still waiting can no longer be answered by the upstream.
        shared.fail_pending("the MCP server closed before answering");
    }
    // A client that stopped reading must not keep the gateway from ending.
    let drained = async {
        let _ = shared.to_client.send(Out::Close).await;
        let _ = client_writer.await;
    };
    if tokio::time::timeout(CLIENT_DRAIN, drained).await.is_err() {
        tracing::warn!("the client is not reading; its last answers are dropped");
    }
    end
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

/// The client is gone (or the gateway shuts down): deny the holds, close the upstream's
/// input, and let the transport start stopping the server.
async fn finish_client(
    shared: &Arc<Shared>,
    closing_tx: &watch::Sender<bool>,
    options: &mut RunOptions,
) {
    let _ = closing_tx.send(true);
    shared.fail_holds("the gateway is shutting down");
    let _ = shared.to_upstream.send(Out::Close).await;
    if let Some(tx) = options.client_closed.take() {
        let _ = tx.send(());
    }
}

/// What a writer task is asked to do.
#[derive(Debug)]
enum Out {
    /// Write this line (a newline is added when missing).
    Line(Vec<u8>),
    /// Flush and close the stream.
    Close,
}

async fn write_lines<W: AsyncWrite + Unpin>(
    writer: W,
    mut rx: mpsc::Receiver<Out>,
    side: &'static str,
) {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let mut closing = false;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut result = Ok(());
        // Write everything already queued before paying for one flush.
        while let Some(out) = next.take() {
            match out {
                Out::Line(mut line) => {
                    if line.last() != Some(&b'\n') {
                        line.push(b'\n');
                    }
                    if result.is_ok() {
                        result = writer.write_all(&line).await;
                    }
                }
                Out::Close => closing = true,
            }
            if closing {
                break;
            }
            next = rx.try_recv().ok();
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

/// Reads the next non-blank line (with its newline); `None` at the end of the stream.
async fn next_line<R: AsyncBufRead + Unpin>(reader: &mut R, side: &str) -> Option<Vec<u8>> {
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => return None,
            Ok(_) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(_) => return Some(line),
            Err(e) => {
                tracing::warn!("reading from the {side}: {e}");
                return None;
            }
        }
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
    session: String,
    to_client: mpsc::Sender<Out>,
    to_upstream: mpsc::Sender<Out>,
    state: Mutex<ConnState>,
    /// Becomes `true` when the connection is closing; hold tasks stop waiting.
    closing: watch::Receiver<bool>,
}

#[derive(Debug, Default)]
struct ConnState {
    /// Client requests forwarded upstream and not answered yet, by id.
    pending: HashMap<IdKey, Pending>,
    /// Calls waiting for an operator, by request id.
    holds: HashMap<IdKey, HeldCall>,
    /// 2026-07-28 calls that answered `input_required`, by tool and argument hash: their
    /// retry continues the same call.
    continuations: HashMap<(String, String), CallInFlight>,
    /// The tools seen in the current `tools/list` pagination.
    tools: Vec<ToolInfo>,
}

#[derive(Debug)]
enum Pending {
    /// Any request the gateway only forwards.
    Plain,
    ToolsList {
        first_page: bool,
    },
    Call(CallInFlight),
}

/// A call admitted upstream, until its answer.
#[derive(Debug)]
struct CallInFlight {
    call_id: String,
    tool: String,
    args: Value,
    arrived: Instant,
    reservation: Reservation,
}

#[derive(Debug)]
struct HeldCall {
    call_id: String,
    tool: String,
    args: Value,
    arrived: Instant,
    reservation: Reservation,
    modern: bool,
    /// Dropped or fired when someone else settled the hold; ends the hold task.
    _stop: oneshot::Sender<()>,
    /// The original request line, forwarded as is when approved.
    line: Vec<u8>,
}

async fn client_loop<R: AsyncBufRead + Unpin>(shared: Arc<Shared>, mut reader: R) {
    while let Some(line) = next_line(&mut reader, "client").await {
        shared.on_client_line(line).await;
    }
}

async fn upstream_loop<R: AsyncBufRead + Unpin>(shared: Arc<Shared>, mut reader: R) {
    while let Some(line) = next_line(&mut reader, "upstream").await {
        shared.on_upstream_line(line).await;
    }
}

/// What the client side decided to do with one message.
enum Action {
    /// Send the message's own bytes upstream.
    Forward,
    Answer(Vec<u8>),
    Nothing,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn send_client(&self, line: Vec<u8>) {
        let _ = self.to_client.send(Out::Line(line)).await;
    }

    async fn on_client_line(self: &Arc<Self>, line: Vec<u8>) {
        match jsonrpc::parse(&line) {
            Parsed::Message(env) => {
                let action = self.client_message(&env, &line);
                // The line itself goes upstream: no copy.
                self.act(action, line).await;
            }
            Parsed::Batch(items) => {
                for item in items {
                    let bytes = item.get().as_bytes();
                    let action = match serde_json::from_slice::<Envelope<'_>>(bytes) {
                        Ok(env) => self.client_message(&env, bytes),
                        Err(e) => malformed("client", bytes, &e.to_string()),
                    };
                    self.act(action, bytes.to_vec()).await;
                }
            }
            Parsed::Malformed(err) => {
                let action = malformed("client", &line, &err);
                self.act(action, line).await;
            }
        }
    }

    async fn act(&self, action: Action, bytes: Vec<u8>) {
        match action {
            Action::Forward => self.forward_upstream(bytes).await,
            Action::Answer(reply) => self.send_client(reply).await,
            Action::Nothing => {}
        }
    }

    /// Decides what to do with one client message; `bytes` are its own bytes.
    fn client_message(self: &Arc<Self>, env: &Envelope<'_>, bytes: &[u8]) -> Action {
        let Some(method) = env.method.as_deref() else {
            // A response to a server-to-client request, or noise: not ours to judge.
            return Action::Forward;
        };
        let Some(id) = env.id_key() else {
            return match method {
                "notifications/cancelled" => self.client_cancelled(env),
                // A call without an id (or with a null one) cannot be answered, so it cannot
                // be refused either: it never reaches the server undecided.
                "tools/call" => {
                    tracing::warn!("dropped a tools/call without an id");
                    Action::Nothing
                }
                _ => Action::Forward,
            };
        };
        match method {
            "tools/call" => self.client_call(id, env.params, bytes),
            "tools/list" => {
                let first_page = jsonrpc::cursor(env.params).is_none();
                self.lock()
                    .pending
                    .insert(id, Pending::ToolsList { first_page });
                Action::Forward
            }
            _ => {
                self.lock().pending.insert(id, Pending::Plain);
                Action::Forward
            }
        }
    }

    fn client_cancelled(self: &Arc<Self>, env: &Envelope<'_>) -> Action {
        let Some(target) = jsonrpc::cancelled_request(env.params) else {
            return Action::Forward;
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
            return Action::Nothing;
        }
        let pending = self.lock().pending.remove(&target);
        if let Some(Pending::Call(call)) = pending {
            self.finish_call(&call, true, Some("cancelled by the client".into()));
        }
        Action::Forward
    }

    fn client_call(self: &Arc<Self>, id: IdKey, params: Option<&RawValue>, bytes: &[u8]) -> Action {
        let mut params = match params.map(|p| serde_json::from_str::<CallParams>(p.get())) {
            Some(Ok(params)) => params,
            Some(Err(e)) => {
                return Action::Answer(jsonrpc::error_response(
                    Some(&id),
                    code::INVALID_PARAMS,
                    &format!("invalid tools/call params: {e}"),
                ));
            }
            None => {
                return Action::Answer(jsonrpc::error_response(
                    Some(&id),
                    code::INVALID_PARAMS,
                    "tools/call without params",
                ));
            }
        };
        let args = params
            .arguments
            .take()
            .unwrap_or_else(|| Value::Object(Default::default()));
        let arrived = Instant::now();

        if params.is_input_retry() {
            let key = (params.name.clone(), super::audit::args_sha256(&args));
            let continued = self.lock().continuations.remove(&key);
            if let Some(call) = continued {
                // The same call, one more round: already decided and counted.
                self.lock().pending.insert(id, Pending::Call(call));
                return Action::Forward;
            }
        }

        let modern = params.is_modern();
        let (call_id, decision) = self.gateway.decide_call(&self.session, &params.name, &args);
        match decision.verdict {
            Verdict::Allow => {
                self.lock().pending.insert(
                    id,
                    Pending::Call(CallInFlight {
                        call_id,
                        tool: params.name,
                        args,
                        arrived,
                        reservation: decision.reservation,
                    }),
                );
                Action::Forward
            }
            Verdict::Deny | Verdict::RateLimited => {
                Action::Answer(jsonrpc::refusal(&id, &decision.agent_text(), modern))
            }
            Verdict::Hold => {
                self.start_hold(id, call_id, decision, params, args, arrived, modern, bytes);
                Action::Nothing
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_hold(
        self: &Arc<Self>,
        id: IdKey,
        call_id: String,
        decision: Decision,
        params: CallParams,
        args: Value,
        arrived: Instant,
        modern: bool,
        line: &[u8],
    ) {
        let timeout = Duration::from_millis(decision.approval_timeout_ms.unwrap_or(120_000));
        let ticket = self.gateway.hub.hold_call(&call_id);
        let (stop_tx, stop_rx) = oneshot::channel();
        self.lock().holds.insert(
            id.clone(),
            HeldCall {
                call_id: call_id.clone(),
                tool: params.name.clone(),
                args,
                arrived,
                reservation: decision.reservation,
                modern,
                _stop: stop_tx,
                line: line.to_vec(),
            },
        );
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
        call_id: String,
        ticket: crate::control::HoldTicket,
        timeout: Duration,
        progress_token: Option<Value>,
        stop: oneshot::Receiver<()>,
    ) {
        let to_client = self.to_client.clone();
        let progress = progress_token.map(|token| {
            let message = format!("waiting for an operator to approve call {call_id}");
            move |n: u64| {
                // A progress note that does not fit the queue is skipped; the next one will.
                let _ = to_client.try_send(Out::Line(jsonrpc::progress(&token, n, &message)));
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
        let Some(held) = self.lock().holds.remove(&id) else {
            return;
        };
        if resolution.approved {
            let call = CallInFlight {
                call_id: held.call_id,
                tool: held.tool,
                args: held.args,
                arrived: held.arrived,
                reservation: held.reservation,
            };
            self.lock().pending.insert(id.clone(), Pending::Call(call));
            self.forward_upstream(held.line).await;
            return;
        }
        self.gateway.release(&held.reservation);
        if resolution.by == ResolvedBy::Cancellation {
            return;
        }
        let text = super::call::refusal_text(&resolution);
        self.send_client(jsonrpc::refusal(&id, &text, held.modern))
            .await;
    }

    /// Sends a client message upstream; when the upstream is gone, answers the request
    /// that carried it with an error (and gives a call's units back).
    async fn forward_upstream(&self, line: Vec<u8>) {
        let Err(mpsc::error::SendError(Out::Line(line))) =
            self.to_upstream.send(Out::Line(line)).await
        else {
            return;
        };
        if let Parsed::Message(env) = jsonrpc::parse(&line)
            && let Some(id) = env.id_key().filter(|_| env.is_request())
        {
            let pending = self.lock().pending.remove(&id);
            if let Some(Pending::Call(call)) = &pending {
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

    async fn on_upstream_line(&self, line: Vec<u8>) {
        match jsonrpc::parse(&line) {
            Parsed::Message(env) => {
                let out = self.upstream_message(&env).unwrap_or(line);
                self.send_client(out).await;
            }
            Parsed::Batch(items) => {
                for item in items {
                    let bytes = item.get().as_bytes();
                    match serde_json::from_slice::<Envelope<'_>>(bytes) {
                        Ok(env) => {
                            let out = self
                                .upstream_message(&env)
                                .unwrap_or_else(|| bytes.to_vec());
                            self.send_client(out).await;
                        }
                        Err(e) => self.upstream_malformed(bytes, &e.to_string()).await,
                    }
                }
            }
            Parsed::Malformed(err) => self.upstream_malformed(&line, &err).await,
        }
    }

    async fn upstream_malformed(&self, line: &[u8], err: &str) {
        if let Action::Answer(reply) = malformed("upstream", line, err) {
            let _ = self.to_upstream.send(Out::Line(reply)).await;
        }
    }

    /// Looks at an upstream message; returns a replacement when it must change.
    fn upstream_message(&self, env: &Envelope<'_>) -> Option<Vec<u8>> {
        if !env.is_response() {
            return None;
        }
        let id = env.id_key()?;
        let pending = self.lock().pending.remove(&id)?;
        match pending {
            Pending::Plain => None,
            Pending::ToolsList { first_page } => self.tools_listed(&id, env, first_page),
            Pending::Call(call) => {
                let answer = CallAnswer::of(env);
                if answer.input_required {
                    let key = (call.tool.clone(), super::audit::args_sha256(&call.args));
                    let mut state = self.lock();
                    // Calls whose retry never comes must not pile up; forgetting them only
                    // means a very late retry is counted again (fail closed).
                    if state.continuations.len() >= MAX_CONTINUATIONS {
                        state.continuations.clear();
                    }
                    state.continuations.insert(key, call);
                } else {
                    self.finish_call(&call, answer.error, answer.summary);
                }
                None
            }
        }
    }

    /// Publishes the outcome of a call that went upstream and audits it.
    fn finish_call(&self, call: &CallInFlight, error: bool, summary: Option<String>) {
        self.gateway.record_outcome(
            &self.session,
            &call.call_id,
            &call.tool,
            call.arrived,
            error,
            summary,
        );
    }

    /// Applies `hide` to a `tools/list` answer and publishes the tools offered.
    fn tools_listed(&self, id: &IdKey, env: &Envelope<'_>, first_page: bool) -> Option<Vec<u8>> {
        let listed = self.gateway.filter_tools_list(env.result?)?;
        let all = {
            let mut state = self.lock();
            if first_page {
                state.tools.clear();
            }
            state.tools.extend(listed.offered);
            state.tools.clone()
        };
        self.gateway.hub.publish(EventKind::Tools(Tools {
            server: self.gateway.server.clone(),
            tools: all,
        }));
        listed
            .filtered
            .map(|result| jsonrpc::result_response(id, &result))
    }

    /// Denies every held call (the connection is closing).
    fn fail_holds(&self, why: &str) {
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
            let _ = self.to_client.try_send(Out::Line(jsonrpc::error_response(
                Some(&id),
                code::UPSTREAM_GONE,
                why,
            )));
        }
    }

    /// Answers every request still waiting for the upstream with an error.
    fn fail_pending(&self, why: &str) {
        self.fail_holds(why);
        let pending: Vec<(IdKey, Pending)> = self.lock().pending.drain().collect();
        for (id, pending) in pending {
            if let Pending::Call(call) = &pending {
                self.finish_call(call, true, Some(why.to_owned()));
            }
            let _ = self.to_client.try_send(Out::Line(jsonrpc::error_response(
                Some(&id),
                code::UPSTREAM_GONE,
                why,
            )));
        }
    }
}

/// Logs a malformed line and, when it looks like a request, answers with a parse error.
fn malformed(side: &str, line: &[u8], err: &str) -> Action {
    let preview = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
    tracing::warn!(
        "malformed JSON-RPC from the {side}: {err}: {}",
        preview.trim_end()
    );
    if jsonrpc::looks_like_request(line) {
        Action::Answer(jsonrpc::error_response(
            None,
            code::PARSE_ERROR,
            &format!("parse error: {err}"),
        ))
    } else {
        Action::Nothing
    }
}
