//! A bounded spin before a gateway's runtime threads sleep (`--spin-us`, `wrap` and `serve`).
//!
//! With one call in flight, `wrap`'s runtime thread runs out of work twice per call: once
//! after forwarding a request (until the server answers) and once after forwarding the
//! answer (until the agent sends the next request). Each time it sleeps in `epoll_wait`, and
//! on a machine whose idle CPUs halt, waking it costs tens of microseconds. The spin runs in
//! tokio's `on_thread_park` hook, just before that sleep: it polls the runtime's own epoll
//! descriptor without blocking, for at most the budget, and returns as soon as it is
//! readable, so the `epoll_wait` that follows returns at once. It runs only when the runtime
//! has just finished work, once per sleep and never longer than the budget, so an idle
//! gateway sleeps as before.
//!
//! The epoll descriptor is readable as soon as the reactor has anything to report: a
//! descriptor it watches became ready (the agent's stdin and the server's stdout in `wrap`,
//! every socket of `serve`), or another thread woke the runtime (the counter store's thread
//! answering a limited call, the blocking thread that reads a stdin that is neither a pipe
//! nor a socket, a hold decided on the websocket). Tokio does not give that descriptor out;
//! [`Spin::build`] finds it ([`Spin::watch_runtime`]).
//!
//! Until session 14, `wrap`'s spin polled its two pipes too (session 12's the pipes alone). With
//! the pipes alone, a runtime waiting only for the store's answers spun out its whole budget
//! while the answers were already there; and a stdin read on a blocking thread (a file is
//! always readable) ended every spin at its first poll.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The descriptor a spin watches and its budget; shared with the runtime's park hook.
#[derive(Debug)]
pub(crate) struct Spin {
    budget: Duration,
    /// The runtime's epoll descriptor; -1 while unset or cleared (no spin then).
    fd: AtomicI32,
    counts: SpinCounts,
}

/// What the spins did, for tests and diagnostics.
#[derive(Debug, Default)]
pub(crate) struct SpinCounts {
    /// Spins begun (one per park of the runtime while the descriptor is set).
    pub spins: AtomicU64,
    /// Spins that ended because the descriptor became readable.
    pub ready: AtomicU64,
    /// `poll` calls made.
    pub polls: AtomicU64,
}

/// How a spin ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// No budget or no descriptor: it did not spin.
    Skipped,
    /// The descriptor became readable (or reported an error).
    Ready,
    /// The budget ran out with nothing readable; the thread sleeps as it would have.
    Expired,
}

impl Spin {
    /// A spin of at most `budget` per park; `Duration::ZERO` turns it off.
    pub(crate) fn new(budget: Duration) -> Arc<Spin> {
        Arc::new(Spin {
            budget,
            fd: AtomicI32::new(-1),
            counts: SpinCounts::default(),
        })
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.budget.is_zero()
    }

    /// Watches the runtime's epoll descriptor: the first of `now` (this process's
    /// epoll descriptors, [`epoll_descriptors`], just after the runtime was built) that was
    /// not in `before` (just before). Tokio does not give its reactor's descriptor out; it
    /// keeps a duplicate of it for registering (the same epoll instance under a higher
    /// number), so more than one new one is expected, and the caller builds the runtime
    /// while no other thread can make one. When none is new, nothing is watched and no
    /// spin begins (the gateway sleeps at once, as with `--spin-us 0`), and it says so. The
    /// descriptor must stay open as long as the runtime whose park hook spins: it is the
    /// runtime's.
    pub(crate) fn watch_runtime(&self, before: &[RawFd], now: &[RawFd]) -> bool {
        match now.iter().filter(|fd| !before.contains(fd)).min() {
            Some(&fd) => {
                self.fd.store(fd, Ordering::Relaxed);
                true
            }
            None => {
                tracing::debug!("spin: the runtime's epoll descriptor not found; no spin");
                false
            }
        }
    }

