//! The lifecycle rules of [`decide`], one scenario each, and a property over random events.

use super::*;
use proptest::prelude::*;

pub(super) fn playbook(steps: Value) -> Playbook {
    let playbook: Playbook =
        serde_json::from_value(json!({"name": "t", "steps": steps})).expect("well-typed");
    playbook.validate().expect("valid playbook");
    playbook
}

fn diamond() -> ExecutionState {
    ExecutionState::new(
        playbook(json!([
            {"name": "a", "action": "noop"},
            {"name": "b", "action": "noop", "needs": ["a"], "with": {"x": "{{ steps.a.result.n }}"}},
            {"name": "c", "action": "noop", "needs": ["a"]},
            {"name": "d", "action": "noop", "needs": ["b", "c"],
             "with": {"sum": "{{ steps.b.result.v + steps.c.result.v }}"}}
        ])),
        json!({}),
    )
}

pub(super) fn ok(step: u32, attempt: u32, result: Value) -> Event {
    Event::Finished {
        step: StepIndex::new(step),
        attempt: Attempt::new(attempt),
        outcome: StepOutcome::Succeeded { result },
        started_at_ms: 1,
    }
}

pub(super) fn failed(step: u32, attempt: u32) -> Event {
    Event::Finished {
        step: StepIndex::new(step),
        attempt: Attempt::new(attempt),
        outcome: StepOutcome::Failed {
            error: "boom".into(),
        },
        started_at_ms: 1,
    }
}

pub(super) fn started(step: u32, attempt: u32) -> Event {
    Event::Started {
        step: StepIndex::new(step),
        attempt: Attempt::new(attempt),
    }
}

pub(super) fn expired(step: u32, attempt: u32) -> Event {
    Event::LeaseExpired {
        step: StepIndex::new(step),
        attempt: Attempt::new(attempt),
    }
}

pub(super) fn dispatched(decision: &Decision) -> Vec<(u32, u32)> {
    decision
        .dispatches
        .iter()
        .map(|d| (d.step.get(), d.attempt.get()))
        .collect()
}

#[test]
fn diamond_fans_out_joins_and_renders_both_results() {
    let mut state = diamond();
    let d = decide(&mut state, Event::Created);
    assert_eq!(dispatched(&d), vec![(0, 1)]);
    assert_eq!(state.status, ExecutionStatus::Running);

    let d = decide(&mut state, ok(0, 1, json!({"n": 7})));
    assert_eq!(
        dispatched(&d),
        vec![(1, 1), (2, 1)],
        "b and c fan out together"
    );
    assert_eq!(d.dispatches[0].with, json!({"x": 7}));

    let d = decide(&mut state, ok(1, 1, json!({"v": 2})));
    assert!(d.dispatches.is_empty(), "d waits for c");
    let d = decide(&mut state, ok(2, 1, json!({"v": 3})));
    assert_eq!(dispatched(&d), vec![(3, 1)]);
    assert_eq!(d.dispatches[0].with, json!({"sum": 5}));

    let d = decide(&mut state, ok(3, 1, json!({})));
    assert_eq!(d.finished, Some(ExecutionStatus::Succeeded));
    let kinds: Vec<&str> = d.records.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        ["step_started", "step_succeeded", "execution_succeeded"]
    );
    assert_eq!(
        d.records.last().map(|r| r.kind),
        Some("execution_succeeded")
    );
}

#[test]
fn a_failing_step_retries_with_backoff_then_succeeds() {
    let mut state = ExecutionState::new(
        playbook(json!([{"name": "flaky", "action": "fail",
                         "retry": {"max_attempts": 3, "backoff": "100ms"}}])),
        json!({}),
    );
    decide(&mut state, Event::Created);
    let d = decide(&mut state, failed(0, 1));
    assert_eq!(d.dispatches[0].attempt, Attempt::new(2));
    assert_eq!(d.dispatches[0].delay_ms, 100);
    let d = decide(&mut state, failed(0, 2));
    assert_eq!(
        (d.dispatches[0].attempt, d.dispatches[0].delay_ms),
        (Attempt::new(3), 200)
    );
    let d = decide(&mut state, ok(0, 3, json!({})));
    assert_eq!(d.finished, Some(ExecutionStatus::Succeeded));
    assert_eq!(state.steps[0].attempt, Attempt::new(3));
}

