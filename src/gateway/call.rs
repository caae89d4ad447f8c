//! The per-call logic every transport shares: decide a `tools/call` (publish and audit the
//! decision), wait for an operator on a held call, filter a `tools/list` answer through
//! `hide`, and record a call's outcome.
//!
//! Nothing here knows about streams or connections: the stdio core ([`super::core`]) and the
//! HTTP gateway call these per message.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use smol_str::SmolStr;

use super::Gateway;
use super::args::RawArgs;
use super::audit::AuditRecord;
use super::jsonrpc::{Envelope, ResultMembers, string_value};
use crate::control::{HoldTicket, Hub, Resolution};
use crate::policy::store::Answer;
use crate::policy::store::worker::{Answers, FirstThing, Posted};
use crate::policy::{
    Admissible, Admission, Call, CounterStore, Decision, Judgement, Policy, Reservation, Shadow,
    ShadowSource, StoreError, Verdict, human_duration,
};
use crate::telemetry::CallSpans;
use crate::wire::{CallEvent, Counters, Event, EventKind, Outcome, ResolvedBy, ToolInfo};

/// Outcome summaries are cut to this many characters.
const SUMMARY_CAP: usize = 200;

/// A `tools/list` answer after `hide`.
#[derive(Debug)]
pub struct ToolsListed {
    /// Every tool the upstream offered on this page, hidden ones included (for operators).
    pub offered: Vec<ToolInfo>,
    /// The result the client gets: the upstream's, re-encoded, without the hidden tools.
    /// Always re-encoded, so the client reads exactly what was filtered.
    pub result: Value,
}

impl Gateway {
    /// Decides one call: runs the policy, asks the counter store when the call has limits,
    /// publishes the `call` event and writes the decision's audit record; returns the call's
    /// id and the decision. The caller acts on the verdict (forward, refuse or hold) and owns
    /// the decision's reservation. Transport-independent: `wrap`, the demo and the HTTP
    /// gateway all decide through [`Gateway::start_decision`] and
    /// [`Gateway::publish_decision`], as this does.
    ///
    /// `args` that are not an object are decided as no arguments at all (`{}`), as the
    /// core refuses such a call before it is decided.
    pub async fn decide_call(
        &self,
        session: &str,
        tool: &str,
        args: &Value,
    ) -> (SmolStr, Decision) {
        let args = RawArgs::from_value(args).unwrap_or_else(|_| RawArgs::empty());
        let mut decision = match self.start_decision(session, tool, &args) {
            Deciding::Decided(decision) => decision,
            Deciding::Admitting(admitting) => admitting.decision().await,
            // Not reached: no channel was given.
            Deciding::Queued(queued) => queued.settle(Err(not_there())),
        };
        let (session, tool) = (SmolStr::new(session), SmolStr::new(tool));
        let call_id = self.publish_decision(&session, &tool, args, &mut decision, None, None);
        (call_id, decision)
    }

    /// The first step of deciding a call: the policy's decision, and for a call with limits
    /// its admission queued at the counter store now (so admissions keep the calls' order).
    /// Nothing is published yet but, once the store admits it, the state of the budgets it
    /// took units from (the `counters` event, from the store's thread).
    pub(crate) fn start_decision(&self, session: &str, tool: &str, args: &RawArgs) -> Deciding {
        self.start_decision_into(session, tool, args, None, None)
    }

