//! The policy language (`policy.json`, format version "1"): parse, validate, decide, count.
//!
//! This module tree is the single source of truth for what a policy means. The gateway
//! enforces [`Policy::decide`], the console edits and validates through it, and the CLI's
//! `check` and `explain` are thin shells over it. Nothing outside this tree interprets any
//! part of a policy. The contract is `policy-format.md`; where it is silent, the choices are
//! listed in [`compile`]'s documentation (windows, durations, globs, duplicate keys).
//!
//! The pieces:
//! - [`json`]: a strict JSON parser that keeps every value's position, so each diagnostic
//!   says `FILE:LINE:COL` and a JSON Pointer, and duplicate keys are caught.
//! - [`compile`]: validation into a [`Policy`]; every problem at once, in document order.
//! - [`glob`], [`condition`]: tool-name patterns and argument conditions, which are true,
//!   false or unknown (and fail closed); [`number`] and [`path`] say how numbers and file
//!   paths are read in them.
//! - [`store`]: the [`CounterStore`] that limits count against: in process, SQLite, Redis.
//! - [`decision`]: the [`Decision`] and the text an agent reads.
//! - [`lint`]: what is valid but almost certainly a mistake (`check --lint`, the console).
//! - [`cases`], [`case_run`]: policy test cases (`toolgate test`), decided by `decide` on a
//!   virtual clock.
//!
//! Deciding follows the format's order: hidden → `action: deny` → `deny_if`/`require` →
//! limits (all of the call's limits admitted atomically, or none) → `require_approval` →
//! allow. Rule lookup is a hash map for exact names (thousands of rules cost nothing) and then
//! the globs, pre-sorted by literal characters (most first, ties in file order).

pub(crate) mod case_append;
pub(crate) mod case_run;
pub(crate) mod cases;
mod compile;
mod condition;
mod decision;
pub(crate) mod file;
mod glob;
mod json;
pub(crate) mod lint;
mod number;
mod path;
pub(crate) mod store;

pub(crate) use condition::Op;
pub use decision::{ArgsTree, Call, Decision, Shadow, ShadowSource, Verdict};
pub(crate) use decision::{human_duration, would};
pub use store::{
    Admission, CounterStore, FailMode, GuardedStore, KeyUsage, LimitRequest, MemoryStore,
    NotedUsage, OwnedLimit, RedisStore, Reservation, Scope, SqliteStore, StoreError,
    StoreErrorKind, StoreWorker,
};
pub(crate) use store::{Limits, StoreSpec};

use smol_str::SmolStr;
use std::path::Path;
use std::sync::Arc;

use condition::{Condition, Truth};
use glob::Glob;

/// What a rule (or the default) does with a call that passes its conditions and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    RequireApproval,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::RequireApproval => "require_approval",
        }
    }
}

/// One counter (budget) as the policy defines it. Limits naming it share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterDef {
    pub name: String,
    pub scope: Scope,
    pub max: u64,
    pub window_ms: u64,
    /// Pointer of the first limit that defines it.
    pub pointer: String,
}

/// A limit as used by a rule: which counter, and where the limit is written.
#[derive(Debug, Clone)]
struct LimitUse {
    counter: usize,
    pointer: SmolStr,
}

/// The first step of a decision ([`Policy::judge`]).
#[derive(Debug)]
pub enum Judgement {
    /// Decided without the counters: hidden, denied, or a call without limits.
    Decided(Decision),
    /// Allowed or held if the store admits its limits.
    Admit(Admissible),
}

/// A call that passed every check but its limits.
#[derive(Debug)]
pub struct Admissible {
    /// The decision if admitted (allow or hold).
    decision: Decision,
    /// The rule that decided, by index.
    rule: Option<usize>,
    /// Where each of `limits` comes from, for the refusal's pointer.
    uses: Vec<UseAt>,
    limits: Limits,
}

impl Admissible {
    /// The budgets to admit, all or none; taken by whoever asks the store.
    pub fn take_limits(&mut self) -> Limits {
        std::mem::take(&mut self.limits)
    }

    /// The budgets to admit.
    pub fn limits(&self) -> &[OwnedLimit] {
        &self.limits
    }

    /// The verdict if admitted (allow or hold).
    pub fn verdict(&self) -> Verdict {
        self.decision.verdict
    }
}

