//! What every gateway command (`wrap`, `serve`) takes besides its transport's own options,
//! and the start-up they share: logging, hub, watched policy, audit log, event websocket,
//! counter store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::counter_args::CounterArgs;
use crate::control::hub::PinReview;
use crate::control::hub::{DEFAULT_MAX_HOLDS, DEFAULT_MAX_HOLDS_PER_GRANT, HoldCaps};
use crate::control::operators::Operators;
use crate::control::{ControlHandle, EventsOptions, Hub, OperatorsHandle, OperatorsWatcher};
use crate::gateway::audit::{AuditFail, AuditKey, AuditOptions};
use crate::gateway::pinning::ToolPins;
use crate::gateway::reload::{ShadowPolicyInForce, load_and_watch_shadow};
use crate::gateway::spin::Window;
use crate::gateway::startup::{PolicyInForce, gateway_id, load_and_watch, new_hub};
use crate::gateway::upstream::DEFAULT_GRACE;
use crate::gateway::{AuditArgs, AuditLog};
use crate::learn::record::Recorder;
use crate::policy::{StoreSpec, StoreWorker};
use crate::tls::{ServerTls, TlsFiles};
use crate::wire::EventKind;

/// `wrap`'s `--spin-us` when not given: its messages come over pipes from local processes,
/// within 50 µs of each other at one call in flight (the bench's direct exchange: 8–11 µs),
/// and a longer look measured no gain there (docs/performance.md, session 15).
pub(super) const WRAP_SPIN_US: u64 = 50;
/// `serve`'s: an HTTP client's next request comes later than a pipe's next line, and a look
/// of up to 200 µs measured about 12 µs less added per call at one in flight than session
/// 14's `serve` (medians of twelve runs each), and 65 µs less than a steady 50 µs look in
/// the sitting that measured both.
pub(super) const SERVE_SPIN_US: u64 = 200;

