//! Loops (wiki/playbooks.md, "Loops"; wiki/execution-model.md, "How a loop runs").
//!
//! A loop step becomes `running` when it is ready: its `loop.in` is rendered to a list, every
//! item is created `pending` ([`ItemState`], one stored row each), and up to `max_in_flight`
//! items are dispatched. Each item runs as attempts of its own, fenced like a step's: every
//! attempt of every item takes the next number of the step's attempt counter, so attempt
//! numbers (and command ids) never repeat within a step, even after a `goto`. The step keeps
//! only counters ([`LoopProgress`]); the engine sees just the items an event names and the next
//! ones to dispatch, which the server loads.
//!
//! An item whose attempt fails retries within the step's `retry`; one that fails for good asks
//! the step's `on_error` rules: `continue` puts `{"error": …}` in its slot and the loop goes
//! on, `goto` leaves the loop for the target, anything else fails the step at once (items still
//! in flight are then stale). When every item ended, [`Decision::collect`] asks the server for
//! the list of results, which comes back as [`Event::LoopCollected`] and succeeds the step.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    fail_render, fail_step, max_attempts, policy, retry_delay_ms, routing, step_payload, Decision,
    Dispatch, ExecutionState, StepStatus, LOST_ATTEMPTS,
};
use crate::command::StepOutcome;
use crate::step::{Attempt, StepIndex};

/// The step error code of a loop over more items than the server's `max_loop_items`.
pub const LOOP_TOO_LARGE: &str = "loop_too_large";
/// The step error code of a `loop.in` that does not render a list.
pub const LOOP_NOT_A_LIST: &str = "loop_not_a_list";
/// The default of the server's `max_loop_items`.
pub const DEFAULT_MAX_LOOP_ITEMS: u32 = 10_000;

/// Where a loop step stands: counters only, whatever the number of items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoopProgress {
    /// Items in the list.
    pub total: u32,
    /// The first item not dispatched yet.
    pub next: u32,
    /// Items that succeeded.
    pub succeeded: u32,
    /// Items that failed for good (their slot holds `{"error": …}` under `continue`).
    pub failed: u32,
    /// Items dispatched or running.
    pub in_flight: u32,
}

impl LoopProgress {
    /// Whether every item ended.
    pub fn is_done(&self) -> bool {
        self.next == self.total && self.in_flight == 0
    }
}

/// One item of a loop, as far as the engine was shown it.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemState {
    pub status: StepStatus,
    /// Its current attempt: a number of the step's attempt counter ([`Attempt::NONE`] before).
    pub attempt: Attempt,
    /// Its attempts so far, for the step's retry budget.
    pub tries: u32,
    /// The list's entry, bound to the loop's iterator.
    pub value: Value,
    /// Its result (`{"error": …}` for a failed item the step's `on_error` continued).
    pub result: Option<Value>,
    pub error: Option<String>,
}

impl ItemState {
    pub fn new(value: Value) -> Self {
        Self {
            status: StepStatus::Pending,
            attempt: Attempt::NONE,
            tries: 0,
            value,
            result: None,
            error: None,
        }
    }
}

/// Starts loop `step` (made ready): renders its list and dispatches the first items.
pub(super) fn start(state: &mut ExecutionState, step: StepIndex, decision: &mut Decision) {
    let Some(looped) = state.spec(step).loop_.clone() else {
        return;
    };
    decision.changed(step);
    let mut fields = serde_json::Map::new();
    fields.insert("in".to_owned(), looped.items.clone().into());
    let rendered =
        crate::template::render_fields("loop", &fields, &state.template_context(), &state.budget);
    let list = match rendered {
        Err(error) => return fail_render(state, step, &error, decision),
        Ok(mut object) => object["in"].take(),
    };
    let Value::Array(list) = list else {
        let kind = match list {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            _ => "an object",
        };
        let message = format!("{LOOP_NOT_A_LIST}: loop.in rendered {kind}, not a list");
        return fail_step(state, step, message, decision);
    };
    let max = state.max_loop_items;
    let total = u32::try_from(list.len()).unwrap_or(u32::MAX);
    if total > max {
        let message = format!(
            "{LOOP_TOO_LARGE}: loop.in rendered {} items, over the limit of {max} \
             (max_loop_items)",
            list.len()
        );
        if decision.refused.is_none() {
            decision.refused = Some(super::Refusal {
                step: state.spec(step).name.clone(),
                code: LOOP_TOO_LARGE,
                message: message.clone(),
            });
        }
        return fail_step(state, step, message, decision);
    }
    let s = state.step_mut(step);
    s.status = StepStatus::Running;
    s.result = None;
    s.error = None;
    s.loop_ = Some(LoopProgress {
        total,
        ..LoopProgress::default()
    });
    decision.loops_started.push(step);
    for (k, value) in (0..).zip(list) {
        state.items.insert((step, k), ItemState::new(value));
        decision.item_changed(step, k);
    }
    decision.record(
        "loop_started",
        step_payload(
            state,
            step,
            json!({"items": total, "max_in_flight": looped.in_flight()}),
        ),
    );
    if total == 0 {
        decision.record(
            "loop_succeeded",
            step_payload(state, step, json!({"items": 0})),
        );
        return routing::succeed(state, step, json!([]), decision);
    }
    advance(state, step, decision);
}

