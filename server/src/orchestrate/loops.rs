//! Loops under the execution's lock: the items a batch's events need, loaded before deciding
//! (those the events name, and as many next items to dispatch as the batch has item events
//! per loop), and the result of a loop whose items all ended, assembled once from the stored
//! items (wiki/execution-model.md, "How a loop runs").

use std::collections::{BTreeMap, HashMap};

use noetl_contract::engine::Event;
use noetl_contract::step::StepIndex;
use noetl_contract::ExecutionId;
use sqlx::{Postgres, Transaction};

use super::guard::Guard;
use super::rows::Working;
use super::Leases;
use crate::persistence::{self, ItemKey};

/// Loads into each execution's state the loop items that `events` may touch.
pub(super) async fn load(
    tx: &mut Transaction<'_, Postgres>,
    working: &mut BTreeMap<ExecutionId, Working>,
    events: &[(ExecutionId, Event, Guard)],
) -> Result<(), persistence::Error> {
    let mut keys: Vec<ItemKey> = Vec::new();
    let mut per_loop: HashMap<(ExecutionId, StepIndex), u32> = HashMap::new();
    for (id, event, _) in events {
        if let Event::Item { item, event } = event {
            if let Some(step) = step_of(event) {
                keys.push((*id, step, *item));
                *per_loop.entry((*id, step)).or_default() += 1;
            }
        }
    }
    if keys.is_empty() {
        return Ok(());
    }
    // Each item event frees at most one place: the next items to dispatch.
    for ((id, step), count) in per_loop {
        let progress = working
            .get(&id)
            .and_then(|w| w.state.steps.get(step.index()))
            .and_then(|s| s.loop_);
        if let Some(p) = progress {
            let end = p.next.saturating_add(count).min(p.total);
            keys.extend((p.next..end).map(|k| (id, step, k)));
        }
    }
    keys.sort_unstable();
    keys.dedup();
    for loaded in persistence::load_items(tx, &keys).await? {
        let (id, step, k) = loaded.key;
        if let Some(work) = working.get_mut(&id) {
            work.state.items.insert((step, k), loaded.state);
            work.item_tokens.insert((step, k), loaded.token);
        }
    }
    Ok(())
}

fn step_of(event: &Event) -> Option<StepIndex> {
    match event {
        Event::Started { step, .. }
        | Event::Finished { step, .. }
        | Event::LeaseExpired { step, .. }
        | Event::Undeliverable { step, .. } => Some(*step),
        _ => None,
    }
}

/// The items' results of loop `step` in item order, once its last item ended: the items
/// changed so far are written first, then aggregated by the database.
pub(super) async fn result(
    tx: &mut Transaction<'_, Postgres>,
    id: ExecutionId,
    work: &mut Working,
    leases: &Leases,
    step: StepIndex,
) -> Result<serde_json::Value, persistence::Error> {
    let changes = work.take_loops(id, leases);
    persistence::save_loops(tx, &changes).await?;
    persistence::loop_result(tx, id, step).await
}
