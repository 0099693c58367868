//! Loops: items dispatched within `max_in_flight`, in order; retries per item; the policy when
//! an item fails for good; the limits; fencing of item reports; and a property over random item
//! events: the execution ends exactly once and never has more items in flight than allowed.

use super::*;
use crate::engine::tests::playbook;
use crate::engine::{decide, Event, ExecutionStatus};
use proptest::prelude::*;

fn looping(extra: Value, items: Value) -> ExecutionState {
    let mut step = json!({"name": "each", "action": "noop", "with": {"x": "{{ it }}", "i": "{{ loop.index }}"},
                          "loop": {"in": "{{ input.items }}", "iterator": "it"}});
    if let (Value::Object(step), Value::Object(extra)) = (&mut step, extra) {
        step.extend(extra);
    }
    ExecutionState::new(
        playbook(json!([step, {"name": "after", "action": "noop", "needs": ["each"]}])),
        json!({ "items": items }),
    )
}

fn item(k: u32, event: Event) -> Event {
    Event::Item {
        item: k,
        event: Box::new(event),
    }
}

fn finished(attempt: Attempt, outcome: StepOutcome) -> Event {
    Event::Finished {
        step: StepIndex::new(0),
        attempt,
        outcome,
        started_at_ms: 1,
    }
}

fn ok(attempt: Attempt, result: Value) -> Event {
    finished(attempt, StepOutcome::Succeeded { result })
}

fn failed(attempt: Attempt) -> Event {
    finished(
        attempt,
        StepOutcome::Failed {
            error: "boom".into(),
        },
    )
}

/// `(item, attempt)` of each item dispatch.
fn items_dispatched(decision: &Decision) -> Vec<(u32, u32)> {
    decision
        .dispatches
        .iter()
        .filter_map(|d| d.item.map(|k| (k, d.attempt.get())))
        .collect()
}

/// What the server does for [`Decision::collect`]: the items' results in order.
fn collect(state: &mut ExecutionState, decision: &Decision) -> Option<Decision> {
    let step = *decision.collect.first()?;
    let result: Vec<Value> = state
        .items
        .range((step, 0)..=(step, u32::MAX))
        .map(|(_, item)| item.result.clone().unwrap_or(Value::Null))
        .collect();
    Some(decide(
        state,
        Event::LoopCollected {
            step,
            result: Value::Array(result),
        },
    ))
}

#[test]
fn a_parallel_loop_keeps_max_in_flight_and_its_result_is_in_item_order() {
    let mut state = looping(
        json!({"loop": {"in": "{{ input.items }}", "iterator": "it", "max_in_flight": 2}}),
        json!(["a", "b", "c"]),
    );
    let d = decide(&mut state, Event::Created);
    assert_eq!(items_dispatched(&d), vec![(0, 1), (1, 2)]);
    assert_eq!(d.dispatches[1].with, json!({"x": "b", "i": 1}));
    assert_eq!(d.loops_started, vec![StepIndex::new(0)]);
    assert_eq!(d.items.len(), 3, "every item is created");
    assert_eq!(d.records[1].kind, "loop_started");
    assert_eq!(d.records[1].payload["items"], 3);

    // Item 1 ends first: item 2 takes its place.
    let d = decide(&mut state, item(1, ok(Attempt::new(2), json!("B"))));
    assert_eq!(items_dispatched(&d), vec![(2, 3)]);
    let d = decide(&mut state, item(2, ok(Attempt::new(3), json!("C"))));
    assert!(d.dispatches.is_empty() && d.collect.is_empty());
    let d = decide(&mut state, item(0, ok(Attempt::new(1), json!("A"))));
    assert_eq!(d.collect, vec![StepIndex::new(0)]);
    let d = collect(&mut state, &d).expect("collected");
    assert_eq!(state.steps[0].status, StepStatus::Succeeded);
    assert_eq!(state.steps[0].result, Some(json!(["A", "B", "C"])));
    assert_eq!(
        dispatched_steps(&d),
        vec![1],
        "what needs the loop runs next"
    );
}

fn dispatched_steps(decision: &Decision) -> Vec<u32> {
    decision.dispatches.iter().map(|d| d.step.get()).collect()
}

