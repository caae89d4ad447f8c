//! The console's connections to gateways: the only code that uses the control plane's client.
//!
//! [`spawn`] starts a supervisor task. With [`Targets::Discover`] it watches the discovery
//! directory (and rescans it every few seconds, in case a notification is missed), opening
//! one connection task per running gateway and retiring those whose gateway has gone. Each
//! connection task connects, forwards every event as [`AppEvent::Net`], reports its state as
//! [`AppEvent::Link`], and on failure retries with exponential backoff (with jitter, capped);
//! every (re)connection starts with the gateway's `hello`, whose snapshot the console resumes
//! from. An event of a type this version does not know (a newer gateway's) is skipped and
//! logged once per type; a message that is not an event, or a known event that does not
//! read, ends the connection as before. Commands ([`Outgoing`]) are routed to the connection of the gateway named; one that
//! cannot be sent comes back as [`AppEvent::SendFailed`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::console::model::Link;
use crate::console::update::AppEvent;
use crate::control::client::{self, ClientError};
use crate::control::discovery;
use crate::control::remotes::Remote;
use crate::wire::ClientMsg;

/// A command for the gateway behind connection `gateway`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub gateway: String,
    pub msg: ClientMsg,
}

/// Which gateways to follow.
#[derive(Debug, Clone)]
pub enum Targets {
    /// Every gateway in the discovery directory, as they come and go.
    Discover,
    /// One gateway, by URL and token (`toolgate demo`, tests).
    Fixed { url: String, token: String },
    /// Remote gateways (`--connect`, `@NAME`), each keyed by its URL, and with `discover`
    /// the local gateways beside them.
    Several {
        remotes: Vec<Remote>,
        discover: bool,
    },
}

impl Targets {
    /// Whether local gateways are followed.
    fn discovers(&self) -> bool {
        match self {
            Targets::Discover => true,
            Targets::Fixed { .. } => false,
            Targets::Several { discover, .. } => *discover,
        }
    }

    /// Where each remote gateway runs (`HOST:PORT`), by its connection key: for `Several`
    /// only (`Fixed` is the demo's own gateway, or a test's, on this machine).
    pub(crate) fn remote_hosts(&self) -> HashMap<String, String> {
        match self {
            Targets::Several { remotes, .. } => {
                remotes.iter().map(|r| (r.url.clone(), r.host())).collect()
            }
            _ => HashMap::new(),
        }
    }

    /// The gateways followed by URL, each under its connection key (its URL).
    pub(crate) fn remotes(&self) -> Vec<Remote> {
        match self {
            Targets::Discover => Vec::new(),
            Targets::Fixed { url, token } => vec![Remote::new(url.clone(), token.clone())],
            Targets::Several { remotes, .. } => remotes.clone(),
        }
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// How many unknown event types are remembered (to log each once); a gateway inventing a new
/// type per message costs a bounded set, and its types beyond this go unlogged.
const MAX_SKIPPED_KINDS: usize = 64;

/// Starts following `targets`; events go to `events`. Returns where to send commands.
/// Everything stops when `events`' receiver is dropped.
pub fn spawn(targets: Targets, events: mpsc::Sender<AppEvent>) -> mpsc::UnboundedSender<Outgoing> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(supervise(targets, events, rx));
    tx
}

struct ConnHandle {
    commands: mpsc::UnboundedSender<ClientMsg>,
    task: JoinHandle<()>,
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn supervise(
    targets: Targets,
    events: mpsc::Sender<AppEvent>,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut conns: HashMap<String, ConnHandle> = HashMap::new();
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel::<()>();
    // Kept alive for as long as we supervise; dropping it stops the watch.
    let discover = targets.discovers();
    let _watcher = if discover {
        watch_discovery_dir(wake_tx)
    } else {
        None
    };
    for remote in targets.remotes() {
        conns.insert(
            remote.url.clone(),
            open(remote.url.clone(), remote, events.clone()),
        );
    }
    let mut rescan = tokio::time::interval(RESCAN_EVERY);
    loop {
        tokio::select! {
            _ = rescan.tick(), if discover => {
                reconcile(&mut conns, &events).await;
            }
            Some(()) = wake_rx.recv() => {
                // A burst of file events: let it settle, then look once.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while wake_rx.try_recv().is_ok() {}
                reconcile(&mut conns, &events).await;
            }
            cmd = outgoing.recv() => {
                let Some(Outgoing { gateway, msg }) = cmd else { return };
                let sent = conns.get(&gateway).map(|c| c.commands.send(msg.clone()).is_ok());
                if sent != Some(true) {
                    let failed = AppEvent::SendFailed {
                        gateway,
                        id: ClientMsg::id(&msg),
                        error: "not connected to that gateway".into(),
                    };
                    if events.send(failed).await.is_err() {
                        return;
                    }
                }
            }
            _ = events.closed() => return,
        }
    }
}

/// Opens connections to new gateways and retires the ones that are gone.
/// Connections to remote gateways (keyed by URL) are left alone.
async fn reconcile(conns: &mut HashMap<String, ConnHandle>, events: &mpsc::Sender<AppEvent>) {
    let found = tokio::task::spawn_blocking(discovery::list_gateways)
        .await
        .unwrap_or_default();
    for entry in &found {
        if !conns.contains_key(&entry.id) {
            tracing::info!(gateway = %entry.id, url = %entry.url, "gateway discovered");
            conns.insert(
                entry.id.clone(),
                open(
                    entry.id.clone(),
                    Remote::new(entry.url.clone(), entry.token.clone()),
                    events.clone(),
                ),
            );
        }
    }
    let gone: Vec<String> = conns
        .keys()
        .filter(|k| !is_url(k) && !found.iter().any(|e| &e.id == *k))
        .cloned()
        .collect();
    for key in gone {
        tracing::info!(gateway = %key, "gateway gone");
        conns.remove(&key);
        let _ = events
            .send(AppEvent::Link {
                gateway: key,
                link: Link::Gone,
            })
            .await;
    }
}

fn watch_discovery_dir(wake: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = wake.send(());
    })
    .map_err(|e| tracing::warn!("cannot watch for gateways: {e}"))
    .ok()?;
    // A directory appears with the first gateway that writes there; until then the rescan
    // finds it.
    let mut watching = false;
    for dir in discovery::discovery_dirs() {
        match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => watching = true,
            Err(e) => tracing::info!("not watching {}: {e}; rescanning instead", dir.display()),
        }
    }
    watching.then_some(watcher)
}

