//! The console's state, and the one function that changes it.
//!
//! [`State`] is plain data; [`update`] takes one [`AppEvent`] (a key, an action, a message
//! from a gateway, a tick) and the current time, and changes the state. Nothing here touches
//! a socket, a terminal or the system clock: what the console wants done outside (send a
//! command to a gateway, ring the bell, load a theme) is left in [`State::effects`] for the
//! event loop to carry out. That is what lets the tests drive every behaviour directly.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Offset as _, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use tui_input::Input;

use crate::sanitize::{terminal_string, terminal_text};
use crate::scan::Classification;
use crate::wire::{
    CallEvent, ClientMsg, CounterState, Event, EventKind, GatewayInfo, GrantsChange, Hello,
    ResolvedBy, ToolInfo, Totals, Verdict,
};

use super::action::Action;
use super::authoring::{self, Authoring, WriteFailure};
use super::draft::Edit;
use super::filter::{Filter, Matcher};
use super::history::{CallRow, History, sanitize_outcome, sanitize_resolution};
use super::keys;
use super::theme::Theme;

/// The console's views, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    Live,
    Holds,
    Policy,
    Limits,
}

impl View {
    pub const ALL: [View; 4] = [View::Live, View::Holds, View::Policy, View::Limits];

    pub fn title(self) -> &'static str {
        match self {
            View::Live => "Live",
            View::Holds => "Holds",
            View::Policy => "Policy",
            View::Limits => "Limits",
        }
    }

    pub fn number(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0) + 1
    }

    fn step(self, by: isize) -> View {
        let n = View::ALL.len() as isize;
        let i = (self.number() as isize - 1 + by).rem_euclid(n);
        View::ALL[i as usize]
    }
}

/// Something that happened, for [`update`].
// Gateway events are nearly all of the traffic and are moved, not copied, through the
// channel; boxing them would add an allocation per event on the hottest path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AppEvent {
    /// A key from the terminal; mapped to an [`Action`] by [`keys::action_for`].
    Key(KeyEvent),
    /// An action (from a key, a command, or a test).
    Action(Action),
    /// A message from the gateway reached through connection `gateway`.
    Net { gateway: String, event: Event },
    /// The connection to `gateway` changed state.
    Link { gateway: String, link: Link },
    /// A command could not be sent to `gateway` (not connected, connection broke).
    SendFailed {
        gateway: String,
        id: u64,
        error: String,
    },
    /// Time passed (countdowns, message expiry).
    Tick,
    /// The policy file was read (for [`Effect::LoadPolicy`]).
    PolicyFile {
        path: String,
        result: Result<String, String>,
    },
    /// The policy file was written, or not (for [`Effect::WritePolicy`]); `text` is what
    /// was to be written, the result the new hash.
    PolicyWritten {
        text: String,
        result: Result<String, WriteFailure>,
    },
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
}

/// One gateway the console follows.
#[derive(Debug, Clone)]
pub struct Gateway {
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
    pub counters: Vec<CounterState>,
    /// When each of `counters` was reported (same index): `next_free_in_ms` counts from it.
    pub counters_at: Vec<DateTime<Utc>>,
    pub tools: Vec<ToolInfo>,
    /// The risk class and flags of each of `tools` (same index), worked out once when the
    /// tools arrive rather than on every frame.
    pub classes: Vec<Classification>,
    pub upstream_up: bool,
    pub last_seq: u64,
}

impl Gateway {
    fn new(key: String) -> Gateway {
        Gateway {
            key_label: terminal_string(key.clone()),
            key,
            link: Link::Connecting { url: String::new() },
            info: None,
            policy_hash: None,
            policy_applied_at: None,
            policy_error: None,
            totals: Totals::default(),
            counters: Vec::new(),
            counters_at: Vec::new(),
            tools: Vec::new(),
            classes: Vec::new(),
            upstream_up: false,
            last_seq: 0,
        }
    }

    /// The upstream's tools changed: keep them (text made safe) and classify each.
    fn set_tools(&mut self, tools: Vec<ToolInfo>) {
        self.tools = tools.into_iter().map(sanitize_tool).collect();
        self.classes = self.tools.iter().map(crate::scan::classify).collect();
    }

    /// The classification of the offered tool `name`, if this gateway offers it.
    pub fn class_of(&self, name: &str) -> Option<&Classification> {
        let i = self.tools.iter().position(|t| t.name == name)?;
        self.classes.get(i)
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
const MESSAGE_TTL: chrono::TimeDelta = chrono::TimeDelta::seconds(8);

/// What the bottom line is asking for, if anything.
#[derive(Debug, Clone, Default)]
pub enum Prompt {
    #[default]
    None,
    /// `/` filter being typed (applied live as it changes).
    Filter(Input),
    /// `:` command being typed.
    Command(Input),
    /// The reason for denying `call_id`.
    DenyReason { call_id: String, input: Input },
    /// `q` with calls held: quit anyway?
    ConfirmQuit,
    /// The diff and what-if of a policy write: write it? (see [`Authoring::review`]).
    ConfirmWrite,
    /// `MAX/WINDOW` for a limit on `tool` (`r` on a call, `l` in Policy).
    Rate { tool: String, input: Input },
    /// A new `max` (or `window`, when `max` is false) for `counter` (Limits view).
    CounterEdit {
        counter: String,
        max: bool,
        input: Input,
    },
}

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
    /// Index (in the visible list) of the top row last drawn; set by rendering so that
    /// scrolling moves the window only when the selection leaves it.
    pub top: Cell<usize>,
    /// Rows that fit, as last drawn (for page up/down).
    pub page: Cell<usize>,
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
    pub gateways: Vec<Gateway>,
    gateway_index: HashMap<String, usize>,
    pub history: History,
    /// Calls held now, oldest first.
    pub holds: Vec<Hold>,
    pub live: LiveState,
    pub holds_view: HoldsState,
    pub prompt: Prompt,
    pub help: bool,
    pub message: Option<Message>,
    pub pending: HashMap<u64, Pending>,
    next_command_id: u64,
    /// Work for the event loop, in order.
    pub effects: Vec<Effect>,
    pub quit: bool,
    /// The time of the latest event (the injected clock).
    pub now: DateTime<Utc>,
    /// The offset times are shown in (local time in the binary, UTC in tests).
    pub tz: FixedOffset,
    pub rate: CallRate,
    pub theme: Theme,
    /// Named in approvals and denials.
    pub operator: Option<String>,
    /// The policy file given with `--policy`, for the Policy view (issue 6).
    pub policy_path: Option<String>,
    /// Bells rung so far (the event loop counts them; tests read it).
    pub bells_rung: u64,
    /// The policy draft and its write (Policy and Limits views).
    pub authoring: Authoring,
}

impl State {
    pub fn new(now: DateTime<Utc>, theme: Theme, capacity: usize) -> State {
        State {
            view: View::Live,
            gateways: Vec::new(),
            gateway_index: HashMap::new(),
            history: History::new(capacity),
            holds: Vec::new(),
            live: LiveState::default(),
            holds_view: HoldsState::default(),
            prompt: Prompt::None,
            help: false,
            message: None,
            pending: HashMap::new(),
            next_command_id: 1,
            effects: Vec::new(),
            quit: false,
            now,
            tz: Utc.fix(),
            rate: CallRate::default(),
            theme,
            operator: None,
            policy_path: None,
            bells_rung: 0,
            authoring: Authoring::default(),
        }
    }

