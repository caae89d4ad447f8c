//! What a tool is, for pinning: its [`ToolDefinition`] (the parts of a `tools/list` entry
//! that tell a model what the tool does and how to call it) and its [`Fingerprint`], a
//! SHA-256 over their canonical form ([`super::canonical`], RFC 8785).
//!
//! The fingerprinted parts are `name`, `title`, `description`, `inputSchema`, `outputSchema`
//! and `annotations`. Everything else in the entry (`_meta`, `icons`, fields of later
//! protocol versions) is left out: it does not change what the model is told or may send.
//!
//! Absent and `null` are the same: a part given as `null` is treated as not given (both mean
//! "none" to a client), and the canonical document holds only the parts that are given, so
//! a server that starts sending `"title": null` does not look changed. Any other change of
//! a part, even of key order inside a schema, is not a change (canonical form) unless the
//! value differs.
//!
//! An entry is read without trusting it: it must be an object, `name` a non-empty string of
//! at most [`MAX_NAME_BYTES`], `title` and `description` strings, the schemas and
//! annotations objects, and the whole canonical definition at most
//! [`MAX_DEFINITION_BYTES`]; anything else is a [`DefinitionError`] saying which part.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::canonical::{self, TooDeep};
use crate::wire::ToolInfo;

/// Longest tool name accepted (MCP suggests 128 characters; this is a cap, not a style).
pub(crate) const MAX_NAME_BYTES: usize = 512;
/// Largest canonical definition accepted: one tool's name, texts, schemas and annotations.
pub(crate) const MAX_DEFINITION_BYTES: usize = 256 * 1024;

/// The parts of a tool that are pinned. `None` is "not given" (absent or `null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(
        default,
        rename = "inputSchema",
        skip_serializing_if = "Option::is_none"
    )]
    pub input_schema: Option<Map<String, Value>>,
    #[serde(
        default,
        rename = "outputSchema",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_schema: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Map<String, Value>>,
}

/// SHA-256 of a definition's canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Lower-case hex, 64 characters: how a fingerprint is stored and shown.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads [`Fingerprint::to_hex`]'s form back; `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Fingerprint> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Fingerprint(bytes))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Why a `tools/list` entry cannot be pinned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("a tools/list entry is not a JSON object")]
    NotAnObject,
    #[error("a tools/list entry has no `name` string")]
    NoName,
    #[error("a tool name is empty or longer than {MAX_NAME_BYTES} bytes")]
    BadName,
    #[error("tool `{tool}`: `{part}` must be {expected}")]
    WrongType {
        tool: String,
        part: &'static str,
        expected: &'static str,
    },
    #[error("tool `{tool}`: its definition is larger than {MAX_DEFINITION_BYTES} bytes")]
    TooLarge { tool: String },
    #[error("tool `{tool}`: {source}")]
    TooDeep { tool: String, source: TooDeep },
}

impl ToolDefinition {
    /// Reads the pinned parts of one `tools/list` entry (see the module doc for what is
    /// refused).
    pub fn from_entry(entry: &Value) -> Result<ToolDefinition, DefinitionError> {
        let definition = ToolDefinition::read_parts(entry)?;
        // Checks the size and depth once, here, so that fingerprinting a definition that
        // was read cannot fail.
        definition.canonical()?;
        Ok(definition)
    }

