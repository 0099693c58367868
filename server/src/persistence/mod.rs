//! Every query the server runs against a shard database, and nothing else. Storage is the
//! bottom of the server: it names no other module of the crate.
//!
//! - `pools`: the pools of a shard, connection settings, generically planned transactions,
//!   and the connection a task holds ([`Held`]).
//! - `identity`: migrations, the shard a database belongs to, the topology epochs it recorded.
//! - `writes`: committing new executions, locking running ones, writing the engine's changes.
//! - `items`: the items of loops, their heartbeats and leases.
//! - `leases`: heartbeats, the lease check under the lock, the scan for expired leases.
//! - `outbox`: the commands waiting for JetStream, and when a new one becomes due.
//! - `reads`: executions, event pages, listings and counts for the shard's readers.
//! - `purge`: deleting a terminal execution, and the retention purge's batches.
//! - `probe`: whether the database can take a write, for readiness.
//! - `rows`: typed columns in and out (a value out of range is [`Error::Malformed`]).

mod identity;
mod items;
mod leases;
mod outbox;
mod pools;
mod probe;
mod purge;
mod reads;
mod rows;
#[cfg(test)]
pub(crate) mod testing;
mod writes;

pub use identity::{claim_shard, migrate, record_epochs, recorded_epochs};
pub use items::{load_items, loop_result, save_loops, ItemKey, ItemRow, LoadedItem, LoopChanges};
pub use leases::{
    beat_attempts, expired_item_leases, expired_leases, item_lease_expired, lease_expired, Beat,
    BeatAnswer,
};
pub use outbox::{
    dead_letter, delete_commands, hands_off, next_command_due_in_ms, take_due_commands,
    withdraw_start, OutboxRow, Outgoing, PendingCommand, Undeliverable, HANDOFF_GRACE,
};
pub use pools::{begin_generic, generic_pool, pool, relaxed_pool, Held, Pools};
pub use probe::can_write;
pub use purge::{delete_execution, purge_batch, Deleted, Tenants};
pub use reads::{backlog, events_page, get_execution, list_executions, shard_counts, visible};
pub use rows::to_json;
pub use writes::{
    insert_executions, lock_executions, recount_tenant_executions, save_changes, Committed,
    ExecutionChange, Inserted, LockedExecution, NewExecution, StepRow,
};

/// Failures the server branches on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid connection setting {key}={value:?}: {reason}")]
    Setting {
        key: String,
        value: String,
        reason: String,
    },
    #[error(
        "this database belongs to shard {recorded}, but NOETL_SHARDS lists it as shard {configured} \
         (were the entries reordered?); refusing to serve it"
    )]
    WrongShard { recorded: i32, configured: u32 },
    #[error("stored row is malformed: {0}")]
    Malformed(String),
    #[error("{0}")]
    Unavailable(&'static str),
}

impl Error {
    /// Whether the database refused the data itself (SQLSTATE classes 22, data exception;
    /// 23, integrity constraint violation; 54, program limit exceeded), so the same rows fail
    /// the same way however often they are retried, while other rows would commit.
    pub fn is_data_error(&self) -> bool {
        match self {
            Error::Database(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|code| ["22", "23", "54"].iter().any(|c| code.starts_with(c))),
            _ => false,
        }
    }
}
