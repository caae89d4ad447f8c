//! Fixtures for the tests that run a gateway's event side (hub and websocket) in process.

use chrono::Utc;
use toolgate::wire::GatewayInfo;

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
