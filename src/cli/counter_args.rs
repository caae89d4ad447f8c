//! The `--counters` options every gateway command flattens (`wrap`, `serve`): the clap side
//! of [`crate::policy::store::spec`], which says what they mean and opens the store.

use std::sync::Arc;

use crate::pins::PinStore;
use crate::policy::store::spec;
use crate::policy::{CounterStore, FailMode, StoreError, StoreSpec};
use crate::wire::StoreStatus;

/// What calls with limits get while the counter store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FailArg {
    /// Denied, with a reason saying the counter store is unavailable.
    #[default]
    Closed,
    /// Admitted without being counted, with a warning in the log.
    Open,
}

impl From<FailArg> for FailMode {
    fn from(arg: FailArg) -> FailMode {
        match arg {
            FailArg::Closed => FailMode::Closed,
            FailArg::Open => FailMode::Open,
        }
    }
}

/// Where a gateway counts its limits (`--counters`, `--counters-prefix`, `--counters-fail`).
#[derive(Debug, Clone, Default, clap::Args)]
pub(super) struct CounterArgs {
    /// Where limits are counted: a SQLite file (PATH or sqlite:PATH) shared by every gateway
    /// of this user on this machine and kept across restarts; `memory` (this process only);
    /// or redis://HOST:PORT/DB, shared by gateways on many machines
    /// [default: ~/.local/state/toolgate/counters.sqlite3]
    #[arg(long, value_name = "STORE")]
    pub counters: Option<StoreSpec>,
    /// Redis key prefix: gateways with different prefixes keep separate counters (tenants)
    /// [default: toolgate]
    #[arg(long, value_name = "PREFIX")]
    pub counters_prefix: Option<String>,
    /// When the counter store does not answer (another process holds the SQLite file's
    /// lock for more than 2 s, Redis is down): deny calls that have limits (closed), or
    /// admit them uncounted (open). Calls without limits never wait for the store.
    #[arg(long, value_enum, value_name = "MODE", default_value = "closed")]
    pub counters_fail: FailArg,
}

impl CounterArgs {
    /// The store chosen, the default resolved.
    pub(super) fn spec(&self) -> Result<StoreSpec, StoreError> {
        spec::resolve(self.counters.as_ref())
    }

    /// Opens the pin store where the chosen counters are; see [`spec::open_pins`].
    pub(super) fn open_pins(&self) -> Result<(Arc<dyn PinStore>, String), StoreError> {
        spec::open_pins(&self.spec()?, self.counters_prefix.as_deref())
    }

    /// Opens the chosen store; see [`spec::open`].
    pub(super) fn open(
        &self,
        on_health: impl Fn(&StoreStatus) + Send + Sync + 'static,
    ) -> Result<Arc<dyn CounterStore>, StoreError> {
        spec::open(
            &self.spec()?,
            self.counters_prefix.as_deref(),
            self.counters_fail.into(),
            on_health,
        )
    }
}
