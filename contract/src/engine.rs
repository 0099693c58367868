//! The orchestration decision of one execution, as a pure function:
//! `(state, event) → (new state, actions)` (wiki/spec.md §4.2, §4.3).
//!
//! The server loads an execution's state under its row lock, calls [`decide`], and then
//! performs what the [`Decision`] lists: write the changed steps, append the records to the
//! event log, put the dispatches in the outbox. Nothing here does IO, so every rule of the
//! lifecycle (fencing, retries, skips, exactly one terminal state) is tested without NATS or
//! PostgreSQL.

pub mod children;
mod context;
mod policy;
mod routing;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::command::StepOutcome;
use crate::playbook::{Playbook, Step};
use crate::status::ExecutionStatus;
use crate::step::{Attempt, StepIndex};
use crate::template::Budget;

// The statuses the engine moves, reachable from here too.
pub use crate::status::StepStatus;
pub use context::{CTX_TOO_LARGE, MAX_CTX_BYTES, MAX_EVENT_VALUE_BYTES};
pub use policy::GOTO_BUDGET_EXCEEDED;
pub use routing::CONDITION_FAILED;
use routing::{dispatch_ready, skip_unreachable};

/// What the engine knows of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub status: StepStatus,
    /// The current attempt ([`Attempt::NONE`] before the first dispatch).
    pub attempt: Attempt,
    pub result: Option<Value>,
    pub error: Option<String>,
}

impl StepState {
    pub fn new() -> Self {
        Self {
            status: StepStatus::Pending,
            attempt: Attempt::NONE,
            result: None,
            error: None,
        }
    }
}

impl Default for StepState {
    fn default() -> Self {
        Self::new()
    }
}

/// An execution as the engine sees it. `steps[i]` belongs to `playbook.steps[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionState {
    pub playbook: Playbook,
    /// The playbook's default input overridden by the execution's input.
    pub input: Value,
    pub status: ExecutionStatus,
    pub steps: Vec<StepState>,
    /// The execution's variables, written by the steps' `set`, read by templates as `ctx`.
    pub ctx: serde_json::Map<String, Value>,
    /// The `goto`s of `on_error` rules taken so far (at most the playbook's `max_gotos`).
    pub gotos: u32,
    /// What rendering one step's `with` may cost (a setting of the server).
    pub budget: Budget,
    /// Its depth among executions started by `playbook` steps, and how deep a child may be.
    pub nesting: children::Nesting,
}

impl ExecutionState {
    /// A freshly submitted execution: every step pending.
    pub fn new(playbook: Playbook, input: Value) -> Self {
        let mut merged = playbook.input.clone().unwrap_or_default();
        if let Value::Object(given) = input {
            merged.extend(given);
        }
        let steps = vec![StepState::new(); playbook.steps.len()];
        Self {
            playbook,
            input: Value::Object(merged),
            status: ExecutionStatus::Pending,
            steps,
            ctx: serde_json::Map::new(),
            gotos: 0,
            budget: Budget::default(),
            nesting: children::Nesting::default(),
        }
    }

    /// Whether any step renders a template, sets a variable, or an arc has a condition, so
    /// deciding may cost a render's budget.
    pub fn renders_templates(&self) -> bool {
        self.playbook.has_conditions()
            || self
                .playbook
                .steps
                .iter()
                .any(|step| crate::template::has_templates(&step.with) || !step.set.is_empty())
    }

    fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// The indexes of the execution's steps, in playbook order.
    fn indexes(&self) -> impl Iterator<Item = StepIndex> {
        StepIndex::all(self.steps.len())
    }

    /// What the playbook says of step `i`.
    fn spec(&self, i: StepIndex) -> &Step {
        &self.playbook.steps[i.index()]
    }

    fn step(&self, i: StepIndex) -> &StepState {
        &self.steps[i.index()]
    }

