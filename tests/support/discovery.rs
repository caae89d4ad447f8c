//! A running gateway found the way an operator finds it: its discovery file under a runtime
//! directory (waited for with a deadline), then its event websocket and the hello it sends
//! first.

use std::path::Path;

use toolgate::testing::control::{self, Connection, DiscoveryEntry};
use toolgate::testing::wire::{Event, EventKind, Hello};

use super::ANSWER_WITHIN;
use super::wait::{wait_for, within};

/// Waits for a discovery file in `runtime_dir/toolgate` that reads as an entry and returns
/// it; fails after [`ANSWER_WITHIN`] showing `log()` (the gateway's log, or nothing).
pub fn wait_discovery(runtime_dir: &Path, log: impl Fn() -> String) -> DiscoveryEntry {
    let dir = runtime_dir.join("toolgate");
    let what = format!("a discovery file in {}", dir.display());
    wait_for(&what, ANSWER_WITHIN, || {
        // A file being written does not parse yet: it is read again on the next round.
        let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .find_map(|p| serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok())
        });
        found.ok_or_else(|| format!("log:\n{}", log()))
    })
}

/// The next event on `conn`; fails if none comes within [`ANSWER_WITHIN`], the connection
/// closes or the event does not parse.
pub async fn next_event(conn: &mut Connection) -> Event {
    tokio::time::timeout(ANSWER_WITHIN, conn.next_event())
        .await
        .expect("an event in time")
        .expect("the connection stays open")
        .expect("a valid event")
}

/// Connects to the gateway `entry` names as an operator; returns the connection and the
/// hello it sends first (failing if the first event is anything else).
pub async fn operator(entry: &DiscoveryEntry) -> (Connection, Hello) {
    let connecting = control::connect(&entry.url, &entry.token);
    let mut conn = within("an operator's connection", ANSWER_WITHIN, connecting)
        .await
        .expect("an operator connects");
    let hello = match next_event(&mut conn).await.kind {
        EventKind::Hello(hello) => *hello,
        other => panic!("expected a hello first, got {other:?}"),
    };
    (conn, hello)
}
