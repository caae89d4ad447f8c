//! The model: everything the console knows, as plain data, and the rows derived from it.
//!
//! This is the bottom layer. It imports no other layer of the console and nothing that draws
//! or reads a terminal (no ratatui, no crossterm): what it holds can be built, changed and
//! checked in a test without a screen. [`super::update`] is the only code that changes a
//! [`State`]; [`super::view`] reads one. What the console wants done outside (send a
//! command, ring the bell, read or write a file) is left here as [`Effect`]s for the event
//! loop.

mod authoring;
pub(crate) mod case;
pub(crate) mod draft;
pub(crate) mod editor;
pub(crate) mod filter;
pub(crate) mod history;
mod labels;
mod layout;
pub(crate) mod learn;
mod overlay;
pub(crate) mod pins;
mod rows;
pub(crate) mod splice;
pub(crate) mod whatif;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Offset as _, Utc};

use crate::sanitize::terminal_string;
use crate::scan::Classification;
use crate::wire::{CallEvent, ClientMsg, CounterState, GatewayInfo, ToolInfo, Totals};

pub use authoring::WriteFailure;
pub(crate) use authoring::{Authoring, Awaiting, Review};
pub(crate) use filter::Filter;
pub(crate) use history::{CallRow, History};
pub(crate) use labels::{
    DecisionStyle, countdown, decision_label, latency_label, room_in, shadow_label, short_hash,
    window_short,
};
pub use layout::Layout;
pub use overlay::Prompt;
pub(crate) use overlay::{Overlay, Overlays};
pub(crate) use pins::{PendingPin, ToolReview, ToolsState};
pub(crate) use rows::Derived;
pub use rows::{LimitRow, PolicyRow, RowKind, limit_rows, tool_class};

/// The console's views, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    Live,
    Holds,
    Policy,
    Limits,
    /// Tool review: definitions that changed since they were pinned.
    Tools,
}

impl View {
    pub const ALL: [View; 5] = [
        View::Live,
        View::Holds,
        View::Policy,
        View::Limits,
        View::Tools,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Live => "Live",
            View::Holds => "Holds",
            View::Policy => "Policy",
            View::Limits => "Limits",
            View::Tools => "Tools",
        }
    }

    pub fn number(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0) + 1
    }

    pub(crate) fn step(self, by: isize) -> View {
        let n = View::ALL.len() as isize;
        let i = (self.number() as isize - 1 + by).rem_euclid(n);
        View::ALL[i as usize]
    }
}

/// The state of one connection, as the network layer reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Connecting {
        url: String,
    },
    Up {
        url: String,
    },
    Down {
        error: String,
        retry_in: Duration,
    },
    /// The gateway is gone (its discovery file was removed); no more retries.
    Gone,
}

/// Something the event loop must do on the console's behalf.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send `msg` to the gateway behind connection `gateway`.
    Send { gateway: String, msg: ClientMsg },
    /// Ring the terminal bell.
    Bell,
    /// Load and apply a theme by name.
    LoadTheme(String),
    /// Read the policy file; answer with [`AppEvent::PolicyFile`].
    LoadPolicy(String),
    /// Write the policy file atomically if its hash is still `expected_hash` (or `force`);
    /// answer with [`AppEvent::PolicyWritten`].
    WritePolicy {
        path: String,
        text: String,
        expected_hash: String,
        force: bool,
    },
    /// Append `case` (named `name`) to the case file at `path` (`--cases`), creating it if
    /// missing; answer with [`AppEvent::CaseWritten`].
    AppendCase {
        path: String,
        name: String,
        case: serde_json::Value,
        fill_in: usize,
    },
}

/// One gateway the console follows.
#[derive(Debug, Clone)]
pub struct SeenGateway {
    /// The connection key (discovery id or URL): how the network layer names it.
    pub key: String,
    /// `key` made safe for the terminal (it comes from a discovery file or the command line).
    key_label: String,
    pub link: Link,
    /// From the gateway's `hello`, text sanitised.
    pub info: Option<GatewayInfo>,
    pub policy_hash: Option<String>,
    pub policy_applied_at: Option<DateTime<Utc>>,
    pub policy_error: Option<Vec<String>>,
    pub totals: Totals,
    /// The counters this gateway reported, each with when (`next_free_in_ms` counts from it).
    pub counters: Vec<SeenCounter>,
    /// The tools its upstream offers, each classified once when it arrives (not per frame).
    pub tools: Vec<OfferedTool>,
    pub upstream_up: bool,
    pub last_seq: u64,
    /// Tools whose definition changed since it was pinned, awaiting review, in the order
    /// they arrived.
    pub tool_changes: Vec<ToolReview>,
}