#[test]
fn the_retry_delay_stops_doubling_at_its_cap() {
    // A playbook stored before the bounds (the model takes any backoff) still waits at most a day.
    let mut state = ExecutionState::new(
        serde_json::from_value(
            json!({"name": "t", "steps": [{"name": "flaky", "action": "fail",
            "retry": {"max_attempts": 30, "backoff": u64::MAX}}]}),
        )
        .expect("well-typed"),
        json!({}),
    );
    decide(&mut state, Event::Created);
    for attempt in 1..25 {
        let d = decide(&mut state, failed(0, attempt));
        assert_eq!(
            d.dispatches[0].delay_ms,
            crate::playbook::MAX_RETRY_DELAY_MS
        );
    }
}

#[test]
fn exhausted_retries_fail_the_execution_and_skip_dependants() {
    let mut state = diamond();
    state.playbook.steps[1].retry = Some(crate::playbook::Retry {
        max_attempts: 2,
        backoff: crate::playbook::Millis(0),
    });
    decide(&mut state, Event::Created);
    decide(&mut state, ok(0, 1, json!({"n": 1})));
    decide(&mut state, failed(1, 1));
    let d = decide(&mut state, failed(1, 2));
    assert_eq!(state.steps[1].status, StepStatus::Failed);
    assert_eq!(
        state.steps[3].status,
        StepStatus::Skipped,
        "d can no longer run"
    );
    assert_eq!(d.finished, None, "c is still running");
    let d = decide(&mut state, ok(2, 1, json!({"v": 1})));
    assert!(d.dispatches.is_empty());
    assert_eq!(d.finished, Some(ExecutionStatus::Failed));
}

#[test]
fn reports_of_old_attempts_and_duplicates_are_fenced() {
    let mut state = ExecutionState::new(
        playbook(json!([{"name": "s", "action": "sleep", "retry": {"max_attempts": 2}}])),
        json!({}),
    );
    decide(&mut state, Event::Created);
    let d = decide(&mut state, expired(0, 1));
    assert_eq!(dispatched(&d), vec![(0, 2)]);
    assert!(
        !decide(&mut state, ok(0, 1, json!({"late": true}))).applied,
        "old attempt"
    );
    assert!(decide(&mut state, started(0, 2)).applied);
    assert!(!decide(&mut state, started(0, 2)).applied);
    assert!(decide(&mut state, ok(0, 2, json!({}))).applied);
    assert!(
        !decide(&mut state, ok(0, 2, json!({}))).applied,
        "duplicate result"
    );
    assert_eq!(state.steps[0].result, Some(json!({})));
}

#[test]
fn an_undeliverable_command_fails_its_step_at_once_despite_a_retry_policy() {
    let mut state = diamond();
    state.playbook.steps[0].retry = Some(crate::playbook::Retry {
        max_attempts: 5,
        backoff: crate::playbook::Millis(0),
    });
    decide(&mut state, Event::Created);
    let undeliverable = |attempt| Event::Undeliverable {
        step: StepIndex::new(0),
        attempt: Attempt::new(attempt),
        error: "command_too_large: over max_payload".into(),
    };
    assert!(
        !decide(&mut state, undeliverable(2)).applied,
        "not the current attempt"
    );
    let d = decide(&mut state, undeliverable(1));
    assert!(d.dispatches.is_empty(), "no retry");
    assert_eq!(state.steps[0].status, StepStatus::Failed);
    assert_eq!(
        state.steps[0].error.as_deref(),
        Some("command_too_large: over max_payload")
    );
    assert_eq!(
        d.finished,
        Some(ExecutionStatus::Failed),
        "the rest is skipped"
    );
    assert!(!decide(&mut state, undeliverable(1)).applied, "once");
}

