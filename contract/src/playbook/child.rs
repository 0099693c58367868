//! Steps that run a playbook as a child execution: `action: playbook`, with
//! `with: {playbook: <inline playbook> | {name, version?}, input: {...}}` (wiki/playbooks.md,
//! "Sub-playbooks"). Checked at submit: only `playbook` and `input`, an inline playbook valid
//! itself (errors name its path below the step), a reference a valid catalog name, templates
//! only in `input` (the inline playbook's own templates are the child's, rendered by it), and a
//! literal nesting no deeper than [`MAX_NESTING`].

use serde_json::{Map, Value};

use super::{error, Error, Playbook, Step};

/// The action of a step that runs a child execution.
pub const PLAYBOOK_ACTION: &str = "playbook";
/// How deep inline playbooks may nest literally (a child's child's …): a hard bound on the
/// validation's recursion. A server's `max_child_depth` (at most this) bounds what runs.
pub const MAX_NESTING: u32 = 16;

/// What a `playbook` step runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ChildPlaybook {
    Inline(Box<Playbook>),
    /// A catalog playbook of the parent's tenant, resolved by the gateway at submit.
    Catalog {
        name: String,
        version: Option<u32>,
    },
}

impl Step {
    /// Whether the step runs a child execution.
    pub fn is_child(&self) -> bool {
        self.action == PLAYBOOK_ACTION
    }

    /// The playbook a `playbook` step runs; `None` for another step, or a malformed one (which
    /// validation refuses).
    pub fn child_playbook(&self) -> Option<ChildPlaybook> {
        if !self.is_child() {
            return None;
        }
        parse(self.with.get("playbook")?).ok()
    }
}

impl Playbook {
    /// How deep its inline playbooks nest: 0 without `playbook` steps, 1 when they run
    /// playbooks without any (a catalog reference counts 1: it is resolved before it runs).
    pub fn nesting_depth(&self) -> u32 {
        self.steps
            .iter()
            .filter_map(Step::child_playbook)
            .map(|child| match child {
                ChildPlaybook::Inline(playbook) => 1 + playbook.nesting_depth(),
                ChildPlaybook::Catalog { .. } => 1,
            })
            .max()
            .unwrap_or(0)
    }

    /// The path of its first `playbook` step, at any depth, that names a catalog playbook
    /// (`steps[2].with.playbook`), if any.
    pub fn unresolved_reference(&self) -> Option<String> {
        self.steps.iter().enumerate().find_map(|(i, step)| {
            let at = format!("steps[{i}].with.playbook");
            match step.child_playbook()? {
                ChildPlaybook::Catalog { .. } => Some(at),
                ChildPlaybook::Inline(playbook) => playbook
                    .unresolved_reference()
                    .map(|inner| format!("{at}.{inner}")),
            }
        })
    }
}

fn parse(value: &Value) -> Result<ChildPlaybook, String> {
    let Value::Object(fields) = value else {
        return Err("must be an inline playbook or {name, version}".to_owned());
    };
    if fields.contains_key("steps") {
        return serde_json::from_value(value.clone())
            .map(|playbook| ChildPlaybook::Inline(Box::new(playbook)))
            .map_err(|e| e.to_string());
    }
    reference(fields)
}

fn reference(fields: &Map<String, Value>) -> Result<ChildPlaybook, String> {
    if let Some(key) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "name" | "version"))
    {
        return Err(format!(
            "unknown field {key:?}: a catalog reference is {{name, version}}, an inline playbook has `steps`"
        ));
    }
    let name = match fields.get("name") {
        Some(Value::String(name)) if super::is_valid_name(name) => name.clone(),
        _ => return Err("`name` must be a catalog playbook name".to_owned()),
    };
    let version = match fields.get("version") {
        None | Some(Value::Null) => None,
        Some(version) => Some(
            version
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| v >= 1)
                .ok_or_else(|| "`version` must be a positive integer".to_owned())?,
        ),
    };
    Ok(ChildPlaybook::Catalog { name, version })
}

/// Checks the `playbook` step `i`, at nesting `depth` (0 for the submitted playbook's steps).
pub(super) fn check(i: usize, step: &Step, depth: u32) -> Result<(), Error> {
    let at = |field: &str| format!("steps[{i}].{field}");
    for (field, set) in [
        ("pool", step.pool.is_some()),
        ("timeout", step.timeout.is_some()),
    ] {
        if set {
            return Err(error(
                at(field),
                format!(
                    "a playbook step runs no worker: its child's steps set their own `{field}`"
                ),
            ));
        }
    }
    if let Some(key) = step
        .with
        .keys()
        .find(|k| !matches!(k.as_str(), "playbook" | "input"))
    {
        return Err(error(
            at(&format!("with.{key}")),
            "unknown field: a playbook step takes `playbook` and `input`",
        ));
    }
    match step.with.get("input") {
        None | Some(Value::Object(_) | Value::String(_)) => {}
        Some(_) => {
            return Err(error(
                at("with.input"),
                "must be an object (or a template giving one)",
            ))
        }
    }
    let input: Map<String, Value> = step
        .with
        .iter()
        .filter(|(key, _)| key.as_str() == "input")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Err((field, message)) = crate::template::check(&input) {
        return Err(error(at(&field), message));
    }
    let value = step
        .with
        .get("playbook")
        .ok_or_else(|| error(at("with.playbook"), "a playbook step needs `playbook`"))?;
    match parse(value).map_err(|message| error(at("with.playbook"), message))? {
        ChildPlaybook::Catalog { .. } => Ok(()),
        ChildPlaybook::Inline(playbook) => {
            if depth + 1 >= MAX_NESTING {
                return Err(error(
                    at("with.playbook"),
                    format!("nesting_too_deep: playbooks nest deeper than {MAX_NESTING}"),
                ));
            }
            playbook.validate_at(depth + 1).map_err(|e| Error {
                path: at(&format!("with.playbook.{}", e.path)),
                message: e.message,
            })
        }
    }
}
