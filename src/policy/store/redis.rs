//! [`RedisStore`]: counters in Redis, shared by gateways on many machines.
//!
//! Several `toolgate serve` replicas behind a load balancer need one budget, not one each.
//! Each budget is a sorted set of its counted units (score = time in ms, member = a random
//! token, so a release removes exactly its own units) and a small hash (`retain`: the largest
//! window ever asked of it; `latest`: its latest time). An admission is one Lua script, so it
//! is atomic against every other gateway: for every budget it prunes what left the retained
//! span, counts, and only when all have room adds one unit to each. Keys expire by
//! themselves twice their retained span after the last admission; an index set per counter
//! and scope lists the scope keys for `usage`. The semantics are [`super::MemoryStore`]'s.
//!
//! Key layout, with `P` = `<prefix>:<len(counter)>:<counter>:<scope>:` (the length makes the
//! counter name unambiguous): `P u:<scope key>` units, `P m:<scope key>` meta, `P i` index.
//! A call's budgets may be on different keys, so Redis Cluster is not supported (one server,
//! or a primary with replicas).
//!
//! Blocking: decisions are synchronous, so this store uses the synchronous client with
//! connect and I/O timeouts ([`IO_TIMEOUT`]). A hung or unreachable Redis holds a call for at
//! most that long; after a connection failure the store answers "unavailable" at once for
//! [`RECONNECT_BACKOFF`], then tries again, so recovery is automatic and a dead server does
//! not slow every call down.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::{ErrorKind, Script};

use super::{
    Admission, CounterKey, CounterStore, KeyUsage, LimitRequest, Reservation, ReservedUnit, Scope,
    StoreError, StoreErrorKind,
};

/// The longest a connect, or one command, may take before the call fails closed.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_millis(500);
/// After a connection failure, how long calls fail at once before the next attempt.
pub(crate) const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// Idle connections kept for reuse (one per concurrently deciding thread).
const POOL_SIZE: usize = 8;

/// ARGV: now, then per budget (max, window, token, scope key). KEYS: per budget (units,
/// meta, index).
/// Returns {1, at_1, at_2, ...} when admitted, {0, index (1-based), retry_after_ms} if not.
const ADMIT: &str = r"
local now = tonumber(ARGV[1])
local n = #KEYS / 3
local at, retain, latest = {}, {}, {}
for i = 1, n do
  local z, m = KEYS[3*i-2], KEYS[3*i-1]
  local max, window = tonumber(ARGV[4*i-2]), tonumber(ARGV[4*i-1])
  local meta = redis.call('HMGET', m, 'retain', 'latest')
  local r = math.max(tonumber(meta[1]) or 0, window)
  local old = tonumber(meta[2]) or 0
  local t = math.max(now, old - r)
  local l = math.max(old, t)
  if l - 2 * r >= 0 then
    redis.call('ZREMRANGEBYSCORE', z, '-inf', string.format('%d', l - 2 * r))
  end
  local low = '(' .. string.format('%d', t - window)
  local high = '(' .. string.format('%d', t + window)
  local used = redis.call('ZCOUNT', z, low, high)
  if used >= max then
    local row = redis.call('ZRANGEBYSCORE', z, low, high, 'WITHSCORES', 'LIMIT', used - max, 1)
    return {0, i, math.max(tonumber(row[2]) + window - t, 1)}
  end
  at[i], retain[i], latest[i] = t, r, l
end
local out = {1}
for i = 1, n do
  local z, m, idx = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local ttl = 2 * retain[i] + 60000
  redis.call('ZADD', z, string.format('%d', at[i]), ARGV[4*i])
  redis.call('HSET', m, 'retain', string.format('%d', retain[i]), 'latest', string.format('%d', latest[i]))
  redis.call('PEXPIRE', z, ttl)
  redis.call('PEXPIRE', m, ttl)
  redis.call('SADD', idx, ARGV[4*i+1])
  if redis.call('PTTL', idx) < ttl then redis.call('PEXPIRE', idx, ttl) end
  out[i + 1] = at[i]
