//! The child protocol's requests to a shard (server to server; wiki/execution-model.md,
//! "Children across shards"): a child's start, committed once by id like a submit, and a
//! child's return, applied to its parent's step like a worker's report, fenced by the step's
//! attempt, its token, and the child it started.

use noetl_bus::Message;
use noetl_contract::child::{ChildReturn, ChildStart, ParentLink};
use noetl_contract::command::ReportAck;
use noetl_contract::message::{SubmitCommand, SubmitReceipt, WireError, WireErrorCode};

use super::{admit, body, record, routed_id, wire_error, Shard};

/// Commits a child execution (the subject names the child's id); a start sent again finds it
/// committed and answers `created: false`.
pub(super) async fn start(shard: &Shard, message: &Message) -> Result<SubmitReceipt, WireError> {
    let id = routed_id(shard, message)?;
    let start: ChildStart = body(message, id, |s: &ChildStart| s.submit.execution_id)?;
    admit(shard, &start.submit, Some(&start.parent)).await
}

/// Applies a child's return to its parent's step (the subject names the parent's id).
pub(super) async fn returned(shard: &Shard, message: &Message) -> Result<ReportAck, WireError> {
    let id = routed_id(shard, message)?;
    let returned: ChildReturn = body(message, id, |r: &ChildReturn| r.report.execution_id)?;
    record(shard, id, returned.report, Some(returned.child_id)).await
}

/// Refuses an execution whose inline playbooks nest deeper than `max_child_depth` allows below
/// its own depth (`nesting_too_deep`), or that still names a catalog playbook (the gateway
/// resolves them at submit).
pub(super) fn check_nesting(
    shard: &Shard,
    command: &SubmitCommand,
    parent: Option<&ParentLink>,
) -> Result<(), WireError> {
    let depth = parent.map_or(0, |p| p.depth);
    let max = shard.max_child_depth;
    let nests = command.playbook.nesting_depth();
    if depth + nests > max {
        return Err(wire_error(
            WireErrorCode::NestingTooDeep,
            format!(
                "the playbook's children nest {nests} deep below depth {depth}: over \
                 max_child_depth ({max})"
            ),
        ));
    }
    if let Some(path) = command.playbook.unresolved_reference() {
        return Err(wire_error(
            WireErrorCode::InvalidPlaybook,
            format!("playbook.{path}: a catalog playbook the gateway did not resolve"),
        ));
    }
    Ok(())
}