    /// The parts, type-checked, without the size and depth check of the canonical form.
    fn read_parts(entry: &Value) -> Result<ToolDefinition, DefinitionError> {
        let entry = entry.as_object().ok_or(DefinitionError::NotAnObject)?;
        let name = entry
            .get("name")
            .and_then(Value::as_str)
            .ok_or(DefinitionError::NoName)?;
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(DefinitionError::BadName);
        }
        let wrong = |part, expected| DefinitionError::WrongType {
            tool: name.to_string(),
            part,
            expected,
        };
        let text = |part: &'static str| match entry.get(part) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(wrong(part, "a string")),
        };
        let object = |part: &'static str| match entry.get(part) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o.clone())),
            Some(_) => Err(wrong(part, "an object")),
        };
        let definition = ToolDefinition {
            name: name.to_string(),
            title: text("title")?,
            description: text("description")?,
            input_schema: object("inputSchema")?,
            output_schema: object("outputSchema")?,
            annotations: object("annotations")?,
        };
        Ok(definition)
    }

    /// The canonical form of the given parts, as one JSON object.
    pub fn canonical(&self) -> Result<String, DefinitionError> {
        let text = self
            .write_canonical()
            .map_err(|source| DefinitionError::TooDeep {
                tool: self.name.clone(),
                source,
            })?;
        if text.len() > MAX_DEFINITION_BYTES {
            return Err(DefinitionError::TooLarge {
                tool: self.name.clone(),
            });
        }
        Ok(text)
    }

    /// Writes the parts as one canonical object without building it: the members in the
    /// order RFC 8785 sorts these six names (`annotations`, `description`, `inputSchema`,
    /// `name`, `outputSchema`, `title`), absent ones left out; each value one level down,
    /// as in the object it stands for.
    fn write_canonical(&self) -> Result<String, canonical::TooDeep> {
        let mut out = String::with_capacity(512);
        out.push('{');
        let mut sep = "";
        let mut key = |out: &mut String, name: &str| {
            out.push_str(sep);
            sep = ",";
            out.push('"');
            out.push_str(name);
            out.push_str("\":");
        };
        if let Some(map) = &self.annotations {
            key(&mut out, "annotations");
            canonical::write_map(map, &mut out, 1)?;
        }
        if let Some(text) = &self.description {
            key(&mut out, "description");
            canonical::write_string(text, &mut out);
        }
        if let Some(map) = &self.input_schema {
            key(&mut out, "inputSchema");
            canonical::write_map(map, &mut out, 1)?;
        }
        key(&mut out, "name");
        canonical::write_string(&self.name, &mut out);
        if let Some(map) = &self.output_schema {
            key(&mut out, "outputSchema");
            canonical::write_map(map, &mut out, 1)?;
        }
        if let Some(text) = &self.title {
            key(&mut out, "title");
            canonical::write_string(text, &mut out);
        }
        out.push('}');
        Ok(out)
    }

    /// The SHA-256 of [`ToolDefinition::canonical`].
    pub fn fingerprint(&self) -> Result<Fingerprint, DefinitionError> {
        let text = self.canonical()?;
        Ok(Fingerprint(Sha256::digest(text.as_bytes()).into()))
    }

    /// The definition as `scan` reads a tool, to classify its risk.
    pub fn to_tool_info(&self) -> ToolInfo {
        ToolInfo {
            name: self.name.clone(),
            description: self.description.clone(),
            input_schema: self.input_schema.clone().map(Value::Object),
            output_schema: self.output_schema.clone().map(Value::Object),
            annotations: self.annotations.clone().map(Value::Object),
        }
    }
}

