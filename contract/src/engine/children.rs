//! Steps that run a child execution (`action: playbook`, wiki/playbooks.md "Sub-playbooks").
//!
//! To the engine such a step is dispatched like any other: one attempt, one [`super::Dispatch`]
//! whose `with` is `{playbook, input}` with only `input` rendered (the playbook's own templates
//! are the child's). The server turns that dispatch into the start of a child execution, and
//! the child's end comes back as the attempt's `Finished` event ([`outcome`]). Here are only
//! the rules that differ: how deep children may nest, what is rendered, what the step's result
//! is, and which steps have a child to cancel.

use serde_json::{json, Map, Value};

use super::{ExecutionState, StepIndex};
use crate::command::StepOutcome;
use crate::id::ExecutionId;
use crate::status::{ExecutionStatus, StepStatus};
use crate::template::{self, Budget, RenderError};

/// The step error code of a `playbook` step whose child would nest deeper than the server's
/// `max_child_depth`.
pub const NESTING_TOO_DEEP: &str = "nesting_too_deep";
/// The default of the server's `max_child_depth`.
pub const DEFAULT_MAX_CHILD_DEPTH: u32 = 4;

/// Where an execution sits in its tree: its depth (0 for a submitted execution, 1 for its
/// children, …), and how deep a child may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nesting {
    pub depth: u32,
    pub max_depth: u32,
}

impl Default for Nesting {
    fn default() -> Self {
        Self {
            depth: 0,
            max_depth: DEFAULT_MAX_CHILD_DEPTH,
        }
    }
}

impl Nesting {
    /// `Err` with the step error when a child of this execution would be too deep.
    pub(super) fn admits_child(&self) -> Result<(), String> {
        if self.depth < self.max_depth {
            return Ok(());
        }
        Err(format!(
            "{NESTING_TOO_DEEP}: this execution is at depth {}, and max_child_depth is {}: \
             it may not start a child",
            self.depth, self.max_depth
        ))
    }
}

/// The `with` of an attempt of a `playbook` step: `input` rendered against `context`, the
/// playbook as written.
pub(super) fn render(
    with: &Map<String, Value>,
    context: &Value,
    budget: &Budget,
) -> Result<Value, RenderError> {
    let (input, rest): (Map<String, Value>, Map<String, Value>) = with
        .clone()
        .into_iter()
        .partition(|(key, _)| key == "input");
    let mut rendered = template::render(&input, context, budget)?;
    if let Value::Object(fields) = &mut rendered {
        fields.extend(rest);
    }
    Ok(rendered)
}

/// The steps whose child is running (in flight), to be cancelled with their execution; read
/// before the execution is cancelled.
pub fn in_flight(state: &ExecutionState) -> Vec<StepIndex> {
    state
        .indexes()
        .filter(|&i| state.spec(i).is_child() && state.step(i).status.is_in_flight())
        .collect()
}

/// What an ended child execution reports to its parent's step: success with
/// `{execution_id, status, steps: {<name>: <result>}, ctx}` (the results of the steps that
/// succeeded, and its variables when it set any), or a failure naming the child, its status
/// and its first failed step.
pub fn outcome(child: ExecutionId, state: &ExecutionState) -> StepOutcome {
    let steps = || state.playbook.steps.iter().zip(&state.steps);
    if state.status == ExecutionStatus::Succeeded {
        let results: Map<String, Value> = steps()
            .filter(|(_, s)| s.status == StepStatus::Succeeded)
            .map(|(spec, s)| (spec.name.clone(), s.result.clone().unwrap_or(Value::Null)))
            .collect();
        let mut result = json!({
            "execution_id": child,
            "status": state.status,
            "steps": results,
        });
        if !state.ctx.is_empty() {
            result["ctx"] = Value::Object(state.ctx.clone());
        }
        return StepOutcome::Succeeded { result };
    }
    let failed = steps()
        .find(|(_, s)| s.status == StepStatus::Failed)
        .map(|(spec, s)| {
            format!(
                ": step {:?}: {}",
                spec.name,
                s.error.as_deref().unwrap_or("failed")
            )
        })
        .unwrap_or_default();
    StepOutcome::Failed {
        error: format!("child execution {child} {}{failed}", state.status.as_str()),
    }
}

#[cfg(test)]
mod tests;
