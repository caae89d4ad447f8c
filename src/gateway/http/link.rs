//! A link: one run of the core ([`crate::gateway::core::run`]) between the HTTP side and one
//! upstream connection, and the routing of its answers back to the HTTP requests that wait
//! for them.
//!
//! The HTTP transport does not re-implement the proxy: each MCP session gets a link, whose
//! client side is a queue the HTTP handlers put request lines on (read by the core as a
//! stream, [`super::pipe::LineSource`]; the core hands its answers to [`Router`] in the task
//! that sends them, [`crate::gateway::core::Output::Lines`]), and whose
//! upstream side is a server process (a command in SERVERS.json) or [`super::remote`] (a
//! URL). Decisions, holds, `hide`, cancellation, `input_required` retries and the answers
//! owed when the upstream dies are therefore exactly `wrap`'s.
//!
//! What comes out of the core is routed here: an answer to the request that waits for it (by
//! id, and only to it: an answer nobody waits for is dropped), a progress notification to the
//! request whose progress token it names, anything else (server-to-client requests, logging,
//! list changes) to the session's GET stream when one is open, else to a request in flight
//! (of a session link: on a stateless link those are other clients'), else dropped.
//!
//! 2026-07-28 requests without a session share one link per (server, grant). Their ids come
//! from many clients, so they are renamed on the way in (`"tg-N"`) and restored on the way
//! out (progress tokens likewise); everything else in the message is passed on as received.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::BufReader;
use tokio::sync::{mpsc, oneshot, watch};

use super::inbox::{Inbox, InboxSender, inbox};
use super::pipe::{LineSource, Queued};
use super::remote;
use super::servers::ServerSpec;
use crate::gateway::Gateway;
use crate::gateway::budget::{ByteBudget, Charge, ChargedReceiver};
use crate::gateway::core::{self, Known, LineOut, Output, RunOptions};
use crate::gateway::jsonrpc::{self, IdKey, Parsed, Raw, Read, Shape};
use crate::gateway::lines::Plain;
use crate::gateway::upstream::{ServerProcess, SpawnError};
use crate::hashing::FastMap;
use crate::sync::lock;

/// A request as [`CoreLink::prepare`] read it.
pub(crate) struct Prepared {
    /// The id the core knows it by.
    core_id: IdKey,
    /// The line with its id (and progress token) renamed, on a stateless link.
    renamed: Option<Vec<u8>>,
    original: Option<Box<str>>,
    progress: Option<Box<str>>,
    original_progress: Option<serde_json::Value>,
}

/// Messages queued for the session's GET stream.
const LISTENER_QUEUE: usize = 256;
/// What the core writes may exceed `--max-message` by this much (an error it builds, a
/// re-encoded list); the core already refused anything larger from the peers.
const CORE_SLACK: usize = 64 * 1024;

/// What a waiting HTTP request receives.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A message on the way (progress, a server-to-client request).
    Interim(Vec<u8>),
    /// The answer: the request is done.
    Final(Vec<u8>),
}

/// A request id already waits for its answer on this link.
#[derive(Debug, thiserror::Error)]
#[error("a request with id {0} is already in flight in this session")]
pub(crate) struct DuplicateId(pub String);

/// The GET stream of this session is already open.
#[derive(Debug, thiserror::Error)]
#[error("this session already has an open GET stream")]
pub(crate) struct ListenerBusy;

struct Waiter {
    tx: InboxSender,
    /// The client's own id when it was renamed (stateless links).
    original: Option<Box<str>>,
    /// The progress token as the core knows it (JSON text).
    progress: Option<Box<str>>,
    /// The client's own progress token when it was renamed (stateless links).
    original_progress: Option<serde_json::Value>,
}

/// Looked up on every request and answer; keyed by the clients' ids and tokens, bounded
/// by the requests in flight (one per connection), so hashed with [`FastMap`].
#[derive(Default)]
struct Routes {
    waiters: FastMap<IdKey, Waiter>,
    /// Progress token (JSON text) → the request that sent it.
    progress: FastMap<Box<str>, IdKey>,
    listener: Option<mpsc::Sender<(Vec<u8>, Charge)>>,
    /// Set when the core has ended: nothing will be answered any more.
    ended: bool,
}

