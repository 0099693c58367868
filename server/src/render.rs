//! Deciding off the async runtime when a decision may render a template.
//!
//! A step's `with` is rendered inside [`engine::decide`]: at submit, before the commit, and in
//! the report transaction, while the execution's row lock is held. Its cost is bounded by the
//! template [`Budget`] (fuel, bytes, depth); this module keeps even a bounded render off the
//! runtime's threads, which every shard's requests share, and gives it a deadline as a backstop.

use std::sync::OnceLock;
use std::time::Duration;

use noetl_contract::engine::{self, Decision, Event, ExecutionState};
use noetl_contract::redact::SecretHeaders;
use noetl_contract::template::Budget;
use tokio::sync::Semaphore;

/// Renders running at once in this process: one per core, so however many templates arrive,
/// rendering never takes more CPU than the host has, and the runtime's threads keep theirs.
fn renders() -> &'static Semaphore {
    static RENDERS: OnceLock<Semaphore> = OnceLock::new();
    RENDERS.get_or_init(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
    })
}

/// Default deadline of one decision that renders templates.
pub const DEFAULT_DEADLINE_MS: u64 = 5_000;

/// What rendering a step's `with` may cost on this server.
#[derive(Debug, Clone)]
pub struct Rendering {
    pub budget: Budget,
    /// A render still running after this is abandoned (see [`decide`]).
    pub deadline: Duration,
    /// `secret_headers`: their values in a dispatched step's `with.headers` are logged as
    /// `<redacted>` (the worker's command keeps them).
    pub secret_headers: SecretHeaders,
}

impl Default for Rendering {
    fn default() -> Self {
        Self {
            budget: Budget::default(),
            deadline: Duration::from_millis(DEFAULT_DEADLINE_MS),
            secret_headers: SecretHeaders::default(),
        }
    }
}

/// Applies `event` to `state` with this server's budget ([`engine::decide`]).
///
/// A playbook without templates is decided in place: nothing it does is costly. Otherwise the
/// decision runs on a blocking thread, awaited for at most the deadline. The fuel bounds a
/// render, so only a starved host reaches the deadline; the render is then abandoned (its thread
/// finishes on its own when the fuel runs out) and the event is decided again with a spent
/// budget, which fails each step it renders with `template_budget_exceeded`, as if it had run
/// out. A render that panics is treated the same way. Renders wait for one of the process's
/// [`renders`] permits first; the wait is not part of the deadline, so a busy host delays a
/// step but never fails it.
pub async fn decide(state: &mut ExecutionState, event: Event, rendering: &Rendering) -> Decision {
    state.budget = rendering.budget;
    if !state.renders_templates() {
        return engine::decide(state, event);
    }
    let mut owned = state.clone();
    let again = event.clone();
    // The semaphore is never closed, so acquiring only waits.
    let permit = renders().acquire().await.ok();
    let task = tokio::task::spawn_blocking(move || {
        let decision = engine::decide(&mut owned, event);
        // Held until the render ends, even when its caller gave up at the deadline.
        drop(permit);
        (owned, decision)
    });
    let why = match tokio::time::timeout(rendering.deadline, task).await {
        Ok(Ok((decided, decision))) => {
            *state = decided;
            return decision;
        }
        Ok(Err(e)) => format!("the render failed: {e}"),
        Err(_) => format!(
            "the render ran past its deadline of {:?}",
            rendering.deadline
        ),
    };
    tracing::warn!(playbook = %state.playbook.name, reason = %why, "abandoned a render; its steps fail with template_budget_exceeded");
    metrics::counter!("noetl_server_renders_abandoned_total").increment(1);
    state.budget = Budget::spent();
    let decision = engine::decide(state, again);
    state.budget = rendering.budget;
    decision
}

#[cfg(test)]
mod tests {
    use noetl_contract::playbook::Playbook;
    use noetl_contract::status::StepStatus;
    use serde_json::json;

    use super::*;

    fn one_step(template: &str) -> ExecutionState {
        let playbook: Playbook = serde_json::from_value(json!({
            "name": "p",
            "steps": [{"name": "s", "action": "noop", "with": {"x": template}}]
        }))
        .expect("a playbook");
        ExecutionState::new(playbook, json!({}))
    }

    /// Within its budget, but not within a deadline of zero.
    const LOOP: &str = "{% for i in range(100000) %}{% endfor %}done";

    #[tokio::test]
    async fn a_render_within_its_deadline_decides_as_the_engine_does() {
        let mut state = one_step(LOOP);
        let decision = decide(&mut state, Event::Created, &Rendering::default()).await;
        assert_eq!(decision.refused, None);
        assert_eq!(decision.dispatches[0].with, json!({"x": "done"}));
        assert_eq!(state.steps[0].status, StepStatus::Dispatched);
    }

    #[tokio::test]
    async fn a_render_past_its_deadline_fails_its_step_with_the_budget_code() {
        // Millions of iterations, within a budget raised for them: far longer than no time.
        let mut state = one_step(
            "{% for i in range(1000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}",
        );
        let rendering = Rendering {
            budget: Budget {
                fuel: 100_000_000,
                ..Budget::default()
            },
            deadline: Duration::ZERO,
            ..Rendering::default()
        };
        let decision = decide(&mut state, Event::Created, &rendering).await;
        let refused = decision.refused.expect("refused");
        assert_eq!(refused.code, noetl_contract::template::BUDGET_EXCEEDED);
        assert_eq!(state.steps[0].status, StepStatus::Failed);
        assert_eq!(state.budget, rendering.budget, "the budget is restored");
    }
}
