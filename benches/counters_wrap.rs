//! What the default counter store costs a `toolgate wrap` call, as separate processes: this
//! binary is the load driver and (started with `--trivial-upstream`) the do-nothing upstream;
//! `toolgate wrap` sits between them with the default SQLite store (a file of its own here).
//!
//! Summaries (issue 15), each measured side by side in one sitting:
//! - one call in flight, 10,000 calls: median round trip direct, through `wrap` without a
//!   limit, and through `wrap` with a limit on the SQLite store (target: the limited call
//!   ≤ 40 µs more than the unlimited one); then, since a call just after a limited one
//!   can find the gateway's threads still awake (`wrap --spin-us`: the store thread's spin
//!   after its batch), 10,000 more alternating direct and unlimited calls only, with no
//!   limited call between them: the unlimited figure of the target ≤ 30 µs added;
//! - 64 in flight: calls per second direct, through `wrap` without a limit (with
//!   `--no-events`, and with the event websocket on, the default: target ≥ 50 % of direct
//!   with audit and events on), and with a limit on SQLite (target: ≥ 80 % of unlimited);
//!   with the CPU time and the context switches of the `wrap` process per call (every
//!   thread, from `/proc`), which do not depend on the machine's load as the rates do.
//!   One round (40,000 calls per configuration, about 0.2 s each) varies by ±6 points, so
//!   the phase runs several rounds, the configurations interleaved within each
//!   (`PIPELINED_ROUNDS`, 9 by default: about 10 s on an idle machine), and prints the
//!   median rates, each ratio as the median of the rounds' own ratios (the configurations
//!   of one round share its load), and a second line with their ranges. (Until session 11
//!   it printed one round's totals: same line otherwise, so the rows of
//!   `docs/performance.md` stay comparable.)
//! - contention: 8 `wrap` processes on one SQLite file, 64 in flight each, one shared global
//!   counter: admitted calls per second in all, p99 round trip, and over-admissions, counted
//!   from the answers only the upstream writes (`ok`): must be zero;
//! - a locked store: another process (this one) holds the file's write lock from before
//!   `wrap` starts; `wrap` must answer `initialize`, calls without limits keep their p99
//!   (compared with the same gateway once the lock is gone), and limited calls fail closed.
//!
//! Run: `cargo bench --bench counters_wrap` (release; on a shared machine, once). The
//! `summary:` lines are the results. `TOOLGATE=OTHER-BINARY` runs another build as the
//! gateway (to compare two builds in one sitting). Names after `--` run only those parts:
//! `sequential`, `pipelined`, `contention`, `locked` (`cargo bench --bench counters_wrap --
//! pipelined`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const SEQUENTIAL_CALLS: usize = 10_000;
const IN_FLIGHT: usize = 64;
const IN_FLIGHT_CALLS: usize = 40_000;
const WRAPS: usize = 8;
const CALLS_PER_WRAP: usize = 4_000;
/// The shared budget of the contention run: well below the calls sent, so refusals happen.
const SHARED_MAX: usize = 10_000;

const POLICY: &str = r#"{"version":"1","default":"deny","tools":{
    "echo":{},
    "limited":{"limits":[{"counter":"per_hour","window":"hour","max":1000000000,"scope":"grant"}]},
    "shared":{"limits":[{"counter":"shared","window":"hour","max":10000,"scope":"global"}]}}}"#;

#[path = "support/stats.rs"]
mod stats;
use stats::median_range;
#[path = "support/upstream.rs"]
mod upstream;
use upstream::trivial_upstream;

/// What one answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// The upstream answered: the call reached it.
    Ok,
    /// The gateway refused it (a full budget).
    Refused,
    /// The gateway failed it closed: the counter store did not answer (a lock held past the
    /// busy timeout).
    Unavailable,
}

struct Peer {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
    line: String,
    sent_at: HashMap<u64, Instant>,
}

