//! `playbook` steps: what validation accepts and refuses, what a dispatch renders, the depth
//! limit, and what an ended child reports to its parent.

use serde_json::json;

use super::super::tests::{dispatched, ok, playbook};
use super::*;
use crate::engine::{decide, Event};

/// A playbook of `steps`, not validated.
fn raw(steps: Value) -> crate::playbook::Playbook {
    serde_json::from_value(json!({"name": "p", "steps": steps})).expect("typed")
}

fn nest(levels: u32) -> Value {
    let mut inner = json!({"name": "leaf", "steps": [{"name": "n", "action": "noop"}]});
    for level in 0..levels {
        inner = json!({"name": format!("level{level}"), "steps": [
            {"name": "run", "action": "playbook", "with": {"playbook": inner}}
        ]});
    }
    inner
}

#[test]
fn inline_children_validate_recursively_and_keep_their_own_templates() {
    let parent = playbook(json!([
        {"name": "a", "action": "noop"},
        {"name": "child", "action": "playbook", "needs": ["a"], "with": {
            "input": {"who": "{{ steps.a.result.who }}"},
            "playbook": {"name": "inner", "steps": [
                {"name": "x", "action": "noop", "with": {"echo": "{{ input.who }}"}},
                {"name": "y", "action": "noop", "needs": ["x"],
                 "with": {"seen": "{{ steps.x.result.echo }}"}}
            ]}
        }}
    ]));
    assert_eq!(parent.validate(), Ok(()));
    assert_eq!(parent.nesting_depth(), 1);

    let broken = raw(json!([
        {"name": "child", "action": "playbook", "with": {"playbook": {"name": "inner", "steps": [
            {"name": "x", "action": "noop", "needs": ["nope"]}
        ]}}}
    ]));
    let e = broken
        .validate()
        .expect_err("unknown need inside the child");
    assert_eq!(e.path, "steps[0].with.playbook.steps[0].needs[0]");
}

#[test]
fn playbook_steps_refuse_workers_fields_unknown_keys_and_bad_references() {
    let cases = [
        (
            json!({"playbook": {"name": "p"}, "pool": "x"}),
            "steps[0].with.pool",
        ),
        (
            json!({"input": 3, "playbook": {"name": "p"}}),
            "steps[0].with.input",
        ),
        (
            json!({"playbook": {"name": "p", "tag": 1}}),
            "steps[0].with.playbook",
        ),
        (
            json!({"playbook": {"name": "p", "version": 0}}),
            "steps[0].with.playbook",
        ),
        (json!({"input": {}}), "steps[0].with.playbook"),
    ];
    for (with, path) in cases {
        let p = raw(json!([{"name": "c", "action": "playbook", "with": with}]));
        let e = p.validate().expect_err("invalid");
        assert_eq!(e.path, path, "{with}: {e}");
    }
    let pooled = raw(json!([{"name": "c", "action": "playbook", "pool": "gpu",
                                   "with": {"playbook": {"name": "p"}}}]));
    assert_eq!(pooled.validate().expect_err("pool").path, "steps[0].pool");
    let reference = playbook(json!([{"name": "c", "action": "playbook",
                                      "with": {"playbook": {"name": "p", "version": 3}}}]));
    assert_eq!(reference.validate(), Ok(()));
    assert_eq!(
        reference.steps[0].child_playbook(),
        Some(crate::playbook::ChildPlaybook::Catalog {
            name: "p".into(),
            version: Some(3)
        })
    );
}

#[test]
fn literal_nesting_is_bounded_and_measured() {
    let p: crate::playbook::Playbook = serde_json::from_value(nest(3)).expect("typed");
    assert_eq!(p.validate(), Ok(()));
    assert_eq!(p.nesting_depth(), 3);
    let deep: crate::playbook::Playbook =
        serde_json::from_value(nest(crate::playbook::MAX_NESTING)).expect("typed");
    let e = deep.validate().expect_err("too deep");
    assert!(e.message.starts_with(NESTING_TOO_DEEP), "{e}");
}

fn parent() -> ExecutionState {
    ExecutionState::new(
        playbook(json!([
            {"name": "a", "action": "noop"},
            {"name": "child", "action": "playbook", "needs": ["a"], "with": {
                "input": {"n": "{{ steps.a.result.n }}"},
                "playbook": {"name": "inner", "steps": [
                    {"name": "x", "action": "noop", "with": {"v": "{{ input.n }}"}}
                ]}
            }}
        ])),
        json!({}),
    )
}

#[test]
fn a_playbook_step_dispatches_with_only_its_input_rendered() {
    let mut state = parent();
    decide(&mut state, Event::Created);
    assert!(in_flight(&state).is_empty());
    let decision = decide(&mut state, ok(0, 1, json!({"n": 7})));
    assert_eq!(dispatched(&decision), [(1, 1)]);
    let with = &decision.dispatches[0].with;
    assert_eq!(with["input"], json!({"n": 7}));
    assert_eq!(
        with["playbook"]["steps"][0]["with"]["v"],
        json!("{{ input.n }}"),
        "the child's templates are the child's"
    );
    assert_eq!(in_flight(&state), [StepIndex::new(1)]);
}

#[test]
fn a_child_beyond_max_child_depth_fails_its_step_with_the_code() {
    let mut state = parent();
    state.nesting = Nesting {
        depth: 2,
        max_depth: 2,
    };
    decide(&mut state, Event::Created);
    let decision = decide(&mut state, ok(0, 1, json!({"n": 1})));
    assert!(decision.dispatches.is_empty());
    assert_eq!(state.steps[1].status, StepStatus::Failed);
    let error = state.steps[1].error.as_deref().expect("an error");
    assert!(error.starts_with("nesting_too_deep: "), "{error}");
    assert_eq!(decision.finished, Some(ExecutionStatus::Failed));
}

#[test]
fn an_ended_child_reports_its_results_or_its_first_failure() {
    let child_id = ExecutionId::new(42).expect("valid");
    let mut child = ExecutionState::new(
        playbook(json!([
            {"name": "x", "action": "noop"},
            {"name": "y", "action": "noop", "needs": ["x"]}
        ])),
        json!({}),
    );
    decide(&mut child, Event::Created);
    decide(&mut child, ok(0, 1, json!({"a": 1})));
    decide(&mut child, ok(1, 1, json!("b")));
    assert_eq!(
        outcome(child_id, &child),
        StepOutcome::Succeeded {
            result: json!({"execution_id": "42", "status": "succeeded",
                           "steps": {"x": {"a": 1}, "y": "b"}})
        }
    );
    let mut failing = parent();
    decide(&mut failing, Event::Created);
    decide(&mut failing, super::super::tests::failed(0, 1));
    let StepOutcome::Failed { error } = outcome(child_id, &failing) else {
        panic!("a failed child fails the step");
    };
    assert!(
        error.starts_with("child execution 42 failed: step \"a\": "),
        "{error}"
    );
}
