//! Choosing a counter store: what the `--counters` options every gateway command shares mean.
//!
//! `toolgate wrap` and `toolgate serve` both flatten the command-line options of
//! `src/cli/counter_args.rs`, which parses them into a [`StoreSpec`] and calls [`open`], so
//! the options read and behave the same everywhere:
//! - `--counters PATH` or `sqlite:PATH`: a SQLite file (the default is
//!   [`SqliteStore::default_path`], shared by every gateway of the user on the machine);
//! - `--counters memory`: in this process only, forgotten on exit;
//! - `--counters redis://HOST:PORT/DB`: Redis, shared across machines, keys under
//!   `--counters-prefix` (default `toolgate`) so tenants stay apart;
//! - `--counters-fail closed|open`: see [`FailMode`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use super::guard::{FailMode, GuardedStore, HealthSink};
use super::{CounterStore, MemoryStore, RedisStore, SqliteStore, StoreError, StoreErrorKind};
use crate::pins::{MemoryPins, PinStore, RedisPins, SqlitePins};
use crate::wire::StoreStatus;

/// The Redis key prefix when `--counters-prefix` is not given.
pub(crate) const DEFAULT_PREFIX: &str = "toolgate";

/// Which store, as written after `--counters`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum StoreSpec {
    Memory,
    Sqlite(PathBuf),
    /// The URL as given (it may hold a password: shown only through [`StoreSpec`]'s Display).
    Redis(String),
}

impl FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<StoreSpec, String> {
        if s == "memory" {
            return Ok(StoreSpec::Memory);
        }
        if s.starts_with("redis://") {
            return Ok(StoreSpec::Redis(s.to_owned()));
        }
        if let Some(path) = s.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(
                    "`sqlite:` needs a file path, e.g. sqlite:/var/lib/toolgate/counters.sqlite3"
                        .into(),
                );
            }
            return Ok(StoreSpec::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "unknown counter store `{scheme}://`; expected a file path, sqlite:PATH, memory or redis://HOST:PORT/DB"
            ));
        }
        if s.is_empty() {
            return Err("expected a file path, sqlite:PATH, memory or redis://HOST:PORT/DB".into());
        }
        Ok(StoreSpec::Sqlite(PathBuf::from(s)))
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Memory => f.write_str("memory"),
            StoreSpec::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreSpec::Redis(url) => f.write_str(&without_password(url)),
        }
    }
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreSpec({self})")
    }
}

/// `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = rest[..at].split_once(':').map_or("", |(user, _)| user);
    format!("{scheme}://{user}:***@{}", &rest[at + 1..])
}

/// The store `spec` names, the default resolved: [`SqliteStore::default_path`] when `None`.
pub(crate) fn resolve(spec: Option<&StoreSpec>) -> Result<StoreSpec, StoreError> {
    match spec {
        Some(spec) => Ok(spec.clone()),
        None => Ok(StoreSpec::Sqlite(SqliteStore::default_path()?)),
    }
}

/// Opens the store `spec` names, with Redis keys under `prefix` (default
/// [`DEFAULT_PREFIX`]) and `fail` when a shared store does not answer. `on_health` hears
/// when a shared store stops answering and when it answers again (a gateway publishes that
/// on its event stream). Errors only for what a restart will not fix: a bad option, or a
/// SQLite file that cannot be created. Neither a locked SQLite file nor a Redis that is down
/// stops a gateway: calls that need a counter fail (closed or open) until it answers.
pub(crate) fn open(
    spec: &StoreSpec,
    prefix: Option<&str>,
    fail: FailMode,
    on_health: impl Fn(&StoreStatus) + Send + Sync + 'static,
) -> Result<Arc<dyn CounterStore>, StoreError> {
    if prefix.is_some() && !matches!(spec, StoreSpec::Redis(_)) {
        return Err(StoreError::new(
            StoreErrorKind::Config,
            format!(
                "--counters-prefix applies to a Redis store only, not to {spec}; separate \
                 SQLite tenants by file instead"
            ),
        ));
    }
    let shown = spec.to_string();
    let sink: HealthSink = Arc::new(on_health);
    match spec {
        StoreSpec::Memory => Ok(Arc::new(MemoryStore::new())),
        StoreSpec::Sqlite(path) => {
            let store = SqliteStore::open(path)?;
            Ok(Arc::new(
                GuardedStore::new(Arc::new(store), shown, fail).with_health_sink(sink),
            ))
        }
        StoreSpec::Redis(url) => {
            let prefix = prefix.unwrap_or(DEFAULT_PREFIX);
            if prefix.is_empty() {
                return Err(StoreError::new(
                    StoreErrorKind::Config,
                    "--counters-prefix must not be empty",
                ));
            }
            let store = Arc::new(RedisStore::new(url, &shown, prefix)?);
            let guarded = GuardedStore::new(store.clone(), shown, fail).with_health_sink(sink);
            guarded.observe(store.ping().as_ref().map(|_| ()));
            Ok(Arc::new(guarded))
        }
    }
}

