//! The wire contract of noetl-dispatch, shared by every process (wiki/spec.md §3).
//!
//! This crate does no IO and knows nothing of tokio, sqlx, axum or NATS clients; it is the only
//! place that computes a shard.
//!
//! - [`id`]: snowflake execution ids, their generator and decoder.
//! - [`routing`]: `shard_of` and the shard newtypes.
//! - [`topology`]: epochs and routing by the epoch in force at an id's timestamp.
//! - [`shards`]: parsing `NOETL_SHARDS`.
//! - [`subject`]: NATS subject builders.
//! - [`status`]: the lifecycle states of executions and steps.
//! - [`step`]: `StepIndex` and `Attempt`, which name one try of one step.
//! - [`message`]: request and reply bodies between gateway and servers.
//! - [`command`]: step commands for workers, their results and heartbeats.
//! - [`engine`]: the orchestration decision, `(state, event) → (state, actions)`.
//! - [`playbook`]: the playbook model, labels, and their validation.
//! - [`template`]: rendering step arguments (minijinja).
//! - `openapi` (feature `openapi`): OpenAPI schemas of the ids with a custom wire form.
//!
//! Modules depend downwards only: `status`, `step`, `id` and `routing` name nothing else;
//! `playbook` names `template`; `message`, `command` and `engine` name those; `openapi` sits on
//! top.

pub mod child;
pub mod command;
pub mod engine;
pub mod id;
pub mod message;
pub mod noetl;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod playbook;
pub mod redact;
pub mod routing;
pub mod shards;
pub mod status;
pub mod step;
pub mod subject;
pub mod template;
pub mod topology;

#[cfg(test)]
mod test_vectors;

pub use id::{ExecutionId, IdGenerator, NodeId};
pub use routing::{shard_of, ShardCount, ShardId};
pub use topology::{Route, ShardState, Topology};
