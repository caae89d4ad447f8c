//! What a POST body may be, and the one line it becomes for the core.
//!
//! A body is parsed as one JSON value, never split on newlines: a single object with
//! newlines inside it is one message, not several. It must be one JSON-RPC message beyond
//! dispute ([`jsonrpc::parse`]); batches are refused (MCP removed batching in 2025-06-18).
//! The line handed to the core (and so to the upstream) is that same text on one line
//! ([`jsonrpc::one_line`]), so the core, the upstream and the policy all read one message.

use crate::gateway::jsonrpc::{self, Parsed, code};

/// Why a body is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyRefused {
    #[error("parse error: {0}")]
    Malformed(String),
    #[error("JSON-RPC batches are not accepted; send one message per POST")]
    Batch,
    #[error("invalid request: {0}")]
    NotAMessage(&'static str),
}

impl BodyRefused {
    /// The JSON-RPC error code it is answered with.
    pub fn code(&self) -> i64 {
        match self {
            BodyRefused::Malformed(_) => code::PARSE_ERROR,
            BodyRefused::Batch | BodyRefused::NotAMessage(_) => code::INVALID_REQUEST,
        }
    }
}

/// The body as one line holding one JSON-RPC message object (its shape is checked by the
/// caller, [`jsonrpc::Envelope::shape`]).
pub fn message_line(body: &[u8]) -> Result<Vec<u8>, BodyRefused> {
    let line = unread_line(body)?;
    message(&line)?;
    Ok(line)
}

/// The body on one line, still to be read with [`message`] (which refuses what is not one
/// message): `serve` parses each request once, from the line the core will get.
///
/// Only a text that is valid JSON may have its CR and LF replaced, so a body with line breaks
/// is read here first; one without (the usual case) is only trimmed.
pub(crate) fn unread_line(body: &[u8]) -> Result<Vec<u8>, BodyRefused> {
    let text = body.trim_ascii();
    if memchr::memchr2(b'\n', b'\r', text).is_some() {
        message(body)?;
        return Ok(jsonrpc::one_line(body));
    }
    // Room for the newline the core's queue adds ([`super::pipe::LineSource`]).
    let mut line = Vec::with_capacity(text.len() + 1);
    line.extend_from_slice(text);
    Ok(line)
}

/// The one JSON-RPC message `text` holds, or why it is refused.
pub(crate) fn message(text: &[u8]) -> Result<jsonrpc::Envelope<'_>, BodyRefused> {
    match jsonrpc::parse(text) {
        Parsed::Message(env) => Ok(env),
        Parsed::Batch(_) => Err(BodyRefused::Batch),
        Parsed::NotAMessage(why) => Err(BodyRefused::NotAMessage(why)),
        Parsed::Malformed(e) => Err(BodyRefused::Malformed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_with_newlines_inside_is_one_message_on_one_line() {
        let body = b"{\"jsonrpc\":\"2.0\",\n\"id\":1,\r\n\"method\":\"tools/call\",\"params\":\n{\"name\":\"echo\",\"arguments\":{\"t\":\"a\\nb\"}}}\n";
        let line = message_line(body).unwrap();
        assert!(!line.contains(&b'\n') && !line.contains(&b'\r'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["params"]["arguments"]["t"], "a\nb");
    }

    #[test]
    fn bodies_that_hide_a_second_message_are_refused() {
        for body in [
            // Two messages, one per line: the second would be smuggled if split.
            &b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"delete\"}}"[..],
            b"{\"id\":1,\"method\":\"ping\"\n,\"x\":1}\n}",
            b"[{\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"delete\"}}]",
            b"[[{\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"delete\"}}]]",
            b"\"{\\\"id\\\":1}\"",
            b"\xef\xbb\xbf{\"id\":1,\"method\":\"ping\"}",
            b"{\"id\":1,\"method\":\"ping\",\"method\":\"tools/call\"}",
            b"",
        ] {
            assert!(
                message_line(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            message_line(b"[{\"id\":1,\"method\":\"ping\"}]"),
            Err(BodyRefused::Batch)
        );
    }
}
