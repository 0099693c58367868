//! `on_error`: rules in order over the error and attempt, `fail`, `continue`, and `goto` loops
//! that stop at their budget; properties: every execution ends exactly once, gotos never pass
//! the budget, and a step whose failures all `continue` never fails its execution.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::super::tests::{dispatched, expired, failed, ok, playbook};
use super::*;
use crate::command::StepOutcome;
use crate::engine::{decide, Event};
use crate::status::ExecutionStatus;
use crate::step::Attempt;

fn with_gotos(steps: Value, max_gotos: u32) -> ExecutionState {
    let mut playbook = playbook(steps);
    playbook.max_gotos = Some(max_gotos);
    ExecutionState::new(playbook, json!({}))
}

fn kinds<'a>(decision: &'a Decision, kind: &str) -> Vec<&'a Value> {
    decision
        .records
        .iter()
        .filter(|r| r.kind == kind)
        .map(|r| &r.payload)
        .collect()
}

fn failed_with(step: u32, attempt: u32, error: &str) -> Event {
    Event::Finished {
        step: StepIndex::new(step),
        attempt: Attempt::new(attempt),
        outcome: StepOutcome::Failed {
            error: error.into(),
        },
        started_at_ms: 1,
    }
}

#[test]
fn a_goto_loop_reruns_its_target_and_stops_at_the_budget() {
    let mut state = with_gotos(
        json!([
            {"name": "a", "action": "noop"},
            {"name": "b", "action": "noop", "needs": ["a"], "on_error": [{"then": "goto:a"}]}
        ]),
        3,
    );
    decide(&mut state, Event::Created);
    for round in 1..=3 {
        decide(&mut state, ok(0, round, json!({})));
        let decision = decide(&mut state, failed(1, round));
        assert_eq!(dispatched(&decision), [(0, round + 1)], "round {round}");
        assert_eq!(kinds(&decision, "step_goto")[0]["gotos"], round);
        assert_eq!(kinds(&decision, "step_reset").len(), 2);
        assert_eq!(state.gotos, round);
        assert_eq!(state.steps[1].status, StepStatus::Pending);
    }
    decide(&mut state, ok(0, 4, json!({})));
    let decision = decide(&mut state, failed(1, 4));
    assert_eq!(decision.finished, Some(ExecutionStatus::Failed));
    let error = state.steps[1].error.clone().unwrap_or_default();
    assert!(error.starts_with("goto_budget_exceeded: "), "{error}");
    assert_eq!(state.gotos, 3);
}

#[test]
fn rules_are_tried_in_order_over_the_error_and_the_attempt() {
    let steps = json!([{"name": "a", "action": "noop", "retry": {"max_attempts": 5},
    "on_error": [
        {"when": "'transient' in error and attempt < 3", "then": "retry"},
        {"then": "fail"}
    ]}]);
    let mut state = with_gotos(steps, 10);
    decide(&mut state, Event::Created);
    let decision = decide(&mut state, failed_with(0, 1, "transient: try again"));
    assert_eq!(dispatched(&decision), [(0, 2)]);
    let decision = decide(&mut state, failed_with(0, 2, "permanent"));
    assert_eq!(decision.finished, Some(ExecutionStatus::Failed));
    assert_eq!(state.steps[0].error.as_deref(), Some("permanent"));
}

#[test]
fn continue_succeeds_with_the_error_and_the_execution_goes_on() {
    let mut state = with_gotos(
        json!([
            {"name": "a", "action": "fail", "on_error": [{"then": "continue"}],
             "set": {"why": "{{ result.error }}"}},
            {"name": "b", "action": "noop", "needs": ["a"], "with": {"x": "{{ ctx.why }}"}}
        ]),
        10,
    );
    decide(&mut state, Event::Created);
    let decision = decide(&mut state, failed(0, 1));
    assert_eq!(kinds(&decision, "step_continued").len(), 1);
    assert_eq!(state.steps[0].status, StepStatus::Succeeded);
    assert_eq!(state.steps[0].result, Some(json!({"error": "boom"})));
    assert_eq!(decision.dispatches[0].with, json!({"x": "boom"}));
    let decision = decide(&mut state, ok(1, 1, json!({})));
    assert_eq!(decision.finished, Some(ExecutionStatus::Succeeded));
}

