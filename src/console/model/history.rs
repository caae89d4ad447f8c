//! The calls the console remembers: a bounded ring, oldest first, looked up by call id.
//!
//! Every call gets an absolute position (`u64`, never reused) when it arrives; the Live view's
//! selection and the filter's result list hold positions, so they stay valid while new calls
//! arrive and old ones fall off the front. Strings are sanitised once, on the way in
//! ([`CallRow::new`]), so nothing stored here can drive the terminal.

use std::collections::{HashMap, VecDeque};

use crate::sanitize::{terminal_smol, terminal_string};
use crate::wire::{CallEvent, HoldResolved, Outcome};

/// Default bound on remembered calls.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// One call, with what became of it so far.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRow {
    /// Index of the connection (gateway) it came from, see `app::State::gateways`.
    pub conn: usize,
    /// When the gateway reported it (the `ts` of its `call` event).
    pub ts: chrono::DateTime<chrono::Utc>,
    /// The call; its `args` are moved out into [`CallRow::args`].
    pub call: CallEvent,
    /// The arguments as compact JSON, secrets redacted. Kept as text because a parsed tree
    /// costs several times the memory, and only the detail pane needs the structure.
    pub args: Box<str>,
    /// Boxed: most calls never get one, and the ring holds 100,000 rows.
    pub resolution: Option<Box<HoldResolved>>,
    pub outcome: Option<Box<Outcome>>,
    /// Ids of its repeated strings in [`History::strings`], set when it is stored.
    pub keys: RowKeys,
}

/// A call's repeated strings as ids into the history's [`Interner`]. The filter decides each
/// distinct string once and then looks rows up by id, instead of chasing every row's
/// strings through memory (which is what bounds the time to filter 100,000 calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowKeys {
    pub tool: u32,
    pub grant: u32,
    pub server: u32,
    pub rule: u32,
    pub reason: u32,
}

/// Distinct strings, each with a small id.
#[derive(Debug, Default)]
pub struct Interner {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    pub fn id(&mut self, s: &str) -> u32 {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }

    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |s| s)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn keys(&mut self, call: &CallEvent) -> RowKeys {
        RowKeys {
            tool: self.id(&call.tool),
            grant: self.id(&call.grant),
            server: self.id(&call.server),
            rule: self.id(&call.rule),
            reason: self.id(&call.reason),
        }
    }
}

impl CallRow {
    /// A row from a wire call, its text fields made safe for the terminal.
    pub fn new(conn: usize, ts: chrono::DateTime<chrono::Utc>, mut call: CallEvent) -> CallRow {
        let args = std::mem::take(&mut call.args).into_tree();
        // Redacted again here: the gateway should have done it, but the console does not rely
        // on that. Copying the tree only when something is left to redact keeps ingest fast.
        let text = if crate::redact::needs_redaction(&args) {
            serde_json::to_string(&crate::redact::redact(&args))
        } else {
            serde_json::to_string(&args)
        };
        let args = text.unwrap_or_default().into_boxed_str();
        CallRow {
            conn,
            ts,
            call: sanitize_call(call),
            args,
            resolution: None,
            outcome: None,
            keys: RowKeys::default(),
        }
    }

    /// The arguments as a JSON tree (for the detail pane).
    pub fn args_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.args).unwrap_or(serde_json::Value::Null)
    }
}

pub(crate) fn sanitize_call(c: CallEvent) -> CallEvent {
    CallEvent {
        call_id: terminal_smol(c.call_id),
        tool: terminal_smol(c.tool),
        grant: terminal_smol(c.grant),
        session: terminal_smol(c.session),
        server: terminal_smol(c.server),
        rule: terminal_smol(c.rule),
        reason: terminal_smol(c.reason),
        shadow: c.shadow.map(|s| {
            Box::new(crate::wire::ShadowDecision {
                rule: terminal_string(s.rule),
                reason: terminal_string(s.reason),
                ..*s
            })
        }),
        // Argument values are sanitised when they are laid out for display: they are JSON,
        // and escaping inside the tree would change what a pretty-printer shows.
        ..c
    }
}

pub(crate) fn sanitize_resolution(r: HoldResolved) -> HoldResolved {
    HoldResolved {
        call_id: terminal_string(r.call_id),
        operator: r.operator.map(terminal_string),
        reason: r.reason.map(terminal_string),
        ..r
    }
}

pub(crate) fn sanitize_outcome(o: Outcome) -> Outcome {
    Outcome {
        call_id: terminal_smol(o.call_id),
        summary: o.summary.map(terminal_smol),
        ..o
    }
}

/// The bounded ring of calls.
#[derive(Debug)]
pub struct History {
    rows: VecDeque<CallRow>,
    /// Absolute position of `rows[0]`.
    first: u64,
    by_id: HashMap<smol_str::SmolStr, u64>,
    capacity: usize,
    /// The rows' repeated strings; rebuilt from the rows when calls that fell off the front
    /// have left too many strings behind (a gateway sending ever new tool names).
    pub strings: Interner,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            rows: VecDeque::new(),
            first: 0,
            by_id: HashMap::new(),
            capacity: capacity.max(1),
            strings: Interner::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Absolute position of the oldest remembered call.
    pub fn first_pos(&self) -> u64 {
        self.first
    }

    /// Absolute position the next call will get.
    pub fn end_pos(&self) -> u64 {
        self.first + self.rows.len() as u64
    }

