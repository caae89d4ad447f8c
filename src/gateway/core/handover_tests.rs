//! The hand-over (`gateway/handover.rs`) against the races it opens: the connection's
//! pieces are driven one by one (the client's lines, the upstream's, and the task that
//! settles admissions, started only when a test says so), so "the store thread wrote the
//! line but the runtime has not settled its admission yet" is a state a test can stand in.

use std::sync::atomic::AtomicBool;

use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream, Lines};
use tokio::net::unix::pipe;
use tokio::sync::broadcast;

use super::*;
use crate::gateway::WallClock as _;
use crate::policy::store::{KeyUsage, LimitRequest, Scope, StoreWorker};
use crate::policy::{CounterStore, MemoryStore, Policy};
use crate::wire::{CallEvent, Event, Outcome};

/// Every wait here ends by then, saying what it waited for.
const STEP: Duration = Duration::from_secs(10);

const POLICY: &str = r#"{"version":"1","default":"deny","tools":{"echo":{},
    "slow":{"limits":[{"counter":"c","window":"minute","max":5,"scope":"global"}]}}}"#;

/// A store on its own thread whose admissions wait until the test opens the gate (at most
/// [`STEP`]).
struct Gate {
    inner: MemoryStore,
    open: AtomicBool,
}

impl Gate {
    fn new(open: bool) -> Arc<Gate> {
        Arc::new(Gate {
            inner: MemoryStore::new(),
            open: AtomicBool::new(open),
        })
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Units of counter `c` in use now.
    fn used(&self) -> u64 {
        let now = crate::gateway::SystemWallClock.now_ms();
        self.inner
            .usage("c", Scope::Global, 60_000, now)
            .expect("the memory store answers")
            .iter()
            .map(|k: &KeyUsage| k.used)
            .sum()
    }
}

impl CounterStore for Gate {
    fn admit(&self, limits: &[LimitRequest<'_>], now_ms: u64) -> Result<Admission, StoreError> {
        let deadline = Instant::now() + STEP;
        while !self.open.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.inner.admit(limits, now_ms)
    }

    fn try_release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        self.inner.try_release(reservation)
    }

    fn usage(
        &self,
        counter: &str,
        scope: Scope,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<KeyUsage>, StoreError> {
        self.inner.usage(counter, scope, window_ms, now_ms)
    }
}

fn gateway(store: Arc<Gate>) -> (Arc<Gateway>, broadcast::Receiver<Arc<Event>>) {
    let policy = Policy::parse(POLICY, "policy.json").expect("the test policy is valid");
    let hub = crate::gateway::test_hub();
    let events = hub.subscribe();
    let gateway = Gateway::new(
        Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
        StoreWorker::new(store),
        hub,
        "tester",
        "fake",
    );
    (Arc::new(gateway), events)
}

/// One connection as `wrap` makes it (its upstream a pipe), without its readers: the test
/// hands it lines itself.
struct Conn {
    shared: Arc<Shared>,
    /// The admissions' answers, until [`Conn::settle`] starts the task that drains them.
    answered: Option<mpsc::UnboundedReceiver<AnsweredBatch>>,
    /// What reaches the server.
    server: Lines<BufReader<pipe::Receiver>>,
    /// What reaches the client.
    client: Lines<BufReader<DuplexStream>>,
    _closing: watch::Sender<bool>,
}

fn conn(gateway: &Arc<Gateway>) -> Conn {
    let (to_server, server) = pipe::pipe().expect("a pipe");
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (shared, answered, _writer, closing) = connect(
        gateway.clone(),
        Output::Stream(ours),
        Output::<tokio::io::Sink>::Pipe(to_server),
        &RunOptions::new("session-1"),
    );
    assert!(shared.hand_over.is_some(), "wrap's pipe hands calls over");
    Conn {
        shared,
        answered,
        server: BufReader::new(server).lines(),
        client: BufReader::new(theirs).lines(),
        _closing: closing,
    }
}

impl Conn {
    async fn client_sends(&self, line: &str) {
        self.shared
            .on_line(Side::Client, line.as_bytes().to_vec(), None)
            .await;
    }