    /// The gateway behind connection `key`, added if new.
    pub fn gateway_mut(&mut self, key: &str) -> (usize, &mut Gateway) {
        let i = match self.gateway_index.get(key) {
            Some(i) => *i,
            None => {
                self.gateways.push(Gateway::new(key.to_owned()));
                let i = self.gateways.len() - 1;
                self.gateway_index.insert(key.to_owned(), i);
                i
            }
        };
        (i, &mut self.gateways[i])
    }

    /// Label of the gateway at `conn`.
    pub fn gateway_label(&self, conn: usize) -> &str {
        self.gateways.get(conn).map_or("?", Gateway::label)
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

    /// Whether no prompt is open on the bottom line.
    pub fn prompt_is_none(&self) -> bool {
        matches!(self.prompt, Prompt::None)
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

/// Applies one event to the state.
pub fn update(state: &mut State, event: AppEvent, now: DateTime<Utc>) {
    state.now = now;
    match event {
        AppEvent::Key(key) => {
            // A terminal reports Esc quickly followed by a key as that key with Alt; no
            // binding uses Alt, so it is taken as the operator meant it: Esc, then the key.
            let alt_char = key.modifiers.contains(KeyModifiers::ALT)
                && !key.modifiers.contains(KeyModifiers::CONTROL)
                && matches!(key.code, KeyCode::Char(_));
            let key = if alt_char {
                apply(state, Action::Back);
                KeyEvent::new(key.code, key.modifiers - KeyModifiers::ALT)
            } else {
                key
            };
            if let Some(action) = keys::action_for(state, key) {
                apply(state, action);
            }
        }
        AppEvent::Action(action) => apply(state, action),
        AppEvent::Net { gateway, event } => ingest(state, &gateway, event),
        AppEvent::Link { gateway, link } => {
            let (_, g) = state.gateway_mut(&gateway);
            let was_up = g.is_up();
            g.link = link.clone();
            let label = g.label().to_owned();
            match link {
                Link::Down { error, .. } if was_up => state.complain(format!(
                    "lost gateway {label}: {}; reconnecting",
                    terminal_text(&error)
                )),
                Link::Gone => state.say(format!("gateway {label} has stopped")),
                _ => {}
            }
            if matches!(
                state
                    .gateways
                    .iter()
                    .find(|g| g.key == gateway)
                    .map(|g| &g.link),
                Some(Link::Gone)
            ) {
                // Its holds can no longer be resolved from here.
                let conn = state.gateway_index.get(&gateway).copied();
                state.holds.retain(|h| Some(h.conn) != conn);
                clamp_holds_selection(state);
            }
        }
        AppEvent::SendFailed { id, error, .. } => {
            if let Some(p) = state.pending.remove(&id) {
                let verb = if p.approve { "approve" } else { "deny" };
                state.complain(format!(
                    "could not {verb} {}: {}",
                    p.call_id,
                    terminal_text(&error)
                ));
            }
        }
        AppEvent::Tick => {}
        AppEvent::PolicyFile { path, result } => authoring::loaded(state, path, result),
        AppEvent::PolicyWritten { text, result } => authoring::written(state, text, result),
    }
    authoring::ensure_loaded(state);
    if state
        .message
        .as_ref()
        .is_some_and(|m| now - m.at > MESSAGE_TTL)
    {
        state.message = None;
    }
}

/// Applies a gateway event.
fn ingest(state: &mut State, key: &str, event: Event) {
    let (conn, g) = state.gateway_mut(key);
    g.last_seq = g.last_seq.max(event.seq);
    let ts = event.ts;
    match event.kind {
        EventKind::Hello(hello) => {
            tracing::info!(
                gateway = key,
                seq = event.seq,
                calls = hello.snapshot.calls.len(),
                holds = hello.snapshot.holds.len(),
                "hello"
            );
            resume(state, conn, *hello)
        }
        EventKind::Call(call) => {
            let g = &mut state.gateways[conn];
            match call.decision {
                Verdict::Allow => g.totals.allow += 1,
                Verdict::Deny => g.totals.deny += 1,
                Verdict::RateLimited => g.totals.rate_limited += 1,
                Verdict::Hold => g.totals.hold += 1,
            }
            add_call(state, CallRow::new(conn, ts, call), true);
        }
        EventKind::HoldResolved(r) => {
            let r = sanitize_resolution(r);
            state.holds.retain(|h| h.call.call_id != r.call_id);
            clamp_holds_selection(state);
            if let Some(row) = state.history.find_mut(&r.call_id) {
                row.resolution = Some(Box::new(r));
            }
        }
        EventKind::Outcome(o) => {
            let o = sanitize_outcome(o);
            if let Some(row) = state.history.find_mut(&o.call_id) {
                row.outcome = Some(Box::new(o));
            }
        }
        EventKind::PolicyApplied(p) => {
            let g = &mut state.gateways[conn];
            g.policy_hash = Some(terminal_string(p.hash));
            g.policy_applied_at = Some(ts);
            g.policy_error = None;
            let msg = format!(
                "gateway {} applied policy {}",
                g.label(),
                short_hash(g.policy_hash.as_deref().unwrap_or(""))
            );
            let hash = g.policy_hash.clone().unwrap_or_default();
            state.say(msg);
            authoring::applied(state, conn, &hash);
        }
        EventKind::PolicyRejected(p) => {
            let g = &mut state.gateways[conn];
            let diags: Vec<String> = p.diagnostics.into_iter().map(terminal_string).collect();
            let first = diags.first().cloned().unwrap_or_default();
            g.policy_error = Some(diags);
            g.policy_hash = p.kept_hash.map(terminal_string).or(g.policy_hash.take());
            let msg = format!("gateway {} refused the policy change: {first}", g.label());
            let diags = g.policy_error.clone().unwrap_or_default();
            state.complain(msg);
            authoring::rejected(state, conn, &diags);
        }
        EventKind::Counters(c) => {
            let now = state.now;
            let g = &mut state.gateways[conn];
            g.counters_at.resize(g.counters.len(), now);
            for new in c.counters {
                let new = sanitize_counter(new);
                match g.counters.iter().position(|o| {
                    o.counter == new.counter && o.scope == new.scope && o.key == new.key
                }) {
                    Some(i) => {
                        g.counters[i] = new;
                        g.counters_at[i] = now;
                    }
                    None => {
                        g.counters.push(new);
                        g.counters_at.push(now);
                    }
                }
            }
        }
        EventKind::Upstream(u) => {
            let g = &mut state.gateways[conn];
            g.upstream_up = u.up;
            if !u.up {
                let msg = format!(
                    "gateway {}: upstream {} is down{}",
                    g.label(),
                    terminal_text(&u.server),
                    u.detail
                        .map(|d| format!(": {}", terminal_text(&d)))
                        .unwrap_or_default()
                );
                state.complain(msg);
            }
        }
        EventKind::Store(s) => {
            let label = state.gateways[conn].label().to_owned();
            let store = terminal_text(&s.store);
            if s.ok {
                state.say(format!(
                    "gateway {label}: counter store {store} answers again"
                ));
            } else {
                let why = s.detail.map(|d| terminal_text(&d).into_owned());
                state.complain(format!(
                    "gateway {label}: counter store {store} unavailable{}",
                    why.map(|d| format!(": {d}")).unwrap_or_default()
                ));
            }
        }
        EventKind::SessionRefused(r) => {
            let label = state.gateways[conn].label().to_owned();
            state.complain(format!(
                "gateway {label}: {} MCP session(s) of grant {} refused: {}",
                r.refused,
                terminal_text(&r.grant),
                r.cap.explain(r.max)
            ));
        }
        EventKind::Grants(grants) => {
            let label = state.gateways[conn].label().to_owned();
            let text = format!("gateway {label}: {}", terminal_text(&grants.detail));
            match grants.change {
                GrantsChange::Applied => state.say(text),
                GrantsChange::Refused | GrantsChange::Deleted => state.complain(text),
            }
        }
        EventKind::Audit(a) => {
            let label = state.gateways[conn].label().to_owned();
            let path = terminal_text(&a.path);
            let detail = a
                .detail
                .map(|d| format!(": {}", terminal_text(&d)))
                .unwrap_or_default();
            if a.ok {
                state.say(format!(
                    "gateway {label}: audit log {path} written again{detail}"
                ));
            } else {
                state.complain(format!(
                    "gateway {label}: audit log {path} cannot be written{detail}"
                ));
            }
        }
        EventKind::Tools(t) => {
            state.gateways[conn].set_tools(t.tools);
        }
        EventKind::Missed(m) => {
            tracing::warn!(gateway = key, dropped = m.dropped, "missed events");
            let label = state.gateways[conn].label().to_owned();
            state.complain(format!(
                "fell behind gateway {label} ({} events dropped); resyncing",
                m.dropped
            ));
        }
        EventKind::Reply(r) => {
            let Some(p) = state.pending.remove(&r.id) else {
                return;
            };
            let verb = if p.approve { "approved" } else { "denied" };
            if r.ok {
                state.say(format!("{verb} {}", p.call_id));
            } else {
                let why = r.error.as_deref().map(terminal_text).unwrap_or_default();
                let verb = if p.approve { "approve" } else { "deny" };
                state.complain(format!("could not {verb} {}: {why}", p.call_id));
            }
        }
    }
}

/// A (re)connection's `hello`: take the gateway's state from its snapshot.
fn resume(state: &mut State, conn: usize, hello: Hello) {
    let Hello { info, snapshot, .. } = hello;
    {
        let g = &mut state.gateways[conn];
        g.info = Some(sanitize_info(info));
        g.policy_hash = snapshot.policy_hash.map(terminal_string);
        g.policy_error = snapshot
            .policy_error
            .map(|d| d.into_iter().map(terminal_string).collect());
        g.counters = snapshot
            .counters
            .into_iter()
            .map(sanitize_counter)
            .collect();
        g.counters_at = vec![state.now; g.counters.len()];
        g.set_tools(snapshot.tools);
        g.upstream_up = snapshot.upstream_up;
        g.totals = snapshot.totals;
    }
    let held_before: Vec<String> = state
        .holds
        .iter()
        .filter(|h| h.conn == conn)
        .map(|h| h.call.call_id.clone())
        .collect();
    for record in snapshot.calls {
        // A record from a gateway that does not send its time is placed at the moment the
        // snapshot arrived.
        let mut row = CallRow::new(conn, record.ts.unwrap_or(state.now), record.call);
        row.resolution = record.resolution.map(|r| Box::new(sanitize_resolution(r)));
        row.outcome = record.outcome.map(|o| Box::new(sanitize_outcome(o)));
        add_call(state, row, false);
    }
    // Holds resolved while we were away disappear; holds we did not know ring the bell once.
    let now_held: Vec<String> = snapshot.holds.into_iter().map(terminal_string).collect();
    state
        .holds
        .retain(|h| h.conn != conn || now_held.contains(&h.call.call_id));
    let mut rang = false;
    for id in &now_held {
        if state.is_held(id) {
            continue;
        }
        if let Some(row) = state.history.find(id) {
            let hold = Hold {
                conn,
                ts: row.ts,
                call: row.call.clone(),
                args: row.args.clone(),
            };
            insert_hold(state, hold);
            if !held_before.contains(id) && !rang {
                state.effects.push(Effect::Bell);
                rang = true;
            }
        }
    }
    clamp_holds_selection(state);
}

/// Adds a call to the history (and the filter's list, the holds, the rate). `live` is false
/// for calls replayed from a snapshot: they neither ring nor count twice.
fn add_call(state: &mut State, row: CallRow, live: bool) {
    let known = state.history.position(&row.call.call_id);
    let row = match known.and_then(|p| state.history.get(p)) {
        // A replayed call keeps the time it was first seen.
        Some(old) if !live => CallRow { ts: old.ts, ..row },
        _ => row,
    };
    let held = row.call.decision == Verdict::Hold && row.resolution.is_none();
    let hold = held.then(|| Hold {
        conn: row.conn,
        ts: row.ts,
        call: row.call.clone(),
        args: row.args.clone(),
    });
    // Calls replayed from a snapshot were counted when they happened (if this console saw
    // them) or belong to the past: counting them now would make a spike at the connection.
    if known.is_none() && live {
        state.rate.record(row.ts);
    }
    let conn = row.conn;
    let matches = !state.live.filter.is_empty()
        && state
            .live
            .filter
            .matches(&row, state.gateways.get(conn).map_or("", Gateway::label));
    let pos = state.history.push(row);
    if matches && known.is_none() {
        state.live.filtered.push(pos);
    }
    if live
        && let Some(hold) = hold
        && !state.is_held(&hold.call.call_id)
    {
        insert_hold(state, hold);
        state.effects.push(Effect::Bell);
    }
}

fn insert_hold(state: &mut State, hold: Hold) {
    // Oldest first; equal times keep arrival order.
    let at = state.holds.partition_point(|h| h.ts <= hold.ts);
    state.holds.insert(at, hold);
}

fn clamp_holds_selection(state: &mut State) {
    let len = state.holds.len();
    state.holds_view.selected = state.holds_view.selected.min(len.saturating_sub(1));
    if let Some(id) = &state.holds_view.detail
        && !state.is_held(id)
        && state.history.find(id).is_none()
    {
        state.holds_view.detail = None;
    }
}

fn sanitize_info(i: GatewayInfo) -> GatewayInfo {
    GatewayInfo {
        id: terminal_string(i.id),
        version: terminal_string(i.version),
        grant: terminal_string(i.grant),
        server: terminal_string(i.server),
        policy: terminal_string(i.policy),
        ..i
    }
}

fn sanitize_counter(c: CounterState) -> CounterState {
    CounterState {
        counter: terminal_string(c.counter),
        scope: terminal_string(c.scope),
        key: terminal_string(c.key),
        ..c
    }
}

fn sanitize_tool(t: ToolInfo) -> ToolInfo {
    ToolInfo {
        name: terminal_string(t.name),
        description: t.description.map(terminal_string),
        ..t
    }
}

/// The first 6 characters of a policy hash, as shown.
pub fn short_hash(hash: &str) -> &str {
    let end = hash.char_indices().nth(6).map_or(hash.len(), |(i, _)| i);
    &hash[..end]
}

/// Carries out one operator action.
pub fn apply(state: &mut State, action: Action) {
    // A suggestion waiting for its second `s` is forgotten once the operator does anything
    // else, so a later `s` never replaces a rule on the strength of an old warning.
    if action != Action::SuggestRule {
        state.authoring.suggest_armed = None;
    }
    match action {
        Action::ShowView(v) => {
            state.view = v;
            state.help = false;
        }
        Action::NextView => state.view = state.view.step(1),
        Action::PrevView => state.view = state.view.step(-1),
        Action::ToggleHelp => state.help = !state.help,
        Action::OpenCommandLine => state.prompt = Prompt::Command(Input::default()),
        Action::Quit => {
            if state.holds.is_empty() {
                state.quit = true;
            } else {
                state.prompt = Prompt::ConfirmQuit;
            }
        }
        Action::ForceQuit => state.quit = true,
        Action::Back => back(state),
        Action::SelectUp => move_selection(state, -1),
        Action::SelectDown => move_selection(state, 1),
        Action::PageUp => {
            let page = state.live.page.get().max(1) as isize;
            move_selection(state, -page)
        }
        Action::PageDown => {
            let page = state.live.page.get().max(1) as isize;
            move_selection(state, page)
        }
        Action::SelectFirst => match state.view {
            View::Live => {
                state.live.selected = state.live_pos(0);
            }
            View::Holds => state.holds_view.selected = 0,
            View::Policy => state.authoring.selected = 0,
            View::Limits => state.authoring.limits_selected = 0,
        },
        Action::Follow => {
            if state.view == View::Live {
                state.live.selected = None;
            }
        }
        Action::OpenFilter => {
            state.view = View::Live;
            let text = state.live.filter.source.clone();
            let cursor = text.chars().count();
            state.prompt = Prompt::Filter(Input::new(text).with_cursor(cursor));
        }
        Action::ClearFilter => set_filter(state, ""),
        Action::OpenDetail => {
            let id = state.selected_call().map(|c| c.call_id.clone());
            match state.view {
                View::Live => {
                    state.live.detail = id;
                    state.live.detail_scroll = 0;
                    // Looking at a call pins it: new arrivals must not change what is shown.
                    if state.live.selected.is_none() {
                        state.live.selected =
                            state.live_selected_index().and_then(|i| state.live_pos(i));
                    }
                }
                View::Holds => {
                    state.holds_view.detail = id;
                    state.holds_view.detail_scroll = 0;
                }
                _ => {}
            }
        }
        Action::Approve => {
            if let Some(call_id) = selected_hold(state) {
                send_resolution(state, &call_id, true, None);
            }
        }
        Action::Deny => {
            if let Some(call_id) = selected_hold(state) {
                state.prompt = Prompt::DenyReason {
                    call_id,
                    input: Input::default(),
                };
            }
        }
        Action::Edit(req) if state.authoring.editor.is_some() && state.prompt_is_none() => {
            authoring::with_editor(state, |e| e.type_text(req));
        }
        Action::Edit(req) => {
            let filter_changed = match &mut state.prompt {
                Prompt::Filter(input) => {
                    input.handle(req);
                    Some(input.value().to_owned())
                }
                Prompt::Command(input)
                | Prompt::DenyReason { input, .. }
                | Prompt::Rate { input, .. }
                | Prompt::CounterEdit { input, .. } => {
                    input.handle(req);
                    None
                }
                _ => None,
            };
            if let Some(text) = filter_changed {
                set_filter(state, &text);
            }
        }
        Action::Submit => submit(state),
        Action::Confirm => match state.prompt {
            Prompt::ConfirmQuit => state.quit = true,
            Prompt::ConfirmWrite => authoring::confirm(state),
            _ => {}
        },
        Action::Cancel => match state.prompt {
            Prompt::ConfirmQuit => state.prompt = Prompt::None,
            Prompt::ConfirmWrite => authoring::cancel(state),
            _ => {}
        },
        Action::LimitTool => {
            if let Some(tool) = acted_on_tool(state) {
                state.prompt = Prompt::Rate {
                    tool,
                    input: Input::default(),
                };
            }
        }
        Action::BlockTool => {
            if let Some(tool) = acted_on_tool(state) {
                authoring::edit_and_review(state, &Edit::Deny(tool, None));
            }
        }
        Action::ApproveAndAllow => {
            if let Some(call_id) = selected_hold(state) {
                let tool = acted_on_tool(state);
                send_resolution(state, &call_id, true, None);
                if let Some(tool) = tool {
                    authoring::edit_and_review(state, &Edit::Allow(tool));
                }
            }
        }
        Action::AllowTool | Action::DenyTool | Action::HoldTool | Action::UnlimitTool => {
            if let Some(tool) = authoring::selected_tool(state) {
                let edit = match action {
                    Action::AllowTool => Edit::Allow(tool),
                    Action::DenyTool => Edit::Deny(tool, None),
                    Action::HoldTool => Edit::Hold(tool),
                    _ => Edit::Unlimit(tool),
                };
                authoring::edit(state, &edit);
            }
        }
        Action::SuggestRule => authoring::suggest(state),
        Action::ReviewWrite => authoring::review(state, false),
        Action::OpenRuleEditor => authoring::open_editor(state),
        Action::EditorNext => authoring::with_editor(state, |e| {
            e.move_focus(1);
            false
        }),
        Action::EditorPrev => authoring::with_editor(state, |e| {
            e.move_focus(-1);
            false
        }),
        Action::EditorChoose(by) => authoring::with_editor(state, |e| e.choose(by as isize)),
        Action::EditorEnter => authoring::with_editor(state, |e| match e.focused() {
            super::editor::Field::AddLimit => {
                e.add_limit();
                true
            }
            super::editor::Field::AddCondition => {
                e.add_condition();
                true
            }
            _ => {
                e.move_focus(1);
                false
            }
        }),
        Action::EditorAddLimit => authoring::with_editor(state, |e| {
            e.add_limit();
            true
        }),
        Action::EditorAddCondition => authoring::with_editor(state, |e| {
            e.add_condition();
            true
        }),
        Action::EditorRemove => authoring::with_editor(state, |e| e.remove_focused()),
        Action::EditorCompletePath => authoring::with_editor(state, |e| e.complete_path()),
        Action::EditorSave => authoring::save_editor(state),
        Action::EditCounterMax | Action::EditCounterWindow => {
            let max = action == Action::EditCounterMax;
            let rows = super::view::limit_rows(state);
            if let Some(row) = rows.get(state.authoring.limits_selected) {
                let text = if max {
                    row.max.to_string()
                } else {
                    crate::policy::window_words(row.window_ms)
                        .replace(' ', "")
                        .replace("seconds", "s")
                        .replace("minutes", "m")
                        .replace("hours", "h")
                        .replace("days", "d")
                };
                let cursor = text.chars().count();
                state.prompt = Prompt::CounterEdit {
                    counter: row.counter.clone(),
                    max,
                    input: Input::new(text).with_cursor(cursor),
                };
            }
        }
        Action::SetTheme(name) => state.effects.push(Effect::LoadTheme(name)),
        Action::ScrollDetail(by) => {
            if let (Prompt::ConfirmWrite, Some(r)) = (&state.prompt, &mut state.authoring.review) {
                r.scroll = r.scroll.saturating_add_signed(by);
                return;
            }
            let scroll = match state.view {
                View::Live => &mut state.live.detail_scroll,
                View::Holds => &mut state.holds_view.detail_scroll,
                _ => return,
            };
            *scroll = scroll.saturating_add_signed(by);
        }
    }
}

/// The held call the current view points at, if it is held now.
fn selected_hold(state: &State) -> Option<String> {
    let call = state.selected_call()?;
    state.is_held(&call.call_id).then(|| call.call_id.clone())
}

fn back(state: &mut State) {
    match std::mem::take(&mut state.prompt) {
        Prompt::None => {}
        // Esc on the filter line keeps the filter typed so far; `ClearFilter` removes it.
        Prompt::Filter(_)
        | Prompt::Command(_)
        | Prompt::DenyReason { .. }
        | Prompt::Rate { .. }
        | Prompt::CounterEdit { .. }
        | Prompt::ConfirmQuit => return,
        Prompt::ConfirmWrite => {
            state.prompt = Prompt::ConfirmWrite;
            authoring::cancel(state);
            return;
        }
    }
    if state.help {
        state.help = false;
    } else if state.authoring.editor.is_some() {
        state.authoring.editor = None;
        state.say("rule editor closed; the draft keeps only what was saved (C-s)");
    } else if state.view == View::Live && state.live.detail.is_some() {
        state.live.detail = None;
    } else if state.view == View::Holds && state.holds_view.detail.is_some() {
        state.holds_view.detail = None;
    } else if state.view == View::Live && !state.live.filter.is_empty() {
        set_filter(state, "");
    } else if state.view == View::Live && state.live.selected.is_some() {
        state.live.selected = None;
    }
}

fn move_selection(state: &mut State, by: isize) {
    match state.view {
        View::Live => {
            let Some(cur) = state.live_selected_index() else {
                return;
            };
            let len = state.live_len();
            let next = (cur as isize + by).clamp(0, len as isize - 1) as usize;
            // Moving down onto the newest row keeps the pause: only F/End resumes following.
            state.live.selected = state.live_pos(next);
            if state.live.detail.is_some() {
                state.live.detail = state.selected_call().map(|c| c.call_id.clone());
                state.live.detail_scroll = 0;
            }
        }
        View::Holds => {
            let len = state.holds.len();
            if len == 0 {
                return;
            }
            let cur = state.holds_view.selected as isize;
            state.holds_view.selected = (cur + by).clamp(0, len as isize - 1) as usize;
            if state.holds_view.detail.is_some() {
                state.holds_view.detail = state.selected_call().map(|c| c.call_id.clone());
            }
        }
        View::Policy => {
            let len = super::view::policy_rows(state).len();
            let cur = state.authoring.selected as isize;
            state.authoring.selected = (cur + by).clamp(0, (len as isize - 1).max(0)) as usize;
        }
        View::Limits => {
            let len = super::view::limit_rows(state).len();
            let cur = state.authoring.limits_selected as isize;
            state.authoring.limits_selected =
                (cur + by).clamp(0, (len as isize - 1).max(0)) as usize;
        }
    }
}

/// The tool an action from a call view (or the Policy view) is about.
fn acted_on_tool(state: &mut State) -> Option<String> {
    let tool = match state.view {
        View::Policy => authoring::selected_tool(state),
        _ => state.selected_call().map(|c| c.tool.clone()),
    }?;
    // Names are sanitised on arrival: one with control characters is shown escaped, and a
    // rule written for the escaped form would not match the real tool.
    if tool.contains('\\') {
        state.complain(
            "this tool's name has control characters; write its rule in the file by hand",
        );
        return None;
    }
    Some(tool)
}

/// Sets the Live filter and recomputes its matches.
pub fn set_filter(state: &mut State, text: &str) {
    let filter = Filter::parse(text);
    let mut matches = Vec::new();
    if !filter.is_empty() {
        let mut matcher = Matcher::new(&filter, &state.history.strings);
        for (pos, row) in state.history.iter() {
            let label = state.gateways.get(row.conn).map_or("", Gateway::label);
            if matcher.matches(row, label) {
                matches.push(pos);
            }
        }
    }
    state.live.filter = filter;
    state.live.filtered = matches;
    state.live.top.set(0);
}

fn submit(state: &mut State) {
    match std::mem::take(&mut state.prompt) {
        Prompt::None | Prompt::ConfirmQuit => {}
        Prompt::ConfirmWrite => state.prompt = Prompt::ConfirmWrite,
        Prompt::Filter(input) => set_filter(state, input.value()),
        Prompt::Rate { tool, input } => match super::draft::parse_rate(input.value()) {
            Ok((max, window)) => authoring::edit_and_review(
                state,
                &Edit::Limit {
                    tool,
                    max,
                    window,
                    scope: None,
                },
            ),
            Err(e) => {
                state.complain(e.to_string());
                state.prompt = Prompt::Rate { tool, input };
            }
        },
        Prompt::CounterEdit {
            counter,
            max,
            input,
        } => {
            let edit = if max {
                match input.value().trim().parse::<u64>() {
                    Ok(m) => Ok(Edit::SetCounter {
                        counter: counter.clone(),
                        max: Some(m),
                        window: None,
                    }),
                    Err(_) => Err("max is a whole number >= 1".to_string()),
                }
            } else {
                match super::draft::parse_window(input.value()) {
                    Some(w) => Ok(Edit::SetCounter {
                        counter: counter.clone(),
                        max: None,
                        window: Some(w),
                    }),
                    None => Err("a window: minute, 90s, 10m, 1h, 3600…".to_string()),
                }
            };
            match edit {
                Ok(e) => authoring::edit_and_review(state, &e),
                Err(e) => {
                    state.complain(e);
                    state.prompt = Prompt::CounterEdit {
                        counter,
                        max,
                        input,
                    };
                }
            }
        }
        Prompt::DenyReason { call_id, input } => {
            let reason = input.value().trim();
            let reason = (!reason.is_empty()).then(|| reason.to_owned());
            send_resolution(state, &call_id, false, reason);
        }
        Prompt::Command(input) => run_command(state, input.value()),
    }
}

/// The `:` commands.
pub const COMMANDS: &[(&str, &str)] = &[
    (
        ":theme NAME",
        "switch theme (dark, light, high-contrast, or yours)",
    ),
    (":approve ID", "approve a held call"),
    (":deny ID [REASON]", "deny a held call"),
    (":filter TEXT", "filter the Live view"),
    (
        ":allow TOOL  :hold TOOL",
        "draft: allow the tool / hold its calls for approval",
    ),
    (
        ":deny TOOL [REASON]",
        "draft: deny the tool (when TOOL is not a held call id)",
    ),
    (
        ":limit TOOL MAX/WINDOW [SCOPE]",
        "draft: limit the tool, e.g. :limit echo 2/minute",
    ),
    (
        ":unlimit TOOL  :hide TOOL",
        "draft: drop the tool's limits / hide the tool",
    ),
    (
        ":default allow|deny|require_approval",
        "draft: the decision no rule makes",
    ),
    (
        ":w  :w!  :undo  :reload",
        "write (diff, y/n; ! over a changed file), undo, reload",
    ),
    (":live :holds :policy :limits", "switch view"),
    (":q  :q!", "quit (:q! without asking)"),
];

fn run_command(state: &mut State, line: &str) {
    let mut words = line.split_whitespace();
    let Some(cmd) = words.next() else { return };
    let rest: Vec<&str> = words.collect();
    match (cmd, rest.as_slice()) {
        ("q" | "quit", []) => apply(state, Action::Quit),
        ("q!" | "quit!", []) => apply(state, Action::ForceQuit),
        ("theme", [name]) => apply(state, Action::SetTheme((*name).to_owned())),
        ("theme", _) => state.complain(":theme takes one name: dark, light, high-contrast"),
        ("approve", [id]) => {
            if state.is_held(id) {
                send_resolution(state, id, true, None);
            } else {
                state.complain(format!("no held call {}", terminal_text(id)));
            }
        }
        ("deny", [id, reason @ ..]) if state.is_held(id) => {
            let reason = (!reason.is_empty()).then(|| reason.join(" "));
            send_resolution(state, id, false, reason);
        }
        ("filter", words) => {
            state.view = View::Live;
            set_filter(state, &words.join(" "));
        }
        ("live", []) => apply(state, Action::ShowView(View::Live)),
        ("holds", []) => apply(state, Action::ShowView(View::Holds)),
        ("policy", []) => apply(state, Action::ShowView(View::Policy)),
        ("limits", []) => apply(state, Action::ShowView(View::Limits)),
        ("help", []) => state.help = true,
        ("w" | "write", []) => authoring::review(state, false),
        ("w!" | "write!", []) => authoring::review(state, true),
        ("undo", []) => authoring::undo(state),
        ("reload", []) => authoring::reload(state),
        (cmd, args) if Edit::from_command(cmd, args).is_some() => {
            match Edit::from_command(cmd, args) {
                Some(Ok(edit)) => {
                    authoring::edit(state, &edit);
                }
                Some(Err(usage)) => state.complain(usage.to_string()),
                None => {}
            }
        }
        _ => state.complain(format!(
            "unknown command ':{}' (try :limit TOOL 30/minute, :deny TOOL, :w, :theme NAME, :q; ? lists them)",
            terminal_text(line.trim())
        )),
    }
}

/// Sends an approval or denial to the gateway that holds `call_id`.
fn send_resolution(state: &mut State, call_id: &str, approve: bool, reason: Option<String>) {
    let Some(hold) = state.holds.iter().find(|h| h.call.call_id == call_id) else {
        state.complain(format!("{} is no longer held", terminal_text(call_id)));
        return;
    };
    let gateway = state.gateways[hold.conn].key.clone();
    let id = state.next_command_id;
    state.next_command_id += 1;
    let operator = state.operator.clone();
    let msg = if approve {
        ClientMsg::Approve {
            id,
            call_id: call_id.to_owned(),
            operator,
        }
    } else {
        ClientMsg::Deny {
            id,
            call_id: call_id.to_owned(),
            reason,
            operator,
        }
    };
    state.pending.insert(
        id,
        Pending {
            gateway: gateway.clone(),
            call_id: call_id.to_owned(),
            approve,
        },
    );
    state.say(format!(
        "{} {call_id}…",
        if approve { "approving" } else { "denying" }
    ));
    state.effects.push(Effect::Send { gateway, msg });
}

/// What a call's decision cell says: a symbol and a word, so it reads without colour.
pub fn decision_label(row: &CallRow, now: DateTime<Utc>, held: bool) -> (String, DecisionStyle) {
    match row.call.decision {
        Verdict::Allow => ("✓ allow".into(), DecisionStyle::Allow),
        Verdict::Deny => ("✗ deny".into(), DecisionStyle::Deny),
        Verdict::RateLimited => ("⏱ rate limited".into(), DecisionStyle::RateLimited),
        Verdict::Hold => match &row.resolution {
            Some(r) if r.approved => ("✓ approved".into(), DecisionStyle::Allow),
            Some(r) => (
                match r.by {
                    ResolvedBy::Operator => "✗ rejected",
                    ResolvedBy::Timeout => "✗ timed out",
                    ResolvedBy::Cancellation => "✗ cancelled",
                    ResolvedBy::Shutdown => "✗ shut down",
                }
                .into(),
                DecisionStyle::Deny,
            ),
            None if held => (
                format!("⏸ held {}", countdown(row.call.hold_deadline, now)),
                DecisionStyle::Hold,
            ),
            None => ("⏸ hold".into(), DecisionStyle::Hold),
        },
    }
}

/// Which theme slot a decision is drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionStyle {
    Allow,
    Deny,
    RateLimited,
    Hold,
}

/// `m:ss` until `deadline`, `0:00` once past, `—` without one.
pub fn countdown(deadline: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match deadline {
        None => "—".into(),
        Some(d) => {
            let secs = (d - now).num_seconds().max(0);
            format!("{}:{:02}", secs / 60, secs % 60)
        }
    }
}

/// A latency for people: `38 ms`, `1.2 s`.
pub fn latency_label(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 10_000_000 {
        if us < 1_000_000 {
            format!("{} ms", us / 1_000)
        } else {
            format!("{:.1} s", us as f64 / 1e6)
        }
    } else {
        format!("{} s", us / 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{CallRecord, HoldResolved, Outcome, PROTOCOL_VERSION, Reply, Snapshot};

    fn t0() -> DateTime<Utc> {
        "2026-11-26T12:00:00Z".parse().unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        t0() + chrono::TimeDelta::seconds(secs)
    }

    fn state() -> State {
        State::new(t0(), Theme::plain("test"), 1000)
    }

    fn call(id: &str, tool: &str, decision: Verdict) -> CallEvent {
        CallEvent {
            call_id: id.into(),
            tool: tool.into(),
            grant: "ci".into(),
            session: "s1".into(),
            server: "meet".into(),
            decision,
            rule: format!("/tools/{tool}"),
            reason: String::new(),
            args: serde_json::json!({"name": "x"}),
            args_truncated: false,
            retry_after_ms: None,
            hold_deadline: (decision == Verdict::Hold).then(|| at(120)),
        }
    }

    fn ev(seq: u64, ts: DateTime<Utc>, kind: EventKind) -> AppEvent {
        AppEvent::Net {
            gateway: "gw1".into(),
            event: Event {
                seq,
                ts,
                gateway: "gw1".into(),
                kind,
            },
        }
    }

    /// A `call` event with sequence number `seq`, stamped `ts`, arriving at `now`.
    fn arrive(s: &mut State, seq: u64, ts: DateTime<Utc>, c: CallEvent, now: DateTime<Utc>) {
        update(s, ev(seq, ts, EventKind::Call(c)), now);
    }

    fn hello(calls: Vec<CallRecord>, holds: Vec<&str>) -> EventKind {
        EventKind::Hello(Box::new(Hello {
            protocol: PROTOCOL_VERSION,
            info: GatewayInfo {
                id: "gw1".into(),
                pid: 1,
                version: "0.1.0".into(),
                grant: "ci".into(),
                server: "meet".into(),
                policy: "/p/policy.json".into(),
                started_at: t0(),
            },
            snapshot: Snapshot {
                calls,
                holds: holds.into_iter().map(String::from).collect(),
                policy_hash: Some("3f9a21deadbeef".into()),
                totals: Totals {
                    allow: 10,
                    ..Totals::default()
                },
                upstream_up: true,
                ..Snapshot::default()
            },
        }))
    }

    fn key(c: char) -> AppEvent {
        AppEvent::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
    }

    fn code(k: KeyCode) -> AppEvent {
        AppEvent::Key(KeyEvent::new(k, KeyModifiers::NONE))
    }

    #[test]
    fn a_call_is_remembered_counted_and_rated() {
        let mut s = state();
        arrive(
            &mut s,
            1,
            at(1),
            call("gw1-1", "list", Verdict::Allow),
            at(1),
        );
        arrive(
            &mut s,
            2,
            at(2),
            call("gw1-2", "drop", Verdict::Deny),
            at(2),
        );
        assert_eq!(s.history.len(), 2);
        assert_eq!(s.totals().allow, 1);
        assert_eq!(s.totals().deny, 1);
        assert_eq!(s.rate.per_minute(at(30)), 2);
        assert_eq!(s.rate.per_minute(at(90)), 0);
    }

    #[test]
    fn a_new_hold_rings_once_and_is_listed_oldest_first() {
        let mut s = state();
        arrive(
            &mut s,
            1,
            at(5),
            call("gw1-2", "send", Verdict::Hold),
            at(5),
        );
        arrive(&mut s, 2, at(3), call("gw1-1", "pay", Verdict::Hold), at(5));
        assert_eq!(s.effects.iter().filter(|e| **e == Effect::Bell).count(), 2);
        let ids: Vec<&str> = s.holds.iter().map(|h| h.call.call_id.as_str()).collect();
        assert_eq!(ids, ["gw1-1", "gw1-2"]);
        assert_eq!(s.holds_view.selected, 0, "selection starts on the oldest");
    }

    #[test]
    fn approving_sends_to_the_gateway_holding_the_call_and_shows_the_reply() {
        let mut s = state();
        arrive(&mut s, 1, at(1), call("gw1-1", "pay", Verdict::Hold), at(1));
        s.effects.clear();
        update(&mut s, key('2'), at(2));
        update(&mut s, key('a'), at(2));
        let [Effect::Send { gateway, msg }] = s.effects.as_slice() else {
            panic!("expected one send, got {:?}", s.effects);
        };
        assert_eq!(gateway, "gw1");
        let ClientMsg::Approve { id, call_id, .. } = msg else {
            panic!("expected approve, got {msg:?}");
        };
        assert_eq!(call_id, "gw1-1");
        let id = *id;
        update(
            &mut s,
            ev(
                2,
                at(3),
                EventKind::Reply(Reply {
                    id,
                    ok: false,
                    error: Some("already resolved".into()),
                }),
            ),
            at(3),
        );
        let m = s.message.clone().unwrap();
        assert!(m.error && m.text.contains("already resolved"), "{m:?}");
    }

    #[test]
    fn denying_asks_for_a_reason_and_sends_it() {
        let mut s = state();
        arrive(&mut s, 1, at(1), call("gw1-1", "pay", Verdict::Hold), at(1));
        s.effects.clear();
        update(&mut s, key('2'), at(2));
        update(&mut s, key('d'), at(2));
        assert!(matches!(s.prompt, Prompt::DenyReason { .. }));
        for c in "too much".chars() {
            update(&mut s, key(c), at(2));
        }
        update(&mut s, code(KeyCode::Enter), at(2));
        assert!(matches!(
            s.effects.as_slice(),
            [Effect::Send { msg: ClientMsg::Deny { reason: Some(r), .. }, .. }] if r == "too much"
        ));
    }

    #[test]
    fn a_resolution_removes_the_hold_and_marks_the_call() {
        let mut s = state();
        arrive(&mut s, 1, at(1), call("gw1-1", "pay", Verdict::Hold), at(1));
        let r = HoldResolved {
            call_id: "gw1-1".into(),
            approved: false,
            by: ResolvedBy::Timeout,
            operator: None,
            reason: None,
        };
        update(&mut s, ev(2, at(2), EventKind::HoldResolved(r)), at(2));
        assert!(s.holds.is_empty());
        let row = s.history.find("gw1-1").unwrap();
        let (label, _) = decision_label(row, at(2), false);
        assert_eq!(label, "✗ timed out");
    }

    #[test]
    fn scrolling_up_pauses_following_and_f_resumes() {
        let mut s = state();
        for i in 0..5 {
            let id = format!("gw1-{i}");
            update(
                &mut s,
                ev(i, at(1), EventKind::Call(call(&id, "t", Verdict::Allow))),
                at(1),
            );
        }
        assert!(s.following());
        update(&mut s, code(KeyCode::Up), at(2));
        assert!(!s.following());
        assert_eq!(s.live_selected_index(), Some(3));
        arrive(&mut s, 9, at(3), call("gw1-9", "t", Verdict::Allow), at(3));
        assert_eq!(
            s.live_selected_index(),
            Some(3),
            "a paused view keeps its row"
        );
        update(&mut s, key('F'), at(3));
        assert!(s.following());
        assert_eq!(s.live_selected_index(), Some(5));
    }

    #[test]
    fn the_filter_narrows_live_and_keeps_up_with_new_calls() {
        let mut s = state();
        arrive(
            &mut s,
            1,
            at(1),
            call("gw1-1", "create_api_key", Verdict::Allow),
            at(1),
        );
        arrive(
            &mut s,
            2,
            at(1),
            call("gw1-2", "delete_account", Verdict::Deny),
            at(1),
        );
        update(&mut s, key('/'), at(1));
        for c in "tool:create_*".chars() {
            update(&mut s, key(c), at(1));
        }
        update(&mut s, code(KeyCode::Enter), at(1));
        assert_eq!(s.live_len(), 1);
        arrive(
            &mut s,
            3,
            at(2),
            call("gw1-3", "create_meeting", Verdict::Allow),
            at(2),
        );
        arrive(
            &mut s,
            4,
            at(2),
            call("gw1-4", "list", Verdict::Allow),
            at(2),
        );
        assert_eq!(s.live_len(), 2);
        update(&mut s, code(KeyCode::Esc), at(2));
        assert_eq!(s.live_len(), 4, "Esc clears the filter");
    }

    #[test]
    fn a_call_first_seen_in_a_snapshot_keeps_the_time_it_was_decided() {
        let mut s = state();
        let records = vec![
            CallRecord {
                ts: Some(at(3)),
                call: call("gw1-7", "list", Verdict::Allow),
                resolution: None,
                outcome: None,
            },
            CallRecord {
                ts: None,
                call: call("gw1-8", "list", Verdict::Allow),
                resolution: None,
                outcome: None,
            },
        ];
        update(&mut s, ev(9, at(10), hello(records, vec![])), at(10));
        assert_eq!(s.history.find("gw1-7").unwrap().ts, at(3));
        assert_eq!(
            s.history.find("gw1-8").unwrap().ts,
            at(10),
            "without a time, the snapshot's arrival"
        );
    }

    #[test]
    fn a_reconnect_resumes_from_the_snapshot_without_duplicates() {
        let mut s = state();
        arrive(&mut s, 1, at(1), call("gw1-1", "pay", Verdict::Hold), at(1));
        arrive(
            &mut s,
            2,
            at(1),
            call("gw1-2", "list", Verdict::Allow),
            at(1),
        );
        s.effects.clear();
        // While away: gw1-1 was resolved, gw1-3 arrived and is held.
        let records = vec![
            CallRecord {
                ts: None,
                call: call("gw1-1", "pay", Verdict::Hold),
                resolution: Some(HoldResolved {
                    call_id: "gw1-1".into(),
                    approved: true,
                    by: ResolvedBy::Operator,
                    operator: Some("ann".into()),
                    reason: None,
                }),
                outcome: Some(Outcome {
                    call_id: "gw1-1".into(),
                    latency_us: 5000,
                    error: false,
                    summary: None,
                }),
            },
            CallRecord {
                ts: None,
                call: call("gw1-2", "list", Verdict::Allow),
                resolution: None,
                outcome: None,
            },
            CallRecord {
                ts: None,
                call: call("gw1-3", "send", Verdict::Hold),
                resolution: None,
                outcome: None,
            },
        ];
        update(&mut s, ev(9, at(10), hello(records, vec!["gw1-3"])), at(10));
        assert_eq!(s.history.len(), 3);
        let held: Vec<&str> = s.holds.iter().map(|h| h.call.call_id.as_str()).collect();
        assert_eq!(held, ["gw1-3"]);
        assert!(
            s.history
                .find("gw1-1")
                .unwrap()
                .resolution
                .as_ref()
                .unwrap()
                .approved
        );
        assert_eq!(s.totals().allow, 10, "totals come from the snapshot");
        assert_eq!(
            s.effects
                .iter()
                .filter(|e| matches!(e, Effect::Bell))
                .count(),
            1,
            "the hold we did not know rings"
        );
        assert_eq!(s.gateways[0].policy_hash.as_deref(), Some("3f9a21deadbeef"));
    }

    #[test]
    fn quitting_asks_first_when_calls_are_held() {
        let mut s = state();
        update(&mut s, key('q'), at(1));
        assert!(s.quit, "nothing held: quits at once");
        let mut s = state();
        arrive(&mut s, 1, at(1), call("gw1-1", "pay", Verdict::Hold), at(1));
        update(&mut s, key('q'), at(1));
        assert!(!s.quit);
        assert!(matches!(s.prompt, Prompt::ConfirmQuit));
        update(&mut s, key('n'), at(1));
        assert!(!s.quit && matches!(s.prompt, Prompt::None));
        update(&mut s, key('q'), at(1));
        update(&mut s, key('y'), at(1));
        assert!(s.quit);
    }

    #[test]
    fn approve_keys_do_nothing_on_a_call_that_is_not_held() {
        let mut s = state();
        arrive(
            &mut s,
            1,
            at(1),
            call("gw1-1", "list", Verdict::Allow),
            at(1),
        );
        update(&mut s, code(KeyCode::Up), at(1));
        update(&mut s, key('a'), at(1));
        assert!(s.effects.is_empty());
    }

    #[test]
    fn commands_switch_theme_and_refuse_unknown_ones() {
        let mut s = state();
        for c in ":theme light".chars() {
            update(&mut s, key(c), at(1));
        }
        update(&mut s, code(KeyCode::Enter), at(1));
        assert_eq!(s.effects, vec![Effect::LoadTheme("light".into())]);
        for c in ":frobnicate".chars() {
            update(&mut s, key(c), at(1));
        }
        update(&mut s, code(KeyCode::Enter), at(1));
        assert!(
            s.message
                .as_ref()
                .is_some_and(|m| m.error && m.text.contains("unknown command"))
        );
    }

    #[test]
    fn esc_run_together_with_a_key_is_esc_then_the_key() {
        let mut s = state();
        arrive(
            &mut s,
            1,
            at(1),
            call("gw1-1", "list", Verdict::Allow),
            at(1),
        );
        update(&mut s, code(KeyCode::Up), at(1));
        update(&mut s, key('/'), at(1));
        let alt_q = AppEvent::Key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::ALT));
        update(&mut s, alt_q, at(1));
        assert!(matches!(s.prompt, Prompt::None));
        assert!(s.quit, "Esc closed the filter line, then q quit");
    }

    #[test]
    fn an_audit_log_outage_and_its_recovery_show_under_the_view() {
        let mut s = state();
        update(&mut s, ev(1, at(0), hello(Vec::new(), Vec::new())), at(0));
        let status = |ok: bool, detail: &str| {
            EventKind::Audit(crate::wire::AuditStatus {
                path: "/s/audit.jsonl".into(),
                ok,
                detail: Some(detail.into()),
            })
        };
        let down = status(false, "No space left on device; tool calls are denied");
        update(&mut s, ev(2, at(1), down), at(1));
        let message = s.message.as_ref().expect("a message");
        assert!(message.error);
        assert!(
            message
                .text
                .contains("audit log /s/audit.jsonl cannot be written")
                && message.text.contains("tool calls are denied"),
            "{}",
            message.text
        );
        update(
            &mut s,
            ev(3, at(2), status(true, "records are written again")),
            at(2),
        );
        let message = s.message.as_ref().expect("a message");
        assert!(!message.error);
        assert!(message.text.contains("written again"), "{}", message.text);
    }

    #[test]
    fn messages_expire() {
        let mut s = state();
        s.say("hello");
        update(&mut s, AppEvent::Tick, at(5));
        assert!(s.message.is_some());
        update(&mut s, AppEvent::Tick, at(20));
        assert!(s.message.is_none());
    }

    #[test]
    fn countdown_and_latency_read_like_a_person_wrote_them() {
        assert_eq!(countdown(Some(at(114)), t0()), "1:54");
        assert_eq!(countdown(Some(at(-3)), t0()), "0:00");
        assert_eq!(latency_label(38_000), "38 ms");
        assert_eq!(latency_label(1_250_000), "1.2 s");
        assert_eq!(latency_label(900), "900 µs");
    }

    #[test]
    fn a_refused_session_burst_is_shown_with_its_grant_count_and_cap() {
        let mut s = state();
        let refused = crate::wire::SessionRefused {
            grant: "flood\x1b[2J".into(),
            server: "time".into(),
            cap: crate::wire::SessionCap::Grant,
            max: 16,
            refused: 37,
        };
        update(
            &mut s,
            ev(1, at(1), EventKind::SessionRefused(refused)),
            at(1),
        );
        let m = s.message.clone().unwrap();
        assert!(m.error, "{m:?}");
        assert!(m.text.contains("37 MCP session(s)"), "{m:?}");
        assert!(m.text.contains("--max-sessions-per-grant"), "{m:?}");
        assert!(!m.text.contains('\x1b'), "{m:?}");
    }
}
