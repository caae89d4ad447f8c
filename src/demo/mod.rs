//! The embedded demo (`toolgate demo`): the real gateway core in front of a built-in MCP
//! server, a demo policy that produces every kind of decision, and simulated agents calling
//! tools under their own grants — all in one process, nothing to configure, no network.
//!
//! Each agent is its own MCP connection: agent ⇄ [`crate::gateway::run`] ⇄ demo server, over
//! in-process pipes. The connections share one policy (watched, so edits apply live), one
//! counter store and one event hub, exactly as the connections of one `serve` gateway would.

pub(crate) mod agents;
pub(crate) mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::BufReader;
use tokio::sync::mpsc;

use crate::control::Hub;
use crate::gateway::reload::absolute;
use crate::gateway::startup::{PolicyInForce, gateway_id, load_and_watch, new_hub};
use crate::gateway::{Gateway, RunOptions};
use crate::policy::MemoryStore;

/// The demo policy, written to a temporary directory at start so the console can edit it.
pub(crate) const POLICY: &str = include_str!("policy.json");

/// The simulated agents' grants.
pub(crate) const GRANTS: &[&str] = &["ci-bot", "ops-bot", "support-bot"];

/// How a demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Use this policy file instead of a fresh copy of the demo policy.
    pub policy: Option<PathBuf>,
    /// Calls per second, for each agent.
    pub rate: f64,
    /// Stop each agent after this many answered calls (`None`: run until stopped).
    pub calls: Option<u64>,
    /// Seed for the agents' choices; the same seed gives the same sequence of calls.
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            policy: None,
            rate: 1.5,
            calls: None,
            seed: 1,
        }
    }
}

/// A running demo. Dropping it stops watching the policy and removes the temporary policy
/// directory; the tasks end with the runtime.
pub struct Demo {
    pub hub: Arc<Hub>,
    pub policy_path: PathBuf,
    /// What the agents were answered, in order, for anyone who wants to show or check it.
    pub answers: mpsc::UnboundedReceiver<agents::Answer>,
    /// One task per agent; each ends when its agent has made its calls.
    pub agents: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    _policy: PolicyInForce,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("policy_path", &self.policy_path)
            .finish_non_exhaustive()
    }
}

/// Starts the gateway, the demo server and the agents. Must run inside a tokio runtime.
pub fn start(options: DemoOptions) -> anyhow::Result<Demo> {
    let (dir, policy_path) = match &options.policy {
        Some(path) => (None, absolute(path)),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("toolgate-demo-")
                .tempdir()
                .context("cannot create a temporary directory for the demo policy")?;
            let path = dir.path().join("policy.json");
            write_policy(&path)?;
            (Some(dir), path)
        }
    };
    let id = gateway_id();
    let hub = new_hub(&id, "*", "meetings-demo", &policy_path);
    let policy_in_force = load_and_watch(&policy_path, &hub)
        .with_context(|| format!("cannot load the policy {}", policy_path.display()))?;
    let policy = policy_in_force.handle.clone();
    let store = Arc::new(MemoryStore::default());

    let pace = Duration::from_secs_f64(1.0 / options.rate.clamp(0.01, 1000.0));
    let (answers_tx, answers) = mpsc::unbounded_channel();
    let mut agent_tasks = Vec::new();
    for (n, grant) in GRANTS.iter().enumerate() {
        let gateway = Arc::new(Gateway::new(
            policy.clone(),
            store.clone(),
            hub.clone(),
            *grant,
            "meetings-demo",
        ));
        let (agent_side, gateway_client_side) = tokio::io::duplex(64 * 1024);
        let (gateway_upstream_side, server_side) = tokio::io::duplex(64 * 1024);
        let (server_read, server_write) = tokio::io::split(server_side);
        tokio::spawn(server::serve(BufReader::new(server_read), server_write));
        let (client_read, client_write) = tokio::io::split(gateway_client_side);
        let (upstream_read, upstream_write) = tokio::io::split(gateway_upstream_side);
        tokio::spawn(crate::gateway::run(
            gateway,
            BufReader::new(client_read),
            client_write,
            BufReader::new(upstream_read),
            upstream_write,
            RunOptions::new(format!("{id}-{grant}")),
        ));
        let (agent_read, agent_write) = tokio::io::split(agent_side);
        // Staggered starts, so the agents do not call in lockstep.
        let start_delay = pace.mul_f64(n as f64 / GRANTS.len() as f64);
        let answers_tx = answers_tx.clone();
        let grant = (*grant).to_owned();
        let seed = options.seed.wrapping_add(n as u64 * 7919);
        let calls = options.calls;
        agent_tasks.push(tokio::spawn(async move {
            tokio::time::sleep(start_delay).await;
            agents::run(
                grant,
                BufReader::new(agent_read),
                agent_write,
                pace,
                calls,
                seed,
                Some(answers_tx),
            )
            .await
        }));
    }
    Ok(Demo {
        hub,
        policy_path: policy_in_force.path.clone(),
        answers,
        agents: agent_tasks,
        _policy: policy_in_force,
        _dir: dir,
    })
}

fn write_policy(path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, POLICY).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EventKind, Verdict};
    use std::collections::HashSet;

    #[test]
    fn the_demo_policy_is_valid() {
        crate::policy::Policy::parse(POLICY, "demo/policy.json").expect("demo policy validates");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_demo_run_produces_every_kind_of_decision() {
        let mut demo = start(DemoOptions {
            rate: 200.0,
            calls: Some(60),
            ..DemoOptions::default()
        })
        .unwrap();
        // The agents handshake before their first call, so nothing that matters is missed.
        let mut events = demo.hub.subscribe();
        let mut verdicts = HashSet::new();
        let mut hidden = false;
        let mut rules = HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while verdicts.len() < 4 || !hidden || !rules.contains("/default") {
            let ev = tokio::time::timeout_at(deadline, events.recv())
                .await
                .expect("every kind of decision within 20 s")
                .expect("hub alive");
            if let EventKind::Call(call) = &ev.kind {
                verdicts.insert(call.decision);
                hidden |= call.rule.starts_with("/hide");
                rules.insert(call.rule.clone());
                if call.decision == Verdict::Hold {
                    demo.hub
                        .resolve(
                            &call.call_id,
                            crate::control::Resolution {
                                approved: true,
                                by: crate::wire::ResolvedBy::Operator,
                                operator: Some("test".into()),
                                reason: None,
                            },
                        )
                        .unwrap();
                }
            }
        }
        assert!(
            rules.iter().any(|r| r.contains("/require/")),
            "argument validation: {rules:?}"
        );
        assert!(
            rules.iter().any(|r| r.contains("/deny_if/")),
            "deny_if: {rules:?}"
        );
        assert!(demo.answers.recv().await.is_some());
    }
}
