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
//! gateway sleeps as before (an idle `serve` wakes once a second for the timer it keeps due,
//! [`keep_a_timer_due`], and spins once then).
//!
//! The epoll descriptor is readable as soon as the reactor has anything to report: a
//! descriptor it watches became ready (the agent's stdin and the server's stdout in `wrap`,
//! every socket of `serve`), or another thread woke the runtime (the counter store's thread
//! answering a limited call, the blocking thread that reads a stdin that is neither a pipe
//! nor a socket, a hold decided on the websocket). Tokio does not give that descriptor out;
//! [`Spin::build`] finds it ([`Spin::watch_runtime`]).
//!
//! The budget adapts ([`Window`]): a spin starts at 50 µs, grows while the work it gave up
//! on came soon after, up to `--spin-us`, and shrinks back when work comes later than that.
//!
//! Until session 14, `wrap`'s spin polled its two pipes too (session 12's the pipes alone). With
//! the pipes alone, a runtime waiting only for the store's answers spun out its whole budget
//! while the answers were already there; and a stdin read on a blocking thread (a file is
//! always readable) ended every spin at its first poll.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// How long a spin may last, adapted to the waits it has seen, as Linux's "haltpoll" idle
/// governor adapts how long an idle virtual CPU polls before it halts.
///
/// It starts at [`Window::START`] (or the cap, when that is lower). When a spin ran out and
/// the thread slept, what woke it came some time after the spin began: within the cap, a
/// longer spin would have caught it, and the window doubles, up to the cap; later than the
/// cap, no spin would have, and the window halves, down to where it started. So a gateway
/// whose work comes further apart than the cap spins as with a fixed window of `START`,
/// and one whose work comes in gaps shorter than the cap learns, within a few gaps, to spin
/// through them. It never spins longer than the cap, nor at all with a cap of zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    floor: Duration,
    cap: Duration,
    now: Duration,
}

impl Window {
    /// Where a window starts, and the least it shrinks to.
    pub(crate) const START: Duration = Duration::from_micros(50);

    /// A window of at most `cap` (`--spin-us`); `Duration::ZERO` never spins.
    pub(crate) fn new(cap: Duration) -> Window {
        let floor = Window::START.min(cap);
        Window {
            floor,
            cap,
            now: floor,
        }
    }

    /// A window that stays at `budget` (tests that need a long spin).
    #[cfg(test)]
    pub(crate) fn steady(budget: Duration) -> Window {
        Window {
            floor: budget,
            cap: budget,
            now: budget,
        }
    }

    /// How long the next spin may last.
    pub(crate) fn budget(&self) -> Duration {
        self.now
    }

    /// The last spin ran out, and what woke the thread after it came `waited` after the
    /// spin began.
    pub(crate) fn missed(&mut self, waited: Duration) {
        self.now = if waited <= self.cap {
            (self.now * 2).min(self.cap)
        } else {
            (self.now / 2).max(self.floor)
        };
    }
}

