//! Support code shared by the integration tests, so each piece of harness is written once:
//! finding the real MCP peers (`peers`), driving the Python MCP client over stdio or HTTP
//! (`agent`), finding a gateway and its hello as an operator does (`discovery`), reading a
//! child's output line by line with a deadline (`lines`), reading its memory (`memory`), driving the real binary in tmux
//! (`tmux`), describing an in-process gateway (`events`), certificates from a private CA (`tls`)
//! and waiting with a deadline (`wait`).
//!
//! Each test crate declares `mod support;` and uses only what it needs, so most items are
//! unused in any one crate.

#![allow(dead_code)]

pub mod agent;
pub mod discovery;
pub mod events;
pub mod lines;
pub mod memory;
pub mod peers;
pub mod tls;
pub mod tmux;
pub mod wait;

use std::path::Path;
use std::time::Duration;

/// How long any one answer may take before a test fails instead of hanging. Only a broken
/// build ever waits this long; nothing asserts on speed.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// The built `toolgate` binary.
pub fn toolgate() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_toolgate"))
}

/// Creates `path` as a directory only its owner may enter, as a runtime directory must be.
pub fn private_dir(path: &Path) {
    std::fs::create_dir(path).expect("create the private directory");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod 0700");
}

/// Waits for `child` to exit; fails if it does not in time.
pub fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    wait::wait_for("the process to exit", ANSWER_WITHIN, || {
        child
            .try_wait()
            .expect("the child's status")
            .ok_or_else(String::new)
    })
}

/// Gives `child` up to `grace` to exit on its own, then kills it. Never fails: it runs in
/// `Drop`, where the test has already said what it had to.
pub fn stop_within(child: &mut std::process::Child, grace: Duration) {
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `child` SIGTERM, so that `serve` stops the servers it spawned and a gateway removes
/// its discovery file, then gives it 10 s before killing it.
pub fn terminate(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    stop_within(child, Duration::from_secs(10));
}

/// A child process [`terminate`]d when the test ends, whatever happens.
pub struct Stopped(pub std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

/// Writes `text` over the file's existing inode, as an editor that saves in place does: no
/// truncation, the old contents padded over with spaces.
pub fn write_in_place(path: &Path, text: &str) {
    use std::io::Write;
    let old_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as usize;
    let mut padded = text.to_owned();
    while padded.len() < old_len {
        padded.push(' ');
    }
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(padded.as_bytes()).unwrap();
    file.sync_all().unwrap();
}

/// A peer that hangs: a loopback listener that accepts connections and never reads or
/// answers them. Its port, and the connections it holds (kept open as long as it lives).
pub fn silent_listener() -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            keep.lock().expect("streams").push(stream);
        }
    });
    (port, held)
}