impl SeenGateway {
    pub(crate) fn new(key: String) -> SeenGateway {
        SeenGateway {
            key_label: terminal_string(key.clone()),
            key,
            link: Link::Connecting { url: String::new() },
            info: None,
            policy_hash: None,
            policy_applied_at: None,
            policy_error: None,
            totals: Totals::default(),
            counters: Vec::new(),
            tools: Vec::new(),
            upstream_up: false,
            last_seq: 0,
            tool_changes: Vec::new(),
        }
    }

    /// The classification of the offered tool `name`, if this gateway offers it.
    pub(crate) fn class_of(&self, name: &str) -> Option<&Classification> {
        self.tools
            .iter()
            .find(|t| t.info.name == name)
            .map(|t| &t.class)
    }

    /// A short name for this gateway: its id once known, else its connection key.
    pub fn label(&self) -> &str {
        self.info
            .as_ref()
            .map_or(self.key_label.as_str(), |i| i.id.as_str())
    }

    pub fn is_up(&self) -> bool {
        matches!(self.link, Link::Up { .. })
    }
}

/// A counter as a gateway reported it, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenCounter {
    pub state: CounterState,
    pub at: DateTime<Utc>,
}

/// A tool an upstream offers (text made safe), with its risk class and flags.
#[derive(Debug, Clone)]
pub struct OfferedTool {
    pub info: ToolInfo,
    pub class: Classification,
}

/// A call waiting for an operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    /// Index into [`State::gateways`].
    pub conn: usize,
    pub ts: DateTime<Utc>,
    pub call: CallEvent,
    /// Compact JSON, secrets redacted (see [`CallRow::args`]).
    pub args: Box<str>,
}

/// A line of feedback under the view (reply to a command, a refused input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub text: String,
    pub error: bool,
    pub at: DateTime<Utc>,
}

/// How long a message stays on screen.
pub(crate) const MESSAGE_TTL: chrono::TimeDelta = chrono::TimeDelta::seconds(8);

/// A command sent and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub gateway: String,
    pub call_id: String,
    pub approve: bool,
}

/// The Live view's own state.
#[derive(Debug, Default)]
pub struct LiveState {
    /// The selected call's position; `None` = following the newest.
    pub selected: Option<u64>,
    pub filter: Filter,
    /// With a filter: positions of the matching calls, oldest first.
    pub filtered: Vec<u64>,
    /// Call id shown in the detail pane.
    pub detail: Option<String>,
    pub detail_scroll: u16,
    /// Bumped each time the filter is set, so a view that keeps a scroll position knows to
    /// start again from the top.
    pub filter_revision: u64,
}

/// The Holds view's own state.
#[derive(Debug, Default)]
pub struct HoldsState {
    pub selected: usize,
    pub detail: Option<String>,
    pub detail_scroll: u16,
}

/// Calls per second over the last minute, for the status bar.
#[derive(Debug, Default)]
pub struct CallRate {
    /// (unix second, calls), oldest first, at most 60 entries.
    buckets: VecDeque<(i64, u32)>,
}

impl CallRate {
    pub fn record(&mut self, ts: DateTime<Utc>) {
        let sec = ts.timestamp();
        match self.buckets.back_mut() {
            Some((s, n)) if *s == sec => *n += 1,
            Some((s, _)) if *s > sec => {
                // Out of order (clock skew between gateways): count it in its bucket if kept.
                if let Some((_, n)) = self.buckets.iter_mut().find(|(s, _)| *s == sec) {
                    *n += 1;
                }
            }
            _ => {
                self.buckets.push_back((sec, 1));
                while self.buckets.len() > 60 {
                    self.buckets.pop_front();
                }
            }
        }
    }