#[derive(Debug, clap::Args)]
pub(super) struct GatewayArgs {
    /// The policy file (watched: edits apply live, invalid edits are refused).
    #[arg(long, value_name = "P")]
    pub policy: PathBuf,
    /// A candidate policy run beside --policy: every call is decided by both, enforced by
    /// --policy, and where the candidate would decide differently that is reported as a
    /// shadow decision (in the call event, the audit record, `tail`, metrics). Watched like
    /// the policy; a missing or invalid file is reported and never changes what is enforced.
    #[arg(long, value_name = "FILE")]
    pub shadow_policy: Option<PathBuf>,
    /// Audit log (JSON lines, mode 0600) [default: ~/.local/state/toolgate/audit.jsonl]
    #[arg(long, value_name = "PATH")]
    pub audit: Option<PathBuf>,
    /// What the audit log keeps of the arguments: keys and a keyed hash, or the values too
    /// (whatever looks secret redacted).
    #[arg(long, value_enum, default_value = "keys")]
    pub audit_args: AuditArgs,
    /// What tool calls get while the audit log cannot be written (disk full, permissions,
    /// directory gone): `closed` denies them until it can be written again, `open` lets them
    /// through while their records wait in memory. Either way the outage and the recovery
    /// are logged and published (`audit` event), and recovery is automatic.
    #[arg(long, value_enum, value_name = "MODE", default_value = "closed")]
    pub audit_fail: AuditFail,
    /// The key of the arguments' HMAC in audit records: exactly 32 bytes, mode 0600 (make one
    /// with `head -c 32 /dev/urandom > FILE && chmod 600 FILE`). Give gateways the same file
    /// so their records compare
    /// [default: ~/.local/state/toolgate/audit.key, made on first use]
    #[arg(long, value_name = "FILE")]
    pub audit_key: Option<PathBuf>,
    /// Seconds a server gets to exit after its stdin closes, and again after SIGTERM.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_GRACE.as_secs_f64())]
    pub grace: f64,
    /// Where the event websocket listens (operators: `toolgate console`, `tail`, `approve`).
    /// A non-loopback address needs --tls-cert and --tls-key (it is then served as wss://).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub events: SocketAddr,
    /// No event websocket and no discovery file: held calls can then only time out.
    #[arg(long, conflicts_with_all = ["events", "operators"])]
    pub no_events: bool,
    /// The server certificate chain (PEM) for TLS: `serve` then speaks https:// (its MCP
    /// endpoint and /control) and an event websocket on a non-loopback --events speaks
    /// wss://. Watched with --tls-key: a new pair applies to new connections; a broken one
    /// keeps the last good pair and the log says why. TLS 1.2 and 1.3.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Operator accounts (`toolgate operators add NAME --role ROLE --file FILE`): their
    /// tokens are accepted on the event websocket besides this gateway's own, each with its
    /// role (viewer, approver, admin). The file is watched: a revoked account's connections
    /// are closed at once, and a deleted file revokes every account.
    #[arg(long, value_name = "OPERATORS.json", env = "TOOLGATE_OPERATORS")]
    pub operators: Option<PathBuf>,
    /// Most calls one grant may have waiting for an operator at once. A call the policy
    /// would hold beyond this is denied at once, with a reason saying so, so that one agent
    /// cannot take every other grant's holds. 0 denies every call the policy would hold.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_HOLDS_PER_GRANT)]
    pub max_holds_per_grant: usize,
    /// Most calls waiting for an operator in this gateway process at once, all grants
    /// together; beyond it calls the policy would hold are denied, saying so.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_HOLDS)]
    pub max_holds: usize,
    /// The largest JSON-RPC message accepted in either direction, in bytes or with a unit
    /// (`512KiB`, `16MiB`). A larger request is answered with an error, a larger answer is
    /// replaced by an error to the caller; neither is kept in memory whole. Over HTTP it
    /// also caps request bodies (413).
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub max_message: usize,
    /// Before the gateway's threads sleep, look for more work for up to this many
    /// microseconds: the async runtime polls what would wake it (the agent's and the
    /// server's pipes or sockets, other threads' hand-overs), the counter store's thread
    /// its queue; either goes on at once when there is something. Saves a wake-up per
    /// message on machines whose idle CPUs are slow to wake (VMs, deep sleep states). Each
    /// thread starts by looking for 50 µs; while work keeps coming soon after it gave up
    /// (within this limit), it looks twice as long, up to this limit, and when work comes
    /// later than that, half as long again, down to 50 µs. So calls that come
    /// milliseconds or more apart cost 50 µs of CPU per message (after a stream of close
    /// ones, up to the limit, then half of it, for the first two), and a stream of calls
    /// with short gaps costs the gaps' CPU (yielding it to anything else ready to run). An
    /// idle `wrap` does not spin; an idle `serve` wakes once a second for a timer of its own
    /// and looks once then (50 µs). 0 turns it off; 50 looks for 50 µs always. Default: 200
    /// for `serve` (an HTTP client's next request comes later than a pipe's), 50 for `wrap`.
    #[arg(long, value_name = "MICROSECONDS", env = "TOOLGATE_SPIN_US",
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub spin_us: Option<u64>,
    #[command(flatten)]
    pub counters: CounterArgs,
    /// Learn mode: record every tool call (time, server, tool, grant, decision, and its
    /// argument values, secret-looking ones as their type only) beside the counters, for
    /// `toolgate learn` to propose a policy from. Kept 7 days, at most 100,000 calls per
    /// server; `toolgate learn --forget` erases them. A policy's `"learn": true` does the
    /// same while it is in force.
    #[arg(long)]
    pub learn: bool,
    /// Export traces (a SERVER and a CLIENT span per MCP request) and metrics to this
    /// OpenTelemetry collector's OTLP base URL, e.g. http://127.0.0.1:4318 (they go to
    /// /v1/traces and /v1/metrics; OTEL_METRIC_EXPORT_INTERVAL, default 60000 ms), or
    /// http://127.0.0.1:4317 with OTEL_EXPORTER_OTLP_PROTOCOL=grpc; https:// for TLS
    /// (OTEL_EXPORTER_OTLP_CERTIFICATE: the CA's PEM file, else the system's roots).
    /// The standard OTEL_EXPORTER_OTLP_ENDPOINT does the same; OTEL_SERVICE_NAME (default
    /// toolgate), OTEL_RESOURCE_ATTRIBUTES and OTEL_TRACES_SAMPLER apply. With tracing on, a
    /// sampled call that carries no traceparent in params._meta is forwarded with the
    /// gateway's. Off by default.
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,
    /// Log level for stderr (overridden by RUST_LOG).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

/// A gateway's shared parts, started; [`Started::stop`] ends them in order.
pub(super) struct Started {
    pub id: String,
    pub hub: Arc<Hub>,
    pub policy: PolicyInForce,
    /// `--shadow-policy`, when given.
    pub shadow: Option<ShadowPolicyInForce>,
    pub audit: Arc<AuditLog>,
    pub store: StoreWorker,
    /// Spans per call, when tracing is configured.
    pub traces: Option<Arc<crate::telemetry::Tracing>>,
    /// The gateway's metrics, when they are exported by OTLP (`serve` also serves them at
    /// `/metrics`, and starts them itself otherwise).
    pub metrics: Option<Arc<crate::telemetry::Metrics>>,
    metrics_export: Option<crate::telemetry::MetricsExport>,
    /// Tool pins, in the counters' store; they answer the `accept_pin` command.
    pub pins: Arc<ToolPins>,
    /// Learn mode's recorder, where the counters keep observations (none with
    /// `--counters memory`).
    pub learn: Option<Arc<Recorder>>,
    control: Option<ControlHandle>,
    /// `--operators`, applied as the file changes (for `serve`'s `/control` too).
    pub operators: Option<OperatorsHandle>,
    /// Applies changes to `--operators` while the gateway runs.
    _operators: Option<OperatorsWatcher>,
    /// `--tls-cert` and `--tls-key`, loaded and watched.
    pub tls: Option<ServerTls>,
}

impl GatewayArgs {
    /// Logs to stderr at `--log-level` (RUST_LOG wins): stdout may carry the protocol.
    pub(super) fn init_logging(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .or_else(|_| tracing_subscriber::EnvFilter::try_new(&self.log_level))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
    }

