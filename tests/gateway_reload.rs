//! Policy hot reload as the hub sees it: each valid version applied and announced, each
//! broken or missing file refused with its diagnostics while the last good policy stays.
//! Checks are triggered directly on a [`PolicyReloader`], with no filesystem watcher, so
//! nothing here depends on timing; the end-to-end test covers the watcher itself.

use std::sync::Arc;

use tokio::sync::broadcast::error::TryRecvError;
use toolgate::control::Hub;
use toolgate::gateway::reload::{PolicyReloader, load_initial};
use toolgate::wire::{Event, EventKind, GatewayInfo};

fn hub() -> Arc<Hub> {
    Hub::new(GatewayInfo {
        id: "gw".into(),
        pid: 1,
        version: "test".into(),
        grant: "g".into(),
        server: "s".into(),
        policy: "p".into(),
        started_at: chrono::Utc::now(),
    })
}

fn next(events: &mut tokio::sync::broadcast::Receiver<Arc<Event>>) -> Option<EventKind> {
    match events.try_recv() {
        Ok(ev) => Some(ev.kind.clone()),
        Err(TryRecvError::Empty) => None,
        Err(e) => panic!("{e}"),
    }
}

const V1: &str = r#"{"version":"1","default":"deny"}"#;
const V2: &str = r#"{"version":"1","default":"allow"}"#;

#[test]
fn valid_changes_apply_and_broken_or_missing_files_keep_the_last_good_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, V1).unwrap();
    let hub = hub();
    let mut events = hub.subscribe();
    let (path, policy) = load_initial(&path, &hub).unwrap();
    let Some(EventKind::PolicyApplied(first)) = next(&mut events) else {
        panic!("no policy_applied at start")
    };
    assert_eq!(first.path, path.display().to_string());
    let v1_hash = policy.load().hash().to_owned();
    assert_eq!(first.hash, v1_hash);

    let mut watcher = PolicyReloader::new(path.clone(), policy.clone(), hub.clone());
    // Unchanged bytes: nothing to say.
    watcher.check();
    assert_eq!(next(&mut events), None);

    std::fs::write(&path, V2).unwrap();
    watcher.check();
    let Some(EventKind::PolicyApplied(applied)) = next(&mut events) else {
        panic!("no policy_applied for a valid change")
    };
    assert_ne!(applied.hash, v1_hash);
    assert_eq!(policy.load().hash(), applied.hash);

    std::fs::write(&path, r#"{"version":"1","default":"sometimes"}"#).unwrap();
    watcher.check();
    let Some(EventKind::PolicyRejected(rejected)) = next(&mut events) else {
        panic!("no policy_rejected for an invalid file")
    };
    assert!(!rejected.diagnostics.is_empty());
    assert!(
        rejected.diagnostics[0].contains("policy.json:1:"),
        "{:?}",
        rejected.diagnostics
    );
    assert_eq!(rejected.kept_hash.as_deref(), Some(applied.hash.as_str()));
    assert_eq!(
        policy.load().hash(),
        applied.hash,
        "the broken file is not enforced"
    );
    // The same broken bytes again are not reported twice.
    watcher.check();
    assert_eq!(next(&mut events), None);

    std::fs::remove_file(&path).unwrap();
    watcher.check();
    let Some(EventKind::PolicyRejected(gone)) = next(&mut events) else {
        panic!("no policy_rejected for a deleted file")
    };
    assert!(
        gone.diagnostics[0].contains("gone"),
        "{:?}",
        gone.diagnostics
    );
    assert_eq!(policy.load().hash(), applied.hash);

    std::fs::write(&path, V1).unwrap();
    watcher.check();
    let Some(EventKind::PolicyApplied(back)) = next(&mut events) else {
        panic!("no policy_applied when the file is back")
    };
    assert_eq!(back.hash, v1_hash);
}

#[test]
fn a_policy_that_does_not_load_at_start_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, "{").unwrap();
    assert!(load_initial(&path, &hub()).is_err());
    assert!(load_initial(&dir.path().join("missing.json"), &hub()).is_err());
}
