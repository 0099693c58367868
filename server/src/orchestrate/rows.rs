//! What one decision writes: the rows of the steps it changed, its events, and the commands it
//! queues in the outbox, with every stored delay and lease clamped to what PostgreSQL can hold,
//! and the secret token of each attempt it dispatches, in both the step's row and its command.

use std::collections::{BTreeMap, BTreeSet};

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
use crate::persistence::{self, to_json, ItemRow, LoopChanges, OutboxRow, Outgoing, StepRow};

/// The token of each attempt a decision dispatched, by step and loop item.
pub(super) type Tokens = BTreeMap<(StepIndex, Option<u32>), AttemptToken>;

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
    /// The token of each loaded loop item's current attempt, as dispatches replace them.
    pub(super) item_tokens: BTreeMap<(StepIndex, u32), Option<AttemptToken>>,
    /// Loop items changed since they were last written.
    pub(super) items_changed: BTreeSet<(StepIndex, u32)>,
    /// Loops (re)started since the items were last written.
    pub(super) restarted: Vec<StepIndex>,
    /// The delay of each item dispatch since the items were last written (its lease's start).
    item_delays: BTreeMap<(StepIndex, u32), u64>,
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
        max_loop_items: u32,
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
                items: BTreeMap::new(),
                max_loop_items,
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
            item_tokens: BTreeMap::new(),
            items_changed: BTreeSet::new(),
            restarted: Vec::new(),
            item_delays: BTreeMap::new(),
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

impl Working {
    /// Takes what `decision` changed into the execution `id` of `shard`, to be written, with
    /// the tokens of the attempts it dispatched ([`new_tokens`]).
    pub(super) fn absorb(
        &mut self,
        (id, shard): (ExecutionId, ShardId),
        leases: &Leases,
        decision: &Decision,
        tokens: &Tokens,
        reported_start: Option<(StepIndex, i64)>,
        secrets: &SecretHeaders,
    ) {
        for &i in &decision.changed {
            let mut row = leases.step_row(&self.state, decision, tokens, i);
            // A step this decision did not dispatch keeps its attempt's token.
            match (row.token, self.tokens.get_mut(i.index())) {
                (Some(new), Some(owned)) => *owned = Some(new),
                (None, Some(owned)) => row.token = *owned,
                (_, None) => {}
            }
            row.started_at_ms = reported_start
                .filter(|(step, _)| *step == i)
                .map(|(_, at)| at)
                .or_else(|| self.steps.get(&i).and_then(|r| r.started_at_ms));
            row.child_id = self.child_ids.get(i.index()).copied().flatten();
            self.steps.insert(i, row);
        }
        self.note_loops(decision, tokens);
        self.changed = true;
        self.ctx_changed |= decision.ctx_changed;
        self.events.extend(event_rows(decision, secrets));
        self.outbox
            .extend(leases.outbox_rows(shard, id, &self.state, decision, tokens));
    }

    /// Notes what `decision` changed in loops, and the tokens of the items it dispatched.
    fn note_loops(&mut self, decision: &Decision, tokens: &Tokens) {
        let written = Written::of(decision);
        self.items_changed.extend(written.items);
        self.restarted.extend(written.restarted);
        self.item_delays.extend(written.delays);
        for (&(step, item), &token) in tokens {
            if let Some(item) = item {
                self.item_tokens.insert((step, item), Some(token));
            }
        }
    }

    /// The loop changes not written yet, which it forgets (the progress of the loop steps it
    /// changed included).
    pub(super) fn take_loops(&mut self, id: ExecutionId, leases: &Leases) -> LoopChanges {
        let written = Written {
            restarted: std::mem::take(&mut self.restarted),
            items: std::mem::take(&mut self.items_changed),
            delays: std::mem::take(&mut self.item_delays),
        };
        let steps = &self.steps;
        let tokens = &self.item_tokens;
        loop_changes(
            id,
            &self.state,
            written,
            |key| tokens.get(&key).copied().flatten(),
            |i| steps.contains_key(&i),
            leases,
        )
    }
}

