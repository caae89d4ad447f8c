//! [`SqliteStore`]: counters in a SQLite file, the default store of every gateway.
//!
//! Every `toolgate wrap` is its own process (one per agent session), and agents restart their
//! MCP servers often; counting in a file that all of them open makes "30 a day" mean 30 a day
//! for the user, not 30 per process. The file lives in the user's state directory
//! (`~/.local/state/toolgate/counters.sqlite3`), mode 0600.
//!
//! Atomicity across processes: an admission is one `BEGIN IMMEDIATE` transaction (the write
//! lock is taken first, so no two processes check the same budget at once): read each
//! budget's row (or take it as this connection last wrote it, when no other connection has
//! written since: [`Known`]), bring its running count up to the call's window, prune what
//! has left its retained span (in steps), check every budget, and only if all have room
//! take one unit per budget. The units a batch takes from a budget at one time are one row
//! carrying their number (schema version 4, see [`SCHEMA`]), and the rows a batch changed
//! are written once each, before its commit.
//! WAL mode lets readers (`usage`) run beside a writer; other writers wait, in short naps
//! ([`wait_for_lock`]), up to [`BUSY_TIMEOUT`], then the call fails closed.
//!
//! The semantics are [`super::MemoryStore`]'s, row for row: a budget row keeps the largest
//! window ever asked of the key and its latest time; units keep the time of every counted
//! call, with a random token so a release removes exactly its own units. The row also keeps
//! a running count (since schema version 2), so an admission reads the few units that left
//! its window since the last one instead of counting the whole window: its cost does not
//! grow with `max`. The row sorts right after its budget's units in one table (since schema
//! version 3), so a batch writes one page per budget: its new row of units and the state row
//! beside it.
//!
//! The store is synchronous; a gateway asks it from its [`super::StoreWorker`] thread, never
//! from its async runtime, so a call waits for a local transaction (tens of microseconds) or
//! at most [`BUSY_TIMEOUT`] under contention without stopping anything else. Admissions
//! queued together are decided in one transaction ([`CounterStore::admit_many`]): each call
//! checks all its budgets before taking a unit from any, so each stays all-or-nothing and
//! exact, and the batch shares one commit and the pages it writes.
//!
//! Opening is lazy: [`SqliteStore::open`] only creates the directory and the file (what a
//! restart will not fix fails there); the schema check and the sweep of idle budgets need
//! the write lock and run on the first call that needs a counter. So a gateway starts, and
//! answers every call without a limit, while another process holds the file's lock.
//! Checkpoints (copying the WAL into the database, with an fsync) would cost a decision
//! milliseconds now and then, so a background thread of each store runs them: every
//! [`CHECKPOINT_EVERY`], and as soon as a commit finds the WAL past [`RESTART_AFTER_FRAMES`]
//! (the connection's WAL hook rings a [`Bell`], once per round, not once per commit); it
//! starts such a WAL over (a long WAL makes every commit dearer). A checkpoint on commit
//! stays only as a backstop for a WAL grown past [`WAL_BACKSTOP_PAGES`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::{
    Admission, CounterKey, CounterStore, KeyUsage, LimitRequest, NotedUsage, Reservation,
    ReservedUnit, Scope, StoreError, StoreErrorKind,
};

/// How long a write waits for another process's transaction before the call fails closed.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the background thread copies the WAL into the database.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// WAL size (pages) at which a commit checkpoints by itself (the background thread fell
/// behind, or is gone).
const WAL_BACKSTOP_PAGES: i32 = 10_000;

/// WAL size (frames) past which a commit wakes the checkpoint thread, and the thread starts
/// the WAL over (see [`checkpoint`]). Smaller, each commit's append to the WAL's hash index
/// walks fewer earlier frames of its pages; larger, the restarts (each holds the store's
/// writes back for two syncs, 2–4 ms here) come less often. Measured (docs/performance.md,
/// "Store round 4"): at 256 and 1,024 frames the limited call's p99 grew 3–9× with no gain
/// at p50 or in throughput, and natively the hash walk was under 1 % of the process's CPU. 4,096 is
/// one segment of the WAL's index (each has its own hash table, so past it the walk stops
/// growing): the WAL stays about that size whatever the rate, where the clock alone let it
/// grow with the rate.
const RESTART_AFTER_FRAMES: i32 = 4096;

/// The schema this code writes; a file with a newer one is refused, not guessed at (version 1,
/// before running counts, refused version 2 files the same way, version 2 refuses version 3,
/// and version 3 refuses version 4: an older binary never miscounts a newer file, it fails
/// its limited calls closed and says to upgrade).
const SCHEMA_VERSION: i64 = 4;

/// How many admissions (in this process) between sweeps of idle budgets.
const SWEEP_EVERY: u64 = 4096;

/// Schema version 4: one row per budget and batch. A batch's admissions into one budget at
/// one time (at the rates where batches form, nearly all of them: a batch is decided within
/// a millisecond) are one row of `counter_rows` carrying their number, `n`, instead of a row
/// each: the rows a batch inserts, and the leaves they fill and split, no longer grow with
/// its size. The row's units have the tokens `token .. token + size`, so a [`Reservation`]'s
/// unit still names its row and its place in it; a release sets the unit's bit in `released`
/// (so a second release of it takes nothing), takes one from `n`, and deletes the row at 0.
/// Otherwise as version 3 (below): the budget's state row sorts after its units, every
/// statement over units says `token >= 0`, and counts of units are sums of `n`.
///
/// A new table name again: a version-3 gateway running when the file is migrated finds
/// `counter_log` gone (it would count rows, not units, and over-admit), so its calls fail
/// closed until it reconnects and refuses the file.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS counter_keys (
    id        INTEGER PRIMARY KEY,
    counter   TEXT NOT NULL,
    scope     TEXT NOT NULL,
    scope_key TEXT NOT NULL,
    UNIQUE (counter, scope, scope_key)
);
CREATE TABLE IF NOT EXISTS counter_rows (
    budget    INTEGER NOT NULL,
    at_ms     INTEGER NOT NULL,
    token     INTEGER NOT NULL,
    n         INTEGER,
    size      INTEGER,
    released  BLOB,
    retain_ms INTEGER,
    latest_ms INTEGER,
    cursor_ms INTEGER,
    above     INTEGER,
    PRIMARY KEY (budget, at_ms, token)
) WITHOUT ROWID;
";

/// From version 3 (after [`SCHEMA`] created `counter_rows`): every unit a row of one, every
/// state row as it is (the running counts stay exact: the same units, the same cursors).
const MIGRATE_3_TO_4: &str = "
INSERT INTO counter_rows (budget, at_ms, token, n, size, retain_ms, latest_ms, cursor_ms, above)
    SELECT budget, at_ms, token,
           CASE WHEN token >= 0 THEN 1 END, CASE WHEN token >= 0 THEN 1 END,
           retain_ms, latest_ms, cursor_ms, above
    FROM counter_log;
DROP TABLE counter_log;
";

/// Schema version 3: one page written per admission. A budget's names are in `counter_keys`
/// (written once, when the budget is first used); its state and its units are rows of one
/// table, `counter_log`, keyed by `(budget, at_ms, token)`. The state row (`retain_ms`,
/// `latest_ms`, the running count: `above` units counted after `cursor_ms`, kept exact by
/// every insert, release and prune) has the largest `at_ms` there is and a token no unit
/// has (units' tokens are never negative), so it sorts after every unit of its budget: a new
/// unit, the budget's newest, goes in right beside it, and an admission's insert and its
/// update of the state touch one leaf page, one WAL frame, where version 2 (the state in
/// `counter_budgets`, the units in `counter_units`) wrote two. Every statement over units
/// says `token >= 0`, so it never counts, walks or prunes the state row.
///
/// New table names again (version 2's were `counter_budgets` and `counter_units`): a version-2
/// gateway still running when the file is migrated finds its tables gone, so its next
/// statement fails (its call fails closed), and when it reconnects it reads the new version
/// and refuses the file.
const SCHEMA_3: &str = "
CREATE TABLE IF NOT EXISTS counter_keys (
    id        INTEGER PRIMARY KEY,
    counter   TEXT NOT NULL,
    scope     TEXT NOT NULL,
    scope_key TEXT NOT NULL,
    UNIQUE (counter, scope, scope_key)
);
CREATE TABLE IF NOT EXISTS counter_log (
    budget    INTEGER NOT NULL,
    at_ms     INTEGER NOT NULL,
    token     INTEGER NOT NULL,
    retain_ms INTEGER,
    latest_ms INTEGER,
    cursor_ms INTEGER,
    above     INTEGER,
    PRIMARY KEY (budget, at_ms, token)
) WITHOUT ROWID;
";

/// Version 2's tables, created to migrate a version-1 file through them (see
/// [`MIGRATE_1_TO_2`]). Version 2 had no index on the budgets' expiry, unlike version 1: see
/// [`sweep`].
const SCHEMA_2: &str = "
CREATE TABLE IF NOT EXISTS counter_budgets (
    id        INTEGER PRIMARY KEY,
    counter   TEXT NOT NULL,
    scope     TEXT NOT NULL,
    scope_key TEXT NOT NULL,
    retain_ms INTEGER NOT NULL,
    latest_ms INTEGER NOT NULL,
    cursor_ms INTEGER NOT NULL,
    above     INTEGER NOT NULL,
    UNIQUE (counter, scope, scope_key)
);
CREATE TABLE IF NOT EXISTS counter_units (
    budget INTEGER NOT NULL,
    at_ms  INTEGER NOT NULL,
    token  INTEGER NOT NULL,
    PRIMARY KEY (budget, at_ms, token)
) WITHOUT ROWID;
";

/// From version 1 (after [`SCHEMA_2`] created version 2's tables): every unit is copied, and
/// every budget's running count starts before its first unit.
const MIGRATE_1_TO_2: &str = "
INSERT INTO counter_units (budget, at_ms, token) SELECT budget, at_ms, token FROM units;
INSERT INTO counter_budgets (id, counter, scope, scope_key, retain_ms, latest_ms, cursor_ms, above)
    SELECT id, counter, scope, scope_key, retain_ms, latest_ms, -1,
           (SELECT count(*) FROM units WHERE units.budget = budgets.id)
    FROM budgets;
DROP TABLE units;
DROP TABLE budgets;
";

/// From version 2 (after [`SCHEMA_3`] created version 3's tables): names, units and states copied
/// as they are (the running counts stay exact: the same units, the same cursors).
const MIGRATE_2_TO_3: &str = "
INSERT INTO counter_keys (id, counter, scope, scope_key)
    SELECT id, counter, scope, scope_key FROM counter_budgets;
