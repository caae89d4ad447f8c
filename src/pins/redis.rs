//! [`RedisPins`]: pins in the Redis that holds the counters (`--counters redis://`), so that
//! every replica of a gateway agrees on what was reviewed.
//!
//! Layout, with `P` = `<prefix>:pins:` and `S` = `<len(server)>:<server>` (the length makes
//! the server name unambiguous): `P S` a hash tool → pin, `P offers:S` a hash tool → offered
//! definition, `P servers` the set of servers with pins. A pin is a small JSON object
//! (`f` fingerprint hex, `d` the canonical definition, `t` milliseconds), read back as
//! hostile, as [`super::SqlitePins`] reads its rows. Writes that must see the current pin
//! (first pin wins, the per-server cap, an offer only for a pinned tool) are Lua scripts, so
//! they are atomic against every other gateway. Keys do not expire: pins are kept until
//! `toolgate pins reset`.
//!
//! Blocking, with the counter store's timeouts ([`IO_TIMEOUT`]); one connection per call
//! (pins are asked once per `tools/list`, never per call).

use serde::{Deserialize, Serialize};

use super::fingerprint::{Fingerprint, MAX_DEFINITION_BYTES, ToolDefinition};
use super::store::{MAX_PINS_PER_SERVER, Pin, PinOutcome, PinStore, PinStoreError, now_ms};
use crate::policy::store::redis::IO_TIMEOUT;

/// KEYS: pins, servers. ARGV: tool, pin, cap, server. Returns {1, pin} when pinned already,
/// {0} when pinned now, {2} when the server has `cap` pins.
const PIN_OR_COMPARE: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then return {1, cur} end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return {2} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
return {0}
";

/// KEYS: pins, offers, servers. ARGV: tool, pin, cap, server. Returns 1, or 2 at the cap.
const ACCEPT: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and
   redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 2 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[4])
return 1
";

/// KEYS: pins, offers. ARGV: tool, offer.
const OFFER: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return 1
";

/// KEYS: pins, offers, servers. ARGV: server. Returns how many pins there were.
const RESET: &str = r"
local n = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return n
";

/// Pins in one Redis server (database), under a key prefix.
pub struct RedisPins {
    client: redis::Client,
    prefix: String,
    shown: String,
}

impl std::fmt::Debug for RedisPins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPins")
            .field("server", &self.shown)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A pin as stored.
#[derive(Serialize, Deserialize)]
struct Stored {
    f: String,
    d: String,
    t: u64,
}

impl RedisPins {
    /// Pins on the server at `url`, under `prefix`; `shown` is the URL without a password.
    /// Does not connect yet.
    pub fn new(url: &str, shown: &str, prefix: &str) -> Result<RedisPins, PinStoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| PinStoreError(format!("{shown} is not a usable Redis URL: {e}")))?;
        Ok(RedisPins {
            client,
            prefix: prefix.to_owned(),
            shown: shown.to_owned(),
        })
    }

    fn pins_key(&self, server: &str) -> String {
        format!("{}:pins:{}:{server}", self.prefix, server.len())
    }

    fn offers_key(&self, server: &str) -> String {
        format!("{}:pins:offers:{}:{server}", self.prefix, server.len())
    }

    fn servers_key(&self) -> String {
        format!("{}:pins:servers", self.prefix)
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, PinStoreError> {
        let fail =
            |e: redis::RedisError| PinStoreError(format!("pin store Redis {}: {e}", self.shown));
        let mut conn = self
            .client
            .get_connection_with_timeout(IO_TIMEOUT)
            .map_err(fail)?;
        conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(fail)?;
        conn.set_write_timeout(Some(IO_TIMEOUT)).map_err(fail)?;
        f(&mut conn).map_err(fail)
    }

    fn encode(
        fingerprint: &Fingerprint,
        definition: &ToolDefinition,
    ) -> Result<String, PinStoreError> {
        let d = definition
            .canonical()
            .map_err(|e| PinStoreError(e.to_string()))?;
        serde_json::to_string(&Stored {
            f: fingerprint.to_hex(),
            d,
            t: now_ms(),
        })
        .map_err(|e| PinStoreError(e.to_string()))
    }

    fn decode(&self, server: &str, tool: &str, text: &str) -> Result<Pin, PinStoreError> {
        let bad = |what: &str| {
            PinStoreError(format!(
                "pin store Redis {}: the pin of `{server}`/`{tool}` has {what}; run `toolgate \
                 pins reset` for that server to pin its tools afresh",
                self.shown
            ))
        };
        if text.len() > 2 * MAX_DEFINITION_BYTES {
            return Err(bad("an oversized definition"));
        }
        let stored: Stored = serde_json::from_str(text).map_err(|_| bad("an unreadable entry"))?;
        let fingerprint =
            Fingerprint::from_hex(&stored.f).ok_or_else(|| bad("a malformed fingerprint"))?;
        let definition: ToolDefinition =
            serde_json::from_str(&stored.d).map_err(|_| bad("an unreadable definition"))?;
        Ok(Pin {
            server: server.to_owned(),
            tool: tool.to_owned(),
            fingerprint,
            definition,
            pinned_at_ms: stored.t,
        })
    }

    /// Every entry of the hash `key_of(server)` for every server (or one), sorted.
    fn read_all(
        &self,
        server: Option<&str>,
        key_of: impl Fn(&str) -> String,
    ) -> Result<Vec<Pin>, PinStoreError> {
        let servers: Vec<String> = match server {
            Some(s) => vec![s.to_owned()],
            None => self.with_conn(|c| {
                redis::cmd("SMEMBERS")
                    .arg(self.servers_key())
                    .query::<Vec<String>>(c)
            })?,
        };
        let mut pins = Vec::new();
        for server in servers {
            let entries: Vec<(String, String)> =
                self.with_conn(|c| redis::cmd("HGETALL").arg(key_of(&server)).query(c))?;
            for (tool, text) in entries {
                pins.push(self.decode(&server, &tool, &text)?);
            }
        }
        pins.sort_by(|a, b| (&a.server, &a.tool).cmp(&(&b.server, &b.tool)));
        Ok(pins)
    }
}