/// What to write of the loops: the loops (re)started, the items changed, and the delay of each
/// item dispatched.
pub(super) struct Written {
    pub(super) restarted: Vec<StepIndex>,
    pub(super) items: BTreeSet<(StepIndex, u32)>,
    pub(super) delays: BTreeMap<(StepIndex, u32), u64>,
}

impl Written {
    /// What one decision changed in the loops.
    pub(super) fn of(decision: &Decision) -> Self {
        Self {
            restarted: decision.loops_started.clone(),
            items: decision.items.iter().copied().collect(),
            delays: decision
                .dispatches
                .iter()
                .filter_map(|d| Some(((d.step, d.item?), d.delay_ms)))
                .collect(),
        }
    }
}

/// The rows of `written` for execution `id` in `state`, with each item's token (`token_of`),
/// and the progress of the loop steps `changed` says were.
pub(super) fn loop_changes(
    id: ExecutionId,
    state: &ExecutionState,
    written: Written,
    token_of: impl Fn((StepIndex, u32)) -> Option<AttemptToken>,
    changed: impl Fn(StepIndex) -> bool,
    leases: &Leases,
) -> LoopChanges {
    let Written {
        restarted,
        items,
        delays,
    } = written;
    let fresh: BTreeSet<StepIndex> = restarted.iter().copied().collect();
    let items = items
        .into_iter()
        .filter_map(|(step, k)| {
            let item = state.items.get(&(step, k))?;
            Some(ItemRow {
                key: (id, step, k),
                status: item.status,
                attempt: item.attempt,
                tries: item.tries,
                token: token_of((step, k)),
                value: fresh.contains(&step).then(|| to_json(&item.value)),
                result: item.result.as_ref().map(to_json),
                error: item.error.clone(),
                lease_ms: leases
                    .item_lease_ms(item.status, delays.get(&(step, k)).copied().unwrap_or(0)),
            })
        })
        .collect();
    let progress = state
        .steps
        .iter()
        .zip(StepIndex::all(state.steps.len()))
        .filter(|&(_, i)| changed(i))
        .filter_map(|(s, i)| s.loop_.map(|p| (id, i, to_json(&p))))
        .collect();
    LoopChanges {
        restarted: restarted.into_iter().map(|step| (id, step)).collect(),
        items,
        progress,
    }
}

/// A fresh secret for each attempt `decision` dispatches.
pub(super) fn new_tokens(decision: &Decision) -> Tokens {
    decision
        .dispatches
        .iter()
        .map(|dispatch| ((dispatch.step, dispatch.item), new_token()))
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
        tokens: &Tokens,
        index: StepIndex,
    ) -> StepRow {
        let step = &state.steps[index.index()];
        // A `playbook` step runs no worker: its child's end ends it, however long it takes.
        let leased = !state.playbook.steps[index.index()].is_child();
        let lease_ms = match step.status {
            // A loop's leases are its items'.
            _ if step.loop_.is_some() => None,
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
            token: tokens.get(&(index, None)).copied(),
            child_id: None,
        }
    }

    /// The lease of a loop item in `status` after a decision, dispatched after `delay_ms`:
    /// as a step's.
    fn item_lease_ms(&self, status: StepStatus, delay_ms: u64) -> Option<i64> {
        match status {
            StepStatus::Dispatched => Some(millis(delay_ms.saturating_add(self.dispatch_lease_ms))),
            StepStatus::Running => Some(millis(self.step_lease_ms)),
            _ => None,
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
        tokens: &Tokens,
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
                    token: tokens.get(&(dispatch.step, dispatch.item)).copied(),
                    item: dispatch.item,
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
            // Only a dispatch that names a secret header is copied to be redacted.
            if r.kind != "step_dispatched" || !secrets.holds_secret(&r.payload) {
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