/// One MCP session's (or one stateless group's) run of the core.
pub(crate) struct CoreLink {
    pub server: String,
    pub grant: String,
    /// Rename request ids (shared by many clients).
    stateless: bool,
    to_core: mpsc::Sender<Queued>,
    /// Bytes queued for the core (2 × `--max-message` + 64 KiB): a request waits for room.
    to_core_budget: ByteBudget,
    routes: Mutex<Routes>,
    next_id: AtomicU64,
    last_active: Mutex<Instant>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for CoreLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreLink")
            .field("server", &self.server)
            .field("grant", &self.grant)
            .field("stateless", &self.stateless)
            .finish_non_exhaustive()
    }
}

impl CoreLink {
    /// Starts the upstream (spawns the server, or prepares the HTTP client side) and the
    /// core between it and a new link. `session` is the id limits with scope `session` and
    /// events use.
    pub(crate) fn start(
        gateway: Arc<Gateway>,
        spec: &ServerSpec,
        client: &reqwest::Client,
        session: String,
        stateless: bool,
        grace: Duration,
        max_message: usize,
    ) -> Result<Arc<CoreLink>, SpawnError> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (closed_tx, closed_rx) = oneshot::channel();
        let options = RunOptions {
            session,
            shutdown: Some(shutdown_rx),
            client_closed: Some(closed_tx),
            max_message,
        };
        // The HTTP handlers queue request lines that the core reads straight from the
        // queue, and the core's answers are routed in its own writer's task: no task and
        // no pipe in between (see `pipe`).
        let (to_core, core_rx) = mpsc::channel(1024);
        let to_core_budget = ByteBudget::for_messages(max_message);
        let core_client_in = LineSource::new(core_rx, to_core_budget.clone());
        let link = Arc::new(CoreLink {
            server: gateway.server.to_string(),
            grant: gateway.grant.to_string(),
            stateless,
            to_core,
            to_core_budget,
            routes: Mutex::new(Routes::default()),
            next_id: AtomicU64::new(1),
            last_active: Mutex::new(Instant::now()),
            shutdown,
        });
        // Routed in whichever of the core's tasks sends the line: no writer task between.
        let core_client_out: Output<tokio::io::Sink> = Output::Lines(Box::new(Router {
            link: Arc::downgrade(&link),
            max: max_message.saturating_add(CORE_SLACK),
        }));
        match spec {
            ServerSpec::Command(command) => {
                let (mut process, server_in, server_out) = ServerProcess::spawn(command)?;
                tracing::info!(
                    "started `{}` (pid {}) for session {}",
                    process.command,
                    process.pid().unwrap_or_default(),
                    options.session
                );
                tokio::spawn(async move {
                    tokio::select! {
                        _ = process.wait() => {}
                        _ = closed_rx => { process.stop(grace).await; }
                    }
                });
                tokio::spawn(core::run_outputs(
                    gateway,
                    core_client_in,
                    core_client_out,
                    Plain(BufReader::with_capacity(64 * 1024, server_out)),
                    Output::Stream(server_in),
                    options,
                    None,
                ));
            }
            ServerSpec::Url(url) => {
                // Both ways are queues: the core's lines for the upstream are handed to
                // `remote` as the core's writer produces them, and its answers read by the
                // core straight from their queue.
                let (requests_tx, requests_rx) = mpsc::unbounded_channel();
                let requests: Output<tokio::io::Sink> = Output::Lines(Box::new(ToRemote {
                    tx: Some(requests_tx),
                    max: max_message.saturating_add(CORE_SLACK),
                }));
                let (answers_tx, answers_rx) = mpsc::channel(1024);
                let answers_budget = ByteBudget::for_messages(max_message);
                let answers = LineSource::new(answers_rx, answers_budget.clone());
                // `remote` runs in the core's upstream reader's task: its answers reach
                // the core with no hand-over between tasks.
                let remote = Box::pin(remote::run_queued(
                    url.clone(),
                    client.clone(),
                    max_message,
                    requests_rx,
                    answers_tx,
                    answers_budget,
                ));
                drop(closed_rx);
                tokio::spawn(core::run_outputs(
                    gateway,
                    core_client_in,
                    core_client_out,
                    answers,
                    requests,
                    options,
                    Some(remote),
                ));
            }
        }
        Ok(link)
    }

    /// Whether the core has ended (the upstream is gone).
    pub(crate) fn ended(&self) -> bool {
        lock(&self.routes).ended || self.to_core.is_closed()
    }

    /// Whether something waits on this link: a request in flight or an open GET stream.
    pub(crate) fn busy(&self) -> bool {
        let routes = lock(&self.routes);
        !routes.waiters.is_empty() || routes.listener.as_ref().is_some_and(|l| !l.is_closed())
    }

    /// How long since the last request.
    pub(crate) fn idle_for(&self) -> Duration {
        lock(&self.last_active).elapsed()
    }

    fn touch(&self) {
        *lock(&self.last_active) = Instant::now();
    }

    /// Ends the link: holds are denied, the upstream's input closed and the server stopped.
    pub(crate) fn close(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Sends a notification or a response (to a server-to-client request) to the core.
    pub(crate) async fn notify(&self, line: Vec<u8>) -> bool {
        self.touch();
        self.send_to_core(line, None).await
    }

    /// Queues a line for the core once its bytes fit the link's budget, with what was read
    /// of it (that line's own [`Read`], or `None`).
    async fn send_to_core(&self, line: Vec<u8>, read: Option<Read>) -> bool {
        let Some(charge) = self.to_core_budget.charge(line.len()).await else {
            return false;
        };
        self.to_core
            .send((line, charge, read.map(Box::new)))
            .await
            .is_ok()
    }

    /// What [`CoreLink::request`] needs of a request line (whose id `id` was read from
    /// `raw_id`, borrowed from `line`), so that the line itself can then be handed over
    /// without a copy.
    pub(crate) fn prepare(
        &self,
        line: &[u8],
        id: &IdKey,
        raw_id: Raw<'_>,
        params: Option<Raw<'_>>,
    ) -> Prepared {
        let progress = progress_token(params);
        if !self.stateless {
            return Prepared {
                core_id: id.clone(),
                renamed: None,
                original: None,
                progress,
                original_progress: None,
            };
        }
        let core_id =
            IdKey::Str(format!("tg-{}", self.next_id.fetch_add(1, Ordering::Relaxed)).into());
        let renamed = core_id.json();
        let mut out = replace_id(line, raw_id, &renamed);
        let mut prepared = Prepared {
            core_id,
            renamed: None,
            // The client's id goes back exactly as it sent it.
            original: Some(raw_id.get().trim().into()),
            progress,
            original_progress: None,
        };
        if prepared.progress.is_some() {
            // Clients choose progress tokens too: rename it with the id, so two clients'
            // tokens never meet on the shared link.
            let renamed_value = serde_json::Value::String(renamed.trim_matches('"').to_owned());
            if let Some((rewritten, token)) = replace_progress_token(&out, renamed_value) {
                out = rewritten;
                prepared.original_progress = Some(token);
                prepared.progress = Some(renamed.into());
            }
        }
        prepared.renamed = Some(out);
        prepared
    }

    /// Sends a request line to the core (as [`CoreLink::prepare`] read it) and registers
    /// for its answer. Returns the id the core knows it by (for [`CoreLink::cancel`]) and
    /// the receiver of what is routed to it. `read`: what was read of `line` itself; it goes
    /// to the core with the line unless the line was renamed (a stateless link's ids).
    pub(crate) async fn request(
        &self,
        prepared: Prepared,
        line: Vec<u8>,
        read: Option<Read>,
    ) -> Result<(IdKey, Inbox), DuplicateId> {
        self.touch();
        let (tx, rx) = inbox();
        let Prepared {
            core_id,
            renamed,
            original,
            progress,
            original_progress,
        } = prepared;
        let (out, read) = match renamed {
            Some(renamed) => (renamed, None),
            None => (line, read),
        };
        {
            let mut routes = lock(&self.routes);
            if routes.ended {
                drop(tx);
            } else {
                if routes.waiters.contains_key(&core_id) {
                    return Err(DuplicateId(core_id.json()));
                }
                if let Some(token) = &progress {
                    routes.progress.insert(token.clone(), core_id.clone());
                }
                routes.waiters.insert(
                    core_id.clone(),
                    Waiter {
                        tx,
                        original,
                        progress,
                        original_progress,
                    },
                );
            }
        }
        if !self.send_to_core(out, read).await {
            self.forget(&core_id);
        }
        Ok((core_id, rx))
    }

    fn forget(&self, id: &IdKey) -> bool {
        let mut routes = lock(&self.routes);
        let Some(waiter) = routes.waiters.remove(id) else {
            return false;
        };
        if let Some(token) = waiter.progress {
            routes.progress.remove(&token);
        }
        true
    }

    /// The client stopped waiting for a request (closed its stream): tell the core, which
    /// drops a held call or passes the cancellation upstream.
    pub(crate) fn cancel(&self, id: &IdKey) {
        if !self.forget(id) {
            return;
        }
        let note = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{},"reason":"the client closed the request's stream"}}}}"#,
            id.json()
        );
        // Small, and skipped when the queue is full: the core then answers the request
        // anyway, to no one.
        if let Some(charge) = self.to_core_budget.try_charge(note.len()) {
            let _ = self.to_core.try_send((note.into_bytes(), charge, None));
        }
    }

    /// Opens the session's GET stream.
    pub(crate) fn listen(&self) -> Result<ChargedReceiver<Vec<u8>>, ListenerBusy> {
        let mut routes = lock(&self.routes);
        if routes.listener.as_ref().is_some_and(|l| !l.is_closed()) {
            return Err(ListenerBusy);
        }
        let (tx, rx) = mpsc::channel(LISTENER_QUEUE);
        routes.listener = Some(tx);
        Ok(ChargedReceiver::new(rx))
    }

    /// Routes one message from the core; `charge` goes with it to whoever takes it.
    fn deliver(&self, line: Vec<u8>, charge: Charge) {
        let Parsed::Message(env) = jsonrpc::parse(&line) else {
            tracing::debug!("dropped an unroutable message from the core");
            return;
        };
        let mut routes = lock(&self.routes);
        let answer = match env.shape() {
            Ok(Shape::Response { id }) => Some(Some(id)),
            // An answer with no usable id (an error about an unreadable message).
            Err(invalid) if !invalid.request => Some(invalid.id),
            _ => None,
        };
        if let Some(id) = answer {
            // An answer goes to the request that waits for it, or nowhere: on a stateless
            // link, another client's stream is not the place for it.
            let Some(waiter) = id.and_then(|id| Self::waiter_answered(&mut routes, &id)) else {
                return;
            };
            drop(routes);
            let out = match (&waiter.original, env.id) {
                (Some(original), Some(raw)) => replace_id(&line, raw, original),
                _ => line,
            };
            // The waiter may have gone (client closed); nothing is owed to it then. A waiter
            // whose queue is full of progress still gets its answer, once it reads.
            waiter.tx.answer(out, charge);
            return;
        }
        if env.method.as_deref() == Some("notifications/progress")
            && let Some(token) = progress_token_of_notification(env.params)
            && let Some(id) = routes.progress.get(&token)
            && let Some(waiter) = routes.waiters.get(id)
        {
            let line = match &waiter.original_progress {
                Some(token) => replace_notification_token(&line, token.clone()).unwrap_or(line),
                None => line,
            };
            waiter.tx.interim(line, charge);
            return;
        }
        if let Some(listener) = routes.listener.as_ref().filter(|l| !l.is_closed()) {
            let _ = listener.try_send((line, charge));
            return;
        }
        // On a stateless link the requests in flight are other clients': a message for no
        // one in particular is none of theirs.
        if !self.stateless
            && let Some(waiter) = routes.waiters.values().next()
        {
            waiter.tx.interim(line, charge);
            return;
        }
        tracing::debug!("no stream open for a server message; dropped");
    }

    /// Routes an answer from the core to the request `id` (the core read the line: it is
    /// an answer with that id), as [`CoreLink::deliver`] would, without reading it again
    /// unless its id is to be restored.
    fn deliver_answer(&self, id: IdKey, line: Vec<u8>, charge: Charge) {
        let Some(waiter) = Self::waiter_answered(&mut lock(&self.routes), &id) else {
            return;
        };
        let out = match &waiter.original {
            Some(original) => match jsonrpc::parse(&line) {
                Parsed::Message(env) => match env.id {
                    Some(raw) => replace_id(&line, raw, original),
                    None => line,
                },
                _ => line,
            },
            None => line,
        };
        waiter.tx.answer(out, charge);
    }

    /// The request waiting for the answer to `id`, no longer waiting (its progress token
    /// forgotten); `None` when nobody waits for it.
    fn waiter_answered(routes: &mut Routes, id: &IdKey) -> Option<Waiter> {
        let Some(waiter) = routes.waiters.remove(id) else {
            tracing::debug!("dropped an answer no request waits for");
            return None;
        };
        if let Some(token) = &waiter.progress {
            routes.progress.remove(token);
        }
        Some(waiter)
    }

    fn end(&self) {
        let mut routes = lock(&self.routes);
        routes.ended = true;
        // Dropping the senders tells every waiting request that no answer will come.
        routes.waiters.clear();
        routes.progress.clear();
        routes.listener = None;
    }
}

