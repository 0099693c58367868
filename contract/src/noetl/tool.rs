//! A NoETL step's `tool` (`kind` plus its arguments) as one of our actions and its `with`.
//!
//! Each kind takes the arguments our action of the same name takes (worker/src/actions), and
//! NoETL's names for some of them (`payload` for an http `body`). Every other argument is
//! refused, so none is dropped; string arguments have their template names translated.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{error, fields, names, Error};
use crate::playbook::PLAYBOOK_ACTION;

/// Per kind we run: the arguments it takes, with the name our action gives each.
const KINDS: [(&str, &[(&str, &str)]); 5] = [
    ("noop", &[]),
    (
        "http",
        &[
            ("method", "method"),
            ("url", "url"),
            ("headers", "headers"),
            ("body", "body"),
            ("payload", "body"),
            ("timeout_ms", "timeout_ms"),
        ],
    ),
    ("shell", &[("argv", "argv"), ("timeout_ms", "timeout_ms")]),
    ("sleep", &[("ms", "ms")]),
    (
        "fail",
        &[("message", "message"), ("until_attempt", "until_attempt")],
    ),
];

/// NoETL tool kinds that have no counterpart here.
const MISSING: [&str; 13] = [
    "python",
    "postgres",
    "duckdb",
    "snowflake",
    "mssql",
    "mysql",
    "workbook",
    "secrets",
    "transfer",
    "iterator",
    "container",
    "gcs",
    "script",
];

/// `(action, with)` for the `tool` at `path`.
pub(super) fn translate(
    tool: &Value,
    path: &str,
    step_names: &HashMap<String, usize>,
) -> Result<(String, Map<String, Value>), Error> {
    if tool.is_array() {
        return Err(error(
            path,
            "not supported: a tool pipeline (a list of tools); give one tool",
        ));
    }
    let kind_path = format!("{path}.kind");
    let kind = tool
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| error(&kind_path, "every tool needs a kind"))?;
    if kind == PLAYBOOK_ACTION {
        return child(tool, path, step_names);
    }
    let Some((action, arguments)) = KINDS.iter().find(|(name, _)| *name == kind) else {
        let mut known: Vec<&str> = KINDS.iter().map(|(name, _)| *name).collect();
        known.push(PLAYBOOK_ACTION);
        let why = if MISSING.contains(&kind) {
            "this tool does not exist here"
        } else {
            "unknown tool"
        };
        return Err(error(
            kind_path,
            format!(
                "not supported: {kind:?}: {why} (supported: {})",
                known.join(", ")
            ),
        ));
    };
    if kind == "shell" && tool.get("cmds").is_some() {
        return Err(error(
            format!("{path}.cmds"),
            "not supported: commands for a shell to parse; give `argv: [program, arg, …]`, \
             which runs the program directly",
        ));
    }
    let mut known: Vec<&str> = vec!["kind"];
    known.extend(arguments.iter().map(|(name, _)| *name));
    let given = fields(tool, path, &known)?;
    let mut with = Map::new();
    for (name, value) in given.iter().filter(|(name, _)| name.as_str() != "kind") {
        let ours = arguments
            .iter()
            .find(|(theirs, _)| theirs == name)
            .map_or(name.as_str(), |(_, ours)| *ours);
        let at = format!("{path}.{name}");
        if with.contains_key(ours) {
            return Err(error(at, format!("gives `{ours}` a second time")));
        }
        with.insert(ours.to_owned(), rewrite_value(value, &at, step_names)?);
    }
    Ok(((*action).to_owned(), with))
}

/// `value` with the template names of every string in it translated.
fn rewrite_value(
    value: &Value,
    path: &str,
    step_names: &HashMap<String, usize>,
) -> Result<Value, Error> {
    Ok(match value {
        Value::String(text) => Value::String(names::rewrite(text, path, step_names)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| rewrite_value(item, &format!("{path}[{i}]"), step_names))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(entries) => Value::Object(
            entries
                .iter()
                .map(|(key, item)| {
                    Ok((
                        key.clone(),
                        rewrite_value(item, &format!("{path}.{key}"), step_names)?,
                    ))
                })
                .collect::<Result<_, Error>>()?,
        ),
        other => other.clone(),
    })
}

/// A `playbook` tool (a sub-playbook): `path` names a playbook of the caller's catalog (one of
/// our names: letters, digits, `_`, `-`, `.`), `version` one of its versions, and `payload` (or
/// `args`) the child's input. Ours always waits for the child and ends with it, without polling,
/// so NoETL's `return_step`, `timeout` and `poll_interval` are refused, as are `catalog_id` and
/// `parent_execution_id`.
fn child(
    tool: &Value,
    path: &str,
    step_names: &HashMap<String, usize>,
) -> Result<(String, Map<String, Value>), Error> {
    let given = fields(tool, path, &["kind", "path", "version", "payload", "args"])?;
    let name = given.get("path").and_then(Value::as_str).ok_or_else(|| {
        error(
            format!("{path}.path"),
            "a playbook tool needs the `path` of a catalog playbook",
        )
    })?;
    if !crate::playbook::is_valid_name(name) {
        return Err(error(
            format!("{path}.path"),
            format!("{name:?}: not supported: a catalog name here is letters, digits, '_', '-' and '.' (no '/')"),
        ));
    }
    let mut reference = Map::new();
    reference.insert("name".to_owned(), Value::String(name.to_owned()));
    if let Some(version) = given.get("version") {
        reference.insert("version".to_owned(), version.clone());
    }
    let mut with = Map::new();
    with.insert("playbook".to_owned(), Value::Object(reference));
    let inputs: Vec<&str> = ["payload", "args"]
        .into_iter()
        .filter(|key| given.contains_key(*key))
        .collect();
    if inputs.len() > 1 {
        return Err(error(
            format!("{path}.args"),
            "gives the input a second time (also `payload`)",
        ));
    }
    if let Some(key) = inputs.first() {
        let at = format!("{path}.{key}");
        with.insert(
            "input".to_owned(),
            rewrite_value(&given[*key], &at, step_names)?,
        );
    }
    Ok((PLAYBOOK_ACTION.to_owned(), with))
}