    /// [`Gateway::start_decision`]; a call whose only admission is the enforced one (no
    /// shadow decision) and that waits for the store is answered into `into`
    /// ([`Deciding::Queued`]), where one task drains the answers of many calls. Such a call
    /// whose verdict, once admitted, is allow (not hold) carries what `first` makes, run on
    /// the store's thread as it is admitted (`wrap`'s hand-over, `gateway/handover.rs`), if it
    /// makes one.
    pub(crate) fn start_decision_into(
        &self,
        session: &str,
        tool: &str,
        args: &RawArgs,
        into: Option<&Answers>,
        first: Option<&mut dyn FnMut() -> Option<FirstThing>>,
    ) -> Deciding {
        if let Some(audit) = &self.audit
            && audit.refuses_calls()
        {
            // A call that could not be audited is not made (`--audit-fail closed`).
            return Deciding::Decided(audit_refusal(tool, audit.refusal_reason()));
        }
        let policy = self.policy.load();
        let call = Call {
            tool,
            args,
            grant: &self.grant,
            session,
        };
        let judgement = policy.judge(&call);
        let shadow_rule = policy.judge_shadow(&call);
        let candidate = self
            .shadow_policy
            .as_ref()
            .and_then(|candidate| candidate.load_full());
        let shadow_policy = candidate.map(|candidate| {
            let judgement = candidate.judge_candidate(&call);
            (candidate, judgement)
        });
        // Shadow admissions are queued after the enforced one, in counters of their own: a
        // full shadow budget never refuses the call.
        let alone = shadow_rule.is_none() && shadow_policy.is_none();
        let enforced = self.step(judgement, true, into.filter(|_| alone), first);
        if alone {
            return match enforced {
                Step::Decided(decision) => Deciding::Decided(decision),
                Step::Queued(admissible, ticket) => Deciding::Queued(Queued {
                    policy: arc_swap::Guard::into_inner(policy),
                    admissible,
                    ticket,
                }),
                enforced @ Step::Admitting(..) => Admitting {
                    policy: arc_swap::Guard::into_inner(policy),
                    enforced,
                    shadows: None,
                }
                .now(),
            };
        }
        let shadow_rule = shadow_rule.map(|j| self.step(j, false, None, None));
        let shadow_policy =
            shadow_policy.map(|(candidate, j)| (candidate, self.step(j, false, None, None)));
        let shadows = Some(Box::new(Shadows {
            rule: shadow_rule,
            policy: shadow_policy,
        }));
        Admitting {
            // The same policy settles the decision, whatever a reload swaps in.
            policy: arc_swap::Guard::into_inner(policy),
            enforced,
            shadows,
        }
        .now()
    }

    /// A judgement, with its admission queued at the store when it has limits (answered
    /// into `into` when given); an enforced one (`publish`) has the state of the budgets it
    /// took units from published right after it, on the store's thread (see
    /// [`crate::policy::StoreWorker::admit_then`]).
    fn step(
        &self,
        judgement: Judgement,
        publish: bool,
        into: Option<&Answers>,
        first: Option<&mut dyn FnMut() -> Option<FirstThing>>,
    ) -> Step {
        match judgement {
            Judgement::Decided(decision) => Step::Decided(decision),
            Judgement::Admit(mut admissible) => {
                let then = publish.then(|| self.counters_publisher());
                let (limits, now_ms) = (admissible.take_limits(), self.clock.now_ms());
                let Some(into) = into else {
                    let answer = self.store.admit_then(limits, now_ms, then);
                    return Step::Admitting(admissible, answer);
                };
                let first = first
                    .filter(|_| admissible.verdict() == Verdict::Allow)
                    .and_then(|make| make());
                match self.store.admit_into(limits, now_ms, then, first, into) {
                    Posted::Queued(ticket) => Step::Queued(admissible, ticket),
                    Posted::Ready(answer) => Step::Admitting(admissible, Answer::Ready(answer)),
                }
            }
        }
    }