    /// `--spin-us` as a duration, or the command's default (`WRAP_SPIN_US` where the
    /// command set none: see [`GatewayArgs::default_spin`]).
    pub(super) fn spin(&self) -> Duration {
        Duration::from_micros(self.spin_us.unwrap_or(WRAP_SPIN_US))
    }

    /// Sets `--spin-us` to the command's default when it was not given.
    pub(super) fn default_spin(&mut self, us: u64) {
        self.spin_us.get_or_insert(us);
    }

    /// The grace period as a duration (a nonsensical number falls back to the default).
    pub(super) fn grace(&self) -> Duration {
        Duration::try_from_secs_f64(self.grace).unwrap_or(DEFAULT_GRACE)
    }

    /// Starts the hub, the watched policy, the audit log, the event websocket (unless
    /// `--no-events`) and the counter store, for calls attributed to `grant` in front of
    /// `server`.
    pub(super) async fn start(&self, grant: &str, server: &str) -> anyhow::Result<Started> {
        self.begin(grant, server)?.finish(self).await
    }

    /// The first part of [`GatewayArgs::start`]: tracing and metrics, the hub and the policy
    /// (and the shadow policy), loaded and watched. What must hold before a server is
    /// started; `wrap` starts its server once this is done, so that the server's own
    /// start-up overlaps the rest of the gateway's ([`Begun::finish`]).
    pub(super) fn begin(&self, grant: &str, server: &str) -> anyhow::Result<Begun> {
        if !self.no_events && !self.events.ip().is_loopback() && self.tls_cert.is_none() {
            anyhow::bail!(
                "refusing --events {}: it is not a loopback address, and without TLS the \
                 operators' tokens and approvals would cross the network in clear text. Pass \
                 --tls-cert PEM --tls-key PEM, or listen on 127.0.0.1",
                self.events
            );
        }
        let traces = match crate::telemetry::TraceConfig::from(self.otlp.as_deref(), |name| {
            std::env::var(name).ok()
        })? {
            Some(config) => {
                let traces = crate::telemetry::Tracing::start(&config)?;
                tracing::info!(
                    "traces exported by OTLP ({}) to {}",
                    config.export.protocol.name(),
                    config.export.endpoint
                );
                Some(Arc::new(traces))
            }
            None => None,
        };
        let metrics_config = crate::telemetry::MetricsConfig::from(self.otlp.as_deref(), |name| {
            std::env::var(name).ok()
        })?;
        let id = gateway_id();
        let hub = new_hub(&id, grant, server, &self.policy);
        let (metrics, metrics_export) = match metrics_config {
            Some(config) => {
                // Started before anything publishes, so every event is counted.
                let metrics = crate::telemetry::Metrics::start(&hub);
                let export = metrics.export_otlp(&config)?;
                tracing::info!(
                    "metrics exported by OTLP ({}) to {}",
                    config.export.protocol.name(),
                    config.export.endpoint
                );
                (Some(metrics), Some(export))
            }
            None => (None, None),
        };
        hub.set_hold_caps(HoldCaps {
            per_grant: self.max_holds_per_grant,
            total: self.max_holds,
        });
        let policy = load_and_watch(&self.policy, &hub)
            .with_context(|| format!("cannot load the policy {}", self.policy.display()))?;
        let shadow = self.shadow_policy.as_deref().map(|path| {
            let (shadow, problem) = load_and_watch_shadow(path);
            if let Some(problem) = problem {
                // Reported where the person starting the gateway reads, then logged on each
                // change: a bad candidate never stops the gateway.
                eprintln!(
                    "toolgate: warning: the shadow policy is not valid; calls are enforced by \
                     --policy alone until it is:\n{}",
                    crate::sanitize::terminal_text(&problem)
                );
            }
            shadow
        });
        Ok(Begun {
            id,
            hub,
            policy,
            shadow,
            traces,
            metrics,
            metrics_export,
        })
    }
}

/// A gateway with its policy loaded ([`GatewayArgs::begin`]).
pub(super) struct Begun {
    id: String,
    hub: Arc<Hub>,
    policy: PolicyInForce,
    shadow: Option<ShadowPolicyInForce>,
    traces: Option<Arc<crate::telemetry::Tracing>>,
    metrics: Option<Arc<crate::telemetry::Metrics>>,
    metrics_export: Option<crate::telemetry::MetricsExport>,
}

impl Begun {
    /// The rest of [`GatewayArgs::start`]: the audit log, operator accounts, the event
    /// websocket (unless `--no-events`), the counter store and the tool pins.
    pub(super) async fn finish(self, args: &GatewayArgs) -> anyhow::Result<Started> {
        let Begun {
            id,
            hub,
            policy,
            shadow,
            traces,
            metrics,
            metrics_export,
        } = self;
        let audit_path = match &args.audit {
            Some(path) => path.clone(),
            None => AuditLog::default_path()?,
        };
        let key = match &args.audit_key {
            Some(path) => AuditKey::load(path)?,
            None => AuditKey::load_or_create(&AuditKey::default_path()?)?,
        };
        let audit = {
            let hub = hub.clone();
            Arc::new(AuditLog::open(
                &audit_path,
                AuditOptions {
                    args: args.audit_args,
                    fail: args.audit_fail,
                    key,
                    health: Some(Arc::new(move |status| {
                        hub.publish(EventKind::Audit(status.clone()));
                    })),
                },
            )?)
        };
        reopen_audit_on_sighup(&audit)?;
        let (operators, operators_watch) = match &args.operators {
            None => (None, None),
            Some(path) => {
                let path = std::path::absolute(path)
                    .with_context(|| format!("cannot use --operators {}", path.display()))?;
                let accounts = Operators::load(&path).context("cannot start (--operators)")?;
                tracing::info!(
                    "operators file {}: {} account(s)",
                    path.display(),
                    accounts.operators.len()
                );
                let handle = OperatorsHandle::new(accounts);
                let watch = OperatorsWatcher::start(&path, handle.clone())
                    .inspect_err(|e| {
                        tracing::warn!(
                            "{e}; operator account changes will not apply until a restart"
                        )
                    })
                    .ok();
                (Some(handle), watch)
            }
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(
                ServerTls::start(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .context("cannot start TLS (--tls-cert, --tls-key)")?,
            ),
            _ => None,
        };
        let control = if args.no_events {
            None
        } else {
            let control = crate::control::start(
                hub.clone(),
                EventsOptions {
                    addr: args.events,
                    // On loopback the event websocket stays ws://: only this machine reaches
                    // it, and local consoles find it by its discovery file.
                    tls: tls.clone().filter(|_| !args.events.ip().is_loopback()),
                    local_token: true,
                    discovery: true,
                    operators: operators.clone(),
                },
            )
            .await?;
            tracing::info!("events on {}", control.url());
            Some(control)
        };
        let store = {
            let hub = hub.clone();
            args.counters
                .open(move |status| hub.publish(EventKind::Store(status.clone())))
                .context("cannot open the counter store (--counters)")?
        };
        hub.set_counter_store(store_identity(
            &args.counters.spec()?,
            args.counters.counters_prefix.as_deref(),
            &id,
        ));
        // Every connection and session of this gateway asks the store through one thread.
        let store = StoreWorker::spinning(store, Window::new(args.spin()));
        let (pin_store, pins_at) = args
            .counters
            .open_pins()
            .context("cannot open the pin store (where --counters are)")?;
        tracing::info!("{pins_at}");
        let pins = Arc::new(ToolPins::new(pin_store, hub.clone()));
        let review: std::sync::Weak<dyn PinReview> = Arc::downgrade(&pins) as _;
        hub.set_pin_review(review);
        let learn = start_recorder(args, &policy)?;
        tracing::info!(
            "gateway {id}: policy {}, audit {} (key {}), counters {}",
            policy.path.display(),
            audit_path.display(),
            audit.key().path().display(),
            args.counters.spec()?
        );
        Ok(Started {
            id,
            hub,
            policy,
            shadow,
            audit,
            store,
            traces,
            metrics,
            metrics_export,
            pins,
            learn,
            control,
            operators,
            _operators: operators_watch,
            tls,
        })
    }
}

impl Started {
    /// The candidate policy's handle, for each gateway's [`crate::gateway::Gateway::with_shadow_policy`].
    pub(super) fn shadow_handle(&self) -> Option<crate::gateway::ShadowPolicyHandle> {
        self.shadow.as_ref().map(|s| s.handle.clone())
    }

