//! What one decision writes: the rows of the steps it changed, its events, and the commands it
//! queues in the outbox, with every stored delay and lease clamped to what PostgreSQL can hold,
//! and the secret token of each attempt it dispatches, in both the step's row and its command.

use std::collections::BTreeMap;

use noetl_contract::child::ParentLink;
use noetl_contract::command::StepCommand;
use noetl_contract::engine::children::Nesting;
use noetl_contract::engine::{Decision, ExecutionState};
use noetl_contract::playbook::{Millis, Playbook, DEFAULT_POOL};
use noetl_contract::redact::SecretHeaders;
use noetl_contract::status::StepStatus;
use noetl_contract::step::{AttemptToken, StepIndex, TOKEN_BYTES};
use noetl_contract::template;
use noetl_contract::{ExecutionId, ShardId};

use super::Leases;
use crate::persistence::{self, to_json, OutboxRow, Outgoing, StepRow};

/// One locked execution while a batch's events are applied to it.
pub(super) struct Working {
    pub(super) state: ExecutionState,
    pub(super) last_event_seq: i64,
    /// Whether any event applied (there is something to write).
    pub(super) changed: bool,
    /// The latest row of each changed step.
    pub(super) steps: BTreeMap<StepIndex, StepRow>,
    /// The token of the attempt that owns each step, as read under the lock and then as
    /// dispatches of this batch replace it.
    pub(super) tokens: Vec<Option<AttemptToken>>,
    pub(super) events: Vec<(String, String)>,
    pub(super) outbox: Vec<OutboxRow>,
    /// The bytes of its step results together.
    pub(super) results_bytes: i64,
    /// Whether a decision wrote its `ctx` (to be stored).
    pub(super) ctx_changed: bool,
    /// The child each step's current attempt started, as read and as this batch starts more.
    pub(super) child_ids: Vec<Option<ExecutionId>>,
    /// The step that started it, when it is a child.
    pub(super) parent: Option<ParentLink>,
    pub(super) tenant: String,
    /// Whether it was unfinished when locked (in its tenant's executions in flight).
    was_running: bool,
}

impl Working {
    /// The execution `locked`, its templates rendered within `budget`, its children no deeper
    /// than `max_depth`.
    pub(super) fn new(
        locked: persistence::LockedExecution,
        budget: template::Budget,
        max_depth: u32,
    ) -> Result<Self, persistence::Error> {
        let playbook: Playbook = serde_json::from_value(locked.playbook)
            .map_err(|e| persistence::Error::Malformed(format!("stored playbook: {e}")))?;
        Ok(Self {
            was_running: !locked.status.is_terminal(),
            state: ExecutionState {
                playbook,
                input: locked.input,
                status: locked.status,
                steps: locked.steps,
                ctx: locked.ctx,
                gotos: u32::try_from(locked.gotos).unwrap_or(0),
                budget,
                nesting: Nesting {
                    depth: locked.depth,
                    max_depth,
                },
            },
            last_event_seq: locked.last_event_seq,
            changed: false,
            steps: BTreeMap::new(),
            tokens: locked.tokens,
            events: Vec::new(),
            outbox: Vec::new(),
            results_bytes: locked.results_bytes,
            ctx_changed: false,
            child_ids: locked.child_ids,
            parent: locked.parent,
            tenant: locked.tenant,
        })
    }

    /// What to write; an execution it ended counts in its tenant's finished executions when
    /// `tenant_quota` is on.
    pub(super) fn into_change(
        self,
        execution_id: ExecutionId,
        tenant_quota: bool,
    ) -> persistence::ExecutionChange {
        let finished = tenant_quota && self.was_running && self.state.status.is_terminal();
        persistence::ExecutionChange {
            execution_id,
            status: self.state.status,
            last_event_seq: self.last_event_seq,
            steps: self.steps.into_values().collect(),
            events: self.events,
            outbox: self.outbox,
            results_bytes: self.results_bytes,
            ctx: self.ctx_changed.then(|| to_json(&self.state.ctx)),
            gotos: i32::try_from(self.state.gotos).unwrap_or(i32::MAX),
            finished_tenant: finished.then_some(self.tenant),
        }
    }
}

/// A fresh secret for each attempt `decision` dispatches.
pub(super) fn new_tokens(decision: &Decision) -> BTreeMap<StepIndex, AttemptToken> {
    decision
        .dispatches
        .iter()
        .map(|dispatch| (dispatch.step, new_token()))
        .collect()
}

/// 128 bits from the operating system's CSPRNG.
fn new_token() -> AttemptToken {
    let mut bytes = [0u8; TOKEN_BYTES];
    // The kernel's generator (getrandom(2)) does not fail once the system has booted; a server
    // that cannot draw a secret must not hand out a guessable one.
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    AttemptToken::from_bytes(bytes)
}

