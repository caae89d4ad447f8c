//! [`MemoryStore`]: the in-process counter store, and the reference for the others.
//!
//! Exact rolling windows (the time of every counted unit) under one lock. It forgets
//! everything when the process exits: `toolgate demo`, `explain` and `--counters memory` use
//! it; gateways default to the SQLite store so that limits survive restarts.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Mutex;

use super::{
    Admission, CounterKey, CounterStore, KeyUsage, LimitRequest, Reservation, ReservedUnit, Scope,
    StoreError,
};

/// How many admissions between sweeps of idle keys.
const SWEEP_EVERY: u64 = 4096;

/// The in-process store: exact rolling windows (the time of every counted unit), one lock.
///
/// Per key it keeps units for twice the largest window ever requested for that key (so a
/// budget whose window grows still sees the calls already counted, and late-arriving clocks
/// still see every unit that could share a span with them). Idle keys are swept now and then.
/// Budgets are found by one keyed hash of the borrowed names, so admission allocates only
/// for a budget's first unit and for the reservation.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Keyed hash of (counter, scope, scope key) → the budgets with that hash. Hashing the
    /// borrowed names once per lookup (with the process's random keys, so callers cannot aim
    /// collisions) keeps admission free of allocations and repeated hashing.
    slots: HashMap<u64, Vec<(CounterKey, Slot)>, BuildHasherDefault<Prehashed>>,
    hasher: RandomState,
    admissions: u64,
    latest_ms: u64,
}

/// The map's keys are already hashes; pass them through.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// Times of counted units, ascending.
    times: VecDeque<u64>,
    /// The largest window ever requested for this key.
    retain_ms: u64,
    /// The latest `now` seen for this key.
    latest_ms: u64,
}

impl Slot {
    fn prune(&mut self, latest_ms: u64) {
        let Some(horizon) = latest_ms.checked_sub(self.retain_ms.saturating_mul(2)) else {
            return;
        };
        while self.times.front().is_some_and(|&t| t <= horizon) {
            self.times.pop_front();
        }
    }

    /// The time a unit taken at `now_ms` is counted at. A clock running more than a
    /// retained span behind this key's latest is moved forward, because older units may
    /// already be forgotten.
    fn effective_now(&self, now_ms: u64) -> u64 {
        now_ms.max(self.latest_ms.saturating_sub(self.retain_ms))
    }

    /// `None` if one more unit fits at `now_ms`; else when it will (ms from now, >= 1).
    /// Counts units within `window_ms` of `now_ms` on either side.
    fn check(&self, now_ms: u64, max: u64, window_ms: u64) -> Option<u64> {
        let high = now_ms.saturating_add(window_ms);
        let start = first_in_window(&self.times, now_ms, window_ms);
        let end = if self.times.back().is_some_and(|&t| t < high) {
            self.times.len()
        } else {
            self.times.partition_point(|&t| t < high)
        };
        let used = (end - start) as u64;
        if used < max {
            return None;
        }
        // The (used - max + 1)-th oldest unit must leave the window.
        let idx = start + (used - max) as usize;
        let leaves_at = self.times[idx].saturating_add(window_ms);
        Some(leaves_at.saturating_sub(now_ms).max(1))
    }

    fn insert(&mut self, at_ms: u64) {
        if self.times.back().is_none_or(|&t| t <= at_ms) {
            self.times.push_back(at_ms);
        } else {
            let pos = self.times.partition_point(|&t| t <= at_ms);
            self.times.insert(pos, at_ms);
        }
    }

    fn remove(&mut self, at_ms: u64) {
        let pos = self.times.partition_point(|&t| t < at_ms);
        if self.times.get(pos) == Some(&at_ms) {
            self.times.remove(pos);
        }
    }
}

/// Index of the first unit still inside a window of `window_ms` ending at `now_ms`
/// (counted at `t` and `now - window < t`).
fn first_in_window(times: &VecDeque<u64>, now_ms: u64, window_ms: u64) -> usize {
    match now_ms.checked_sub(window_ms) {
        Some(low) => times.partition_point(|&t| t <= low),
        None => 0,
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock, and the data stays consistent at every
        // step, so a poisoned lock is still safe to use.
        crate::sync::lock(&self.inner)
    }
}