/// Opens the pin store that lives where `spec`'s counters do (tool pinning): the same SQLite
/// file (table `tool_pins`), the same Redis under `prefix`, or this process's memory. Answers
/// the store and a line for the start-up log saying where pins live.
pub(crate) fn open_pins(
    spec: &StoreSpec,
    prefix: Option<&str>,
) -> Result<(Arc<dyn PinStore>, String), StoreError> {
    let failed = |e: crate::pins::PinStoreError| StoreError::new(StoreErrorKind::Config, e.0);
    match spec {
        StoreSpec::Memory => Ok((
            Arc::new(MemoryPins::new()),
            "tool pins live in this process's memory (--counters memory): they are forgotten \
             at exit and not shared with other gateways"
                .to_owned(),
        )),
        // Opened on first use, like the counters: a locked file must not stop start-up.
        StoreSpec::Sqlite(path) => Ok((
            Arc::new(SqlitePins::lazy(path)),
            format!("tool pins in {spec}"),
        )),
        StoreSpec::Redis(url) => {
            let prefix = prefix.unwrap_or(DEFAULT_PREFIX);
            Ok((
                Arc::new(RedisPins::new(url, &spec.to_string(), prefix).map_err(failed)?),
                format!("tool pins in {spec} (prefix {prefix})"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_specs_read_paths_schemes_and_memory() {
        assert_eq!("memory".parse::<StoreSpec>(), Ok(StoreSpec::Memory));
        assert_eq!(
            "/tmp/c.sqlite3".parse::<StoreSpec>(),
            Ok(StoreSpec::Sqlite("/tmp/c.sqlite3".into()))
        );
        assert_eq!(
            "sqlite:rel/c.db".parse::<StoreSpec>(),
            Ok(StoreSpec::Sqlite("rel/c.db".into()))
        );
        assert_eq!(
            "redis://127.0.0.1:6379/2".parse::<StoreSpec>(),
            Ok(StoreSpec::Redis("redis://127.0.0.1:6379/2".into()))
        );
        assert!("postgres://x".parse::<StoreSpec>().is_err());
        assert!("sqlite:".parse::<StoreSpec>().is_err());
        assert!("".parse::<StoreSpec>().is_err());
    }

    #[test]
    fn a_redis_password_is_never_shown() {
        let spec: StoreSpec = "redis://me:hunter2@db.example:6379/0".parse().unwrap();
        assert_eq!(spec.to_string(), "redis://me:***@db.example:6379/0");
        assert!(!format!("{spec:?}").contains("hunter2"));
        let spec: StoreSpec = "redis://:hunter2@db.example/0".parse().unwrap();
        assert_eq!(spec.to_string(), "redis://:***@db.example/0");
    }

    #[test]
    fn a_prefix_without_redis_is_refused_rather_than_ignored() {
        let refused = open(
            &StoreSpec::Memory,
            Some("tenant-a"),
            FailMode::Closed,
            |_| {},
        );
        assert!(matches!(refused, Err(e) if e.kind == StoreErrorKind::Config));
    }
}
