//! The parent's and the child's halves of a child execution, written with the decisions that
//! make them (wiki/execution-model.md, "Children across shards"): a `playbook` step's dispatch
//! becomes the start of a child, minted here under the server's own node-id lease; a child's
//! end becomes its return to the parent; a parent's cancel withdraws the starts not yet sent
//! and cancels the children already started. All of them go into the outbox, in the
//! transaction of the decision, and the relay sends them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use noetl_bus::nodes::NodeLease;
use noetl_contract::child::{ChildCancel, ChildReturn, ChildStart, ParentLink};
use noetl_contract::command::StepReport;
use noetl_contract::engine::{children, Decision, Event, ExecutionState};
use noetl_contract::message::{Labels, SubmitCommand, WireError};
use noetl_contract::playbook::ChildPlaybook;
use noetl_contract::step::{AttemptToken, StepIndex};
use noetl_contract::{ExecutionId, IdGenerator};
use serde_json::Value;
use sqlx::{Postgres, Transaction};

use super::rows::Working;
use crate::persistence::{self, OutboxRow, Outgoing};

/// How a shard's server starts children: the ids it mints, and how deep they may nest.
#[derive(Debug)]
pub struct Children {
    /// The server's node-id lease, from the same bucket as the gateways', so a child's id
    /// never collides with a submitted one.
    lease: NodeLease,
    ids: Mutex<Option<IdGenerator>>,
    /// `max_child_depth`.
    pub max_depth: u32,
}

/// What an execution is, for the children it starts.
pub(super) struct Family<'a> {
    pub id: ExecutionId,
    pub tenant: &'a str,
    pub parent: Option<&'a ParentLink>,
}

impl Children {
    pub fn new(lease: NodeLease, max_depth: u32) -> Self {
        Self {
            lease,
            ids: Mutex::new(None),
            max_depth,
        }
    }

    /// A new execution id, as a gateway mints one: under the leased node id.
    fn mint(&self) -> Result<ExecutionId, persistence::Error> {
        self.lease
            .next_id(&self.ids, noetl_bus::unix_now_ms())
            .ok_or(persistence::Error::Unavailable(
                "the server holds no node-id lease, so it cannot start a child execution",
            ))?
            .map_err(|_| persistence::Error::Unavailable("the clock went back; retry"))
    }

    /// The starts of the children `decision` dispatched (one per attempt of a `playbook` step),
    /// with the id of each, by step. The child's input is the dispatch's rendered `input`; its
    /// tenant is the parent's.
    pub(super) fn starts(
        &self,
        family: &Family<'_>,
        state: &ExecutionState,
        decision: &Decision,
        tokens: &BTreeMap<StepIndex, AttemptToken>,
    ) -> Result<(Vec<OutboxRow>, BTreeMap<StepIndex, ExecutionId>), persistence::Error> {
        let mut rows = Vec::new();
        let mut ids = BTreeMap::new();
        for dispatch in &decision.dispatches {
            let step = &state.playbook.steps[dispatch.step.index()];
            let Some(ChildPlaybook::Inline(playbook)) = step.child_playbook() else {
                if step.is_child() {
                    // Refused at submit: catalog references are resolved by the gateway.
                    return Err(persistence::Error::Malformed(format!(
                        "step {:?} names an unresolved catalog playbook",
                        step.name
                    )));
                }
                continue;
            };
            let token = tokens.get(&dispatch.step).copied().ok_or_else(|| {
                persistence::Error::Malformed("a dispatch without a token".to_owned())
            })?;
            let child_id = self.mint()?;
            let input = match dispatch.with.get("input") {
                Some(Value::Object(input)) => Value::Object(input.clone()),
                _ => Value::Object(serde_json::Map::new()),
            };
            let start = ChildStart {
                submit: SubmitCommand {
                    execution_id: child_id,
                    playbook: *playbook,
                    playbook_version: None,
                    tenant: family.tenant.to_owned(),
                    input,
                    labels: Labels::new(),
                },
                parent: ParentLink {
                    parent_id: family.id,
                    root_id: family.parent.map_or(family.id, |p| p.root_id),
                    step_index: dispatch.step,
                    attempt: dispatch.attempt,
                    token,
                    depth: state.nesting.depth + 1,
                },
            };
            rows.push(OutboxRow::message(Outgoing::Start(start)));
            ids.insert(dispatch.step, child_id);
        }
        Ok((rows, ids))
    }
}

