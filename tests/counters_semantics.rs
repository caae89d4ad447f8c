//! The [`CounterStore`] contract, one suite run against every store: in memory, SQLite and
//! Redis (a private `redis-server`, see `counters_support`). Each behaviour is a generic
//! function over `&dyn CounterStore`; the macro at the end instantiates it per store, so the
//! three cannot drift apart.

mod counters_support;

use std::sync::Arc;

use counters_support::{RedisServer, unique_prefix};
use toolgate::testing::policy::{
    Admission, CounterStore, KeyUsage, LimitRequest, MemoryStore, RedisStore, Reservation, Scope,
    SqliteStore,
};

/// A realistic clock (Redis scores and SQLite integers see real magnitudes).
const T0: u64 = 1_764_000_000_000;

fn name(counter: &str) -> &'static Arc<str> {
    Box::leak(Box::new(Arc::from(counter)))
}

fn req(counter: &str, key: &str, max: u64, window_ms: u64) -> LimitRequest<'static> {
    LimitRequest {
        counter: name(counter),
        scope: Scope::Grant,
        scope_key: Box::leak(key.to_string().into_boxed_str()),
        max,
        window_ms,
    }
}

fn admitted(a: Admission) -> Reservation {
    match a {
        Admission::Admitted(r) => r,
        other => panic!("expected admission, got {other:?}"),
    }
}

fn is_refused(a: &Admission) -> bool {
    matches!(a, Admission::Refused { .. })
}

fn rolling_window_admits_max_then_refuses_until_the_oldest_leaves(s: &dyn CounterStore) {
    let l = [req("c", "g", 2, 1000)];
    admitted(s.admit(&l, T0 + 100).unwrap());
    admitted(s.admit(&l, T0 + 600).unwrap());
    assert_eq!(
        s.admit(&l, T0 + 1099).unwrap(),
        Admission::Refused {
            index: 0,
            retry_after_ms: 1
        }
    );
    admitted(s.admit(&l, T0 + 1100).unwrap());
    assert_eq!(
        s.admit(&l, T0 + 1200).unwrap(),
        Admission::Refused {
            index: 0,
            retry_after_ms: 400
        }
    );
}

fn a_refused_call_takes_nothing_from_any_budget(s: &dyn CounterStore) {
    let a = req("a", "g", 5, 1000);
    let b = req("b", "g", 1, 1000);
    admitted(s.admit(std::slice::from_ref(&b), T0).unwrap());
    let r = s.admit(&[a, b], T0 + 10).unwrap();
    assert!(matches!(r, Admission::Refused { index: 1, .. }), "{r:?}");
    assert!(
        s.usage("a", Scope::Grant, 1000, T0 + 10)
            .unwrap()
            .is_empty()
    );
}

fn release_gives_back_exactly_the_units_taken(s: &dyn CounterStore) {
    let l = [req("a", "g", 1, 1000), req("b", "g", 3, 1000)];
    let r = admitted(s.admit(&l, T0 + 5).unwrap());
    assert_eq!(r.units().len(), 2);
    s.release(&r);
    assert!(s.usage("a", Scope::Grant, 1000, T0 + 5).unwrap().is_empty());
    assert!(s.usage("b", Scope::Grant, 1000, T0 + 5).unwrap().is_empty());
    admitted(s.admit(&l, T0 + 6).unwrap());
}

fn releasing_one_call_leaves_another_calls_unit_at_the_same_instant(s: &dyn CounterStore) {
    let l = [req("a", "g", 5, 1000)];
    let first = admitted(s.admit(&l, T0).unwrap());
    let _second = admitted(s.admit(&l, T0).unwrap());
    s.release(&first);
    let used = s.usage("a", Scope::Grant, 1000, T0).unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].used, 1);
}

/// Shared stores give each unit a token, so a release retried after a lost answer (the
/// guard does that) cannot take another call's unit. (The contract is still: release once.)
fn releasing_twice_takes_nothing_more(s: &dyn CounterStore) {
    let l = [req("a", "g", 5, 1000)];
    let first = admitted(s.admit(&l, T0).unwrap());
    let _second = admitted(s.admit(&l, T0).unwrap());
    s.release(&first);
    s.release(&first);
    assert_eq!(s.usage("a", Scope::Grant, 1000, T0).unwrap()[0].used, 1);
}

fn a_counter_named_twice_in_one_call_counts_once(s: &dyn CounterStore) {
    let l = [req("a", "g", 1, 1000), req("a", "g", 1, 1000)];
    let r = admitted(s.admit(&l, T0).unwrap());
    assert_eq!(r.units().len(), 1);
}

fn a_grown_window_still_sees_units_already_counted(s: &dyn CounterStore) {
    admitted(s.admit(&[req("a", "g", 1, 1000)], T0).unwrap());
    // Later the policy changes the window to 10s: the unit at T0 still counts at T0 + 5s.
    assert!(is_refused(
        &s.admit(&[req("a", "g", 1, 10_000)], T0 + 5_000).unwrap()
    ));
}

