//! Failure policy: what a failed attempt leads to (wiki/playbooks.md, "Failure policy").
//!
//! A step's `on_error` rules are tried in order when an attempt fails (an error, a timeout, a
//! lost worker, an undeliverable command); the first whose `when` holds decides, and without a
//! rule that holds the step retries within its budget and then fails, as without `on_error`.
//!
//! - `retry`: the same default: another attempt while the step's retry budget lasts.
//! - `fail`: the step fails now, whatever budget is left.
//! - `continue`: the step ends `succeeded` with the result `{"error": <the error>}`, logged as
//!   `step_continued`; what follows (its `set`, arcs, needs, the execution's status) sees a
//!   success.
//! - `goto:<target>`: the target (the step itself or a step it comes after) and every step after
//!   the target go back to `pending`, each logged as `step_reset`, and the target runs again.
//!   A step run again goes on numbering its attempts (every attempt of a step has its own
//!   number, so reports of old ones stay fenced and the queue's deduplication never drops a
//!   new one), and its retry budget counts them all. One execution takes at most `max_gotos`
//!   gotos; past that the step fails with `goto_budget_exceeded`.

use serde_json::json;

use super::{fail_step, routing, step_payload, Decision, ExecutionState, StepStatus};
use crate::playbook::Then;
use crate::step::StepIndex;
use crate::template::Conditions;

/// The step error code of a `goto` past the execution's `max_gotos`.
pub const GOTO_BUDGET_EXCEEDED: &str = "goto_budget_exceeded";

/// What a rule decided.
pub(super) enum Policy {
    Retry,
    Fail,
    Continue,
    Goto(StepIndex),
}

/// The first rule of the step's `on_error` whose `when` holds over
/// `{input, ctx, steps, error, attempt}`; `Err` is the step's error when a condition fails.
pub(super) fn choose(
    state: &ExecutionState,
    step: StepIndex,
    error: &str,
) -> Result<Policy, String> {
    let rules = &state.spec(step).on_error;
    if rules.is_empty() {
        return Ok(Policy::Retry);
    }
    let mut context = state.template_context();
    context["error"] = json!(error);
    context["attempt"] = json!(state.step(step).attempt.get());
    let mut conditions = Conditions::new(&context, &state.budget);
    for (k, rule) in rules.iter().enumerate() {
        let holds = match &rule.when {
            None => true,
            Some(when) => conditions
                .holds(when, &format!("on_error[{k}].when"))
                .map_err(|e| {
                    let code = e.code().unwrap_or(routing::CONDITION_FAILED);
                    format!("{code}: {}; the attempt failed with: {error}", e.message())
                })?,
        };
        if holds {
            return Ok(match rule.action() {
                Some(Then::Retry) | None => Policy::Retry,
                Some(Then::Fail) => Policy::Fail,
                Some(Then::Continue) => Policy::Continue,
                Some(Then::Goto(name)) => state.index_of(name).map_or(Policy::Fail, Policy::Goto),
            });
        }
    }
    Ok(Policy::Retry)
}

/// `continue`: the step succeeds with `{"error": error}`.
pub(super) fn continue_after(
    state: &mut ExecutionState,
    step: StepIndex,
    error: String,
    decision: &mut Decision,
) {
    decision.record(
        "step_continued",
        step_payload(state, step, json!({"error": error})),
    );
    routing::succeed(state, step, json!({ "error": error }), decision);
}

/// `goto`: resets `target` and what comes after it, and runs it again, within the budget.
pub(super) fn goto(
    state: &mut ExecutionState,
    step: StepIndex,
    target: StepIndex,
    error: String,
    decision: &mut Decision,
) {
    let budget = state.playbook.goto_budget();
    let name = state.spec(target).name.clone();
    if state.gotos >= budget {
        let message = format!(
            "{GOTO_BUDGET_EXCEEDED}: goto {name:?} after {} gotos, the execution's max_gotos \
             ({budget}); the attempt failed with: {error}",
            state.gotos
        );
        return fail_step(state, step, message, decision);
    }
    state.gotos += 1;
    decision.record(
        "step_goto",
        step_payload(
            state,
            step,
            json!({"error": error, "goto": name, "gotos": state.gotos}),
        ),
    );
    let because = state.spec(step).name.clone();
    let after = state.playbook.descendants(target.index());
    let reset: Vec<StepIndex> = state
        .indexes()
        .filter(|i| after.contains(&i.index()))
        .collect();
    for i in reset {
        let s = state.step_mut(i);
        s.status = StepStatus::Pending;
        s.result = None;
        s.loop_ = None;
        s.error = None;
        decision.changed(i);
        decision.record(
            "step_reset",
            step_payload(state, i, json!({"because": because})),
        );
    }
    routing::dispatch_ready(state, decision);
}

#[cfg(test)]
mod tests;