INSERT INTO counter_log (budget, at_ms, token) SELECT budget, at_ms, token FROM counter_units;
INSERT INTO counter_log (budget, at_ms, token, retain_ms, latest_ms, cursor_ms, above)
    SELECT id, 9223372036854775807, -1, retain_ms, latest_ms, cursor_ms, above
    FROM counter_budgets;
DROP TABLE counter_units;
DROP TABLE counter_budgets;
";

/// Counters in a SQLite file, shared by every process that opens the same file.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    /// `None` after an error that may have broken the connection; reopened on the next call.
    conn: Mutex<Option<Open>>,
    admissions: AtomicU64,
    /// Whether this store has swept idle budgets since it was opened.
    swept: std::sync::atomic::AtomicBool,
    /// Wakes the checkpoint thread when a commit finds the WAL long.
    bell: Arc<Bell>,
    /// The checkpoint thread runs while this lives.
    _alive: Arc<()>,
}

impl SqliteStore {
    /// Opens the counter file at `path`, creating it (and its directory) if needed. Takes no
    /// lock: the schema is checked on the first call that needs the store.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        create_private_file(path).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Io,
                format!(
                    "SQLite {}: cannot create the counter file: {e}; choose a writable place \
                     with --counters PATH",
                    path.display()
                ),
            )
        })?;
        let alive = Arc::new(());
        let bell = Arc::new(Bell::default());
        spawn_checkpointer(
            path.to_path_buf(),
            Arc::downgrade(&alive),
            Arc::clone(&bell),
        );
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(None),
            admissions: AtomicU64::new(0),
            swept: std::sync::atomic::AtomicBool::new(false),
            bell,
            _alive: alive,
        })
    }

    /// `<state dir>/toolgate/counters.sqlite3`, e.g. `~/.local/state/toolgate/counters.sqlite3`.
    pub fn default_path() -> Result<PathBuf, StoreError> {
        use etcetera::BaseStrategy;
        let base = etcetera::choose_base_strategy().map_err(|e| {
            StoreError::new(
                StoreErrorKind::Config,
                format!(
                    "no state directory for the counter file ({e}); give one with --counters PATH"
                ),
            )
        })?;
        let dir = base
            .state_dir()
            .unwrap_or_else(|| base.data_dir())
            .join("toolgate");
        Ok(dir.join("counters.sqlite3"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection; what the store knew of the oldest units is forgotten
    /// (`f` may release or sweep units).
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.with_open(|open| {
            open.known.forget();
            f(&mut open.conn)
        })
    }

    fn with_open<T>(
        &self,
        f: impl FnOnce(&mut Open) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        // Nothing panics while holding the lock with the connection in a bad state (a
        // transaction rolls back when dropped), so a poisoned lock is still usable.
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let open = match &mut *guard {
            Some(open) => open,
            empty => empty.insert(Open {
                conn: connect(&self.path, &self.bell).map_err(|e| describe(&self.path, &e))?,
                known: Known::default(),
                scratch: BatchScratch::default(),
            }),
        };
        let done = f(open);
        done.map_err(|e| {
            // A busy database is another process's long write, not a broken connection;
            // what a failed transaction noted was rolled back with it.
            match &mut *guard {
                Some(open) if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => {
                    open.known.forget();
                }
                broken => *broken = None,
            }
            describe(&self.path, &e)
        })
    }
}

/// The store's connection, and what its own admissions left in the file.
#[derive(Debug)]
struct Open {
    conn: Connection,
    known: Known,
    /// A batch's working lists, kept from one batch to the next.
    scratch: BatchScratch,
}

/// The lists [`SqliteStore::admit_batch`] works in, emptied at each batch's start and kept
/// between batches: a batch allocates none of them again (the store thread's `malloc`s,
/// docs/performance.md, "Store round 11").
#[derive(Default)]
struct BatchScratch {
    pending: Pending,
    taking: Vec<Taking>,
    touched: Vec<Touched>,
    /// The budgets already noted, in [`note_usage`].
    seen: Vec<i64>,
}

impl std::fmt::Debug for BatchScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchScratch").finish_non_exhaustive()
    }
}

/// The budget rows as this connection's admissions left them, each with its oldest unit
/// after its cursor when known: an admission then reads no row, and a call in the same
/// millisecond as the last (its window starts at the cursor) reads nothing for its
/// `counters` event. It holds only while no other connection has written the file since
/// (the pager's data version, read once per batch inside its write transaction and again
/// right after its commit, see [`Known::check`]) and this one has not released or swept
/// units (every use of the connection but an admission or a read forgets it, and so does a
/// failed transaction). Pruning removes only units at or before a cursor.
///
/// Within a batch it is also the rows' only up-to-date copy: an admission rewrites its
/// budgets' rows here, and the batch writes each changed row once, before its commit
/// ([`Known::write_dirty`]). So nothing is forgotten in the middle of a batch (the size
/// cap applies at the start of the next one).
#[derive(Debug, Default)]
struct Known {
    /// The pager's data version after this connection's last commit.
    data_version: Option<u32>,
    /// By a hash of the budget's names (checked against the names on a hit).
    budgets: crate::hashing::FastMap<u64, KnownBudget>,
    hasher: crate::hashing::Seeded,
    /// Rows this batch changed and has not written yet (their hashes in `budgets`).
    dirty: Vec<u64>,
}

#[derive(Debug)]
struct KnownBudget {
    counter: Arc<str>,
    scope: Scope,
    scope_key: String,
    row: Budget,
    /// The oldest unit counted after `row.cursor_ms` (`Some(None)`: there is none), if known.
    oldest: Option<Option<u64>>,
    /// Whether `dirty` lists it.
    dirty: bool,
}

/// [`Known`] forgets everything past this many budgets (gateways with many sessions).
const KNOWN_MAX: usize = 1024;

/// The pager's data version of the connection's main database: it changes with every commit
/// of any connection, this one's included, and whenever this connection finds the file
/// changed by another (`PRAGMA data_version` is the same counter, less this connection's
/// own commits; read this way it costs no statement).
fn data_version(conn: &Connection) -> rusqlite::Result<u32> {
    let mut version: std::ffi::c_uint = 0;
    conn.file_control(
        Some(rusqlite::MAIN_DB),
        rusqlite::FileControl::DataVersion(&mut version),
    )?;
    Ok(version)
}

impl Known {
    fn forget(&mut self) {
        self.data_version = None;
        self.budgets.clear();
        self.dirty.clear();
    }

    /// At the start of a batch's transaction (the write lock taken, so the file as this
    /// batch will see it): keeps what is known only if no connection has committed since
    /// this one's last commit.
    fn check(&mut self, tx: &Connection) -> rusqlite::Result<()> {
        self.dirty.clear();
        let version = data_version(tx)?;
        if self.data_version != Some(version) || self.budgets.len() >= KNOWN_MAX {
            self.budgets.clear();
        }
        self.data_version = None;
        Ok(())
    }

    /// Right after this connection's commit: the version it left the file at.
    fn committed(&mut self, conn: &Connection) {
        match data_version(conn) {
            Ok(version) => self.data_version = Some(version),
            Err(_) => self.forget(),
        }
    }

    fn hash(&self, limit: &LimitRequest<'_>) -> u64 {
        use std::hash::BuildHasher;
        self.hasher
            .hash_one((&**limit.counter, limit.scope.as_str(), limit.scope_key))
    }

    /// The budget's row and its oldest unit after the cursor, as this connection left them
    /// (`hash`: [`Known::hash`] of `limit`, computed once for this and [`Known::set`]).
    fn get(&self, hash: u64, limit: &LimitRequest<'_>) -> Option<(Budget, Option<Option<u64>>)> {
        self.budgets
            .get(&hash)
            .filter(|k| {
                *k.counter == **limit.counter
                    && k.scope == limit.scope
                    && k.scope_key == limit.scope_key
            })
            .map(|k| (k.row.clone(), k.oldest))
    }

    /// Notes the row as an admission of this batch left it, to be written before the commit
    /// ([`Known::write_dirty`]).
    fn set(
        &mut self,
        tx: &Connection,
        (hash, limit): (u64, &LimitRequest<'_>),
        row: &Budget,
        oldest: Option<Option<u64>>,
    ) -> rusqlite::Result<()> {
        if let Some(known) = self.budgets.get_mut(&hash)
            && known.row.id == row.id
        {
            known.row = row.clone();
            known.oldest = oldest;
            if !known.dirty {
                known.dirty = true;
                self.dirty.push(hash);
            }
            return Ok(());
        }
        let replaced = self.budgets.insert(
            hash,
            KnownBudget {
                counter: Arc::clone(limit.counter),
                scope: limit.scope,
                scope_key: limit.scope_key.to_owned(),
                row: row.clone(),
                oldest,
                dirty: true,
            },
        );
        match replaced {
            // Another budget under the same hash (names that collide): its row is written
            // now, since from here on it is read from the file.
            Some(old) if old.dirty => old.row.write(tx),
            _ => {
                self.dirty.push(hash);
                Ok(())
            }
        }
    }

    /// Writes the rows this batch changed, each once.
    fn write_dirty(&mut self, tx: &Connection) -> rusqlite::Result<()> {
        for hash in self.dirty.drain(..) {
            if let Some(known) = self.budgets.get_mut(&hash)
                && known.dirty
            {
                known.dirty = false;
                known.row.write(tx)?;
            }
        }
        Ok(())
    }
}

fn describe(path: &Path, e: &rusqlite::Error) -> StoreError {
    let kind = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreErrorKind::Busy,
        Some(ErrorCode::TypeMismatch | ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StoreErrorKind::Schema
        }
        Some(
            ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::FileLockingProtocolFailed,
        ) => StoreErrorKind::Io,
        _ => StoreErrorKind::Other,
    };
    let hint = match kind {
        StoreErrorKind::Busy => format!(
            "; another process held the file's lock for more than {} s",
            BUSY_TIMEOUT.as_secs()
        ),
        StoreErrorKind::Schema => "; choose another file with --counters".to_owned(),
        _ => String::new(),
    };
    StoreError::new(kind, format!("SQLite {}: {e}{hint}", path.display()))
}

/// SQLite integers are signed 64-bit; times and windows beyond that are clamped.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Opens the counter file and checks its schema, waiting out another process's lock. The busy
/// handler does not cover every step of this: two gateways opening a new file at once can see
/// `SQLITE_BUSY` at once (switching the file to WAL needs it alone), so a busy answer is
/// retried here, with growing pauses, for as long as the busy timeout would have waited.
fn connect(path: &Path, bell: &Arc<Bell>) -> rusqlite::Result<Connection> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        match connect_once(path, bell) {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() + pause < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            done => return done,
        }
    }
}