impl Peer {
    /// The upstream alone, or through `wrap` counting in `counters`, with `--no-events`.
    fn start(counters: Option<&Path>, dir: &Path) -> Peer {
        Peer::start_with(counters, false, dir)
    }

    /// The upstream alone, or through `wrap` counting in `counters`, with the event
    /// websocket (the default) when `events`.
    fn start_with(counters: Option<&Path>, events: bool, dir: &Path) -> Peer {
        let upstream = std::env::current_exe().expect("bench binary path");
        let mut command = match counters {
            Some(file) => {
                // Written once by `main`: gateways starting together must not read it half
                // written.
                let policy = dir.join("policy.json");
                let mut c = Command::new(
                    std::env::var_os("TOOLGATE").unwrap_or(env!("CARGO_BIN_EXE_toolgate").into()),
                );
                c.arg("wrap")
                    .arg("--policy")
                    .arg(&policy)
                    .arg("--audit")
                    // Beside the counters, as by default (the user's state directory), not
                    // beside the policy: every write there would wake the policy's watcher.
                    .arg(dir.join("state/audit.jsonl"))
                    .args(["--log-level", "error", "--counters"])
                    .arg(file);
                if events {
                    // On a loopback port of its own; its discovery file in the bench's
                    // directory, not the user's.
                    c.env("XDG_RUNTIME_DIR", dir.join("run"));
                } else {
                    c.arg("--no-events");
                }
                c.arg("--").arg(&upstream).arg("--trivial-upstream");
                c
            }
            None => {
                let mut c = Command::new(&upstream);
                c.arg("--trivial-upstream");
                c
            }
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the upstream");
        Peer {
            stdin: BufWriter::new(child.stdin.take().expect("stdin")),
            stdout: BufReader::new(child.stdout.take().expect("stdout")),
            child,
            next_id: 0,
            line: String::new(),
            sent_at: HashMap::new(),
        }
    }

    fn send(&mut self, tool: &str) {
        self.next_id += 1;
        self.sent_at.insert(self.next_id, Instant::now());
        writeln!(
            self.stdin,
            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#,
            self.next_id
        )
        .expect("write call");
    }

    /// Reads the next answer: what it said and how long its call took.
    fn recv(&mut self) -> (Reply, Duration) {
        self.line.clear();
        let n = self.stdout.read_line(&mut self.line).expect("read answer");
        assert!(n > 0, "the gateway closed its output");
        let answer: serde_json::Value = serde_json::from_str(&self.line).expect("JSON answer");
        let id = answer["id"].as_u64().expect("an answer to a call");
        let took = self
            .sent_at
            .remove(&id)
            .map_or(Duration::ZERO, |at| at.elapsed());
        let text = answer["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("");
        let reply = if text == "ok" {
            Reply::Ok
        } else if text.contains("counter store unavailable") {
            Reply::Unavailable
        } else {
            Reply::Refused
        };
        (reply, took)
    }

    fn round_trip(&mut self, tool: &str) -> (Reply, Duration) {
        self.send(tool);
        self.stdin.flush().expect("flush");
        self.recv()
    }

    /// `calls` calls of `tool` with `window` in flight: the elapsed time, every call's round
    /// trip, how many the upstream answered, and how many failed closed (store unavailable).
    fn pipelined(
        &mut self,
        tool: &str,
        calls: usize,
        window: usize,
    ) -> (Duration, Vec<Duration>, usize, usize) {
        let start = Instant::now();
        let mut sent = 0;
        while sent < window.min(calls) {
            self.send(tool);
            sent += 1;
        }
        self.stdin.flush().expect("flush");
        let mut took = Vec::with_capacity(calls);
        let mut reached = 0;
        let mut unavailable = 0;
        for _ in 0..calls {
            if !self.stdout.buffer().contains(&b'\n') {
                self.stdin.flush().expect("flush");
            }
            let (reply, t) = self.recv();
            took.push(t);
            reached += usize::from(reply == Reply::Ok);
            unavailable += usize::from(reply == Reply::Unavailable);
            if sent < calls {
                self.send(tool);
                sent += 1;
            }
        }
        (start.elapsed(), took, reached, unavailable)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.stdin.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(mut samples: Vec<Duration>, p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i.min(samples.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Direct, unlimited through `wrap`, limited through `wrap` (SQLite), one call in flight:
/// medians, interleaved so all three see the same machine load.
fn sequential(dir: &Path) {
    let file = dir.join("state/side.sqlite3");
    let mut direct = Peer::start(None, dir);
    let mut wrapped = Peer::start(Some(&file), dir);
    for _ in 0..100 {
        direct.round_trip("echo");
        wrapped.round_trip("echo");
        wrapped.round_trip("limited");
    }
    let (mut d, mut u, mut l) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SEQUENTIAL_CALLS {
        d.push(direct.round_trip("echo").1);
        u.push(wrapped.round_trip("echo").1);
        let (reply, took) = wrapped.round_trip("limited");
        assert_eq!(reply, Reply::Ok, "the limited call was refused");
        l.push(took);
    }
    let tails = (percentile(u.clone(), 0.99), percentile(l.clone(), 0.99));
    let (d, u, l) = (percentile(d, 0.5), percentile(u, 0.5), percentile(l, 0.5));
    println!(
        "summary: one in flight, {SEQUENTIAL_CALLS} calls, p50: direct {:.1} µs; wrap without limit {:.1} µs (+{:.1}); wrap with a limit on SQLite {:.1} µs (+{:.1} over unlimited; target ≤ 40)",
        us(d),
        us(u),
        us(u.saturating_sub(d)),
        us(l),
        us(l.saturating_sub(u))
    );
    // The WAL's restarts hold a limited call for their fsyncs now and then: seen here.
    println!(
        "summary: one in flight, p99: wrap without limit {:.1} µs; with a limit on SQLite {:.1} µs",
        us(tails.0),
        us(tails.1)
    );
    // No limited call between: nothing the store thread did is still awake for these.
    let (mut d, mut u) = (Vec::new(), Vec::new());
    for _ in 0..SEQUENTIAL_CALLS {
        d.push(direct.round_trip("echo").1);
        u.push(wrapped.round_trip("echo").1);
    }
    let (d, u) = (percentile(d, 0.5), percentile(u, 0.5));
    println!(
        "summary: one in flight, no limited calls between, {SEQUENTIAL_CALLS} calls, p50: direct {:.1} µs; wrap without limit {:.1} µs (+{:.1}; target ≤ 30)",
        us(d),
        us(u),
        us(u.saturating_sub(d))
    );
}

/// What a process has used so far, over its live threads (Linux `/proc`).
#[derive(Debug, Clone, Default)]
struct Usage {
    /// Time on a CPU, by thread id.
    cpu: HashMap<String, Duration>,
    /// Context switches, voluntary (waiting) and not (preempted), by thread id.
    switches: HashMap<String, u64>,
    /// Each thread's name, by thread id.
    names: HashMap<String, String>,
}

impl Usage {
    fn of(pid: u32) -> Usage {
        let mut usage = Usage::default();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the gateway's threads");
        for task in tasks.flatten() {
            let path = task.path();
            let tid = task.file_name().to_string_lossy().into_owned();
            // A thread that ended between the listing and the read counts as nothing.
            if let Ok(stat) = std::fs::read_to_string(path.join("schedstat")) {
                let ns = stat.split_whitespace().next().and_then(|n| n.parse().ok());
                usage
                    .cpu
                    .insert(tid.clone(), Duration::from_nanos(ns.unwrap_or(0)));
            }
            if let Ok(status) = std::fs::read_to_string(path.join("status")) {
                let switches = status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>();
                usage.switches.insert(tid.clone(), switches);
            }
            if let Ok(name) = std::fs::read_to_string(path.join("comm")) {
                usage.names.insert(tid, name.trim().to_owned());
            }
        }
        usage
    }

    /// What was used between `before` and this, added to `total`.
    fn add_since(&self, before: &Usage, total: &mut Usage) {
        for (task, cpu) in &self.cpu {
            let was = before.cpu.get(task).copied().unwrap_or_default();
            *total.cpu.entry(task.clone()).or_default() += cpu.saturating_sub(was);
        }
        for (task, switches) in &self.switches {
            let was = before.switches.get(task).copied().unwrap_or_default();
            *total.switches.entry(task.clone()).or_default() += switches.saturating_sub(was);
        }
        for (task, name) in &self.names {
            total
                .names
                .entry(task.clone())
                .or_insert_with(|| name.clone());
        }
    }

    fn all_switches(&self) -> u64 {
        self.switches.values().sum()
    }

    /// Context switches per call by thread name (the runtime's thread is named after the
    /// binary), most first: which of the gateway's threads sleep and wake.
    fn switches_by_thread(&self, calls: usize) -> String {
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        for (task, switches) in &self.switches {
            let name = self.names.get(task).map_or("?", String::as_str);
            *by_name.entry(name).or_default() += switches;
        }
        let mut by_name: Vec<_> = by_name.into_iter().filter(|(_, n)| *n > 0).collect();
        by_name.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        by_name
            .iter()
            .map(|(name, n)| format!("{name} {:.4}", *n as f64 / calls as f64))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A configuration's pipelined runs: each round's elapsed time, and what the gateway (if any)
/// used over all of them.
#[derive(Default)]
struct Pipelined {
    elapsed: Vec<Duration>,
    used: Usage,
}

impl Pipelined {
    /// One run of `calls` calls (a new round's when `new_round`, else added to the last).
    fn add(&mut self, peer: &mut Peer, tool: &str, calls: usize, new_round: bool) {
        let pid = peer.child.id();
        let before = Usage::of(pid);
        let took = peer.pipelined(tool, calls, IN_FLIGHT).0;
        Usage::of(pid).add_since(&before, &mut self.used);
        match self.elapsed.last_mut() {
            Some(last) if !new_round => *last += took,
            _ => self.elapsed.push(took),
        }
    }

    /// Calls per second in each round (`calls` per round).
    fn rates(&self, calls: usize) -> Vec<f64> {
        self.elapsed
            .iter()
            .map(|e| calls as f64 / e.as_secs_f64())
            .collect()
    }

    /// The gateway's CPU time (all threads, and the busiest one: a thread's CPU time per
    /// call bounds its calls per second) and context switches per call, over every round,
    /// as text.
    fn per_call(&self, calls: usize) -> String {
        let all: Duration = self.used.cpu.values().sum();
        let busiest = self.used.cpu.values().max().copied().unwrap_or_default();
        format!(
            "{:.2} µs CPU ({:.2} on its busiest thread) and {:.3} context switches of `wrap` per call",
            us(all) / calls as f64,
            us(busiest) / calls as f64,
            self.used.all_switches() as f64 / calls as f64
        )
    }
}

/// Each round's `part / whole`, in percent.
fn ratios(part: &[f64], whole: &[f64]) -> Vec<f64> {
    part.iter().zip(whole).map(|(p, w)| p / w * 100.0).collect()
}

/// How many rounds the pipelined phase runs: `PIPELINED_ROUNDS`, 9 by default (about 1 s a
/// round on an idle machine, so the phase stays well within 20 s under load).
fn pipelined_rounds() -> usize {
    std::env::var("PIPELINED_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(9)
}

/// Direct, unlimited through `wrap` (`--no-events`, and events on), limited through `wrap`
/// (SQLite), 64 in flight: rates, interleaved so all see the same machine load. A round is
/// `IN_FLIGHT_CALLS` calls per configuration, sent in slices taking turns; the phase runs
/// `pipelined_rounds()` rounds and reports each rate's median, and each ratio as the median
/// of the rounds' own ratios (a round's configurations share its load), with their ranges.
fn pipelined(dir: &Path) {
    let file = dir.join("state/pipelined.sqlite3");
    let mut direct = Peer::start(None, dir);
    let mut quiet = Peer::start(Some(&file), dir);
    let mut events = Peer::start_with(Some(&file), true, dir);
    for _ in 0..100 {
        direct.round_trip("echo");
        quiet.round_trip("echo");
        quiet.round_trip("limited");
        events.round_trip("echo");
    }
    const SLICES: usize = 10;
    let per_slice = IN_FLIGHT_CALLS / SLICES;
    let rounds = pipelined_rounds();
    let (mut d, mut u, mut e, mut l) = (
        Pipelined::default(),
        Pipelined::default(),
        Pipelined::default(),
        Pipelined::default(),
    );
    for _ in 0..rounds {
        for slice in 0..SLICES {
            let new_round = slice == 0;
            d.add(&mut direct, "echo", per_slice, new_round);
            u.add(&mut quiet, "echo", per_slice, new_round);
            e.add(&mut events, "echo", per_slice, new_round);
            l.add(&mut quiet, "limited", per_slice, new_round);
        }
    }
    let calls = per_slice * SLICES;
    let (dr, ur, er, lr) = (
        d.rates(calls),
        u.rates(calls),
        e.rates(calls),
        l.rates(calls),
    );
    let (events_pct, quiet_pct, limited_pct) = (
        median_range(ratios(&er, &dr)),
        median_range(ratios(&ur, &dr)),
        median_range(ratios(&lr, &ur)),
    );
    let (dr, ur, er, lr) = (
        median_range(dr),
        median_range(ur),
        median_range(er),
        median_range(lr),
    );
    println!(
        "summary: {IN_FLIGHT} in flight, {calls} calls, medians of {rounds} rounds: direct {:.0}/s; wrap without limit, events on {:.0}/s ({:.0}% of direct; target ≥ 50%), --no-events {:.0}/s ({:.0}%); limited on SQLite {:.0}/s ({:.0}% of unlimited; target ≥ 80%)",
        dr.0, er.0, events_pct.0, ur.0, quiet_pct.0, lr.0, limited_pct.0
    );
    println!(
        "summary: {IN_FLIGHT} in flight, ranges over {rounds} rounds: direct {:.0}–{:.0}/s; events on {:.0}–{:.0}/s ({:.0}–{:.0}% of direct); --no-events {:.0}–{:.0}/s ({:.0}–{:.0}%); limited {:.0}–{:.0}/s ({:.0}–{:.0}% of unlimited)",
        dr.1,
        dr.2,
        er.1,
        er.2,
        events_pct.1,
        events_pct.2,
        ur.1,
        ur.2,
        quiet_pct.1,
        quiet_pct.2,
        lr.1,
        lr.2,
        limited_pct.1,
        limited_pct.2
    );
    let all_calls = calls * rounds;
    println!(
        "summary: {IN_FLIGHT} in flight, the gateway's work over {rounds} rounds: without limit, events on: {}; --no-events: {}; limited: {}",
        e.per_call(all_calls),
        u.per_call(all_calls),
        l.per_call(all_calls)
    );
    // Not a summary: which threads of `wrap` slept and woke (context switches per call).
    println!(
        "threads: context switches per call: events on: {}; --no-events: {}; limited: {}",
        e.used.switches_by_thread(all_calls),
        u.used.switches_by_thread(all_calls),
        l.used.switches_by_thread(all_calls)
    );
}

/// 8 gateways, one file, one global budget: rate, p99 and over-admissions.
fn contention(dir: &Path) {
    let file = dir.join("state/shared.sqlite3");
    let mut peers: Vec<Peer> = (0..WRAPS).map(|_| Peer::start(Some(&file), dir)).collect();
    for peer in &mut peers {
        // Up and answering (an unlimited call), before the clock starts.
        peer.round_trip("echo");
    }
    let start = Instant::now();
    let results: Vec<(Vec<Duration>, usize, usize)> = std::thread::scope(|s| {
        let runs: Vec<_> = peers
            .iter_mut()
            .map(|peer| {
                s.spawn(move || {
                    let (_, took, reached, unavailable) =
                        peer.pipelined("shared", CALLS_PER_WRAP, IN_FLIGHT);
                    (took, reached, unavailable)
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("a driver thread"))
            .collect()
    });
    let elapsed = start.elapsed();
    let reached: usize = results.iter().map(|(_, n, _)| n).sum();
    let unavailable: usize = results.iter().map(|(_, _, n)| n).sum();
    let took: Vec<Duration> = results.into_iter().flat_map(|(t, _, _)| t).collect();
    let answered = took.len();
    println!(
        "summary: contention, {WRAPS} wraps × {IN_FLIGHT} in flight on one SQLite file: {answered} calls answered in {:.2} s ({:.0}/s), {reached} reached the upstreams (budget {SHARED_MAX}: over-admissions {}), {unavailable} failed closed (store unavailable), p50 {:.0} µs, p99 {:.0} µs",
        elapsed.as_secs_f64(),
        answered as f64 / elapsed.as_secs_f64(),
        reached.saturating_sub(SHARED_MAX),
        us(percentile(took.clone(), 0.5)),
        us(percentile(took, 0.99))
    );
    assert!(
        reached <= SHARED_MAX,
        "over-admission: {reached} > {SHARED_MAX}"
    );
}

/// The file locked by this process from before `wrap` starts, for 3 s.
fn locked_store(dir: &Path) {
    let file = dir.join("state/locked.sqlite3");
    let locker = rusqlite::Connection::open(&file).expect("open the counter file");
    locker
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    let locked_at = Instant::now();
    let mut wrapped = Peer::start(Some(&file), dir);
    let (reply, _) = wrapped.round_trip("echo");
    assert_eq!(reply, Reply::Ok);
    let first = locked_at.elapsed();
    // A limited call waits for the lock; unlimited ones go on meanwhile.
    wrapped.send("limited");
    wrapped.stdin.flush().expect("flush");
    let mut locked = Vec::new();
    let mut limited = None;
    while locked_at.elapsed() < Duration::from_secs(3) {
        let (reply, took) = wrapped.round_trip("echo");
        match reply {
            Reply::Ok if took < Duration::from_secs(1) => locked.push(took),
            // The limited call's answer came in place of this one's.
            _ => limited = Some((reply, took)),
        }
    }
    locker.execute_batch("ROLLBACK").expect("release the lock");
    let mut idle = Vec::new();
    for _ in 0..locked.len().max(1000) {
        idle.push(wrapped.round_trip("echo").1);
    }
    println!(
        "summary: store locked 3 s: spawn to the first answer {:.0} µs; unlimited p99 while locked {:.0} µs vs {:.0} µs unlocked ({} calls); limited call: {:?}",
        us(first),
        us(percentile(locked, 0.99)),
        us(percentile(idle.clone(), 0.99)),
        idle.len(),
        limited
    );
}

/// A part of the bench, by the name that chooses it.
type Part = (&'static str, fn(&Path));

fn main() {
    if std::env::args().any(|a| a == "--trivial-upstream") {
        trivial_upstream();
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("policy.json"), POLICY).expect("write policy");
    // The counter files live apart from the policy, as in a user's state directory: `wrap`
    // watches the policy's directory, and every WAL write there would wake its watcher.
    std::fs::create_dir(dir.path().join("state")).expect("state directory");
    std::fs::create_dir(dir.path().join("run")).expect("runtime directory");
    let parts: [Part; 4] = [
        ("sequential", sequential),
        ("pipelined", pipelined),
        ("contention", contention),
        ("locked", locked_store),
    ];
    // `cargo bench` passes `--bench`; other words name the parts to run (all without any).
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (name, part) in parts {
        if chosen.is_empty() || chosen.iter().any(|c| c == name) {
            part(dir.path());
        }
    }
}
