//! Running the console in the real terminal: what `toolgate console` and `toolgate demo` call.
//!
//! Takes over the terminal (raw mode, alternate screen, a panic hook that gives it back and
//! ends the process),
//! starts the network task, runs [`super::run`] until the operator quits or a SIGTERM/SIGHUP
//! arrives, and restores the terminal on every way out.

use std::time::Duration;

use crossterm::event::EventStream;
use tokio::sync::mpsc;

use super::effects::net::{self, Targets};
use super::model::State;
use super::model::learn::LearnReview;
use super::theme::Theme;
use super::view::ViewState;
use super::{ConsoleError, SystemClock};

/// What to show and where to connect.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub targets: Targets,
    /// Already resolved (and stripped of colour under `NO_COLOR`).
    pub theme: Theme,
    /// How many calls to remember.
    pub history: usize,
    /// `--policy`, for the Policy view.
    pub policy_path: Option<String>,
    /// `--cases`, where `T` appends calls as test cases.
    pub cases_path: Option<String>,
    /// `--review-learned`: the review to open, and whether its target file exists.
    pub learn: Option<(LearnReview, bool)>,
}

/// Runs the console on this process's terminal until the operator quits.
pub(crate) async fn run_in_terminal(options: Options) -> Result<(), ConsoleError> {
    let mut state = State::new(chrono::Utc::now(), options.history);
    let mut view = ViewState::new(options.theme);
    state.tz = *chrono::Local::now().offset();
    state.operator = std::env::var("USER").ok().filter(|u| !u.is_empty());
    state.policy_path = options.policy_path;
    state.cases_path = options.cases_path;
    if let Some((review, target_exists)) = options.learn {
        super::update::learn::start(&mut state, review, target_exists);
    }

    // ratatui's hook restores the terminal before the panic is reported; ours then exits.
    let mut terminal = ratatui::try_init().map_err(|e| ConsoleError::Terminal(e.into()))?;
    exit_on_panic();
    let (events_tx, events_rx) = mpsc::channel(65_536);
    let commands = net::spawn(options.targets, events_tx);
    let result = tokio::select! {
        r = super::run(
            &mut terminal,
            &mut state,
            &mut view,
            EventStream::new(),
            events_rx,
            commands,
            &SystemClock,
            Duration::from_millis(250),
        ) => r,
        _ = shutdown_signal() => Ok(()),
    };
    ratatui::restore();
    tracing::info!("console stopped");
    result
}

/// After ratatui's hook has given the terminal back, a panic anywhere (a network task
/// included) ends the process: a console left running on a restored terminal would draw
/// garbage over the shell and could no longer be used to approve anything.
fn exit_on_panic() {
    let restore_and_report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("console panicked: {info}");
        restore_and_report(info);
        std::process::exit(101);
    }));
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}
