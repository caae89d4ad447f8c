//! Discovery files: written private and atomically by a starting gateway, found by readers,
//! skipped when their process is gone, removed when the gateway stops.
//!
//! `XDG_RUNTIME_DIR` is process-wide, so every test here points it at the same temporary
//! directory and the tests run one at a time.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use chrono::Utc;
use support::ANSWER_WITHIN;
use support::events::gateway_info;
use toolgate::testing::control::discovery::{self, DiscoveryEntry};
use toolgate::testing::control::{self, EventsOptions, Hub};
use toolgate::testing::wire::GatewayInfo;

/// Points `XDG_RUNTIME_DIR` at a private temporary directory and serialises the tests.
fn runtime_dir() -> (MutexGuard<'static, ()>, PathBuf) {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: set once, under the lock, before any test of this binary reads them. The
        // fallback directory (under the state directory) is kept in here too, so that no
        // gateway of the machine's user is ever listed.
        unsafe {
            std::env::set_var("XDG_RUNTIME_DIR", dir.path());
            std::env::set_var("XDG_STATE_HOME", dir.path().join("state"));
        }
        dir
    });
    (guard, dir.path().to_owned())
}

/// A discovery entry for gateway `id`, process `pid`, pointing at a closed port.
fn entry(id: &str, pid: u32) -> DiscoveryEntry {
    DiscoveryEntry {
        id: id.into(),
        url: "ws://127.0.0.1:9/".into(),
        token: "t".into(),
        pid,
        policy: "/p.json".into(),
        grant: "g".into(),
        server: "s".into(),
        started_at: Utc::now(),
    }
}

fn info(id: &str) -> GatewayInfo {
    gateway_info(id, "/srv/policy.json")
}

/// Runs async test code with the serialising lock held outside it.
fn block_on(test: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_started_gateway_is_listed_with_a_private_file_until_it_stops() {
    let (_serial, runtime) = runtime_dir();
    block_on(async move {
        let hub = Hub::new(info("live1"));
        let server = control::start(hub, EventsOptions::default()).await.unwrap();

        let dir = runtime.join("toolgate");
        assert_eq!(control::discovery_dir(), dir);
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("live1.json");
        assert_eq!(server.discovery_path(), Some(file.as_path()));
        assert_eq!(mode(&file), 0o600);

        let listed = control::list_gateways();
        let entry = listed.iter().find(|e| e.id == "live1").expect("listed");
        assert_eq!(entry.url, server.url());
        assert_eq!(entry.token, server.token());
        assert_eq!(entry.pid, std::process::id());
        assert_eq!(entry.policy, "/srv/policy.json");
        assert_eq!(entry.grant, "ci-bot");
        assert_eq!(entry.server, "everything");

        // What the file says is enough to connect.
        let connecting = control::connect(&entry.url, &entry.token);
        let connected = tokio::time::timeout(ANSWER_WITHIN, connecting).await;
        assert!(
            connected
                .expect("an answer from the gateway in time")
                .is_ok(),
            "the file's url and token connect"
        );

        tokio::time::timeout(ANSWER_WITHIN, server.shutdown())
            .await
            .expect("the event websocket shuts down in time");
        assert!(!file.exists());
        assert!(control::list_gateways().iter().all(|e| e.id != "live1"));
    });
}

#[test]
fn dropping_the_handle_removes_the_file() {
    let (_serial, runtime) = runtime_dir();
    block_on(async move {
        let server = control::start(Hub::new(info("drop1")), EventsOptions::default())
            .await
            .unwrap();
        let file = runtime.join("toolgate/drop1.json");
        assert!(file.exists());
        drop(server);
        assert!(!file.exists());
    });
}

#[test]
fn files_of_dead_processes_and_junk_are_skipped() {
    let (_serial, _runtime) = runtime_dir();
    // A child that has exited and been reaped: its pid is (almost surely) free.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();

    let dead = entry("dead1", dead_pid);
    let dead_file = discovery::write_entry(&dead).unwrap();
    let alive = DiscoveryEntry {
        id: "alive1".into(),
        pid: std::process::id(),
        ..dead.clone()
    };
    let alive_file = discovery::write_entry(&alive).unwrap();
    let dir = control::discovery_dir();
    std::fs::write(dir.join("junk.json"), "{ not json").unwrap();

    let listed = control::list_gateways();
    assert!(listed.iter().any(|e| e.id == "alive1"));
    assert!(listed.iter().all(|e| e.id != "dead1"));
    assert!(!dead_file.exists(), "a dead gateway's file is tidied away");

    std::fs::remove_file(alive_file).unwrap();
    std::fs::remove_file(dir.join("junk.json")).unwrap();
}

#[test]
fn a_directory_open_to_others_is_refused() {
    let (_serial, _runtime) = runtime_dir();
    let dir = discovery::ensure_discovery_dir().unwrap();
    let entry = entry("open1", std::process::id());
    let file = discovery::write_entry(&entry).unwrap();

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = discovery::ensure_discovery_dir().unwrap_err();
    assert!(err.to_string().contains("not private"), "{err}");
    assert!(discovery::write_entry(&entry).is_err());
    assert!(
        control::list_gateways().is_empty(),
        "nothing is trusted from a directory others can write"
    );

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::remove_file(file).unwrap();
}

#[test]
fn a_gateway_id_cannot_escape_the_directory() {
    let (_serial, _runtime) = runtime_dir();
    let entry = entry("../../etc/x", std::process::id());
    assert!(discovery::write_entry(&entry).is_err());
}

#[test]
fn readers_also_look_in_the_fallback_directory_under_the_state_dir() {
    let (_serial, runtime) = runtime_dir();
    let fallback = runtime.join("state/toolgate/gateways");
    assert_eq!(discovery::fallback_dir(), Some(fallback.clone()));
    assert_eq!(
        control::discovery_dirs(),
        vec![runtime.join("toolgate"), fallback.clone()]
    );
    std::fs::create_dir_all(&fallback).unwrap();
    std::fs::set_permissions(&fallback, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = fallback.join("fell1.json");
    std::fs::write(
        &file,
        serde_json::to_string(&entry("fell1", std::process::id())).unwrap(),
    )
    .unwrap();
    assert!(control::list_gateways().iter().any(|e| e.id == "fell1"));

    // The same rules as for the first directory: one open to others is not read.
    std::fs::set_permissions(&fallback, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(control::list_gateways().iter().all(|e| e.id != "fell1"));
    std::fs::remove_file(file).unwrap();
}
