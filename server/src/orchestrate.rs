//! Performs the engine's decisions: the "do" half of decide-then-do.
//!
//! Every change to an execution happens in one transaction that holds the execution's row lock:
//! read the state, [`engine::decide`], write the changed steps, the new events and the commands
//! (into the outbox), commit, then wake the relay. Several replicas of one shard stay correct
//! because they take turns on the lock.

use std::sync::Arc;

use noetl_contract::command::StepCommand;
use noetl_contract::engine::{self, Decision, Event, ExecutionState, StepStatus};
use noetl_contract::message::{ExecutionStatus, SubmitCommand};
use noetl_contract::playbook::{Playbook, DEFAULT_POOL};
use noetl_contract::{ExecutionId, ShardId};
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::persistence::{self, NewExecution, OutboxRow, StepRow};

/// How long attempts may stay silent before they are presumed lost.
#[derive(Debug, Clone, Copy)]
pub struct Leases {
    /// A running attempt must heartbeat within this.
    pub step_lease_ms: u64,
    /// A dispatched attempt no worker has started yet (the command may be queued behind
    /// others) is presumed lost after this.
    pub dispatch_lease_ms: u64,
    /// Upper bound on an attempt when its step sets no `timeout`.
    pub default_timeout_ms: u64,
}

/// The outcome of applying an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    NotFound,
    /// Nothing changed: a stale or duplicate event.
    Stale(ExecutionStatus),
    Changed(ExecutionStatus),
}

/// Orchestration of one shard.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    pub shard: ShardId,
    pub pool: PgPool,
    pub leases: Leases,
    /// Woken after every commit that queued commands.
    pub relay: Arc<Notify>,
}

impl Orchestrator {
    /// Starts a submitted execution in memory: its steps, first events and first commands,
    /// ready to be committed with the execution row.
    pub fn prepare(&self, command: &SubmitCommand) -> NewExecution {
        let mut state = ExecutionState::new(command.playbook.clone(), command.input.clone());
        let decision = engine::decide(&mut state, Event::Created);
        let mut events = vec![("execution_created".to_owned(), "{}".to_owned())];
        events.extend(event_rows(&decision));
        NewExecution {
            execution_id: command.execution_id,
            playbook_name: command.playbook.name.clone(),
            playbook: to_json(&command.playbook),
            input: to_json(&state.input),
            labels: to_json(&command.labels),
            status: state.status,
            steps: (0..state.steps.len())
                .map(|i| self.step_row(&state, &decision, i))
                .collect(),
            events,
            outbox: self.outbox_rows(command.execution_id, &state, &decision),
        }
    }

    /// Applies `event` to execution `id` under its row lock.
    pub async fn apply(
        &self,
        id: ExecutionId,
        event: Event,
    ) -> Result<Applied, persistence::Error> {
        let mut tx = self.pool.begin().await?;
        let Some(locked) = persistence::lock_execution(&mut tx, id).await? else {
            return Ok(Applied::NotFound);
        };
        let playbook: Playbook = serde_json::from_value(locked.playbook)
            .map_err(|e| persistence::Error::Malformed(format!("stored playbook: {e}")))?;
        let mut state = ExecutionState {
            playbook,
            input: locked.input,
            status: locked.status,
            steps: locked.steps,
        };
        let decision = engine::decide(&mut state, event);
        if !decision.applied {
            return Ok(Applied::Stale(state.status));
        }
        let steps: Vec<StepRow> = decision
            .changed
            .iter()
            .map(|&i| self.step_row(&state, &decision, i))
            .collect();
        let outbox = self.outbox_rows(id, &state, &decision);
        persistence::save_decision(
            &mut tx,
            id,
            state.status,
            locked.last_event_seq,
            &steps,
            &event_rows(&decision),
            &outbox,
        )
        .await?;
        tx.commit().await?;
        if !outbox.is_empty() {
            self.relay.notify_one();
        }
        if let Some(status) = decision.finished {
            metrics::counter!("noetl_server_executions_finished_total", "shard" => self.shard.to_string(), "status" => status.as_str())
                .increment(1);
        }
        Ok(Applied::Changed(state.status))
    }

    fn step_row(&self, state: &ExecutionState, decision: &Decision, index: usize) -> StepRow {
        let step = &state.steps[index];
        let lease_ms = match step.status {
            StepStatus::Dispatched => {
                let delay = decision
                    .dispatches
                    .iter()
                    .find(|d| d.step == index)
                    .map_or(0, |d| d.delay_ms);
                Some(millis(delay + self.leases.dispatch_lease_ms))
            }
            StepStatus::Running => Some(millis(self.leases.step_lease_ms)),
            _ => None,
        };
        StepRow {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            name: state.playbook.steps[index].name.clone(),
            status: step.status,
            attempt: step.attempt,
            result: step.result.as_ref().map(to_json),
            error: step.error.clone(),
            lease_ms,
        }
    }

    fn outbox_rows(
        &self,
        id: ExecutionId,
        state: &ExecutionState,
        decision: &Decision,
    ) -> Vec<OutboxRow> {
        decision
            .dispatches
            .iter()
            .map(|dispatch| {
                let step = &state.playbook.steps[dispatch.step];
                let command = StepCommand {
                    execution_id: id,
                    shard: self.shard,
                    step_index: u32::try_from(dispatch.step).unwrap_or(u32::MAX),
                    step: step.name.clone(),
                    attempt: dispatch.attempt,
                    action: step.action.clone(),
                    with: dispatch.with.clone(),
                    timeout_ms: step
                        .timeout
                        .map_or(self.leases.default_timeout_ms, u64::from),
                    lease_ms: self.leases.step_lease_ms,
                };
                OutboxRow {
                    pool: step.pool.clone().unwrap_or_else(|| DEFAULT_POOL.to_owned()),
                    command: to_json(&command),
                    delay_ms: millis(dispatch.delay_ms),
                }
            })
            .collect()
    }
}

fn event_rows(decision: &Decision) -> Vec<(String, String)> {
    decision
        .records
        .iter()
        .map(|r| (r.kind.to_owned(), to_json(&r.payload)))
        .collect()
}

fn millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// JSON text for a database column; the values came out of JSON, so they go back in.
pub fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value)
        .expect("playbooks, inputs, labels and results are plain JSON values")
}