    /// The event websocket's token: the operator's credential (none with `--no-events`).
    pub(super) fn events_token(&self) -> Option<&str> {
        self.control.as_ref().map(|c| c.token())
    }

    /// Closes the event websocket (removing the discovery file) and flushes the audit log.
    pub(super) async fn stop(self) {
        if let Some(control) = self.control {
            control.shutdown().await;
        }
        self.audit.close();
        if let Some(learn) = self.learn {
            // Writes what is queued (held calls unresolved) on a thread that may block.
            let _ = tokio::task::spawn_blocking(move || learn.close()).await;
        }
        if let Some(traces) = self.traces {
            // Exporting what is queued blocks (at most the exporter's timeout).
            let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        }
        if let (Some(metrics), Some(export)) = (self.metrics, self.metrics_export) {
            // The last events counted, then one last export (blocking, bounded likewise).
            metrics.settle(Duration::from_secs(1)).await;
            let _ = tokio::task::spawn_blocking(move || export.shutdown()).await;
        }
    }
}

/// Starts learn mode's recorder where the counters are: always (it costs nothing until a
/// call is recorded), so that a policy that turns `"learn": true` on applies at once.
/// `--learn` with `--counters memory` is refused: nothing would outlive the process.
fn start_recorder(
    args: &GatewayArgs,
    policy: &PolicyInForce,
) -> anyhow::Result<Option<Arc<Recorder>>> {
    let spec = args.counters.spec()?;
    let store = crate::learn::store::open(&spec, args.counters.counters_prefix.as_deref())
        .context("cannot open the observation store (where --counters are)")?;
    let Some(store) = store else {
        if args.learn {
            anyhow::bail!(
                "--learn needs counters that outlive this process (a SQLite file or Redis): \
                 with --counters memory the observations would be lost at exit"
            );
        }
        if policy.handle.load().learn() {
            tracing::warn!(
                "the policy says \"learn\": true, but --counters memory keeps nothing: no \
                 observations are recorded"
            );
        }
        return Ok(None);
    };
    let recorder = Recorder::start(store, args.learn).context("cannot start the recorder")?;
    if args.learn || policy.handle.load().learn() {
        tracing::info!(
            "learn mode: every tool call is recorded, argument values included, in {}",
            recorder.store()
        );
    }
    Ok(Some(Arc::new(recorder)))
}

/// Reopens the audit log at its path on every SIGHUP (after rotation by a tool that expects
/// it). The handler replaces SIGHUP's default action, which would end the gateway.
fn reopen_audit_on_sighup(audit: &Arc<AuditLog>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let audit = Arc::downgrade(audit);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let Some(audit) = audit.upgrade() else { return };
            tracing::info!("SIGHUP: reopening the audit log {}", audit.path().display());
            audit.reopen();
        }
    });
    Ok(())
}

