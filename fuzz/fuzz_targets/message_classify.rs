//! Fuzz target: the gateway's message classification, end to end through `core::run` on a
//! current-thread runtime with in-memory pipes.
//!
//! The first byte picks the framing: client→server lines and server→client lines (split at
//! the first NUL), or one HTTP POST body (`http::body::message_line`, then into the core as
//! `serve` does). Properties: nothing panics (libfuzzer-sys aborts on a panic in any task),
//! the connection ends cleanly, and whatever reaches the upstream is JSON with one reading
//! (no duplicate key) that holds no `tools/call` the policy denies, anywhere in it (nested in
//! batches or wrappers included; the arguments of an allowed call are data).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use toolgate::testing::control::Hub;
use toolgate::testing::gateway::message_line;
use toolgate::testing::gateway::{End, Gateway, RunOptions, run};
use toolgate::testing::policy::{MemoryStore, Policy};
use toolgate::testing::wire::GatewayInfo;

/// Only `echo` may run; `hold` waits for a person who never comes (denied at the end).
const POLICY: &str = r#"{"version":"1","default":"deny","hide":["secret_*"],
  "tools":{"echo":{},"hold":{"action":"require_approval"}}}"#;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn gateway() -> Arc<Gateway> {
    static POLICY_HANDLE: OnceLock<Arc<arc_swap::ArcSwap<Policy>>> = OnceLock::new();
    let policy = POLICY_HANDLE.get_or_init(|| {
        Arc::new(arc_swap::ArcSwap::from_pointee(
            Policy::parse(POLICY, "policy.json").expect("the fuzz policy is valid"),
        ))
    });
    let hub = Hub::new(GatewayInfo {
        id: "fuzz".into(),
        pid: 1,
        version: "fuzz".into(),
        grant: "g".into(),
        server: "s".into(),
        policy: "policy.json".into(),
        started_at: chrono::Utc::now(),
    });
    Arc::new(Gateway::new(
        policy.clone(),
        Arc::new(MemoryStore::new()),
        hub,
        "g",
        "s",
    ))
}

/// Runs one connection: the client writes `client`, the server `server`; returns what
/// reached the upstream.
fn exchange(client_bytes: Vec<u8>, server_bytes: Vec<u8>) -> Vec<u8> {
    runtime().block_on(async move {
        let (mut client, client_end) = tokio::io::duplex(1 << 20);
        let (server, server_end) = tokio::io::duplex(1 << 20);
        let (cr, cw) = tokio::io::split(client_end);
        let (sr, sw) = tokio::io::split(server_end);
        let mut options = RunOptions::new("fuzz");
        // Small enough that the size limit is reached by fuzzed inputs.
        options.max_message = 1024;
        let task = tokio::spawn(run(
            gateway(),
            BufReader::new(cr),
            cw,
            BufReader::new(sr),
            sw,
            options,
        ));
        let (mut server_read, mut server_write) = tokio::io::split(server);
        let feed_server = async move {
            let _ = server_write.write_all(&server_bytes).await;
            server_write
        };
        let feed_client = async {
            let _ = client.write_all(&client_bytes).await;
            // The client leaves; the gateway closes the upstream's input.
            let _ = client.shutdown().await;
        };
        let mut upstream = Vec::new();
        let read_upstream = server_read.read_to_end(&mut upstream);
        let (server_write, _, _) = tokio::join!(feed_server, feed_client, read_upstream);
        drop(server_write);
        drop(server_read);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        let end = task.await.expect("the connection task panicked");
        assert_eq!(end, End::ClientClosed);
        upstream
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (client, server) = match mode % 3 {
        0 => match rest.iter().position(|&b| b == 0) {
            Some(at) => (rest[..at].to_vec(), rest[at + 1..].to_vec()),
            None => (rest.to_vec(), Vec::new()),
        },
        1 => match message_line(rest) {
            Ok(mut line) => {
                assert!(!line.contains(&b'\n') && !line.contains(&b'\r'));
                line.push(b'\n');
                (line, Vec::new())
            }
            Err(_) => return,
        },
        _ => (Vec::new(), rest.to_vec()),
    };
    let upstream = exchange(client, server);
    for line in upstream.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut de = serde_json::Deserializer::from_slice(line);
        let value = de
            .deserialize_any(OneReading)
            .and_then(|v| de.end().map(|()| v))
            .unwrap_or_else(|e| {
                panic!(
                    "the upstream was sent a line without one reading ({e}): {}",
                    String::from_utf8_lossy(line)
                )
            });
        if let Some(name) = denied_call(&value) {
            panic!(
                "a denied tools/call ({name}) reached the upstream: {}",
                String::from_utf8_lossy(line)
            );
        }
    }
});

/// The name of a `tools/call` anywhere in `value` that is not `echo`.
fn denied_call(value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => items.iter().find_map(denied_call),
        Value::Object(map) => {
            if map.get("method").and_then(Value::as_str) == Some("tools/call") {
                let name = map.get("params").and_then(|p| p.get("name"));
                return match name {
                    Some(Value::String(n)) if n == "echo" => None,
                    other => Some(format!("{other:?}")),
                };
            }
            map.values().find_map(denied_call)
        }
        _ => None,
    }
}

/// A `Value` builder that refuses duplicate keys: written here, independently of the
/// gateway's own check, so the property does not trust the code it tests.
struct OneReading;

impl<'de> Visitor<'de> for OneReading {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Seed)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Seed)?;
            if out.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
        }
        Ok(Value::Object(out))
    }
}

struct Seed;

impl<'de> de::DeserializeSeed<'de> for Seed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(OneReading)
    }
}