#[test]
fn a_sequential_loop_runs_one_item_at_a_time() {
    let mut state = looping(
        json!({"loop": {"in": "{{ input.items }}", "iterator": "it", "mode": "sequential"}}),
        json!([1, 2]),
    );
    let d = decide(&mut state, Event::Created);
    assert_eq!(items_dispatched(&d), vec![(0, 1)]);
    let d = decide(&mut state, item(0, ok(Attempt::new(1), json!(1))));
    assert_eq!(items_dispatched(&d), vec![(1, 2)]);
}

#[test]
fn an_empty_list_succeeds_with_an_empty_result() {
    let mut state = looping(json!({}), json!([]));
    let d = decide(&mut state, Event::Created);
    assert_eq!(state.steps[0].status, StepStatus::Succeeded);
    assert_eq!(state.steps[0].result, Some(json!([])));
    assert_eq!(dispatched_steps(&d), vec![1]);
}

#[test]
fn a_list_over_max_loop_items_fails_the_step_with_loop_too_large() {
    let mut state = looping(json!({}), json!([1, 2, 3]));
    state.max_loop_items = 2;
    let d = decide(&mut state, Event::Created);
    assert_eq!(state.steps[0].status, StepStatus::Failed);
    assert!(state.steps[0]
        .error
        .as_deref()
        .unwrap_or("")
        .starts_with(LOOP_TOO_LARGE));
    assert_eq!(d.refused.map(|r| r.code), Some(LOOP_TOO_LARGE));
    assert_eq!(d.finished, Some(ExecutionStatus::Failed));
    assert!(d.items.is_empty(), "nothing is stored of a refused list");
}

#[test]
fn a_loop_over_what_is_not_a_list_fails() {
    let mut state = looping(json!({}), json!({"a": 1}));
    decide(&mut state, Event::Created);
    assert_eq!(state.steps[0].status, StepStatus::Failed);
    assert!(state.steps[0]
        .error
        .as_deref()
        .unwrap_or("")
        .starts_with(LOOP_NOT_A_LIST));
}

#[test]
fn an_item_retries_within_the_steps_budget_with_a_new_attempt_number() {
    let mut state = looping(json!({"retry": {"max_attempts": 2}}), json!(["a", "b"]));
    decide(&mut state, Event::Created);
    let d = decide(&mut state, item(0, failed(Attempt::new(1))));
    assert_eq!(items_dispatched(&d), vec![(0, 3)]);
    assert_eq!(d.records[1].kind, "item_attempt_failed");
    // The first attempt is stale now.
    assert!(!decide(&mut state, item(0, ok(Attempt::new(1), json!(0)))).applied);
    let d = decide(&mut state, item(0, failed(Attempt::new(3))));
    assert_eq!(state.steps[0].status, StepStatus::Failed);
    assert_eq!(d.finished, Some(ExecutionStatus::Failed));
    // Item 1 still in flight is stale once the step failed.
    assert!(!decide(&mut state, item(1, ok(Attempt::new(2), json!(1)))).applied);
}

#[test]
fn on_error_continue_puts_the_error_in_the_items_slot_and_the_loop_goes_on() {
    let mut state = looping(
        json!({"on_error": [{"then": "continue"}], "loop": {"in": "{{ input.items }}", "iterator": "it", "max_in_flight": 1}}),
        json!(["a", "b"]),
    );
    decide(&mut state, Event::Created);
    let d = decide(&mut state, item(0, failed(Attempt::new(1))));
    assert_eq!(items_dispatched(&d), vec![(1, 2)]);
    let d = decide(&mut state, item(1, ok(Attempt::new(2), json!("B"))));
    collect(&mut state, &d).expect("collected");
    assert_eq!(state.steps[0].result, Some(json!([{"error": "boom"}, "B"])));
    let progress = state.steps[0].loop_.expect("progress");
    assert_eq!((progress.succeeded, progress.failed), (1, 1));
}

