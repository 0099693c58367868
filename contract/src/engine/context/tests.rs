//! `set` and `ctx`: writes on success, reads in later templates and conditions, the size
//! bound, and a property: `ctx` only ever holds what succeeded steps set.

use proptest::prelude::*;
use serde_json::json;

use super::super::tests::{dispatched, ok, playbook};
use super::*;
use crate::engine::{decide, Event, StepStatus};

fn chain() -> ExecutionState {
    ExecutionState::new(
        playbook(json!([
            {"name": "login", "action": "noop",
             "set": {"token": "{{ result.token }}", "who": "{{ input.user }}"}},
            {"name": "call", "action": "noop", "needs": ["login"],
             "with": {"auth": "Bearer {{ ctx.token }}", "by": "{{ ctx.who }}"}}
        ])),
        json!({"user": "ann"}),
    )
}

fn ctx_sets(decision: &Decision) -> Vec<Value> {
    decision
        .records
        .iter()
        .filter(|r| r.kind == "ctx_set")
        .map(|r| r.payload.clone())
        .collect()
}

#[test]
fn a_step_sets_ctx_on_success_and_a_later_step_reads_it() {
    let mut state = chain();
    decide(&mut state, Event::Created);
    let decision = decide(&mut state, ok(0, 1, json!({"token": "t1"})));
    assert!(decision.ctx_changed);
    assert_eq!(
        Value::Object(state.ctx.clone()),
        json!({"token": "t1", "who": "ann"})
    );
    assert_eq!(
        ctx_sets(&decision),
        [
            json!({"step": "login", "attempt": 1, "name": "token", "bytes": 4, "value": "t1"}),
            json!({"step": "login", "attempt": 1, "name": "who", "bytes": 5, "value": "ann"}),
        ]
    );
    assert_eq!(dispatched(&decision), [(1, 1)]);
    assert_eq!(
        decision.dispatches[0].with,
        json!({"auth": "Bearer t1", "by": "ann"})
    );
    let finished = decide(&mut state, ok(1, 1, json!({})));
    assert!(!finished.ctx_changed);
}

#[test]
fn an_arc_condition_reads_what_its_own_step_set() {
    let mut state = ExecutionState::new(
        playbook(json!([
            {"name": "a", "action": "noop", "set": {"go": "{{ result.go }}"},
             "next": {"arcs": [{"step": "b", "when": "{{ ctx.go }}"}]}},
            {"name": "b", "action": "noop"}
        ])),
        json!({}),
    );
    decide(&mut state, Event::Created);
    let decision = decide(&mut state, ok(0, 1, json!({"go": false})));
    assert_eq!(state.steps[1].status, StepStatus::Skipped);
    assert!(decision.ctx_changed);
}

#[test]
fn a_set_that_fails_to_render_fails_its_step_and_writes_nothing() {
    let mut state = chain();
    decide(&mut state, Event::Created);
    let decision = decide(&mut state, ok(0, 1, json!({"other": 1})));
    assert!(!decision.ctx_changed);
    assert!(state.ctx.is_empty());
    assert!(ctx_sets(&decision).is_empty());
    assert_eq!(state.steps[0].status, StepStatus::Failed);
    let error = state.steps[0].error.clone().unwrap_or_default();
    assert!(error.starts_with("template: set.token"), "{error}");
    assert_eq!(state.steps[1].status, StepStatus::Skipped);
    assert_eq!(state.status, crate::status::ExecutionStatus::Failed);
}

#[test]
fn a_set_that_would_pass_the_ctx_bound_fails_its_step_with_the_code() {
    let mut state = ExecutionState::new(
        playbook(json!([
            {"name": "a", "action": "noop", "set": {"small": "{{ result.small }}"}},
            {"name": "b", "action": "noop", "needs": ["a"], "set": {"big": "{{ result.big }}"}}
        ])),
        json!({}),
    );
    decide(&mut state, Event::Created);
    decide(&mut state, ok(0, 1, json!({"small": "s"})));
    let big = "x".repeat(MAX_CTX_BYTES);
    let decision = decide(&mut state, ok(1, 1, json!({ "big": big })));
    let error = state.steps[1].error.clone().unwrap_or_default();
    assert!(error.starts_with("ctx_too_large: "), "{error}");
    assert_eq!(Value::Object(state.ctx.clone()), json!({"small": "s"}));
    assert!(!decision.ctx_changed);
}

#[test]
fn a_large_value_is_logged_by_its_size_only() {
    let mut state = ExecutionState::new(
        playbook(json!([{"name": "a", "action": "noop", "set": {"v": "{{ result.v }}"}}])),
        json!({}),
    );
    decide(&mut state, Event::Created);
    let v = "y".repeat(MAX_EVENT_VALUE_BYTES);
    let decision = decide(&mut state, ok(0, 1, json!({ "v": v })));
    assert_eq!(
        ctx_sets(&decision),
        [json!({"step": "a", "attempt": 1, "name": "v", "bytes": MAX_EVENT_VALUE_BYTES + 2})]
    );
    assert_eq!(state.ctx["v"], json!(v));
}

proptest! {
    /// Whatever the order of successes and failures, `ctx` holds exactly the names set by the
    /// steps that succeeded, with the value of the last writer to succeed; each write is logged.
    #[test]
    fn ctx_holds_what_succeeded_steps_set(
        outcomes in proptest::collection::vec((0u32..3, any::<bool>()), 0..12),
    ) {
        let mut state = ExecutionState::new(
            playbook(json!([
                {"name": "a", "action": "noop", "set": {"x": "{{ result.v }}", "a": "1"}},
                {"name": "b", "action": "noop", "set": {"x": "{{ result.v }}", "b": "1"}},
                {"name": "c", "action": "noop", "needs": ["a", "b"], "with": {"x": "{{ ctx.x }}"}}
            ])),
            json!({}),
        );
        decide(&mut state, Event::Created);
        let mut logged = 0;
        let mut last_writer = None;
        for (step, good) in outcomes {
            let outcome = if good {
                crate::command::StepOutcome::Succeeded { result: json!({"v": step}) }
            } else {
                crate::command::StepOutcome::Failed { error: "x".into() }
            };
            let decision = decide(&mut state, Event::Finished {
                step: crate::step::StepIndex::new(step),
                attempt: crate::step::Attempt::FIRST,
                outcome,
                started_at_ms: 1,
            });
            let sets = ctx_sets(&decision).len();
            logged += sets;
            prop_assert_eq!(decision.ctx_changed, sets > 0);
            if sets > 0 {
                last_writer = Some(step);
            }
        }
        let succeeded = |i: usize| state.steps[i].status == StepStatus::Succeeded;
        let mut names: Vec<&str> = state.ctx.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut expected = Vec::new();
        if succeeded(0) { expected.push("a"); }
        if succeeded(1) { expected.push("b"); }
        if succeeded(0) || succeeded(1) { expected.push("x"); }
        prop_assert_eq!(names, expected);
        prop_assert_eq!(logged, 2 * (usize::from(succeeded(0)) + usize::from(succeeded(1))));
        if let Some(writer) = last_writer {
            prop_assert_eq!(&state.ctx["x"], &json!(writer));
        }
    }
}