    /// Adds a call; drops the oldest when full. Returns the new call's position. A call id
    /// seen before (a replayed snapshot) updates the remembered row instead.
    pub fn push(&mut self, mut row: CallRow) -> u64 {
        if self.strings.len() > 4 * self.capacity + 1024 {
            self.reintern();
        }
        row.keys = self.strings.keys(&row.call);
        if let Some(pos) = self.by_id.get(&row.call.call_id).copied()
            && let Some(existing) = self.get_mut(pos)
        {
            existing.keys = row.keys;
            existing.call = row.call;
            if row.resolution.is_some() {
                existing.resolution = row.resolution;
            }
            if row.outcome.is_some() {
                existing.outcome = row.outcome;
            }
            return pos;
        }
        if self.rows.len() == self.capacity
            && let Some(old) = self.rows.pop_front()
        {
            self.by_id.remove(&old.call.call_id);
            self.first += 1;
        }
        let pos = self.end_pos();
        self.by_id.insert(row.call.call_id.clone(), pos);
        self.rows.push_back(row);
        pos
    }

    fn reintern(&mut self) {
        let mut strings = Interner::default();
        for row in self.rows.iter_mut() {
            row.keys = strings.keys(&row.call);
        }
        self.strings = strings;
    }

    pub fn get(&self, pos: u64) -> Option<&CallRow> {
        let i = pos.checked_sub(self.first)?;
        self.rows.get(usize::try_from(i).ok()?)
    }

    pub fn get_mut(&mut self, pos: u64) -> Option<&mut CallRow> {
        let i = pos.checked_sub(self.first)?;
        self.rows.get_mut(usize::try_from(i).ok()?)
    }

    pub fn position(&self, call_id: &str) -> Option<u64> {
        self.by_id.get(call_id).copied()
    }

    pub fn find(&self, call_id: &str) -> Option<&CallRow> {
        self.get(self.position(call_id)?)
    }

    pub fn find_mut(&mut self, call_id: &str) -> Option<&mut CallRow> {
        let pos = self.position(call_id)?;
        self.get_mut(pos)
    }

    /// Rows with their positions, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &CallRow)> + '_ {
        let first = self.first;
        self.rows
            .iter()
            .enumerate()
            .map(move |(i, r)| (first + i as u64, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Verdict;

    fn call(id: &str) -> CallEvent {
        CallEvent {
            call_id: id.into(),
            tool: "t".into(),
            grant: "g".into(),
            session: "s".into(),
            server: "srv".into(),
            decision: Verdict::Allow,
            rule: "/default".into(),
            reason: Default::default(),
            args: serde_json::Value::Null.into(),
            args_truncated: false,
            retry_after_ms: None,
            hold_deadline: None,
            shadow: None,
        }
    }

    #[test]
    fn the_oldest_call_falls_off_when_full_and_positions_stay_stable() {
        let mut h = History::new(2);
        let ts = chrono::Utc::now();
        let a = h.push(CallRow::new(0, ts, call("a")));
        let b = h.push(CallRow::new(0, ts, call("b")));
        let c = h.push(CallRow::new(0, ts, call("c")));
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(h.len(), 2);
        assert!(h.find("a").is_none());
        assert_eq!(h.get(b).map(|r| r.call.call_id.as_str()), Some("b"));
        assert_eq!(h.first_pos(), 1);
        assert!(h.get(a).is_none());
    }

    #[test]
    fn a_replayed_call_updates_its_row_instead_of_adding_one() {
        let mut h = History::new(10);
        let ts = chrono::Utc::now();
        h.push(CallRow::new(0, ts, call("a")));
        let mut again = call("a");
        again.tool = "changed".into();
        let pos = h.push(CallRow::new(0, ts, again));
        assert_eq!(pos, 0);
        assert_eq!(h.len(), 1);
        assert_eq!(h.find("a").map(|r| r.call.tool.as_str()), Some("changed"));
    }

    #[test]
    fn secret_arguments_are_redacted_even_if_the_gateway_did_not() {
        let mut c = call("a");
        c.args = serde_json::json!({"name": "x", "deep": [{"apiKey": "sk-1"}]}).into();
        let row = CallRow::new(0, chrono::Utc::now(), c);
        assert_eq!(
            &*row.args,
            r#"{"name":"x","deep":[{"apiKey":"[redacted]"}]}"#
        );
        let mut c = call("b");
        c.args = serde_json::json!({"name": "x", "token": "[redacted]"}).into();
        let row = CallRow::new(0, chrono::Utc::now(), c);
        assert_eq!(&*row.args, r#"{"name":"x","token":"[redacted]"}"#);
        let mut c = call("c");
        c.args = serde_json::json!({"db": "postgres://app:hunter2@db/app"}).into();
        let row = CallRow::new(0, chrono::Utc::now(), c);
        assert_eq!(&*row.args, r#"{"db":"postgres://[redacted]@db/app"}"#);
    }

    #[test]
    fn strings_left_behind_by_old_calls_are_dropped() {
        let mut h = History::new(2);
        let ts = chrono::Utc::now();
        for i in 0..5000 {
            let mut c = call(&format!("c{i}"));
            c.tool = smol_str::format_smolstr!("tool-{i}");
            h.push(CallRow::new(0, ts, c));
        }
        assert!(h.strings.len() <= 4 * 2 + 1024 + 5, "{}", h.strings.len());
        let last = h.find("c4999").unwrap();
        assert_eq!(h.strings.name(last.keys.tool), "tool-4999");
    }

    #[test]
    fn text_fields_are_sanitised_on_the_way_in() {
        let mut c = call("a");
        c.tool = "evil\x1b[2J".into();
        c.reason = "r\u{202e}".into();
        let row = CallRow::new(0, chrono::Utc::now(), c);
        assert_eq!(row.call.tool, "evil\\x1b[2J");
        assert_eq!(row.call.reason, "r\\u{202e}");
    }
}