/// A limit of a call: the rule's `i`-th or `all_tools`' `i`-th.
#[derive(Debug, Clone, Copy)]
enum UseAt {
    Rule(usize),
    AllTools(usize),
}

/// A compiled entry of `tools`.
#[derive(Debug, Clone)]
struct Rule {
    key: String,
    /// Shared with every decision this rule makes ([`SmolStr`]: no copy per call).
    pointer: SmolStr,
    action: Action,
    reason: Option<SmolStr>,
    deny_if: Vec<(String, Condition)>,
    require: Vec<(String, Condition)>,
    /// `limits` then `rate_limit`, in file order.
    limits: Vec<LimitUse>,
    approval_timeout_ms: Option<u64>,
    /// `"shadow": true`: decided beside the enforced decision, never enforced.
    shadow: bool,
}

impl Rule {
    /// Every condition of the rule evaluated on `args`, `deny_if` first, in file order.
    /// Lazy: `decide` stops at the first that denies.
    /// The arguments' tree is asked for only when the rule has a condition.
    fn checks<'r>(&'r self, args: &'r dyn ArgsTree) -> impl Iterator<Item = ConditionCheck<'r>> {
        let deny_if = self.deny_if.iter().map(|c| (true, c));
        let require = self.require.iter().map(|c| (false, c));
        deny_if
            .chain(require)
            .map(move |(deny_if, (pointer, condition))| ConditionCheck {
                pointer,
                deny_if,
                condition,
                truth: match args.tree() {
                    Some(tree) => condition.evaluate(tree),
                    None => Truth::Unknown(condition::Unknown::unreadable()),
                },
            })
    }
}

/// One condition of a rule, evaluated on one call's arguments (for `decide` and `explain`).
#[derive(Debug, Clone)]
pub(crate) struct ConditionCheck<'r> {
    /// `/tools/transfer/deny_if/0`.
    pub(crate) pointer: &'r str,
    /// In `deny_if` (else in `require`).
    pub(crate) deny_if: bool,
    condition: &'r Condition,
    truth: Truth,
}

impl ConditionCheck<'_> {
    /// Whether this condition denies the call: a `deny_if` that holds or is unknown, a
    /// `require` that fails or is unknown.
    pub(crate) fn denies(&self) -> bool {
        match self.truth {
            Truth::True => self.deny_if,
            Truth::False => !self.deny_if,
            Truth::Unknown(_) => true,
        }
    }

    /// The condition in words (`args.amount lte 10000`).
    pub(crate) fn describe(&self) -> String {
        self.condition.describe()
    }

    /// `true`, `false` or `unknown`, and for unknown why
    /// (`args.amount is an array; gt compares numbers`).
    pub(crate) fn outcome(&self) -> (&'static str, Option<String>) {
        match &self.truth {
            Truth::True => ("true", None),
            Truth::False => ("false", None),
            Truth::Unknown(u) => ("unknown", Some(u.to_string())),
        }
    }

    /// The reason a denying condition gives: `deny_if holds: args.to eq "x"`,
    /// `require not met: args.amount lte 100`, or for an unknown one
    /// `deny_if args.amount gt 1000 is unknown: args.amount is an array; gt compares numbers: denied`.
    pub(crate) fn because(&self) -> String {
        let list = if self.deny_if { "deny_if" } else { "require" };
        match &self.truth {
            Truth::Unknown(u) => format!("{list} {} is unknown: {u}: denied", self.describe()),
            _ if self.deny_if => format!("deny_if holds: {}", self.describe()),
            _ => format!("require not met: {}", self.describe()),
        }
    }
}

/// A parsed, validated, compiled policy. Immutable; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Policy {
    hash: String,
    default: Action,
    approval_timeout_ms: u64,
    /// Exact `hide` names, to the first index naming them.
    hide_exact: crate::hashing::FastMap<String, usize>,
    /// Glob `hide` entries in file order.
    hide_globs: Vec<(Glob, usize)>,
    hide_len: usize,
    /// Exact tool names to their rule.
    exact: crate::hashing::FastMap<String, usize>,
    /// Glob keys, most literal characters first, ties in file order.
    globs: Vec<(Glob, usize)>,
    rules: Vec<Rule>,
    all_tools: Vec<LimitUse>,
    counters: Vec<CounterDef>,
    /// `counters[i].name`, shared with the reservations that name it.
    counter_names: Vec<Arc<str>>,
    /// How many rules are shadow rules (none: no shadow lookup at all).
    shadow_rules: usize,
    /// `counters[i].name` in the namespaces of shadow decisions (see [`Counting`]), so a
    /// shadow limit never takes a unit from a real budget.
    shadow_rule_counter_names: Vec<Arc<str>>,
    shadow_policy_counter_names: Vec<Arc<str>>,
    /// `pins`: what a changed tool definition gets.
    pins: PinMode,
    /// `quarantine_flagged`: a flagged description quarantines its tool.
    quarantine_flagged: bool,
    /// `learn`: the gateway records observations for `toolgate learn`.
    learn: bool,
}

