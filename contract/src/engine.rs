//! The orchestration decision of one execution, as a pure function:
//! `(state, event) → (new state, actions)` (wiki/spec.md §4.2, §4.3).
//!
//! The server loads an execution's state under its row lock, calls [`decide`], and then
//! performs what the [`Decision`] lists: write the changed steps, append the records to the
//! event log, put the dispatches in the outbox. Nothing here does IO, so every rule of the
//! lifecycle (fencing, retries, skips, exactly one terminal state) is tested without NATS or
//! PostgreSQL.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::command::StepOutcome;
use crate::message::ExecutionStatus;
use crate::playbook::Playbook;

/// Lifecycle of one step: `pending → dispatched → running → succeeded | failed | skipped |
/// cancelled`; a retry goes back to `dispatched` with the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Dispatched,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Dispatched,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Skipped,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }

    /// Handed to a worker and not finished: the attempt holds a lease.
    pub fn is_in_flight(self) -> bool {
        matches!(self, Self::Dispatched | Self::Running)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }
}

/// What the engine knows of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub status: StepStatus,
    /// The current attempt (0 before the first dispatch).
    pub attempt: u32,
    pub result: Option<Value>,
    pub error: Option<String>,
}

impl StepState {
    pub fn new() -> Self {
        Self {
            status: StepStatus::Pending,
            attempt: 0,
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
        }
    }

    fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// `{input, steps: {<name>: {result}}}` for templates: only steps that succeeded.
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
        json!({"input": self.input, "steps": steps})
    }
}

/// Something that happened to an execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The execution was committed: start it.
    Created,
    /// A worker began an attempt (its first heartbeat).
    Started { step: usize, attempt: u32 },
    /// A worker finished an attempt, which it started at `started_at_ms` by its clock (the
    /// step's `started_at` when no heartbeat recorded one; the decision does not depend on it).
    Finished {
        step: usize,
        attempt: u32,
        outcome: StepOutcome,
        started_at_ms: i64,
    },
    /// An attempt's lease ran out: its worker is presumed dead.
    LeaseExpired { step: usize, attempt: u32 },
    /// Someone asked to cancel the execution.
    Cancel,
}

/// Send one attempt of a step to the workers, after `delay_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub step: usize,
    pub attempt: u32,
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
    pub changed: Vec<usize>,
    /// Set once, by the event that ended the execution.
    pub finished: Option<ExecutionStatus>,
}

impl Decision {
    fn record(&mut self, kind: &'static str, payload: Value) {
        self.records.push(Record { kind, payload });
    }

