//! Waiting in tests for something another process or thread does: poll until it holds, and
//! past a deadline fail saying what was waited for and what was seen instead. The one loop
//! every test that polls uses, so no test can wait without a deadline or fail in silence.
//!
//! Test crates without `mod support;` include this file alone (`#[path]`).

use std::time::{Duration, Instant};

/// How often a condition is polled: often enough that a test does not idle, rarely enough
/// that polling (reading a log, asking a process) is not itself the load.
const EVERY: Duration = Duration::from_millis(20);

/// Polls `poll` until it gives `Ok(value)` and returns the value. `Err(seen)` means not yet;
/// if `within` passes first, the test fails saying it waited for `what`, with the last
/// `seen` (a log, the last answer).
#[track_caller]
pub fn wait_for<T>(what: &str, within: Duration, mut poll: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        let seen = match poll() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            if seen.is_empty() {
                panic!("waited {within:?} in vain for {what}");
            }
            panic!("waited {within:?} in vain for {what}; {seen}");
        }
        std::thread::sleep(EVERY);
    }
}

/// Polls `ready` until it holds; past `within` the test fails saying it waited for `what`.
#[track_caller]
pub fn wait_until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    wait_for(what, within, || {
        if ready() { Ok(()) } else { Err(String::new()) }
    });
}

/// Awaits `future` for at most `within`; past it the test fails saying it waited for `what`.
/// For async tests: every `.await` on a peer goes through this (or a helper that does).
#[track_caller]
pub fn within<F: std::future::Future>(
    what: &str,
    within: Duration,
    future: F,
) -> impl std::future::Future<Output = F::Output> {
    let what = what.to_owned();
    let caller = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(within, future).await {
            Ok(output) => output,
            Err(_) => panic!("waited {within:?} in vain for {what} (at {caller})"),
        }
    }
}
