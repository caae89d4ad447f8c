//! Just enough JSON-RPC for a transparent proxy: classify a line by its `method` and `id`
//! without building a tree, and build the few messages the gateway writes itself (refusals,
//! errors, progress).
//!
//! The gateway forwards every message it does not need to change as the exact bytes it
//! received, so this module never re-serialises a message it only looked at.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// JSON-RPC error codes the gateway answers with.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_PARAMS: i64 = -32602;
    /// Implementation-defined server error: the upstream went away before answering.
    pub const UPSTREAM_GONE: i64 = -32000;
}

/// The `_meta` key 2026-07-28 clients stamp on every request with their protocol version.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// The top-level members of a JSON-RPC message, borrowed from the line.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(default)]
    pub method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
}

/// What one line is, as far as the gateway cares.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A single JSON-RPC message (object).
    Message(Envelope<'a>),
    /// An old-style batch: each element is handled on its own.
    Batch(Vec<&'a RawValue>),
    /// Not JSON, or JSON that is not an object or array.
    Malformed(String),
}

/// Classifies one line (without its newline).
pub fn parse(line: &[u8]) -> Parsed<'_> {
    let first = line.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first == Some(b'[') {
        return match serde_json::from_slice::<Vec<&RawValue>>(line) {
            Ok(items) => Parsed::Batch(items),
            Err(e) => Parsed::Malformed(e.to_string()),
        };
    }
    match serde_json::from_slice::<Envelope<'_>>(line) {
        Ok(env) => Parsed::Message(env),
        Err(e) => Parsed::Malformed(e.to_string()),
    }
}

impl Envelope<'_> {
    /// A request: has a method and an id.
    pub fn is_request(&self) -> bool {
        self.method.is_some() && self.id.is_some()
    }

    /// A response: an id and no method.
    pub fn is_response(&self) -> bool {
        self.method.is_none() && self.id.is_some()
    }

    /// The id as a map key: its JSON text (so `1` and `"1"` stay distinct).
    pub fn id_key(&self) -> Option<IdKey> {
        self.id.map(IdKey::from_raw)
    }
}

/// A request id as the text of its JSON value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdKey(pub Box<str>);

impl IdKey {
    pub fn from_raw(raw: &RawValue) -> IdKey {
        IdKey(raw.get().trim().into())
    }

    /// Builds the key for an id held as a value (from `notifications/cancelled`).
    pub fn from_value(value: &Value) -> IdKey {
        IdKey(value.to_string().into())
    }

    /// The id's JSON text, to write back into a response.
    pub fn json(&self) -> &str {
        &self.0
    }
}

/// Whether a malformed line looks like a request (so it deserves a parse-error answer)
/// rather than a response or noise.
pub fn looks_like_request(line: &[u8]) -> bool {
    line.windows(8).any(|w| w == b"\"method\"")
}

/// `{"jsonrpc":"2.0","id":ID,"error":{"code":C,"message":M}}` with a `null` id when `id` is
/// `None`.
pub fn error_response(id: Option<&IdKey>, code: i64, message: &str) -> Vec<u8> {
    let id = id.map(IdKey::json).unwrap_or("null");
    let message = Value::String(message.to_owned());
    format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{message}}}}}"#)
        .into_bytes()
}

/// A successful response carrying `result`.
pub fn result_response(id: &IdKey, result: &Value) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","id":{},"result":{}}}"#,
        id.json(),
        result
    )
    .into_bytes()
}

/// The tool result an agent gets for a refused call: a result, not an error, so that the
/// model reads the reason. `modern` peers (2026-07-28) also get `resultType`.
pub fn refusal(id: &IdKey, text: &str, modern: bool) -> Vec<u8> {
    let mut result = serde_json::json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
    });
    if modern {
        result["resultType"] = Value::String("complete".into());
    }
    result_response(id, &result)
}

/// A `notifications/progress` for `token`.
pub fn progress(token: &Value, progress: u64, message: &str) -> Vec<u8> {
    let params = serde_json::json!({
        "progressToken": token,
        "progress": progress,
        "message": message,
    });
    format!(r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{params}}}"#)
        .into_bytes()
}

/// The parts of `tools/call` params the gateway needs.
#[derive(Debug, Deserialize)]
pub struct CallParams {
    pub name: String,
    #[serde(default)]
    pub arguments: Option<Value>,
    #[serde(default, rename = "_meta")]
    pub meta: Option<serde_json::Map<String, Value>>,
    /// Present on a 2026-07-28 retry after `input_required`.
    #[serde(default, rename = "inputResponses")]
    pub input_responses: Option<Value>,
    #[serde(default, rename = "requestState")]
    pub request_state: Option<Value>,
}