    fn changed(&mut self, step: usize) {
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
                || state.steps[step].status != StepStatus::Dispatched
            {
                return decision;
            }
            state.steps[step].status = StepStatus::Running;
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
            if state.steps[step].status == StepStatus::Dispatched {
                // A step short enough to finish before it was marked running: its start still
                // belongs in the log.
                decision.record("step_started", step_payload(state, step, json!({})));
            }
            match outcome {
                StepOutcome::Succeeded { result } => {
                    let s = &mut state.steps[step];
                    s.status = StepStatus::Succeeded;
                    s.result = Some(result.clone());
                    s.error = None;
                    decision.changed(step);
                    decision.record(
                        "step_succeeded",
                        step_payload(state, step, json!({"result": result})),
                    );
                    dispatch_ready(state, &mut decision);
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
        Event::Cancel => {
            state.status = ExecutionStatus::Cancelled;
            for i in 0..state.steps.len() {
                if !state.steps[i].status.is_terminal() {
                    state.steps[i].status = StepStatus::Cancelled;
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

fn max_attempts(state: &ExecutionState, step: usize) -> u32 {
    state.playbook.steps[step]
        .retry
        .map_or(1, |r| r.max_attempts)
}

/// Whether a report is for the attempt that currently owns the step (fencing).
fn is_current(state: &ExecutionState, step: usize, attempt: u32) -> bool {
    state
        .steps
        .get(step)
        .is_some_and(|s| s.attempt == attempt && s.status.is_in_flight())
}

fn step_payload(state: &ExecutionState, step: usize, extra: Value) -> Value {
    let mut payload = json!({
        "step": state.playbook.steps[step].name,
        "attempt": state.steps[step].attempt,
    });
    if let (Value::Object(payload), Value::Object(extra)) = (&mut payload, extra) {
        payload.extend(extra);
    }
    payload
}

/// A failed attempt: retry within the budget (with exponential backoff), else fail the step
/// and skip everything that can no longer run.
fn fail_attempt(
    state: &mut ExecutionState,
    step: usize,
    error: String,
    max_attempts: u32,
    decision: &mut Decision,
) {
    let retry = state.playbook.steps[step].retry;
    let attempt = state.steps[step].attempt;
    decision.changed(step);
    if attempt < max_attempts {
        let backoff = retry.map_or(0, |r| r.backoff.0);
        let delay_ms = backoff.saturating_mul(1u64 << (attempt - 1).min(20));
        decision.record(
            "step_attempt_failed",
            step_payload(
                state,
                step,
                json!({"error": error, "retry_in_ms": delay_ms}),
            ),
        );
        dispatch(state, step, attempt + 1, delay_ms, decision);
        return;
    }
    let s = &mut state.steps[step];
    s.status = StepStatus::Failed;
    s.error = Some(error.clone());
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
    step: usize,
    attempt: u32,
    delay_ms: u64,
    decision: &mut Decision,
) {
    state.steps[step].attempt = attempt;
    decision.changed(step);
    match crate::template::render(&state.playbook.steps[step].with, &state.template_context()) {
        Ok(with) => {
            state.steps[step].status = StepStatus::Dispatched;
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
            let s = &mut state.steps[step];
            s.status = StepStatus::Failed;
            s.error = Some(format!("template: {error}"));
            let error = s.error.clone();
            decision.record(
                "step_failed",
                step_payload(state, step, json!({"error": error})),
            );
            skip_unreachable(state, decision);
        }
    }
}

/// Dispatches every pending step whose needs have all succeeded.
fn dispatch_ready(state: &mut ExecutionState, decision: &mut Decision) {
    let ready: Vec<usize> = (0..state.steps.len())
        .filter(|&i| state.steps[i].status == StepStatus::Pending)
        .filter(|&i| {
            state.playbook.steps[i]
                .needs
                .iter()
                .all(|need| status_of(state, need) == Some(StepStatus::Succeeded))
        })
        .collect();
    for step in ready {
        dispatch(state, step, 1, 0, decision);
    }
}

fn status_of(state: &ExecutionState, name: &str) -> Option<StepStatus> {
    state
        .playbook
        .steps
        .iter()
        .position(|s| s.name == name)
        .map(|i| state.steps[i].status)
}

/// Pending steps that need a failed or skipped step can never run: skip them, transitively.
fn skip_unreachable(state: &mut ExecutionState, decision: &mut Decision) {
    loop {
        let blocked: Vec<usize> = (0..state.steps.len())
            .filter(|&i| state.steps[i].status == StepStatus::Pending)
            .filter(|&i| {
                state.playbook.steps[i].needs.iter().any(|need| {
                    matches!(
                        status_of(state, need),
                        Some(StepStatus::Failed | StepStatus::Skipped)
                    )
                })
            })
            .collect();
        if blocked.is_empty() {
            return;
        }
        for step in blocked {
            state.steps[step].status = StepStatus::Skipped;
            decision.changed(step);
            decision.record("step_skipped", step_payload(state, step, json!({})));
        }
    }
}

/// Ends the execution once no step can make progress: succeeded when every step succeeded.
fn finish_if_done(state: &mut ExecutionState, decision: &mut Decision) {
    if state.is_terminal() || state.steps.iter().any(|s| !s.status.is_terminal()) {
        return;
    }
    let status = if state
        .steps
        .iter()
        .all(|s| s.status == StepStatus::Succeeded)
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn playbook(steps: Value) -> Playbook {
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

    fn ok(step: usize, attempt: u32, result: Value) -> Event {
        Event::Finished {
            step,
            attempt,
            outcome: StepOutcome::Succeeded { result },
            started_at_ms: 1,
        }
    }

    fn failed(step: usize, attempt: u32) -> Event {
        Event::Finished {
            step,
            attempt,
            outcome: StepOutcome::Failed {
                error: "boom".into(),
            },
            started_at_ms: 1,
        }
    }

    fn dispatched(decision: &Decision) -> Vec<(usize, u32)> {
        decision
            .dispatches
            .iter()
            .map(|d| (d.step, d.attempt))
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
        assert_eq!(d.dispatches[0].attempt, 2);
        assert_eq!(d.dispatches[0].delay_ms, 100);
        let d = decide(&mut state, failed(0, 2));
        assert_eq!(
            (d.dispatches[0].attempt, d.dispatches[0].delay_ms),
            (3, 200)
        );
        let d = decide(&mut state, ok(0, 3, json!({})));
        assert_eq!(d.finished, Some(ExecutionStatus::Succeeded));
        assert_eq!(state.steps[0].attempt, 3);
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
        let d = decide(
            &mut state,
            Event::LeaseExpired {
                step: 0,
                attempt: 1,
            },
        );
        assert_eq!(dispatched(&d), vec![(0, 2)]);
        assert!(
            !decide(&mut state, ok(0, 1, json!({"late": true}))).applied,
            "old attempt"
        );
        assert!(
            decide(
                &mut state,
                Event::Started {
                    step: 0,
                    attempt: 2
                }
            )
            .applied
        );
        assert!(
            !decide(
                &mut state,
                Event::Started {
                    step: 0,
                    attempt: 2
                }
            )
            .applied
        );
        assert!(decide(&mut state, ok(0, 2, json!({}))).applied);
        assert!(
            !decide(&mut state, ok(0, 2, json!({}))).applied,
            "duplicate result"
        );
        assert_eq!(state.steps[0].result, Some(json!({})));
    }

    #[test]
    fn a_lost_worker_is_replaced_even_without_a_retry_policy_but_not_forever() {
        let mut state = ExecutionState::new(
            playbook(json!([{"name": "s", "action": "sleep"}])),
            json!({}),
        );
        decide(&mut state, Event::Created);
        for attempt in 1..LOST_ATTEMPTS {
            let d = decide(&mut state, Event::LeaseExpired { step: 0, attempt });
            assert_eq!(dispatched(&d), vec![(0, attempt + 1)]);
        }
        let d = decide(
            &mut state,
            Event::LeaseExpired {
                step: 0,
                attempt: LOST_ATTEMPTS,
            },
        );
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
    fn execution_input_overrides_playbook_defaults() {
        let playbook: Playbook = serde_json::from_value(json!({
            "name": "t", "input": {"a": 1, "b": 2}, "steps": [{"name": "s", "action": "noop"}]
        }))
        .expect("well-typed");
        let state = ExecutionState::new(playbook, json!({"b": 3}));
        assert_eq!(state.input, json!({"a": 1, "b": 3}));
    }

    fn arbitrary_event() -> impl Strategy<Value = Event> {
        let step = 0usize..4;
        let attempt = 1u32..4;
        prop_oneof![
            Just(Event::Created),
            Just(Event::Cancel),
            (step.clone(), attempt.clone())
                .prop_map(|(step, attempt)| Event::Started { step, attempt }),
            (step.clone(), attempt.clone(), any::<bool>()).prop_map(|(step, attempt, good)| {
                Event::Finished {
                    step,
                    attempt,
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
            (step, attempt).prop_map(|(step, attempt)| Event::LeaseExpired { step, attempt }),
        ]
    }

    proptest! {
        #[test]
        fn an_execution_ends_at_most_once_and_nothing_applies_after(
            events in proptest::collection::vec(arbitrary_event(), 0..60),
            retries in 1u32..4,
        ) {
            let mut state = diamond();
            for step in &mut state.playbook.steps {
                step.retry = Some(crate::playbook::Retry { max_attempts: retries, backoff: crate::playbook::Millis(0) });
            }
            let mut endings = 0;
            for event in events {
                let was_terminal = state.is_terminal();
                let decision = decide(&mut state, event);
                if was_terminal {
                    prop_assert!(!decision.applied);
                }
                if decision.finished.is_some() {
                    endings += 1;
                }
                for d in &decision.dispatches {
                    prop_assert!(d.attempt >= 1 && d.attempt <= retries.max(LOST_ATTEMPTS));
                    prop_assert_eq!(state.steps[d.step].status, StepStatus::Dispatched);
                }
                if state.is_terminal() {
                    prop_assert!(state.steps.iter().all(|s| s.status.is_terminal()));
                }
            }
            prop_assert!(endings <= 1);
        }
    }
}