    /// The second step: publishes the `call` event and writes the audit record of a
    /// decision, and registers a hold with the hub; returns the call's id. A call the policy
    /// would hold is denied with `no_hold` as its reason when that is given (its connection
    /// cannot keep one more, or it ended while its limits were counted: `decision` is changed
    /// in place, so the caller's copy, a few hundred bytes, is not moved in and out); the
    /// audit record names the call's trace when it has `spans`. The arguments move into the
    /// event as their text (a tree only when a secret must be redacted): they are not
    /// copied on the call's path.
    pub(crate) fn publish_decision(
        &self,
        session: &SmolStr,
        tool: &SmolStr,
        args: RawArgs,
        decision: &mut Decision,
        no_hold: Option<String>,
        spans: Option<&CallSpans>,
    ) -> SmolStr {
        let call_id = self.hub.next_call_id();
        if decision.verdict == Verdict::Hold {
            self.reserve_hold(&call_id, decision, no_hold);
        }
        let hold_deadline = match decision.verdict {
            Verdict::Hold => decision.approval_timeout_ms.and_then(|ms| {
                self.clock
                    .now()
                    .checked_add_signed(chrono::Duration::milliseconds(
                        i64::try_from(ms).unwrap_or(i64::MAX),
                    ))
            }),
            _ => None,
        };
        let shadow: Option<Box<crate::wire::ShadowDecision>> =
            decision.shadow.clone().map(|s| Box::new(s.into()));
        // One clock read for the audit record and the event.
        let now = self.clock.now();
        if let Some(audit) = &self.audit {
            let digest = audit.describe_raw_args(&args);
            let trace = spans.map(CallSpans::ids);
            audit.record(&AuditRecord {
                ts: now,
                kind: "decision",
                call_id: &call_id,
                grant: &self.grant,
                session,
                server: &self.server,
                tool,
                decision: Some(decision.verdict),
                rule: Some(&decision.rule),
                reason: Some(&decision.reason),
                arg_keys: Some(digest.keys),
                args_hmac: Some(&digest.hmac),
                args: digest.values,
                latency_us: None,
                error: None,
                trace_id: trace.as_ref().map(|(trace, _)| trace.as_str()),
                span_id: trace.as_ref().map(|(_, span)| span.as_str()),
                shadow: shadow.as_deref(),
            });
        }
        let (args, args_truncated) = args.into_event();
        // Every name is a `SmolStr`: inline or shared, none is allocated for the event. Built
        // in place in its `Arc` (see `Hub::gateway_id`); its arguments are not copied.
        let event = Arc::new(Event {
            seq: 0,
            ts: now,
            gateway: self.hub.gateway_id(),
            kind: EventKind::Call(CallEvent {
                call_id: call_id.clone(),
                tool: tool.clone(),
                grant: self.grant.clone(),
                session: session.clone(),
                server: self.server.clone(),
                decision: decision.verdict,
                rule: decision.rule.clone(),
                reason: decision.reason.clone(),
                args,
                args_truncated,
                retry_after_ms: decision.retry_after_ms,
                hold_deadline,
                shadow,
            }),
        });
        self.hub.publish_made(event);
        call_id
    }

    /// Registers a held call with the hub, or, beyond the caps on held calls, turns the
    /// decision into a denial that says so and gives its units back.
    fn reserve_hold(&self, call_id: &str, decision: &mut Decision, no_hold: Option<String>) {
        let refused = match no_hold {
            Some(why) => Err(why),
            None => self
                .hub
                .reserve_hold(call_id, &self.grant)
                .map_err(|refused| refused.to_string()),
        };
        if let Err(refused) = refused {
            tracing::warn!("call {call_id} denied instead of held: {refused}");
            self.release(&std::mem::take(&mut decision.reservation));
            decision.verdict = Verdict::Deny;
            decision.reason = refused.into();
            decision.approval_timeout_ms = None;
        }
    }

    /// Whether this call is to be recorded for learn mode: a recorder, and `--learn` or the
    /// policy in force's `"learn": true`. Asked before the arguments move into the event.
    pub(crate) fn observing(&self) -> bool {
        self.learn
            .as_ref()
            .is_some_and(|r| r.always() || self.policy.load().learn())
    }

    /// Hands a decided call to the recorder (see [`crate::learn::record`]): queued, never
    /// waited for; the arguments are redacted on the recorder's thread.
    pub(crate) fn observe(
        &self,
        server: &str,
        tool: &str,
        args: Value,
        call_id: &str,
        verdict: Verdict,
    ) {
        let Some(recorder) = &self.learn else { return };
        let decision = match verdict {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::RateLimited => "rate_limited",
            Verdict::Hold => "hold",
        };
        let held = (verdict == Verdict::Hold).then(|| call_id.to_owned());
        recorder.record(
            crate::learn::Observation {
                at: self.clock.now(),
                server: server.to_owned(),
                tool: tool.to_owned(),
                grant: Some(self.grant.to_string()),
                decision: decision.to_owned(),
                approved: None,
                args,
            },
            held,
        );
    }

    /// A held call's resolution, for its observation: approved or not by a person, or the
    /// timeout's refusal (not approved); a cancelled call was never decided.
    pub(crate) fn observe_resolution(&self, call_id: &str, resolution: &Resolution) {
        let Some(recorder) = &self.learn else { return };
        let approved = match resolution.by {
            ResolvedBy::Operator => Some(resolution.approved),
            ResolvedBy::Timeout => Some(false),
            ResolvedBy::Cancellation | ResolvedBy::Shutdown => None,
        };
        recorder.resolved(call_id, approved);
    }

