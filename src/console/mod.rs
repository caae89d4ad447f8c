//! The ratatui console: watch calls live, approve held ones, across every gateway on the
//! machine.
//!
//! What is `pub` inside the console is `pub(crate)` in effect (the layers are crate-private)
//! and said so where the lint asks: `unreachable_pub` is on for this tree.
//!
//! It is built in layers, each a module tree, and a layer imports only the layers below it:
//!
//! - [`model`] — the state as plain data, and the rows derived from it. Imports no other
//!   layer and nothing of ratatui or crossterm.
//! - [`input`] — every [`KeyAction`], the one binding table (prompt keys included) and the
//!   `:` commands' help. Reads the model.
//! - [`update`] — [`update()`]: one [`AppEvent`] (a key, a gateway's message, an effect's
//!   answer, a tick) and the time in, a changed state and [`Effect`]s out; the `:` command
//!   grammar; the policy-authoring flow. Reads the model and the input layer.
//! - [`view`] — draws a `&State` with the [`ViewState`] the loop owns (theme, scroll);
//!   writes nothing in the model. Reads the model and the input layer.
//! - [`effects`] — carries effects out: the network ([`effects::net`]), and the policy file
//!   and themes on the blocking pool, answered through a channel as events.
//!
//! The rule: `model` imports no other layer and no ratatui or crossterm; `input`, `update`
//! and `effects` never import `view`. `tests/console_layers.rs` reads the sources and fails
//! when an import breaks it. This file (the event loop), [`launch`] and [`terminal`] sit on
//! top and may use every layer.
//!
//! The event loop ([`run`]): `tokio::select!` over the terminal's key events, the network's
//! events, the effects' answers and a render tick. Each wake-up drains everything queued,
//! then draws once (bursts are coalesced: only the last state of a batch is drawn).
//! Everything is generic over ratatui's `Backend`, so the tests drive the real loop on a
//! `TestBackend`.

#![warn(unreachable_pub)]

// Everything in the console is for the console (and the command line that starts it):
// the layers are crate-private, so the compiler reports what nothing uses. Tests, benches
// and the screenshot tool reach in through `testing`, the one door.
pub(crate) mod effects;
pub(crate) mod input;
pub(crate) mod launch;
pub(crate) mod model;
pub(crate) mod terminal;
#[doc(hidden)]
pub mod testing;
pub(crate) mod theme;
pub(crate) mod update;
pub(crate) mod view;

use std::io;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crossterm::event::Event as TermEvent;
use futures_util::{Stream, StreamExt};
use ratatui::Terminal;
use ratatui::backend::Backend;
use tokio::sync::mpsc;

pub(crate) use effects::net::{self, Outgoing};
pub(crate) use launch::{Options, run_in_terminal};
pub(crate) use model::{Effect, State};
pub(crate) use terminal::Bell;
pub(crate) use theme::Theme;
pub(crate) use update::{AppEvent, update};
pub(crate) use view::ViewState;

use effects::Answer;

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
    /// The terminal could not be set up, sized or drawn on; the cause is kept as the source.
    #[error("terminal")]
    Terminal(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("reading the keyboard: {0}")]
    Input(#[from] io::Error),
}

/// How many queued network events one wake-up takes before drawing; keeps the screen alive
/// under a flood while still drawing far less often than events arrive.
const MAX_BATCH: usize = 20_000;

/// How long the loop, once the terminal's input has ended, still waits for effects already
/// started (a policy write is reported, not abandoned half-way through being told).
const EFFECTS_GRACE: Duration = Duration::from_secs(10);

/// Runs the console until the operator quits or the terminal's input ends.
///
/// `term_events` is the terminal's event stream (crossterm's `EventStream` in the binary, a
/// scripted stream in tests), `net` the events from [`net`], `commands` where commands for
/// gateways go, `tick` how often countdowns are redrawn. `view` is what only drawing needs
/// (the theme, scroll positions); `:theme` replaces its theme.
#[allow(clippy::too_many_arguments)]
pub async fn run<B, S, C>(
    terminal: &mut Terminal<B>,
    state: &mut State,
    view: &mut ViewState,
    mut term_events: S,
    mut net: mpsc::Receiver<AppEvent>,
    commands: mpsc::UnboundedSender<Outgoing>,
    clock: &C,
    tick: Duration,
) -> Result<(), ConsoleError>
where
    B: Backend + Bell,
    B::Error: Send + Sync + 'static,
    S: Stream<Item = io::Result<TermEvent>> + Unpin,
    C: Clock + ?Sized,
{
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut net_open = true;
    let (answers_tx, mut answers) = mpsc::channel(effects::ANSWERS);
    let mut in_flight = 0usize;
    report_size(terminal, state, clock.now())?;
    draw(terminal, state, view)?;
    loop {
        tokio::select! {
            ev = term_events.next() => match ev {
                Some(Ok(TermEvent::Key(key))) => update(state, AppEvent::Key(key), clock.now()),
                Some(Ok(TermEvent::Resize(..))) => {
                    terminal.autoresize().map_err(|e| ConsoleError::Terminal(e.into()))?;
                    report_size(terminal, state, clock.now())?;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ConsoleError::Input(e)),
                None => {
                    finish_effects(state, view, &mut answers, &mut in_flight, clock).await;
                    carry_out_effects(terminal, state, &commands, &answers_tx, clock.now());
                    return draw(terminal, state, view);
                }
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
            // The loop holds a sender, so this never ends; it only waits while nothing is due.
            Some(answer) = answers.recv(), if in_flight > 0 => {
                in_flight -= 1;
                take_answer(state, view, answer, clock.now());
            }
            _ = ticker.tick() => update(state, AppEvent::Tick, clock.now()),
        }
        in_flight += carry_out_effects(terminal, state, &commands, &answers_tx, clock.now());
        if state.quit {
            return Ok(());
        }
        draw(terminal, state, view)?;
    }
}

/// Tells the update the terminal's size (pages are worked out from it).
fn report_size<B: Backend<Error: Send + Sync + 'static>>(
    terminal: &Terminal<B>,
    state: &mut State,
    now: DateTime<Utc>,
) -> Result<(), ConsoleError> {
    let size = terminal
        .size()
        .map_err(|e| ConsoleError::Terminal(e.into()))?;
    update(
        state,
        AppEvent::Resize {
            width: size.width,
            height: size.height,
        },
        now,
    );
    Ok(())
}

