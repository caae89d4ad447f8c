//! Properties of the counter store and of limited decisions under concurrency: never more
//! than `max` admitted units in any span of `window`, whatever the arrival times and threads;
//! and with in-order times, exactly the rolling-window answer (never refusing when there is
//! room).

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;
use toolgate::testing::policy::{
    Admission, Call, CounterStore, LimitRequest, MemoryStore, OwnedLimit, Policy, Scope,
    SqliteStore, StoreWorker, Verdict,
};

fn limit(counter: &Arc<str>, max: u64, window_ms: u64) -> LimitRequest<'_> {
    LimitRequest {
        counter,
        scope: Scope::Global,
        scope_key: "",
        max,
        window_ms,
    }
}

/// The largest number of `times` (sorted) inside any half-open span of length `window`.
fn densest_span(times: &mut [u64], window: u64) -> usize {
    times.sort_unstable();
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn never_more_than_max_in_any_window_span_across_threads(
        max in 1u64..6,
        window in 1u64..200,
        arrivals in prop::collection::vec(prop::collection::vec(0u64..1_000, 1..60), 2..6),
        release_every in 0usize..4,
    ) {
        let store = Arc::new(MemoryStore::new());
        let handles: Vec<_> = arrivals.into_iter().map(|times| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
                let limits = [limit(&a, max, window), limit(&b, max + 1, window * 2)];
                let mut kept = Vec::new();
                for (i, now) in times.into_iter().enumerate() {
                    if let Ok(Admission::Admitted(r)) = store.admit(&limits, now) {
                        // Some admitted calls fail later and give their units back.
                        if release_every > 0 && i % (release_every + 1) == 0 {
                            store.release(&r);
                        } else {
                            kept.push(r);
                        }
                    }
                }
                kept
            })
        }).collect();
        let mut a_times = Vec::new();
        let mut b_times = Vec::new();
        for h in handles {
            for r in h.join().unwrap() {
                for u in r.units() {
                    if &*u.key.counter == "a" { a_times.push(u.at_ms) } else { b_times.push(u.at_ms) }
                }
            }
        }
        // Atomicity: every kept call took a unit from both budgets.
        prop_assert_eq!(a_times.len(), b_times.len());
        prop_assert!(densest_span(&mut a_times, window) <= max as usize);
        prop_assert!(densest_span(&mut b_times, window * 2) <= max as usize + 1);
    }

    #[test]
    fn never_more_than_max_in_any_window_span_through_batched_sqlite_admissions(
        max in 1u64..6,
        window in 1u64..200,
        arrivals in prop::collection::vec(prop::collection::vec(0u64..1_000, 1..60), 2..6),
        release_every in 0usize..4,
    ) {
        // Two stores on one file (two connections, as two gateway processes have), each
        // with its worker thread; every caller queues all its admissions at once, so the
        // workers decide them in batches (one transaction, a savepoint per call) while the
        // other worker's transactions contend for the file's lock.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("counters.sqlite3");
        let stores: Vec<Arc<dyn CounterStore>> = (0..2)
            .map(|_| Arc::new(SqliteStore::open(&file).unwrap()) as Arc<dyn CounterStore>)
            .collect();
        let workers: Vec<StoreWorker> = stores.iter().cloned().map(StoreWorker::new).collect();
        let handles: Vec<_> = arrivals.into_iter().enumerate().map(|(n, times)| {
            let worker = workers[n % workers.len()].clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                let limits = |c: &str, max, window| OwnedLimit {
                    counter: Arc::from(c),
                    scope: Scope::Global,
                    scope_key: String::new(),
                    max,
                    window_ms: window,
                };
                let answers: Vec<_> = times
                    .iter()
                    .map(|&now| {
                        worker.admit(vec![limits("a", max, window), limits("b", max + 1, window * 2)], now)
                    })
                    .collect();
                let mut kept = Vec::new();
                for (i, answer) in answers.into_iter().enumerate() {
                    let answer = runtime.block_on(answer.get());
                    if let Ok(Admission::Admitted(r)) = answer {
                        if release_every > 0 && i % (release_every + 1) == 0 {
                            worker.store().release(&r);
                        } else {
                            kept.push(r);
                        }
                    } else if let Err(e) = &answer {
                        // A lock held too long fails the call closed: a refusal, never an
                        // admission. Anything else is a broken store.
                        prop_assert!(e.is_transient(), "the store failed: {:?}", e);
                    }
                }
                Ok(kept)
            })
        }).collect();
        let mut a_times = Vec::new();
        let mut b_times = Vec::new();
        for h in handles {
            for r in h.join().unwrap()? {
                for u in r.units() {
                    if &*u.key.counter == "a" { a_times.push(u.at_ms) } else { b_times.push(u.at_ms) }
                }
            }
        }
        prop_assert_eq!(a_times.len(), b_times.len());
        prop_assert!(densest_span(&mut a_times, window) <= max as usize);
        prop_assert!(densest_span(&mut b_times, window * 2) <= max as usize + 1);
    }

    #[test]
    fn in_order_arrivals_get_exactly_the_rolling_window_answer(
        max in 1u64..5,
        window in 1u64..100,
        gaps in prop::collection::vec(0u64..40, 1..200),
    ) {
        let store = MemoryStore::new();
        let a: Arc<str> = "a".into();
        let limits = [limit(&a, max, window)];
        let mut admitted: Vec<u64> = Vec::new();
        let mut now = 0;
        for gap in gaps {
            now += gap;
            let in_window = admitted.iter().filter(|&&t| t + window > now).count() as u64;
            let expected_room = in_window < max;
            match store.admit(&limits, now).unwrap() {
                Admission::Admitted(r) => {
                    prop_assert!(expected_room, "admitted at {} with {} in window", now, in_window);
                    prop_assert_eq!(r.units()[0].at_ms, now);
                    admitted.push(now);
                }
                Admission::Refused { retry_after_ms, .. } => {
                    prop_assert!(!expected_room, "refused at {} with room", now);
                    // Room comes back exactly after retry_after_ms, not a millisecond sooner.
                    let later = now + retry_after_ms;
                    let then = admitted.iter().filter(|&&t| t + window > later).count() as u64;
                    let just_before = admitted.iter().filter(|&&t| t + window > later - 1).count() as u64;
                    prop_assert!(then < max && just_before >= max);
                }
            }
        }
    }
}

#[test]
fn concurrent_decisions_share_one_budget_exactly() {
    let policy = Arc::new(
        Policy::parse(
            r#"{"version": "1", "default": "deny", "tools": {"t": {"limits": [
                {"counter": "c", "window": "minute", "max": 100, "scope": "global"}]}}}"#,
            "p.json",
        )
        .unwrap(),
    );
    let store = Arc::new(MemoryStore::new());
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (policy, store) = (Arc::clone(&policy), Arc::clone(&store));
            std::thread::spawn(move || {
                let args = json!({});
                let grant = format!("g{i}");
                (0..50)
                    .filter(|_| {
                        let call = Call {
                            tool: "t",
                            args: &args,
                            grant: &grant,
                            session: "s",
                        };
                        policy.decide(&call, store.as_ref(), 1_000).verdict == Verdict::Allow
                    })
                    .count()
            })
        })
        .collect();
    let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(allowed, 100);
}