    /// Gives a reservation's units back (a call denied, timed out, cancelled, or that never
    /// reached the upstream) and publishes the counters' new state, on the store's thread.
    pub fn release(&self, reservation: &Reservation) {
        if reservation.is_empty() {
            return;
        }
        let reservation = reservation.clone();
        let (policy, hub, clock) = (self.policy.clone(), self.hub.clone(), self.clock.clone());
        self.store.run(move |store| {
            store.release(&reservation);
            publish_counters(store, &policy.load(), &hub, clock.now_ms(), &reservation);
        });
    }

    /// Publishes the state of the budgets an admission took units from, on the store's
    /// thread right after it (calls admitted together publish the state after them once).
    fn counters_publisher(&self) -> crate::policy::store::worker::Then {
        let made = self.counters_publisher.get_or_init(|| {
            let (policy, hub, clock) = (self.policy.clone(), self.hub.clone(), self.clock.clone());
            Arc::new(move |store, reservation| {
                publish_counters(store, &policy.load(), &hub, clock.now_ms(), reservation);
            })
        });
        Arc::clone(made)
    }

    /// Publishes and audits the outcome of a call that went upstream (its record names
    /// the call's trace when it has `spans`).
    #[allow(clippy::too_many_arguments)]
    pub fn record_outcome(
        &self,
        session: &str,
        call_id: &SmolStr,
        tool: &str,
        arrived: Instant,
        error: bool,
        summary: Option<SmolStr>,
        spans: Option<&CallSpans>,
    ) {
        let latency_us = u64::try_from(arrived.elapsed().as_micros()).unwrap_or(u64::MAX);
        // One clock read for the audit record and the event.
        let now = self.clock.now();
        if let Some(audit) = &self.audit {
            let trace = spans.map(CallSpans::ids);
            audit.record(&AuditRecord {
                ts: now,
                kind: "outcome",
                call_id,
                grant: &self.grant,
                session,
                server: &self.server,
                tool,
                decision: None,
                rule: None,
                reason: None,
                arg_keys: None,
                args_hmac: None,
                args: None,
                latency_us: Some(latency_us),
                error: Some(error),
                trace_id: trace.as_ref().map(|(trace, _)| trace.as_str()),
                span_id: trace.as_ref().map(|(_, span)| span.as_str()),
                shadow: None,
            });
        }
        self.hub.publish_made(Arc::new(Event {
            seq: 0,
            ts: now,
            gateway: self.hub.gateway_id(),
            kind: EventKind::Outcome(Outcome {
                call_id: call_id.clone(),
                latency_us,
                error,
                summary,
            }),
        }));
    }

