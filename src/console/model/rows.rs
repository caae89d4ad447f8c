//! Rows derived from the model for the Policy and Limits views, and for the keys that act on
//! the selected row.
//!
//! The Policy view's rows depend on the draft and the offered tools only, so they are worked
//! out when either changes (the [`Derived`] cache, keyed by the draft's revision and the
//! tools' revision) rather than on every frame and every key. The Limits view's rows count
//! down with the clock, so they are built when asked, in one pass.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use super::draft::RuleRow;
use super::{SeenCounter, State};
use crate::policy::RuleMatch;
use crate::scan::Classification;

/// One row of the Policy view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    /// The tool name (or glob) actions on this row edit.
    pub tool: String,
    pub kind: RowKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowKind {
    /// An entry of `tools`; `unmatched` when tools are known and none of them falls under it.
    Rule { rule: RuleRow, unmatched: bool },
    /// An offered tool no rule names: the default decides.
    Unruled { default: String },
    /// An offered tool `hide` removes.
    Hidden { pointer: String },
}

/// Every tool the connected gateways' upstream servers offer, by name.
pub(super) fn offered_tools(state: &State) -> BTreeSet<String> {
    state
        .gateways
        .iter()
        .flat_map(|g| g.tools.iter().map(|t| t.info.name.clone()))
        .collect()
}

/// The risk class and flags of the offered tool `name` (from the first gateway offering it),
/// as classified when its tools arrived.
pub fn tool_class<'a>(state: &'a State, name: &str) -> Option<&'a Classification> {
    state.gateways.iter().find_map(|g| g.class_of(name))
}

/// The rows of the Policy view: the rules in file order, then the offered tools without one.
fn policy_rows(state: &State) -> Vec<PolicyRow> {
    let Some(draft) = &state.authoring.draft else {
        return Vec::new();
    };
    let offered = offered_tools(state);
    let policy = draft.compiled().ok();
    // Which rule keys some offered tool falls under.
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut rest = Vec::new();
    for tool in &offered {
        match policy.map(|p| p.rule_match(tool)) {
            Some(RuleMatch::Exact { .. }) => {
                used.insert(tool.clone());
            }
            Some(RuleMatch::Glob { pattern, .. }) => {
                used.insert(pattern);
            }
            Some(RuleMatch::Hidden { pointer, .. }) => {
                used.insert(tool.clone());
                rest.push(PolicyRow {
                    tool: tool.clone(),
                    kind: RowKind::Hidden { pointer },
                });
            }
            Some(RuleMatch::Default { action }) => rest.push(PolicyRow {
                tool: tool.clone(),
                kind: RowKind::Unruled {
                    default: action.as_str().to_owned(),
                },
            }),
            None => {}
        }
    }
    let mut rows: Vec<PolicyRow> = draft
        .rules()
        .into_iter()
        .map(|rule| PolicyRow {
            tool: rule.key.clone(),
            kind: RowKind::Rule {
                unmatched: !offered.is_empty() && !used.contains(&rule.key),
                rule,
            },
        })
        .collect();
    rows.extend(rest);
    rows
}

/// Rows kept between events: rebuilt only when what they are made from changes.
#[derive(Debug, Default)]
pub(crate) struct Derived {
    /// `(draft revision, tools revision)` the rows were made from.
    key: Option<(Option<u64>, u64)>,
    policy_rows: Vec<PolicyRow>,
}

impl State {
    /// What the derived rows are made from, now.
    fn derived_key(&self) -> (Option<u64>, u64) {
        (
            self.authoring.draft.as_ref().map(|d| d.revision()),
            self.tools_revision,
        )
    }

    /// Brings the derived rows up to date with the draft and the tools. The update calls it
    /// after every event, and before it reads the rows itself.
    pub(crate) fn refresh_derived(&mut self) {
        let key = self.derived_key();
        if self.derived.key != Some(key) {
            self.derived.policy_rows = policy_rows(self);
            self.derived.key = Some(key);
        }
    }