impl CallParams {
    pub fn progress_token(&self) -> Option<&Value> {
        self.meta.as_ref()?.get("progressToken")
    }

    /// Whether the request says it speaks 2026-07-28 or later.
    pub fn is_modern(&self) -> bool {
        self.meta
            .as_ref()
            .is_some_and(|m| m.contains_key(META_PROTOCOL_VERSION))
    }

    /// A retry of an earlier call that answered `input_required`.
    pub fn is_input_retry(&self) -> bool {
        self.input_responses.is_some() || self.request_state.is_some()
    }
}

/// Whether a request's params carry the 2026-07-28 protocol stamp.
pub fn params_are_modern(params: Option<&RawValue>) -> bool {
    #[derive(Deserialize)]
    struct P {
        #[serde(default, rename = "_meta")]
        meta: Option<serde_json::Map<String, Value>>,
    }
    params
        .and_then(|p| serde_json::from_str::<P>(p.get()).ok())
        .and_then(|p| p.meta)
        .is_some_and(|m| m.contains_key(META_PROTOCOL_VERSION))
}

/// The cursor of a paginated request (`tools/list`), if any.
pub fn cursor(params: Option<&RawValue>) -> Option<String> {
    #[derive(Deserialize)]
    struct P {
        #[serde(default)]
        cursor: Option<String>,
    }
    params
        .and_then(|p| serde_json::from_str::<P>(p.get()).ok())
        .and_then(|p| p.cursor)
}

/// The `requestId` of a `notifications/cancelled`.
pub fn cancelled_request(params: Option<&RawValue>) -> Option<IdKey> {
    #[derive(Deserialize)]
    struct P {
        #[serde(rename = "requestId")]
        request_id: Value,
    }
    let p: P = serde_json::from_str(params?.get()).ok()?;
    Some(IdKey::from_value(&p.request_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_responses_and_notifications_are_told_apart() {
        let Parsed::Message(req) = parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#)
        else {
            panic!("not a message")
        };
        assert!(req.is_request());
        assert_eq!(req.id_key().unwrap().json(), "7");
        let Parsed::Message(resp) = parse(br#"{"result":{},"jsonrpc":"2.0","id":"a"}"#) else {
            panic!("not a message")
        };
        assert!(resp.is_response());
        assert_eq!(resp.id_key().unwrap().json(), "\"a\"");
        let Parsed::Message(note) = parse(br#"{"jsonrpc":"2.0","method":"notifications/x"}"#)
        else {
            panic!("not a message")
        };
        assert!(!note.is_request() && !note.is_response());
    }

    #[test]
    fn ids_of_different_types_stay_distinct() {
        assert_ne!(
            IdKey::from_value(&serde_json::json!(1)),
            IdKey::from_value(&serde_json::json!("1"))
        );
        assert_eq!(
            IdKey::from_value(&serde_json::json!("x")),
            IdKey::from_raw(&RawValue::from_string("\"x\"".into()).unwrap())
        );
    }

    #[test]
    fn batches_split_into_their_elements() {
        let Parsed::Batch(items) = parse(br#"[{"id":1,"method":"a"}, {"method":"b"}]"#) else {
            panic!("not a batch")
        };
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for line in [&b"{"[..], b"nul", b"\xff\xfe", b"42", b"[1,", b"\"x\""] {
            assert!(matches!(parse(line), Parsed::Malformed(_)), "{line:?}");
        }
    }

    #[test]
    fn refusal_is_a_tool_result_with_result_type_for_modern_peers() {
        let id = IdKey("3".into());
        let legacy: Value = serde_json::from_slice(&refusal(&id, "no", false)).unwrap();
        assert_eq!(legacy["result"]["isError"], true);
        assert_eq!(legacy["result"]["content"][0]["text"], "no");
        assert!(legacy["result"].get("resultType").is_none());
        let modern: Value = serde_json::from_slice(&refusal(&id, "no", true)).unwrap();
        assert_eq!(modern["result"]["resultType"], "complete");
        assert_eq!(modern["id"], 3);
    }

    #[test]
    fn error_response_escapes_its_message() {
        let v: Value =
            serde_json::from_slice(&error_response(None, code::PARSE_ERROR, "bad \"x\"\n"))
                .unwrap();
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["error"]["message"], "bad \"x\"\n");
    }
}