fn connect_once(path: &Path, bell: &Arc<Bell>) -> rusqlite::Result<Connection> {
    // Again: the file may have been removed since the store was opened.
    create_private_file(path).map_err(|e| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("cannot create the counter file: {e}")),
        )
    })?;
    let mut conn = Connection::open(path)?;
    conn.busy_handler(Some(wait_for_lock))?;
    // Every statement an admission, a release and a read use stays prepared.
    conn.set_prepared_statement_cache_capacity(32);
    // WAL: readers beside one writer, and commits without a sync of the main file.
    // NORMAL sync: a power cut may lose the last few counted calls, never corrupt the file.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    watch_wal(&mut conn, Arc::clone(bell))?;
    // After a checkpoint, a WAL grown under a burst is cut back to this size.
    conn.pragma_update(None, "journal_size_limit", 16 * 1024 * 1024)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
            Some(format!(
                "the counter file has schema version {version}, written by a newer toolgate \
                 (this one understands {SCHEMA_VERSION}); upgrade, or choose another file with --counters"
            )),
        ));
    }
    // Each migration runs in the transaction that read the version: the file is migrated
    // whole or not at all.
    if version < SCHEMA_VERSION {
        if version == 1 {
            tx.execute_batch(SCHEMA_2)?;
            tx.execute_batch(MIGRATE_1_TO_2)?;
        }
        if version == 1 || version == 2 {
            tx.execute_batch(SCHEMA_3)?;
            tx.execute_batch(MIGRATE_2_TO_3)?;
        }
        tx.execute_batch(SCHEMA)?;
        if (1..=3).contains(&version) {
            tx.execute_batch(MIGRATE_3_TO_4)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(conn)
}

/// SQLite's busy handler for the store's connections: waits out another process's
/// transaction in short naps (20 µs doubling to at most 1 ms, jittered) for up to
/// [`BUSY_TIMEOUT`]. SQLite's own handler naps up to 100 ms at a time: with eight gateways
/// taking turns on one file in transactions of tens of microseconds, a gateway that napped
/// that long kept losing the lock to those that had just committed, until its calls failed
/// at the busy timeout. Short naps keep the turns fair and the waits about one transaction.
fn wait_for_lock(attempt: i32) -> bool {
    thread_local! {
        static WAITING_SINCE: std::cell::Cell<Option<std::time::Instant>> =
            const { std::cell::Cell::new(None) };
    }
    let now = std::time::Instant::now();
    let since = if attempt == 0 {
        now
    } else {
        WAITING_SINCE.get().unwrap_or(now)
    };
    WAITING_SINCE.set(Some(since));
    if now.duration_since(since) >= BUSY_TIMEOUT {
        return false;
    }
    let shift = u32::try_from(attempt.clamp(0, 6)).unwrap_or(6);
    let nap_us: u64 = (20u64 << shift).min(1000);
    let nap_us = nap_us / 2 + rand::random::<u64>() % (nap_us / 2 + 1);
    std::thread::sleep(Duration::from_micros(nap_us));
    true
}

/// Wakes the checkpoint thread: rung by a commit that finds the WAL past
/// [`RESTART_AFTER_FRAMES`], and quiet from then until the thread's round is over, so a
/// commit pays one atomic load, and the thread one wake-up per round.
#[derive(Debug, Default)]
struct Bell {
    rung: AtomicBool,
    /// The checkpoint thread, once it runs.
    thread: OnceLock<std::thread::Thread>,
}

impl Bell {
    fn ring(&self) {
        if !self.rung.load(Ordering::Relaxed)
            && !self.rung.swap(true, Ordering::AcqRel)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
    }

    /// The round is over: the next commit past the mark rings again.
    fn quiet(&self) {
        self.rung.store(false, Ordering::Release);
    }
}

/// The store connection's WAL hook (SQLite calls it after each commit with the WAL's size in
/// frames): rings the checkpoint thread past [`RESTART_AFTER_FRAMES`], and past
/// [`WAL_BACKSTOP_PAGES`] (the thread fell behind, or is gone) checkpoints in the commit's
/// thread, passively, as SQLite's automatic checkpoint (which this hook replaces) would.
/// It never reports an error: the commit has happened, and an error here would make the
/// caller take it for a failed one.
fn watch_wal(conn: &mut Connection, bell: Arc<Bell>) -> rusqlite::Result<()> {
    conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, frames| {
        if frames >= WAL_BACKSTOP_PAGES {
            if let Err(e) = wal.checkpoint() {
                tracing::debug!("checkpoint on commit: {e}");
            }
        } else if frames >= RESTART_AFTER_FRAMES {
            bell.ring();
        }
        Ok(())
    }))
}

/// One round of the checkpoint thread: a passive checkpoint, then, when the WAL has grown
/// past [`RESTART_AFTER_FRAMES`], a restart of it. Returns whether a restart was wanted but
/// could not finish (another connection kept the lock or read an older snapshot).
///
/// Why the restart: under steady load the store commits every few tens of microseconds, so a
/// passive checkpoint never finds the whole WAL copied, and SQLite only starts the WAL over
/// when it does. The WAL then grows to the backstop, and since every admission writes the
/// same two pages again, the WAL's hash index holds ever longer runs of one page number:
/// each commit's append and each read of those pages walks them (in a callgrind profile of
/// one limited call, `walIndexAppend` alone was 13k instructions). A restart holds off the
/// store's writes for the copy of a few pages and the syncs, once per
/// [`RESTART_AFTER_FRAMES`] frames.
fn checkpoint(conn: &Connection) -> rusqlite::Result<bool> {
    let log: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
    if log < i64::from(RESTART_AFTER_FRAMES) {
        return Ok(false);
    }
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get(0))?;
    Ok(busy != 0)
}

/// The checkpoint thread's busy handler: a restart waits for the write lock, and then,
/// holding it, for readers of older snapshots; it gives up after about 5 ms (and tries again
/// at its next round), so it never holds a decision for long.
fn wait_briefly(attempt: i32) -> bool {
    if attempt >= 25 {
        return false;
    }
    std::thread::sleep(Duration::from_micros(200));
    true
}

/// Copies the WAL into the database every [`CHECKPOINT_EVERY`], and when the [`Bell`] rings,
/// until the store is dropped. The passive checkpoint never waits for (or blocks) a
/// decision; the restart of a long WAL may hold one for a few milliseconds (see
/// [`checkpoint`]). Failures are retried at the next round of the clock: a restart that
/// could not finish leaves the bell rung, so commits do not wake the thread into another
/// one at once.
fn spawn_checkpointer(path: PathBuf, alive: Weak<()>, bell: Arc<Bell>) {
    let ringer = Arc::clone(&bell);
    let run = move || {
        let mut conn: Option<Connection> = None;
        loop {
            std::thread::park_timeout(CHECKPOINT_EVERY);
            if alive.strong_count() == 0 {
                return;
            }
            if conn.is_none() {
                conn = Connection::open(&path)
                    .and_then(|mut c| c.busy_handler(Some(wait_briefly)).map(|()| c))
                    .inspect_err(|e| tracing::debug!("checkpoint: cannot open: {e}"))
                    .ok();
            }
            let finished = match conn.as_ref().map(checkpoint) {
                Some(Ok(unfinished)) => !unfinished,
                Some(Err(e)) => {
                    tracing::debug!("checkpoint of {}: {e}", path.display());
                    conn = None;
                    false
                }
                None => false,
            };
            if finished {
                bell.quiet();
            }
        }
    };
    match std::thread::Builder::new()
        .name("counters-checkpoint".into())
        .spawn(run)
    {
        Ok(handle) => {
            let _ = ringer.thread.set(handle.thread().clone());
        }
        Err(e) => {
            tracing::warn!("no checkpoint thread ({e}); commits will checkpoint by themselves");
        }
    }
}

/// The counter file and its directory are the user's alone: they name grants and sessions
/// (the pin store keeps its table in the same file, created the same way).
pub(crate) fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    // SQLite gives its -wal and -shm files the database file's mode.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map(drop)
}