    async fn server_sends(&self, line: &str) {
        self.shared
            .on_line(Side::Upstream, line.as_bytes().to_vec(), None)
            .await;
    }

    async fn server_line(&mut self, what: &str) -> String {
        tokio::time::timeout(STEP, self.server.next_line())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for the server to get {what}"))
            .expect("the pipe reads")
            .unwrap_or_else(|| panic!("the pipe closed before the server got {what}"))
    }

    async fn client_line(&mut self, what: &str) -> Value {
        let line = tokio::time::timeout(STEP, self.client.next_line())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for the client to get {what}"))
            .expect("the stream reads")
            .unwrap_or_else(|| panic!("the stream closed before the client got {what}"));
        serde_json::from_str(&line).expect("the client gets JSON")
    }

    /// Starts the task that settles the connection's admissions as they are answered.
    fn settle(&mut self) {
        let answered = self.answered.take().expect("settled once");
        tokio::spawn(admissions(self.shared.clone(), answered));
    }
}

/// Polls `done` until it holds (at most [`STEP`]).
async fn wait_until(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + STEP;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn call(id: u64, tool: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#
    )
}

fn cancel(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{id}}}}}"#
    )
}

fn answer(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":"done"}}]}}}}"#
    )
}

/// The next `call` or `outcome` event (others skipped).
async fn call_or_outcome(events: &mut broadcast::Receiver<Arc<Event>>) -> EventKind {
    loop {
        let event = tokio::time::timeout(STEP, events.recv())
            .await
            .expect("timed out waiting for a call or outcome event")
            .expect("the hub publishes");
        if matches!(event.kind, EventKind::Call(_) | EventKind::Outcome(_)) {
            return event.kind.clone();
        }
    }
}

async fn decision(events: &mut broadcast::Receiver<Arc<Event>>) -> CallEvent {
    match call_or_outcome(events).await {
        EventKind::Call(call) => call,
        other => panic!("an outcome before the call's decision: {other:?}"),
    }
}

async fn outcome(events: &mut broadcast::Receiver<Arc<Event>>) -> Outcome {
    match call_or_outcome(events).await {
        EventKind::Outcome(outcome) => outcome,
        other => panic!("expected an outcome, got {other:?}"),
    }
}

/// No `call` or `outcome` event is waiting.
fn nothing_published(events: &mut broadcast::Receiver<Arc<Event>>) {
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event.kind, EventKind::Call(_) | EventKind::Outcome(_)),
            "published before the admission was settled: {:?}",
            event.kind
        );
    }
}

#[tokio::test]
async fn the_store_thread_writes_an_admitted_call_upstream_and_an_answer_before_its_decision_waits_for_it()
 {
    let store = Gate::new(false);
    let (gateway, mut events) = gateway(store.clone());
    let mut c = conn(&gateway);
    c.client_sends(&call(1, "slow")).await;
    store.open();
    // Nothing on the runtime settles admissions yet: the store thread itself wrote it.
    assert_eq!(c.server_line("the admitted call").await, call(1, "slow"));
    c.server_sends(&answer(1)).await;
    nothing_published(&mut events);
    c.settle();
    let decided = decision(&mut events).await;
    assert_eq!(decided.decision, Verdict::Allow);
    let answered = outcome(&mut events).await;
    assert_eq!(
        answered.call_id, decided.call_id,
        "the decision before its outcome"
    );
    assert!(!answered.error);
    let got = c.client_line("the server's answer").await;
    assert_eq!(got["id"], 1);
    assert_eq!(got["result"]["content"][0]["text"], "done");
    assert_eq!(store.used(), 1, "the call's unit stays taken");
}