    /// Waits for a held call's resolution: an operator's (through the hub), or the timeout's
    /// denial at `timeout`. Calls `progress` with 1, 2, ... every
    /// [`Gateway::hold_progress_interval`] (first at once) while waiting. Returns `None` when
    /// `stop` completes first (the caller settles the hold itself).
    pub async fn await_resolution<P, S>(
        &self,
        ticket: HoldTicket,
        timeout: Duration,
        mut progress: Option<P>,
        stop: S,
    ) -> Option<Resolution>
    where
        P: FnMut(u64),
        S: Future<Output = ()>,
    {
        let call_id = ticket.call_id.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ticket = std::pin::pin!(ticket.wait());
        let mut stop = std::pin::pin!(stop);
        let mut tick = tokio::time::interval(self.hold_progress_interval);
        let mut ticks = 0u64;
        let mut timed_out = false;
        loop {
            tokio::select! {
                resolution = &mut ticket => return Some(resolution),
                _ = tokio::time::sleep_until(deadline), if !timed_out => {
                    timed_out = true;
                    // If an operator got there first, the ticket carries their resolution.
                    let _ = self.hub.resolve(&call_id, Resolution {
                        approved: false,
                        by: ResolvedBy::Timeout,
                        operator: None,
                        reason: Some(format!(
                            "approval timed out after {}",
                            human_duration(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
                        )),
                    });
                }
                _ = tick.tick(), if progress.is_some() => {
                    ticks += 1;
                    if let Some(progress) = progress.as_mut() {
                        progress(ticks);
                    }
                }
                _ = &mut stop => return None,
            }
        }
    }

    /// Applies `hide` to a `tools/list` result, or says why it cannot be filtered: then the
    /// answer must not reach the client (see [`ToolsPage::read`]).
    pub fn filter_tools_list(&self, result: &RawValue) -> Result<ToolsListed, String> {
        Ok(self.filter_tools_page(ToolsPage::read(result)?, &HashSet::new()))
    }

    /// Applies `hide`, and leaves out the `withheld` tools (quarantined by their pins).
    pub(crate) fn filter_tools_page(
        &self,
        page: ToolsPage,
        withheld: &HashSet<String>,
    ) -> ToolsListed {
        let mut result = page.result;
        let Some(Value::Array(tools)) = result.get_mut("tools") else {
            return ToolsListed {
                offered: Vec::new(),
                result: Value::Object(result),
            };
        };
        let policy = self.policy.load();
        let mut offered = Vec::with_capacity(tools.len());
        let mut kept = Vec::with_capacity(tools.len());
        for tool in std::mem::take(tools) {
            // `ToolsPage::read` checked that every tool has a string name.
            let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
            let hidden = policy.is_hidden(name) || withheld.contains(name);
            if let Ok(info) = serde_json::from_value::<ToolInfo>(tool.clone()) {
                offered.push(info);
            }
            if !hidden {
                kept.push(tool);
            }
        }
        *tools = kept;
        ToolsListed {
            offered,
            result: Value::Object(result),
        }
    }

    /// Why a call to `tool` is refused because its tool is quarantined by its pin (see
    /// [`super::pinning::ToolPins::refusal`]), as the decision to publish; `server_id` is
    /// the identity the connection's pins belong to. One lookup in memory.
    pub(crate) fn pin_refusal(&self, server_id: &str, tool: &str) -> Option<Decision> {
        let pins = self.pins.as_ref()?;
        let refusal = pins.refusal(server_id, tool, &self.policy.load())?;
        Some(Decision {
            verdict: Verdict::Deny,
            rule: refusal.rule.into(),
            reason: refusal.reason.into(),
            retry_after_ms: None,
            hidden: false,
            approval_timeout_ms: None,
            reservation: Reservation::default(),
            tool: tool.into(),
            shadow: None,
        })
    }
}

/// A `tools/list` result read and checked, before filtering.
#[derive(Debug)]
pub(crate) struct ToolsPage {
    result: serde_json::Map<String, Value>,
}

impl ToolsPage {
    /// Reads a `tools/list` result, or says why it cannot be filtered: then the answer must
    /// not reach the client. A result is filtered when it is an object whose `tools` is an
    /// array of objects each with a string `name`; a 2026-07-28 interim result (`resultType`
    /// other than `complete`) may carry no `tools` at all.
    pub(crate) fn read(result: &RawValue) -> Result<ToolsPage, String> {
        // The reasons quote nothing from the result: they reach the client.
        let result: serde_json::Map<String, Value> = serde_json::from_str(result.get())
            .map_err(|_| "the result is not an object".to_owned())?;
        let interim = result
            .get("resultType")
            .is_some_and(|t| t.as_str() != Some("complete"));
        match result.get("tools") {
            Some(Value::Array(tools)) => {
                for (n, tool) in tools.iter().enumerate() {
                    if tool.get("name").and_then(Value::as_str).is_none() {
                        return Err(format!("tool {n} has no string `name`"));
                    }
                }
            }
            None if interim => {}
            None => return Err("the result has no `tools`".into()),
            Some(_) => return Err("`tools` is not an array".into()),
        }
        Ok(ToolsPage { result })
    }

    /// The page's tool entries (none for an interim result).
    pub(crate) fn tools(&self) -> &[Value] {
        match self.result.get("tools") {
            Some(Value::Array(tools)) => tools,
            _ => &[],
        }
    }

