//! OpenAPI schemas (utoipa) of the identifiers whose wire form is not what their Rust type says:
//! ids written as decimal strings, shard numbers. The structs and enums of the HTTP API derive
//! theirs behind the same `openapi` feature, and the playbook's values (actions, labels,
//! durations) have theirs next to the playbook; this crate never needs utoipa otherwise.

use serde_json::json;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::id::ExecutionId;
use crate::routing::{ShardCount, ShardId};

pub use crate::playbook::{ActionSchema, LabelsSchema};

impl PartialSchema for ExecutionId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9]+$"))
            .description(Some(
                "A snowflake execution id (a non-negative 64-bit integer) written as a decimal \
                 string, so clients without 64-bit integers keep every digit. Request bodies also \
                 accept it as a JSON number.",
            ))
            .examples([json!("320816801799737344")])
            .into()
    }
}

/// Named `ExecutionId` (the type's name).
impl ToSchema for ExecutionId {}

impl PartialSchema for ShardId {
    fn schema() -> RefOr<Schema> {
        int32(0, "A shard's number: its position in NOETL_SHARDS, from 0.")
    }
}

/// Named `ShardId`.
impl ToSchema for ShardId {}

impl PartialSchema for ShardCount {
    fn schema() -> RefOr<Schema> {
        int32(1, "A number of shards; never zero.")
    }
}

/// Named `ShardCount`.
impl ToSchema for ShardCount {}

/// A 32-bit integer from `minimum` on.
fn int32(minimum: i32, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .minimum(Some(minimum))
        .description(Some(description))
        .into()
}
