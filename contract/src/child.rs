//! What shard servers exchange to run a child execution on another shard (wiki/execution-model.md,
//! "Children across shards"): the parent's shard starts it ([`ChildStart`] on
//! [`ShardRequest::Child`](crate::subject::ShardRequest::Child) of the child's shard), and the
//! child's shard hands its end back ([`ChildReturn`] on
//! [`ShardRequest::Return`](crate::subject::ShardRequest::Return) of the parent's shard). Both go
//! through the sender's outbox, so each is sent until the receiver answered, and each is
//! idempotent at the receiver: the child is inserted once by id, and the return is fenced by the
//! parent step's attempt and its token.

use serde::{Deserialize, Serialize};

use crate::command::StepReport;
use crate::id::ExecutionId;
use crate::message::SubmitCommand;
use crate::step::{Attempt, AttemptToken, StepIndex};

/// Which step of which execution started a child, and the secret its end must carry back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentLink {
    pub parent_id: ExecutionId,
    /// The execution the tree was submitted as (the parent's root, or the parent itself).
    pub root_id: ExecutionId,
    pub step_index: StepIndex,
    pub attempt: Attempt,
    /// The token of the parent's attempt: only its child is told it.
    pub token: AttemptToken,
    /// The child's depth: the parent's plus one.
    pub depth: u32,
}

/// Start a child execution: a submit on behalf of the parent's shard, with the parent's
/// tenant, and the link back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildStart {
    pub submit: SubmitCommand,
    pub parent: ParentLink,
}

/// A child's end, for its parent's step: the report of the parent's attempt (its token
/// included), and which child sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildReturn {
    pub child_id: ExecutionId,
    pub report: StepReport,
}

/// Cancel a child (recursively: its own children are cancelled with it), for its tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildCancel {
    pub child_id: ExecutionId,
    pub tenant: String,
}