/// Dispatches the next items while the loop has room and items it was shown.
fn fill(state: &mut ExecutionState, step: StepIndex, decision: &mut Decision) {
    let limit = state.spec(step).loop_.as_ref().map_or(1, |l| l.in_flight());
    while let Some(progress) = state.step(step).loop_ {
        if progress.in_flight >= limit || progress.next >= progress.total {
            return;
        }
        if !state.items.contains_key(&(step, progress.next)) {
            // Not loaded: the server loads as many next items as events it applies.
            return;
        }
        let k = progress.next;
        if let Some(p) = state.step_mut(step).loop_.as_mut() {
            p.next += 1;
            p.in_flight += 1;
        }
        // An item that cannot render and is continued leaves room for the next.
        dispatch_item(state, step, k, 0, decision);
        if state.step(step).status != StepStatus::Running {
            return;
        }
    }
}

/// Renders the step's `with` for item `k` and dispatches its next attempt. `true`: it could not
/// render, the item failed for good, and the loop goes on (`continue`).
fn dispatch_item(
    state: &mut ExecutionState,
    step: StepIndex,
    k: u32,
    delay_ms: u64,
    decision: &mut Decision,
) -> bool {
    let attempt = state.step(step).attempt.next();
    state.step_mut(step).attempt = attempt;
    decision.changed(step);
    decision.item_changed(step, k);
    let Some(item) = state.items.get_mut(&(step, k)) else {
        return false;
    };
    item.attempt = attempt;
    item.tries += 1;
    let value = item.value.clone();
    let iterator = state
        .spec(step)
        .loop_
        .as_ref()
        .map_or_else(String::new, |l| l.iterator.clone());
    let mut context = state.template_context();
    context[iterator.as_str()] = value;
    context["loop"] = json!({ "index": k });
    match crate::template::render(&state.spec(step).with, &context, &state.budget) {
        Ok(with) => {
            if let Some(item) = state.items.get_mut(&(step, k)) {
                item.status = StepStatus::Dispatched;
            }
            decision.record(
                "item_dispatched",
                item_payload(state, step, k, json!({"with": with, "delay_ms": delay_ms})),
            );
            decision.dispatches.push(Dispatch {
                step,
                attempt,
                with,
                delay_ms,
                item: Some(k),
            });
            false
        }
        // Every attempt of the item would render the same: it fails for good.
        Err(error) => {
            let error = error.to_string();
            let policy = policy::choose(state, step, &error);
            end_item_failed(state, step, k, error, policy, decision)
        }
    }
}

fn item_payload(state: &ExecutionState, step: StepIndex, k: u32, extra: Value) -> Value {
    let attempt = state
        .items
        .get(&(step, k))
        .map_or(Attempt::NONE, |i| i.attempt);
    let mut payload = json!({"step": state.spec(step).name, "item": k, "attempt": attempt});
    if let (Value::Object(payload), Value::Object(extra)) = (&mut payload, extra) {
        payload.extend(extra);
    }
    payload
}

/// Applies an event of item `k` (`event` names its step and attempt). `false`: stale.
pub(super) fn apply(
    state: &mut ExecutionState,
    k: u32,
    event: super::Event,
    decision: &mut Decision,
) -> bool {
    use super::Event;
    let (step, attempt) = match &event {
        Event::Started { step, attempt }
        | Event::Finished { step, attempt, .. }
        | Event::LeaseExpired { step, attempt }
        | Event::Undeliverable { step, attempt, .. } => (*step, *attempt),
        _ => return false,
    };
    let current = state
        .steps
        .get(step.index())
        .is_some_and(|s| s.status == StepStatus::Running && s.loop_.is_some())
        && state
            .items
            .get(&(step, k))
            .is_some_and(|i| i.attempt == attempt && i.status.is_in_flight());
    if !current {
        return false;
    }
    match event {
        Event::Started { .. } => {
            if state.items.get(&(step, k)).map(|i| i.status) != Some(StepStatus::Dispatched) {
                return false;
            }
            set_status(state, step, k, StepStatus::Running);
            decision.item_changed(step, k);
            decision.record("item_started", item_payload(state, step, k, json!({})));
        }
        Event::Finished { outcome, .. } => {
            if state.items.get(&(step, k)).map(|i| i.status) == Some(StepStatus::Dispatched) {
                decision.record("item_started", item_payload(state, step, k, json!({})));
            }
            match outcome {
                StepOutcome::Succeeded { result } => {
                    decision.record(
                        "item_succeeded",
                        item_payload(state, step, k, json!({"result": result})),
                    );
                    end_item(
                        state,
                        step,
                        k,
                        StepStatus::Succeeded,
                        result,
                        None,
                        decision,
                    );
                    advance(state, step, decision);
                }
                StepOutcome::Failed { error } => {
                    let budget = max_attempts(state, step);
                    fail_item_attempt(state, step, k, error, budget, decision);
                }
            }
        }
        Event::LeaseExpired { .. } => {
            let error = "the lease expired: the worker is presumed dead".to_owned();
            let budget = max_attempts(state, step).max(LOST_ATTEMPTS);
            fail_item_attempt(state, step, k, error, budget, decision);
        }
        Event::Undeliverable { error, .. } => {
            fail_item_attempt(state, step, k, error, 0, decision);
        }
        _ => return false,
    }
    true
}

