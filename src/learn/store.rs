//! Where observations live: beside the counters, so that `toolgate learn` (another process)
//! reads what every gateway of the user recorded.
//!
//! - SQLite (counters in a file): a sibling file, `counters.sqlite3` → `counters.learn.sqlite3`,
//!   with its own schema version (`PRAGMA user_version`), so the counter file's schema can
//!   change without touching these rows and a busy counter file never slows recording.
//! - Redis (`--counters redis://`): one sorted set per server under the counters' prefix
//!   (`<prefix>:learn:<server>`, scored by time) and the set of servers seen.
//! - `--counters memory` keeps nothing across processes, so there is no store: `--learn` is
//!   refused with it.
//!
//! Retention is the same everywhere: calls older than [`RETAIN_MS`] are dropped, and at most
//! [`MAX_PER_SERVER`] calls per server are kept (the oldest dropped first), enforced as
//! observations are written.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, TransactionBehavior, params};

use super::Observation;
use crate::policy::StoreSpec;

/// How long observations are kept: 7 days.
pub(crate) const RETAIN_MS: u64 = 7 * 24 * 3600 * 1000;
/// The most calls kept per server.
pub(crate) const MAX_PER_SERVER: usize = 100_000;

/// This version of the observation file's schema; a file with a higher one was written by a
/// newer toolgate and is not touched.
const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS observations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    grant_name TEXT,
    decision TEXT NOT NULL,
    approved INTEGER,
    args TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS observations_by_server ON observations (server, id);
CREATE INDEX IF NOT EXISTS observations_by_time ON observations (at_ms);
";
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The observation store could not answer; says which store and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct LearnStoreError(pub(crate) String);

/// Where observations are kept.
pub(crate) trait LearnStore: Send + Sync + std::fmt::Debug {
    /// Adds `batch` (in call order), then applies the retention as of `now_ms`.
    fn append(&self, batch: &[Observation], now_ms: u64) -> Result<(), LearnStoreError>;

    /// The observations of `server` (every server when `None`) at or after `since` and
    /// within the retention as of `now_ms`, oldest first.
    fn read(
        &self,
        server: Option<&str>,
        since: DateTime<Utc>,
        now_ms: u64,
    ) -> Result<Vec<Observation>, LearnStoreError>;

    /// Erases the observations of `server` (every server when `None`); answers how many.
    fn forget(&self, server: Option<&str>) -> Result<usize, LearnStoreError>;

    /// Where the observations are, for logs and messages.
    fn describe(&self) -> String;
}

/// Opens the observation store where `spec`'s counters are (Redis keys under `prefix`);
/// `None` for `--counters memory`, which keeps nothing beyond the process.
pub(crate) fn open(
    spec: &StoreSpec,
    prefix: Option<&str>,
) -> Result<Option<std::sync::Arc<dyn LearnStore>>, LearnStoreError> {
    match spec {
        StoreSpec::Memory => Ok(None),
        StoreSpec::Sqlite(path) => Ok(Some(std::sync::Arc::new(SqliteLearn::lazy(&sibling_path(
            path,
        ))))),
        StoreSpec::Redis(url) => {
            let prefix = prefix.unwrap_or(crate::policy::store::spec::DEFAULT_PREFIX);
            Ok(Some(std::sync::Arc::new(RedisLearn::new(
                url,
                &spec.to_string(),
                prefix,
            )?)))
        }
    }
}

/// The observation file beside a counter file: `counters.sqlite3` → `counters.learn.sqlite3`.
pub(crate) fn sibling_path(counters: &Path) -> PathBuf {
    let stem = counters
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "counters".to_owned());
    counters.with_file_name(format!("{stem}.learn.sqlite3"))
}

/// Milliseconds since the epoch of a timestamp (0 before it).
fn ms(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0)
}

