//! The real event loop ([`toolgate::console::testing::run`]) on a `TestBackend`: gateway events and
//! keys go in through the same channels the binary uses; commands for gateways come out.
//!
//! Keys and gateway events are interleaved by one scripted stream. Before it hands the loop
//! its next key it waits until the loop has taken every gateway event sent so far (the
//! bounded channel is empty again): the loop applies an event in the same turn it takes it,
//! so the script never races the loop, and no test sleeps. File effects (the policy read a
//! gateway's hello asks for, a theme) run off the loop and answer when they are done; the
//! console is given a policy file that reads cleanly, so that answer changes nothing on the
//! screen whenever it lands, and a run whose input has ended waits for what it started.

mod console_support;

use std::io;

use console_support::*;
use crossterm::event::{Event as TermEvent, KeyCode, KeyEvent, KeyModifiers};
use futures_util::Stream;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use tokio::sync::mpsc;
use toolgate::console::testing::Theme;
use toolgate::console::testing::{AppEvent, Outgoing, State, ViewState, run};
use toolgate::testing::wire::{ClientMsg, EventKind, Reply, Verdict};

enum Step {
    Key(KeyCode),
    Net(Box<AppEvent>),
}

const NET_CAPACITY: usize = 64;

/// Only so that a broken loop fails instead of hanging; nothing asserts on speed.
const WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

fn script(
    steps: Vec<Step>,
    net: mpsc::Sender<AppEvent>,
) -> impl Stream<Item = io::Result<TermEvent>> + Unpin {
    Box::pin(futures_util::stream::unfold(
        (steps.into_iter(), net),
        |(mut steps, net)| async move {
            loop {
                match steps.next()? {
                    Step::Net(ev) => net.send(*ev).await.ok()?,
                    Step::Key(code) => {
                        let taken = async {
                            while net.capacity() < NET_CAPACITY {
                                tokio::task::yield_now().await;
                            }
                        };
                        if tokio::time::timeout(WITHIN, taken).await.is_err() {
                            panic!(
                                "the loop did not take the gateway events sent before key {code:?} within {WITHIN:?}"
                            );
                        }
                        let key = TermEvent::Key(KeyEvent::new(code, KeyModifiers::NONE));
                        return Some((Ok(key), (steps, net)));
                    }
                }
            }
        },
    ))
}

/// What a scripted run left: the state, the screen, the commands sent, the view's state.
struct Driven {
    state: State,
    backend: TestBackend,
    sent: Vec<Outgoing>,
    view: ViewState,
}

async fn drive(steps: Vec<Step>) -> Driven {
    let mut state = State::new(t0(), 1000);
    state.policy_path = Some(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/seed-policy.json"
        )
        .to_owned(),
    );
    let mut view = ViewState::new(Theme::builtin_default());
    let mut terminal = Terminal::new(TestBackend::new(110, 16)).expect("terminal");
    let (net_tx, net_rx) = mpsc::channel(NET_CAPACITY);
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    let clock = FixedClock(at_ms(60_000));
    // Keep a sender so the loop's network branch stays open to the end.
    let keep = net_tx.clone();
    let ran = run(
        &mut terminal,
        &mut state,
        &mut view,
        script(steps, net_tx),
        net_rx,
        cmd_tx,
        &clock,
        std::time::Duration::from_secs(3600),
    );
    tokio::time::timeout(WITHIN, ran)
        .await
        .unwrap_or_else(|_| panic!("the console loop did not finish its script within {WITHIN:?}"))
        .expect("console loop");
    drop(keep);
    let mut sent = Vec::new();
    while let Ok(o) = cmd_rx.try_recv() {
        sent.push(o);
    }
    Driven {
        state,
        backend: terminal.backend().clone(),
        sent,
        view,
    }
}

fn hold_call() -> AppEvent {
    net(
        "a1b2",
        2,
        at_ms(56_000),
        EventKind::Call(call("a1b2", 7, "send_message", "ci-bot", Verdict::Hold)),
    )
}

