//! `toolgate demo` in a real terminal: every kind of decision shows within seconds, and `q`
//! (confirmed while calls are held) exits cleanly, leaving nothing behind.

mod support;

use std::path::Path;
use std::time::Duration;

use support::tmux::Tmux;

#[test]
fn the_demo_shows_every_decision_kind_within_seconds_and_quits_cleanly() {
    let home = tempfile::tempdir().unwrap();
    let runtime = home.path().join("run");
    let tmp = home.path().join("tmp");
    let state = home.path().join("state");
    for dir in [&runtime, &tmp, &state] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let work = home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let program = Path::new(env!("CARGO_BIN_EXE_toolgate"));
    let term = Tmux::start(
        program,
        &["demo", "--rate", "8"],
        &work,
        (160, 50),
        &[
            ("XDG_RUNTIME_DIR", &runtime),
            ("TMPDIR", &tmp),
            ("XDG_STATE_HOME", &state),
            ("HOME", home.path()),
        ],
    );

    // The Live view: every decision kind, with the rule that made it.
    let screen = term.wait_for(
        "every decision kind in the Live view",
        Duration::from_secs(30),
        |s| {
            [
                "✓ allow",
                "✗ deny",
                "⏱ rate limited",
                "⏸ held",
                "/hide/0",
                "/require/0",
                "/default",
            ]
            .iter()
            .all(|needle| s.contains(needle))
        },
    );
    assert!(
        screen.contains("toolgate · 1 gateway"),
        "status bar:\n{screen}"
    );

    // The discovery file exists while the demo runs, so `tail` and a second console find it.
    let discovery = std::fs::read_dir(runtime.join("toolgate"))
        .expect("discovery directory")
        .count();
    assert_eq!(discovery, 1, "one discovery file for the demo's gateway");

    // The Holds view lists the held calls; quitting asks first because calls are held.
    term.send(&["2"]);
    term.wait_for("the Holds view", Duration::from_secs(10), |s| {
        s.contains("Holds ·")
    });
    term.send(&["q"]);
    term.wait_for("the quit confirmation", Duration::from_secs(10), |s| {
        s.contains("held") && s.contains("y/n")
    });
    term.send(&["y"]);
    assert_eq!(
        term.exit_status(Duration::from_secs(10)),
        Some(0),
        "stderr: {}",
        term.stderr()
    );

    // Nothing left behind: no temporary policy directory, no discovery file.
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temporary files left in TMPDIR"
    );
    assert_eq!(
        std::fs::read_dir(runtime.join("toolgate")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "files left in the working directory"
    );
}