/// Forgets idle budgets: those whose every unit is out of the retained span. (Budgets in use
/// are pruned as they are admitted.) Reads every budget row, once per [`SWEEP_EVERY`]
/// admissions: an index on their expiry would be rewritten by every admission (a page more
/// written per call, for a sweep that runs once in thousands).
fn sweep(conn: &mut Connection, now_ms: u64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Each budget's state row found by its key (names, then the row that sorts last), not by
    // a scan of `counter_rows`, which holds every unit too: `CROSS JOIN` keeps that loop order
    // (SQLite's planner, without statistics, chose the scan).
    let idle: Vec<i64> = tx
        .prepare(
            "SELECT k.id FROM counter_keys k CROSS JOIN counter_rows s
                 ON s.budget = k.id AND s.at_ms = 9223372036854775807 AND s.token = -1
             WHERE s.latest_ms + 2 * s.retain_ms <= ?1",
        )?
        .query_map(params![sql_int(now_ms)], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in idle {
        tx.execute("DELETE FROM counter_rows WHERE budget = ?1", params![id])?;
        tx.execute("DELETE FROM counter_keys WHERE id = ?1", params![id])?;
    }
    tx.commit()
}

/// One budget's row, as an admission reads and rewrites it.
#[derive(Debug, Clone)]
struct Budget {
    id: i64,
    retain_ms: u64,
    latest_ms: u64,
    /// Units counted after this time number `above`.
    cursor_ms: i64,
    above: u64,
}

impl Budget {
    /// Writes the row as it is here.
    fn write(&self, tx: &Connection) -> rusqlite::Result<()> {
        tx.prepare_cached(
            "UPDATE counter_rows SET retain_ms = ?2, latest_ms = ?3, cursor_ms = ?4, above = ?5
             WHERE budget = ?1 AND at_ms = 9223372036854775807 AND token = -1",
        )?
        .execute(params![
            self.id,
            sql_int(self.retain_ms),
            sql_int(self.latest_ms),
            self.cursor_ms,
            sql_int(self.above)
        ])?;
        Ok(())
    }

    /// A new budget: its names, and its state row (empty; written again before the commit).
    fn create(tx: &Connection, limit: &LimitRequest<'_>) -> rusqlite::Result<Budget> {
        tx.prepare_cached(
            "INSERT INTO counter_keys (counter, scope, scope_key) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![
            &**limit.counter,
            limit.scope.as_str(),
            limit.scope_key
        ])?;
        let id = tx.last_insert_rowid();
        tx.prepare_cached(
            "INSERT INTO counter_rows (budget, at_ms, token, retain_ms, latest_ms, cursor_ms, above)
             VALUES (?1, 9223372036854775807, -1, 0, 0, -1, 0)",
        )?
        .execute(params![id])?;
        Ok(Budget {
            id,
            retain_ms: 0,
            latest_ms: 0,
            cursor_ms: -1,
            above: 0,
        })
    }

    fn find(
        tx: &Connection,
        counter: &str,
        scope: Scope,
        scope_key: &str,
    ) -> rusqlite::Result<Option<Budget>> {
        tx.prepare_cached(
            "SELECT k.id, s.retain_ms, s.latest_ms, s.cursor_ms, s.above
             FROM counter_keys k JOIN counter_rows s
                 ON s.budget = k.id AND s.at_ms = 9223372036854775807 AND s.token = -1
             WHERE k.counter = ?1 AND k.scope = ?2 AND k.scope_key = ?3",
        )?
        .query_row(params![counter, scope.as_str(), scope_key], |r| {
            Ok(Budget {
                id: r.get(0)?,
                retain_ms: from_sql(r.get(1)?),
                latest_ms: from_sql(r.get(2)?),
                cursor_ms: r.get(3)?,
                above: from_sql(r.get(4)?),
            })
        })
        .optional()
    }

    /// Units counted after `low`: the running count, corrected by the units between the
    /// cursor and `low` (few: those that left the window since the cursor last moved, or
    /// those of a clock slightly behind).
    ///
    /// `pending`: the batch's units not written yet; this budget's are written before a read.
    fn after(&self, tx: &Connection, low: i64, pending: &mut Pending) -> rusqlite::Result<u64> {
        if low == self.cursor_ms {
            return Ok(self.above);
        }
        pending.flush(tx, self.id)?;
        Ok(if low > self.cursor_ms {
            self.above
                .saturating_sub(count_between(tx, self.id, self.cursor_ms, low)?)
        } else {
            self.above
                .saturating_add(count_between(tx, self.id, low, self.cursor_ms)?)
        })
    }

    /// Moves the cursor forward to `low` (never back: a clock behind reads the difference
    /// instead, so clocks that take turns do not move it to and fro). Returns the oldest unit
    /// counted after `low` (`Some(None)`: there is none) when the walk that moved the cursor
    /// came upon it; `None` when it was not read.
    ///
    /// The units that left the window are walked in the primary key's order (at most
    /// [`WALK_LEAVING`] of them, else counted): the walk stops at the first unit still in
    /// the window, which is the oldest one a call's `counters` event needs, so that takes no
    /// read of its own.
    ///
    /// `oldest` is the oldest unit after the cursor, when known (see [`Known`]): if it is
    /// still in the window (or there is none), no unit left it and nothing is read.
    fn advance(
        &mut self,
        tx: &Connection,
        pending: &mut Pending,
        low: i64,
        oldest: Option<Option<u64>>,
    ) -> rusqlite::Result<Option<Option<u64>>> {
        if low <= self.cursor_ms {
            return Ok(None);
        }
        if let Some(oldest) = oldest
            && oldest.is_none_or(|at_ms| sql_int(at_ms) > low)
        {
            self.cursor_ms = low;
            return Ok(Some(oldest));
        }
        pending.flush(tx, self.id)?;
        let mut rows = tx.prepare_cached(
            "SELECT at_ms, n FROM counter_rows WHERE budget = ?1 AND at_ms > ?2 AND token >= 0",
        )?;
        let mut rows = rows.query(params![self.id, self.cursor_ms])?;
        let mut leaving: u64 = 0;
        let mut walked: u64 = 0;
        let mut oldest = None;
        while let Some(row) = rows.next()? {
            let at_ms: i64 = row.get(0)?;
            if at_ms > low {
                oldest = Some(from_sql(at_ms));
                break;
            }
            leaving = leaving.saturating_add(from_sql(row.get(1)?));
            walked += 1;
            if walked > WALK_LEAVING {
                drop(rows);
                self.above = self.after(tx, low, pending)?;
                self.cursor_ms = low;
                return Ok(None);
            }
        }
        self.above = self.above.saturating_sub(leaving);
        self.cursor_ms = low;
        Ok(Some(oldest))
    }
}

/// How many rows of units that left a window [`Budget::advance`] walks one by one before it counts
/// them instead (a budget idle for a while, or a burst leaving the window at once).
const WALK_LEAVING: u64 = 64;

impl Budget {
    /// Units counted at or before this time are never counted again (see [`admit_in`]).
    fn horizon(&self) -> Option<i64> {
        let horizon = self
            .latest_ms
            .checked_sub(self.retain_ms.saturating_mul(2))?;
        Some(sql_int(horizon).min(self.cursor_ms))
    }
}

/// Units of `budget` counted in `(low, high]`.
fn count_between(tx: &Connection, budget: i64, low: i64, high: i64) -> rusqlite::Result<u64> {
    let n: i64 = tx
        .prepare_cached(
            "SELECT coalesce(sum(n), 0) FROM counter_rows
             WHERE budget = ?1 AND at_ms > ?2 AND at_ms <= ?3 AND token >= 0",
        )?
        .query_row(params![budget, low, high], |r| r.get(0))?;
    Ok(from_sql(n))
}

/// The start of a window of `window_ms` at `at_ms` (units counted after it are inside).
fn window_start(at_ms: u64, window_ms: u64) -> i64 {
    at_ms.checked_sub(window_ms).map_or(-1, sql_int)
}

