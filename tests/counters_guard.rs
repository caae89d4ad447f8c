//! [`GuardedStore`]: a store that stops answering denies limited calls (or admits them
//! uncounted with `--counters-fail open`), reports the outage once and the recovery once, and
//! gives back after recovery the units it could not give back during the outage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use toolgate::testing::policy::{
    Admission, CounterStore, FailMode, GuardedStore, KeyUsage, LimitRequest, MemoryStore,
    Reservation, Scope, StoreError, StoreErrorKind,
};
use toolgate::testing::wire::StoreStatus;

/// A memory store that can be switched off, as a shared store goes away.
#[derive(Default)]
struct Flaky {
    inner: MemoryStore,
    down: AtomicBool,
}

impl Flaky {
    fn fail(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::new(
                StoreErrorKind::Io,
                "test store switched off",
            ))
        } else {
            Ok(())
        }
    }
}

impl CounterStore for Flaky {
    fn admit(&self, limits: &[LimitRequest<'_>], now_ms: u64) -> Result<Admission, StoreError> {
        self.fail()?;
        self.inner.admit(limits, now_ms)
    }
    fn try_release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        self.fail()?;
        self.inner.release(reservation);
        Ok(())
    }
    fn usage(
        &self,
        counter: &str,
        scope: Scope,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<KeyUsage>, StoreError> {
        self.fail()?;
        self.inner.usage(counter, scope, window_ms, now_ms)
    }
}

fn guarded(fail: FailMode) -> (Arc<Flaky>, GuardedStore, Arc<Mutex<Vec<StoreStatus>>>) {
    let flaky = Arc::new(Flaky::default());
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    let store = GuardedStore::new(flaky.clone(), "test:store", fail).with_health_sink(Arc::new(
        move |s: &StoreStatus| sink.lock().unwrap().push(s.clone()),
    ));
    (flaky, store, heard)
}

fn limit(max: u64) -> LimitRequest<'static> {
    LimitRequest {
        counter: Box::leak(Box::new(Arc::from("c"))),
        scope: Scope::Grant,
        scope_key: "g",
        max,
        window_ms: 60_000,
    }
}

#[test]
fn an_outage_denies_limited_calls_and_is_reported_once_each_way() {
    let (flaky, store, heard) = guarded(FailMode::Closed);
    assert!(matches!(
        store.admit(&[limit(5)], 0),
        Ok(Admission::Admitted(_))
    ));
    flaky.down.store(true, Ordering::SeqCst);
    for t in 1..4 {
        let err = store.admit(&[limit(5)], t).unwrap_err();
        assert!(err.to_string().contains("switched off"), "{err}");
    }
    assert!(!store.is_healthy());
    flaky.down.store(false, Ordering::SeqCst);
    assert!(matches!(
        store.admit(&[limit(5)], 5),
        Ok(Admission::Admitted(_))
    ));
    let heard = heard.lock().unwrap();
    assert_eq!(heard.len(), 2, "{heard:?}");
    assert!(!heard[0].ok);
    assert_eq!(heard[0].store, "test:store");
    assert!(
        heard[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("calls with limits are denied"),
        "{:?}",
        heard[0]
    );
    assert!(heard[1].ok);
}

#[test]
fn fail_open_admits_uncounted_during_an_outage() {
    let (flaky, store, heard) = guarded(FailMode::Open);
    flaky.down.store(true, Ordering::SeqCst);
    match store.admit(&[limit(1)], 0).unwrap() {
        Admission::Admitted(r) => assert!(r.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(
        heard.lock().unwrap()[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("uncounted")
    );
    flaky.down.store(false, Ordering::SeqCst);
    assert!(
        flaky
            .inner
            .usage("c", Scope::Grant, 60_000, 0)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn units_that_could_not_be_given_back_are_given_back_after_recovery() {
    let (flaky, store, _) = guarded(FailMode::Closed);
    let Admission::Admitted(held) = store.admit(&[limit(1)], 0).unwrap() else {
        panic!("the first call fits");
    };
    // The hold is denied while the store is away: its unit cannot be given back yet.
    flaky.down.store(true, Ordering::SeqCst);
    store.release(&held);
    flaky.down.store(false, Ordering::SeqCst);
    // The next call the store answers gives it back first, then this call takes it.
    assert!(store.usage("c", Scope::Grant, 60_000, 1).is_ok());
    assert!(matches!(
        store.admit(&[limit(1)], 2),
        Ok(Admission::Admitted(_))
    ));
}
