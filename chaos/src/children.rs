//! The invariants of the parents ([`Shape::Parent`]) and their children, read from the shard
//! databases: each child stored once, on the shard its own id routes to, terminal, naming its
//! parent as `parent_id` and `root_id`, and named by its parent's `playbook` step (`child_id`,
//! and the result's `execution_id` once the step succeeded).

use std::collections::HashMap;

use anyhow::Context;
use noetl_contract::{shard_of, ExecutionId, ShardCount, ShardId};
use serde::Serialize;
use sqlx::PgPool;

use crate::load::{Ack, Shape, CHILD_STEP};

/// What the check of some parents found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Family {
    /// Children found (stored rows naming one of the parents).
    pub children: u64,
    /// Children the parent's step names that are missing, or not terminal.
    pub lost: Vec<ExecutionId>,
    /// Parents with more than one child.
    pub duplicated: u64,
    /// Children stored on a shard other than the one their id routes to.
    pub misrouted: u64,
    /// Parent and child that disagree: a step's `child_id` or result naming another execution, a
    /// child whose `parent_id` or `root_id` is not its parent, a child no step names.
    pub mislinked: u64,
}

/// A parent's `playbook` step: its status, `child_id`, and its result's `execution_id`.
type ParentStep = (String, Option<i64>, Option<String>);

/// A child as stored: where, its parent and root, its status.
#[derive(Debug, Clone)]
struct Child {
    id: i64,
    shard: ShardId,
    root_id: Option<i64>,
    status: String,
}

pub async fn check(pools: &[PgPool], count: ShardCount, acks: &[Ack]) -> anyhow::Result<Family> {
    let mut parents: HashMap<ShardId, Vec<i64>> = HashMap::new();
    for ack in acks.iter().filter(|a| a.shape == Shape::Parent) {
        parents
            .entry(shard_of(ack.execution_id, count))
            .or_default()
            .push(ack.execution_id.get());
    }
    let all: Vec<i64> = parents.values().flatten().copied().collect();
    let mut steps: HashMap<i64, ParentStep> = HashMap::new();
    let mut children: HashMap<i64, Vec<Child>> = HashMap::new();
    for (shard, pool) in count.shards().zip(pools) {
        let ids = parents.get(&shard).cloned().unwrap_or_default();
        let rows: Vec<(i64, String, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT execution_id, status, child_id, result->>'execution_id' FROM execution_steps
              WHERE execution_id = ANY($1) AND name = $2",
        )
        .bind(&ids)
        .bind(CHILD_STEP)
        .fetch_all(pool)
        .await
        .context("failed to read the parents' child steps")?;
        steps.extend(rows.into_iter().map(|(id, s, c, r)| (id, (s, c, r))));
        let rows: Vec<(i64, i64, Option<i64>, String)> = sqlx::query_as(
            "SELECT execution_id, parent_id, root_id, status FROM executions
              WHERE parent_id = ANY($1)",
        )
        .bind(&all)
        .fetch_all(pool)
        .await
        .context("failed to read the children")?;
        for (id, parent, root_id, status) in rows {
            children.entry(parent).or_default().push(Child {
                id,
                shard,
                root_id,
                status,
            });
        }
    }
    let mut family = Family::default();
    for parent in all {
        let found = children.remove(&parent).unwrap_or_default();
        let step = steps.get(&parent).cloned();
        judge(parent, step, &found, count, &mut family);
    }
    Ok(family)
}

/// Adds what one parent's step and the children naming it show to `family`.
fn judge(
    parent: i64,
    step: Option<ParentStep>,
    found: &[Child],
    count: ShardCount,
    family: &mut Family,
) {
    family.children += found.len() as u64;
    if found.len() > 1 {
        family.duplicated += 1;
    }
    for child in found {
        let routed = ExecutionId::new(child.id).map(|id| shard_of(id, count));
        if routed.ok() != Some(child.shard) {
            family.misrouted += 1;
        }
        if child.root_id != Some(parent) {
            family.mislinked += 1;
        }
        if !matches!(child.status.as_str(), "succeeded" | "failed" | "cancelled") {
            family.lost.extend(ExecutionId::new(child.id).ok());
        }
    }
    let (status, child_id, result_id) = step.unwrap_or_default();
    match child_id {
        // The step named a child that is not stored anywhere.
        Some(id) if found.is_empty() => family.lost.extend(ExecutionId::new(id).ok()),
        Some(id) if found.iter().any(|c| c.id != id) => family.mislinked += 1,
        Some(_) => {}
        // A child the step does not name, or a step that succeeded without one.
        None if !found.is_empty() || status == "succeeded" => family.mislinked += 1,
        None => {}
    }
    if status == "succeeded" && result_id != child_id.map(|id| id.to_string()) {
        family.mislinked += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(id: i64, shard: u32, root: i64, status: &str) -> Child {
        Child {
            id,
            shard: ShardId::new(shard),
            root_id: Some(root),
            status: status.to_owned(),
        }
    }

    fn judged(step: Option<ParentStep>, found: &[Child]) -> Family {
        let count = ShardCount::new(1).expect("one shard");
        let mut family = Family::default();
        judge(7, step, found, count, &mut family);
        family
    }

    fn succeeded(child: i64) -> Option<ParentStep> {
        Some(("succeeded".into(), Some(child), Some(child.to_string())))
    }

    #[test]
    fn a_parent_and_its_one_terminal_child_naming_each_other_pass() {
        let family = judged(succeeded(9), &[child(9, 0, 7, "succeeded")]);
        assert_eq!((family.children, family.mislinked), (1, 0));
        assert!(family.lost.is_empty());
    }

    #[test]
    fn missing_unfinished_doubled_and_misnamed_children_are_each_caught() {
        assert_eq!(judged(succeeded(9), &[]).lost.len(), 1);
        assert_eq!(
            judged(succeeded(9), &[child(9, 0, 7, "running")])
                .lost
                .len(),
            1
        );
        let two = [child(9, 0, 7, "succeeded"), child(10, 0, 7, "succeeded")];
        assert_eq!(judged(succeeded(9), &two).duplicated, 1);
        assert_eq!(
            judged(succeeded(9), &[child(9, 0, 8, "succeeded")]).mislinked,
            1
        );
        let wrong_result = Some(("succeeded".into(), Some(9), Some("10".into())));
        assert_eq!(
            judged(wrong_result, &[child(9, 0, 7, "succeeded")]).mislinked,
            1
        );
        assert_eq!(judged(None, &[child(9, 0, 7, "succeeded")]).mislinked, 1);
        // A parent that failed before its child step started has no child, rightly.
        assert_eq!(
            judged(Some(("skipped".into(), None, None)), &[]),
            Family::default()
        );
    }
}