/// The policy's `pins`: what happens when a tool's definition differs from its pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PinMode {
    /// The changed tool is quarantined: left out of `tools/list`, its calls refused, until
    /// an operator accepts the new definition.
    Enforce,
    /// The change is reported; the tool stays listed and callable (an absent `pins`).
    #[default]
    Warn,
    /// No pinning at all.
    Off,
}

/// Whose budgets a decision counts against. Shadow decisions count in counters of their own,
/// named with a prefix no policy counter can collide with in meaning: a counter `x` of a
/// shadow rule is `shadow:x` in the store, of a `--shadow-policy` `shadow-policy:x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counting {
    Enforced,
    ShadowRule,
    ShadowPolicy,
}

/// The store prefix of a shadow rule's counters.
pub const SHADOW_RULE_COUNTER_PREFIX: &str = "shadow:";
/// The store prefix of a shadow policy's counters.
pub const SHADOW_POLICY_COUNTER_PREFIX: &str = "shadow-policy:";

/// Everything wrong with a policy text, every problem at once.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct Diagnostics(pub Vec<Diagnostic>);

/// One problem, compiler-style: `FILE:LINE:COL: error: MESSAGE (at /json/pointer); HINT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based line of the offending value.
    pub line: usize,
    /// 1-based column (in characters) of the offending value.
    pub column: usize,
    pub message: String,
    /// JSON Pointer of the offending value; empty for the document itself.
    pub pointer: String,
    /// What to do about it (may be empty).
    pub hint: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )?;
        if !self.pointer.is_empty() {
            write!(f, " (at {})", self.pointer)?;
        }
        if !self.hint.is_empty() {
            write!(f, "; {}", self.hint)?;
        }
        Ok(())
    }
}

/// The largest policy file read, at start or on a reload: far above any real policy (5,000
/// rules take well under 1 MiB), and a bound on what a runaway file makes a process hold.
pub const MAX_POLICY_BYTES: u64 = 16 * 1024 * 1024;

/// The text of the policy file at `path`, read the one way policy files are read (see
/// [`Policy::load`]); an error says what is wrong with the file.
pub(crate) fn read_source(path: &Path) -> std::io::Result<String> {
    let bytes = crate::gateway::watch::read_watched_file(path, MAX_POLICY_BYTES)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {MAX_POLICY_BYTES} bytes ({} MiB), the most a policy file may be; is this the policy?",
                MAX_POLICY_BYTES >> 20
            ),
        )
    })?;
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] Diagnostics),
}

/// See [`Policy::treatment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Treatment {
    pub action: Action,
    /// Some limit (the rule's or `all_tools`') counts this tool's calls.
    pub limited: bool,
    /// The rule has `require` or `deny_if` conditions.
    pub conditions: bool,
}

/// Which entry of the policy a tool name falls under, for explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleMatch {
    /// `hide[index]` names it.
    Hidden { pointer: String, entry: String },
    /// `tools` has this exact name.
    Exact { pointer: String },
    /// The glob with the most literal characters (then the first written) among
    /// `candidates` (pointers of every matching glob, in precedence order).
    Glob {
        pointer: String,
        pattern: String,
        candidates: Vec<String>,
    },
    /// No rule names it; `default` decides.
    Default { action: Action },
}

impl Policy {
    /// Parses and validates `source`; `file` is the name diagnostics are reported under.
    pub fn parse(source: &str, file: &str) -> Result<Policy, Diagnostics> {
        compile::compile(source, file).map_err(Diagnostics)
    }

    /// Reads and parses a policy file, as every command and every reload reads one: a
    /// regular file only, opened without blocking, at most [`MAX_POLICY_BYTES`].
    pub fn load(path: &Path) -> Result<Policy, LoadError> {
        let shown = path.display().to_string();
        let text = read_source(path).map_err(|source| LoadError::Io {
            path: shown.clone(),
            source,
        })?;
        Ok(Policy::parse(&text, &shown)?)
    }