impl SqliteStore {
    /// Decides `calls` in one transaction; with `noted`, also notes how each budget an
    /// admitted call took a unit from stood after the batch's last such call (see
    /// [`NotedUsage`]): its running count is known there, and its oldest unit is one more
    /// read of an index, once per budget and batch.
    fn admit_batch(
        &self,
        calls: &[(&[LimitRequest<'_>], u64)],
        mut noted: Option<&mut Vec<NotedUsage>>,
    ) -> Vec<Result<Admission, StoreError>> {
        // What the batch notes goes straight into `noted`, taken back if it fails.
        let noted_before = noted.as_ref().map_or(0, |noted| noted.len());
        let decided = self.with_open(|open| {
            let known = &mut open.known;
            let BatchScratch {
                pending,
                taking,
                touched,
                seen,
            } = &mut open.scratch;
            pending.rows.clear();
            touched.clear();
            in_transaction(&open.conn, Begin::Write, |tx| {
                known.check(tx)?;
                // Each call checks all its budgets before it takes a unit from any, so a refused
                // call wrote nothing but what any call would have (its budgets' cursors and
                // latest times): the calls share one transaction without savepoints.
                let mut answers: Vec<Result<Admission, StoreError>> =
                    Vec::with_capacity(calls.len());
                for (call, (limits, now_ms)) in calls.iter().enumerate() {
                    let touching = noted.is_some().then_some((call, &mut *touched));
                    answers.push(Ok(admit_in(
                        tx,
                        known,
                        (&mut *pending, &mut *taking),
                        limits,
                        *now_ms,
                        touching,
                    )?));
                }
                if let Some(noted) = noted.as_deref_mut() {
                    note_usage(tx, (&mut *pending, &mut *seen), &answers, touched, noted)?;
                }
                pending.flush_all(tx)?;
                known.write_dirty(tx)?;
                Ok(answers)
            })
            .inspect(|_| known.committed(&open.conn))
        });
        let answers = match decided {
            Ok(answers) => answers,
            Err(e) => {
                if let Some(noted) = noted {
                    noted.truncate(noted_before);
                }
                return vec![Err(e); calls.len()];
            }
        };
        let n = u64::try_from(calls.len()).unwrap_or(u64::MAX);
        let before = self.admissions.fetch_add(n, Ordering::Relaxed);
        let now = calls.last().map_or(0, |(_, now_ms)| *now_ms);
        // The first admission forgets what went idle while no gateway ran (at the calls'
        // time, as every sweep: the clock a gateway decides with); then every SWEEP_EVERY.
        let first = !self.swept.swap(true, Ordering::Relaxed);
        if (first || before / SWEEP_EVERY != before.saturating_add(n) / SWEEP_EVERY)
            && let Err(e) = self.with_conn(|conn| sweep(conn, now))
        {
            tracing::warn!("cannot sweep idle counters: {e}");
        }
        answers
    }
}

impl CounterStore for SqliteStore {
    fn admit(&self, limits: &[LimitRequest<'_>], now_ms: u64) -> Result<Admission, StoreError> {
        self.admit_many(&[(limits, now_ms)])
            .pop()
            .unwrap_or_else(|| Err(StoreError::new(StoreErrorKind::Other, "no answer")))
    }

    fn admit_many(
        &self,
        calls: &[(&[LimitRequest<'_>], u64)],
    ) -> Vec<Result<Admission, StoreError>> {
        self.admit_batch(calls, None)
    }

    fn admit_many_noting(
        &self,
        calls: &[(&[LimitRequest<'_>], u64)],
        noted: &mut Vec<NotedUsage>,
    ) -> Vec<Result<Admission, StoreError>> {
        self.admit_batch(calls, Some(noted))
    }

    fn try_release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        if reservation.is_empty() {
            return Ok(());
        }
        self.with_conn(|conn| {
            in_transaction(conn, Begin::Write, |tx| {
                for unit in reservation.units() {
                    let key = &unit.key;
                    let Some(budget) = Budget::find(tx, &key.counter, key.scope, &key.scope_key)?
                    else {
                        continue;
                    };
                    let removed = give_back(tx, budget.id, unit)?;
                    // Only a unit that was there, and counted after the cursor, was in `above`
                    // (a second release of the same unit removes nothing).
                    if removed && sql_int(unit.at_ms) > budget.cursor_ms {
                        tx.prepare_cached(
                            "UPDATE counter_rows SET above = above - 1
                             WHERE budget = ?1 AND at_ms = 9223372036854775807 AND token = -1",
                        )?
                        .execute(params![budget.id])?;
                    }
                }
                Ok(())
            })
        })
    }

    fn usage_of(
        &self,
        key: &CounterKey,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<KeyUsage, StoreError> {
        let low = window_start(now_ms, window_ms);
        // One read transaction: the row and its units from one snapshot.
        // Reads leave what the connection knows as it is.
        let found = self.with_open(|open| {
            in_transaction(&open.conn, Begin::Read, |tx| {
                let Some(budget) = Budget::find(tx, &key.counter, key.scope, &key.scope_key)?
                else {
                    return Ok(None);
                };
                let used = budget.after(tx, low, &mut Pending::default())?;
                let oldest = oldest_after(tx, budget.id, low)?;
                Ok(Some((used, oldest)))
            })
        })?;
        let (used, oldest) = found.unwrap_or((0, None));
        Ok(KeyUsage {
            scope_key: key.scope_key.to_string(),
            used,
            next_free_in_ms: oldest
                .filter(|_| used > 0)
                .map(|oldest| super::leaves_in(oldest, window_ms, now_ms)),
        })
    }

    fn usage(
        &self,
        counter: &str,
        scope: Scope,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<KeyUsage>, StoreError> {
        let low = window_start(now_ms, window_ms);
        self.with_open(|open| {
            in_transaction(&open.conn, Begin::Read, |tx| {
                let budgets: Vec<(String, Budget)> = tx
                    .prepare_cached(
                        "SELECT k.scope_key, k.id, s.retain_ms, s.latest_ms, s.cursor_ms, s.above
                     FROM counter_keys k JOIN counter_rows s
                         ON s.budget = k.id AND s.at_ms = 9223372036854775807 AND s.token = -1
                     WHERE k.counter = ?1 AND k.scope = ?2 ORDER BY k.scope_key",
                    )?
                    .query_map(params![counter, scope.as_str()], |r| {
                        Ok((
                            r.get(0)?,
                            Budget {
                                id: r.get(1)?,
                                retain_ms: from_sql(r.get(2)?),
                                latest_ms: from_sql(r.get(3)?),
                                cursor_ms: r.get(4)?,
                                above: from_sql(r.get(5)?),
                            },
                        ))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let mut found = Vec::with_capacity(budgets.len());
                for (scope_key, budget) in budgets {
                    let used = budget.after(tx, low, &mut Pending::default())?;
                    let Some(oldest) = oldest_after(tx, budget.id, low)?.filter(|_| used > 0)
                    else {
                        continue;
                    };
                    found.push(KeyUsage {
                        scope_key,
                        used,
                        next_free_in_ms: Some(super::leaves_in(oldest, window_ms, now_ms)),
                    });
                }
                Ok(found)
            })
        })
    }
}

/// Gives back one unit of its row (see [`SCHEMA`]): the row whose tokens include the unit's,
/// if it is still there and has not given this unit back already. Returns whether it was
/// counted until now.
fn give_back(tx: &Connection, budget: i64, unit: &ReservedUnit) -> rusqlite::Result<bool> {
    let at_ms = sql_int(unit.at_ms);
    let token = sql_int(unit.token);
    let row: Option<(i64, i64, i64, Option<Vec<u8>>)> = tx
        .prepare_cached(
            "SELECT token, n, size, released FROM counter_rows
             WHERE budget = ?1 AND at_ms = ?2 AND token >= 0 AND token <= ?3
             ORDER BY token DESC LIMIT 1",
        )?
        .query_row(params![budget, at_ms, token], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((first, n, size, released)) = row else {
        return Ok(false);
    };
    // The unit's place in its row; past the row's end, its own row is gone (given back
    // whole, or pruned) and this is an earlier row's.
    let place = from_sql(token.saturating_sub(first));
    let size = from_sql(size);
    if size > ROW_UNITS_MAX {
        // Never written so (a damaged file): fail closed rather than size its record by it.
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!("a row of units claims {size} units")),
        ));
    }
    if place >= size {
        return Ok(false);
    }
    let (byte, bit) = (
        usize::try_from(place / 8).unwrap_or(usize::MAX),
        1u8 << (place % 8),
    );
    let mut released = released.unwrap_or_default();
    if released.get(byte).is_some_and(|b| b & bit != 0) {
        return Ok(false);
    }
    if n <= 1 {
        tx.prepare_cached(
            "DELETE FROM counter_rows WHERE budget = ?1 AND at_ms = ?2 AND token = ?3",
        )?
        .execute(params![budget, at_ms, first])?;
        return Ok(n == 1);
    }
    if released.len() <= byte {
        released.resize(byte + 1, 0);
    }
    released[byte] |= bit;
    tx.prepare_cached(
        "UPDATE counter_rows SET n = n - 1, released = ?4
         WHERE budget = ?1 AND at_ms = ?2 AND token = ?3",
    )?
    .execute(params![budget, at_ms, first, released])?;
    Ok(true)
}

/// How a transaction starts.
#[derive(Clone, Copy)]
enum Begin {
    /// Takes the write lock first, so no two processes check the same budget at once.
    Write,
    /// Reads one snapshot.
    Read,
}

/// Runs `f` in a transaction begun and committed through cached statements (rusqlite's
/// `Transaction` parses its BEGIN and COMMIT again on every use: a tenth of an admission's
/// work). Rolled back if anything fails.
fn in_transaction<T>(
    conn: &Connection,
    begin: Begin,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let sql = match begin {
        Begin::Write => "BEGIN IMMEDIATE",
        Begin::Read => "BEGIN",
    };
    conn.prepare_cached(sql)?.execute([])?;
    let done = f(conn).and_then(|value| {
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(value)
    });
    if done.is_err()
        && !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::debug!("rollback of a failed counter transaction: {e}");
    }
    done
}

/// The time of the oldest unit of `budget` counted after `low`.
///
/// The first row of the range, not `min(at_ms)` nor `ORDER BY at_ms`: with either, the
/// bundled SQLite (built with STAT4) re-prepares the statement every time it is bound again,
/// a fifth of the store thread's work under load. `counter_rows` is a `WITHOUT ROWID` table
/// keyed by `(budget, at_ms, token)`, so a range of one budget is read in `at_ms` order
/// (`tests/policy_limits.rs` compares the times it gives with the reference store's).
fn oldest_after(tx: &Connection, budget: i64, low: i64) -> rusqlite::Result<Option<u64>> {
    let oldest: Option<i64> = tx
        .prepare_cached(
            "SELECT at_ms FROM counter_rows WHERE budget = ?1 AND at_ms > ?2 AND token >= 0 LIMIT 1",
        )?
        .query_row(params![budget, low], |r| r.get(0))
        .optional()?;
    Ok(oldest.map(from_sql))
}

/// The units a batch took and has not written yet: one row per budget and time, carrying
/// their number (see [`SCHEMA`]), written before anything reads that budget's units and
/// otherwise before the commit. A batch's admissions into one budget share a time unless the
/// clock's millisecond turned within the batch, so a batch writes about one row per budget
/// whatever its size.
#[derive(Debug, Default)]
struct Pending {
    rows: Vec<PendingRow>,
}

#[derive(Debug)]
struct PendingRow {
    budget: i64,
    at_ms: u64,
    /// The first unit's token; the row's units have `token .. token + n`.
    token: u64,
    n: u64,
}

/// At most this many units in one row (a release's record of what it gave back is a bit per
/// unit of the row).
const ROW_UNITS_MAX: u64 = 1 << 16;

impl Pending {
    /// Takes a unit of `budget` at `at_ms`; returns its token.
    fn take(&mut self, budget: i64, at_ms: u64) -> u64 {
        if let Some(row) = self
            .rows
            .iter_mut()
            .find(|r| r.budget == budget && r.at_ms == at_ms && r.n < ROW_UNITS_MAX)
        {
            let token = row.token + row.n;
            row.n += 1;
            return token;
        }
        // Non-negative, with room after it for the row's units: every token of the row
        // round-trips through SQLite's signed integers.
        let token = rand::random::<u64>() >> 2;
        self.rows.push(PendingRow {
            budget,
            at_ms,
            token,
            n: 1,
        });
        token
    }

    /// Writes `budget`'s rows, before a statement reads its units.
    fn flush(&mut self, tx: &Connection, budget: i64) -> rusqlite::Result<()> {
        let mut i = 0;
        while i < self.rows.len() {
            if self.rows[i].budget == budget {
                self.rows.swap_remove(i).write(tx)?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Writes every row left, before the batch's commit.
    fn flush_all(&mut self, tx: &Connection) -> rusqlite::Result<()> {
        for row in self.rows.drain(..) {
            row.write(tx)?;
        }
        Ok(())
    }
}

impl PendingRow {
    fn write(&self, tx: &Connection) -> rusqlite::Result<()> {
        tx.prepare_cached(
            "INSERT INTO counter_rows (budget, at_ms, token, n, size) VALUES (?1, ?2, ?3, ?4, ?4)",
        )?
        .execute(params![
            self.budget,
            sql_int(self.at_ms),
            sql_int(self.token),
            sql_int(self.n)
        ])?;
        Ok(())
    }
}

/// One of a call's budgets, read and brought up to date, before the call is decided.
struct Taking {
    budget: Budget,
    /// Its names' hash in [`Known`].
    hash: u64,
    /// The time its unit is counted at.
    at_ms: u64,
    /// Index of its limit in the call's `limits`.
    index: usize,
    /// Its oldest unit in the call's window before the call took one, if
    /// [`Budget::advance`] came upon it.
    oldest_before: Option<Option<u64>>,
    /// Its oldest unit after its cursor, if known (see [`Known`]).
    oldest: Option<Option<u64>>,
}

/// Units past a budget's horizon are pruned in steps of this fraction of its longest window.
const PRUNE_STEPS: u64 = 16;

/// Decides one call inside the caller's transaction: reads and updates each distinct budget
/// (retained span, latest time, cursor, pruning), checks them all, and only if every one has
/// room takes a unit from each. A refused call takes nothing.
///
/// `scratch`: the batch's units not written yet ([`Pending`]), and a list to read the call's
/// budgets into (emptied here first), both kept across the batch's calls.
fn admit_in(
    tx: &Connection,
    known: &mut Known,
    scratch: (&mut Pending, &mut Vec<Taking>),
    limits: &[LimitRequest<'_>],
    now_ms: u64,
    touched: Option<(usize, &mut Vec<Touched>)>,
) -> rusqlite::Result<Admission> {
    let (pending, taking) = scratch;
    taking.clear();
    for (index, limit) in limits.iter().enumerate() {
        if limits[..index].iter().any(|l| l.same_budget(limit)) {
            continue;
        }
        let hash = known.hash(limit);
        let (found, mut oldest) = match known.get(hash, limit) {
            Some((row, oldest)) => (Some(row), oldest),
            None => (
                Budget::find(tx, limit.counter, limit.scope, limit.scope_key)?,
                None,
            ),
        };
        let mut budget = match found {
            Some(budget) => budget,
            None => Budget::create(tx, limit)?,
        };
        let was = budget.horizon();
        budget.retain_ms = budget.retain_ms.max(limit.window_ms);
        // As in memory: a clock far behind this budget's latest is moved forward, because
        // older units may already be forgotten.
        let at = now_ms.max(budget.latest_ms.saturating_sub(budget.retain_ms));
        budget.latest_ms = budget.latest_ms.max(at);
        // The window's start is never before the pruning horizon (`at` is within the
        // retained span of `latest`, and the window within the retained span), so with the
        // cursor there every pruned unit is one the running count no longer holds.
        let low = window_start(at, limit.window_ms);
        let cursor_was = budget.cursor_ms;
        match budget.advance(tx, pending, low, oldest)? {
            Some(walked) => oldest = Some(walked),
            None if budget.cursor_ms != cursor_was => oldest = None,
            None => {}
        }
        let oldest_before = oldest.filter(|_| low == budget.cursor_ms);
        // Units past the horizon are never counted again, only kept: they are pruned when
        // the horizon crosses into the next step of a sixteenth of the budget's longest
        // window, not by a statement on every admission.
        if let Some(horizon) = budget.horizon() {
            let step = sql_int((budget.retain_ms / PRUNE_STEPS).max(1));
            if was.is_none_or(|was| was.div_euclid(step) != horizon.div_euclid(step)) {
                pending.flush(tx, budget.id)?;
                tx.prepare_cached(
                    "DELETE FROM counter_rows WHERE budget = ?1 AND at_ms <= ?2 AND token >= 0",
                )?
                .execute(params![budget.id, horizon])?;
            }
        }
        taking.push(Taking {
            budget,
            hash,
            at_ms: at,
            index,
            oldest_before,
            oldest,
        });
    }
    let mut refused = None;
    for t in taking.iter() {
        let limit = &limits[t.index];
        if let Some(retry_after_ms) = full(
            tx,
            pending,
            &t.budget,
            t.at_ms,
            (limit.max, limit.window_ms),
        )? {
            refused = Some(Admission::Refused {
                index: t.index,
                retry_after_ms,
            });
            break;
        }
    }
    let taken = if refused.is_none() { taking.len() } else { 0 };
    let mut units = super::Units::with_capacity(taken);
    let mut touched = if refused.is_none() { touched } else { None };
    for t in taking.iter_mut() {
        if refused.is_none() {
            let token = pending.take(t.budget.id, t.at_ms);
            if sql_int(t.at_ms) > t.budget.cursor_ms {
                t.budget.above += 1;
                t.oldest = t
                    .oldest
                    .map(|o| Some(o.map_or(t.at_ms, |o| o.min(t.at_ms))));
            }
            if let Some((call, touched)) = touched.as_mut() {
                let limit = &limits[t.index];
                let low = window_start(t.at_ms, limit.window_ms);
                // The unit just taken is in the window; only this call took one from the
                // budget since the read.
                let own = (sql_int(t.at_ms) > low).then_some(t.at_ms);
                let oldest_ms = t
                    .oldest_before
                    .map(|before| before.into_iter().chain(own).min());
                touched.push(Touched {
                    call: *call,
                    unit: units.len(),
                    budget: t.budget.id,
                    window_ms: limit.window_ms,
                    at_ms: t.at_ms,
                    low,
                    used: t.budget.after(tx, low, pending)?,
                    oldest_ms,
                });
            }
            units.push(ReservedUnit {
                key: limits[t.index].key(),
                at_ms: t.at_ms,
                token,
            });
        }
        known.set(tx, (t.hash, &limits[t.index]), &t.budget, t.oldest)?;
    }
    Ok(refused.unwrap_or_else(|| Admission::Admitted(Reservation::new(units))))
}

/// A unit an admitted call of a batch took, and how its budget stood right after.
struct Touched {
    /// The call's index in the batch, and the unit's in its reservation.
    call: usize,
    unit: usize,
    budget: i64,
    window_ms: u64,
    at_ms: u64,
    /// The start of the call's window, and the units counted after it.
    low: i64,
    used: u64,
    /// Its oldest unit in the window, if known without a read.
    oldest_ms: Option<Option<u64>>,
}

/// Per budget, how the last admitted call of the batch that took a unit from it left it:
/// the count it was admitted with, and its oldest unit in the window (from the units'
/// primary key, in the batch's own transaction).
fn note_usage(
    tx: &Connection,
    scratch: (&mut Pending, &mut Vec<i64>),
    answers: &[Result<Admission, StoreError>],
    touched: &[Touched],
    notes: &mut Vec<NotedUsage>,
) -> rusqlite::Result<()> {
    let (pending, seen) = scratch;
    seen.clear();
    // From the batch's end, so each budget's last unit is the first met: one look at the
    // budgets seen (about one per batch) instead of the rest of the batch per unit.
    let start = notes.len();
    for t in touched.iter().rev() {
        if seen.contains(&t.budget) {
            continue;
        }
        seen.push(t.budget);
        let Some(Ok(Admission::Admitted(reservation))) = answers.get(t.call) else {
            continue;
        };
        let Some(unit) = reservation.units().get(t.unit) else {
            continue;
        };
        let oldest_ms = match (t.used, t.oldest_ms) {
            (0, _) => None,
            (_, Some(known)) => known,
            (_, None) => {
                pending.flush(tx, t.budget)?;
                oldest_after(tx, t.budget, t.low)?
            }
        };
        notes.push(NotedUsage {
            key: unit.key.clone(),
            window_ms: t.window_ms,
            at_ms: t.at_ms,
            used: t.used,
            oldest_ms,
        });
    }
    // In the order the budgets were last touched, as before.
    notes[start..].reverse();
    Ok(())
}

/// `None` if one more unit fits in `budget` at `at_ms`; else when it will (ms from now, at
/// least 1). Counts the units within `window_ms` of `at_ms` on either side, as
/// [`super::MemoryStore`] does: those after the window's start (the running count), less
/// those at or after its end (only a clock running a window ahead leaves any there).
fn full(
    tx: &Connection,
    pending: &mut Pending,
    budget: &Budget,
    at_ms: u64,
    (max, window_ms): (u64, u64),
) -> rusqlite::Result<Option<u64>> {
    let low = window_start(at_ms, window_ms);
    let high = sql_int(at_ms.saturating_add(window_ms));
    let mut used = budget.after(tx, low, pending)?;
    if sql_int(budget.latest_ms) >= high {
        pending.flush(tx, budget.id)?;
        let beyond: i64 = tx
            .prepare_cached(
                "SELECT coalesce(sum(n), 0) FROM counter_rows
                 WHERE budget = ?1 AND at_ms >= ?2 AND token >= 0",
            )?
            .query_row(params![budget.id, high], |r| r.get(0))?;
        used = used.saturating_sub(from_sql(beyond));
    }
    if used < max {
        return Ok(None);
    }
    // The (used - max + 1)-th oldest unit must leave the window (with an exact count that
    // is the oldest one, unless `max` was lowered): rows are walked in time order, past
    // `used - max` units.
    pending.flush(tx, budget.id)?;
    let mut rows = tx.prepare_cached(
        "SELECT at_ms, n FROM counter_rows
         WHERE budget = ?1 AND at_ms > ?2 AND at_ms < ?3 AND token >= 0
         ORDER BY at_ms",
    )?;
    let mut rows = rows.query(params![budget.id, low, high])?;
    let mut passing = used - max;
    let leaving: i64 = loop {
        let Some(row) = rows.next()? else {
            return Err(rusqlite::Error::QueryReturnedNoRows);
        };
        let n = from_sql(row.get(1)?);
        if n > passing {
            break row.get(0)?;
        }
        passing -= n;
    };
    let leaves_at = from_sql(leaving).saturating_add(window_ms);
    Ok(Some(leaves_at.saturating_sub(at_ms).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_past_the_mark_rings_the_checkpoint_bell_once_per_round() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("w.sqlite3")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        // Thousands of one-frame commits: no sync for each (the hook is what is tested).
        conn.pragma_update(None, "synchronous", "OFF").unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER)").unwrap();
        let bell = Arc::new(Bell::default());
        watch_wal(&mut conn, Arc::clone(&bell)).unwrap();
        let wal_frames = |conn: &Connection| -> i64 {
            // A checkpoint that cannot copy (a reader holds the first snapshot) reports the
            // WAL's size and leaves it as it is.
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
                .unwrap()
        };
        let reader = Connection::open(dir.path().join("w.sqlite3")).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        let mut commits = 0;
        while wal_frames(&conn) < i64::from(RESTART_AFTER_FRAMES) - 1 {
            conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
            commits += 1;
            assert!(commits < 10_000, "the WAL never grew");
        }
        assert!(
            !bell.rung.load(Ordering::Acquire),
            "rung below the mark ({} frames)",
            wal_frames(&conn)
        );
        while wal_frames(&conn) < i64::from(RESTART_AFTER_FRAMES) {
            conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
        }
        assert!(bell.rung.load(Ordering::Acquire), "not rung past the mark");
        bell.quiet();
        conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
        assert!(
            bell.rung.load(Ordering::Acquire),
            "a commit after the round, with the WAL still long, did not ring again"
        );
    }

    #[test]
    fn idle_budgets_are_forgotten_once_out_of_their_windows() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.sqlite3")).unwrap();
        let counter: Arc<str> = Arc::from("a");
        let busy: Arc<str> = Arc::from("b");
        for i in 0..100u64 {
            let key = format!("session-{i}");
            let l = LimitRequest {
                counter: &counter,
                scope: Scope::Session,
                scope_key: &key,
                max: 1,
                window_ms: 1000,
            };
            assert!(matches!(store.admit(&[l], i), Ok(Admission::Admitted(_))));
        }
        let l = LimitRequest {
            counter: &busy,
            scope: Scope::Global,
            scope_key: "",
            max: u64::MAX,
            window_ms: 1000,
        };
        for i in 0..SWEEP_EVERY {
            assert!(matches!(
                store.admit(&[l], 100_000 + i),
                Ok(Admission::Admitted(_))
            ));
        }
        let (budgets, units): (i64, i64) = store
            .with_conn(|c| {
                c.query_row(
                    "SELECT (SELECT count(*) FROM counter_keys),
                            (SELECT coalesce(sum(n), 0) FROM counter_rows WHERE token >= 0)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .unwrap();
        assert_eq!(budgets, 1);
        // Only the busy budget's units within its retained span (2 s) are left, and those
        // of the last step of pruning (a sixteenth of its window).
        let step = i64::try_from(1000 / PRUNE_STEPS).unwrap();
        assert!(units <= 2001 + step, "{units}");
        assert!(units >= 2000, "{units}");
    }

    /// Version 1's schema, as the previous release wrote it.
    const SCHEMA_V1: &str = "
        CREATE TABLE budgets (
            id INTEGER PRIMARY KEY, counter TEXT NOT NULL, scope TEXT NOT NULL,
            scope_key TEXT NOT NULL, retain_ms INTEGER NOT NULL, latest_ms INTEGER NOT NULL,
            UNIQUE (counter, scope, scope_key));
        CREATE INDEX budgets_by_expiry ON budgets (latest_ms + 2 * retain_ms);
        CREATE TABLE units (
            budget INTEGER NOT NULL, at_ms INTEGER NOT NULL, token INTEGER NOT NULL,
            PRIMARY KEY (budget, at_ms, token)) WITHOUT ROWID;
        PRAGMA user_version = 1;";

    fn global(counter: &Arc<str>, max: u64, window_ms: u64) -> LimitRequest<'_> {
        LimitRequest {
            counter,
            scope: Scope::Global,
            scope_key: "",
            max,
            window_ms,
        }
    }

    /// Two stores (two connections, as two processes would have) on one new file.
    fn two_connections() -> (tempfile::TempDir, SqliteStore, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite3");
        let a = SqliteStore::open(&path).unwrap();
        let b = SqliteStore::open(&path).unwrap();
        (dir, a, b)
    }

    #[test]
    fn what_a_connection_knows_of_a_budget_is_dropped_once_another_writes_the_file() {
        let (_dir, a, b) = two_connections();
        let c: Arc<str> = Arc::from("c");
        let admitted = |store: &SqliteStore, at| match store.admit(&[global(&c, 3, 1000)], at) {
            Ok(Admission::Admitted(reservation)) => reservation,
            other => panic!("at {at}: {other:?}"),
        };
        admitted(&a, 10);
        admitted(&a, 11);
        // `a` last left the budget at two units; `b` takes the third.
        let third = admitted(&b, 12);
        assert_eq!(
            a.admit(&[global(&c, 3, 1000)], 13).unwrap(),
            Admission::Refused {
                index: 0,
                retry_after_ms: 997
            }
        );
        // And gives it back: `a` sees the room again (its refusal read the file anew).
        b.try_release(&third).unwrap();
        admitted(&a, 14);
        assert!(matches!(
            a.admit(&[global(&c, 3, 1000)], 14).unwrap(),
            Admission::Refused { .. }
        ));
    }

    #[test]
    fn a_batch_leaves_its_budget_rows_written_for_other_connections() {
        let (_dir, a, b) = two_connections();
        let c: Arc<str> = Arc::from("c");
        let limits = [global(&c, 5, 1000)];
        // Four calls decided together (the row is written once, before the commit), the
        // first of them when the budget did not exist yet.
        let calls: Vec<(&[LimitRequest<'_>], u64)> =
            (0..4).map(|i| (&limits[..], 100 + i)).collect();
        for answer in a.admit_many(&calls) {
            assert!(matches!(answer, Ok(Admission::Admitted(_))), "{answer:?}");
        }
        let usage = b.usage_of(&limits[0].key(), 1000, 200).unwrap();
        assert_eq!((usage.used, usage.next_free_in_ms), (4, Some(900)));
        assert!(matches!(
            b.admit(&limits, 200).unwrap(),
            Admission::Admitted(_)
        ));
        // The sixth is refused on either connection until the first unit leaves (at 1100).
        for store in [&a, &b] {
            assert_eq!(
                store.admit(&limits, 300).unwrap(),
                Admission::Refused {
                    index: 0,
                    retry_after_ms: 800
                }
            );
        }
        // Once it has left, four are in the window: one more fits.
        assert!(matches!(
            a.admit(&limits, 1100).unwrap(),
            Admission::Admitted(_)
        ));
        assert_eq!(
            a.admit(&limits, 1100).unwrap(),
            Admission::Refused {
                index: 0,
                retry_after_ms: 1
            }
        );
        assert_eq!(b.usage_of(&limits[0].key(), 1000, 1100).unwrap().used, 5);
    }

    #[test]
    fn a_version_1_file_is_migrated_with_its_counts_and_its_units_releasable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite3");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(SCHEMA_V1).unwrap();
        old.execute_batch(
            "INSERT INTO budgets VALUES (7, 'c', 'global', '', 1000, 5000);
             INSERT INTO units VALUES (7, 4100, 11), (7, 4500, 12), (7, 5000, 13);",
        )
        .unwrap();
        drop(old);

        let store = SqliteStore::open(&path).unwrap();
        let usage = full_window_then_an_old_unit_given_back(&store);
        assert_eq!(usage.used, 3);
        let (version, old_tables): (i64, i64) = store
            .with_conn(|c| {
                c.query_row(
                    "SELECT (SELECT user_version FROM pragma_user_version),
                            (SELECT count(*) FROM sqlite_master WHERE name IN
                                ('budgets', 'units', 'counter_budgets', 'counter_units'))",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .unwrap();
        assert_eq!((version, old_tables), (SCHEMA_VERSION, 0));
    }

    /// For the migration tests: the migrated file's budget `c` (a max of 3 a second, global)
    /// holds three units in the window at 5050 (one of them at 4500 with token 12), so a call
    /// is refused until 5100; the old unit is given back by its token, the next call is
    /// admitted. Returns the usage after that.
    fn full_window_then_an_old_unit_given_back(store: &SqliteStore) -> KeyUsage {
        let c: Arc<str> = Arc::from("c");
        assert_eq!(
            store.admit(&[global(&c, 3, 1000)], 5050).unwrap(),
            Admission::Refused {
                index: 0,
                retry_after_ms: 50
            }
        );
        let old_unit = Reservation::new(vec![ReservedUnit {
            key: global(&c, 3, 1000).key(),
            at_ms: 4500,
            token: 12,
        }]);
        store.try_release(&old_unit).unwrap();
        assert!(matches!(
            store.admit(&[global(&c, 3, 1000)], 5050).unwrap(),
            Admission::Admitted(_)
        ));
        store
            .usage_of(&global(&c, 3, 1000).key(), 1000, 5050)
            .unwrap()
    }

    #[test]
    fn a_file_from_a_newer_version_is_refused_not_guessed_at() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite3");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 5")
            .unwrap();
        let store = SqliteStore::open(&path).unwrap();
        let c: Arc<str> = Arc::from("c");
        let e = store.admit(&[global(&c, 3, 1000)], 1).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Schema);
        assert!(e.detail.contains("schema version 5"), "{}", e.detail);
        assert!(e.detail.contains("newer toolgate"), "{}", e.detail);
    }

    #[test]
    fn a_version_1_connection_open_during_the_migration_fails_instead_of_miscounting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite3");
        // An old gateway, connected before the upgrade, with its statement prepared.
        let old = Connection::open(&path).unwrap();
        old.execute_batch(SCHEMA_V1).unwrap();
        old.execute_batch("INSERT INTO budgets VALUES (1, 'c', 'global', '', 1000, 0)")
            .unwrap();
        let mut insert = old
            .prepare("INSERT INTO units (budget, at_ms, token) VALUES (1, ?1, ?2)")
            .unwrap();
        insert.execute(params![10, 1]).unwrap();

        let store = SqliteStore::open(&path).unwrap();
        let c: Arc<str> = Arc::from("c");
        assert!(matches!(
            store.admit(&[global(&c, 5, 1000)], 20).unwrap(),
            Admission::Admitted(_)
        ));
        let e = insert.execute(params![30, 2]).unwrap_err();
        assert!(e.to_string().contains("no such table"), "{e}");
    }

    /// Version 2's schema with a budget and its units, as the previous release wrote them.
    fn version_2_file(path: &Path) -> Connection {
        let old = Connection::open(path).unwrap();
        old.execute_batch(SCHEMA_2).unwrap();
        // Four units; the cursor at 3999 with three counted after it (4100, 4500, 5000), and
        // one at or before it (3900): only the running count says which are counted.
        old.execute_batch(
            "INSERT INTO counter_budgets VALUES (7, 'c', 'global', '', 1000, 5000, 3999, 3);
             INSERT INTO counter_units VALUES (7, 3900, 10), (7, 4100, 11), (7, 4500, 12),
                                              (7, 5000, 13);
             PRAGMA user_version = 2;",
        )
        .unwrap();
        old
    }

    #[test]
    fn a_version_2_file_is_migrated_with_its_counts_and_its_units_releasable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite3");
        drop(version_2_file(&path));

        let store = SqliteStore::open(&path).unwrap();
        let usage = full_window_then_an_old_unit_given_back(&store);
        assert_eq!((usage.used, usage.next_free_in_ms), (3, Some(50)));
        let listed = store.usage("c", Scope::Global, 1000, 5050).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].used, 3);
        let (version, old_tables, units): (i64, i64, i64) = store
            .with_conn(|c| {
                c.query_row(
                    "SELECT (SELECT user_version FROM pragma_user_version),
                            (SELECT count(*) FROM sqlite_master
                                WHERE name IN ('counter_budgets', 'counter_units')),
                            (SELECT coalesce(sum(n), 0) FROM counter_rows WHERE token >= 0)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
            })
            .unwrap();
        // 3900, 4100, 5000 and the one just admitted: 4500 was given back.
        assert_eq!((version, old_tables, units), (4, 0, 4));
    }

    /// A connection of an older version, open on the file while it is migrated, writing a
    /// unit into `units_table` (its own): its next write fails (the table is gone), so its
    /// call fails closed instead of counting where no one reads.
    fn an_old_connection_fails_after_the_migration(
        old_file: fn(&Path) -> Connection,
        units_table: &str,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite3");
        let old = old_file(&path);
        let mut insert = old
            .prepare(&format!(
                "INSERT INTO {units_table} (budget, at_ms, token) VALUES (7, ?1, ?2)"
            ))
            .unwrap();
        insert.execute(params![5001, 1]).unwrap();

        let store = SqliteStore::open(&path).unwrap();
        let c: Arc<str> = Arc::from("c");
        assert!(matches!(
            store.admit(&[global(&c, 5, 1000)], 5050).unwrap(),
            Admission::Admitted(_)
        ));
        let e = insert.execute(params![5060, 2]).unwrap_err();
        assert!(e.to_string().contains("no such table"), "{e}");
    }

    #[test]
    fn a_version_2_connection_open_during_the_migration_fails_instead_of_miscounting() {
        an_old_connection_fails_after_the_migration(version_2_file, "counter_units");
    }

    /// WAL frames written by `admissions` admissions, `per_batch` calls decided together in
    /// each transaction, all of a batch in one millisecond, into one budget (after a first
    /// admission created it).
    fn frames_per_admission(admissions: u64, per_batch: u64) -> f64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite3");
        let store = SqliteStore::open(&path).unwrap();
        let c: Arc<str> = Arc::from("c");
        let limits = [global(&c, u64::MAX, 3_600_000)];
        assert!(matches!(
            store.admit(&limits, 1),
            Ok(Admission::Admitted(_))
        ));
        // A reader holding a snapshot keeps the WAL from being started over while it is
        // measured; a passive checkpoint then reports its size in frames.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM counter_keys", [], |r| r.get(0))
            .unwrap();
        let probe = Connection::open(&path).unwrap();
        let frames = || -> i64 {
            probe
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
                .unwrap()
        };
        let before = frames();
        for batch in 0..admissions / per_batch {
            let calls: Vec<(&[LimitRequest<'_>], u64)> =
                (0..per_batch).map(|_| (&limits[..], 2 + batch)).collect();
            for answer in store.admit_many(&calls) {
                assert!(matches!(answer, Ok(Admission::Admitted(_))), "{answer:?}");
            }
        }
        let written = frames() - before;
        written as f64 / admissions as f64
    }

    #[test]
    fn an_admission_writes_one_page_its_unit_beside_its_budgets_state() {
        // Version 2 wrote two (the unit's leaf and the budget's row); a leaf that fills up
        // now and then is split, which writes its neighbours and parent once.
        let per_admission = frames_per_admission(400, 1);
        assert!(
            (1.0..1.1).contains(&per_admission),
            "{per_admission} WAL frames per admission"
        );
    }

    #[test]
    fn a_batch_writes_one_row_per_budget_so_its_pages_do_not_grow_with_its_size() {
        // Version 3 wrote a row per admission: 0.24 frames per admission at 8 a
        // transaction, 0.07 at 64 (its leaves filled and split with the batch's rows). One
        // row per batch: one page per commit, whatever the batch's size.
        for per_batch in [8, 64] {
            let per_admission = frames_per_admission(64 * 40, per_batch);
            let per_commit = per_admission * per_batch as f64;
            assert!(
                (1.0..1.1).contains(&per_commit),
                "{per_batch} a batch: {per_admission} WAL frames per admission"
            );
        }
    }

    /// How many rows of units `budget` has, and the units they hold.
    fn rows_and_units(store: &SqliteStore) -> (i64, i64) {
        store
            .with_conn(|c| {
                c.query_row(
                    "SELECT count(*), coalesce(sum(n), 0) FROM counter_rows WHERE token >= 0",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .unwrap()
    }

    #[test]
    fn a_unit_given_back_from_a_shared_row_is_given_back_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.sqlite3")).unwrap();
        let c: Arc<str> = Arc::from("c");
        let limits = [global(&c, 10, 1000)];
        // Ten calls in one transaction and one millisecond, two in the next millisecond.
        let mut calls: Vec<(&[LimitRequest<'_>], u64)> = vec![(&limits[..], 100); 10];
        calls.extend([(&limits[..], 101), (&limits[..], 101)]);
        let reservations: Vec<Reservation> = store
            .admit_many(&calls)
            .into_iter()
            .take(10)
            .map(|answer| match answer {
                Ok(Admission::Admitted(reservation)) => reservation,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(rows_and_units(&store), (1, 10), "one row for the ten");
        assert!(matches!(
            store.admit(&limits, 102).unwrap(),
            Admission::Refused { .. }
        ));
        // The fifth call's unit, twice: one unit back, not two.
        store.try_release(&reservations[4]).unwrap();
        store.try_release(&reservations[4]).unwrap();
        assert_eq!(rows_and_units(&store), (1, 9));
        assert_eq!(store.usage_of(&limits[0].key(), 1000, 102).unwrap().used, 9);
        assert!(matches!(
            store.admit(&limits, 102).unwrap(),
            Admission::Admitted(_)
        ));
        assert!(matches!(
            store.admit(&limits, 102).unwrap(),
            Admission::Refused { .. }
        ));
        // Every unit of the row back (the fifth a third time): the row is gone, the count
        // with it, and nothing else was given back.
        for reservation in &reservations {
            store.try_release(reservation).unwrap();
        }
        assert_eq!(rows_and_units(&store), (1, 1));
        assert_eq!(store.usage_of(&limits[0].key(), 1000, 102).unwrap().used, 1);
        store.try_release(&reservations[0]).unwrap();
        assert_eq!(store.usage_of(&limits[0].key(), 1000, 102).unwrap().used, 1);
    }

    #[test]
    fn a_refusal_inside_a_batch_sees_the_batchs_own_units_and_when_they_leave() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.sqlite3")).unwrap();
        let c: Arc<str> = Arc::from("c");
        let limits = [global(&c, 5, 1000)];
        // Three at 100, two at 400 (not written yet when the sixth, at 900, is decided):
        // the sixth waits for the three at 100 to leave; at 1101 the three have left, three
        // fit again, a fourth does not until the first at 400 leaves.
        let times = [100, 100, 100, 400, 400, 900, 1101, 1101, 1101, 1101];
        let calls: Vec<(&[LimitRequest<'_>], u64)> =
            times.iter().map(|at| (&limits[..], *at)).collect();
        let answers = store.admit_many(&calls);
        let refused: Vec<(usize, u64)> = answers
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a {
                Ok(Admission::Refused { retry_after_ms, .. }) => Some((i, *retry_after_ms)),
                Ok(Admission::Admitted(_)) => None,
                Err(e) => panic!("{e}"),
            })
            .collect();
        assert_eq!(refused, vec![(5, 200), (9, 299)]);
        assert_eq!(rows_and_units(&store), (3, 8));
        assert_eq!(
            store.usage_of(&limits[0].key(), 1000, 1101).unwrap().used,
            5
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Batches whose calls mostly share a millisecond (so their units share rows), given
        /// back in part, some twice, decided exactly as the reference store decides them: the
        /// same answers, the same times to retry, the same usage.
        #[test]
        fn shared_rows_answer_as_the_reference_store_does(
            max in 1u64..8,
            window in 1u64..30,
            batches in proptest::collection::vec(proptest::collection::vec(0u64..3, 1..24), 1..24),
            release_every in 1usize..4,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(&dir.path().join("c.sqlite3")).unwrap();
            let reference = crate::policy::store::MemoryStore::new();
            let c: Arc<str> = Arc::from("c");
            let limits = [global(&c, max, window)];
            let mut now = 1_000u64;
            let mut taken = 0usize;
            for gaps in batches {
                let times: Vec<u64> = gaps.iter().map(|gap| { now += gap; now }).collect();
                let calls: Vec<(&[LimitRequest<'_>], u64)> =
                    times.iter().map(|&t| (&limits[..], t)).collect();
                let mut give_back = Vec::new();
                for (&t, answer) in times.iter().zip(store.admit_many(&calls)) {
                    let answer = answer.unwrap();
                    let expected = reference.admit(&limits, t).unwrap();
                    match (answer, expected) {
                        (Admission::Admitted(r), Admission::Admitted(e)) => {
                            proptest::prop_assert_eq!(r.units()[0].at_ms, e.units()[0].at_ms);
                            taken += 1;
                            if taken.is_multiple_of(release_every + 1) {
                                give_back.push((r, e));
                            }
                        }
                        (answer, expected) => proptest::prop_assert_eq!(answer, expected, "at {}", t),
                    }
                }
                for (r, e) in give_back {
                    store.try_release(&r).unwrap();
                    store.try_release(&r).unwrap();
                    reference.release(&e);
                }
                let used = store.usage("c", Scope::Global, window, now).unwrap();
                let expected = reference.usage("c", Scope::Global, window, now).unwrap();
                proptest::prop_assert_eq!(used, expected);
            }
        }
    }

    /// Version 3's schema with a budget and its units, as the previous release wrote them.
    fn version_3_file(path: &Path) -> Connection {
        let old = Connection::open(path).unwrap();
        old.execute_batch(SCHEMA_3).unwrap();
        // As `version_2_file`: the cursor at 3999 with three counted after it.
        old.execute_batch(
            "INSERT INTO counter_keys VALUES (7, 'c', 'global', '');
             INSERT INTO counter_log (budget, at_ms, token) VALUES (7, 3900, 10), (7, 4100, 11),
                                                                 (7, 4500, 12), (7, 5000, 13);
             INSERT INTO counter_log VALUES (7, 9223372036854775807, -1, 1000, 5000, 3999, 3);
             PRAGMA user_version = 3;",
        )
        .unwrap();
        old
    }

    #[test]
    fn a_version_3_file_is_migrated_with_its_counts_and_its_units_releasable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite3");
        drop(version_3_file(&path));

        let store = SqliteStore::open(&path).unwrap();
        let usage = full_window_then_an_old_unit_given_back(&store);
        assert_eq!((usage.used, usage.next_free_in_ms), (3, Some(50)));
        // Given back again: nothing more.
        let old_unit = Reservation::new(vec![ReservedUnit {
            key: usage_key(),
            at_ms: 4500,
            token: 12,
        }]);
        store.try_release(&old_unit).unwrap();
        assert_eq!(store.usage_of(&usage_key(), 1000, 5050).unwrap().used, 3);
        let (version, old_tables): (i64, i64) = store
            .with_conn(|c| {
                c.query_row(
                    "SELECT (SELECT user_version FROM pragma_user_version),
                            (SELECT count(*) FROM sqlite_master WHERE name = 'counter_log')",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .unwrap();
        assert_eq!((version, old_tables), (4, 0));
        // 3900, 4100, 5000 and the one just admitted: 4500 was given back.
        assert_eq!(rows_and_units(&store), (4, 4));
        // The window moves on exactly: at 5101 the units at 4100 (and 3900) have left.
        let c: Arc<str> = Arc::from("c");
        assert_eq!(store.usage_of(&usage_key(), 1000, 5101).unwrap().used, 2);
        assert!(matches!(
            store.admit(&[global(&c, 3, 1000)], 5101).unwrap(),
            Admission::Admitted(_)
        ));
        assert!(matches!(
            store.admit(&[global(&c, 3, 1000)], 5101).unwrap(),
            Admission::Refused { .. }
        ));
    }

    fn usage_key() -> CounterKey {
        let c: Arc<str> = Arc::from("c");
        global(&c, 3, 1000).key()
    }

    #[test]
    fn a_version_3_connection_open_during_the_migration_fails_instead_of_miscounting() {
        an_old_connection_fails_after_the_migration(version_3_file, "counter_log");
    }
}
