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
use toolgate::console::testing::Theme;
use toolgate::console::testing::{AppEvent, State, ViewState, update};
use toolgate::console::testing::{Targets, net};
use toolgate::testing::control::EventsOptions;
use toolgate::testing::demo::DemoOptions;

const SIZE: (u16, u16) = (150, 40);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "screenshots".into()),
    );
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let demo = toolgate::testing::demo::start(DemoOptions {
        rate: 4.0,
        seed: 7,
        ..DemoOptions::default()
    })?;
    let control = toolgate::testing::control::start(
        demo.hub.clone(),
        EventsOptions {
            discovery: false,
            ..EventsOptions::default()
        },
    )
    .await?;
    let (events_tx, mut events) = mpsc::channel(65_536);
    let commands = net::spawn(
        Targets::Fixed {
            url: control.url().to_owned(),
            token: control.token().to_owned(),
        },
        events_tx,
    );
    let mut state = State::new(chrono::Utc::now(), 100_000);
    state.operator = Some("operator".into());
    state.policy_path = Some(demo.policy_path.display().to_string());
    let mut terminal = Terminal::new(TestBackend::new(SIZE.0, SIZE.1))?;
    let mut view = ViewState::new(Theme::load("dark")?);
    let mut console = Console {
        state: &mut state,
        view: &mut view,
        terminal: &mut terminal,
        commands,
    };

    // Let the agents work long enough for every kind of decision and a few holds.
    let until = tokio::time::Instant::now() + Duration::from_secs(12);
    while let Ok(Some(event)) = tokio::time::timeout_at(until, events.recv()).await {
        console.feed(event);
    }
    console.feed(AppEvent::Tick);

    console.shoot(&out, "live")?;
    console.press(&[KeyCode::Up, KeyCode::Up, KeyCode::Up, KeyCode::Enter]);
    console.shoot(&out, "live-detail")?;
    console.press(&[KeyCode::Esc, KeyCode::Char('F'), KeyCode::Char('2')]);
    console.shoot(&out, "holds")?;
    console.press(&[KeyCode::Char('1'), KeyCode::Char('?')]);
    console.shoot(&out, "help")?;
    console.press(&[KeyCode::Esc, KeyCode::Char('3')]);
    console.shoot(&out, "policy")?;
    console.typed(":limit list_meetings 20/minute");
    console.press(&[KeyCode::Enter]);
    console.typed(":w");
    console.press(&[KeyCode::Enter]);
    console.shoot(&out, "policy-diff")?;
    console.press(&[KeyCode::Char('n'), KeyCode::Char('4')]);
    console.shoot(&out, "limits")?;
    // The review of a learned policy, over the demo's policy file (nothing is written: no y).
    let policy_path = demo.policy_path.display().to_string();
    toolgate::console::testing::review_learned(
        console.state,
        "learned.json",
        &learned_draft().to_string(),
        &policy_path,
        false,
        true,
    )
    .map_err(anyhow::Error::msg)?;
    console.press(&[KeyCode::Char('a')]);
    console.state.message = None;
    console.shoot(&out, "learn-review")?;
    console.press(&[KeyCode::Esc, KeyCode::Char('y')]);
    control.shutdown().await;
    drop(demo);
    Ok(())
}

/// A draft as `toolgate learn --proposals` writes it, for the review's screenshot.
fn learned_draft() -> serde_json::Value {
    use serde_json::json;
    let at = |s: &str| format!("2026-12-06T09:{s}Z");
    let obs = |t: &str, tool: &str, grant: &str, args: serde_json::Value| {
        json!({ "at": at(t), "server": "meetings", "tool": tool, "grant": grant,
                "decision": "allow", "approved": null, "args": args })
    };
    json!({
        "base": "{\n  \"version\": \"1\",\n  \"default\": \"deny\",\n  \"tools\": {}\n}\n",
        "proposals": [
            { "kind": "add", "tool": "list_meetings",
              "rule": { "reason": "214 calls from 3 grants over 6 days; peak 12 a minute",
                        "limits": [ { "counter": "list_meetings", "window": "minute", "max": 15, "scope": "grant" } ] },
              "current": null,
              "reason": "214 calls from 3 grants over 6 days; peak 12 a minute",
              "evidence": [ "ci-bot: 120 calls, peak 12 a minute", "ops-bot: 80 calls, peak 7 a minute",
                            "support: 14 calls, peak 2 a minute", "args: none seen" ] },
            { "kind": "add", "tool": "book_meeting",
              "rule": { "reason": "41 calls from 2 grants; durations 15 to 60 minutes",
                        "limits": [ { "counter": "book_meeting", "window": "hour", "max": 10, "scope": "grant" } ],
                        "require": [ { "path": "args.duration_minutes", "op": "lte", "value": 90 },
                                     { "path": "args.title", "op": "exists" } ] },
              "current": null,
              "reason": "41 calls from 2 grants; durations 15 to 60 minutes",
              "evidence": [ "ci-bot: 30 calls, peak 6 an hour", "ops-bot: 11 calls, peak 3 an hour",
                            "args.duration_minutes: 15 to 60", "args.title: always present" ] },
            { "kind": "add", "tool": "cancel_meeting",
              "rule": { "action": "require_approval", "reason": "destructive: 3 calls, each approved by a person" },
              "current": null,
              "reason": "destructive: 3 calls, each approved by a person",
              "evidence": [ "ops-bot: 3 calls, held, approved" ] }
        ],
        "observations": [
            obs("00:00", "list_meetings", "ci-bot", json!({})),
            obs("00:05", "book_meeting", "ci-bot", json!({"title": "standup", "duration_minutes": 15})),
            obs("01:00", "cancel_meeting", "ops-bot", json!({"meeting_id": "m-12"}))
        ]
    })
}

/// The console's state driven as its event loop drives it, on a test terminal.
struct Console<'a> {
    state: &'a mut State,
    view: &'a mut ViewState,
    terminal: &'a mut Terminal<TestBackend>,
    commands: mpsc::UnboundedSender<toolgate::console::testing::Outgoing>,
}

impl Console<'_> {
    fn feed(&mut self, event: AppEvent) {
        let now = chrono::Utc::now();
        update(self.state, event, now);
        toolgate::console::testing::carry_out_effects_now(
            self.terminal,
            self.state,
            self.view,
            &self.commands,
            now,
        );
    }

    fn press(&mut self, keys: &[KeyCode]) {
        for code in keys {
            self.feed(AppEvent::Key(KeyEvent::new(*code, KeyModifiers::NONE)));
        }
    }

    fn typed(&mut self, text: &str) {
        let keys: Vec<KeyCode> = text.chars().map(KeyCode::Char).collect();
        self.press(&keys);
    }

    fn shoot(&mut self, out: &Path, name: &str) -> anyhow::Result<()> {
        let state = &*self.state;
        let view = &mut *self.view;
        self.terminal
            .draw(|frame| toolgate::console::testing::draw(frame, state, view))?;
        let svg = toolgate::testing::screenshot::to_svg(self.terminal.backend().buffer());
        let path = out.join(format!("{name}.svg"));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
        Ok(())
    }
}
