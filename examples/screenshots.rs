//! Renders the README's screenshots from the real product: the demo's gateway, server and
//! agents run in this process, the console's state is fed over the real event websocket, and
//! chosen views are drawn on a `TestBackend` and written as SVG (`scripts/screenshots` turns
//! them into PNG).
//!
//! Usage: cargo run --release --example screenshots -- [OUT_DIR]   (default: screenshots)

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use tokio::sync::mpsc;
use toolgate::console::app::{AppEvent, State, update};
use toolgate::console::net::{self, Targets};
use toolgate::console::theme::Theme;
use toolgate::control::EventsOptions;
use toolgate::demo::DemoOptions;

const SIZE: (u16, u16) = (150, 40);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "screenshots".into()),
    );
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let demo = toolgate::demo::start(DemoOptions {
        rate: 4.0,
        seed: 7,
        ..DemoOptions::default()
    })?;
    let control = toolgate::control::start(
        demo.hub.clone(),
        EventsOptions {
            discovery: false,
            ..EventsOptions::default()
        },
    )
    .await?;
    let (events_tx, mut events) = mpsc::channel(65_536);
    let _commands = net::spawn(
        Targets::Fixed {
            url: control.url().to_owned(),
            token: control.token().to_owned(),
        },
        events_tx,
    );
    let mut state = State::new(chrono::Utc::now(), Theme::load("dark")?, 100_000);
    state.operator = Some("operator".into());
    state.policy_path = Some(demo.policy_path.display().to_string());

    // Let the agents work long enough for every kind of decision and a few holds.
    let until = tokio::time::Instant::now() + Duration::from_secs(12);
    while let Ok(Some(event)) = tokio::time::timeout_at(until, events.recv()).await {
        update(&mut state, event, chrono::Utc::now());
    }
    update(&mut state, AppEvent::Tick, chrono::Utc::now());

    shoot(&state, &out, "live")?;
    press(
        &mut state,
        &[KeyCode::Up, KeyCode::Up, KeyCode::Up, KeyCode::Enter],
    );
    shoot(&state, &out, "live-detail")?;
    press(
        &mut state,
        &[KeyCode::Esc, KeyCode::Char('F'), KeyCode::Char('2')],
    );
    shoot(&state, &out, "holds")?;
    press(&mut state, &[KeyCode::Char('1'), KeyCode::Char('?')]);
    shoot(&state, &out, "help")?;
    control.shutdown().await;
    Ok(())
}

fn press(state: &mut State, keys: &[KeyCode]) {
    for code in keys {
        let now = state.now;
        update(
            state,
            AppEvent::Key(KeyEvent::new(*code, KeyModifiers::NONE)),
            now,
        );
    }
}

fn shoot(state: &State, out: &Path, name: &str) -> anyhow::Result<()> {
    let mut terminal = Terminal::new(TestBackend::new(SIZE.0, SIZE.1))?;
    terminal.draw(|frame| toolgate::console::view::draw(frame, state))?;
    let svg = toolgate::screenshot::to_svg(terminal.backend().buffer());
    let path = out.join(format!("{name}.svg"));
    std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