fn set_status(state: &mut ExecutionState, step: StepIndex, k: u32, status: StepStatus) {
    if let Some(item) = state.items.get_mut(&(step, k)) {
        item.status = status;
    }
}

/// A failed attempt of item `k`: another within the budget (with the step's backoff), else the
/// item fails for good.
fn fail_item_attempt(
    state: &mut ExecutionState,
    step: StepIndex,
    k: u32,
    error: String,
    budget: u32,
    decision: &mut Decision,
) {
    decision.item_changed(step, k);
    let tries = state.items.get(&(step, k)).map_or(u32::MAX, |i| i.tries);
    let policy = policy::choose(state, step, &error);
    let retries = matches!(policy, Ok(policy::Policy::Retry));
    if retries && tries < budget {
        let delay_ms = retry_delay_ms(state, step, tries);
        decision.record(
            "item_attempt_failed",
            item_payload(
                state,
                step,
                k,
                json!({"error": error, "retry_in_ms": delay_ms}),
            ),
        );
        if dispatch_item(state, step, k, delay_ms, decision) {
            advance(state, step, decision);
        }
        return;
    }
    if end_item_failed(state, step, k, error, policy, decision) {
        advance(state, step, decision);
    }
}

/// Item `k` failed for good: `policy`, what the step's `on_error` chose for `error`, decides
/// what the loop does. `true`: the loop goes on (`continue`), and the caller advances it.
fn end_item_failed(
    state: &mut ExecutionState,
    step: StepIndex,
    k: u32,
    error: String,
    policy: Result<policy::Policy, String>,
    decision: &mut Decision,
) -> bool {
    decision.record(
        "item_failed",
        item_payload(state, step, k, json!({"error": error})),
    );
    let result = json!({ "error": error });
    end_item(
        state,
        step,
        k,
        StepStatus::Failed,
        result,
        Some(error.clone()),
        decision,
    );
    let message = format!("item {k} failed: {error}");
    match policy {
        Ok(policy::Policy::Continue) => return true,
        Ok(policy::Policy::Goto(target)) => policy::goto(state, step, target, message, decision),
        Err(message) => fail_step(state, step, message, decision),
        Ok(_) => fail_step(state, step, message, decision),
    }
    false
}

/// Item `k` ended (`Succeeded` with its result, or `Failed`): frees its place.
fn end_item(
    state: &mut ExecutionState,
    step: StepIndex,
    k: u32,
    status: StepStatus,
    result: Value,
    error: Option<String>,
    decision: &mut Decision,
) {
    decision.item_changed(step, k);
    decision.changed(step);
    if let Some(item) = state.items.get_mut(&(step, k)) {
        item.status = status;
        item.result = Some(result);
        item.error = error;
    }
    if let Some(p) = state.step_mut(step).loop_.as_mut() {
        p.in_flight = p.in_flight.saturating_sub(1);
        if status == StepStatus::Succeeded {
            p.succeeded += 1;
        } else {
            p.failed += 1;
        }
    }
}

/// Dispatches the next items, and asks for the results once every item ended.
fn advance(state: &mut ExecutionState, step: StepIndex, decision: &mut Decision) {
    fill(state, step, decision);
    if state.step(step).status == StepStatus::Running
        && state.step(step).loop_.is_some_and(|p| p.is_done())
    {
        decision.collect.push(step);
    }
}

/// Every item of `step` ended, and `result` is their results in item order: the step succeeds.
pub(super) fn collected(
    state: &mut ExecutionState,
    step: StepIndex,
    result: Value,
    decision: &mut Decision,
) -> bool {
    let done = state
        .steps
        .get(step.index())
        .is_some_and(|s| s.status == StepStatus::Running && s.loop_.is_some_and(|p| p.is_done()));
    if !done {
        return false;
    }
    let progress = state.step(step).loop_.unwrap_or_default();
    decision.record(
        "loop_succeeded",
        step_payload(
            state,
            step,
            json!({"items": progress.total, "failed": progress.failed}),
        ),
    );
    routing::succeed(state, step, result, decision);
    true
}

#[cfg(test)]
mod tests;
