//! OpenAPI schemas (utoipa) of the playbook's values whose wire form is not what their Rust
//! type says: an action is one of the built-in names, labels a bounded map, a duration a number
//! or a string with a unit. Fields name them with `#[schema(value_type = …)]`.

use std::borrow::Cow;

use serde_json::json;
use utoipa::openapi::schema::{
    KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use super::{
    Millis, BUILTIN_ACTIONS, MAX_LABELS, MAX_LABEL_VALUE_LEN, MAX_NAME_LEN, PLAYBOOK_ACTION,
};

/// `ToSchema` for a type whose schema's name in the document is not the type's.
macro_rules! named {
    ($($ty:ty => $name:literal),* $(,)?) => {$(
        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    )*};
}

named! {
    Millis => "Duration",
    LabelsSchema => "Labels",
    ActionSchema => "Action",
}

/// A duration with a unit, as [`Millis`] parses it (surrounding blanks allowed).
const DURATION_PATTERN: &str = r"^\s*[0-9]+\s*(ms|s|m|h)\s*$";

impl PartialSchema for Millis {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(0))
                    .description(Some("Milliseconds.")),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(DURATION_PATTERN))
                    .description(Some("A number with a unit: ms, s, m or h.")),
            )
            .description(Some(
                "A duration: `\"250ms\"`, `\"30s\"`, `\"5m\"`, `\"1h\"` or a number of \
                 milliseconds. Answers always give milliseconds.",
            ))
            .examples([json!("30s"), json!(1500)])
            .into()
    }
}

/// The schema of [`super::Labels`] (a map type alias, which cannot have one of its own):
/// fields use it with `#[schema(value_type = LabelsSchema)]`.
#[derive(Debug)]
pub struct LabelsSchema;

impl PartialSchema for LabelsSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(format!("^[A-Za-z0-9_.-]{{1,{MAX_NAME_LEN}}}$"))),
            ))
            .additional_properties(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(MAX_LABEL_VALUE_LEN)),
            ))
            .max_properties(Some(MAX_LABELS))
            .description(Some(format!(
                "Labels to select executions by: at most {MAX_LABELS}; keys are 1 to \
                 {MAX_NAME_LEN} letters, digits, `_`, `-` or `.`; values are at most \
                 {MAX_LABEL_VALUE_LEN} bytes."
            )))
            .examples([json!({"team": "data", "env": "prod"})])
            .into()
    }
}

/// The actions built into the worker ([`BUILTIN_ACTIONS`]).
#[derive(Debug)]
pub struct ActionSchema;

impl PartialSchema for ActionSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(BUILTIN_ACTIONS.into_iter().chain([PLAYBOOK_ACTION])))
            .description(Some(
                "What a step does: one of the actions built into the worker, or `playbook`, \
                 which runs `with.playbook` as a child execution.",
            ))
            .into()
    }
}
