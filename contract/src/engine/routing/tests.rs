//! Branches: which arcs a step's success takes, what is skipped and why, and joins; a property
//! over random reports that nothing runs whose condition was not met.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::super::tests::{dispatched, failed, ok, playbook, started};
use super::super::*;

/// `route` leads to `big` (n > 10), `small` (n > 0) and `other` (no condition), in `mode`;
/// `join` needs `big` and `small`.
fn branch(mode: &str) -> ExecutionState {
    ExecutionState::new(
        playbook(json!([
            {"name": "route", "action": "noop", "next": {"mode": mode, "arcs": [
                {"step": "big", "when": "{{ steps.route.result.n > 10 }}"},
                {"step": "small", "when": "steps.route.result.n > 0"},
                {"step": "other"}
            ]}},
            {"name": "big", "action": "noop"},
            {"name": "small", "action": "noop"},
            {"name": "other", "action": "noop"},
            {"name": "join", "action": "noop", "needs": ["big", "small"],
             "with": {"seen": "{{ steps | list | sort }}"}}
        ])),
        json!({}),
    )
}

fn statuses(state: &ExecutionState) -> Vec<StepStatus> {
    state.steps.iter().map(|s| s.status).collect()
}

fn skip_reasons(decision: &Decision) -> Vec<(String, String)> {
    decision
        .records
        .iter()
        .filter(|r| r.kind == "step_skipped")
        .map(|r| {
            let field = |k: &str| r.payload[k].as_str().unwrap_or_default().to_owned();
            (field("step"), field("reason"))
        })
        .collect()
}

use StepStatus::{Skipped, Succeeded};

#[test]
fn exclusive_takes_only_the_first_matching_arc_and_skips_the_others() {
    let mut state = branch("exclusive");
    decide(&mut state, Event::Created);
    let d = decide(&mut state, ok(0, 1, json!({"n": 50})));
    assert_eq!(
        dispatched(&d),
        vec![(1, 1)],
        "only big, though small matches too"
    );
    let routed = d
        .records
        .iter()
        .find(|r| r.kind == "step_routed")
        .expect("routed");
    assert_eq!(routed.payload["taken"], json!(["big"]));
    assert_eq!(routed.payload["not_taken"], json!(["small", "other"]));
    assert_eq!(
        skip_reasons(&d),
        [
            ("small".into(), "not_taken".into()),
            ("other".into(), "not_taken".into())
        ]
    );
    let d = decide(&mut state, ok(1, 1, json!({})));
    assert_eq!(
        dispatched(&d),
        vec![(4, 1)],
        "the join runs on the taken branch"
    );
    assert_eq!(d.dispatches[0].with, json!({"seen": ["big", "route"]}));
    let d = decide(&mut state, ok(4, 1, json!({})));
    assert_eq!(d.finished, Some(ExecutionStatus::Succeeded));
    assert_eq!(
        statuses(&state),
        [Succeeded, Succeeded, Skipped, Skipped, Succeeded]
    );
}

#[test]
fn an_arc_without_a_condition_always_matches() {
    let mut state = branch("exclusive");
    decide(&mut state, Event::Created);
    let d = decide(&mut state, ok(0, 1, json!({"n": 0})));
    assert_eq!(dispatched(&d), vec![(3, 1)], "other");
    assert_eq!(
        skip_reasons(&d),
        [
            ("big".into(), "not_taken".into()),
            ("small".into(), "not_taken".into()),
            ("join".into(), "unreached".into())
        ],
        "the join of two branches not taken is reached by nothing"
    );
    let d = decide(&mut state, ok(3, 1, json!({})));
    assert_eq!(d.finished, Some(ExecutionStatus::Succeeded));
}