end
return out
";

/// KEYS: index. ARGV: units key base, low (exclusive), window.
/// Returns {scope key, used, oldest, ...} for the keys with units after `low`.
const USAGE: &str = r"
local out = {}
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local z = ARGV[1] .. k
  if redis.call('EXISTS', z) == 0 then
    redis.call('SREM', KEYS[1], k)
  else
    local low = '(' .. ARGV[2]
    local used = redis.call('ZCOUNT', z, low, '+inf')
    if used > 0 then
      local first = redis.call('ZRANGEBYSCORE', z, low, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
      out[#out + 1] = k
      out[#out + 1] = used
      out[#out + 1] = first[2]
    end
  end
end
return out
";

/// Counters in one Redis server (database), under a key prefix.
pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    /// The server as shown in messages (no password).
    shown: String,
    pool: Mutex<Vec<redis::Connection>>,
    /// Set after a connection failure: until when to fail at once, and why.
    backoff: Mutex<Option<(Instant, StoreError)>>,
    admit: Script,
    usage: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.shown)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the server at `url` (`redis://[:PASSWORD@]HOST:PORT/DB`). Does not connect
    /// yet: a gateway starts while Redis is down, failing its limited calls until it is up.
    /// `shown` is the URL as messages may show it (without a password).
    pub fn new(url: &str, shown: &str, prefix: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Config,
                format!("{shown} is not a usable Redis URL: {e}"),
            )
        })?;
        Ok(RedisStore {
            client,
            prefix: prefix.to_owned(),
            shown: shown.to_owned(),
            pool: Mutex::new(Vec::new()),
            backoff: Mutex::new(None),
            admit: Script::new(ADMIT),
            usage: Script::new(USAGE),
        })
    }

    /// Connects now, to tell an operator at start-up whether the server answers.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(|conn| redis::cmd("PING").query::<String>(conn).map(drop))
    }

    /// `P` of the module docs: everything of one counter in one scope starts with it.
    fn base(&self, counter: &str, scope: Scope) -> String {
        format!(
            "{}:{}:{counter}:{}:",
            self.prefix,
            counter.len(),
            scope.as_str()
        )
    }

    fn key_names(&self, key: &CounterKey) -> (String, String, String) {
        let base = self.base(&key.counter, key.scope);
        (
            format!("{base}u:{}", key.scope_key),
            format!("{base}m:{}", key.scope_key),
            format!("{base}i"),
        )
    }

    fn error(&self, e: &redis::RedisError) -> StoreError {
        let kind = if e.is_timeout() {
            StoreErrorKind::Timeout
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            StoreErrorKind::Io
        } else {
            StoreErrorKind::Other
        };
        StoreError::new(kind, format!("Redis {}: {e}", self.shown))
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.connect()?,
        };
        match f(&mut conn) {
            Ok(v) => {
                let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                if pool.len() < POOL_SIZE {
                    pool.push(conn);
                }
                Ok(v)
            }
            Err(e) => {
                // The connection is dropped: after a timeout it may still get the late answer.
                let err = self.error(&e);
                if broken_connection(&e) {
                    self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    self.back_off(&err);
                }
                Err(err)
            }
        }
    }

    fn connect(&self) -> Result<redis::Connection, StoreError> {
        {
            let backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((until, why)) = &*backoff
                && Instant::now() < *until
            {
                return Err(why.clone());
            }
        }
        let connected = self
            .client
            .get_connection_with_timeout(IO_TIMEOUT)
            .and_then(|conn| {
                conn.set_read_timeout(Some(IO_TIMEOUT))?;
                conn.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok(conn)
            });
        match connected {
            Ok(conn) => {
                *self.backoff.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(conn)
            }
            Err(e) => {
                let err = self.error(&e);
                self.back_off(&err);
                Err(err)
            }
        }
    }

    fn back_off(&self, err: &StoreError) {
        *self.backoff.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now() + RECONNECT_BACKOFF, err.clone()));
    }
}