impl Leases {
    /// The row of step `index` after `decision`; a step it dispatched gets the attempt's token
    /// from `tokens` ([`new_tokens`]), any other keeps what its row holds.
    pub(super) fn step_row(
        &self,
        state: &ExecutionState,
        decision: &Decision,
        tokens: &BTreeMap<StepIndex, AttemptToken>,
        index: StepIndex,
    ) -> StepRow {
        let step = &state.steps[index.index()];
        // A `playbook` step runs no worker: its child's end ends it, however long it takes.
        let leased = !state.playbook.steps[index.index()].is_child();
        let lease_ms = match step.status {
            _ if !leased => None,
            StepStatus::Dispatched => {
                let delay = decision
                    .dispatches
                    .iter()
                    .find(|d| d.step == index)
                    .map_or(0, |d| d.delay_ms);
                Some(millis(delay.saturating_add(self.dispatch_lease_ms)))
            }
            StepStatus::Running => Some(millis(self.step_lease_ms)),
            _ => None,
        };
        StepRow {
            index,
            name: state.playbook.steps[index.index()].name.clone(),
            status: step.status,
            attempt: step.attempt,
            result: step.result.as_ref().map(to_json),
            error: step.error.clone(),
            lease_ms,
            started_at_ms: None,
            token: tokens.get(&index).copied(),
            child_id: None,
        }
    }

    /// The timeout of an attempt of a step whose `timeout` is `step`: it, or the default, and
    /// never over `max_step_timeout_ms`, which also bounds a step stored before the setting
    /// was lowered.
    fn timeout_ms(&self, step: Option<Millis>) -> u64 {
        step.map_or(self.default_timeout_ms, u64::from)
            .min(self.max_timeout_ms)
    }

    pub(super) fn outbox_rows(
        &self,
        shard: ShardId,
        id: ExecutionId,
        state: &ExecutionState,
        decision: &Decision,
        tokens: &BTreeMap<StepIndex, AttemptToken>,
    ) -> Vec<OutboxRow> {
        decision
            .dispatches
            .iter()
            .filter(|dispatch| !state.playbook.steps[dispatch.step.index()].is_child())
            .map(|dispatch| {
                let step = &state.playbook.steps[dispatch.step.index()];
                let command = StepCommand {
                    execution_id: id,
                    shard,
                    step_index: dispatch.step,
                    step: step.name.clone(),
                    attempt: dispatch.attempt,
                    action: step.action.clone(),
                    with: dispatch.with.clone(),
                    timeout_ms: self.timeout_ms(step.timeout),
                    lease_ms: self.step_lease_ms,
                    token: tokens.get(&dispatch.step).copied(),
                };
                OutboxRow {
                    pool: step.pool.clone().unwrap_or_else(|| DEFAULT_POOL.to_owned()),
                    command: Outgoing::Step(command),
                    delay_ms: millis(dispatch.delay_ms),
                }
            })
            .collect()
    }
}

/// The decision's events as stored, with the values of secret headers redacted.
pub(super) fn event_rows(decision: &Decision, secrets: &SecretHeaders) -> Vec<(String, String)> {
    decision
        .records
        .iter()
        .map(|r| {
            if r.kind != "step_dispatched" {
                return (r.kind.to_owned(), to_json(&r.payload));
            }
            let mut payload = r.payload.clone();
            secrets.redact(&mut payload);
            (r.kind.to_owned(), to_json(&payload))
        })
        .collect()
}

/// The longest delay or lease stored: a century. PostgreSQL's timestamps end in the year
/// 294276, so `now() + i64::MAX ms` is out of range and would fail the statement, and with it
/// every execution written in the same transaction; a delay of a century never comes either.
const MAX_STORED_MS: u64 = 100 * 366 * 24 * 3_600_000;

pub(super) fn millis(ms: u64) -> i64 {
    i64::try_from(ms.min(MAX_STORED_MS)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempts_timeout_is_its_steps_or_the_default_and_never_over_the_setting() {
        let leases = Leases {
            step_lease_ms: 30_000,
            dispatch_lease_ms: 300_000,
            default_timeout_ms: 1_000,
            max_timeout_ms: 5_000,
        };
        assert_eq!(leases.timeout_ms(None), 1_000);
        assert_eq!(leases.timeout_ms(Some(Millis(2_000))), 2_000);
        // A step stored before `max_step_timeout_ms` was lowered.
        assert_eq!(leases.timeout_ms(Some(Millis(86_400_000))), 5_000);
    }
}