/// Applies an effect's answer: events go to the update; a theme goes to the view, and the
/// update says which one applies.
pub(crate) fn take_answer(
    state: &mut State,
    view: &mut ViewState,
    answer: Answer,
    now: DateTime<Utc>,
) {
    match answer {
        Answer::Event(ev) => update(state, ev, now),
        Answer::Theme(Ok(theme)) => {
            let name = theme.name.clone();
            view.theme = theme;
            update(state, AppEvent::ThemeLoaded(Ok(name)), now);
        }
        Answer::Theme(Err(e)) => update(state, AppEvent::ThemeLoaded(Err(e)), now),
    }
}

/// The input has ended: waits (up to [`EFFECTS_GRACE`]) for the effects already started.
async fn finish_effects<C: Clock + ?Sized>(
    state: &mut State,
    view: &mut ViewState,
    answers: &mut mpsc::Receiver<Answer>,
    in_flight: &mut usize,
    clock: &C,
) {
    let deadline = tokio::time::Instant::now() + EFFECTS_GRACE;
    while *in_flight > 0 {
        match tokio::time::timeout_at(deadline, answers.recv()).await {
            Ok(Some(answer)) => {
                *in_flight -= 1;
                take_answer(state, view, answer, clock.now());
            }
            Ok(None) | Err(_) => {
                tracing::warn!(
                    unanswered = *in_flight,
                    "the console stopped before its file tasks answered"
                );
                return;
            }
        }
    }
}

fn draw<B: Backend<Error: Send + Sync + 'static>>(
    terminal: &mut Terminal<B>,
    state: &State,
    view: &mut ViewState,
) -> Result<(), ConsoleError> {
    terminal
        .draw(|f| view::draw(f, state, view))
        .map(|_| ())
        .map_err(|e| ConsoleError::Terminal(e.into()))
}

/// Carries out the effects [`update`] left in `state`: sends and the bell at once, slow ones
/// (files, themes) started on the blocking pool, to answer on `answers`. Returns how many
/// were started.
fn carry_out_effects<B: Backend<Error: Send + Sync + 'static> + Bell>(
    terminal: &mut Terminal<B>,
    state: &mut State,
    commands: &mpsc::UnboundedSender<Outgoing>,
    answers: &mpsc::Sender<Answer>,
    now: DateTime<Utc>,
) -> usize {
    let mut started = 0;
    // A failed send's report can leave more effects; each turn takes what is there.
    while !state.effects.is_empty() {
        for effect in std::mem::take(&mut state.effects) {
            if effects::is_slow(&effect) {
                effects::spawn(effect, answers.clone());
                started += 1;
            } else {
                carry_out_quick(terminal, state, commands, effect, now);
            }
        }
    }
    started
}

/// A send or the bell.
fn carry_out_quick<B: Backend<Error: Send + Sync + 'static> + Bell>(
    terminal: &mut Terminal<B>,
    state: &mut State,
    commands: &mpsc::UnboundedSender<Outgoing>,
    effect: Effect,
    now: DateTime<Utc>,
) {
    match effect {
        Effect::Send { gateway, msg } => {
            let id = msg.id();
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
        slow => tracing::error!("a slow effect reached the quick path: {slow:?}"),
    }
}

/// Carries out every effect `update` left in `state` here and now, files included, feeding
/// the answers back: for a tool that drives `update` itself without the event loop (the
/// README's screenshots). The console's own loop never blocks on files; this does.
pub fn carry_out_effects_now<B: Backend<Error: Send + Sync + 'static> + Bell>(
    terminal: &mut Terminal<B>,
    state: &mut State,
    view: &mut ViewState,
    commands: &mpsc::UnboundedSender<Outgoing>,
    now: DateTime<Utc>,
) {
    while !state.effects.is_empty() {
        for effect in std::mem::take(&mut state.effects) {
            if effects::is_slow(&effect) {
                if let Some(answer) = effects::perform(effect) {
                    take_answer(state, view, answer, now);
                }
            } else {
                carry_out_quick(terminal, state, commands, effect, now);
            }
        }
    }
}