    /// Calls in the minute up to `now`.
    pub fn per_minute(&self, now: DateTime<Utc>) -> u32 {
        let now = now.timestamp();
        self.buckets
            .iter()
            .filter(|(s, _)| *s > now - 60 && *s <= now)
            .map(|(_, n)| n)
            .sum()
    }

    /// Calls per 10 s over the last minute, oldest first (for a sparkline).
    pub fn sparkline(&self, now: DateTime<Utc>) -> [u32; 6] {
        let now = now.timestamp();
        let mut out = [0u32; 6];
        for (s, n) in &self.buckets {
            let age = now - s;
            if (0..60).contains(&age) {
                out[5 - (age / 10) as usize] += n;
            }
        }
        out
    }
}

/// Everything the console knows and shows.
#[derive(Debug)]
pub struct State {
    pub view: View,
    pub gateways: Vec<SeenGateway>,
    pub(crate) gateway_index: HashMap<String, usize>,
    pub history: History,
    /// Calls held now, oldest first.
    pub holds: Vec<Hold>,
    pub live: LiveState,
    pub holds_view: HoldsState,
    /// Help, the rule editor, the write review and prompts, over the view: the top one
    /// gets the keys.
    pub overlays: Overlays,
    pub message: Option<Message>,
    pub pending: HashMap<u64, Pending>,
    /// `accept_pin` commands sent and not answered yet.
    pub pending_pins: HashMap<u64, PendingPin>,
    /// The Tools view's own state.
    pub tools_view: ToolsState,
    /// The case file given with `--cases`, where `T` appends the selected call as a case.
    pub cases_path: Option<String>,
    pub(crate) next_command_id: u64,
    /// Work for the event loop, in order.
    pub effects: Vec<Effect>,
    pub quit: bool,
    /// The time of the latest event (the injected clock).
    pub now: DateTime<Utc>,
    /// The offset times are shown in (local time in the binary, UTC in tests).
    pub tz: FixedOffset,
    pub rate: CallRate,
    /// The terminal's size as the event loop last reported it ([`Layout`]): how far a page
    /// moves is worked out from it, never from what was last drawn.
    pub screen: Layout,
    /// Named in approvals and denials.
    pub operator: Option<String>,
    /// The policy file given with `--policy`, for the Policy view (issue 6).
    pub policy_path: Option<String>,
    /// Bells rung so far (the event loop counts them; tests read it).
    pub bells_rung: u64,
    /// The policy draft and its write (Policy and Limits views).
    pub authoring: Authoring,
    /// Bumped whenever any gateway's tools change (a key of [`Derived`]).
    pub(crate) tools_revision: u64,
    /// Rows worked out from the draft and the offered tools, kept until either changes.
    pub(crate) derived: Derived,
}

impl State {
    pub fn new(now: DateTime<Utc>, capacity: usize) -> State {
        State {
            view: View::Live,
            gateways: Vec::new(),
            gateway_index: HashMap::new(),
            history: History::new(capacity),
            holds: Vec::new(),
            live: LiveState::default(),
            holds_view: HoldsState::default(),
            overlays: Overlays::default(),
            message: None,
            pending: HashMap::new(),
            pending_pins: HashMap::new(),
            tools_view: ToolsState::default(),
            cases_path: None,
            next_command_id: 1,
            effects: Vec::new(),
            quit: false,
            now,
            tz: Utc.fix(),
            rate: CallRate::default(),
            screen: Layout::default(),
            operator: None,
            policy_path: None,
            bells_rung: 0,
            authoring: Authoring::default(),
            tools_revision: 0,
            derived: Derived::default(),
        }
    }

    /// The gateway behind connection `key`, added if new.
    pub fn gateway_mut(&mut self, key: &str) -> (usize, &mut SeenGateway) {
        let i = match self.gateway_index.get(key) {
            Some(i) => *i,
            None => {
                self.gateways.push(SeenGateway::new(key.to_owned()));
                let i = self.gateways.len() - 1;
                self.gateway_index.insert(key.to_owned(), i);
                i
            }
        };
        (i, &mut self.gateways[i])
    }

    /// Label of the gateway at `conn`.
    pub fn gateway_label(&self, conn: usize) -> &str {
        self.gateways.get(conn).map_or("?", SeenGateway::label)
    }

