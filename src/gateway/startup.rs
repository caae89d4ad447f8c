//! What every gateway starts with, whatever its transport (`wrap`, `serve`, the demo): a
//! fresh id, an event hub that knows who it is, and the policy loaded and watched.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::control::Hub;
use crate::policy::LoadError;
use crate::wire::GatewayInfo;

use super::PolicyHandle;
use super::reload::{PolicyWatcher, absolute, load_initial};

/// A short random gateway id: it names the gateway in discovery and prefixes its call ids.
pub(crate) fn gateway_id() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// The policy in force and the watch that swaps in each valid new version.
pub(crate) struct PolicyInForce {
    /// Absolute path of the policy file.
    pub path: PathBuf,
    pub handle: PolicyHandle,
    /// `None` when the directory cannot be watched: the loaded policy is still enforced,
    /// only live edits are lost (and a warning says so).
    pub watcher: Option<PolicyWatcher>,
}

impl std::fmt::Debug for PolicyInForce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyInForce")
            .field("path", &self.path)
            .field("watched", &self.watcher.is_some())
            .finish()
    }
}

/// A hub for a new gateway with id `id`, attributing calls to `grant` (`*` when tokens name
/// the grants) in front of `server`.
pub(crate) fn new_hub(id: &str, grant: &str, server: &str, policy: &Path) -> Arc<Hub> {
    Hub::new(GatewayInfo {
        id: id.to_owned(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        grant: grant.to_owned(),
        server: server.to_owned(),
        policy: absolute(policy).display().to_string(),
        started_at: chrono::Utc::now(),
    })
}

/// Loads the policy (publishing `policy_applied`) and starts watching it.
pub(crate) fn load_and_watch(path: &Path, hub: &Arc<Hub>) -> Result<PolicyInForce, LoadError> {
    let (path, handle) = load_initial(path, hub)?;
    let watcher = PolicyWatcher::start(&path, handle.clone(), hub.clone())
        .inspect_err(|e| tracing::warn!("{e}; policy edits will not apply until a restart"))
        .ok();
    Ok(PolicyInForce {
        path,
        handle,
        watcher,
    })
}