/// The return of a child that just ended (`decision.finished`) to its parent's step.
pub(super) fn handback(
    family: &Family<'_>,
    state: &ExecutionState,
    decision: &Decision,
) -> Option<OutboxRow> {
    let parent = family.parent?;
    decision.finished?;
    let now = noetl_bus::unix_now_ms();
    let report = StepReport {
        execution_id: parent.parent_id,
        step_index: parent.step_index,
        attempt: parent.attempt,
        outcome: children::outcome(family.id, state),
        started_at_ms: now,
        finished_at_ms: now,
        worker: format!("child {}", family.id),
        token: Some(parent.token),
    };
    Some(OutboxRow::message(Outgoing::Return(ChildReturn {
        child_id: family.id,
        report,
    })))
}

/// Within `tx`, which holds the parent's lock, as the parent is cancelled: withdraws the start
/// of each child of `steps` (read before the cancel: the steps whose child runs) still in the
/// outbox, and returns a cancel for every other.
pub(super) async fn cancel(
    tx: &mut Transaction<'_, Postgres>,
    family: &Family<'_>,
    child_ids: &[Option<ExecutionId>],
    steps: &[StepIndex],
) -> Result<Vec<OutboxRow>, persistence::Error> {
    let mut rows = Vec::new();
    for step in steps {
        let Some(child_id) = child_ids.get(step.index()).copied().flatten() else {
            continue;
        };
        if !persistence::withdraw_start(tx, family.id, child_id).await? {
            rows.push(OutboxRow::message(Outgoing::Cancel(ChildCancel {
                child_id,
                tenant: family.tenant.to_owned(),
            })));
        }
    }
    Ok(rows)
}

impl Children {
    /// The messages of the child protocol one applied decision of `work` (execution `id`)
    /// makes: the starts of the children it dispatched (their ids recorded in `work`), its
    /// return to its parent if it ended, and, for a cancel, the withdrawals and cancels of the
    /// children of `running` (the steps whose child ran before the cancel).
    pub(super) async fn messages(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        work: &mut Working,
        id: ExecutionId,
        decision: &Decision,
        tokens: &BTreeMap<StepIndex, AttemptToken>,
        running: &[StepIndex],
    ) -> Result<Vec<OutboxRow>, persistence::Error> {
        let family = Family {
            id,
            tenant: &work.tenant,
            parent: work.parent.as_ref(),
        };
        let (mut rows, started) = self.starts(&family, &work.state, decision, tokens)?;
        rows.extend(handback(&family, &work.state, decision));
        if !running.is_empty() {
            rows.extend(cancel(tx, &family, &work.child_ids, running).await?);
        }
        for (step, child) in started {
            if let Some(slot) = work.child_ids.get_mut(step.index()) {
                *slot = Some(child);
            }
        }
        Ok(rows)
    }
}

impl super::Orchestrator {
    /// Fails the parent step of a child whose shard refused to start it (and always will):
    /// stale when the attempt no longer owns the step. `false` when the database failed (the
    /// start stays in the outbox, to be refused again).
    pub async fn refuse_child(&self, start: &ChildStart, refusal: &WireError) -> bool {
        let link = &start.parent;
        let event = Event::Undeliverable {
            step: link.step_index,
            attempt: link.attempt,
            error: format!(
                "the child execution {} could not start: {}",
                start.submit.execution_id, refusal.message
            ),
        };
        match self.apply(link.parent_id, event).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(execution_id = %link.parent_id, error = %e, "failing a step whose child was refused failed; the start is sent again");
                false
            }
        }
    }
}