/// The gateway's hello, with nothing in it yet.
fn empty_hello() -> Step {
    Step::Net(Box::new(net(
        "a1b2",
        1,
        t0(),
        hello("a1b2", "ci-bot", vec![], vec![]),
    )))
}

/// The gateway's reply to the console's first command.
fn reply_to_first(ok: bool, error: Option<&str>) -> Step {
    Step::Net(Box::new(net(
        "a1b2",
        3,
        at_ms(58_000),
        EventKind::Reply(Reply {
            id: 1,
            ok,
            error: error.map(str::to_owned),
            ..Reply::default()
        }),
    )))
}

/// The keys typing `text` in the console.
fn typing(text: &str) -> Vec<Step> {
    text.chars().map(|c| Step::Key(KeyCode::Char(c))).collect()
}

#[tokio::test]
async fn calls_arrive_a_hold_rings_and_a_approves_it_on_its_gateway() {
    let steps = vec![
        Step::Net(Box::new(up("a1b2"))),
        empty_hello(),
        Step::Net(Box::new(net(
            "a1b2",
            2,
            at_ms(55_000),
            EventKind::Call(call("a1b2", 6, "list_meetings", "ci-bot", Verdict::Allow)),
        ))),
        Step::Net(Box::new(hold_call())),
        Step::Key(KeyCode::Char('2')),
        Step::Key(KeyCode::Char('a')),
        reply_to_first(true, None),
        Step::Key(KeyCode::Char('1')),
    ];
    let Driven {
        state,
        backend,
        sent,
        ..
    } = drive(steps).await;
    assert_eq!(state.bells_rung, 1);
    assert_eq!(
        sent,
        vec![Outgoing {
            gateway: "a1b2".into(),
            msg: ClientMsg::Approve {
                id: 1,
                call_id: "a1b2-7".into(),
                operator: None
            }
        }]
    );
    let screen = text(backend.buffer()).join("\n");
    assert!(screen.contains("list_meetings"), "{screen}");
    assert!(screen.contains("send_message"), "{screen}");
    assert!(screen.contains("approved a1b2-7"), "{screen}");
}

#[tokio::test]
async fn an_approval_the_gateway_refuses_is_shown_as_an_error() {
    let steps = vec![
        Step::Net(Box::new(up("a1b2"))),
        empty_hello(),
        Step::Net(Box::new(hold_call())),
        Step::Key(KeyCode::Char('2')),
        Step::Key(KeyCode::Char('a')),
        reply_to_first(false, Some("already resolved")),
        Step::Key(KeyCode::Char('2')),
    ];
    let Driven { backend, .. } = drive(steps).await;
    let screen = text(backend.buffer()).join("\n");
    assert!(
        screen.contains("could not approve a1b2-7: already resolved"),
        "{screen}"
    );
}

#[tokio::test]
async fn q_with_a_held_call_asks_and_y_ends_the_loop() {
    let steps = vec![
        Step::Net(Box::new(up("a1b2"))),
        Step::Net(Box::new(hold_call())),
        Step::Key(KeyCode::Char('q')),
        Step::Key(KeyCode::Char('y')),
        // Never reached: the loop has returned.
        Step::Key(KeyCode::Char('x')),
    ];
    let Driven { state, .. } = drive(steps).await;
    assert!(state.quit);
}

#[tokio::test]
async fn the_theme_command_switches_theme_and_a_bad_name_is_refused() {
    let mut steps = typing(":theme light");
    steps.push(Step::Key(KeyCode::Enter));
    let Driven { view, .. } = drive(steps).await;
    assert_eq!(view.theme.name, "light");

    let mut steps = typing(":theme no-such-theme");
    steps.push(Step::Key(KeyCode::Enter));
    let Driven { view, backend, .. } = drive(steps).await;
    assert_eq!(view.theme.name, "dark");
    let screen = text(backend.buffer()).join("\n");
    assert!(
        screen.contains("no theme named 'no-such-theme'"),
        "{screen}"
    );
}
