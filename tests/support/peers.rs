//! The real MCP peers the end-to-end tests talk to, installed (pinned) into `tests/peers/`
//! by `scripts/setup-test-peers`. A missing peer fails the test with what to run; it never
//! skips it.

use std::path::PathBuf;

/// The crate's root directory.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/peers/<relative>`, which must exist.
pub fn peer(relative: &str) -> PathBuf {
    let path = root().join("tests/peers").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup-test-peers",
        path.display()
    );
    path
}

/// The Python of the peers' virtualenv (it has the `mcp` client and mcp-server-time).
pub fn python() -> PathBuf {
    peer(".venv/bin/python")
}

/// A script of ours in `tests/e2e/`.
pub fn e2e_script(name: &str) -> PathBuf {
    root().join("tests/e2e").join(name)
}

/// The command line of `@modelcontextprotocol/server-everything` over stdio.
pub fn everything() -> Vec<String> {
    vec![
        "node".into(),
        peer("node_modules/.bin/mcp-server-everything")
            .display()
            .to_string(),
        "stdio".into(),
    ]
}

/// The command line of `mcp-server-time` (stdio).
pub fn time_server() -> Vec<String> {
    vec![peer(".venv/bin/mcp-server-time").display().to_string()]
}
