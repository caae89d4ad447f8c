//! A call event's arguments: a tree, or JSON text the gateway wrote from the call's own.
//!
//! The gateway carries the arguments of most calls as the text the agent sent, already in
//! `serde_json`'s compact form (see `gateway/args.rs`), so a call builds no tree for its
//! event; that text is written into the event's JSON as it is. A client always reads a
//! tree: on the wire both are the same JSON.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use smol_str::SmolStr;

/// See the module's documentation.
#[derive(Debug, Clone)]
pub enum CallArgs {
    Tree(Value),
    /// Compact JSON text (as `serde_json` writes a tree), made by the gateway.
    Text(SmolStr),
}

impl CallArgs {
    /// The arguments as a tree (text that is not JSON reads as `null`; the gateway never
    /// makes such text).
    pub fn tree(&self) -> Cow<'_, Value> {
        match self {
            CallArgs::Tree(tree) => Cow::Borrowed(tree),
            CallArgs::Text(text) => Cow::Owned(serde_json::from_str(text).unwrap_or(Value::Null)),
        }
    }

    /// [`CallArgs::tree`], owned.
    pub fn into_tree(self) -> Value {
        match self {
            CallArgs::Tree(tree) => tree,
            CallArgs::Text(text) => serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }
}

impl Default for CallArgs {
    fn default() -> CallArgs {
        CallArgs::Tree(Value::Null)
    }
}

impl From<Value> for CallArgs {
    fn from(tree: Value) -> CallArgs {
        CallArgs::Tree(tree)
    }
}

/// Equal when their trees are.
impl PartialEq for CallArgs {
    fn eq(&self, other: &CallArgs) -> bool {
        match (self, other) {
            (CallArgs::Text(a), CallArgs::Text(b)) if a == b => true,
            _ => self.tree() == other.tree(),
        }
    }
}

impl PartialEq<Value> for CallArgs {
    fn eq(&self, other: &Value) -> bool {
        *self.tree() == *other
    }
}

impl Serialize for CallArgs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            CallArgs::Tree(tree) => tree.serialize(serializer),
            CallArgs::Text(text) => {
                // Checked again (no tree is built): text that is not JSON would break the
                // whole event for every client.
                let raw: &serde_json::value::RawValue =
                    serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
                raw.serialize(serializer)
            }
        }
    }
}

impl<'de> Deserialize<'de> for CallArgs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<CallArgs, D::Error> {
        Value::deserialize(deserializer).map(CallArgs::Tree)
    }
}