fn at_of(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Observations in a SQLite file of their own, opened on first use (a locked or missing
/// directory must not stop a gateway from starting).
#[derive(Debug)]
pub(crate) struct SqliteLearn {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
}

impl SqliteLearn {
    pub(crate) fn lazy(path: &Path) -> SqliteLearn {
        SqliteLearn {
            path: path.to_path_buf(),
            conn: Mutex::new(None),
        }
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, LearnStoreError> {
        let fail = |e: &dyn std::fmt::Display| {
            LearnStoreError(format!("observation file {}: {e}", self.path.display()))
        };
        let mut conn = crate::sync::lock(&self.conn);
        if conn.is_none() {
            *conn = Some(connect(&self.path).map_err(|e| fail(&e))?);
        }
        let Some(c) = conn.as_mut() else {
            return Err(fail(&"not open"));
        };
        f(c).map_err(|e| fail(&e))
    }
}

/// Creates the file private to the user (it holds argument values), then opens it and
/// checks or sets up its schema.
fn connect(path: &Path) -> Result<Connection, LearnStoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |e: std::io::Error| LearnStoreError(format!("cannot create the file: {e}"));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    let sql = |e: rusqlite::Error| LearnStoreError(e.to_string());
    let conn = Connection::open(path).map_err(sql)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sql)?;
    if version > SCHEMA_VERSION {
        return Err(LearnStoreError(format!(
            "schema version {version} was written by a newer toolgate (this one reads \
             {SCHEMA_VERSION}); upgrade, or use another --counters file"
        )));
    }
    conn.execute_batch(SCHEMA).map_err(sql)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(sql)?;
    Ok(conn)
}

impl LearnStore for SqliteLearn {
    fn append(&self, batch: &[Observation], now_ms: u64) -> Result<(), LearnStoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO observations
                         (at_ms, server, tool, grant_name, decision, approved, args)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for o in batch {
                    insert.execute(params![
                        sql_int(ms(o.at)),
                        o.server,
                        o.tool,
                        o.grant,
                        o.decision,
                        o.approved,
                        o.args.to_string(),
                    ])?;
                }
            }
            tx.execute(
                "DELETE FROM observations WHERE at_ms < ?1",
                params![sql_int(now_ms.saturating_sub(RETAIN_MS))],
            )?;
            let mut servers: Vec<&str> = batch.iter().map(|o| o.server.as_str()).collect();
            servers.sort_unstable();
            servers.dedup();
            for server in servers {
                // The id of the newest call beyond the cap, if there is one: it and every
                // older call of the server go.
                let beyond: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM observations WHERE server = ?1
                         ORDER BY id DESC LIMIT 1 OFFSET ?2",
                        params![server, sql_int(MAX_PER_SERVER as u64)],
                        |row| row.get(0),
                    )
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?;
                if let Some(id) = beyond {
                    tx.execute(
                        "DELETE FROM observations WHERE server = ?1 AND id <= ?2",
                        params![server, id],
                    )?;
                }
            }
            tx.commit()
        })
    }

    fn read(
        &self,
        server: Option<&str>,
        since: DateTime<Utc>,
        now_ms: u64,
    ) -> Result<Vec<Observation>, LearnStoreError> {
        let from = ms(since).max(now_ms.saturating_sub(RETAIN_MS));
        let rows = self.with_conn(|conn| {
            let mut query = conn.prepare(
                "SELECT at_ms, server, tool, grant_name, decision, approved, args
                 FROM observations WHERE at_ms >= ?1 AND (?2 IS NULL OR server = ?2)
                 ORDER BY id",
            )?;
            let rows = query.query_map(params![sql_int(from), server], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, Option<bool>>(5)?,
                    row.get::<_, String>(6)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let mut unreadable = 0usize;
        let observations = rows
            .into_iter()
            .filter_map(|(at, server, tool, grant, decision, approved, args)| {
                let Ok(args) = serde_json::from_str(&args) else {
                    unreadable += 1;
                    return None;
                };
                Some(Observation {
                    at: at_of(at),
                    server,
                    tool,
                    grant,
                    decision,
                    approved,
                    args,
                })
            })
            .collect();
        if unreadable > 0 {
            tracing::warn!(
                "{unreadable} observation(s) in {} have unreadable arguments; left out",
                self.path.display()
            );
        }
        Ok(observations)
    }

    fn forget(&self, server: Option<&str>) -> Result<usize, LearnStoreError> {
        self.with_conn(|conn| {
            conn.execute(
                "DELETE FROM observations WHERE ?1 IS NULL OR server = ?1",
                params![server],
            )
        })
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}

/// Observations in the counters' Redis: a sorted set per server scored by time.
pub(crate) struct RedisLearn {
    client: redis::Client,
    shown: String,
    prefix: String,
    /// Makes members unique across processes (two identical calls in one millisecond).
    nonce: u64,
    seq: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RedisLearn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLearn")
            .field("redis", &self.shown)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLearn {
    pub(crate) fn new(url: &str, shown: &str, prefix: &str) -> Result<RedisLearn, LearnStoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| LearnStoreError(format!("observation store Redis {shown}: {e}")))?;
        Ok(RedisLearn {
            client,
            shown: shown.to_owned(),
            prefix: prefix.to_owned(),
            nonce: rand::random(),
            seq: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn key(&self, server: &str) -> String {
        format!("{}:learn:{server}", self.prefix)
    }

    fn servers_key(&self) -> String {
        format!("{}:learn:servers", self.prefix)
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, LearnStoreError> {
        use crate::policy::store::redis::IO_TIMEOUT;
        let fail = |e: redis::RedisError| {
            LearnStoreError(format!("observation store Redis {}: {e}", self.shown))
        };
        let mut conn = self
            .client
            .get_connection_with_timeout(IO_TIMEOUT)
            .map_err(fail)?;
        conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(fail)?;
        conn.set_write_timeout(Some(IO_TIMEOUT)).map_err(fail)?;
        f(&mut conn).map_err(fail)
    }

    fn servers(&self, server: Option<&str>) -> Result<Vec<String>, LearnStoreError> {
        match server {
            Some(server) => Ok(vec![server.to_owned()]),
            None => {
                let key = self.servers_key();
                self.with_conn(|c| redis::cmd("SMEMBERS").arg(&key).query(c))
            }
        }
    }
}

impl LearnStore for RedisLearn {
    fn append(&self, batch: &[Observation], now_ms: u64) -> Result<(), LearnStoreError> {
        use std::sync::atomic::Ordering;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut servers: Vec<&str> = Vec::new();
        for o in batch {
            let text = serde_json::to_string(o)
                .map_err(|e| LearnStoreError(format!("cannot encode an observation: {e}")))?;
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            // The member: a unique head, then the observation's JSON.
            let member = format!("{:016x}{seq:016x} {text}", self.nonce);
            pipe.cmd("ZADD")
                .arg(self.key(&o.server))
                .arg(ms(o.at))
                .arg(member)
                .ignore();
            if !servers.contains(&o.server.as_str()) {
                servers.push(&o.server);
            }
        }
        let oldest = now_ms.saturating_sub(RETAIN_MS);
        for server in servers {
            let key = self.key(server);
            pipe.cmd("SADD")
                .arg(self.servers_key())
                .arg(server)
                .ignore();
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(format!("({oldest}"))
                .ignore();
            pipe.cmd("ZREMRANGEBYRANK")
                .arg(&key)
                .arg(0)
                .arg(-(MAX_PER_SERVER as i64) - 1)
                .ignore();
        }
        self.with_conn(|c| pipe.query::<()>(c))
    }

    fn read(
        &self,
        server: Option<&str>,
        since: DateTime<Utc>,
        now_ms: u64,
    ) -> Result<Vec<Observation>, LearnStoreError> {
        let from = ms(since).max(now_ms.saturating_sub(RETAIN_MS));
        let mut out = Vec::new();
        let mut unreadable = 0usize;
        for server in self.servers(server)? {
            let key = self.key(&server);
            let members: Vec<String> = self.with_conn(|c| {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(from)
                    .arg("+inf")
                    .query(c)
            })?;
            for member in members {
                let parsed = member
                    .split_once(' ')
                    .and_then(|(_, text)| serde_json::from_str::<Observation>(text).ok());
                match parsed {
                    Some(o) => out.push(o),
                    None => unreadable += 1,
                }
            }
        }
        if unreadable > 0 {
            tracing::warn!(
                "{unreadable} observation(s) in {} are unreadable; left out",
                self.shown
            );
        }
        // Servers one after another, each in time order: one time order for all.
        out.sort_by_key(|o| o.at);
        Ok(out)
    }

    fn forget(&self, server: Option<&str>) -> Result<usize, LearnStoreError> {
        let mut forgotten = 0;
        for server in self.servers(server)? {
            let key = self.key(&server);
            let servers = self.servers_key();
            let (count, _, _): (usize, usize, usize) = self.with_conn(|c| {
                redis::pipe()
                    .atomic()
                    .cmd("ZCARD")
                    .arg(&key)
                    .cmd("DEL")
                    .arg(&key)
                    .cmd("SREM")
                    .arg(&servers)
                    .arg(&server)
                    .query(c)
            })?;
            forgotten += count;
        }
        Ok(forgotten)
    }

    fn describe(&self) -> String {
        format!("{} (prefix {})", self.shown, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn observation(at_ms: i64, server: &str, tool: &str) -> Observation {
        Observation {
            at: at_of(at_ms),
            server: server.into(),
            tool: tool.into(),
            grant: Some("ci".into()),
            decision: "allow".into(),
            approved: None,
            args: json!({"path": "/srv/a", "n": at_ms}),
        }
    }

    const DAY: i64 = 24 * 3600 * 1000;

    #[test]
    fn the_sibling_file_sits_beside_the_counter_file() {
        assert_eq!(
            sibling_path(Path::new("/s/toolgate/counters.sqlite3")),
            PathBuf::from("/s/toolgate/counters.learn.sqlite3")
        );
    }

    #[test]
    fn sqlite_keeps_observations_across_opens_and_forgets_them_by_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.learn.sqlite3");
        let now = 30 * DAY;
        {
            let store = SqliteLearn::lazy(&path);
            store
                .append(
                    &[
                        observation(now - 1000, "fs", "read_file"),
                        observation(now - 500, "time", "get_time"),
                    ],
                    u64::try_from(now).unwrap(),
                )
                .unwrap();
        }
        let store = SqliteLearn::lazy(&path);
        let all = store
            .read(None, at_of(0), u64::try_from(now).unwrap())
            .unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], observation(now - 1000, "fs", "read_file"));
        let fs = store
            .read(Some("fs"), at_of(0), u64::try_from(now).unwrap())
            .unwrap();
        assert_eq!(fs.len(), 1);
        assert_eq!(store.forget(Some("fs")).unwrap(), 1);
        let left = store
            .read(None, at_of(0), u64::try_from(now).unwrap())
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].server, "time");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn sqlite_drops_calls_older_than_seven_days_and_reads_from_since() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteLearn::lazy(&dir.path().join("l.sqlite3"));
        let now = 30 * DAY;
        store
            .append(
                &[
                    observation(now - 8 * DAY, "fs", "old"),
                    observation(now - 2 * DAY, "fs", "recent"),
                    observation(now - 1000, "fs", "new"),
                ],
                u64::try_from(now).unwrap(),
            )
            .unwrap();
        let all = store
            .read(None, at_of(0), u64::try_from(now).unwrap())
            .unwrap();
        let tools: Vec<&str> = all.iter().map(|o| o.tool.as_str()).collect();
        assert_eq!(tools, ["recent", "new"]);
        let since = store
            .read(None, at_of(now - DAY), u64::try_from(now).unwrap())
            .unwrap();
        assert_eq!(since.len(), 1);
        assert_eq!(since[0].tool, "new");
    }

    #[test]
    fn sqlite_keeps_at_most_the_cap_per_server_dropping_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteLearn::lazy(&dir.path().join("l.sqlite3"));
        let now = 30 * DAY;
        let batch: Vec<Observation> = (0..MAX_PER_SERVER as i64 + 5)
            .map(|i| observation(now - 1_000_000 + i, "fs", "t"))
            .collect();
        store.append(&batch, u64::try_from(now).unwrap()).unwrap();
        store
            .append(
                &[observation(now, "other", "t")],
                u64::try_from(now).unwrap(),
            )
            .unwrap();
        let fs = store
            .read(Some("fs"), at_of(0), u64::try_from(now).unwrap())
            .unwrap();
        assert_eq!(fs.len(), MAX_PER_SERVER);
        assert_eq!(fs[0].args["n"], json!(now - 1_000_000 + 5));
        assert_eq!(
            store
                .read(Some("other"), at_of(0), u64::try_from(now).unwrap())
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_file_from_a_newer_schema_is_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite3");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 9).unwrap();
        drop(conn);
        let err = SqliteLearn::lazy(&path)
            .read(None, at_of(0), 0)
            .unwrap_err();
        assert!(err.0.contains("newer toolgate"), "{err}");
    }
}
