//! `toolgate scan` shows the description checks' findings: the real binary against
//! `tests/e2e/poisoned_server.py` (one clean tool, one with an `<IMPORTANT>` block after
//! `~/.ssh/id_rsa`, one with an instruction hidden in Unicode tag characters), in the table
//! and below it on stderr, and in `--json`, sanitised in both.

mod support;

use std::process::Output;

use serde_json::Value;

fn scan(json: bool) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"));
    // scan's own --timeout bounds the run: the server must answer within it.
    cmd.args(["scan", "--timeout", "60"]);
    if json {
        cmd.arg("--json");
    }
    cmd.arg("--")
        .arg(support::peers::python())
        .arg(support::peers::e2e_script("poisoned_server.py"))
        .output()
        .expect("run toolgate scan")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn scan_lists_poisoned_descriptions_with_inert_excerpts_and_leaves_clean_ones_alone() {
    let o = scan(false);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "a raw escape reached the terminal: {err:?}"
    );
    assert!(err.contains("2 tool descriptions flagged"), "{err}");
    let table_row = |tool: &str| {
        err.lines()
            .find(|l| l.starts_with(tool))
            .unwrap_or_else(|| panic!("no table row for {tool}: {err}"))
            .to_string()
    };
    assert!(table_row("add ").contains("to-model,names-secret"), "{err}");
    assert!(table_row("format_date").contains("invisible-text"), "{err}");
    assert!(table_row("get_time").contains(" - "), "{err}");
    // The hidden text is shown, spelled out.
    assert!(
        err.contains("format_date: tag characters ×28: ignore previous instructions"),
        "{err}"
    );
    assert!(err.contains("add: ssh keys:"), "{err}");
    assert!(!err.contains("get_time:"), "{err}");
}

#[test]
fn scan_json_carries_each_tools_description_flags() {
    let o = scan(true);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(!out.contains('\u{1b}'), "{out:?}");
    let tools: Value = serde_json::from_str(&out).expect("stdout is JSON");
    let flags_of = |name: &str| -> Vec<String> {
        tools
            .as_array()
            .expect("an array of tools")
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {out}"))["description_flags"]
            .as_array()
            .expect("description_flags")
            .iter()
            .map(|f| f["flag"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    assert_eq!(flags_of("get_time"), Vec::<String>::new());
    assert_eq!(
        flags_of("add"),
        [
            "addressed_to_model",
            "addressed_to_model",
            "mentions_secret"
        ]
    );
    assert_eq!(
        flags_of("format_date"),
        ["invisible_text", "addressed_to_model"]
    );
}
