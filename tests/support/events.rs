//! Fixtures for the tests that run a gateway's event side (hub and websocket) in process.

use chrono::Utc;
use toolgate::testing::wire::GatewayInfo;

/// What a test gateway `id` says about itself: this process, grant `ci-bot` in front of
/// `everything`, with its policy at `policy`.
pub fn gateway_info(id: &str, policy: &str) -> GatewayInfo {
    GatewayInfo {
        id: id.into(),
        pid: std::process::id(),
        version: "test".into(),
        grant: "ci-bot".into(),
        server: "everything".into(),
        policy: policy.into(),
        started_at: Utc::now(),
    }
}

/// An in-process gateway's event side (hub and websocket) listed by a discovery file in a
/// runtime directory of its own, so the real binary finds it through the child's
/// environment, never this process's (tests run in parallel).
pub struct Listed {
    pub hub: std::sync::Arc<toolgate::testing::control::Hub>,
    pub server: toolgate::testing::control::ControlHandle,
    pub runtime: tempfile::TempDir,
}

/// Starts `hub`'s event websocket (without the library's own discovery file, which would go
/// to this process's `XDG_RUNTIME_DIR`) and lists it as `runtime/toolgate/<id>.json`, 0600
/// in a 0700 directory. `entry` says everything but the url and the token, which are the
/// websocket's.
pub async fn listed(
    runtime: tempfile::TempDir,
    hub: std::sync::Arc<toolgate::testing::control::Hub>,
    entry: toolgate::testing::control::DiscoveryEntry,
) -> Listed {
    use std::os::unix::fs::PermissionsExt;
    let server = toolgate::testing::control::start(
        hub.clone(),
        toolgate::testing::control::EventsOptions {
            discovery: false,
            ..toolgate::testing::control::EventsOptions::default()
        },
    )
    .await
    .expect("start the event websocket");
    let dir = runtime.path().join("toolgate");
    // A `tail` started first may have made it already.
    let _ = std::fs::create_dir(&dir);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod 0700");
    let entry = toolgate::testing::control::DiscoveryEntry {
        url: server.url().into(),
        token: server.token().into(),
        ..entry
    };
    let file = dir.join(format!("{}.json", entry.id));
    std::fs::write(
        &file,
        serde_json::to_vec(&entry).expect("an entry serialises"),
    )
    .expect("write the discovery file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod 0600");
    Listed {
        hub,
        server,
        runtime,
    }
}
