//! The conditions checked under an execution's lock before an event is applied: a report's
//! token (and a child's return's child), a lease still expired, a dead letter's outbox row
//! still there.

use noetl_contract::engine::Event;
use noetl_contract::step::{Attempt, AttemptToken, StepIndex};
use noetl_contract::ExecutionId;
use sqlx::{Postgres, Transaction};

use super::rows::Working;
use crate::persistence;

/// A condition checked under the execution's lock before an event is applied.
#[derive(Debug, Clone, Copy)]
pub(super) enum Guard {
    None,
    /// The attempt's lease (of the step, or of its loop item) is still expired (no heartbeat
    /// extended it meanwhile).
    LeaseExpired {
        step: StepIndex,
        attempt: Attempt,
        item: Option<u32>,
    },
    /// The command's outbox row is still there, and is moved to the dead letters.
    DeadLetter(persistence::Undeliverable),
    /// A worker's report: if it names the attempt that owns the step (or its loop item),
    /// `sent` is its token. (A report of another attempt is left to the engine, which finds
    /// it stale.) A child's return also names the `child`, which must be the one the attempt
    /// started.
    Token {
        step: StepIndex,
        attempt: Attempt,
        item: Option<u32>,
        sent: Option<AttemptToken>,
        child: Option<ExecutionId>,
    },
}

/// What a guard found.
pub(super) enum Checked {
    Holds,
    /// Nothing to do: the event is stale.
    Stale,
    /// The report names the owning attempt without its token (or from another child).
    Refused,
}

impl Guard {
    /// The guard of a worker's report (or a child's return, from `child`): its `Finished`
    /// event (of a step or a loop item) and the token it carried.
    pub(super) fn report(
        event: &Event,
        sent: Option<AttemptToken>,
        child: Option<ExecutionId>,
    ) -> Self {
        match event {
            Event::Finished { step, attempt, .. } => Guard::Token {
                step: *step,
                attempt: *attempt,
                item: None,
                sent,
                child,
            },
            Event::Item { item, event } => match Guard::report(event, sent, child) {
                Guard::Token {
                    step,
                    attempt,
                    sent,
                    child,
                    ..
                } => Guard::Token {
                    step,
                    attempt,
                    item: Some(*item),
                    sent,
                    child,
                },
                other => other,
            },
            _ => Guard::None,
        }
    }

    /// Checks the guard of an event of execution `id`, locked as `work`, inside `tx`.
    pub(super) async fn check(
        self,
        tx: &mut Transaction<'_, Postgres>,
        id: ExecutionId,
        work: &Working,
    ) -> Result<Checked, persistence::Error> {
        let holds = match self {
            Guard::None => true,
            Guard::Token {
                step,
                attempt,
                item,
                sent,
                child,
            } => {
                let (owner, token, started) = match item {
                    None => (
                        work.state.steps.get(step.index()).map(|s| s.attempt),
                        work.tokens.get(step.index()).and_then(Option::as_ref),
                        work.child_ids.get(step.index()).copied().flatten(),
                    ),
                    Some(k) => (
                        work.state.items.get(&(step, k)).map(|i| i.attempt),
                        work.item_tokens.get(&(step, k)).and_then(Option::as_ref),
                        None,
                    ),
                };
                let admitted = AttemptToken::admits(token, sent.as_ref())
                    && child.is_none_or(|child| started == Some(child));
                if owner == Some(attempt) && !admitted {
                    return Ok(Checked::Refused);
                }
                true
            }
            Guard::LeaseExpired {
                step,
                attempt,
                item: None,
            } => persistence::lease_expired(tx, id, step, attempt).await?,
            Guard::LeaseExpired {
                step,
                attempt,
                item: Some(k),
            } => persistence::item_lease_expired(tx, (id, step, k), attempt).await?,
            Guard::DeadLetter(undeliverable) => {
                persistence::dead_letter(tx, &undeliverable).await?
            }
        };
        Ok(if holds {
            Checked::Holds
        } else {
            Checked::Stale
        })
    }
}
