//! The console's reconnection: a gateway that cannot be reached is retried, each wait
//! longer than the last (exponential backoff, capped, with jitter).

use std::time::Duration;

use tokio::sync::mpsc;
use toolgate::console::testing::{AppEvent, Link};
use toolgate::console::testing::{Targets, net};

/// Only so that a broken build fails instead of hanging; nothing asserts on speed.
const WITHIN: Duration = Duration::from_secs(30);

async fn next_down(rx: &mut mpsc::Receiver<AppEvent>) -> Duration {
    let find = async {
        while let Some(ev) = rx.recv().await {
            if let AppEvent::Link {
                link: Link::Down { retry_in, .. },
                ..
            } = ev
            {
                return retry_in;
            }
        }
        panic!("event channel closed");
    };
    tokio::time::timeout(WITHIN, find)
        .await
        .expect("a failed attempt is reported")
}

#[tokio::test]
async fn a_lost_connection_is_retried_with_backoff() {
    let (tx, mut rx) = mpsc::channel(1024);
    // Nothing listens on this port (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("ws://127.0.0.1:{port}/");
    let _commands = net::spawn(
        Targets::Fixed {
            url,
            token: "t".into(),
        },
        tx,
    );
    let mut waits = Vec::new();
    while waits.len() < 3 {
        waits.push(next_down(&mut rx).await);
    }
    assert!(
        waits[0] < waits[1] && waits[1] < waits[2],
        "backoff grows: {waits:?}"
    );
}
