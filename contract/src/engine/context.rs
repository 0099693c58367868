//! The execution's variables: what a step's `set` writes into `ctx` when it succeeds
//! (wiki/playbooks.md, "Execution variables").
//!
//! A step's `set` is rendered over `{input, ctx, steps, result}` (`result` is the step's own)
//! within the step's render budget. Its values are written before the step's arcs are decided,
//! so their conditions read them; if the step fails after all (an arc's condition fails, the
//! render fails, or `ctx` would pass [`MAX_CTX_BYTES`]), nothing is written. Each write is a
//! `ctx_set` event.

use serde_json::{json, Map, Value};

use super::{step_payload, Decision, ExecutionState};
use crate::step::StepIndex;

/// The bytes of an execution's `ctx` (its JSON).
pub const MAX_CTX_BYTES: usize = 64 * 1024;
/// The step error code of a `set` that would take `ctx` over [`MAX_CTX_BYTES`].
pub const CTX_TOO_LARGE: &str = "ctx_too_large";
/// A `ctx_set` event carries the value written when its JSON takes at most this; a larger one
/// only its size (the step's result, in `step_succeeded`, holds what it came from).
pub const MAX_EVENT_VALUE_BYTES: usize = 1024;

/// What a step's `set` wrote: its values, and `ctx` as it was before them.
pub(super) struct Writes {
    values: Map<String, Value>,
    previous: Map<String, Value>,
}

/// Renders the `set` of `step` (which just succeeded) and writes it into `state.ctx`; `None`
/// when it sets nothing. `Err` is the step's error (`template…:` or `ctx_too_large:`), and
/// leaves `ctx` as it was.
pub(super) fn set(state: &mut ExecutionState, step: StepIndex) -> Result<Option<Writes>, String> {
    let spec = state.spec(step);
    if spec.set.is_empty() {
        return Ok(None);
    }
    let mut context = state.template_context();
    context["result"] = state.step(step).result.clone().unwrap_or(Value::Null);
    let values = match crate::template::render_fields("set", &spec.set, &context, &state.budget) {
        Ok(Value::Object(values)) => values,
        Ok(_) => Map::new(),
        Err(error) => return Err(error.to_string()),
    };
    let mut ctx = state.ctx.clone();
    ctx.extend(values.clone());
    let bytes = json_size(&ctx);
    if bytes > MAX_CTX_BYTES {
        return Err(format!(
            "{CTX_TOO_LARGE}: the step's set would make ctx {bytes} bytes, over the limit of \
             {MAX_CTX_BYTES} bytes"
        ));
    }
    let previous = std::mem::replace(&mut state.ctx, ctx);
    Ok(Some(Writes { values, previous }))
}

/// The step failed after its `set` was written: `ctx` goes back to what it was.
pub(super) fn undo(state: &mut ExecutionState, writes: Option<Writes>) {
    if let Some(writes) = writes {
        state.ctx = writes.previous;
    }
}

/// The step succeeded: one `ctx_set` event per name written, and `ctx` is to be stored.
pub(super) fn record(
    state: &ExecutionState,
    step: StepIndex,
    writes: Option<Writes>,
    decision: &mut Decision,
) {
    let Some(writes) = writes else {
        return;
    };
    for (name, value) in writes.values {
        let bytes = json_size(&value);
        let mut payload = json!({"name": name, "bytes": bytes});
        if bytes <= MAX_EVENT_VALUE_BYTES {
            payload["value"] = value;
        }
        decision.record("ctx_set", step_payload(state, step, payload));
    }
    decision.ctx_changed = true;
}

fn json_size<T: serde::Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |json| json.len())
}

#[cfg(test)]
mod tests;
