//! Driving the real `toolgate` binary in tmux, as a person at a terminal would: start it in a
//! detached session of a known size, type with `send-keys`, read the screen with
//! `capture-pane`. Each harness has its own tmux server socket, so tests run in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Tmux {
    socket: PathBuf,
    exit_file: PathBuf,
    /// A log of the program's own (its `--log`), shown with the screen when a wait fails.
    log: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// Starts `program args...` in `cwd`, in a `width`x`height` terminal with `env` added,
    /// inside `sh -c` so its exit status can be read afterwards.
    pub fn start(
        program: &Path,
        args: &[&str],
        cwd: &Path,
        size: (u16, u16),
        env: &[(&str, &Path)],
    ) -> Tmux {
        let dir = tempfile::tempdir().expect("temp dir for tmux");
        let socket = dir.path().join("tmux.sock");
        let exit_file = dir.path().join("exit-status");
        let mut command = format!(
            "exec 2>{}; cd {}; ",
            shell_quote(&dir.path().join("stderr")),
            shell_quote(cwd)
        );
        for (key, value) in env {
            command.push_str(&format!("export {key}={}; ", shell_quote(value)));
        }
        command.push_str(&shell_quote(program));
        for arg in args {
            command.push(' ');
            command.push_str(&shell_quote(Path::new(arg)));
        }
        command.push_str(&format!("; echo $? > {}", shell_quote(&exit_file)));
        let status = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(["-f", "/dev/null", "new-session", "-d", "-x"])
            .arg(size.0.to_string())
            .arg("-y")
            .arg(size.1.to_string())
            .args(["sh", "-c"])
            .arg(&command)
            .env("TERM", "xterm-256color")
            .status()
            .expect("tmux must be installed to run the terminal tests");
        assert!(status.success(), "tmux new-session failed");
        Tmux {
            socket,
            exit_file,
            log: None,
            _dir: dir,
        }
    }

    /// Shows `log` (a file the program writes) too when a wait fails.
    pub fn showing_log(mut self, log: &Path) -> Tmux {
        self.log = Some(log.to_owned());
        self
    }

    /// Types keys (tmux key names: `q`, `Enter`, `Escape`, `Tab`, or literal text).
    pub fn send(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["send-keys", "-t", "0"])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success(), "tmux send-keys {keys:?} failed");
    }

    /// The screen as text, one line per row.
    pub fn screen(&self) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["capture-pane", "-p", "-t", "0"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the screen until `ready` holds for it, or panics with the last screen after
    /// `within`.
    pub fn wait_for(&self, what: &str, within: Duration, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                let log = self
                    .log
                    .as_ref()
                    .map(|log| std::fs::read_to_string(log).unwrap_or_default())
                    .unwrap_or_default();
                panic!(
                    "waited {within:?} for {what}; the screen was:\n{screen}\nstderr:\n{}\nlog:\n{log}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The program's exit status once it has exited, waiting up to `within`.
    pub fn exit_status(&self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(text) = std::fs::read_to_string(&self.exit_file)
                && let Ok(code) = text.trim().parse()
            {
                return Some(code);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// What the program wrote to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("stderr")).unwrap_or_default()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// `toolgate console --log <dir>/console.log` in a 200x50 terminal, in `dir`, with `env`
/// added; the console's log is shown when a wait fails.
pub fn console(dir: &Path, env: &[(&str, &Path)]) -> Tmux {
    let log = dir.join("console.log");
    Tmux::start(
        super::toolgate(),
        &["console", "--log", &log.display().to_string()],
        dir,
        (200, 50),
        env,
    )
    .showing_log(&log)
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// A real gateway and the real console following it: `toolgate wrap` in front of
/// server-everything with `policy` (in `dir`, as `policy.json`), driven by the Python MCP
/// client, which has made one allowed `echo` call; and `toolgate console` in tmux, showing that
/// call. Runtime and state directories are the test's own.
pub struct WrapAndConsole {
    pub dir: tempfile::TempDir,
    pub policy: PathBuf,
    pub agent: super::agent::Agent,
    pub term: Tmux,
}

pub fn wrap_and_console(policy: &str) -> WrapAndConsole {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime_dir = dir.path().join("run");
    super::private_dir(&runtime_dir);
    let state = dir.path().join("state");
    let policy_path = dir.path().join("policy.json");
    std::fs::write(&policy_path, policy).expect("policy");
    let mut agent = super::agent::Agent::stdio(
        "legacy",
        &dir.path().join("gateway.log"),
        &super::agent::wrap(dir.path(), "tmux-agent", &[], super::peers::everything()),
        &[
            ("XDG_RUNTIME_DIR", &runtime_dir),
            ("XDG_STATE_HOME", &state),
        ],
    );
    // The first answer means the gateway is up (and its discovery file written).
    let first = agent.call("echo", serde_json::json!({"message": "hello"}));
    assert_eq!(first["is_error"], false, "{first}");
    let term = console(
        dir.path(),
        &[
            ("XDG_RUNTIME_DIR", &runtime_dir),
            ("XDG_STATE_HOME", &state),
        ],
    );
    term.wait_for("the gateway and its echo call", super::ANSWER_WITHIN, |s| {
        s.contains("1 gateway") && s.contains("echo") && s.contains("✓ allow")
    });
    WrapAndConsole {
        dir,
        policy: policy_path,
        agent,
        term,
    }
}