/// Whether a connection key is a URL (a remote gateway) rather than a discovery id.
fn is_url(key: &str) -> bool {
    key.contains("://")
}

fn open(key: String, target: Remote, events: mpsc::Sender<AppEvent>) -> ConnHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    ConnHandle {
        commands: tx,
        task: tokio::spawn(connection(key, target, events, rx)),
    }
}

/// One gateway's connection, for as long as the console wants it.
async fn connection(
    key: String,
    target: Remote,
    events: mpsc::Sender<AppEvent>,
    mut commands: mpsc::UnboundedReceiver<ClientMsg>,
) {
    let link = |link: Link| AppEvent::Link {
        gateway: key.clone(),
        link,
    };
    let mut backoff = FIRST_BACKOFF;
    // Event types skipped so far, each logged once for as long as the gateway is followed.
    let mut skipped: HashSet<String> = HashSet::new();
    let url = target.url.clone();
    let tls = target.tls();
    loop {
        if events
            .send(link(Link::Connecting { url: url.clone() }))
            .await
            .is_err()
        {
            return;
        }
        let error = match client::connect_with(&url, &target.token, &tls).await {
            Ok(conn) => {
                backoff = FIRST_BACKOFF;
                if events
                    .send(link(Link::Up { url: url.clone() }))
                    .await
                    .is_err()
                {
                    return;
                }
                let (mut reader, mut writer) = conn.split();
                loop {
                    tokio::select! {
                        ev = reader.next_event() => match ev {
                            Some(Ok(event)) => {
                                let ev = AppEvent::Net { gateway: key.clone(), event };
                                if events.send(ev).await.is_err() {
                                    return;
                                }
                            }
                            Some(Err(ClientError::UnknownEvent(kind))) => {
                                if skipped.len() < MAX_SKIPPED_KINDS && skipped.insert(kind.clone()) {
                                    tracing::warn!(
                                        gateway = %key,
                                        "skipping events of type {kind:?}, which this console \
                                         does not know (the gateway is newer); upgrade the console \
                                         to see them"
                                    );
                                }
                            }
                            Some(Err(e)) => break e.to_string(),
                            None => break "connection closed".to_owned(),
                        },
                        cmd = commands.recv() => {
                            let Some(msg) = cmd else { return };
                            if let Err(e) = writer.send(&msg).await {
                                let failed = AppEvent::SendFailed {
                                    gateway: key.clone(),
                                    id: ClientMsg::id(&msg),
                                    error: e.to_string(),
                                };
                                let _ = events.send(failed).await;
                                break e.to_string();
                            }
                        }
                    }
                }
            }
            Err(e) => e.to_string(),
        };
        tracing::info!(gateway = %key, "disconnected: {error}; retry in {backoff:?}");
        let down = Link::Down {
            error,
            retry_in: backoff,
        };
        if events.send(link(down)).await.is_err() {
            return;
        }
        // While waiting, commands cannot be delivered: say so at once rather than queueing
        // an approval that would arrive minutes late.
        let wait = tokio::time::sleep(jitter(backoff));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                cmd = commands.recv() => {
                    let Some(msg) = cmd else { return };
                    let failed = AppEvent::SendFailed {
                        gateway: key.clone(),
                        id: ClientMsg::id(&msg),
                        error: "gateway not connected; reconnecting".into(),
                    };
                    if events.send(failed).await.is_err() {
                        return;
                    }
                }
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `d` give or take a fifth, so that many consoles do not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let spread = d.as_millis() as u64 / 5;
    if spread == 0 {
        return d;
    }
    let offset = rand::random_range(0..=2 * spread);
    Duration::from_millis(d.as_millis() as u64 - spread + offset)
}
