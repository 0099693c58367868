//! What follows a step's end: the arcs its success takes (wiki/playbooks.md, "Branches"), the
//! steps that became ready, and those that can no longer run and are skipped, with a reason.
//!
//! A skip either spreads or ends a path. A step that failed, or was skipped because of a
//! failure, blocks everything after it (`dependency_failed`). A branch not taken
//! (`not_taken`) ends its own path: a step is skipped as `unreached` when its arc's source was
//! skipped, or when every step it needs was skipped; a join with at least one need that
//! succeeded runs once the others have ended.

use serde_json::{json, Value};

use super::{context, dispatch, step_payload, Decision, ExecutionState, StepStatus};
use crate::playbook::{Mode, Playbook};
use crate::step::StepIndex;
use crate::template::{Conditions, RenderError};

/// The step error code of a `when` that fails to evaluate.
pub const CONDITION_FAILED: &str = "condition_failed";

/// The edges of a playbook by index: what each step needs, and the source of its arc.
struct Graph {
    needs: Vec<Vec<usize>>,
    source: Vec<Option<usize>>,
}

impl Graph {
    fn of(playbook: &Playbook) -> Self {
        let index: std::collections::HashMap<&str, usize> = playbook
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| (step.name.as_str(), i))
            .collect();
        let needs = playbook
            .steps
            .iter()
            .map(|step| {
                step.needs
                    .iter()
                    .filter_map(|need| index.get(need.as_str()).copied())
                    .collect()
            })
            .collect();
        Self {
            needs,
            source: playbook.arc_sources(),
        }
    }

    fn predecessors(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.needs[i].iter().copied().chain(self.source[i])
    }

    /// Per step, whether it failed or was skipped after a failure before it.
    fn failed_paths(&self, state: &ExecutionState) -> Vec<bool> {
        fn visit(
            graph: &Graph,
            state: &ExecutionState,
            i: usize,
            memo: &mut [Option<bool>],
        ) -> bool {
            if let Some(known) = memo[i] {
                return known;
            }
            let failed = match state.steps[i].status {
                StepStatus::Failed => true,
                StepStatus::Skipped => graph.predecessors(i).any(|p| visit(graph, state, p, memo)),
                _ => false,
            };
            memo[i] = Some(failed);
            failed
        }
        let mut memo = vec![None; state.steps.len()];
        (0..state.steps.len())
            .map(|i| visit(self, state, i, &mut memo))
            .collect()
    }
}

/// A step that ended well: its `set` is written into `ctx`, its arcs are decided (a `set` or a
/// condition that fails fails the step, without a retry: it would judge the same result), then
/// what can no longer run is skipped and what became ready is dispatched.
pub(super) fn succeed(
    state: &mut ExecutionState,
    step: StepIndex,
    result: Value,
    decision: &mut Decision,
) {
    let s = state.step_mut(step);
    s.status = StepStatus::Succeeded;
    s.result = Some(result.clone());
    s.error = None;
    decision.changed(step);
    let written = context::set(state, step);
    let routed = match &written {
        Ok(_) => taken_arcs(state, step).map_err(|error| {
            let code = error.code().unwrap_or(CONDITION_FAILED);
            format!("{code}: {}", error.message())
        }),
        Err(message) => Err(message.clone()),
    };
    match routed {
        Ok(taken) => {
            decision.record(
                "step_succeeded",
                step_payload(state, step, json!({"result": result})),
            );
            context::record(state, step, written.ok().flatten(), decision);
            if let Some(taken) = taken {
                route(state, step, &taken, decision);
            }
        }
        Err(message) => {
            context::undo(state, written.ok().flatten());
            let s = state.step_mut(step);
            s.status = StepStatus::Failed;
            s.error = Some(message.clone());
            decision.record(
                "step_failed",
                step_payload(state, step, json!({"error": message, "result": result})),
            );
        }
    }
    skip_unreachable(state, decision);
    dispatch_ready(state, decision);
}