fn broken_connection(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.kind(), ErrorKind::Io)
}

impl CounterStore for RedisStore {
    fn admit(&self, limits: &[LimitRequest<'_>], now_ms: u64) -> Result<Admission, StoreError> {
        // A budget named twice counts once: send each budget once, remember its position.
        let mut sent: Vec<(usize, CounterKey, u64)> = Vec::with_capacity(limits.len());
        for (index, limit) in limits.iter().enumerate() {
            if limits[..index].iter().any(|l| l.same_budget(limit)) {
                continue;
            }
            sent.push((index, limit.key(), rand::random::<u64>()));
        }
        let mut invocation = self.admit.prepare_invoke();
        invocation.arg(now_ms);
        for (index, key, token) in &sent {
            let limit = &limits[*index];
            let (units, meta, idx) = self.key_names(key);
            invocation.key(units).key(meta).key(idx);
            invocation
                .arg(limit.max)
                .arg(limit.window_ms)
                .arg(token.to_string())
                .arg(key.scope_key.as_str());
        }
        let reply: Vec<i64> = self.with_conn(|conn| invocation.invoke(conn))?;
        match reply.as_slice() {
            [1, times @ ..] if times.len() == sent.len() => Ok(Admission::Admitted(
                Reservation::new(sent.into_iter().zip(times).map(|((_, key, token), &at)| {
                    ReservedUnit {
                        key,
                        at_ms: u64::try_from(at).unwrap_or(0),
                        token,
                    }
                })),
            )),
            [0, i, retry] => {
                let position = usize::try_from(*i - 1)
                    .ok()
                    .and_then(|i| sent.get(i))
                    .map(|(index, _, _)| *index)
                    .ok_or_else(|| {
                        StoreError::new(
                            StoreErrorKind::Other,
                            format!("Redis {}: bad script reply", self.shown),
                        )
                    })?;
                Ok(Admission::Refused {
                    index: position,
                    retry_after_ms: u64::try_from(*retry).unwrap_or(1).max(1),
                })
            }
            _ => Err(StoreError::new(
                StoreErrorKind::Other,
                format!("Redis {}: unexpected script reply {reply:?}", self.shown),
            )),
        }
    }

    fn try_release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        if reservation.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for unit in reservation.units() {
            let (units, _, _) = self.key_names(&unit.key);
            pipe.zrem(units, unit.token.to_string()).ignore();
        }
        self.with_conn(|conn| pipe.query::<()>(conn))
    }

    fn usage(
        &self,
        counter: &str,
        scope: Scope,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<KeyUsage>, StoreError> {
        let base = self.base(counter, scope);
        let low = i128::from(now_ms) - i128::from(window_ms);
        let reply: Vec<redis::Value> = self.with_conn(|conn| {
            self.usage
                .key(format!("{base}i"))
                .arg(format!("{base}u:"))
                .arg(low.to_string())
                .arg(window_ms)
                .invoke(conn)
        })?;
        let bad = || {
            StoreError::new(
                StoreErrorKind::Other,
                format!("Redis {}: unexpected usage reply", self.shown),
            )
        };
        let mut out = Vec::with_capacity(reply.len() / 3);
        for row in reply.chunks(3) {
            let [key, used, oldest] = row else {
                return Err(bad());
            };
            let scope_key: String = redis::from_redis_value_ref(key).map_err(|_| bad())?;
            let used: u64 = redis::from_redis_value_ref(used).map_err(|_| bad())?;
            let oldest: f64 = redis::from_redis_value_ref(oldest).map_err(|_| bad())?;
            // Scores are whole milliseconds, exact in a double.
            let oldest = oldest.max(0.0) as u64;
            out.push(KeyUsage {
                scope_key,
                used,
                next_free_in_ms: Some(super::leaves_in(oldest, window_ms, now_ms)),
            });
        }
        out.sort_by(|a, b| a.scope_key.cmp(&b.scope_key));
        Ok(out)
    }
}