    /// Stops spinning: the session is over and the runtime about to be shut down.
    pub(crate) fn clear(&self) {
        self.fd.store(-1, Ordering::Relaxed);
    }

    /// Builds `builder`'s runtime with this spin in its park hook (when the spin has a
    /// budget), watching the runtime's own epoll descriptor ([`Spin::watch_runtime`]). The
    /// caller runs no other thread that could open an epoll descriptor meanwhile.
    pub(crate) fn build(
        self: &Arc<Self>,
        builder: &mut tokio::runtime::Builder,
    ) -> std::io::Result<tokio::runtime::Runtime> {
        if !self.enabled() {
            return builder.build();
        }
        let spin = Arc::clone(self);
        // Runs each time a runtime thread has no more work, just before it sleeps.
        builder.on_thread_park(move || {
            spin.spin();
        });
        let before = epoll_descriptors();
        let runtime = builder.build()?;
        self.watch_runtime(&before, &epoll_descriptors());
        Ok(runtime)
    }

    pub(crate) fn counts(&self) -> &SpinCounts {
        &self.counts
    }

    /// Polls the watched descriptor until it is readable or the budget is spent. Called by
    /// the runtime's park hook; never blocks longer than the budget.
    pub(crate) fn spin(&self) -> Outcome {
        if self.budget.is_zero() {
            return Outcome::Skipped;
        }
        let mut watched = libc::pollfd {
            fd: self.fd.load(Ordering::Relaxed),
            events: libc::POLLIN,
            revents: 0,
        };
        if watched.fd < 0 {
            return Outcome::Skipped;
        }
        self.counts.spins.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let mut polls = 0u64;
        let outcome = loop {
            polls += 1;
            // SAFETY: `watched` is one valid `pollfd`; a timeout of 0 makes `poll` return at
            // once. A descriptor closed meanwhile yields POLLNVAL, which ends the spin like
            // any other event.
            let n = unsafe { libc::poll(&mut watched, 1, 0) };
            if n != 0 {
                // Readable, or `poll` failed: either way stop spinning; the runtime finds
                // out which.
                break Outcome::Ready;
            }
            if start.elapsed() >= self.budget {
                break Outcome::Expired;
            }
            // Give the CPU to whatever else is ready to run on it: the server or the agent
            // this thread is waiting for may have been woken onto this very CPU (with a
            // busy loop here they would wait for the whole budget; measured: under
            // SCHED_FIFO every spin ran out, adding twice the budget to each call).
            std::thread::yield_now();
        };
        self.counts.polls.fetch_add(polls, Ordering::Relaxed);
        if outcome == Outcome::Ready {
            self.counts.ready.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }
}

/// A timer of the runtime kept due within `period`, for as long as the guard lives
/// ([`keep_a_timer_due`]).
#[derive(Debug)]
pub(crate) struct TimerKept(tokio::task::JoinHandle<()>);

impl Drop for TimerKept {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one of the current runtime's timers due within `period` (a task that ticks), so
/// that arming a timer further off never wakes the runtime.
///
/// Tokio's time driver wakes its runtime (a write to the reactor's wake-up descriptor)
/// whenever a timer is armed earlier than the wake the driver planned when it last went to
/// sleep, even from the runtime's own running thread, which needs no waking. `serve`'s HTTP
/// server arms a header timer (`--header-timeout`) each time a kept-alive connection starts
/// waiting for its next request. While a call waits on its upstream, no such timer is armed
/// (the request's head is in), so the driver planned a far wake, and arming the next header
/// timer after the answer woke the runtime at every call. That wake-up ended the spin before
/// sleeping at its first poll, and tokio runs the park hook once per sleep, not again after
/// such a wake: `serve` slept at once after every answer instead of spinning (measured:
/// `strace` counted an eventfd write per call, none with a 60 s header timeout). With a
/// timer always due within `period`, shorter than the header timeout, the planned wake is
/// always nearer than a new header timer, and arming it wakes nothing. An idle gateway
/// wakes once per `period` for it.
pub(crate) fn keep_a_timer_due(period: Duration) -> TimerKept {
    TimerKept(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
        }
    }))
}