    /// The cursor of the next page, if the server says there is one.
    pub(crate) fn next_cursor(&self) -> Option<String> {
        self.result
            .get("nextCursor")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

/// The first step of a decision ([`Gateway::start_decision`]).
pub(crate) enum Deciding {
    /// Decided: no counter needed, or the store answered at once.
    Decided(Decision),
    /// Waiting for the counter store.
    Admitting(Admitting),
    /// Waiting for the counter store's answer into the [`Answers`] given, with this ticket.
    Queued(Queued),
}

/// A call whose one admission (no shadow decision) is answered into an [`Answers`]
/// channel ([`Gateway::start_decision_into`]).
pub(crate) struct Queued {
    policy: Arc<Policy>,
    admissible: Admissible,
    ticket: u64,
}

impl Queued {
    /// The ticket its answer comes back with.
    pub(crate) fn ticket(&self) -> u64 {
        self.ticket
    }

    /// The decision, settled by the policy that judged the call, given the store's answer.
    pub(crate) fn settle(self, answer: Result<Admission, StoreError>) -> Decision {
        self.policy.settle(self.admissible, answer)
    }
}

/// A call whose limits the counter store is admitting: the enforced decision's, and those of
/// its shadow decisions (a shadow rule of the same policy, the shadow policy's own).
pub(crate) struct Admitting {
    policy: Arc<Policy>,
    enforced: Step,
    /// Boxed: most calls have none, and a call waiting for the store is kept small.
    shadows: Option<Box<Shadows>>,
}

/// The shadow sides of a call.
struct Shadows {
    /// A shadow rule of the enforced policy (settled by it).
    rule: Option<Step>,
    /// The `--shadow-policy`, and its side.
    policy: Option<(Arc<Policy>, Step)>,
}

/// One side of a decision: made, or waiting for the store's answer.
enum Step {
    Decided(Decision),
    Admitting(Admissible, Answer),
    /// Answered into an [`Answers`] channel with this ticket (only a call without shadow
    /// decisions, which [`Gateway::start_decision_into`] returns as [`Deciding::Queued`]).
    Queued(Admissible, u64),
}

impl Step {
    fn is_ready(&self) -> bool {
        match self {
            Step::Decided(_) => true,
            Step::Admitting(_, answer) => answer.is_ready(),
            Step::Queued(..) => false,
        }
    }

    /// The decision, settled by `policy` (the one that judged it), once the store answers
    /// (or, after [`crate::policy::store::worker::ANSWER_WITHIN`], what `--counters-fail`
    /// gives a call the store did not answer: denied when closed, admitted uncounted when
    /// open).
    async fn decision(self, policy: &Policy) -> Decision {
        match self {
            Step::Decided(decision) => decision,
            Step::Admitting(admissible, answer) => policy.settle(admissible, answer.get().await),
            // Not reached: such a call is decided from its channel; were it ever, closed.
            Step::Queued(admissible, _) => policy.settle(admissible, Err(not_there())),
        }
    }
}

impl Admitting {
    /// Decided now when the store has already answered every side, else still admitting.
    fn now(self) -> Deciding {
        let ready = self.enforced.is_ready()
            && self.shadows.as_deref().is_none_or(|s| {
                s.rule.as_ref().is_none_or(Step::is_ready)
                    && s.policy.as_ref().is_none_or(|(_, step)| step.is_ready())
            });
        if !ready {
            return Deciding::Admitting(self);
        }
        let Admitting {
            policy,
            enforced,
            shadows,
        } = self;
        let (shadow_rule, shadow_policy) = match shadows {
            Some(s) => (s.rule, s.policy),
            None => (None, None),
        };
        let now = |step: Step, policy: &Policy| match step {
            Step::Decided(decision) => decision,
            Step::Admitting(admissible, Answer::Ready(answer)) => policy.settle(admissible, answer),
            // Not reached (every step is ready); were it ever, the call fails closed.
            Step::Admitting(admissible, Answer::Waiting { .. }) | Step::Queued(admissible, _) => {
                policy.settle(admissible, Err(not_there()))
            }
        };
        let enforced = now(enforced, &policy);
        let shadow_rule = shadow_rule.map(|step| now(step, &policy));
        let shadow_policy = shadow_policy.map(|(candidate, step)| now(step, &candidate));
        Deciding::Decided(with_shadows(enforced, shadow_rule, shadow_policy))
    }

    /// The decision once the store answers (or fails, closed, after
    /// [`crate::policy::store::worker::ANSWER_WITHIN`]), with what its shadows would have
    /// decided when that differs.
    pub(crate) async fn decision(self) -> Decision {
        let policy = self.policy;
        let enforced = self.enforced.decision(&policy).await;
        let (shadow_rule, shadow_policy) = match self.shadows {
            Some(s) => (s.rule, s.policy),
            None => (None, None),
        };
        let shadow_rule = match shadow_rule {
            Some(step) => Some(step.decision(&policy).await),
            None => None,
        };
        let shadow_policy = match shadow_policy {
            Some((candidate, step)) => Some(step.decision(&candidate).await),
            None => None,
        };
        with_shadows(enforced, shadow_rule, shadow_policy)
    }
}

/// The error a step whose answer is not where it is looked for fails closed with.
fn not_there() -> StoreError {
    StoreError::new(
        crate::policy::StoreErrorKind::Other,
        "the counter store's answer was not there",
    )
}

/// The enforced decision with the first of its shadow decisions that differs from it (a
/// shadow rule's before the shadow policy's).
fn with_shadows(
    mut decision: Decision,
    shadow_rule: Option<Decision>,
    shadow_policy: Option<Decision>,
) -> Decision {
    decision.shadow = shadow_rule
        .and_then(|s| Shadow::between(&decision, s, ShadowSource::Rule))
        .or_else(|| {
            shadow_policy.and_then(|s| Shadow::between(&decision, s, ShadowSource::Policy))
        });
    decision
}

/// Reads and publishes the state of the budgets `reservation` touched, each for its own
/// scope key only.
fn publish_counters(
    store: &dyn CounterStore,
    policy: &Policy,
    hub: &Hub,
    now_ms: u64,
    reservation: &Reservation,
) {
    match policy.counter_states_for(store, now_ms, reservation) {
        Ok(counters) if !counters.is_empty() => {
            hub.publish(EventKind::Counters(Counters { counters }));
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read counter state: {e}"),
    }
}

/// The denial of a call made while the audit log cannot be written; it takes no units.
fn audit_refusal(tool: &str, reason: String) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        rule: SmolStr::new_static("--audit-fail closed"),
        reason: reason.into(),
        retry_after_ms: None,
        hidden: false,
        approval_timeout_ms: None,
        reservation: Reservation::default(),
        tool: tool.into(),
        shadow: None,
    }
}

/// What the agent reads when a held call ends without approval.
pub(crate) fn refusal_text(resolution: &Resolution) -> String {
    match (resolution.by, resolution.reason.as_deref()) {
        (ResolvedBy::Operator, Some(reason)) if !reason.is_empty() => {
            format!("Denied by an operator: {reason}")
        }
        (ResolvedBy::Operator, _) => "Denied by an operator.".to_owned(),
        (_, Some(reason)) => format!("Not approved: {reason}"),
        (_, None) => "Not approved.".to_owned(),
    }
}

/// What a `tools/call` answer says, for the outcome event.
pub(crate) struct CallAnswer {
    /// A JSON-RPC error, `isError: true`, or an unreadable result.
    pub error: bool,
    /// A 2026-07-28 `input_required` interim result: the call continues in a retry.
    pub input_required: bool,
    /// The error message or the first text content, cut short (inline when short).
    pub summary: Option<SmolStr>,
}

impl CallAnswer {
    /// Reads an answer (`result` or `error`) to a `tools/call`.
    pub(crate) fn of(env: &Envelope<'_>) -> CallAnswer {
        #[derive(Deserialize)]
        struct Result<'a> {
            #[serde(default, rename = "isError")]
            is_error: bool,
            #[serde(default, rename = "resultType")]
            result_type: Option<std::borrow::Cow<'a, str>>,
            #[serde(default, borrow)]
            content: FirstItem<'a>,
        }
        #[derive(Deserialize)]
        struct Error {
            #[serde(default)]
            message: Option<String>,
        }
        if let Some(error) = env.error {
            let message = serde_json::from_str::<Error>(error.get())
                .ok()
                .and_then(|e| e.message);
            return CallAnswer {
                error: true,
                input_required: false,
                summary: message.map(|m| cap(&m)),
            };
        }
        let unreadable = || CallAnswer {
            error: true,
            input_required: false,
            summary: Some(SmolStr::new_static("unreadable result")),
        };
        let Some(result) = env.result else {
            return unreadable();
        };
        if result.get().starts_with('{') {
            // Read from the members the line's one pass found, as serde reads them below.
            return CallAnswer::of_members(&env.result_members).unwrap_or_else(unreadable);
        }
        let Ok(result) = serde_json::from_str::<Result<'_>>(result.get()) else {
            return unreadable();
        };
        let summary = result
            .content
            .0
            .and_then(|c| serde_json::from_str::<Text<'_>>(c.get()).ok())
            .and_then(|t| t.text)
            .map(|t| cap(&t));
        CallAnswer {
            error: result.is_error,
            input_required: result.result_type.as_deref() == Some("input_required"),
            summary,
        }
    }