#[tokio::test]
async fn a_cancel_after_the_line_went_upstream_is_forwarded_and_the_call_keeps_its_unit() {
    let store = Gate::new(false);
    let (gateway, mut events) = gateway(store.clone());
    let mut c = conn(&gateway);
    c.client_sends(&call(1, "slow")).await;
    store.open();
    assert_eq!(c.server_line("the admitted call").await, call(1, "slow"));
    c.client_sends(&cancel(1)).await;
    // The server has the request: it is told.
    assert_eq!(c.server_line("the cancellation").await, cancel(1));
    // A late answer goes nowhere: the client cancelled.
    c.server_sends(&answer(1)).await;
    c.settle();
    let decided = decision(&mut events).await;
    assert_eq!(
        decided.decision,
        Verdict::Allow,
        "it was forwarded: {}",
        decided.reason
    );
    let ended = outcome(&mut events).await;
    assert_eq!(ended.call_id, decided.call_id);
    assert!(ended.error);
    assert!(
        ended
            .summary
            .as_deref()
            .is_some_and(|s| s.contains("ended")),
        "{:?}",
        ended.summary
    );
    assert_eq!(store.used(), 1, "a forwarded call keeps its unit");
    // Nothing reached the client for it: the next thing there answers this request.
    c.client_sends(&call(2, "echo")).await;
    assert_eq!(c.server_line("the next call").await, call(2, "echo"));
    c.server_sends(&answer(2)).await;
    assert_eq!(c.client_line("the next answer").await["id"], 2);
}

#[tokio::test]
async fn an_answer_kept_for_a_call_cancelled_since_never_answers_a_new_call_with_its_id() {
    let store = Gate::new(false);
    let (gateway, mut events) = gateway(store.clone());
    let mut c = conn(&gateway);
    c.client_sends(&call(1, "slow")).await;
    store.open();
    assert_eq!(c.server_line("the admitted call").await, call(1, "slow"));
    // Answered, kept until the decision; then cancelled, and the id taken by a new call.
    c.server_sends(&answer(1)).await;
    c.client_sends(&cancel(1)).await;
    assert_eq!(c.server_line("the cancellation").await, cancel(1));
    c.client_sends(&call(1, "echo")).await;
    assert_eq!(c.server_line("the new call").await, call(1, "echo"));
    c.settle();
    // The echo call's decision, the first call's, then the first call's end.
    let mut slow = None;
    while slow.is_none() {
        let decided = decision(&mut events).await;
        if decided.tool == "slow" {
            assert_eq!(decided.decision, Verdict::Allow);
            slow = Some(decided.call_id);
        }
    }
    let ended = outcome(&mut events).await;
    assert_eq!(Some(ended.call_id), slow, "the first call ended");
    let new_answer =
        r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"new"}]}}"#;
    c.server_sends(new_answer).await;
    let got = c.client_line("the new call's answer").await;
    assert_eq!(
        got["result"]["content"][0]["text"], "new",
        "the cancelled call's kept answer went to the new call: {got}"
    );
}

#[tokio::test]
async fn a_cancel_before_the_admission_keeps_the_line_from_the_server_and_gives_the_unit_back() {
    let store = Gate::new(false);
    let (gateway, mut events) = gateway(store.clone());
    let mut c = conn(&gateway);
    c.client_sends(&call(1, "slow")).await;
    c.client_sends(&cancel(1)).await;
    store.open();
    c.settle();
    let decided = decision(&mut events).await;
    assert_eq!(decided.decision, Verdict::Deny);
    assert!(decided.reason.contains("ended"), "{}", decided.reason);
    wait_until(|| store.used() == 0, "the cancelled call's unit to go back").await;
    // It never reached the server, nor did its cancellation: the first line there is this.
    c.client_sends(&call(2, "echo")).await;
    assert_eq!(c.server_line("the next call").await, call(2, "echo"));
}

