//! Server-sent events, both ways: parse an upstream's `text/event-stream` into messages as
//! the bytes arrive, and frame the gateway's own messages for its clients.
//!
//! Only what MCP uses: `data` (joined with newlines), `event` (a message is an event of
//! type `message` or untyped), `id` and `retry` are read; comments and unknown fields are
//! skipped. An event larger than the parser's cap is an error, so an upstream cannot make the
//! gateway buffer without bound.

/// One event's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// An event grew beyond the cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event stream event is larger than {0} bytes")]
pub(crate) struct TooLarge(pub usize);

/// Incremental parser: feed it chunks, take complete events out.
#[derive(Debug)]
pub(crate) struct SseParser {
    cap: usize,
    line: Vec<u8>,
    /// The last chunk ended in `\r`: a following `\n` belongs to the same line end.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    pub(crate) fn new(cap: usize) -> SseParser {
        SseParser {
            cap,
            line: Vec::new(),
            after_cr: false,
            event: None,
            data: String::new(),
            has_data: false,
        }
    }

    /// Feeds bytes; returns the events they completed.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, TooLarge> {
        let mut out = Vec::new();
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.end_line(&line) {
                        out.push(event);
                    }
                }
                _ => {
                    self.line.push(b);
                    if self.line.len() + self.data.len() > self.cap {
                        return Err(TooLarge(self.cap));
                    }
                }
            }
        }
        Ok(out)
    }

    fn end_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.event.take();
            let data = std::mem::take(&mut self.data);
            let had = std::mem::replace(&mut self.has_data, false);
            return had.then_some(SseEvent { event, data });
        }
        if line.first() == Some(&b':') {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

impl SseEvent {
    /// Whether this event carries an MCP message.
    pub(crate) fn is_message(&self) -> bool {
        matches!(self.event.as_deref(), None | Some("message")) && !self.data.is_empty()
    }
}

/// Frames one JSON-RPC message (a single line of JSON) as an SSE `message` event.
pub(crate) fn frame(message: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(message.len() + 24);
    out.extend_from_slice(b"event: message\ndata: ");
    // The gateway's messages are single lines; a stray line break must not end the event.
    for &b in message.strip_suffix(b"\n").unwrap_or(message) {
        if b == b'\n' || b == b'\r' {
            out.extend_from_slice(b"\ndata: ");
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(b"\n\n");
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_line_ends_are_reassembled() {
        let mut p = SseParser::new(1 << 20);
        let mut events = p.feed(b"event: message\r\ndata: {\"a\"").unwrap();
        assert!(events.is_empty());
        events.extend(p.feed(b":1}\r").unwrap());
        events.extend(p.feed(b"\n\r\n: comment\n\ndata: x\ndata: y\n\n").unwrap());
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("message".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "x\ny".into()
                }
            ]
        );
        assert!(events.iter().all(SseEvent::is_message));
    }

    #[test]
    fn an_event_beyond_the_cap_is_an_error() {
        let mut p = SseParser::new(16);
        assert!(p.feed(b"data: 0123456789abcdefghij").is_err());
    }

    #[test]
    fn framing_round_trips_through_the_parser() {
        let mut p = SseParser::new(1 << 20);
        let events = p.feed(&frame(b"{\"x\":\"a\"}\n")).unwrap();
        assert_eq!(events[0].data, "{\"x\":\"a\"}");
    }
}