fn a_lowered_max_applies_to_units_already_counted(s: &dyn CounterStore) {
    for i in 0..3 {
        admitted(s.admit(&[req("a", "g", 5, 60_000)], T0 + i).unwrap());
    }
    assert!(is_refused(
        &s.admit(&[req("a", "g", 3, 60_000)], T0 + 10).unwrap()
    ));
    admitted(s.admit(&[req("a", "g", 4, 60_000)], T0 + 10).unwrap());
}

fn usage_reports_counts_and_when_room_returns(s: &dyn CounterStore) {
    let l = [req("a", "g1", 5, 1000)];
    admitted(s.admit(&l, T0 + 100).unwrap());
    admitted(s.admit(&l, T0 + 300).unwrap());
    admitted(s.admit(&[req("a", "g0", 5, 1000)], T0 + 400).unwrap());
    let u = s.usage("a", Scope::Grant, 1000, T0 + 500).unwrap();
    assert_eq!(
        u,
        vec![
            KeyUsage {
                scope_key: "g0".into(),
                used: 1,
                next_free_in_ms: Some(900)
            },
            KeyUsage {
                scope_key: "g1".into(),
                used: 2,
                next_free_in_ms: Some(600)
            }
        ]
    );
    // Later, the first unit has left the window.
    let u = s.usage("a", Scope::Grant, 1000, T0 + 1200).unwrap();
    assert_eq!(u[1].used, 1);
}

fn a_late_clock_cannot_squeeze_in_next_to_later_units(s: &dyn CounterStore) {
    let l = [req("a", "g", 1, 1000)];
    admitted(s.admit(&l, T0 + 5000).unwrap());
    assert!(is_refused(&s.admit(&l, T0 + 4500).unwrap()));
    admitted(s.admit(&l, T0 + 3999).unwrap());
}

fn scopes_keys_and_counters_are_separate_budgets(s: &dyn CounterStore) {
    let mut global = req("a", "", 1, 1000);
    global.scope = Scope::Global;
    let mut session = req("a", "g", 1, 1000);
    session.scope = Scope::Session;
    for l in [
        req("a", "g", 1, 1000),
        req("a", "h", 1, 1000),
        global,
        session,
    ] {
        admitted(s.admit(&[l], T0).unwrap());
    }
    // Names that would collide if keys were joined naively with a separator.
    admitted(s.admit(&[req("x:1", "y", 1, 1000)], T0).unwrap());
    admitted(s.admit(&[req("x", "1:y", 1, 1000)], T0).unwrap());
    admitted(s.admit(&[req("x", "u:1:y", 1, 1000)], T0).unwrap());
    assert!(is_refused(&s.admit(&[req("a", "g", 1, 1000)], T0).unwrap()));
}

fn threads_sharing_a_store_never_exceed_the_budget(s: &dyn CounterStore) {
    let budget = [req("shared", "g", 37, 60_000)];
    let admitted_total: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..6)
            .map(|t| {
                scope.spawn(move || {
                    (0..20u64)
                        .filter(|i| {
                            matches!(
                                s.admit(&budget, T0 + t * 20 + i).unwrap(),
                                Admission::Admitted(_)
                            )
                        })
                        .count()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(admitted_total, 37);
}

/// Keeps a store's server or directory alive for one test.
type Store = (Box<dyn CounterStore>, Box<dyn std::any::Any>);

fn memory_store() -> Store {
    (Box::new(MemoryStore::new()), Box::new(()))
}

fn sqlite_store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("counters.sqlite3")).unwrap();
    (Box::new(store), Box::new(dir))
}

fn redis_store() -> Store {
    let server = RedisServer::start();
    let url = server.url();
    let store = RedisStore::new(&url, &url, &unique_prefix("semantics")).unwrap();
    (Box::new(store), Box::new(server))
}

macro_rules! store_tests {
    ($module:ident, $make:ident; $($behaviour:ident),* $(,)?) => {
        mod $module {
            $(#[test] fn $behaviour() {
                let (store, _keep) = super::$make();
                super::$behaviour(&*store);
            })*
        }
    };
}

macro_rules! contract {
    ($module:ident, $make:ident) => {
        store_tests!($module, $make;
            rolling_window_admits_max_then_refuses_until_the_oldest_leaves,
            a_refused_call_takes_nothing_from_any_budget,
            release_gives_back_exactly_the_units_taken,
            releasing_one_call_leaves_another_calls_unit_at_the_same_instant,
            a_counter_named_twice_in_one_call_counts_once,
            a_grown_window_still_sees_units_already_counted,
            a_lowered_max_applies_to_units_already_counted,
            usage_reports_counts_and_when_room_returns,
            a_late_clock_cannot_squeeze_in_next_to_later_units,
            scopes_keys_and_counters_are_separate_budgets,
            threads_sharing_a_store_never_exceed_the_budget,
        );
    };
}

contract!(memory, memory_store);
contract!(sqlite, sqlite_store);
contract!(redis, redis_store);
store_tests!(sqlite_tokens, sqlite_store; releasing_twice_takes_nothing_more);
store_tests!(redis_tokens, redis_store; releasing_twice_takes_nothing_more);
