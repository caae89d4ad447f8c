//! Console performance: ingest rate of call events into the state, render time of a 200x60
//! frame with 100,000 calls remembered, filter time over 100,000 calls, and the memory the
//! state takes at that size (printed once, measured with a counting allocator).
//!
//! Run: `cargo bench --bench console`. Targets: ≥ 200,000 events/s, ≤ 2 ms a frame,
//! ≤ 20 ms a filter.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::json;
use toolgate::console::testing::Theme;
use toolgate::console::testing::{AppEvent, State, ViewState, draw, set_filter, update};
use toolgate::testing::wire::{CallEvent, Event, EventKind, Verdict};

/// Counts bytes currently allocated, to report the state's memory.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const N: usize = 100_000;
const TOOLS: [&str; 9] = [
    "register_agent",
    "create_api_key",
    "revoke_api_key",
    "list_meetings",
    "book_meeting",
    "cancel_meeting",
    "send_message",
    "export_data",
    "delete_account",
];
const GRANTS: [&str; 3] = ["ci-bot", "ops-bot", "research"];

fn t0() -> DateTime<Utc> {
    "2026-11-26T12:00:00Z".parse().expect("fixed time")
}

fn events(n: usize) -> Vec<AppEvent> {
    (0..n)
        .map(|i| {
            let tool = TOOLS[i % TOOLS.len()];
            let decision = match i % 10 {
                0 => Verdict::Deny,
                1 => Verdict::RateLimited,
                2 if i % 1000 == 2 => Verdict::Hold,
                _ => Verdict::Allow,
            };
            let ts = t0() + TimeDelta::milliseconds(i as i64);
            AppEvent::Net {
                gateway: "a1b2".into(),
                event: Event {
                    seq: i as u64 + 1,
                    ts,
                    gateway: "a1b2".into(),
                    kind: EventKind::Call(CallEvent {
                        call_id: format!("a1b2-{i}").into(),
                        tool: tool.into(),
                        grant: GRANTS[i % GRANTS.len()].into(),
                        session: "sess-1".into(),
                        server: "meetings".into(),
                        decision,
                        rule: format!("/tools/{tool}").into(),
                        reason: Default::default(),
                        args: json!({"name": "weekly sync", "attendees": i % 7, "apiKey": "[redacted]"}).into(),
                        args_truncated: false,
                        retry_after_ms: None,
                        hold_deadline: (decision == Verdict::Hold)
                            .then(|| ts + TimeDelta::seconds(120)),
                        shadow: None,
                    }),
                },
            }
        })
        .collect()
}

fn full_state() -> State {
    let mut s = State::new(t0(), N);
    let now = t0() + TimeDelta::seconds(100);
    for ev in events(N) {
        update(&mut s, ev, now);
    }
    s.effects.clear();
    s
}

fn report_memory() {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let s = full_state();
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    eprintln!(
        "console state with {} calls remembered: {:.1} MiB ({} bytes per call)",
        s.history.len(),
        (after - before) as f64 / (1024.0 * 1024.0),
        (after - before) / s.history.len() as isize
    );
}

fn ingest(c: &mut Criterion) {
    report_memory();
    let mut g = c.benchmark_group("console");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    g.bench_function("ingest 100k call events", |b| {
        b.iter_batched(
            || (State::new(t0(), N), events(N)),
            |(mut s, evs)| {
                let now = t0() + TimeDelta::seconds(100);
                for ev in evs {
                    update(&mut s, ev, now);
                }
                s
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn render(c: &mut Criterion) {
    let s = full_state();
    let mut terminal = Terminal::new(TestBackend::new(200, 60)).expect("terminal");
    let mut view = ViewState::new(Theme::builtin_default());
    c.bench_function("console/render 200x60 with 100k calls", |b| {
        b.iter(|| {
            terminal.draw(|f| draw(f, &s, &mut view)).expect("draw");
        })
    });
    let mut paused = full_state();
    paused.live.selected = Some(paused.history.first_pos() + N as u64 / 2);
    set_filter(&mut paused, "grant:ci*");
    c.bench_function("console/render 200x60 filtered and paused", |b| {
        b.iter(|| {
            terminal
                .draw(|f| draw(f, &paused, &mut view))
                .expect("draw");
        })
    });
}

fn filter(c: &mut Criterion) {
    let mut s = full_state();
    for (name, filter) in [
        (
            "decision, tool, grant and text",
            "tool:create_* decision:deny grant:ci* text",
        ),
        ("tool and grant globs", "tool:*meeting* grant:ops-bot"),
        ("free text only", "meeting"),
    ] {
        c.bench_function(&format!("console/filter 100k calls: {name}"), |b| {
            b.iter(|| {
                set_filter(&mut s, filter);
                s.live.filtered.len()
            })
        });
    }
}

criterion_group!(benches, ingest, render, filter);
criterion_main!(benches);
