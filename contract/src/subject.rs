//! NATS subjects (wiki/spec.md §3.5). Every subject is built here; they carry the shard and, where
//! there is one, the execution id: `noetl.v1.shard.{shard}.{kind}[.{execution_id}]`.
//! Only numbers become tokens, so no user-supplied string can inject tokens or wildcards.

use crate::id::ExecutionId;
use crate::routing::ShardId;

const PREFIX: &str = "noetl.v1.shard";

/// The JetStream key-value bucket holding the topology document, and its key.
pub const TOPOLOGY_BUCKET: &str = "noetl_topology";
pub const TOPOLOGY_KEY: &str = "topology";

/// The key-value bucket of the playbook catalog.
pub const CATALOG_BUCKET: &str = "noetl_playbooks";
/// The key-value bucket of idempotency keys.
pub const IDEMPOTENCY_BUCKET: &str = "noetl_idempotency";

/// The key-value bucket of gateway node-id leases.
pub const NODES_BUCKET: &str = "noetl_nodes";

/// The key of one node id's lease: `node.{id}`.
pub fn node_lease_key(node: crate::id::NodeId) -> String {
    format!("node.{node}")
}

/// What a request to a shard asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShardRequest {
    /// Commit a new execution (reply: `SubmitReceipt`).
    Submit,
    /// Read an execution (reply: `ExecutionView`).
    Get,
    /// A worker's report of a finished step attempt (reply: `ReportAck`).
    Result,
    /// A worker's heartbeat for a running attempt (reply: `HeartbeatAck`).
    Heartbeat,
    /// Cancel an execution (reply: `ExecutionView`).
    Cancel,
    /// A page of an execution's event log (body: `EventsQuery`, reply: `EventPage`).
    Events,
    /// Delete a terminal execution from every table of its shard (body: `ExecutionQuery`,
    /// reply: `null`; `not_terminal` while it runs).
    Delete,
    /// Start a child execution (server to server; body: [`crate::child::ChildStart`], reply:
    /// `SubmitReceipt`).
    Child,
    /// A child's end, for its parent (server to server; body: [`crate::child::ChildReturn`],
    /// reply: `ReportAck`).
    Return,
}

impl ShardRequest {
    pub const ALL: [ShardRequest; 9] = [
        ShardRequest::Submit,
        ShardRequest::Get,
        ShardRequest::Result,
        ShardRequest::Heartbeat,
        ShardRequest::Cancel,
        ShardRequest::Events,
        ShardRequest::Delete,
        ShardRequest::Child,
        ShardRequest::Return,
    ];

    fn token(self) -> &'static str {
        match self {
            ShardRequest::Submit => "submit",
            ShardRequest::Get => "get",
            ShardRequest::Result => "result",
            ShardRequest::Heartbeat => "heartbeat",
            ShardRequest::Cancel => "cancel",
            ShardRequest::Events => "events",
            ShardRequest::Delete => "delete",
            ShardRequest::Child => "child",
            ShardRequest::Return => "return",
        }
    }
}

/// The JetStream stream holding step commands, and the subjects it captures.
pub const COMMAND_STREAM: &str = "NOETL_COMMANDS";
const COMMAND_PREFIX: &str = "noetl.v1.cmd";

/// Subjects of the command stream: `noetl.v1.cmd.>`.
pub fn command_stream_subjects() -> String {
    format!("{COMMAND_PREFIX}.>")
}

/// `noetl.v1.cmd.{pool}.shard.{shard}.{execution_id}`. `pool` is a validated pool name
/// (letters, digits, `_`, `-`: see `playbook::check_pool`), so it is a single safe token.
pub fn command(pool: &str, shard: ShardId, id: ExecutionId) -> String {
    format!("{COMMAND_PREFIX}.{pool}.shard.{shard}.{id}")
}

/// What the workers of one pool consume: every shard's commands for that pool.
pub fn pool_commands_filter(pool: &str) -> String {
    format!("{COMMAND_PREFIX}.{pool}.>")
}

/// The durable consumer shared by every worker of a pool (one consumer per purpose).
pub fn pool_consumer(pool: &str) -> String {
    format!("noetl-worker-{pool}")
}

/// `noetl.v1.shard.{shard}.{kind}.{execution_id}`
pub fn shard_request(kind: ShardRequest, shard: ShardId, id: ExecutionId) -> String {
    format!("{PREFIX}.{shard}.{}.{id}", kind.token())
}

/// The filter a shard server subscribes to for one kind of request.
pub fn shard_request_filter(kind: ShardRequest, shard: ShardId) -> String {
    format!("{PREFIX}.{shard}.{}.*", kind.token())
}

/// Liveness probe of a shard: answered by any server serving it.
pub fn shard_ping(shard: ShardId) -> String {
    format!("{PREFIX}.{shard}.ping")
}

/// A page of a shard's executions (body: `ListQuery`, reply: `ExecutionList`).
pub fn shard_list(shard: ShardId) -> String {
    format!("{PREFIX}.{shard}.list")
}

/// Counts of a shard's executions (reply: `ShardStats`), for draining and retiring.
pub fn shard_stats(shard: ShardId) -> String {
    format!("{PREFIX}.{shard}.stats")
}

/// Queue group shared by every server replica of one shard, so each request is handled once.
pub fn shard_queue_group(shard: ShardId) -> String {
    format!("noetl-server-shard-{shard}")
}

/// Reads the execution id back out of a request subject built by [`shard_request`].
pub fn execution_id_of(subject: &str) -> Option<ExecutionId> {
    subject.rsplit('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_subjects_carry_shard_and_id() {
        let id = ExecutionId::new(320_816_801_799_737_344).expect("valid");
        let subject = shard_request(ShardRequest::Submit, ShardId::new(14), id);
        assert_eq!(subject, "noetl.v1.shard.14.submit.320816801799737344");
        assert_eq!(execution_id_of(&subject), Some(id));
        assert_eq!(
            shard_request_filter(ShardRequest::Get, ShardId::new(3)),
            "noetl.v1.shard.3.get.*"
        );
    }

    #[test]
    fn every_kind_has_a_distinct_token() {
        let id = ExecutionId::new(1).expect("valid");
        let a = shard_request(ShardRequest::Submit, ShardId::new(0), id);
        let b = shard_request(ShardRequest::Get, ShardId::new(0), id);
        assert_ne!(a, b);
        let tokens: std::collections::HashSet<_> =
            ShardRequest::ALL.iter().map(|k| k.token()).collect();
        assert_eq!(tokens.len(), ShardRequest::ALL.len());
    }

    #[test]
    fn command_subjects_carry_pool_shard_and_id() {
        let id = ExecutionId::new(42).expect("valid");
        let subject = command("gpu-a", ShardId::new(3), id);
        assert_eq!(subject, "noetl.v1.cmd.gpu-a.shard.3.42");
        assert!(subject.starts_with(pool_commands_filter("gpu-a").trim_end_matches('>')));
        assert_eq!(execution_id_of(&subject), Some(id));
    }

    #[test]
    fn subjects_without_an_id_yield_none() {
        assert_eq!(execution_id_of(&shard_ping(ShardId::new(0))), None);
    }
}