thread_local! {
    /// When this thread's last spin began, if it ran out: set by the park hook, taken by
    /// the unpark hook ([`Spin::woke`]). A thread parks one runtime at a time.
    static RAN_OUT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The descriptor a spin watches and its window; shared with the runtime's park hooks.
#[derive(Debug)]
pub(crate) struct Spin {
    /// Shared by the runtime's threads (one, unless `serve --threads`). Three durations
    /// replaced whole under the lock, consistent at every step: a panic cannot leave it
    /// half-changed (`crate::sync`).
    window: Mutex<Window>,
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
    /// No window or no descriptor: it did not spin.
    Skipped,
    /// The descriptor became readable (or reported an error).
    Ready,
    /// The budget ran out with nothing readable; the thread sleeps as it would have.
    Expired,
}

impl Spin {
    /// A spin of at most `cap` per park, adapting ([`Window`]); `Duration::ZERO` turns it
    /// off.
    pub(crate) fn new(cap: Duration) -> Arc<Spin> {
        Spin::with_window(Window::new(cap))
    }

    /// A spin of `window` per park ([`Spin::new`]; tests give a steady one).
    pub(crate) fn with_window(window: Window) -> Arc<Spin> {
        Arc::new(Spin {
            window: Mutex::new(window),
            fd: AtomicI32::new(-1),
            counts: SpinCounts::default(),
        })
    }

    pub(crate) fn enabled(&self) -> bool {
        !lock(&self.window).cap.is_zero()
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

    /// Builds `builder`'s runtime with this spin in its park hooks (when the spin has a
    /// window), watching the runtime's own epoll descriptor ([`Spin::watch_runtime`]). The
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
        let spin = Arc::clone(self);
        // Runs each time it goes on: after a spin that ran out, when it has slept.
        builder.on_thread_unpark(move || spin.woke());
        let before = epoll_descriptors();
        let runtime = builder.build()?;
        self.watch_runtime(&before, &epoll_descriptors());
        Ok(runtime)
    }

    pub(crate) fn counts(&self) -> &SpinCounts {
        &self.counts
    }

    /// How long the next spin may last.
    pub(crate) fn budget(&self) -> Duration {
        lock(&self.window).budget()
    }

    /// Polls the watched descriptor until it is readable or the window is spent. Called by
    /// the runtime's park hook; never blocks longer than the window.
    pub(crate) fn spin(&self) -> Outcome {
        RAN_OUT.set(None);
        let budget = self.budget();
        if budget.is_zero() {
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
        let readable = look_within(start, budget, || {
            polls += 1;
            // SAFETY: `watched` is one valid `pollfd`; a timeout of 0 makes `poll` return at
            // once. A descriptor closed meanwhile yields POLLNVAL, which ends the spin like
            // any other event. Readable, or `poll` failed: either way stop spinning; the
            // runtime finds out which.
            (unsafe { libc::poll(&mut watched, 1, 0) } != 0).then_some(())
        });
        self.counts.polls.fetch_add(polls, Ordering::Relaxed);
        if readable.is_some() {
            self.counts.ready.fetch_add(1, Ordering::Relaxed);
            Outcome::Ready
        } else {
            RAN_OUT.set(Some(start));
            Outcome::Expired
        }
    }

    /// The thread goes on after a sleep: when this thread's last spin ran out, the window
    /// learns how long after its start the thread was woken ([`Window::missed`]). Called by
    /// the runtime's unpark hook.
    pub(crate) fn woke(&self) {
        if let Some(start) = RAN_OUT.take() {
            lock(&self.window).missed(start.elapsed());
        }
    }
}

/// Calls `look` until it finds something or `budget` has passed since `start`: what it found,
/// or `None` when the budget ran out. Between looks the CPU goes to whatever else is ready to
/// run on it: the server or the agent a gateway's thread waits for may have been woken onto
/// this very CPU (with a busy loop they would wait for the whole budget; measured: under
/// SCHED_FIFO every spin ran out, adding twice the budget to each call). It looks at least
/// once.
pub(crate) fn look_within<T>(
    start: Instant,
    budget: Duration,
    mut look: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(found) = look() {
            return Some(found);
        }
        if start.elapsed() >= budget {
            return None;
        }
        std::thread::yield_now();
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

    /// A spin of a steady `budget` watching `fd` (a pipe's end here, where a gateway has its
    /// runtime's descriptor: `poll` treats both alike).
    fn watching(budget: Duration, fd: RawFd) -> Arc<Spin> {
        let spin = Spin::with_window(Window::steady(budget));
        assert!(spin.watch_runtime(&[], &[fd]));
        spin
    }

    #[test]
    fn a_window_grows_while_work_comes_within_its_cap_and_shrinks_back_when_later() {
        let us = Duration::from_micros;
        let mut window = Window::new(us(200));
        assert_eq!(window.budget(), Window::START);
        // Woken within the cap: a longer spin would have caught it.
        window.missed(us(120));
        assert_eq!(window.budget(), us(100));
        window.missed(us(190));
        assert_eq!(window.budget(), us(200));
        window.missed(us(200));
        assert_eq!(window.budget(), us(200), "never past the cap");
        // Woken later than any spin could wait.
        window.missed(us(201));
        assert_eq!(window.budget(), us(100));
        window.missed(Duration::from_secs(2));
        assert_eq!(window.budget(), us(50));
        window.missed(Duration::from_secs(2));
        assert_eq!(window.budget(), us(50), "never below where it started");
    }

    #[test]
    fn a_cap_below_the_start_or_zero_bounds_the_window() {
        let us = Duration::from_micros;
        let mut window = Window::new(us(20));
        assert_eq!(window.budget(), us(20));
        window.missed(us(5));
        assert_eq!(window.budget(), us(20));
        let mut off = Window::new(Duration::ZERO);
        off.missed(us(5));
        off.missed(Duration::from_secs(1));
        assert_eq!(off.budget(), Duration::ZERO);
    }

    #[test]
    fn a_spin_that_ran_out_learns_when_the_thread_was_woken() {
        let (rx, mut tx) = pipe();
        let spin = Spin::new(Duration::from_millis(200));
        assert!(spin.watch_runtime(&[], &[rx.as_raw_fd()]));
        // Ran out, and woken soon after (within the cap): the window doubles.
        assert_eq!(spin.spin(), Outcome::Expired);
        spin.woke();
        assert_eq!(spin.budget(), Window::START * 2);
        // Woken again without a spin that ran out between: nothing to learn.
        spin.woke();
        assert_eq!(spin.budget(), Window::START * 2);
        // Ran out, and woken later than the cap: it halves.
        assert_eq!(spin.spin(), Outcome::Expired);
        std::thread::sleep(Duration::from_millis(300));
        spin.woke();
        assert_eq!(spin.budget(), Window::START);
        // A spin that saw its work come teaches nothing either.
        tx.write_all(b"{}\n").unwrap();
        assert_eq!(spin.spin(), Outcome::Ready);
        spin.woke();
        assert_eq!(spin.budget(), Window::START);
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
            let spin = Spin::with_window(Window::steady(Duration::from_millis(300)));
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
            let spin = Spin::with_window(Window::steady(Duration::from_millis(100)));
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