    fn step_mut(&mut self, i: StepIndex) -> &mut StepState {
        &mut self.steps[i.index()]
    }

    fn index_of(&self, name: &str) -> Option<StepIndex> {
        self.indexes().find(|&i| self.spec(i).name == name)
    }

    /// `{input, ctx, steps: {<name>: {result}}}` for templates: only steps that succeeded.
    fn template_context(&self) -> Value {
        let steps: serde_json::Map<String, Value> = self
            .playbook
            .steps
            .iter()
            .zip(&self.steps)
            .filter(|(_, state)| state.status == StepStatus::Succeeded)
            .map(|(step, state)| {
                (
                    step.name.clone(),
                    json!({"result": state.result.clone().unwrap_or(Value::Null)}),
                )
            })
            .collect();
        json!({"input": self.input, "ctx": self.ctx, "steps": steps})
    }
}

/// Something that happened to an execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The execution was committed: start it.
    Created,
    /// A worker began an attempt (its first heartbeat).
    Started { step: StepIndex, attempt: Attempt },
    /// A worker finished an attempt, which it started at `started_at_ms` by its clock (the
    /// step's `started_at` when no heartbeat recorded one; the decision does not depend on it).
    Finished {
        step: StepIndex,
        attempt: Attempt,
        outcome: StepOutcome,
        started_at_ms: i64,
    },
    /// An attempt's lease ran out: its worker is presumed dead.
    LeaseExpired { step: StepIndex, attempt: Attempt },
    /// An attempt's command could not be handed to the workers and never will be (it is over
    /// NATS `max_payload`): the step fails at once with `error`, without a retry.
    Undeliverable {
        step: StepIndex,
        attempt: Attempt,
        error: String,
    },
    /// Someone asked to cancel the execution.
    Cancel,
}

/// Send one attempt of a step to the workers, after `delay_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub step: StepIndex,
    pub attempt: Attempt,
    /// The step's `with`, rendered.
    pub with: Value,
    pub delay_ms: u64,
}

/// One entry for the execution's event log.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub kind: &'static str,
    pub payload: Value,
}

/// What [`decide`] concluded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// `false` when the event changes nothing: a stale or duplicate report, a cancel of an
    /// execution that already ended. The caller records nothing and answers "stale".
    pub applied: bool,
    pub dispatches: Vec<Dispatch>,
    pub records: Vec<Record>,
    /// Steps whose state changed, to be written back.
    pub changed: Vec<StepIndex>,
    /// Set once, by the event that ended the execution.
    pub finished: Option<ExecutionStatus>,
    /// The first step whose `with` went over its budget or rendered what cannot be stored
    /// (the step is failed with it; at submit, the submit is refused with it).
    pub refused: Option<Refusal>,
    /// Whether a step's `set` wrote into the execution's `ctx` (to be stored).
    pub ctx_changed: bool,
}

/// A step's render refused with a code ([`crate::template::RenderError::code`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub step: String,
    pub code: &'static str,
    /// Names the field (`with.url: …`).
    pub message: String,
}

impl Decision {
    fn record(&mut self, kind: &'static str, payload: Value) {
        self.records.push(Record { kind, payload });
    }

    fn changed(&mut self, step: StepIndex) {
        if !self.changed.contains(&step) {
            self.changed.push(step);
        }
    }
}