/// Routes what the core sends the client, in the core's task that sends it (no writer task
/// in between). Each line comes charged to the core's queue budget and its bytes come back
/// when the HTTP side takes it, so streams that are not read push back on the core (and so
/// on the upstream) instead of piling up here.
struct Router {
    link: Weak<CoreLink>,
    /// What the core writes may exceed `--max-message` by [`CORE_SLACK`]; a longer line is
    /// dropped.
    max: usize,
}

impl LineOut for Router {
    fn line(&mut self, line: Vec<u8>, charge: Charge, known: Known) {
        if line.len() > self.max {
            tracing::warn!("dropped a message from the core larger than --max-message");
            return;
        }
        if let Some(link) = self.link.upgrade() {
            match known {
                Known::Answer(id) => link.deliver_answer(id, line, charge),
                Known::Request(_) | Known::Nothing => link.deliver(line, charge),
            }
        }
    }

    fn end(&mut self) {
        if let Some(link) = self.link.upgrade() {
            link.end();
        }
    }
}

/// Hands the lines a core sends its URL upstream to [`remote::run_queued`], in the core's
/// sending task. The queue is unbounded in count but not in bytes: each line holds its
/// charge of the core's queue budget until `remote` takes it.
struct ToRemote {
    tx: Option<mpsc::UnboundedSender<(Vec<u8>, Charge, Known)>>,
    max: usize,
}