fn too_many(server: &str) -> PinStoreError {
    super::store::too_many(server)
}

impl PinStore for RedisPins {
    fn pin_or_compare(
        &self,
        server: &str,
        tool: &str,
        fingerprint: &Fingerprint,
        definition: &ToolDefinition,
    ) -> Result<PinOutcome, PinStoreError> {
        let pin = Self::encode(fingerprint, definition)?;
        let reply: (i64, Option<String>) = self.with_conn(|c| {
            let values: Vec<redis::Value> = redis::Script::new(PIN_OR_COMPARE)
                .key(self.pins_key(server))
                .key(self.servers_key())
                .arg(tool)
                .arg(&pin)
                .arg(MAX_PINS_PER_SERVER)
                .arg(server)
                .invoke(c)?;
            let code: i64 = match values.first() {
                Some(v) => redis::from_redis_value_ref(v)?,
                None => -1,
            };
            let text: Option<String> = match values.get(1) {
                Some(v) => Some(redis::from_redis_value_ref(v)?),
                None => None,
            };
            Ok((code, text))
        })?;
        match reply {
            (0, _) => Ok(PinOutcome::New),
            (1, Some(text)) => {
                let pinned = self.decode(server, tool, &text)?;
                Ok(if pinned.fingerprint == *fingerprint {
                    PinOutcome::Same
                } else {
                    PinOutcome::Changed { pinned }
                })
            }
            (2, _) => Err(too_many(server)),
            _ => Err(PinStoreError(format!(
                "pin store Redis {}: an unexpected answer",
                self.shown
            ))),
        }
    }

    fn accept(
        &self,
        server: &str,
        tool: &str,
        fingerprint: &Fingerprint,
        definition: &ToolDefinition,
    ) -> Result<(), PinStoreError> {
        let pin = Self::encode(fingerprint, definition)?;
        let code: i64 = self.with_conn(|c| {
            redis::Script::new(ACCEPT)
                .key(self.pins_key(server))
                .key(self.offers_key(server))
                .key(self.servers_key())
                .arg(tool)
                .arg(&pin)
                .arg(MAX_PINS_PER_SERVER)
                .arg(server)
                .invoke(c)
        })?;
        if code == 2 {
            return Err(too_many(server));
        }
        Ok(())
    }

    fn list(&self, server: Option<&str>) -> Result<Vec<Pin>, PinStoreError> {
        self.read_all(server, |s| self.pins_key(s))
    }

    fn reset(&self, server: &str) -> Result<usize, PinStoreError> {
        let n: i64 = self.with_conn(|c| {
            redis::Script::new(RESET)
                .key(self.pins_key(server))
                .key(self.offers_key(server))
                .key(self.servers_key())
                .arg(server)
                .invoke(c)
        })?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn offer(
        &self,
        server: &str,
        tool: &str,
        fingerprint: &Fingerprint,
        definition: &ToolDefinition,
    ) -> Result<(), PinStoreError> {
        let offer = Self::encode(fingerprint, definition)?;
        self.with_conn(|c| {
            redis::Script::new(OFFER)
                .key(self.pins_key(server))
                .key(self.offers_key(server))
                .arg(tool)
                .arg(&offer)
                .invoke::<i64>(c)
        })
        .map(drop)
    }

    fn offers(&self, server: Option<&str>) -> Result<Vec<Pin>, PinStoreError> {
        self.read_all(server, |s| self.offers_key(s))
    }
}