/// Applies `event` to `state` and says what must happen as a result.
pub fn decide(state: &mut ExecutionState, event: Event) -> Decision {
    let mut decision = Decision::default();
    if state.is_terminal() {
        return decision;
    }
    match event {
        Event::Created => {
            if state.status != ExecutionStatus::Pending {
                return decision;
            }
            state.status = ExecutionStatus::Running;
            decision.record("execution_started", json!({}));
            dispatch_ready(state, &mut decision);
        }
        Event::Started { step, attempt } => {
            if !is_current(state, step, attempt)
                || state.step(step).status != StepStatus::Dispatched
            {
                return decision;
            }
            state.step_mut(step).status = StepStatus::Running;
            decision.changed(step);
            decision.record("step_started", step_payload(state, step, json!({})));
        }
        Event::Finished {
            step,
            attempt,
            outcome,
            started_at_ms: _,
        } => {
            if !is_current(state, step, attempt) {
                return decision;
            }
            if state.step(step).status == StepStatus::Dispatched {
                // A step short enough to finish before it was marked running: its start still
                // belongs in the log.
                decision.record("step_started", step_payload(state, step, json!({})));
            }
            match outcome {
                StepOutcome::Succeeded { result } => {
                    routing::succeed(state, step, result, &mut decision);
                }
                StepOutcome::Failed { error } => {
                    let budget = max_attempts(state, step);
                    fail_attempt(state, step, error, budget, &mut decision);
                }
            }
        }
        Event::LeaseExpired { step, attempt } => {
            if !is_current(state, step, attempt) {
                return decision;
            }
            let error = "the lease expired: the worker is presumed dead".to_owned();
            // A lost worker is not the step's fault: it is re-dispatched even without a retry
            // policy, up to LOST_ATTEMPTS attempts, so a step that kills its worker every time
            // still ends.
            let budget = max_attempts(state, step).max(LOST_ATTEMPTS);
            fail_attempt(state, step, error, budget, &mut decision);
        }
        Event::Undeliverable {
            step,
            attempt,
            error,
        } => {
            if !is_current(state, step, attempt) {
                return decision;
            }
            // Deterministic: every retry would render the same command.
            fail_attempt(state, step, error, 0, &mut decision);
        }
        Event::Cancel => {
            state.status = ExecutionStatus::Cancelled;
            for i in StepIndex::all(state.steps.len()) {
                if !state.step(i).status.is_terminal() {
                    state.step_mut(i).status = StepStatus::Cancelled;
                    decision.changed(i);
                    decision.record("step_cancelled", step_payload(state, i, json!({})));
                }
            }
            decision.record("execution_cancelled", json!({}));
            decision.finished = Some(ExecutionStatus::Cancelled);
            decision.applied = true;
            return decision;
        }
    }
    decision.applied = true;
    finish_if_done(state, &mut decision);
    decision
}

/// Attempts a step gets when its workers keep vanishing, whatever its retry policy.
pub const LOST_ATTEMPTS: u32 = 3;

fn max_attempts(state: &ExecutionState, step: StepIndex) -> u32 {
    state.spec(step).retry.map_or(1, |r| r.max_attempts)
}

/// Whether a report is for the attempt that currently owns the step (fencing).
fn is_current(state: &ExecutionState, step: StepIndex, attempt: Attempt) -> bool {
    state
        .steps
        .get(step.index())
        .is_some_and(|s| s.attempt == attempt && s.status.is_in_flight())
}

fn step_payload(state: &ExecutionState, step: StepIndex, extra: Value) -> Value {
    let mut payload = json!({
        "step": state.spec(step).name,
        "attempt": state.step(step).attempt,
    });
    if let (Value::Object(payload), Value::Object(extra)) = (&mut payload, extra) {
        payload.extend(extra);
    }
    payload
}

