//! The command line's own output: completions, and a reader that goes away.

use std::process::{Command, Stdio};

fn toolgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_toolgate"))
}

#[test]
fn completion_scripts_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_toolgate()"),
        ("zsh", "#compdef toolgate"),
        ("fish", "complete -c toolgate"),
    ] {
        let out = toolgate().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(marker), "{shell} script lacks {marker:?}");
        assert!(
            text.contains("wrap") && text.contains("explain"),
            "{shell} script names the commands"
        );
    }
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    // The read end is closed before the command starts: its first write fails with a broken
    // pipe.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = toolgate()
        .args(["completions", "zsh"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "exit status {:?}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "no panic, no error message"
    );
}