    /// An object `result` from its members: `isError` a boolean, `resultType` a string or
    /// null, `content` an array, when present (else `None`: unreadable); the summary is the
    /// first content's `text` when it is a string.
    fn of_members(result: &ResultMembers<'_>) -> Option<CallAnswer> {
        let error = match result.is_error {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return None,
        };
        let input_required = match result.result_type {
            None | Some("null") => false,
            Some(t) => string_value(t)? == "input_required",
        };
        let first = match result.content {
            None => None,
            Some(content) if content.starts_with('[') => result.first_content,
            Some(_) => return None,
        };
        let summary = match first {
            Some(first) if first.starts_with('{') => result.first_text.and_then(string_value),
            // serde reads a struct from an array too.
            Some(first) => serde_json::from_str::<Text<'_>>(first)
                .ok()
                .and_then(|t| t.text),
            None => None,
        };
        Some(CallAnswer {
            error,
            input_required,
            summary: summary.map(|t| cap(&t)),
        })
    }
}

/// The first content item of a result, read for its `text` only.
#[derive(Deserialize)]
struct Text<'a> {
    #[serde(default, borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
}

/// The first item of an array, the others read past without being kept.
#[derive(Default)]
struct FirstItem<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstItem<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items;
        impl<'de> serde::de::Visitor<'de> for Items {
            type Value = Option<&'de RawValue>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut items: A,
            ) -> Result<Option<&'de RawValue>, A::Error> {
                let first = items.next_element::<&'de RawValue>()?;
                while items.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(first)
            }
        }
        d.deserialize_seq(Items).map(FirstItem)
    }
}