impl LineOut for ToRemote {
    fn line(&mut self, line: Vec<u8>, charge: Charge, known: Known) {
        if line.len() > self.max {
            tracing::warn!("dropped a message from the core larger than --max-message");
            return;
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send((line, charge, known));
        }
    }

    fn end(&mut self) {
        // The core closed the upstream's side: `remote` ends the upstream session.
        self.tx = None;
    }
}

/// The request's progress token as JSON text.
fn progress_token(params: Option<Raw<'_>>) -> Option<Box<str>> {
    #[derive(Deserialize)]
    struct Meta<'a> {
        #[serde(borrow, default, rename = "progressToken")]
        token: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct P<'a> {
        #[serde(borrow, default, rename = "_meta")]
        meta: Option<Meta<'a>>,
    }
    let params = params?.get();
    // Most requests carry no `_meta`: a text that cannot spell the key (not even escaped)
    // is not read again.
    if !jsonrpc::may_spell(params.as_bytes(), &[jsonrpc::Spelled::Meta]) {
        return None;
    }
    let p: P<'_> = serde_json::from_str(params).ok()?;
    Some(p.meta?.token?.get().trim().into())
}

fn progress_token_of_notification(params: Option<Raw<'_>>) -> Option<Box<str>> {
    #[derive(Deserialize)]
    struct P<'a> {
        #[serde(borrow, rename = "progressToken")]
        token: &'a RawValue,
    }
    let p: P<'_> = serde_json::from_str(params?.get()).ok()?;
    Some(p.token.get().trim().into())
}