impl Inner {
    fn hash(&self, counter: &str, scope: Scope, scope_key: &str) -> u64 {
        self.hasher.hash_one((counter, scope, scope_key))
    }

    fn slot(&mut self, limit: &LimitRequest<'_>) -> &mut Slot {
        let h = self.hash(limit.counter, limit.scope, limit.scope_key);
        let bucket = self.slots.entry(h).or_default();
        let found = bucket.iter().position(|(k, _)| {
            *k.counter == **limit.counter
                && k.scope == limit.scope
                && k.scope_key == limit.scope_key
        });
        let i = match found {
            Some(i) => i,
            None => {
                bucket.push((limit.key(), Slot::default()));
                bucket.len() - 1
            }
        };
        &mut bucket[i].1
    }

    fn existing_slot(&mut self, key: &CounterKey) -> Option<&mut Slot> {
        let h = self.hash(&key.counter, key.scope, &key.scope_key);
        self.slots
            .get_mut(&h)?
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, slot)| slot)
    }

    fn sweep(&mut self) {
        let latest = self.latest_ms;
        self.slots.retain(|_, bucket| {
            bucket.retain_mut(|(_, slot)| {
                slot.prune(latest.max(slot.latest_ms));
                !slot.times.is_empty()
            });
            !bucket.is_empty()
        });
    }
}

impl CounterStore for MemoryStore {
    fn may_block(&self) -> bool {
        false
    }

    fn admit(&self, limits: &[LimitRequest<'_>], now_ms: u64) -> Result<Admission, StoreError> {
        let mut inner = self.lock();
        inner.latest_ms = inner.latest_ms.max(now_ms);
        let mut units = super::Units::new();
        for (index, limit) in limits.iter().enumerate() {
            if limits[..index].iter().any(|l| l.same_budget(limit)) {
                continue;
            }
            let slot = inner.slot(limit);
            slot.retain_ms = slot.retain_ms.max(limit.window_ms);
            let at = slot.effective_now(now_ms);
            slot.latest_ms = slot.latest_ms.max(at);
            slot.prune(slot.latest_ms);
            if let Some(retry_after_ms) = slot.check(at, limit.max, limit.window_ms) {
                // All or nothing: give back what this call took from earlier budgets.
                for unit in &units {
                    if let Some(slot) = inner.existing_slot(&unit.key) {
                        slot.remove(unit.at_ms);
                    }
                }
                return Ok(Admission::Refused {
                    index,
                    retry_after_ms,
                });
            }
            // Taken now, under the lock; undone above if a later budget is full.
            slot.insert(at);
            units.push(ReservedUnit {
                key: limit.key(),
                at_ms: at,
                token: 0,
            });
        }
        inner.admissions += 1;
        if inner.admissions.is_multiple_of(SWEEP_EVERY) {
            inner.sweep();
        }
        Ok(Admission::Admitted(Reservation { units }))
    }

    fn try_release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for unit in &reservation.units {
            if let Some(slot) = inner.existing_slot(&unit.key) {
                slot.remove(unit.at_ms);
            }
        }
        Ok(())
    }

