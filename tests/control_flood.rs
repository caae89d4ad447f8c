//! The event websocket of the real `toolgate wrap` under a flood of sockets that never
//! authenticate, as another local user could open them: operators still get in at once, and
//! the idle sockets are closed at the authentication deadline. Loopback only, bounded in count
//! and time.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::agent::wrap;
use support::wait::wait_for;
use support::{ANSWER_WITHIN, private_dir};
use toolgate::testing::control::{self, DiscoveryEntry};
use toolgate::testing::control::{AUTH_DEADLINE, MAX_HANDSHAKING, MAX_OPERATORS};
use toolgate::testing::wire::{ClientMsg, EventKind};

const POLICY: &str = r#"{ "version": "1", "default": "allow" }"#;

/// More sockets than the handshake and operator caps together: the old single cap (128)
/// locked operators out with fewer.
const FLOOD: usize = MAX_HANDSHAKING + MAX_OPERATORS + 40;

/// `toolgate wrap` in front of `cat` (the flood never reaches MCP), its runtime directory and
/// stderr in a temporary directory; killed when dropped.
struct Gateway {
    dir: tempfile::TempDir,
    child: Child,
}

impl Gateway {
    fn start() -> Gateway {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("policy.json"), POLICY).expect("write the policy");
        private_dir(&dir.path().join("run"));
        let argv = wrap(dir.path(), "flood", &[], vec!["cat".into()]);
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env("XDG_RUNTIME_DIR", dir.path().join("run"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("a log file"))
            .spawn()
            .expect("start toolgate wrap");
        Gateway { dir, child }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Waits for the discovery file and reads it.
    fn discover(&self) -> DiscoveryEntry {
        let dir: PathBuf = self.dir.path().join("run/toolgate");
        wait_for("a discovery file", ANSWER_WITHIN, || {
            read_entry(&dir).ok_or_else(|| format!("gateway log:\n{}", self.log()))
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_entry(dir: &Path) -> Option<DiscoveryEntry> {
    let file = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))?;
    serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()
}

/// One socket of the flood: idle, or a request that stops halfway through its headers.
struct Intruder {
    socket: TcpStream,
    opened: Instant,
    closed: Option<Duration>,
}

/// Opens the flood in batches smaller than the listen backlog (128), each time waiting until
/// the gateway has taken them in (all but the newest handshakes shed): beyond the backlog the
/// kernel would hold connections back for a second or more, and the flood would not be
/// in front of the operator.
fn open_flood(addr: &str) -> Vec<Intruder> {
    const BATCH: usize = 40;
    let mut flood = Vec::new();
    while flood.len() < FLOOD {
        flood.extend(open_sockets(addr, BATCH.min(FLOOD - flood.len())));
        let expected = flood.len().saturating_sub(MAX_HANDSHAKING);
        let what = format!("the gateway to shed {expected} surplus sockets");
        wait_for(&what, ANSWER_WITHIN, || {
            poll_closed(&mut flood);
            let closed = flood.iter().filter(|i| i.closed.is_some()).count();
            if closed >= expected {
                Ok(())
            } else {
                Err(format!("it shed only {closed}"))
            }
        });
    }
    flood
}

fn open_sockets(addr: &str, count: usize) -> Vec<Intruder> {
    (0..count)
        .map(|i| {
            let mut socket = TcpStream::connect(addr).expect("connect to the event port");
            if i % 2 == 1 {
                socket
                    .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
                    .expect("send half a request");
            }
            socket.set_nonblocking(true).expect("a non-blocking socket");
            Intruder {
                socket,
                opened: Instant::now(),
                closed: None,
            }
        })
        .collect()
}

/// Notes which sockets the gateway has closed (end of stream or reset); true when all are.
fn poll_closed(flood: &mut [Intruder]) -> bool {
    let mut buf = [0u8; 512];
    for intruder in flood.iter_mut().filter(|i| i.closed.is_none()) {
        let closed = match intruder.socket.read(&mut buf) {
            Ok(0) => true,
            // Nothing is ever answered to a request that never completes.
            Ok(_) => false,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(_) => true,
        };
        if closed {
            intruder.closed = Some(intruder.opened.elapsed());
        }
    }
    flood.iter().all(|i| i.closed.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_of_another_user_neither_lock_out_operators_nor_stay_open() {
    let gateway = Gateway::start();
    let entry = gateway.discover();
    let addr = entry
        .url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_owned();

    let mut flood = open_flood(&addr);

    // The operator comes after every socket of the flood, so it is accepted behind them all.
    let started = Instant::now();
    let operator = tokio::time::timeout(Duration::from_secs(1), async {
        let mut conn = control::connect(&entry.url, &entry.token)
            .await
            .expect("the operator connects with its token");
        let hello = conn.next_event().await;
        (conn, hello)
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no hello within 1 s behind {FLOOD} idle sockets; log:\n{}",
            gateway.log()
        )
    });
    let waited = started.elapsed();
    let hello = operator
        .1
        .expect("the connection stays open")
        .expect("a valid hello");
    assert!(
        matches!(hello.kind, EventKind::Hello(_)),
        "the first message is the hello: {hello:?}"
    );

    // Every socket of the flood is closed: the oldest shed at once to make room, the rest at
    // the authentication deadline.
    wait_for("every flood socket to be closed", ANSWER_WITHIN, || {
        if poll_closed(&mut flood) {
            Ok(())
        } else {
            let open = flood.iter().filter(|i| i.closed.is_none()).count();
            Err(format!("{open} still open"))
        }
    });
    let mut held: Vec<Duration> = flood.iter().filter_map(|i| i.closed).collect();
    held.sort();
    let latest = held[held.len() - 1];
    let at_deadline = held.iter().filter(|d| **d >= AUTH_DEADLINE / 2).count();
    eprintln!(
        "operator hello after {waited:?}; flood sockets closed after {:?} (first) to {latest:?} \
         (last); {at_deadline} of {FLOOD} held to the deadline",
        held[0]
    );
    assert!(
        at_deadline >= MAX_HANDSHAKING - 1,
        "the newest handshakes are kept until the deadline, not shed early: {held:?}"
    );
    assert!(
        latest < AUTH_DEADLINE * 4,
        "sockets that never authenticate are closed at the {AUTH_DEADLINE:?} deadline, \
         the last after {latest:?}"
    );

    // The operator, past its handshake, is not subject to the deadline.
    let (mut conn, _) = operator;
    let deny = ClientMsg::Deny {
        id: 7,
        call_id: "nobody-1".into(),
        reason: None,
        operator: None,
    };
    let denial = conn.request(&deny);
    let reply = support::wait::within("the reply to a denial", ANSWER_WITHIN, denial)
        .await
        .expect("the operator's connection is still open after the deadline");
    assert_eq!(reply.id, 7);
    assert!(!reply.ok, "no such call: {reply:?}");
}