#[test]
fn reports_without_an_item_or_of_another_attempt_do_not_touch_a_loop() {
    let mut state = looping(json!({}), json!(["a"]));
    decide(&mut state, Event::Created);
    assert!(!decide(&mut state, ok(Attempt::new(1), json!(1))).applied);
    assert!(!decide(&mut state, item(0, ok(Attempt::new(2), json!(1)))).applied);
    assert!(!decide(&mut state, item(5, ok(Attempt::new(1), json!(1)))).applied);
    let early = Event::LoopCollected {
        step: StepIndex::new(0),
        result: json!([]),
    };
    assert!(
        !decide(&mut state, early).applied,
        "not before every item ended"
    );
    assert!(decide(&mut state, item(0, ok(Attempt::new(1), json!(1)))).applied);
}

#[test]
fn a_lost_item_is_dispatched_again() {
    let mut state = looping(json!({}), json!(["a"]));
    decide(&mut state, Event::Created);
    decide(
        &mut state,
        item(
            0,
            Event::Started {
                step: StepIndex::new(0),
                attempt: Attempt::new(1),
            },
        ),
    );
    assert_eq!(
        state.items[&(StepIndex::new(0), 0)].status,
        StepStatus::Running
    );
    let lost = Event::LeaseExpired {
        step: StepIndex::new(0),
        attempt: Attempt::new(1),
    };
    let d = decide(&mut state, item(0, lost));
    assert_eq!(items_dispatched(&d), vec![(0, 2)]);
}

#[derive(Debug, Clone)]
enum Step {
    Start(u32),
    Finish(u32, bool),
    Lose(u32),
    Cancel,
}

fn arbitrary_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u32..8).prop_map(Step::Start),
        (0u32..8, any::<bool>()).prop_map(|(k, good)| Step::Finish(k, good)),
        (0u32..8).prop_map(Step::Lose),
        Just(Step::Cancel),
    ]
}

proptest! {
    #[test]
    fn a_loop_ends_exactly_once_and_never_runs_more_items_than_allowed(
        steps in proptest::collection::vec(arbitrary_step(), 0..80),
        count in 0usize..8,
        limit in 1u32..4,
        retries in 1u32..3,
        continues in any::<bool>(),
    ) {
        let on_error = if continues { json!([{"then": "continue"}]) } else { json!([]) };
        let mut state = looping(
            json!({"retry": {"max_attempts": retries}, "on_error": on_error,
                   "loop": {"in": "{{ input.items }}", "iterator": "it", "max_in_flight": limit}}),
            Value::Array((0..count).map(|k| json!(k)).collect()),
        );
        let mut endings = u32::from(decide(&mut state, Event::Created).finished.is_some());
        for step in steps {
            let k = match step { Step::Start(k) | Step::Finish(k, _) | Step::Lose(k) => k, Step::Cancel => 0 };
            // A worker reports the item's current attempt (or a stale one, if it is gone).
            let attempt = state.items.get(&(StepIndex::new(0), k)).map_or(Attempt::FIRST, |i| i.attempt);
            let event = match step {
                Step::Start(_) => item(k, Event::Started { step: StepIndex::new(0), attempt }),
                Step::Finish(_, true) => item(k, ok(attempt, json!(k))),
                Step::Finish(_, false) => item(k, failed(attempt)),
                Step::Lose(_) => item(k, Event::LeaseExpired { step: StepIndex::new(0), attempt }),
                Step::Cancel => Event::Cancel,
            };
            let was_terminal = state.is_terminal();
            let mut d = decide(&mut state, event);
            prop_assert!(!(was_terminal && d.applied));
            endings += u32::from(d.finished.is_some());
            if let Some(c) = collect(&mut state, &d) {
                endings += u32::from(c.finished.is_some());
                d = c;
            }
            let running = state.items.iter().filter(|(_, i)| i.status.is_in_flight()).count();
            if state.steps[0].status == StepStatus::Running {
                prop_assert!(running as u32 <= limit);
                prop_assert_eq!(state.steps[0].loop_.map(|p| p.in_flight), Some(running as u32));
            }
            let _ = d;
        }
        prop_assert!(endings <= 1);
        if state.is_terminal() {
            prop_assert!(state.steps.iter().all(|s| s.status.is_terminal()));
        }
    }
}
