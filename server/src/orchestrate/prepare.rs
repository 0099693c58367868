//! Starting an execution in memory, before it is committed: its steps, first events and first
//! commands (a submit's, or a child's, with the messages of the children it starts at once).

use noetl_contract::child::ParentLink;
use noetl_contract::engine::children::Nesting;
use noetl_contract::engine::{Event, ExecutionState};
use noetl_contract::message::{SubmitCommand, WireError, WireErrorCode};
use noetl_contract::step::StepIndex;
use noetl_contract::template;

use super::rows::{self, event_rows, new_tokens};
use super::{children, Orchestrator};
use crate::persistence::{self, to_json, NewExecution};
use crate::render;

impl Orchestrator {
    /// Starts a submitted execution in memory: its steps, first events and first commands,
    /// ready to be committed with the execution row. A first step whose `with` goes over its
    /// budget, or renders what cannot be stored, refuses the submit with that step's reason
    /// (nothing is stored; the other submits of the batch are not concerned).
    pub async fn prepare(&self, command: &SubmitCommand) -> Result<NewExecution, WireError> {
        self.prepare_child(command, None).await
    }

    /// [`Orchestrator::prepare`] for a child execution of `parent` (`None`: a submit); it hands
    /// its end back at once if it ends as it starts.
    pub async fn prepare_child(
        &self,
        command: &SubmitCommand,
        parent: Option<&ParentLink>,
    ) -> Result<NewExecution, WireError> {
        let mut state = ExecutionState::new(command.playbook.clone(), command.input.clone());
        state.nesting = Nesting {
            depth: parent.map_or(0, |p| p.depth),
            max_depth: self.inner.children.max_depth,
        };
        state.max_loop_items = self.inner.limits.max_loop_items;
        let decision = render::decide(&mut state, Event::Created, &self.inner.rendering).await;
        if let Some(refusal) = decision.refused {
            let code = match refusal.code {
                template::UNSTORABLE => WireErrorCode::UnstorableValue,
                noetl_contract::engine::LOOP_TOO_LARGE => WireErrorCode::LoopTooLarge,
                _ => WireErrorCode::TemplateBudgetExceeded,
            };
            return Err(WireError {
                code,
                message: format!("step {:?}: {}", refusal.step, refusal.message),
            });
        }
        let mut events = vec![("execution_created".to_owned(), "{}".to_owned())];
        events.extend(event_rows(&decision, &self.inner.rendering.secret_headers));
        let tokens = new_tokens(&decision);
        let family = children::Family {
            id: command.execution_id,
            tenant: &command.tenant,
            parent,
        };
        let unavailable = |e: persistence::Error| WireError {
            code: WireErrorCode::ShardUnavailable,
            message: e.to_string(),
        };
        let (starts, child_ids) = self
            .inner
            .children
            .starts(&family, &state, &decision, &tokens)
            .map_err(unavailable)?;
        let mut outbox = self.inner.leases.outbox_rows(
            self.inner.shard,
            command.execution_id,
            &state,
            &decision,
            &tokens,
        );
        outbox.extend(starts);
        outbox.extend(children::handback(&family, &state, &decision));
        Ok(NewExecution {
            execution_id: command.execution_id,
            playbook_name: command.playbook.name.clone(),
            playbook_version: command.playbook_version,
            tenant: command.tenant.clone(),
            playbook: to_json(&command.playbook),
            input: to_json(&state.input),
            labels: to_json(&command.labels),
            status: state.status,
            steps: StepIndex::all(state.steps.len())
                .map(|i| {
                    let mut row = self.inner.leases.step_row(&state, &decision, &tokens, i);
                    row.child_id = child_ids.get(&i).copied();
                    row
                })
                .collect(),
            events,
            outbox,
            parent: parent.cloned(),
            loops: rows::loop_changes(
                command.execution_id,
                &state,
                rows::Written::of(&decision),
                |(step, k)| tokens.get(&(step, Some(k))).copied(),
                |_| true,
                &self.inner.leases,
            ),
        })
    }
}