#[tokio::test]
async fn a_connection_closing_after_the_line_went_upstream_ends_the_call_as_forwarded() {
    let store = Gate::new(false);
    let (gateway, mut events) = gateway(store.clone());
    let mut c = conn(&gateway);
    c.client_sends(&call(1, "slow")).await;
    store.open();
    assert_eq!(c.server_line("the admitted call").await, call(1, "slow"));
    let owed = c
        .shared
        .fail_pending("the MCP server exited before answering");
    assert_eq!(owed.len(), 1, "the client is owed an answer for it");
    c.settle();
    let decided = decision(&mut events).await;
    assert_eq!(decided.decision, Verdict::Allow);
    let ended = outcome(&mut events).await;
    assert!(ended.error);
    assert_eq!(store.used(), 1, "a forwarded call keeps its unit");
}

#[tokio::test]
async fn a_connection_closing_before_the_admission_sends_nothing_upstream() {
    let store = Gate::new(false);
    let (gateway, mut events) = gateway(store.clone());
    let mut c = conn(&gateway);
    c.client_sends(&call(1, "slow")).await;
    let owed = c
        .shared
        .fail_pending("the MCP server exited before answering");
    assert_eq!(owed.len(), 1);
    store.open();
    c.settle();
    let decided = decision(&mut events).await;
    assert_eq!(decided.decision, Verdict::Deny);
    wait_until(|| store.used() == 0, "the unit to go back").await;
    c.client_sends(&call(2, "echo")).await;
    assert_eq!(c.server_line("the next call").await, call(2, "echo"));
}

#[tokio::test]
async fn a_full_pipe_delays_no_other_connections_admission_and_the_line_keeps_its_place() {
    // Closed until both calls wait for it: so both are handed over (an admission answered
    // before its call is armed goes the runtime's way).
    let store = Gate::new(false);
    let (gateway, mut events) = gateway(store.clone());
    let mut full = conn(&gateway);
    let mut other = conn(&gateway);
    // About twice what a pipe holds, never read yet: the rest waits in the gateway.
    // Notifications: a call is handed over only while no request is in flight.
    let pad = "x".repeat(1000);
    let notes: Vec<String> = (0..128)
        .map(|n| {
            format!(r#"{{"jsonrpc":"2.0","method":"notifications/test","params":{{"n":{n},"pad":"{pad}"}}}}"#)
        })
        .collect();
    for ping in &notes {
        full.client_sends(ping).await;
    }
    full.client_sends(&call(1, "slow")).await;
    other.client_sends(&call(2, "slow")).await;
    store.open();
    other.settle();
    // The other connection's call is admitted and reaches its server while the first
    // connection's server reads nothing.
    assert_eq!(other.server_line("the other call").await, call(2, "slow"));
    assert_eq!(decision(&mut events).await.decision, Verdict::Allow);
    // The first server gets every notification, then the call, in the order sent.
    for ping in &notes {
        assert_eq!(&full.server_line("a notification").await, ping);
    }
    assert_eq!(full.server_line("the call").await, call(1, "slow"));
    full.settle();
    assert_eq!(decision(&mut events).await.decision, Verdict::Allow);
}

#[tokio::test]
async fn a_call_with_another_request_in_flight_is_forwarded_by_the_runtime_as_before() {
    let store = Gate::new(false);
    let (gateway, mut events) = gateway(store.clone());
    let mut c = conn(&gateway);
    let ping = r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#;
    c.client_sends(ping).await;
    assert_eq!(c.server_line("the ping").await, ping);
    c.client_sends(&call(1, "slow")).await;
    store.open();
    // Admitted, but not handed over: nothing settles admissions yet, so nothing comes.
    let early = tokio::time::timeout(Duration::from_millis(200), c.server.next_line()).await;
    assert!(
        early.is_err(),
        "the store thread wrote a call with a request in flight"
    );
    c.settle();
    assert_eq!(decision(&mut events).await.decision, Verdict::Allow);
    assert_eq!(
        c.server_line("the call, from the runtime").await,
        call(1, "slow")
    );
}