/// This process's epoll descriptors (`/proc/self/fd` entries that are an `[eventpoll]`),
/// in no particular order; empty where `/proc` cannot be read.
pub(crate) fn epoll_descriptors() -> Vec<RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventpoll]")
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    fn pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
        std::io::pipe().unwrap()
    }

    /// A spin of `budget` watching `fd` (a pipe's end here, where a gateway has its
    /// runtime's descriptor: `poll` treats both alike).
    fn watching(budget: Duration, fd: RawFd) -> Arc<Spin> {
        let spin = Spin::new(budget);
        assert!(spin.watch_runtime(&[], &[fd]));
        spin
    }

    #[test]
    fn no_budget_never_spins() {
        let (rx, _tx) = pipe();
        let spin = watching(Duration::ZERO, rx.as_raw_fd());
        assert_eq!(spin.spin(), Outcome::Skipped);
        assert_eq!(spin.counts().polls.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn nothing_watched_never_spins() {
        let spin = Spin::new(Duration::from_millis(50));
        assert_eq!(spin.spin(), Outcome::Skipped);
        let (rx, _tx) = pipe();
        let spin = watching(Duration::from_millis(50), rx.as_raw_fd());
        spin.clear();
        assert_eq!(spin.spin(), Outcome::Skipped);
        assert_eq!(spin.counts().spins.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn readable_descriptor_ends_the_spin_at_the_first_poll() {
        // A budget far longer than any test: only readiness can end it after one poll.
        let (rx, mut tx) = pipe();
        let spin = watching(Duration::from_secs(3600), rx.as_raw_fd());
        tx.write_all(b"{}\n").unwrap();
        assert_eq!(spin.spin(), Outcome::Ready);
        assert_eq!(spin.counts().polls.load(Ordering::Relaxed), 1);
        assert_eq!(spin.counts().ready.load(Ordering::Relaxed), 1);
    }

    /// Whether a spin built with its runtime ([`Spin::build`]) runs out its budget while
    /// nothing happens after `set_up`, and ends at once after `wake`. Tests run on threads of
    /// one process: another test may make a runtime while this one builds its own, and its
    /// descriptor be taken for this one's. Such a try is told by the spins (nothing to report
    /// before the wake, something after) and made again; a spin that never watched the right
    /// descriptor fails every try.
    fn ends_once_woken<S>(
        set_up: impl Fn(&tokio::runtime::Runtime) -> S,
        wake: impl Fn(&tokio::runtime::Runtime, &mut S),
    ) -> bool {
        (0..10).any(|_| {
            let spin = Spin::new(Duration::from_millis(300));
            let runtime = spin
                .build(tokio::runtime::Builder::new_current_thread().enable_all())
                .unwrap();
            assert!(
                spin.fd.load(Ordering::Relaxed) >= 0,
                "no runtime descriptor"
            );
            let mut state = set_up(&runtime);
            if spin.spin() != Outcome::Expired {
                return false;
            }
            wake(&runtime, &mut state);
            let start = Instant::now();
            spin.spin() == Outcome::Ready && start.elapsed() < Duration::from_millis(250)
        })
    }

    #[test]
    fn the_runtime_waking_ends_the_spin() {
        // Another thread hands the runtime a task, as the store thread answers a call (or
        // the thread that reads a stdin that is a file hands a line over): the runtime's
        // reactor is woken, and the spin ends at once.
        let works = ends_once_woken(
            |_| (),
            |runtime, ()| {
                let handle = runtime.handle().clone();
                std::thread::spawn(move || drop(handle.spawn(async {})))
                    .join()
                    .unwrap();
            },
        );
        assert!(works, "the spin never saw its runtime woken");
    }

    #[test]
    fn a_pipe_the_runtime_reads_ends_the_spin() {
        // What `wrap` waits on (the agent's stdin, the server's stdout) is registered in the
        // runtime's epoll: data arriving there makes the runtime's descriptor readable, so
        // the spin needs no descriptor of the pipes.
        let works = ends_once_woken(
            |runtime| {
                let (rx, tx) = pipe();
                let rx = std::os::fd::OwnedFd::from(rx);
                let receiver = runtime.block_on(async {
                    tokio::net::unix::pipe::Receiver::from_owned_fd(rx).unwrap()
                });
                (receiver, tx)
            },
            |_, (_receiver, tx)| tx.write_all(b"{}\n").unwrap(),
        );
        assert!(works, "the spin never saw data on a pipe the runtime reads");
    }

    /// Whether arming a timer 5 s off wakes `runtime`: the spin of the sleep that follows
    /// ends at once (woken) or runs out (not). The runtime sleeps once first with a 1 ms
    /// timer, so that its driver plans its next wake from the timers left.
    async fn arming_a_far_timer_wakes(spin: &Spin) -> bool {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let _ = tx.send(());
        });
        let (spins, ready) = (
            spin.counts.spins.load(Ordering::Relaxed),
            spin.counts.ready.load(Ordering::Relaxed),
        );
        let far = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(far);
        // Armed here, as hyper arms its header timer: by polling it once.
        std::future::poll_fn(|cx| {
            let _ = far.as_mut().poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
        tokio::select! {
            biased;
            () = &mut far => unreachable!("5 s passed"),
            _ = rx => {}
        }
        later.join().unwrap();
        assert!(
            spin.counts.spins.load(Ordering::Relaxed) > spins,
            "the runtime never slept"
        );
        spin.counts.ready.load(Ordering::Relaxed) > ready
    }

    #[test]
    fn with_a_timer_kept_due_arming_a_far_one_does_not_wake_the_runtime() {
        // What `serve` arms per request (a header timer) once its driver planned a far wake:
        // tokio wakes the runtime for it, which would end the spin at once; with a timer kept
        // due within a second, it does not. One runtime for both halves, so that the first
        // also shows the spin watches the right descriptor (see `ends_once_woken`; retried).
        let works = (0..10).any(|_| {
            let spin = Spin::new(Duration::from_millis(100));
            let runtime = spin
                .build(
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all(),
                )
                .unwrap();
            // `serve`'s runtime: one worker, the calls' tasks on it (a current-thread
            // runtime's `block_on` future is woken through the descriptor, so it cannot tell).
            let spin = Arc::clone(&spin);
            runtime.block_on(async move {
                let both = tokio::spawn(async move {
                    if !arming_a_far_timer_wakes(&spin).await {
                        return false;
                    }
                    let _kept = keep_a_timer_due(Duration::from_secs(1));
                    !arming_a_far_timer_wakes(&spin).await
                });
                both.await.unwrap()
            })
        });
        assert!(
            works,
            "arming a far timer woke the runtime despite the kept one"
        );
    }

    #[test]
    fn the_runtimes_descriptor_is_the_first_new_one() {
        let spin = Spin::new(Duration::from_micros(1));
        assert!(!spin.watch_runtime(&[3, 4], &[3, 4]));
        assert_eq!(spin.spin(), Outcome::Skipped);
        assert!(spin.watch_runtime(&[3, 4], &[4, 9, 3, 7]));
        assert_eq!(spin.fd.load(Ordering::Relaxed), 7);
        // Once cleared, no spin begins.
        spin.clear();
        assert_eq!(spin.spin(), Outcome::Skipped);
    }

    #[test]
    fn a_silent_descriptor_expires_and_the_thread_goes_on() {
        // Nothing ever becomes readable: the spin gives up by itself (the caller then sleeps
        // in the reactor as it would have).
        let (rx, _tx) = pipe();
        let spin = watching(Duration::from_micros(200), rx.as_raw_fd());
        assert_eq!(spin.spin(), Outcome::Expired);
        assert!(spin.counts().polls.load(Ordering::Relaxed) >= 1);
        assert_eq!(spin.counts().ready.load(Ordering::Relaxed), 0);
    }
}