/// The smallest `--max-message`: below it ordinary MCP messages (an `initialize`, a tool
/// list) would not fit.
const MIN_MAX_MESSAGE: usize = 4 * 1024;
/// The largest `--max-message`: each side of a connection may hold one message this size.
const MAX_MAX_MESSAGE: usize = 1 << 30;

/// Reads a size: bytes (`1048576`) or a number with a binary unit (`KiB`, `MiB`, `GiB`; `B`
/// for bytes), between 4 KiB and 1 GiB.
fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "`{text}` is not a size; write bytes or a number with KiB, MiB or GiB, e.g. 16MiB"
            ));
        }
    };
    let size = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("`{text}` is not a size; write e.g. 512KiB or 16MiB"))?;
    if !(MIN_MAX_MESSAGE..=MAX_MAX_MESSAGE).contains(&size) {
        return Err(format!(
            "{size} bytes is outside what the gateway accepts: between 4KiB and 1GiB"
        ));
    }
    Ok(size)
}

/// Resolves on SIGTERM or SIGINT: how a gateway is asked to stop.
pub(super) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The counter store's identity in the snapshot (`counter_store`): the same text for every
/// gateway counting in the same store, so a console shows a budget replicas share once. A
/// Redis URL (without its password) and prefix name a shared store; a SQLite file is shared
/// only on one machine (its `/etc/machine-id`); memory belongs to one gateway.
fn store_identity(spec: &StoreSpec, prefix: Option<&str>, gateway: &str) -> String {
    match spec {
        StoreSpec::Memory => format!("memory:{gateway}"),
        StoreSpec::Sqlite(path) => {
            let machine = std::fs::read_to_string("/etc/machine-id")
                .or_else(|_| std::fs::read_to_string("/proc/sys/kernel/hostname"))
                .map(|m| m.trim().to_owned())
                .unwrap_or_default();
            format!("sqlite:{machine}:{}", path.display())
        }
        StoreSpec::Redis(_) => match prefix {
            Some(prefix) => format!("{spec} prefix {prefix}"),
            None => spec.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::lines::DEFAULT_MAX_MESSAGE;

    #[test]
    fn a_store_is_named_alike_only_where_gateways_share_it() {
        let redis: StoreSpec = "redis://user:secret@10.0.0.9:6379/0".parse().unwrap();
        let shared = store_identity(&redis, None, "a1");
        assert_eq!(
            shared,
            store_identity(&redis, None, "b2"),
            "replicas share Redis"
        );
        assert!(!shared.contains("secret"), "{shared}");
        assert_ne!(shared, store_identity(&redis, Some("tenant-b"), "b2"));
        assert_ne!(
            store_identity(&StoreSpec::Memory, None, "a1"),
            store_identity(&StoreSpec::Memory, None, "b2")
        );
        let sqlite = StoreSpec::Sqlite("/home/op/.local/state/toolgate/counters.sqlite3".into());
        assert!(
            store_identity(&sqlite, None, "a1")
                .ends_with(":/home/op/.local/state/toolgate/counters.sqlite3")
        );
    }

    #[test]
    fn the_spin_defaults_to_the_commands_own_and_a_given_one_stays() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            gateway: GatewayArgs,
        }
        let parse = |args: &[&str]| {
            let args = ["toolgate", "--policy", "p.json"]
                .into_iter()
                .chain(args.iter().copied());
            <Cli as clap::Parser>::try_parse_from(args).unwrap().gateway
        };
        let us = Duration::from_micros;
        assert_eq!(parse(&[]).spin(), us(WRAP_SPIN_US));
        let mut serve = parse(&[]);
        serve.default_spin(SERVE_SPIN_US);
        assert_eq!(serve.spin(), us(SERVE_SPIN_US));
        let mut given = parse(&["--spin-us", "30"]);
        given.default_spin(SERVE_SPIN_US);
        assert_eq!(given.spin(), us(30));
    }

    #[test]
    fn sizes_read_with_binary_units_or_as_bytes() {
        assert_eq!(parse_size("16MiB"), Ok(DEFAULT_MAX_MESSAGE));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("8192 b"), Ok(8192));
        for bad in [
            "",
            "MiB",
            "16MB",
            "1.5MiB",
            "-1",
            "16 Mi",
            "99999999999999999999GiB",
        ] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.contains("e.g."), "{bad}: {err}");
        }
        assert!(
            parse_size("1KiB")
                .unwrap_err()
                .contains("between 4KiB and 1GiB")
        );
        assert!(
            parse_size("2GiB")
                .unwrap_err()
                .contains("between 4KiB and 1GiB")
        );
    }
}