    /// Sum of every gateway's decision counts.
    pub fn totals(&self) -> Totals {
        self.gateways.iter().fold(Totals::default(), |a, g| Totals {
            allow: a.allow + g.totals.allow,
            deny: a.deny + g.totals.deny,
            rate_limited: a.rate_limited + g.totals.rate_limited,
            hold: a.hold + g.totals.hold,
        })
    }

    pub fn connected(&self) -> usize {
        self.gateways.iter().filter(|g| g.is_up()).count()
    }

    /// How many calls the Live view lists (after the filter).
    pub fn live_len(&self) -> usize {
        if self.live.filter.is_empty() {
            self.history.len()
        } else {
            self.visible_filtered().len()
        }
    }

    /// The filter's matches still in the history.
    pub fn visible_filtered(&self) -> &[u64] {
        let first = self.history.first_pos();
        let start = self.live.filtered.partition_point(|p| *p < first);
        &self.live.filtered[start..]
    }

    /// The position of the `i`-th call the Live view lists.
    pub fn live_pos(&self, i: usize) -> Option<u64> {
        if self.live.filter.is_empty() {
            (i < self.history.len()).then(|| self.history.first_pos() + i as u64)
        } else {
            self.visible_filtered().get(i).copied()
        }
    }

    /// Where call `pos` is in the Live view's list, or where it would be.
    pub fn live_index(&self, pos: u64) -> usize {
        if self.live.filter.is_empty() {
            pos.saturating_sub(self.history.first_pos()) as usize
        } else {
            self.visible_filtered().partition_point(|p| *p < pos)
        }
    }

    /// The index of the selected row in the Live list (the newest when following).
    pub fn live_selected_index(&self) -> Option<usize> {
        let len = self.live_len();
        if len == 0 {
            return None;
        }
        Some(match self.live.selected {
            None => len - 1,
            Some(pos) => self.live_index(pos).min(len - 1),
        })
    }

    pub fn following(&self) -> bool {
        self.live.selected.is_none()
    }

    /// The call the current view has selected.
    pub fn selected_call(&self) -> Option<&CallEvent> {
        match self.view {
            View::Live => {
                let pos = self.live_pos(self.live_selected_index()?)?;
                self.history.get(pos).map(|r| &r.call)
            }
            View::Holds => self.holds.get(self.holds_view.selected).map(|h| &h.call),
            _ => None,
        }
    }

    /// The changed tools awaiting review on every gateway, less those kept quarantined
    /// here: (connection, review), gateways in order, each's reviews as they arrived.
    pub fn open_reviews(&self) -> Vec<(usize, &ToolReview)> {
        let kept = &self.tools_view.kept;
        self.gateways
            .iter()
            .enumerate()
            .flat_map(|(conn, g)| {
                g.tool_changes.iter().filter_map(move |r| {
                    let hidden = kept.iter().any(|(key, server, tool, fp)| {
                        *key == g.key && r.is_for(server, tool) && *fp == r.offered_fingerprint
                    });
                    (!hidden).then_some((conn, r))
                })
            })
            .collect()
    }

    /// The review the Tools view has selected.
    pub fn selected_review(&self) -> Option<(usize, &ToolReview)> {
        self.open_reviews().get(self.tools_view.selected).copied()
    }

    /// Whether `call_id` is held now.
    pub fn is_held(&self, call_id: &str) -> bool {
        self.holds.iter().any(|h| h.call.call_id == call_id)
    }

    /// The call the open detail pane shows, if one is open in this view.
    pub fn detail_call_id(&self) -> Option<&str> {
        match self.view {
            View::Live => self.live.detail.as_deref(),
            View::Holds => self.holds_view.detail.as_deref(),
            _ => None,
        }
    }

    /// Shows a message under the view.
    pub fn say(&mut self, text: impl Into<String>) {
        self.message = Some(Message {
            text: text.into(),
            error: false,
            at: self.now,
        });
    }

    /// Shows an error under the view.
    pub fn complain(&mut self, text: impl Into<String>) {
        self.message = Some(Message {
            text: text.into(),
            error: true,
            at: self.now,
        });
    }
}