/// A request with `params._meta.progressToken` set to `token`; returns it and the token it
/// replaced.
fn replace_progress_token(
    line: &[u8],
    token: serde_json::Value,
) -> Option<(Vec<u8>, serde_json::Value)> {
    let mut msg: serde_json::Value = serde_json::from_slice(line).ok()?;
    let slot = msg
        .get_mut("params")?
        .get_mut("_meta")?
        .get_mut("progressToken")?;
    let old = std::mem::replace(slot, token);
    Some((msg.to_string().into_bytes(), old))
}

/// A progress notification with `params.progressToken` set to `token`.
fn replace_notification_token(line: &[u8], token: serde_json::Value) -> Option<Vec<u8>> {
    let mut msg: serde_json::Value = serde_json::from_slice(line).ok()?;
    *msg.get_mut("params")?.get_mut("progressToken")? = token;
    Some(msg.to_string().into_bytes())
}

/// `line` with its top-level id (borrowed from it as `raw`) replaced by `new` (JSON text).
/// Splices the bytes when `raw` points into `line`, so the rest of the message is kept
/// exactly; otherwise rebuilds the object.
pub(crate) fn replace_id(line: &[u8], raw: Raw<'_>, new: &str) -> Vec<u8> {
    let text = raw.get().as_bytes();
    let start = (text.as_ptr() as usize).wrapping_sub(line.as_ptr() as usize);
    if start <= line.len()
        && start + text.len() <= line.len()
        && &line[start..start + text.len()] == text
    {
        let mut out = Vec::with_capacity(line.len() + new.len());
        out.extend_from_slice(&line[..start]);
        out.extend_from_slice(new.as_bytes());
        out.extend_from_slice(&line[start + text.len()..]);
        return out;
    }
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(line) {
        Ok(mut map) => {
            let id = serde_json::from_str(new).unwrap_or(serde_json::Value::Null);
            map.insert("id".into(), id);
            serde_json::Value::Object(map).to_string().into_bytes()
        }
        Err(_) => line.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_replaced_and_nothing_else_changes() {
        let line = br#"{"jsonrpc":"2.0", "id" : 7 ,"method":"x","params":{"id":7}}"#;
        let Parsed::Message(env) = jsonrpc::parse(line) else {
            panic!()
        };
        let out = replace_id(line, env.id.unwrap(), "\"tg-1\"");
        assert_eq!(
            out,
            br#"{"jsonrpc":"2.0", "id" : "tg-1" ,"method":"x","params":{"id":7}}"#.to_vec()
        );
    }

    #[test]
    fn progress_tokens_are_read_from_requests_and_notifications() {
        let p = RawValue::from_string(r#"{"_meta":{"progressToken":"a"}}"#.into()).unwrap();
        assert_eq!(progress_token(Some(Raw::of(&p))).as_deref(), Some("\"a\""));
        let n = RawValue::from_string(r#"{"progressToken":"a","progress":1}"#.into()).unwrap();
        assert_eq!(
            progress_token_of_notification(Some(Raw::of(&n))).as_deref(),
            Some("\"a\"")
        );
    }
}

#[cfg(test)]
mod known_tests {
    use super::*;

    fn link(stateless: bool) -> (Arc<CoreLink>, mpsc::Receiver<Queued>) {
        let (to_core, core_rx) = mpsc::channel(16);
        let (shutdown, _) = watch::channel(false);
        let link = Arc::new(CoreLink {
            server: "s".into(),
            grant: "g".into(),
            stateless,
            to_core,
            to_core_budget: ByteBudget::for_messages(64 * 1024),
            routes: Mutex::new(Routes::default()),
            next_id: AtomicU64::new(1),
            last_active: Mutex::new(Instant::now()),
            shutdown,
        });
        (link, core_rx)
    }

    /// Registers a request as the HTTP side does; returns the id the core knows and
    /// the request's inbox.
    async fn ask(link: &CoreLink, line: &[u8]) -> (IdKey, Inbox) {
        let Parsed::Message(env) = jsonrpc::parse(line) else {
            panic!("not a message")
        };
        let Ok(Shape::Request { id, .. }) = env.shape() else {
            panic!("not a request")
        };
        let prepared = link.prepare(line, &id, env.id.expect("an id"), env.params);
        link.request(prepared, line.to_vec(), None)
            .await
            .expect("registered")
    }

    #[tokio::test]
    async fn what_the_http_side_read_of_a_request_goes_to_the_core_unless_it_was_renamed() {
        for stateless in [false, true] {
            let (link, mut core_rx) = link(stateless);
            let line = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"t"}}"#;
            let Parsed::Message(env) = jsonrpc::parse(line) else {
                panic!("a message")
            };
            let Ok(Shape::Request { id, .. }) = env.shape() else {
                panic!("a request")
            };
            let read = env.read(line);
            assert!(read.is_some());
            let prepared = link.prepare(line, &id, env.id.expect("an id"), env.params);
            link.request(prepared, line.to_vec(), read)
                .await
                .expect("registered");
            let (queued, _charge, queued_read) = core_rx.recv().await.expect("queued");
            if stateless {
                // Its id renamed: another text, read by the core itself.
                assert_ne!(queued, line.to_vec());
                assert!(queued_read.is_none());
            } else {
                assert_eq!(queued, line.to_vec());
                assert_eq!(queued_read.map(|read| *read), read);
            }
        }
    }

    fn answered(link: &Arc<CoreLink>, line: &[u8], known: Known) {
        let mut router = Router {
            link: Arc::downgrade(link),
            max: 64 * 1024,
        };
        let charge = ByteBudget::new(1024).try_charge(line.len()).expect("room");
        router.line(line.to_vec(), charge, known);
    }

    async fn final_answer(inbox: &mut Inbox) -> Vec<u8> {
        match tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await {
            Ok(Some(Delivery::Final(answer))) => answer,
            other => panic!("waited for the answer, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_answer_the_core_read_is_routed_as_one_read_again() {
        for stateless in [false, true] {
            let (link, _core_rx) = link(stateless);
            let request =
                br#"{"jsonrpc":"2.0","id":"c-7","method":"tools/call","params":{"name":"t"}}"#;
            let (first, mut by_known) = ask(&link, request).await;
            let answer =
                |id: &IdKey| format!(r#"{{"jsonrpc":"2.0","id":{},"result":{{}}}}"#, id.json());
            answered(
                &link,
                answer(&first).as_bytes(),
                Known::Answer(first.clone()),
            );
            let known = final_answer(&mut by_known).await;
            assert!(
                known.windows(5).any(|w| w == br#""c-7""#),
                "the client's own id comes back (stateless: {stateless})"
            );
            let (second, mut by_reading) = ask(&link, request).await;
            answered(&link, answer(&second).as_bytes(), Known::Nothing);
            let read = final_answer(&mut by_reading).await;
            assert_eq!(
                String::from_utf8(known).unwrap(),
                String::from_utf8(read).unwrap(),
                "stateless: {stateless}"
            );
            assert!(!link.busy(), "nobody waits any more");
        }
    }

    #[tokio::test]
    async fn an_answer_the_core_read_for_no_waiting_request_is_dropped() {
        let (link, _core_rx) = link(false);
        let (_id, mut inbox) = ask(&link, br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).await;
        let other = IdKey::Int(2);
        answered(
            &link,
            br#"{"jsonrpc":"2.0","id":2,"result":{}}"#,
            Known::Answer(other),
        );
        assert!(link.busy(), "the request with id 1 still waits");
        link.end();
        assert!(inbox.recv().await.is_none(), "nothing was routed to it");
    }
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn progress_tokens_are_renamed_and_restored() {
        let (out, old) = replace_progress_token(
            br#"{"id":1,"method":"tools/call","params":{"name":"t","_meta":{"progressToken":7}}}"#,
            serde_json::json!("tg-1"),
        )
        .unwrap();
        assert_eq!(old, serde_json::json!(7));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["params"]["_meta"]["progressToken"], "tg-1");
        let back = replace_notification_token(
            br#"{"method":"notifications/progress","params":{"progressToken":"tg-1","progress":1}}"#,
            old,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&back).unwrap();
        assert_eq!(v["params"]["progressToken"], 7);
    }
}
