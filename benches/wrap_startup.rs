//! What `toolgate wrap` adds to a server's start-up: from spawning the process to the first
//! answer of `initialize`, for the do-nothing upstream alone and for the same upstream
//! started through `wrap`, side by side (separate processes: this binary is the client and,
//! started with `--trivial-upstream`, the server).
//!
//! `wrap` runs as a user would start it: an allowing policy without limits, the default audit
//! log and key, the default (SQLite) counter store and the event websocket with its discovery
//! file, all under a private `XDG_STATE_HOME` / `XDG_RUNTIME_DIR` (the audit key is made by
//! the warm-up start, as on a user's first run, and read by the measured ones).
//!
//! Run: `cargo bench --bench wrap_startup`. The `summary:` line (medians of interleaved
//! starts) is the result; criterion's own measurements of the two follow.
//! Target (issue 15): ≤ 5 ms added.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};

/// Starts of each kind in the summary, alternating so both see the same machine load.
const STARTS: usize = 40;

const POLICY: &str = r#"{"version":"1","default":"deny","tools":{"echo":{}}}"#;

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"toolgate-bench","version":"0"}}}"#;

#[path = "support/upstream.rs"]
mod upstream;
use upstream::trivial_upstream;

/// The command that starts the upstream, alone or through `wrap`.
fn command(through_gateway: bool, dir: &Path) -> Command {
    let upstream = std::env::current_exe().expect("bench binary path");
    if !through_gateway {
        let mut c = Command::new(upstream);
        c.arg("--trivial-upstream");
        return c;
    }
    let mut c = Command::new(env!("CARGO_BIN_EXE_toolgate"));
    c.arg("wrap")
        .arg("--policy")
        .arg(dir.join("policy.json"))
        .args(["--log-level", "error", "--"])
        .arg(upstream)
        .arg("--trivial-upstream")
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("XDG_RUNTIME_DIR", dir.join("run"));
    c
}

/// Spawns `command`, sends `initialize` at once (as an agent does) and returns the time
/// from the spawn to the first line of the answer. The process is then stopped by closing
/// its stdin (not timed).
fn first_answer(mut command: Command) -> Duration {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    writeln!(stdin, "{INITIALIZE}").expect("write initialize");
    stdin.flush().expect("flush initialize");
    let mut line = String::new();
    let n = stdout.read_line(&mut line).expect("read the answer");
    let took = start.elapsed();
    assert!(
        n > 0 && line.contains("\"id\":1"),
        "no answer to initialize: {line:?}"
    );
    drop(stdin);
    let status = child.wait().expect("wait for the server");
    assert!(status.success(), "the process failed: {status}");
    took
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(dir: &Path) {
    // Warm-up: page cache, and the audit key made once as on a first run.
    first_answer(command(false, dir));
    first_answer(command(true, dir));
    let (mut direct, mut wrapped) = (Vec::new(), Vec::new());
    for _ in 0..STARTS {
        direct.push(first_answer(command(false, dir)));
        wrapped.push(first_answer(command(true, dir)));
    }
    let (d, w) = (median(direct), median(wrapped));
    println!(
        "summary: spawn to the first answer of initialize, median of {STARTS}: server alone {:.2} ms, through wrap {:.2} ms, added {:.2} ms (target ≤ 5 ms)",
        ms(d),
        ms(w),
        ms(w.saturating_sub(d))
    );
}

fn main() {
    if std::env::args().any(|a| a == "--trivial-upstream") {
        trivial_upstream();
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("policy.json"), POLICY).expect("write policy");
    std::fs::create_dir_all(dir.path().join("run")).expect("runtime dir");
    std::fs::set_permissions(
        dir.path().join("run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("runtime dir mode");
    summary(dir.path());

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut group = c.benchmark_group("spawn_to_initialize_answer");
    for (name, through_gateway) in [("server alone", false), ("through wrap", true)] {
        group.bench_function(BenchmarkId::new("trivial upstream", name), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| first_answer(command(through_gateway, dir.path())))
                    .sum()
            });
        });
    }
    group.finish();
    c.final_summary();
}