    /// SHA-256 (hex) of the source text this policy was parsed from.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The decision for tools no rule names.
    pub fn default_action(&self) -> Action {
        self.default
    }

    /// The policy's `pins` (`warn` when absent).
    pub fn pins(&self) -> PinMode {
        self.pins
    }

    /// The policy's `learn` (`false` when absent): record observations (learn mode).
    pub fn learn(&self) -> bool {
        self.learn
    }

    /// The policy's `quarantine_flagged` (`false` when absent).
    pub fn quarantine_flagged(&self) -> bool {
        self.quarantine_flagged
    }

    /// How long a held call waits by default.
    pub fn approval_timeout_ms(&self) -> u64 {
        self.approval_timeout_ms
    }

    /// The number of entries in `tools`.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The number of entries in `hide`.
    pub fn hide_count(&self) -> usize {
        self.hide_len
    }

    /// Every counter the policy defines, in the order first written.
    pub fn counters(&self) -> &[CounterDef] {
        &self.counters
    }

    /// The keys of `tools`, in file order.
    pub fn tool_keys(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.key.as_str())
    }

    /// The keys of `tools` with the JSON Pointer of each rule, in file order (the pointers
    /// [`Policy::rule_match`] names).
    pub fn tool_rules(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules
            .iter()
            .map(|r| (r.key.as_str(), r.pointer.as_str()))
    }

    /// How `tool`'s calls are treated before their arguments are looked at: the action of
    /// the rule that decides it (or of `default`), whether any limit counts its calls, and
    /// whether argument conditions apply. `None` when `hide` names it. For `toolgate scan
    /// --against`, which compares a policy with what a server offers.
    pub fn treatment(&self, tool: &str) -> Option<Treatment> {
        if self.hidden_by(tool).is_some() {
            return None;
        }
        let rule = self.rule_for(tool);
        Some(Treatment {
            action: rule.map_or(self.default, |r| r.action),
            limited: !self.all_tools.is_empty() || rule.is_some_and(|r| !r.limits.is_empty()),
            conditions: rule.is_some_and(|r| !r.deny_if.is_empty() || !r.require.is_empty()),
        })
    }

    /// Whether `hide` removes this tool from `tools/list`.
    pub fn is_hidden(&self, tool: &str) -> bool {
        self.hidden_by(tool).is_some()
    }

    /// The first `hide` entry (by index) that names `tool`.
    fn hidden_by(&self, tool: &str) -> Option<usize> {
        if self.hide_len == 0 {
            return None;
        }
        let exact = self.hide_exact.get(tool).copied();
        let glob = self
            .hide_globs
            .iter()
            .find(|(g, _)| g.matches(tool))
            .map(|(_, i)| *i);
        match (exact, glob) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn rule_for(&self, tool: &str) -> Option<&Rule> {
        self.rule_index(tool).map(|i| &self.rules[i])
    }

    /// The rule that decides `tool` when enforcing: shadow rules are not there.
    fn rule_index(&self, tool: &str) -> Option<usize> {
        if self.shadow_rules == 0 {
            return self.written_rule_index(tool);
        }
        if let Some(&i) = self.exact.get(tool)
            && !self.rules[i].shadow
        {
            return Some(i);
        }
        self.globs
            .iter()
            .find(|(g, i)| !self.rules[*i].shadow && g.matches(tool))
            .map(|(_, i)| *i)
    }

    /// The rule that decides `tool` with every rule as written, shadow rules included: the
    /// policy as it would be if its shadow rules were promoted.
    fn written_rule_index(&self, tool: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(tool) {
            return Some(i);
        }
        self.globs
            .iter()
            .find(|(g, _)| g.matches(tool))
            .map(|(_, i)| *i)
    }

    /// The number of shadow rules.
    pub fn shadow_rule_count(&self) -> usize {
        self.shadow_rules
    }

    /// The keys and pointers of the shadow rules, in file order.
    pub fn shadow_rules(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules
            .iter()
            .filter(|r| r.shadow)
            .map(|r| (r.key.as_str(), r.pointer.as_str()))
    }

    /// Which entry of the policy `tool` falls under (hide, exact rule, glob, default).
    pub fn rule_match(&self, tool: &str) -> RuleMatch {
        if let Some(i) = self.hidden_by(tool) {
            let entry = self
                .hide_exact
                .iter()
                .find(|(_, j)| **j == i)
                .map(|(n, _)| n.clone())
                .or_else(|| {
                    self.hide_globs
                        .iter()
                        .find(|(_, j)| *j == i)
                        .map(|(g, _)| g.as_str().to_string())
                })
                .unwrap_or_default();
            return RuleMatch::Hidden {
                pointer: format!("/hide/{i}"),
                entry,
            };
        }
        if let Some(&i) = self.exact.get(tool)
            && !self.rules[i].shadow
        {
            return RuleMatch::Exact {
                pointer: self.rules[i].pointer.to_string(),
            };
        }
        let matching: Vec<&(Glob, usize)> = self
            .globs
            .iter()
            .filter(|(g, i)| !self.rules[*i].shadow && g.matches(tool))
            .collect();
        match matching.first() {
            Some((g, i)) => RuleMatch::Glob {
                pointer: self.rules[*i].pointer.to_string(),
                pattern: g.as_str().to_string(),
                candidates: matching
                    .iter()
                    .map(|(_, i)| self.rules[*i].pointer.to_string())
                    .collect(),
            },
            None => RuleMatch::Default {
                action: self.default,
            },
        }
    }

    /// The conditions of the rule that decides `tool`, each evaluated on `args`, in the order
    /// `decide` looks at them (`deny_if`, then `require`). Empty for a hidden tool or one no
    /// rule names. For `explain`.
    pub(crate) fn condition_checks<'p>(
        &'p self,
        tool: &str,
        args: &'p serde_json::Value,
    ) -> Vec<ConditionCheck<'p>> {
        if self.hidden_by(tool).is_some() {
            return Vec::new();
        }
        match self.rule_for(tool) {
            Some(rule) => rule.checks(args).collect(),
            None => Vec::new(),
        }
    }

    /// Decides one call at `now_ms` (milliseconds since the Unix epoch), taking units from
    /// `store` when the call is admitted or held. Never panics, whatever the arguments.
    ///
    /// The two steps a gateway takes apart (the policy's [`Policy::judge`], then the store's
    /// admission and [`Policy::settle`]) in one call: `explain`, the console's what-if and
    /// the tests decide through the same code as a gateway.
    ///
    /// A shadow rule for the call is decided too, after the enforced decision, and its
    /// decision lands in [`Decision::shadow`] when it differs.
    pub fn decide(&self, call: &Call<'_>, store: &dyn CounterStore, now_ms: u64) -> Decision {
        let mut decision = self.finish(self.judge(call), store, now_ms);
        if let Some(shadow) = self.judge_shadow(call) {
            let shadow = self.finish(shadow, store, now_ms);
            decision.shadow = Shadow::between(&decision, shadow, ShadowSource::Rule);
        }
        decision
    }

    /// [`Policy::decide`] beside a candidate policy (`--shadow-policy`): enforced by this
    /// one, the candidate's decision (its own counters, see [`Policy::judge_candidate`]) in
    /// [`Decision::shadow`] when it differs and no shadow rule of this policy already said
    /// something.
    pub fn decide_beside(
        &self,
        candidate: &Policy,
        call: &Call<'_>,
        store: &dyn CounterStore,
        now_ms: u64,
    ) -> Decision {
        let mut decision = self.decide(call, store, now_ms);
        let other = candidate.finish(candidate.judge_candidate(call), store, now_ms);
        if decision.shadow.is_none() {
            decision.shadow = Shadow::between(&decision, other, ShadowSource::Policy);
        }
        decision
    }

    /// A judgement finished with the store's answer, when it needs one.
    fn finish(&self, judgement: Judgement, store: &dyn CounterStore, now_ms: u64) -> Decision {
        match judgement {
            Judgement::Decided(decision) => decision,
            Judgement::Admit(admissible) => {
                let requests: Vec<LimitRequest<'_>> =
                    admissible.limits.iter().map(OwnedLimit::request).collect();
                let answer = store.admit(&requests, now_ms);
                drop(requests);
                self.settle(admissible, answer)
            }
        }
    }

    /// The shadow rule's side of a call: `None` unless the rule that would decide `call`, were
    /// every shadow rule promoted, is a shadow rule. Then the call is judged by that rule as
    /// if it were enforced: its action, conditions (one that cannot be evaluated denies, as
    /// always) and its own limits, counted in `shadow:` counters (`all_tools` limits are left
    /// to the enforced decision). Finished like [`Policy::judge`]'s, by [`Policy::settle`]
    /// of this policy; then [`Shadow::between`] says whether it differs.
    pub fn judge_shadow(&self, call: &Call<'_>) -> Option<Judgement> {
        if self.shadow_rules == 0 || self.hidden_by(call.tool).is_some() {
            return None;
        }
        let index = self.written_rule_index(call.tool)?;
        if !self.rules[index].shadow {
            return None;
        }
        Some(self.judge_by(call, Some(index), Counting::ShadowRule))
    }

    /// This policy's decision as a candidate (`--shadow-policy`): [`Policy::judge`] with
    /// every limit counted in `shadow-policy:` counters, so running a candidate beside the
    /// enforced policy never takes from a real budget. The candidate's own shadow rules are
    /// not consulted.
    pub fn judge_candidate(&self, call: &Call<'_>) -> Judgement {
        match self.hidden(call) {
            Some(decision) => Judgement::Decided(decision),
            None => self.judge_by(call, self.rule_index(call.tool), Counting::ShadowPolicy),
        }
    }

    /// The first step of a decision, everything but the counters: hidden, denied, the
    /// conditions, and the verdict the call gets if its limits have room (allow or hold).
    /// A call with limits comes back [`Judgement::Admit`], for the store to admit and
    /// [`Policy::settle`] (of this same policy) to finish.
    pub fn judge(&self, call: &Call<'_>) -> Judgement {
        match self.hidden(call) {
            Some(decision) => Judgement::Decided(decision),
            None => self.judge_by(call, self.rule_index(call.tool), Counting::Enforced),
        }
    }

    /// 1. Hidden: denied as if the tool did not exist.
    fn hidden(&self, call: &Call<'_>) -> Option<Decision> {
        let i = self.hidden_by(call.tool)?;
        let mut d = blank_decision(call.tool);
        d.rule = smol_str::format_smolstr!("/hide/{i}");
        d.reason = SmolStr::new_static(
            "hidden by policy: `hide` names this tool, so it is refused as an unknown tool",
        );
        d.hidden = true;
        Some(d)
    }

    /// Steps 2 to 6 of a decision by the rule `rule_index` (or `default`), its limits
    /// counted as `counting` says.
    fn judge_by(
        &self,
        call: &Call<'_>,
        rule_index: Option<usize>,
        counting: Counting,
    ) -> Judgement {
        let mut d = blank_decision(call.tool);
        let rule = rule_index.map(|i| &self.rules[i]);
        // The rule's pointer and reason are the compiled policy's own, and the other texts
        // static: a decision copies none of them.
        let (action, pointer) = match rule {
            Some(r) => (r.action, r.pointer.clone()),
            None => (self.default, SmolStr::new_static("/default")),
        };

        // 2. An explicit deny.
        if action == Action::Deny {
            d.rule = pointer;
            d.reason = match rule {
                Some(r) => r
                    .reason
                    .clone()
                    .unwrap_or_else(|| SmolStr::new_static("the policy denies this tool")),
                None => SmolStr::new_static("no rule names this tool and the default is deny"),
            };
            return Judgement::Decided(d);
        }

        // 3. Argument conditions: deny_if first, then require. Unknown denies in both.
        if let Some(r) = rule
            && let Some(check) = r.checks(call.args).find(|c| c.denies())
        {
            d.rule = SmolStr::new(check.pointer);
            let why = check.because();
            d.reason = match &r.reason {
                Some(reason) => smol_str::format_smolstr!("{reason} ({why})"),
                None => SmolStr::from(why),
            };
            return Judgement::Decided(d);
        }

        // 5. Approval, 6. allow: what the call gets if its limits have room.
        d.rule = pointer;
        if action == Action::RequireApproval {
            d.verdict = Verdict::Hold;
            d.approval_timeout_ms = Some(
                rule.and_then(|r| r.approval_timeout_ms)
                    .unwrap_or(self.approval_timeout_ms),
            );
            d.reason = match rule {
                Some(r) => r.reason.clone().unwrap_or_else(|| {
                    SmolStr::new_static("this tool needs an operator's approval")
                }),
                None => SmolStr::new_static(
                    "no rule names this tool and the default is require_approval",
                ),
            };
        } else {
            d.verdict = Verdict::Allow;
            d.reason = match rule {
                Some(_) => SmolStr::new_static("allowed by its rule"),
                None => SmolStr::new_static("no rule names this tool and the default is allow"),
            };
        }

        // 4. Limits: the rule's, then all_tools', for the store to admit atomically.
        let rule_uses = rule.map(|r| r.limits.as_slice()).unwrap_or_default();
        let all_tools: &[LimitUse] = match counting {
            Counting::ShadowRule => &[],
            Counting::Enforced | Counting::ShadowPolicy => &self.all_tools,
        };
        let names = match counting {
            Counting::Enforced => &self.counter_names,
            Counting::ShadowRule => &self.shadow_rule_counter_names,
            Counting::ShadowPolicy => &self.shadow_policy_counter_names,
        };
        let uses = rule_uses
            .iter()
            .enumerate()
            .map(|(i, u)| (UseAt::Rule(i), u))
            .chain(
                all_tools
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (UseAt::AllTools(i), u)),
            );
        let mut limits = Limits::new();
        let mut at: Vec<UseAt> = Vec::new();
        for (place, u) in uses {
            if limits
                .iter()
                .any(|l| Arc::ptr_eq(&l.counter, &names[u.counter]))
            {
                continue;
            }
            let def = &self.counters[u.counter];
            limits.push(OwnedLimit {
                counter: Arc::clone(&names[u.counter]),
                scope: def.scope,
                scope_key: SmolStr::new(match def.scope {
                    Scope::Grant => call.grant,
                    Scope::Session => call.session,
                    Scope::Global => "",
                }),
                max: def.max,
                window_ms: def.window_ms,
            });
            at.push(place);
        }
        if limits.is_empty() {
            return Judgement::Decided(d);
        }
        Judgement::Admit(Admissible {
            decision: d,
            rule: rule_index,
            uses: at,
            limits,
        })
    }

    /// The second step: the decision of a call [`Policy::judge`] (of this same policy) found
    /// admissible, once the store answered. A refusal is `rate_limited`, naming the full
    /// counter; a store error denies (the guard already applied `--counters-fail open`).
    pub fn settle(
        &self,
        admissible: Admissible,
        answer: Result<Admission, StoreError>,
    ) -> Decision {
        let Admissible {
            decision: mut d,
            rule,
            uses,
            ..
        } = admissible;
        let limit_use = |index: usize| -> Option<&LimitUse> {
            match uses.get(index)? {
                UseAt::Rule(i) => rule.and_then(|r| self.rules.get(r)?.limits.get(*i)),
                UseAt::AllTools(i) => self.all_tools.get(*i),
            }
        };
        match answer {
            Ok(Admission::Admitted(reservation)) => d.reservation = reservation,
            Ok(Admission::Refused {
                index,
                retry_after_ms,
            }) => {
                d.verdict = Verdict::RateLimited;
                d.approval_timeout_ms = None;
                match limit_use(index).or_else(|| limit_use(0)) {
                    Some(u) => {
                        let def = &self.counters[u.counter];
                        d.rule = u.pointer.clone();
                        d.reason = smol_str::format_smolstr!(
                            "{} per {} on counter {}",
                            plural(def.max, "call", "calls"),
                            window_words(def.window_ms),
                            def.name
                        );
                    }
                    None => d.reason = SmolStr::new_static("a limit of this tool is reached"),
                }
                d.retry_after_ms = Some(retry_after_ms.max(1));
            }
            Err(e) => {
                d.verdict = Verdict::Deny;
                d.approval_timeout_ms = None;
                if let Some(u) = limit_use(0) {
                    d.rule = u.pointer.clone();
                }
                d.reason = smol_str::format_smolstr!(
                    "{e}; calls with limits are refused until the counter store answers again"
                );
            }
        }
        d
    }

    /// The state of every counter this policy defines, for every scope key with units in
    /// its window (the console's Limits view, the `counters` event).
    pub fn counter_states(
        &self,
        store: &dyn CounterStore,
        now_ms: u64,
    ) -> Result<Vec<crate::wire::CounterState>, StoreError> {
        self.counter_states_where(store, now_ms, |_| true)
    }

    /// [`Policy::counter_states`] of the named counters only: the store is asked about
    /// those alone (what a gateway publishes after a call touched them).
    pub fn counter_states_of(
        &self,
        store: &dyn CounterStore,
        now_ms: u64,
        counters: &[&str],
    ) -> Result<Vec<crate::wire::CounterState>, StoreError> {
        self.counter_states_where(store, now_ms, |name| counters.contains(&name))
    }

    /// The state of the budgets a reservation took units from, each for its own scope key
    /// only: what a gateway publishes after a call (or a release) touched them. Budgets of
    /// counters this policy no longer defines are skipped.
    pub fn counter_states_for(
        &self,
        store: &dyn CounterStore,
        now_ms: u64,
        reservation: &Reservation,
    ) -> Result<Vec<crate::wire::CounterState>, StoreError> {
        let mut out = Vec::with_capacity(reservation.units().len());
        for unit in reservation.units() {
            let Some(def) = self
                .counters
                .iter()
                .find(|d| *d.name == *unit.key.counter && d.scope == unit.key.scope)
            else {
                continue;
            };
            let u = store.usage_of(&unit.key, def.window_ms, now_ms)?;
            out.push(crate::wire::CounterState {
                counter: def.name.clone(),
                scope: def.scope.as_str().to_string(),
                key: u.scope_key,
                used: u.used,
                max: def.max,
                window_ms: def.window_ms,
                next_free_in_ms: u.next_free_in_ms,
            });
        }
        Ok(out)
    }

    fn counter_states_where(
        &self,
        store: &dyn CounterStore,
        now_ms: u64,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Vec<crate::wire::CounterState>, StoreError> {
        let mut out = Vec::new();
        for def in self.counters.iter().filter(|d| wanted(&d.name)) {
            for u in store.usage(&def.name, def.scope, def.window_ms, now_ms)? {
                out.push(crate::wire::CounterState {
                    counter: def.name.clone(),
                    scope: def.scope.as_str().to_string(),
                    key: u.scope_key,
                    used: u.used,
                    max: def.max,
                    window_ms: def.window_ms,
                    next_free_in_ms: u.next_free_in_ms,
                });
            }
        }
        Ok(out)
    }
}