fn cap(text: &str) -> SmolStr {
    match text.char_indices().nth(SUMMARY_CAP) {
        Some((cut, _)) => smol_str::format_smolstr!("{}…", &text[..cut]),
        None => SmolStr::new(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::jsonrpc::{self, Parsed};

    /// The outcome as serde reads the whole `result` (as it was read before the one pass).
    fn by_serde(result: &str) -> (bool, bool, Option<SmolStr>) {
        #[derive(Deserialize)]
        struct Whole<'a> {
            #[serde(default, rename = "isError")]
            is_error: bool,
            #[serde(default, rename = "resultType")]
            result_type: Option<std::borrow::Cow<'a, str>>,
            #[serde(default, borrow)]
            content: FirstItem<'a>,
        }
        let Ok(whole) = serde_json::from_str::<Whole<'_>>(result) else {
            return (true, false, Some("unreadable result".into()));
        };
        let summary = whole
            .content
            .0
            .and_then(|c| serde_json::from_str::<Text<'_>>(c.get()).ok())
            .and_then(|t| t.text)
            .map(|t| cap(&t));
        let input_required = whole.result_type.as_deref() == Some("input_required");
        (whole.is_error, input_required, summary)
    }

    #[test]
    fn an_answer_is_read_from_its_members_as_serde_reads_the_whole_result() {
        let long = format!(r#"{{"content":[{{"text":"{}"}}]}}"#, "é".repeat(300));
        for result in [
            r#"{"content":[{"type":"text","text":"ok"}]}"#,
            r#"{"content":[{"type":"text","text":"a\nb\u00e9"}],"isError":true}"#,
            r#"{"isError":false,"content":[]}"#,
            r#"{"isError":null,"content":[]}"#,
            r#"{"isError":"true"}"#,
            r#"{"resultType":"input_required","content":[{"text":"more"}]}"#,
            r#"{"resultType":"input_\u0072equired"}"#,
            r#"{"resultType":null}"#,
            r#"{"resultType":7}"#,
            r#"{"content":null}"#,
            r#"{"content":{"text":"x"}}"#,
            r#"{"content":["just text",{"text":"second"}]}"#,
            r#"{"content":[["in an array"]]}"#,
            r#"{"content":[{"text":5}]}"#,
            r#"{"content":[{"text":null,"type":"image"}]}"#,
            r#"{"content":[{"type":"text","text":"x","text2":"y"}],"structuredContent":{"text":"z"}}"#,
            r#"{"other":{"content":[{"text":"not this"}]}}"#,
            r#"{}"#,
            r#"[false, null, [{"text":"by position"}]]"#,
            r#"[]"#,
            r#""a string""#,
            r#"null"#,
            long.as_str(),
        ] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{result}}}"#);
            let Parsed::Message(env) = jsonrpc::parse(line.as_bytes()) else {
                panic!("{line} is not a message")
            };
            let answer = CallAnswer::of(&env);
            assert_eq!(
                (answer.error, answer.input_required, answer.summary),
                by_serde(result),
                "{result}"
            );
        }
    }
}
