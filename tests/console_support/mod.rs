//! Shared fixtures for the console tests: a fixed clock, wire events, a populated state.
#![allow(dead_code)]

use chrono::{DateTime, TimeDelta, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use serde_json::json;
use toolgate::console::testing::Theme;
use toolgate::console::testing::{AppEvent, Link, State, ViewState, update};
use toolgate::testing::wire::{
    CallEvent, CallRecord, CounterState, Event, EventKind, GatewayInfo, Hello, HoldResolved,
    Outcome, PROTOCOL_VERSION, ResolvedBy, Snapshot, Totals, Verdict,
};

pub fn t0() -> DateTime<Utc> {
    "2026-11-26T12:04:00Z".parse().expect("fixed time")
}

pub fn at_ms(ms: i64) -> DateTime<Utc> {
    t0() + TimeDelta::milliseconds(ms)
}

pub struct FixedClock(pub DateTime<Utc>);

impl toolgate::console::testing::Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

pub fn call(gw: &str, n: u32, tool: &str, grant: &str, decision: Verdict) -> CallEvent {
    CallEvent {
        call_id: format!("{gw}-{n}").into(),
        tool: tool.into(),
        grant: grant.into(),
        session: "sess-1".into(),
        server: "meetings".into(),
        decision,
        rule: match decision {
            Verdict::Deny => "/tools/delete_*".into(),
            Verdict::RateLimited => format!("/tools/{tool}/limits/0").into(),
            _ => format!("/tools/{tool}").into(),
        },
        reason: match decision {
            Verdict::Deny => "deleting accounts is not allowed for agents".into(),
            Verdict::RateLimited => "30 per minute per grant".into(),
            Verdict::Hold => "sending messages needs a person".into(),
            Verdict::Allow => Default::default(),
        },
        args: json!({"keyName": "staging", "apiKey": "sk-live-123", "count": n}).into(),
        args_truncated: false,
        retry_after_ms: (decision == Verdict::RateLimited).then_some(12_000),
        hold_deadline: (decision == Verdict::Hold).then(|| at_ms(120_000 + n as i64 * 1000)),
        shadow: None,
    }
}

pub fn net(gw: &str, seq: u64, ts: DateTime<Utc>, kind: EventKind) -> AppEvent {
    AppEvent::Net {
        gateway: gw.into(),
        event: Event {
            seq,
            ts,
            gateway: gw.into(),
            kind,
        },
    }
}

pub fn up(gw: &str) -> AppEvent {
    AppEvent::Link {
        gateway: gw.into(),
        link: Link::Up {
            url: format!("ws://127.0.0.1:1/{gw}"),
        },
    }
}

pub fn hello(gw: &str, grant: &str, calls: Vec<CallRecord>, holds: Vec<String>) -> EventKind {
    EventKind::Hello(Box::new(Hello {
        protocol: PROTOCOL_VERSION,
        info: GatewayInfo {
            id: gw.into(),
            pid: 4242,
            version: "0.1.0".into(),
            grant: grant.into(),
            server: "meetings".into(),
            policy: "/home/op/policy.json".into(),
            started_at: t0(),
        },
        snapshot: Snapshot {
            calls,
            holds,
            counters: vec![CounterState {
                counter: "create_api_key".into(),
                scope: "grant".into(),
                key: grant.into(),
                used: 28,
                max: 30,
                window_ms: 60_000,
                next_free_in_ms: Some(4_000),
            }],
            policy_hash: Some("3f9a21c0ffee".into()),
            policy_error: None,
            tools: vec![],
            upstream_up: true,
            totals: Totals::default(),
            tool_changes: vec![],
            counter_store: None,
        },
    }))
}

/// A state following two gateways, with one call of every kind, at `t0() + 60 s`.
pub fn populated() -> State {
    let mut s = State::new(t0(), 1000);
    s.operator = Some("ann".into());
    let now = at_ms(60_000);
    for (gw, grant) in [("a1b2", "ci-bot"), ("c3d4", "ops-bot")] {
        update(&mut s, up(gw), now);
        update(
            &mut s,
            net(gw, 1, t0(), hello(gw, grant, vec![], vec![])),
            now,
        );
    }
    let script: Vec<(&str, u32, &str, &str, Verdict, i64)> = vec![
        (
            "a1b2",
            1,
            "create_api_key",
            "ci-bot",
            Verdict::Allow,
            55_120,
        ),
        ("a1b2", 2, "delete_account", "ci-bot", Verdict::Deny, 55_340),
        ("c3d4", 1, "send_message", "ops-bot", Verdict::Hold, 56_002),
        (
            "a1b2",
            3,
            "create_api_key",
            "ci-bot",
            Verdict::RateLimited,
            56_410,
        ),
        ("c3d4", 2, "book_meeting", "ops-bot", Verdict::Hold, 57_000),
        ("a1b2", 4, "export_data", "ci-bot", Verdict::Hold, 57_500),
        ("a1b2", 5, "list_meetings", "ci-bot", Verdict::Allow, 58_000),
        // Wide and combining characters must not push the columns after them.
        ("c3d4", 3, "予約_会議", "ops-bot", Verdict::Allow, 58_200),
        (
            "c3d4",
            4,
            "re\u{301}sume\u{301}",
            "ops-bot",
            Verdict::Allow,
            58_300,
        ),
        // Hostile text is shown, not obeyed.
        (
            "c3d4",
            5,
            "evil\x1b[2J\u{202e}",
            "ops\x07bot",
            Verdict::Deny,
            58_400,
        ),
    ];
    for (i, (gw, n, tool, grant, d, ms)) in script.into_iter().enumerate() {
        update(
            &mut s,
            net(
                gw,
                10 + i as u64,
                at_ms(ms),
                EventKind::Call(call(gw, n, tool, grant, d)),
            ),
            now,
        );
    }
    update(
        &mut s,
        net(
            "a1b2",
            30,
            at_ms(55_200),
            EventKind::Outcome(Outcome {
                call_id: "a1b2-1".into(),
                latency_us: 38_000,
                error: false,
                summary: Some("{\"key\":\"k_123\"}".into()),
            }),
        ),
        now,
    );
    update(
        &mut s,
        net(
            "a1b2",
            31,
            at_ms(58_100),
            EventKind::Outcome(Outcome {
                call_id: "a1b2-5".into(),
                latency_us: 1_250_000,
                error: true,
                summary: Some("upstream timed out".into()),
            }),
        ),
        now,
    );
    update(
        &mut s,
        net(
            "a1b2",
            32,
            at_ms(59_000),
            EventKind::HoldResolved(HoldResolved {
                call_id: "a1b2-4".into(),
                approved: false,
                by: ResolvedBy::Operator,
                operator: Some("ann".into()),
                reason: Some("not today".into()),
            }),
        ),
        now,
    );
    s.effects.clear();
    s.message = None;
    s
}

/// Draws the state on a `w`×`h` test terminal, in the default theme, and returns the screen.
pub fn render(state: &State, w: u16, h: u16) -> Buffer {
    render_with(state, Theme::builtin_default(), w, h)
}

/// Draws the state on a `w`×`h` test terminal in `theme` and returns the screen.
pub fn render_with(state: &State, theme: Theme, w: u16, h: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    let mut view = ViewState::new(theme);
    terminal
        .draw(|f| toolgate::console::testing::draw(f, state, &mut view))
        .expect("draw");
    terminal.backend().buffer().clone()
}

/// The screen's text only, one string per row (for assertions on content).
pub fn text(buf: &Buffer) -> Vec<String> {
    let w = buf.area.width as usize;
    buf.content
        .chunks(w)
        .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
        .collect()
}

/// Records for a snapshot.
pub fn record(c: CallEvent) -> CallRecord {
    CallRecord {
        ts: None,
        call: c,
        resolution: None,
        outcome: None,
    }
}

/// One key press, at the state's own time.
pub fn key(s: &mut State, code: KeyCode) {
    let now = s.now;
    update(
        s,
        AppEvent::Key(KeyEvent::new(code, KeyModifiers::NONE)),
        now,
    );
}

/// Types `text`, one key press a character.
pub fn typed(s: &mut State, text: &str) {
    for c in text.chars() {
        key(s, KeyCode::Char(c));
    }
}
