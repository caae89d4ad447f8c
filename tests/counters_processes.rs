//! Exactness of the default store across processes: several processes (this binary, started
//! again with `--child`) share one SQLite file, each with two threads queueing admissions
//! through its own [`StoreWorker`], so every process decides batches of calls in one
//! transaction while the others wait for the file's lock. Whatever the arrival times, no span
//! of `window` may hold more than `max` admitted units, and every kept call took a unit from
//! both of its budgets.
//!
//! A plain `main` (no test harness) so that the same binary can be the child processes; the
//! property runs through proptest's runner with a fixed number of cases.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use toolgate::testing::policy::{Admission, OwnedLimit, Scope, SqliteStore, StoreWorker};

/// A realistic clock: SQLite sees real magnitudes.
const T0: u64 = 1_764_000_000_000;

fn limit(counter: &str, max: u64, window_ms: u64) -> OwnedLimit {
    OwnedLimit {
        counter: Arc::from(counter),
        scope: Scope::Global,
        scope_key: Default::default(),
        max,
        window_ms,
    }
}

/// The largest number of `times` inside any half-open span of length `window`.
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

/// One child process: `--child FILE MAX WINDOW RELEASE_EVERY`, one line of arrival times per
/// thread on stdin (comma-separated offsets from [`T0`]). Prints `a AT` and `b AT` for every
/// unit it kept.
fn child(args: &[String]) -> Result<(), String> {
    let [file, max, window, release_every] = args else {
        return Err(format!("child: expected 4 arguments, got {args:?}"));
    };
    let number = |s: &String| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
    let (max, window, release_every) = (number(max)?, number(window)?, number(release_every)?);
    let store = SqliteStore::open(std::path::Path::new(file)).map_err(|e| e.to_string())?;
    let worker = StoreWorker::new(Arc::new(store));
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input).map_err(|e| e.to_string())?;
    let threads: Vec<Vec<u64>> = input
        .lines()
        .map(|line| {
            line.split(',')
                .filter(|t| !t.is_empty())
                .map(|t| t.parse::<u64>().map(|t| T0 + t))
                .collect::<Result<_, _>>()
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let handles: Vec<_> = threads
        .into_iter()
        .map(|times| {
            let worker = worker.clone();
            std::thread::spawn(move || -> Result<Vec<(char, u64)>, String> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(|e| e.to_string())?;
                // All queued at once: the worker decides them in batches.
                let answers: Vec<_> = times
                    .iter()
                    .map(|&now| {
                        worker.admit(
                            vec![limit("a", max, window), limit("b", max + 1, window * 2)].into(),
                            now,
                        )
                    })
                    .collect();
                let mut kept = Vec::new();
                for (i, answer) in answers.into_iter().enumerate() {
                    match runtime.block_on(answer.get()) {
                        Ok(Admission::Admitted(r)) => {
                            if release_every > 0 && (i as u64).is_multiple_of(release_every + 1) {
                                worker.store().release(&r);
                                continue;
                            }
                            for u in r.units() {
                                let c = if &*u.key.counter == "a" { 'a' } else { 'b' };
                                kept.push((c, u.at_ms));
                            }
                        }
                        Ok(Admission::Refused { .. }) => {}
                        // A lock held too long fails the call closed: a refusal, never an
                        // admission. Anything else is a broken store.
                        Err(e) if e.is_transient() => {}
                        Err(e) => return Err(format!("the store failed: {e}")),
                    }
                }
                Ok(kept)
            })
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for h in handles {
        let kept = h
            .join()
            .map_err(|_| "a child thread panicked".to_owned())??;
        for (c, at) in kept {
            writeln!(out, "{c} {at}").map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Runs one case: `processes[p][t]` are the arrival times of thread `t` of process `p`.
fn run_case(
    max: u64,
    window: u64,
    processes: &[Vec<Vec<u64>>],
    release_every: u64,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let file = dir.path().join("counters.sqlite3");
    let exe = std::env::current_exe().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let children: Vec<_> = processes
        .iter()
        .map(|threads| {
            let mut child = Command::new(&exe)
                .arg("--child")
                .arg(&file)
                .args([max, window, release_every].map(|n| n.to_string()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a child process");
            let lines: String = threads
                .iter()
                .map(|times| {
                    let t: Vec<String> = times.iter().map(u64::to_string).collect();
                    t.join(",") + "\n"
                })
                .collect();
            let mut stdin = child.stdin.take().expect("child stdin");
            stdin.write_all(lines.as_bytes()).expect("write arrivals");
            drop(stdin);
            child
        })
        .collect();
    let mut a_times = Vec::new();
    let mut b_times = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("wait for a child");
        prop_assert!(
            out.status.success(),
            "a child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let (c, at) = line.split_once(' ').expect("`c at` lines");
            let at: u64 = at.parse().expect("a time");
            if c == "a" {
                a_times.push(at);
            } else {
                b_times.push(at);
            }
        }
    }
    // Atomicity: every kept call took a unit from both budgets.
    prop_assert_eq!(a_times.len(), b_times.len());
    prop_assert!(
        densest_span(&mut a_times, window) <= max as usize,
        "over-admission on a"
    );
    prop_assert!(
        densest_span(&mut b_times, window * 2) <= max as usize + 1,
        "over-admission on b"
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        if let Err(e) = child(&args[1..]) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let arrivals = prop::collection::vec(
        prop::collection::vec(prop::collection::vec(0u64..1_000, 1..50), 2..3),
        2..6,
    );
    let result = runner.run(
        &(1u64..6, 1u64..200, arrivals, 0u64..4),
        |(max, window, processes, release_every)| run_case(max, window, &processes, release_every),
    );
    match result {
        Ok(()) => println!(
            "test never_more_than_max_in_any_window_span_across_processes_sharing_one_sqlite_file ... ok"
        ),
        Err(e) => {
            eprintln!(
                "never_more_than_max_in_any_window_span_across_processes_sharing_one_sqlite_file failed: {e}"
            );
            std::process::exit(1);
        }
    }
}
