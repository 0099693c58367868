//! The conditions checked under an execution's lock before an event is applied to it.

use noetl_contract::engine::Event;
use noetl_contract::step::{Attempt, AttemptToken, StepIndex};
use noetl_contract::ExecutionId;

use super::rows::Working;
use crate::persistence;

/// A condition checked under the execution's lock before an event is applied.
#[derive(Debug, Clone, Copy)]
pub(super) enum Guard {
    None,
    /// The attempt's lease is still expired (no heartbeat extended it meanwhile).
    LeaseExpired {
        step: StepIndex,
        attempt: Attempt,
    },
    /// The command's outbox row is still there, and is moved to the dead letters.
    DeadLetter(persistence::Undeliverable),
    /// A worker's report: if it names the attempt that owns the step, `sent` is its token.
    /// (A report of another attempt is left to the engine, which finds it stale.) A child's
    /// return also names the `child`, which must be the one the attempt started.
    Token {
        step: StepIndex,
        attempt: Attempt,
        sent: Option<AttemptToken>,
        child: Option<ExecutionId>,
    },
}

impl Guard {
    /// The guard of a worker's report (or a child's return, from `child`): its `Finished`
    /// event and the token it carried.
    pub(super) fn report(
        event: &Event,
        sent: Option<AttemptToken>,
        child: Option<ExecutionId>,
    ) -> Self {
        match *event {
            Event::Finished { step, attempt, .. } => Guard::Token {
                step,
                attempt,
                sent,
                child,
            },
            _ => Guard::None,
        }
    }

    /// Whether a report of the attempt that owns its step may apply to `work`: it carries the
    /// attempt's token and, for a child's return, comes from the attempt's child.
    pub(super) fn admits(&self, work: &Working) -> bool {
        let Guard::Token {
            step,
            attempt,
            sent,
            child,
        } = self
        else {
            return true;
        };
        let i = step.index();
        if work.state.steps.get(i).map(|s| s.attempt) != Some(*attempt) {
            return true;
        }
        AttemptToken::admits(work.tokens.get(i).and_then(Option::as_ref), sent.as_ref())
            && child.is_none_or(|child| work.child_ids.get(i).copied().flatten() == Some(child))
    }
}