#[test]
fn a_lost_worker_is_replaced_even_without_a_retry_policy_but_not_forever() {
    let mut state = ExecutionState::new(
        playbook(json!([{"name": "s", "action": "sleep"}])),
        json!({}),
    );
    decide(&mut state, Event::Created);
    for attempt in 1..LOST_ATTEMPTS {
        let d = decide(&mut state, expired(0, attempt));
        assert_eq!(dispatched(&d), vec![(0, attempt + 1)]);
    }
    let d = decide(&mut state, expired(0, LOST_ATTEMPTS));
    assert_eq!(d.finished, Some(ExecutionStatus::Failed));
    let mut state = ExecutionState::new(
        playbook(json!([{"name": "s", "action": "fail"}])),
        json!({}),
    );
    decide(&mut state, Event::Created);
    let d = decide(&mut state, failed(0, 1));
    assert_eq!(
        d.finished,
        Some(ExecutionStatus::Failed),
        "a failure uses the retry policy"
    );
}

#[test]
fn cancel_stops_everything_once() {
    let mut state = diamond();
    decide(&mut state, Event::Created);
    let d = decide(&mut state, Event::Cancel);
    assert_eq!(d.finished, Some(ExecutionStatus::Cancelled));
    assert!(state
        .steps
        .iter()
        .all(|s| s.status == StepStatus::Cancelled));
    assert!(
        !decide(&mut state, Event::Cancel).applied,
        "cancel is idempotent"
    );
    let late = decide(&mut state, ok(0, 1, json!({})));
    assert!(
        !late.applied && late.dispatches.is_empty(),
        "nothing starts after cancel"
    );
}

#[test]
fn a_template_that_fails_at_run_time_fails_its_step() {
    let mut state = ExecutionState::new(
        playbook(json!([
            {"name": "a", "action": "noop"},
            {"name": "b", "action": "noop", "needs": ["a"], "with": {"x": "{{ steps.a.result.missing.deeper }}"}}
        ])),
        json!({}),
    );
    decide(&mut state, Event::Created);
    let d = decide(&mut state, ok(0, 1, json!({})));
    assert!(d.dispatches.is_empty());
    assert_eq!(state.steps[1].status, StepStatus::Failed);
    assert!(state.steps[1]
        .error
        .as_deref()
        .unwrap_or_default()
        .starts_with("template: with.x"));
    assert_eq!(d.finished, Some(ExecutionStatus::Failed));
}

#[test]
fn a_render_over_its_budget_fails_the_step_with_the_code_and_is_named() {
    let mut state = ExecutionState::new(
        playbook(json!([
            {"name": "a", "action": "noop", "with": {"x": "{{ 'a' * 2 }}"}},
            {"name": "b", "action": "noop", "needs": ["a"], "with": {"x": "{{ 'a' * 100 }}"}}
        ])),
        json!({}),
    );
    state.budget.max_bytes = 50;
    let created = decide(&mut state, Event::Created);
    assert_eq!(created.refused, None, "the first step fits");
    let d = decide(&mut state, ok(0, 1, json!({})));
    let refused = d.refused.expect("named");
    assert_eq!(
        (refused.step.as_str(), refused.code),
        ("b", "template_budget_exceeded")
    );
    assert!(
        refused.message.starts_with("with.x: "),
        "{}",
        refused.message
    );
    assert_eq!(state.steps[1].status, StepStatus::Failed);
    let error = state.steps[1].error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("template_budget_exceeded: with.x"),
        "{error}"
    );
    assert_eq!(d.finished, Some(ExecutionStatus::Failed));
}

#[test]
fn execution_input_overrides_playbook_defaults() {
    let playbook: Playbook = serde_json::from_value(json!({
        "name": "t", "input": {"a": 1, "b": 2}, "steps": [{"name": "s", "action": "noop"}]
    }))
    .expect("well-typed");
    let state = ExecutionState::new(playbook, json!({"b": 3}));
    assert_eq!(state.input, json!({"a": 1, "b": 3}));
}