/// A failed attempt: the step's `on_error` rules decide ([`policy`]); by default, and on
/// `retry`, retry within the budget (with exponential backoff), else fail the step and skip
/// everything that can no longer run.
fn fail_attempt(
    state: &mut ExecutionState,
    step: StepIndex,
    error: String,
    max_attempts: u32,
    decision: &mut Decision,
) {
    let attempt = state.step(step).attempt;
    decision.changed(step);
    let retries = match policy::choose(state, step, &error) {
        Err(message) => return fail_step(state, step, message, decision),
        Ok(policy::Policy::Fail) => false,
        Ok(policy::Policy::Retry) => true,
        Ok(policy::Policy::Continue) => {
            return policy::continue_after(state, step, error, decision)
        }
        Ok(policy::Policy::Goto(target)) => {
            return policy::goto(state, step, target, error, decision)
        }
    };
    if retries && attempt.get() < max_attempts {
        let backoff = state.spec(step).retry.map_or(0, |r| r.backoff.0);
        // Attempts in flight count from 1: the first retry waits `backoff`.
        let doublings = attempt.get().saturating_sub(1).min(20);
        let delay_ms = backoff
            .saturating_mul(1u64 << doublings)
            .min(crate::playbook::MAX_RETRY_DELAY_MS);
        decision.record(
            "step_attempt_failed",
            step_payload(
                state,
                step,
                json!({"error": error, "retry_in_ms": delay_ms}),
            ),
        );
        dispatch(state, step, attempt.next(), delay_ms, decision);
        return;
    }
    fail_step(state, step, error, decision);
}

/// Fails the step with `error`, and skips everything that can no longer run.
fn fail_step(state: &mut ExecutionState, step: StepIndex, error: String, decision: &mut Decision) {
    let s = state.step_mut(step);
    s.status = StepStatus::Failed;
    s.error = Some(error.clone());
    decision.changed(step);
    decision.record(
        "step_failed",
        step_payload(state, step, json!({"error": error})),
    );
    skip_unreachable(state, decision);
}

/// Renders and dispatches one attempt; a template that does not render fails the step at once
/// (retrying cannot fix it).
fn dispatch(
    state: &mut ExecutionState,
    step: StepIndex,
    attempt: Attempt,
    delay_ms: u64,
    decision: &mut Decision,
) {
    state.step_mut(step).attempt = attempt;
    decision.changed(step);
    let spec = state.spec(step);
    if spec.is_child() {
        if let Err(error) = state.nesting.admits_child() {
            return fail_step(state, step, error, decision);
        }
    }
    let rendered = if spec.is_child() {
        children::render(&spec.with, &state.template_context(), &state.budget)
    } else {
        crate::template::render(&spec.with, &state.template_context(), &state.budget)
    };
    match rendered {
        Ok(with) => {
            state.step_mut(step).status = StepStatus::Dispatched;
            // The rendered arguments go into the log, so a run can be explained afterwards.
            decision.record(
                "step_dispatched",
                step_payload(state, step, json!({"with": with, "delay_ms": delay_ms})),
            );
            decision.dispatches.push(Dispatch {
                step,
                attempt,
                with,
                delay_ms,
            });
        }
        Err(error) => {
            if let (Some(code), None) = (error.code(), &decision.refused) {
                decision.refused = Some(Refusal {
                    step: state.spec(step).name.clone(),
                    code,
                    message: error.message().to_owned(),
                });
            }
            let s = state.step_mut(step);
            s.status = StepStatus::Failed;
            s.error = Some(error.to_string());
            let error = s.error.clone();
            decision.record(
                "step_failed",
                step_payload(state, step, json!({"error": error})),
            );
            skip_unreachable(state, decision);
        }
    }
}

/// Ends the execution once no step can make progress: succeeded when every step succeeded or
/// was skipped (skips after a failure come with the failed step).
fn finish_if_done(state: &mut ExecutionState, decision: &mut Decision) {
    if state.is_terminal() || state.steps.iter().any(|s| !s.status.is_terminal()) {
        return;
    }
    let status = if state
        .steps
        .iter()
        .all(|s| matches!(s.status, StepStatus::Succeeded | StepStatus::Skipped))
    {
        ExecutionStatus::Succeeded
    } else {
        ExecutionStatus::Failed
    };
    state.status = status;
    decision.finished = Some(status);
    let kind = match status {
        ExecutionStatus::Succeeded => "execution_succeeded",
        _ => "execution_failed",
    };
    decision.record(kind, json!({}));
}

#[cfg(test)]
mod tests;