#[test]
fn inclusive_takes_every_matching_arc_and_the_join_runs_once_after_all() {
    let mut state = branch("inclusive");
    decide(&mut state, Event::Created);
    let d = decide(&mut state, ok(0, 1, json!({"n": 50})));
    assert_eq!(dispatched(&d), vec![(1, 1), (2, 1), (3, 1)]);
    assert!(skip_reasons(&d).is_empty());
    let d = decide(&mut state, ok(1, 1, json!({})));
    assert!(d.dispatches.is_empty(), "the join waits for small");
    let d = decide(&mut state, ok(2, 1, json!({})));
    assert_eq!(dispatched(&d), vec![(4, 1)]);
    let d = decide(&mut state, ok(3, 1, json!({})));
    assert!(d.dispatches.is_empty(), "the join is not dispatched again");
    let d = decide(&mut state, ok(4, 1, json!({})));
    assert_eq!(d.finished, Some(ExecutionStatus::Succeeded));
    assert!(state.steps.iter().all(|s| s.status == Succeeded));
}

#[test]
fn inclusive_with_some_arcs_not_taken_joins_the_taken_ones() {
    let mut state = branch("inclusive");
    decide(&mut state, Event::Created);
    let d = decide(&mut state, ok(0, 1, json!({"n": 5})));
    assert_eq!(dispatched(&d), vec![(2, 1), (3, 1)]);
    assert_eq!(skip_reasons(&d), [("big".into(), "not_taken".into())]);
    let d = decide(&mut state, ok(2, 1, json!({})));
    assert_eq!(dispatched(&d), vec![(4, 1)]);
    decide(&mut state, ok(3, 1, json!({})));
    let d = decide(&mut state, ok(4, 1, json!({})));
    assert_eq!(d.finished, Some(ExecutionStatus::Succeeded));
    assert_eq!(
        statuses(&state),
        [Succeeded, Skipped, Succeeded, Succeeded, Succeeded]
    );
}

#[test]
fn a_condition_that_fails_fails_its_step_and_skips_every_target() {
    let mut state = branch("exclusive");
    decide(&mut state, Event::Created);
    let d = decide(&mut state, ok(0, 1, json!({"m": 1})));
    assert!(d.dispatches.is_empty());
    assert_eq!(state.steps[0].status, StepStatus::Failed);
    let error = state.steps[0].error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("condition_failed: next.arcs[0].when"),
        "{error}"
    );
    assert_eq!(
        state.steps[0].result,
        Some(json!({"m": 1})),
        "the result is kept"
    );
    assert!(skip_reasons(&d)
        .iter()
        .all(|(_, reason)| reason == "dependency_failed"));
    assert_eq!(d.finished, Some(ExecutionStatus::Failed));
}

#[test]
fn a_condition_over_its_budget_fails_its_step_with_the_budget_code() {
    let mut state = ExecutionState::new(
        playbook(json!([
            {"name": "a", "action": "noop", "next": {"arcs": [
                {"step": "b", "when": "steps.a.result.x > 0"}
            ]}},
            {"name": "b", "action": "noop"}
        ])),
        json!({}),
    );
    assert!(state.renders_templates(), "a condition counts as rendering");
    // What a render past its deadline is decided again with (server/src/render.rs).
    state.budget = crate::template::Budget::spent();
    decide(&mut state, Event::Created);
    let d = decide(&mut state, ok(0, 1, json!({"x": 1})));
    let error = state.steps[0].error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("template_budget_exceeded: next.arcs[0].when"),
        "{error}"
    );
    assert_eq!(d.finished, Some(ExecutionStatus::Failed));
}

#[test]
fn a_failed_branch_is_not_joined_around() {
    let mut state = branch("inclusive");
    decide(&mut state, Event::Created);
    decide(&mut state, ok(0, 1, json!({"n": 50})));
    decide(&mut state, ok(1, 1, json!({})));
    let d = decide(&mut state, failed(2, 1));
    assert_eq!(
        skip_reasons(&d),
        [("join".into(), "dependency_failed".into())]
    );
    let d = decide(&mut state, ok(3, 1, json!({})));
    assert_eq!(d.finished, Some(ExecutionStatus::Failed));
}

#[test]
fn a_skip_after_a_failure_still_spreads_through_needs() {
    // b fails; c (needs b) is skipped; d needs c and a, which succeeded: it must not run.
    let mut state = ExecutionState::new(
        playbook(json!([
            {"name": "a", "action": "noop"},
            {"name": "b", "action": "fail"},
            {"name": "c", "action": "noop", "needs": ["b"]},
            {"name": "d", "action": "noop", "needs": ["a", "c"]}
        ])),
        json!({}),
    );
    decide(&mut state, Event::Created);
    decide(&mut state, failed(1, 1));
    let d = decide(&mut state, ok(0, 1, json!({})));
    assert!(d.dispatches.is_empty());
    assert_eq!(state.steps[3].status, Skipped);
    assert_eq!(d.finished, Some(ExecutionStatus::Failed));
}