fn arbitrary_event() -> impl Strategy<Value = Event> {
    let step = 0u32..4;
    let attempt = 1u32..4;
    let base = prop_oneof![
        Just(Event::Created),
        Just(Event::Cancel),
        (step.clone(), attempt.clone()).prop_map(|(step, attempt)| started(step, attempt)),
        (step.clone(), attempt.clone(), any::<bool>()).prop_map(|(step, attempt, good)| {
            Event::Finished {
                step: StepIndex::new(step),
                attempt: Attempt::new(attempt),
                outcome: if good {
                    StepOutcome::Succeeded {
                        result: json!({"v": 1, "n": 1}),
                    }
                } else {
                    StepOutcome::Failed { error: "x".into() }
                },
                started_at_ms: 1,
            }
        }),
        (step, attempt).prop_map(|(step, attempt)| expired(step, attempt)),
    ];
    // The same events for an item of the loop (step `c` when it loops), and any of the above.
    prop_oneof![
        base.clone(),
        (0u32..3, base).prop_map(|(item, event)| Event::Item {
            item,
            event: Box::new(event)
        }),
    ]
}

/// The diamond with `c` looping over three items, two in flight.
fn looping_diamond() -> ExecutionState {
    let mut state = diamond();
    state.playbook.steps[2].loop_ = Some(
        serde_json::from_value(
            json!({"in": "{{ [1, 2, 3] }}", "iterator": "it", "max_in_flight": 2}),
        )
        .expect("a loop"),
    );
    state
}

proptest! {
    #[test]
    fn an_execution_ends_at_most_once_and_nothing_applies_after(
        events in proptest::collection::vec(arbitrary_event(), 0..60),
        retries in 1u32..4,
        looped in any::<bool>(),
    ) {
        let mut state = if looped { looping_diamond() } else { diamond() };
        for step in &mut state.playbook.steps {
            step.retry = Some(crate::playbook::Retry { max_attempts: retries, backoff: crate::playbook::Millis(0) });
        }
        let mut endings = 0;
        for event in events {
            let was_terminal = state.is_terminal();
            let mut decisions = vec![decide(&mut state, event)];
            // The server's answer to a loop whose items all ended.
            if let Some(&step) = decisions[0].collect.first() {
                let result = Value::Array(
                    state.items.range((step, 0)..=(step, u32::MAX))
                        .map(|(_, item)| item.result.clone().unwrap_or(Value::Null))
                        .collect(),
                );
                decisions.push(decide(&mut state, Event::LoopCollected { step, result }));
            }
            for decision in &decisions {
                if was_terminal {
                    prop_assert!(!decision.applied);
                }
                if decision.finished.is_some() {
                    endings += 1;
                }
                for d in &decision.dispatches {
                    match d.item {
                        None => {
                            prop_assert!(d.attempt >= Attempt::FIRST && d.attempt.get() <= retries.max(LOST_ATTEMPTS));
                            prop_assert_eq!(state.step(d.step).status, StepStatus::Dispatched);
                        }
                        Some(k) => {
                            let item = &state.items[&(d.step, k)];
                            prop_assert!(item.tries >= 1 && item.tries <= retries.max(LOST_ATTEMPTS));
                        }
                    }
                }
            }
            if state.is_terminal() {
                prop_assert!(state.steps.iter().all(|s| s.status.is_terminal()));
            }
        }
        prop_assert!(endings <= 1);
    }
}

#[test]
fn the_looping_diamond_dispatches_its_items_once_a_succeeded() {
    let mut state = looping_diamond();
    decide(&mut state, Event::Created);
    let d = decide(&mut state, ok(0, 1, json!({"n": 1})));
    let items: Vec<_> = d.dispatches.iter().filter_map(|d| d.item).collect();
    assert_eq!(items, vec![0, 1], "{d:?}");
}
