//! The ratatui console: watch calls live, approve held ones, across every gateway on the
//! machine.
//!
//! How it fits together (the flow of one event):
//!
//! - [`net`] keeps one websocket per gateway (found through the discovery directory, or
//!   `--connect`), reconnecting with backoff, and turns what arrives into
//!   [`AppEvent::Net`]/[`AppEvent::Link`] messages on a channel. It is the only code that
//!   touches the control plane's client API.
//! - [`run`] is the event loop: `tokio::select!` over the terminal's key events, that channel
//!   and a render tick. Each wake-up drains everything queued, then draws once (bursts are
//!   coalesced: only the last state of a batch is drawn).
//! - [`app::update`] applies one event to the plain-data [`State`], with the time passed in;
//!   what must happen outside (send a command, ring the bell, load a theme) comes back as
//!   [`Effect`]s that [`run`] carries out.
//! - [`authoring`] is the policy draft's flow (edit, review with diff and what-if, write,
//!   wait for the gateways to apply it); [`draft`] edits the document, [`whatif`] replays
//!   recent calls against it, [`policy_file`] reads and atomically writes the file.
//! - [`view::draw`] renders the state; [`keys`] maps keys to [`Action`]s; [`theme`] loads the
//!   `themes/*.toml` colour themes.
//!
//! Everything is generic over ratatui's `Backend`, so the tests drive the real loop on a
//! `TestBackend`.

pub mod action;
pub mod app;
pub mod authoring;
pub mod draft;
pub mod editor;
pub mod filter;
pub mod history;
pub mod keys;
pub mod launch;
pub mod net;
pub mod policy_file;
pub mod splice;
pub mod terminal;
pub mod theme;
pub mod view;
pub mod whatif;

use std::io;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crossterm::event::Event as TermEvent;
use futures_util::{Stream, StreamExt};
use ratatui::Terminal;
use ratatui::backend::Backend;
use tokio::sync::mpsc;

pub use action::Action;
pub use app::{AppEvent, Effect, Link, State, View, update};
pub use launch::{Options, run_in_terminal};
pub use net::{Outgoing, Targets};
pub use terminal::Bell;
pub use theme::Theme;

/// The time, injectable so that tests control countdowns and rates.
pub trait Clock {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Why the console stopped other than by the operator's choice.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("terminal: {0}")]
    Terminal(String),
    #[error("reading the keyboard: {0}")]
    Input(#[from] io::Error),
}

/// How many queued network events one wake-up takes before drawing; keeps the screen alive
/// under a flood while still drawing far less often than events arrive.
const MAX_BATCH: usize = 20_000;

/// Runs the console until the operator quits or the terminal's input ends.
///
/// `term_events` is the terminal's event stream (crossterm's `EventStream` in the binary, a
/// scripted stream in tests), `net` the events from [`net`], `commands` where commands for
/// gateways go, `tick` how often countdowns are redrawn.
pub async fn run<B, S, C>(
    terminal: &mut Terminal<B>,
    state: &mut State,
    mut term_events: S,
    mut net: mpsc::Receiver<AppEvent>,
    commands: mpsc::UnboundedSender<Outgoing>,
    clock: &C,
    tick: Duration,
) -> Result<(), ConsoleError>
where
    B: Backend + Bell,
    S: Stream<Item = io::Result<TermEvent>> + Unpin,
    C: Clock + ?Sized,
{
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut net_open = true;
    draw(terminal, state)?;
    loop {
        tokio::select! {
            ev = term_events.next() => match ev {
                Some(Ok(TermEvent::Key(key))) => update(state, AppEvent::Key(key), clock.now()),
                Some(Ok(TermEvent::Resize(..))) => {
                    terminal.autoresize().map_err(|e| ConsoleError::Terminal(e.to_string()))?;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ConsoleError::Input(e)),
                None => return Ok(()),
            },
            ev = net.recv(), if net_open => match ev {
                Some(ev) => {
                    let now = clock.now();
                    update(state, ev, now);
                    for _ in 0..MAX_BATCH {
                        match net.try_recv() {
                            Ok(ev) => update(state, ev, now),
                            Err(_) => break,
                        }
                    }
                }
                None => net_open = false,
            },
            _ = ticker.tick() => update(state, AppEvent::Tick, clock.now()),
        }
        carry_out(terminal, state, &commands, clock.now());
        if state.quit {
            return Ok(());
        }
        draw(terminal, state)?;
    }
}

fn draw<B: Backend>(terminal: &mut Terminal<B>, state: &State) -> Result<(), ConsoleError> {
    terminal
        .draw(|f| view::draw(f, state))
        .map(|_| ())
        .map_err(|e| ConsoleError::Terminal(e.to_string()))
}

/// Carries out the effects [`update`] left behind.
fn carry_out<B: Backend + Bell>(
    terminal: &mut Terminal<B>,
    state: &mut State,
    commands: &mpsc::UnboundedSender<Outgoing>,
    now: DateTime<Utc>,
) {
    // Carrying out an effect can leave more (a write's report asks nothing, a reload may).
    while !state.effects.is_empty() {
        carry_out_effects(terminal, state, commands, now);
    }
}

/// Carries out the effects `update` left in `state` (sends, the bell, file reads and writes),
/// feeding their answers back through `update`. The event loop calls it after each batch;
/// anything else that drives `update` itself (the screenshot tool) calls it too.
pub fn carry_out_effects<B: Backend + Bell>(
    terminal: &mut Terminal<B>,
    state: &mut State,
    commands: &mpsc::UnboundedSender<Outgoing>,
    now: DateTime<Utc>,
) {
    for effect in std::mem::take(&mut state.effects) {
        match effect {
            Effect::Send { gateway, msg } => {
                let id = match &msg {
                    crate::wire::ClientMsg::Approve { id, .. }
                    | crate::wire::ClientMsg::Deny { id, .. } => *id,
                };
                if commands
                    .send(Outgoing {
                        gateway: gateway.clone(),
                        msg,
                    })
                    .is_err()
                {
                    update(
                        state,
                        AppEvent::SendFailed {
                            gateway,
                            id,
                            error: "the network task has stopped".into(),
                        },
                        now,
                    );
                }
            }
            Effect::Bell => {
                if let Err(e) = terminal.backend_mut().ring() {
                    tracing::warn!("cannot ring the bell: {e}");
                }
                state.bells_rung += 1;
            }
            Effect::LoadTheme(name) => match Theme::load(&name) {
                Ok(t) => {
                    state.theme = if theme::no_color_requested() {
                        t.without_colour()
                    } else {
                        t
                    };
                    state.say(format!("theme {}", state.theme.name));
                }
                Err(e) => state.complain(e.to_string()),
            },
            Effect::LoadPolicy(path) => {
                let result = policy_file::read(std::path::Path::new(&path))
                    .map_err(|e| format!("{path}: {e}"));
                update(state, AppEvent::PolicyFile { path, result }, now);
            }
            Effect::WritePolicy {
                path,
                text,
                expected_hash,
                force,
            } => {
                let result = policy_file::write_atomic(
                    std::path::Path::new(&path),
                    &text,
                    &expected_hash,
                    force,
                )
                .map_err(|e| match e {
                    policy_file::WriteError::ChangedOnDisk { text, .. } => {
                        authoring::WriteFailure::ChangedOnDisk(text)
                    }
                    other => authoring::WriteFailure::Io(other.to_string()),
                });
                update(state, AppEvent::PolicyWritten { text, result }, now);
            }
        }
    }
}