/// Reads and fingerprints every entry of a `tools/list` result's `tools` array, in order;
/// an entry that cannot be read is its error, in its place.
pub fn fingerprint_list(
    tools: &[Value],
) -> Vec<Result<(ToolDefinition, Fingerprint), DefinitionError>> {
    tools
        .iter()
        .map(|entry| {
            // One canonical form per tool: `fingerprint` checks its size and depth too.
            let definition = ToolDefinition::read_parts(entry)?;
            let fingerprint = definition.fingerprint()?;
            Ok((definition, fingerprint))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fp(entry: Value) -> Fingerprint {
        ToolDefinition::from_entry(&entry)
            .and_then(|d| d.fingerprint())
            .expect("a valid entry")
    }

    #[test]
    fn the_direct_writer_equals_canonicalising_the_definition_as_one_object() {
        let entry = json!({
            "name": "sënd_☃", "title": "Send \"it\"\n", "description": "a\u{1}b é \u{10348}",
            "inputSchema": {"type": "object", "properties": {"\u{e000}": {"maximum": 1e21},
                "\u{10348}": {"minimum": -0.0, "default": 9007199254740993_u64},
                "b": [1, 2.5, 1e-7, 123456789012345678_i64, true, null]}},
            "outputSchema": {"z": {}, "a": []},
            "annotations": {"readOnlyHint": false, "title": "x"},
            "ignored": 1
        });
        let d = ToolDefinition::from_entry(&entry).expect("valid");
        let mut whole = entry.as_object().unwrap().clone();
        whole.remove("ignored");
        assert_eq!(
            d.canonical().unwrap(),
            canonical::canonical(&Value::Object(whole)).unwrap()
        );
        let minimal = json!({"name": "t"});
        assert_eq!(
            ToolDefinition::from_entry(&minimal)
                .unwrap()
                .canonical()
                .unwrap(),
            r#"{"name":"t"}"#
        );
    }

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_canonical_definition() {
        let d = ToolDefinition::from_entry(&json!({
            "name": "echo", "description": "Echoes", "inputSchema": {"type": "object"}
        }))
        .expect("valid");
        let canonical = d.canonical().expect("small");
        assert_eq!(
            canonical,
            r#"{"description":"Echoes","inputSchema":{"type":"object"},"name":"echo"}"#
        );
        assert_eq!(
            d.fingerprint().expect("small").to_hex(),
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
    }

    #[test]
    fn key_order_null_parts_and_unpinned_fields_do_not_change_the_fingerprint() {
        let a = fp(json!({
            "name": "t", "description": "d",
            "inputSchema": {"type": "object", "properties": {"a": {"type": "string"}}}
        }));
        let b = fp(json!({
            "inputSchema": {"properties": {"a": {"type": "string"}}, "type": "object"},
            "title": null, "annotations": null, "_meta": {"x": 1}, "icons": [],
            "description": "d", "name": "t"
        }));
        assert_eq!(a, b);
    }

    #[test]
    fn every_pinned_part_changes_the_fingerprint() {
        let base = json!({
            "name": "t", "title": "T", "description": "d",
            "inputSchema": {"type": "object"}, "outputSchema": {"type": "object"},
            "annotations": {"readOnlyHint": true}
        });
        let changes = [
            ("name", json!("u")),
            ("title", json!("U")),
            ("description", json!("d ")),
            ("inputSchema", json!({"type": "object", "required": ["a"]})),
            ("outputSchema", json!({"type": "array"})),
            ("annotations", json!({"readOnlyHint": false})),
        ];
        let original = fp(base.clone());
        for (part, value) in changes {
            let mut changed = base.clone();
            changed[part] = value;
            assert_ne!(fp(changed), original, "changing {part}");
            let mut removed = base.clone();
            if part != "name" {
                removed.as_object_mut().map(|o| o.remove(part));
                assert_ne!(fp(removed), original, "removing {part}");
            }
        }
    }

    #[test]
    fn hostile_entries_are_refused_with_the_part_named() {
        assert_eq!(
            ToolDefinition::from_entry(&json!("echo")),
            Err(DefinitionError::NotAnObject)
        );
        assert_eq!(
            ToolDefinition::from_entry(&json!({"name": 3})),
            Err(DefinitionError::NoName)
        );
        assert_eq!(
            ToolDefinition::from_entry(&json!({"name": ""})),
            Err(DefinitionError::BadName)
        );
        assert_eq!(
            ToolDefinition::from_entry(&json!({"name": "x".repeat(MAX_NAME_BYTES + 1)})),
            Err(DefinitionError::BadName)
        );
        assert!(matches!(
            ToolDefinition::from_entry(&json!({"name": "t", "description": ["a"]})),
            Err(DefinitionError::WrongType {
                part: "description",
                ..
            })
        ));
        assert!(matches!(
            ToolDefinition::from_entry(&json!({"name": "t", "inputSchema": "object"})),
            Err(DefinitionError::WrongType {
                part: "inputSchema",
                ..
            })
        ));
        assert!(matches!(
            ToolDefinition::from_entry(&json!({
                "name": "t", "description": "x".repeat(MAX_DEFINITION_BYTES)
            })),
            Err(DefinitionError::TooLarge { .. })
        ));
    }

    #[test]
    fn fingerprints_read_back_from_hex_and_nothing_else_does() {
        let f = fp(json!({"name": "t"}));
        assert_eq!(Fingerprint::from_hex(&f.to_hex()), Some(f));
        assert_eq!(Fingerprint::from_hex("zz"), None);
        assert_eq!(Fingerprint::from_hex(&"0".repeat(66)), None);
    }
}