#[test]
fn a_skipped_source_leaves_its_targets_unreached() {
    let mut state = ExecutionState::new(
        playbook(json!([
            {"name": "a", "action": "noop", "next": {"arcs": [
                {"step": "b", "when": "false"}, {"step": "x"}
            ]}},
            {"name": "b", "action": "noop", "next": {"arcs": [{"step": "c"}]}},
            {"name": "c", "action": "noop"},
            {"name": "x", "action": "noop"}
        ])),
        json!({}),
    );
    decide(&mut state, Event::Created);
    let d = decide(&mut state, ok(0, 1, json!({})));
    assert_eq!(
        skip_reasons(&d),
        [
            ("b".into(), "not_taken".into()),
            ("c".into(), "unreached".into())
        ]
    );
    assert_eq!(statuses(&state)[3], StepStatus::Dispatched);
}

/// A report of any step of [`branch`], with results that drive its conditions.
fn branch_event() -> impl Strategy<Value = Event> {
    let step = 0u32..5;
    let attempt = 1u32..3;
    prop_oneof![
        Just(Event::Created),
        Just(Event::Cancel),
        (step.clone(), attempt.clone()).prop_map(|(step, attempt)| started(step, attempt)),
        (
            step.clone(),
            attempt.clone(),
            prop_oneof![Just(0), Just(5), Just(50)]
        )
            .prop_map(|(step, attempt, n)| ok(step, attempt, json!({ "n": n }))),
        (step, attempt).prop_map(|(step, attempt)| failed(step, attempt)),
    ]
}

/// Whether `route`'s result lets the arc to `target` be taken (an oracle of its own).
fn arc_taken(inclusive: bool, result: &Value, target: usize) -> bool {
    let n = result["n"].as_i64().unwrap_or_default();
    let (big, small) = (n > 10, n > 0);
    match target {
        1 => big,
        2 => small && (inclusive || !big),
        3 => inclusive || !(big || small),
        _ => unreachable!(),
    }
}

proptest! {
    #[test]
    fn branches_end_once_and_run_only_what_their_conditions_allow(
        events in proptest::collection::vec(branch_event(), 0..40),
        inclusive in any::<bool>(),
    ) {
        let mut state = branch(if inclusive { "inclusive" } else { "exclusive" });
        let mut endings = 0;
        let mut runs = [0u32; 5];
        for event in events {
            let decision = decide(&mut state, event);
            endings += u32::from(decision.finished.is_some());
            for d in &decision.dispatches {
                let i = d.step.index();
                if d.attempt == Attempt::FIRST {
                    runs[i] += 1;
                }
                if (1..4).contains(&i) {
                    let route = &state.steps[0];
                    prop_assert_eq!(route.status, Succeeded);
                    let result = route.result.clone().unwrap_or_default();
                    prop_assert!(arc_taken(inclusive, &result, i), "{} ran against {}", i, result);
                }
                if i == 4 {
                    let (big, small) = (state.steps[1].status, state.steps[2].status);
                    prop_assert!(big == Succeeded || small == Succeeded);
                    prop_assert!(big != StepStatus::Failed && small != StepStatus::Failed);
                    prop_assert!(big.is_terminal() && small.is_terminal());
                }
            }
            if state.is_terminal() {
                prop_assert!(state.steps.iter().all(|s| s.status.is_terminal()));
            }
        }
        prop_assert!(endings <= 1);
        prop_assert!(runs.iter().all(|&n| n <= 1), "a step starts once: {:?}", runs);
        if state.status == ExecutionStatus::Succeeded {
            let result = state.steps[0].result.clone().unwrap_or_default();
            for target in 1..4 {
                let expected = if arc_taken(inclusive, &result, target) { Succeeded } else { Skipped };
                prop_assert_eq!(state.steps[target].status, expected);
            }
        }
    }
}
