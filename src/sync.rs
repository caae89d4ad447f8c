//! Locking a mutex whose last holder may have panicked.
//!
//! The crate's mutexes guard plain data that each critical section leaves consistent at
//! every step (a map, a counter, a queue): a panic in one task says nothing about the data,
//! and refusing every later lock would turn one bug into an outage of the whole gateway. So
//! the poison is ignored, here, once. A mutex whose data a panic could leave half-changed
//! must not use this; each caller says why its data qualifies.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poison (see the module's doc for when that is right).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    #[test]
    fn a_mutex_poisoned_by_a_panicking_holder_still_locks_with_its_data() {
        let m = Mutex::new(vec![1]);
        let poisoned = std::thread::scope(|s| {
            s.spawn(|| {
                let mut v = m.lock().unwrap();
                v.push(2);
                panic!("a holder panics");
            })
            .join()
            .is_err()
        });
        assert!(poisoned && m.is_poisoned());
        assert_eq!(*super::lock(&m), [1, 2]);
    }
}