    /// The rows of the Policy view: the rules in file order, then the offered tools without
    /// one. Every update ends by bringing the cache up to date, so this is the cached rows;
    /// a state changed by hand since (a test editing the draft directly) gets them built
    /// afresh rather than stale.
    pub fn policy_rows(&self) -> Cow<'_, [PolicyRow]> {
        if self.derived.key == Some(self.derived_key()) {
            Cow::Borrowed(&self.derived.policy_rows)
        } else {
            Cow::Owned(policy_rows(self))
        }
    }
}

/// One row of the Limits view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRow {
    pub counter: String,
    pub scope: String,
    /// The grant or session; empty for global or a counter not in use.
    pub key: String,
    /// `None` for a counter the draft defines that no call has used yet.
    pub used: Option<u64>,
    pub max: u64,
    pub window_ms: u64,
    pub next_free_in_ms: Option<u64>,
    /// The draft's max and window for this counter, when they differ from the gateway's.
    pub draft: Option<(u64, u64)>,
    /// The counter store it is kept in, when the gateways followed count in more than one
    /// (the same budget name in two stores is two budgets).
    pub store: Option<String>,
}

/// The rows of the Limits view: counters in use (from every gateway, once each: the first
/// gateway to report one wins), sorted, then the draft's counters no call has used yet.
pub fn limit_rows(state: &State) -> Vec<LimitRow> {
    let defs = state
        .authoring
        .draft
        .as_ref()
        .and_then(|d| d.compiled().ok())
        .map(|p| p.counters())
        .unwrap_or_default();
    let by_name: HashMap<&str, (u64, u64)> = defs
        .iter()
        .map(|d| (d.name.as_str(), (d.max, d.window_ms)))
        .collect();
    // One budget (store, counter, scope, key) is one row: replicas sharing a counter store
    // (Redis) report the same budget, and the latest report of it is the truest. Gateways
    // that do not say which store they count in (older ones) are taken to share one.
    type Budget<'a> = (Option<&'a str>, &'a str, &'a str, &'a str);
    let mut latest: HashMap<Budget<'_>, &SeenCounter> = HashMap::new();
    let mut stores: BTreeSet<Option<&str>> = BTreeSet::new();
    for (_, g) in state.distinct_gateways() {
        let store = g.counter_store.as_deref();
        stores.insert(store);
        for seen_counter in &g.counters {
            let c = &seen_counter.state;
            let slot = latest
                .entry((store, &c.counter, &c.scope, &c.key))
                .or_insert(seen_counter);
            if seen_counter.at > slot.at {
                *slot = seen_counter;
            }
        }
    }
    let several_stores = stores.len() > 1;
    let mut rows: Vec<LimitRow> = Vec::new();
    {
        for ((store, ..), seen_counter) in latest {
            let c = &seen_counter.state;
            let draft = by_name
                .get(c.counter.as_str())
                .copied()
                .filter(|(m, w)| (*m, *w) != (c.max, c.window_ms));
            rows.push(LimitRow {
                counter: c.counter.clone(),
                scope: c.scope.clone(),
                key: c.key.clone(),
                used: Some(c.used),
                max: c.max,
                window_ms: c.window_ms,
                // Counted from when it was reported, so the time left keeps going down.
                next_free_in_ms: c.next_free_in_ms.map(|ms| {
                    let gone = (state.now - seen_counter.at).num_milliseconds().max(0) as u64;
                    ms.saturating_sub(gone)
                }),
                draft,
                store: store.filter(|_| several_stores).map(str::to_owned),
            });
        }
    }
    rows.sort_by(|a, b| {
        (&a.counter, &a.scope, &a.key, &a.store).cmp(&(&b.counter, &b.scope, &b.key, &b.store))
    });
    let mut in_use: BTreeSet<String> = rows.iter().map(|r| r.counter.clone()).collect();
    for d in defs {
        if !in_use.insert(d.name.clone()) {
            continue;
        }
        rows.push(LimitRow {
            counter: d.name.clone(),
            scope: d.scope.as_str().to_owned(),
            key: String::new(),
            used: None,
            max: d.max,
            window_ms: d.window_ms,
            next_free_in_ms: None,
            draft: None,
            store: None,
        });
    }
    rows
}