    fn usage(
        &self,
        counter: &str,
        scope: Scope,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<KeyUsage>, StoreError> {
        let inner = self.lock();
        let mut out: Vec<KeyUsage> = inner
            .slots
            .values()
            .flatten()
            .filter(|(k, _)| &*k.counter == counter && k.scope == scope)
            .filter_map(|(k, slot)| {
                let start = first_in_window(&slot.times, now_ms, window_ms);
                let used = (slot.times.len() - start) as u64;
                (used > 0).then(|| KeyUsage {
                    scope_key: k.scope_key.to_string(),
                    used,
                    next_free_in_ms: slot
                        .times
                        .get(start)
                        .map(|&t| super::leaves_in(t, window_ms, now_ms)),
                })
            })
            .collect();
        out.sort_by(|a, b| a.scope_key.cmp(&b.scope_key));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Names live as long as the test: leak them to borrow with `'static`.
    fn req(counter: &str, key: &str, max: u64, window_ms: u64) -> LimitRequest<'static> {
        let counter: &'static Arc<str> = Box::leak(Box::new(Arc::from(counter)));
        LimitRequest {
            counter,
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

    #[test]
    fn rolling_window_admits_max_then_refuses_until_the_oldest_leaves() {
        let s = MemoryStore::new();
        let l = [req("c", "g", 2, 1000)];
        admitted(s.admit(&l, 100).unwrap());
        admitted(s.admit(&l, 600).unwrap());
        assert_eq!(
            s.admit(&l, 1099).unwrap(),
            Admission::Refused {
                index: 0,
                retry_after_ms: 1
            }
        );
        admitted(s.admit(&l, 1100).unwrap());
        assert_eq!(
            s.admit(&l, 1200).unwrap(),
            Admission::Refused {
                index: 0,
                retry_after_ms: 400
            }
        );
    }

    #[test]
    fn a_refused_call_takes_nothing_from_any_budget() {
        let s = MemoryStore::new();
        let a = req("a", "g", 5, 1000);
        let b = req("b", "g", 1, 1000);
        admitted(s.admit(std::slice::from_ref(&b), 0).unwrap());
        let r = s.admit(&[a, b], 10).unwrap();
        assert!(matches!(r, Admission::Refused { index: 1, .. }));
        assert!(s.usage("a", Scope::Grant, 1000, 10).unwrap().is_empty());
    }

    #[test]
    fn release_gives_back_exactly_the_units_taken() {
        let s = MemoryStore::new();
        let l = [req("a", "g", 1, 1000), req("b", "g", 3, 1000)];
        let r = admitted(s.admit(&l, 5).unwrap());
        assert_eq!(r.units().len(), 2);
        s.release(&r);
        assert!(s.usage("a", Scope::Grant, 1000, 5).unwrap().is_empty());
        assert!(s.usage("b", Scope::Grant, 1000, 5).unwrap().is_empty());
        admitted(s.admit(&l, 6).unwrap());
    }

    #[test]
    fn a_counter_named_twice_in_one_call_counts_once() {
        let s = MemoryStore::new();
        let l = [req("a", "g", 1, 1000), req("a", "g", 1, 1000)];
        let r = admitted(s.admit(&l, 0).unwrap());
        assert_eq!(r.units().len(), 1);
    }

    #[test]
    fn a_grown_window_still_sees_units_already_counted() {
        let s = MemoryStore::new();
        admitted(s.admit(&[req("a", "g", 1, 1000)], 0).unwrap());
        // Later the policy changes the window to 10s: the unit at 0 still counts at 5s.
        assert!(matches!(
            s.admit(&[req("a", "g", 1, 10_000)], 5_000).unwrap(),
            Admission::Refused { .. }
        ));
    }

    #[test]
    fn usage_reports_counts_and_when_room_returns() {
        let s = MemoryStore::new();
        let l = [req("a", "g1", 5, 1000)];
        admitted(s.admit(&l, 100).unwrap());
        admitted(s.admit(&l, 300).unwrap());
        let u = s.usage("a", Scope::Grant, 1000, 500).unwrap();
        assert_eq!(
            u,
            vec![KeyUsage {
                scope_key: "g1".into(),
                used: 2,
                next_free_in_ms: Some(600)
            }]
        );
    }

    #[test]
    fn a_late_clock_cannot_squeeze_in_next_to_later_units() {
        let s = MemoryStore::new();
        let l = [req("a", "g", 1, 1000)];
        admitted(s.admit(&l, 5000).unwrap());
        assert!(matches!(
            s.admit(&l, 4500).unwrap(),
            Admission::Refused { .. }
        ));
        admitted(s.admit(&l, 3999).unwrap());
    }

    #[test]
    fn idle_budgets_are_forgotten_once_out_of_their_windows() {
        let s = MemoryStore::new();
        // One call each from many sessions, long ago...
        for i in 0..1000u64 {
            let key = format!("session-{i}");
            admitted(s.admit(&[req("a", &key, 1, 1000)], i).unwrap());
        }
        // ...then one busy session for long enough to trigger sweeps.
        for i in 0..(2 * SWEEP_EVERY) {
            admitted(
                s.admit(&[req("b", "busy", u64::MAX, 1000)], 100_000 + i)
                    .unwrap(),
            );
        }
        let inner = s.lock();
        let budgets: usize = inner.slots.values().map(Vec::len).sum();
        assert_eq!(budgets, 1);
    }
}