#[test]
fn a_lost_worker_goes_through_the_rules_too() {
    let mut state = with_gotos(
        json!([{"name": "a", "action": "noop", "on_error": [{"then": "continue"}]}]),
        10,
    );
    decide(&mut state, Event::Created);
    let decision = decide(&mut state, expired(0, 1));
    assert_eq!(decision.finished, Some(ExecutionStatus::Succeeded));
}

#[test]
fn a_rule_whose_condition_fails_fails_its_step() {
    let mut state = with_gotos(
        json!([{"name": "a", "action": "noop", "retry": {"max_attempts": 3},
            "on_error": [{"when": "steps.missing.result", "then": "retry"}]}]),
        10,
    );
    decide(&mut state, Event::Created);
    let decision = decide(&mut state, failed(0, 1));
    assert_eq!(decision.finished, Some(ExecutionStatus::Failed));
    let error = state.steps[0].error.clone().unwrap_or_default();
    assert!(
        error.starts_with("condition_failed: on_error[0].when") && error.ends_with("boom"),
        "{error}"
    );
}

/// Runs `state` to its end, answering each dispatch with the next of `outcomes` (cycling):
/// returns the endings and the gotos logged.
fn drive(state: &mut ExecutionState, outcomes: &[bool]) -> (usize, usize) {
    let mut queue: Vec<(StepIndex, Attempt)> = Vec::new();
    let (mut endings, mut gotos) = (0, 0);
    let mut take = |decision: Decision, queue: &mut Vec<(StepIndex, Attempt)>| {
        queue.extend(decision.dispatches.iter().map(|d| (d.step, d.attempt)));
        endings += usize::from(decision.finished.is_some());
        gotos += kinds(&decision, "step_goto").len();
    };
    take(decide(state, Event::Created), &mut queue);
    let mut n = 0;
    while !queue.is_empty() && n < 10_000 {
        let (step, attempt) = queue.remove(0);
        let good = outcomes
            .get(n % outcomes.len().max(1))
            .copied()
            .unwrap_or(true);
        n += 1;
        let outcome = if good {
            StepOutcome::Succeeded { result: json!({}) }
        } else {
            StepOutcome::Failed {
                error: "boom".into(),
            }
        };
        let event = Event::Finished {
            step,
            attempt,
            outcome,
            started_at_ms: 1,
        };
        take(decide(state, event), &mut queue);
    }
    (endings, gotos)
}

proptest! {
    #[test]
    fn goto_loops_end_once_within_their_budget(
        outcomes in proptest::collection::vec(any::<bool>(), 1..20),
        max_gotos in 0u32..6,
    ) {
        let mut state = with_gotos(json!([
            {"name": "a", "action": "noop", "on_error": [{"then": "continue"}]},
            {"name": "b", "action": "noop", "needs": ["a"], "retry": {"max_attempts": 2},
             "on_error": [{"when": "attempt < 2", "then": "retry"}, {"then": "goto:a"}]},
            {"name": "c", "action": "noop", "needs": ["b"], "on_error": [{"then": "goto:b"}]}
        ]), max_gotos);
        let (endings, gotos) = drive(&mut state, &outcomes);
        prop_assert_eq!(endings, 1);
        prop_assert!(state.is_terminal());
        prop_assert!(gotos as u32 <= max_gotos);
        prop_assert_eq!(state.gotos as usize, gotos);
        if outcomes.iter().all(|good| !good) {
            prop_assert_eq!(gotos as u32, max_gotos);
            prop_assert_eq!(state.status, ExecutionStatus::Failed);
            let error = state.steps[1].error.clone().unwrap_or_default();
            prop_assert!(error.starts_with("goto_budget_exceeded: "), "{}", error);
        }
    }

    #[test]
    fn steps_that_continue_never_fail_their_execution(
        outcomes in proptest::collection::vec(any::<bool>(), 1..20),
    ) {
        let mut state = with_gotos(json!([
            {"name": "a", "action": "noop", "on_error": [{"then": "continue"}]},
            {"name": "b", "action": "noop", "needs": ["a"], "retry": {"max_attempts": 2},
             "on_error": [{"when": "attempt < 2", "then": "retry"}, {"then": "continue"}]},
            {"name": "c", "action": "noop", "needs": ["a"], "on_error": [{"then": "continue"}]}
        ]), 10);
        let (endings, _) = drive(&mut state, &outcomes);
        prop_assert_eq!(endings, 1);
        prop_assert_eq!(state.status, ExecutionStatus::Succeeded);
        prop_assert!(state.steps.iter().all(|s| s.status == StepStatus::Succeeded));
    }
}
