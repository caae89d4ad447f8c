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
        // workers decide them in batches (one transaction for many calls) while the
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
                    scope_key: Default::default(),
                    max,
                    window_ms: window,
                };
                let answers: Vec<_> = times
                    .iter()
                    .map(|&now| {
                        worker.admit(vec![limits("a", max, window), limits("b", max + 1, window * 2)].into(), now)
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// The running counts of the SQLite store against the reference store (memory) and,
    /// while the window stays the same, against a plain count of the units in it: calls in
    /// order, decided in batches of one transaction, some given back after their batch, and
    /// the window changed now and then (a policy reload), at realistic clock magnitudes.
    /// What each batch notes of the budget for the events (its count and oldest unit, from
    /// the batch's own transaction) is what the reference store reads after the batch.
    #[test]
    fn in_order_batched_sqlite_admissions_get_exactly_the_rolling_window_answer(
        max in 1u64..5,
        windows in prop::collection::vec(1u64..100, 1..3),
        batches in prop::collection::vec(prop::collection::vec(0u64..40, 1..12), 1..30),
        release_every in 0usize..4,
    ) {
        const T0: u64 = 1_764_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("counters.sqlite3")).unwrap();
        let reference = MemoryStore::new();
        let one_window = windows.iter().all(|&w| w == windows[0]);
        let a: Arc<str> = "a".into();
        let mut admitted: Vec<u64> = Vec::new();
        let mut give_back = Vec::new();
        let mut now = T0;
        for (n, gaps) in batches.into_iter().enumerate() {
            let window = windows[n % windows.len()];
            let limits = [limit(&a, max, window)];
            let times: Vec<u64> = gaps.iter().map(|gap| { now += gap; now }).collect();
            let calls: Vec<(&[LimitRequest<'_>], u64)> =
                times.iter().map(|&t| (&limits[..], t)).collect();
            let mut noted = Vec::new();
            let answers = store.admit_many_noting(&calls, &mut noted);
            let last_admitted = times
                .iter()
                .zip(&answers)
                .rev()
                .find(|(_, a)| matches!(a, Ok(Admission::Admitted(_))))
                .map(|(&t, _)| t);
            for (&t, answer) in times.iter().zip(answers) {
                let answer = answer.unwrap();
                let expected = reference.admit(&limits, t).unwrap();
                match (&answer, &expected) {
                    (Admission::Admitted(r), Admission::Admitted(e)) => {
                        prop_assert_eq!(r.units()[0].at_ms, e.units()[0].at_ms);
                    }
                    _ => prop_assert_eq!(&answer, &expected, "at {}", t - T0),
                }
                let in_window = admitted.iter().filter(|&&u| u + window > t).count() as u64;
                match answer {
                    Admission::Admitted(r) => {
                        prop_assert!(!one_window || in_window < max, "admitted at {} with {} in window", t - T0, in_window);
                        prop_assert_eq!(r.units()[0].at_ms, t);
                        // Given back after the batch: until then it counts.
                        if release_every > 0 && admitted.len().is_multiple_of(release_every + 1) {
                            give_back.push((r, expected));
                        }
                        admitted.push(t);
                    }
                    Admission::Refused { retry_after_ms, .. } => {
                        prop_assert!(!one_window || in_window >= max, "refused at {} with room", t - T0);
                        let later = t + retry_after_ms;
                        let then = admitted.iter().filter(|&&u| u + window > later).count() as u64;
                        let just_before =
                            admitted.iter().filter(|&&u| u + window > later - 1).count() as u64;
                        prop_assert!(!one_window || (then < max && just_before >= max));
                    }
                }
            }
            prop_assert_eq!(noted.len(), usize::from(last_admitted.is_some()), "{:?}", noted);
            if let Some(note) = noted.first() {
                prop_assert_eq!(Some(note.at_ms), last_admitted);
                prop_assert_eq!(note.window_ms, window);
                let key = limits[0].key();
                prop_assert_eq!(&note.key, &key);
                // Right after the batch (its last call's time) the note holds, and says what
                // a read says.
                let read = reference.usage_of(&key, window, now).unwrap();
                match note.usage_at(window, now) {
                    Some(usage) => prop_assert_eq!(usage, read),
                    // Only once its oldest unit has left the window.
                    None => prop_assert!(
                        note.oldest_ms.is_some_and(|o| o + window <= now),
                        "no usage from {:?} at {}", note, now - T0
                    ),
                }
            }
            for (r, e) in give_back.drain(..) {
                store.release(&r);
                if let Admission::Admitted(e) = e {
                    reference.release(&e);
                }
                let at = r.units()[0].at_ms;
                let i = admitted.iter().position(|&u| u == at).unwrap();
                admitted.remove(i);
            }
            // What the console reads agrees too.
            let used = store.usage("a", Scope::Global, window, now).unwrap();
            let expected = reference.usage("a", Scope::Global, window, now).unwrap();
            prop_assert_eq!(used, expected);
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