/// A decision before any step has made it: a denial naming nothing yet.
fn blank_decision(tool: &str) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        rule: SmolStr::default(),
        reason: SmolStr::default(),
        retry_after_ms: None,
        hidden: false,
        approval_timeout_ms: None,
        reservation: Reservation::default(),
        tool: SmolStr::new(tool),
        shadow: None,
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// A window in words: `minute`, `hour`, `90 seconds`, `10 minutes`, `2 days`.
pub(crate) fn window_words(ms: u64) -> String {
    const UNITS: [(u64, &str, &str); 4] = [
        (86_400_000, "day", "days"),
        (3_600_000, "hour", "hours"),
        (60_000, "minute", "minutes"),
        (1_000, "second", "seconds"),
    ];
    for (size, one, many) in UNITS {
        if ms.is_multiple_of(size) {
            let n = ms / size;
            return if n == 1 {
                one.to_string()
            } else {
                format!("{n} {many}")
            };
        }
    }
    format!("{ms} ms")
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::{PinMode, Policy};

    fn parse(top: &str) -> Result<Policy, super::Diagnostics> {
        Policy::parse(
            &format!(r#"{{"version": "1", "default": "deny"{top}}}"#),
            "policy.json",
        )
    }

    #[test]
    fn pins_is_warn_and_quarantine_flagged_false_when_absent() {
        let policy = parse("").expect("valid");
        assert_eq!(policy.pins(), PinMode::Warn);
        assert!(!policy.quarantine_flagged());
    }

    #[test]
    fn pins_and_quarantine_flagged_are_read_at_the_top_level() {
        for (text, mode) in [
            ("enforce", PinMode::Enforce),
            ("warn", PinMode::Warn),
            ("off", PinMode::Off),
        ] {
            let policy = parse(&format!(
                r#", "pins": "{text}", "quarantine_flagged": true"#
            ))
            .expect("valid");
            assert_eq!(policy.pins(), mode);
            assert!(policy.quarantine_flagged());
        }
    }

    #[test]
    fn a_wrong_pins_value_is_an_error_that_names_the_modes() {
        let err = parse(r#", "pins": "sometimes""#).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("unknown pins mode \"sometimes\" (at /pins)"),
            "{text}"
        );
        assert!(text.contains("expected enforce, warn or off"), "{text}");
        let err = parse(r#", "quarantine_flagged": "yes""#).expect_err("invalid");
        assert!(
            err.to_string()
                .contains("quarantine_flagged must be true or false, found a string"),
            "{err}"
        );
    }
}