/// Records which arcs of `step` are taken (`taken[j]` for arc `j`) and skips the targets of the
/// others.
fn route(state: &mut ExecutionState, step: StepIndex, taken: &[bool], decision: &mut Decision) {
    let arcs = state.spec(step).next.iter().flat_map(|next| &next.arcs);
    let (mut taken_names, mut not_taken) = (Vec::new(), Vec::new());
    for (arc, &is_taken) in arcs.zip(taken) {
        if is_taken {
            taken_names.push(arc.step.clone());
        } else {
            not_taken.push(arc.step.clone());
        }
    }
    decision.record(
        "step_routed",
        step_payload(
            state,
            step,
            json!({"taken": taken_names, "not_taken": not_taken}),
        ),
    );
    let source = state.spec(step).name.clone();
    for target in not_taken {
        if let Some(i) = state.index_of(&target) {
            if state.step(i).status == StepStatus::Pending {
                skip(state, i, "not_taken", &source, decision);
            }
        }
    }
}

/// Per arc of the step's `next`, whether it is taken; `None` without a `next`.
fn taken_arcs(state: &ExecutionState, step: StepIndex) -> Result<Option<Vec<bool>>, RenderError> {
    let Some(next) = &state.spec(step).next else {
        return Ok(None);
    };
    let context = state.template_context();
    let mut conditions = Conditions::new(&context, &state.budget);
    let mut taken = Vec::with_capacity(next.arcs.len());
    for (j, arc) in next.arcs.iter().enumerate() {
        let decided = next.mode == Mode::Exclusive && taken.contains(&true);
        let holds = match &arc.when {
            _ if decided => false,
            None => true,
            Some(when) => conditions.holds(when, &format!("next.arcs[{j}].when"))?,
        };
        taken.push(holds);
    }
    Ok(Some(taken))
}

fn skip(
    state: &mut ExecutionState,
    step: StepIndex,
    reason: &str,
    because: &str,
    decision: &mut Decision,
) {
    state.step_mut(step).status = StepStatus::Skipped;
    decision.changed(step);
    decision.record(
        "step_skipped",
        step_payload(state, step, json!({"reason": reason, "because": because})),
    );
}

/// Dispatches every pending step whose needs and arc's source have ended well, and that
/// something reaches: its arc was taken, it needs nothing, or a step it needs succeeded.
pub(super) fn dispatch_ready(state: &mut ExecutionState, decision: &mut Decision) {
    let graph = Graph::of(&state.playbook);
    let failed = graph.failed_paths(state);
    let status = |i: usize| state.steps[i].status;
    let ready: Vec<StepIndex> = state
        .indexes()
        .filter(|&i| {
            let i = i.index();
            status(i) == StepStatus::Pending
                && graph.predecessors(i).all(|p| {
                    !failed[p] && matches!(status(p), StepStatus::Succeeded | StepStatus::Skipped)
                })
                && graph.source[i].is_none_or(|s| status(s) == StepStatus::Succeeded)
                && (graph.source[i].is_some()
                    || graph.needs[i].is_empty()
                    || graph.needs[i]
                        .iter()
                        .any(|&n| status(n) == StepStatus::Succeeded))
        })
        .collect();
    for step in ready {
        // A step run again after a `goto` goes on numbering its attempts.
        let attempt = state.step(step).attempt.next();
        dispatch(state, step, attempt, 0, decision);
    }
}

/// Skips, transitively, the pending steps that can no longer run: after a failure
/// (`dependency_failed`), or that nothing reaches any more (`unreached`).
pub(super) fn skip_unreachable(state: &mut ExecutionState, decision: &mut Decision) {
    let graph = Graph::of(&state.playbook);
    loop {
        let failed = graph.failed_paths(state);
        let status = |i: usize| state.steps[i].status;
        let skipped = |i: usize| status(i) == StepStatus::Skipped;
        let blocked: Vec<(StepIndex, &'static str, usize)> = state
            .indexes()
            .filter(|&i| status(i.index()) == StepStatus::Pending)
            .filter_map(|step| {
                let i = step.index();
                if let Some(p) = graph.predecessors(i).find(|&p| failed[p]) {
                    return Some((step, "dependency_failed", p));
                }
                if let Some(s) = graph.source[i].filter(|&s| skipped(s)) {
                    return Some((step, "unreached", s));
                }
                let needs = &graph.needs[i];
                (graph.source[i].is_none()
                    && !needs.is_empty()
                    && needs.iter().all(|&n| skipped(n)))
                .then(|| (step, "unreached", needs[0]))
            })
            .collect();
        if blocked.is_empty() {
            return;
        }
        for (step, reason, because) in blocked {
            let because = state.playbook.steps[because].name.clone();
            skip(state, step, reason, &because, decision);
        }
    }
}

#[cfg(test)]
mod tests;
