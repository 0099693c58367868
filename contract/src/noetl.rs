//! NoETL's playbook format (`apiVersion: noetl.io/v2`, `kind: Playbook`) translated into our
//! [`Playbook`] at the edge (wiki/playbooks.md, "NoETL playbooks"): one model inside.
//!
//! Only the subset that maps onto our constructs is accepted; every other construct (a
//! `loop`, `case`, `vars`, a tool we do not have, an unknown key …) is refused with the path
//! it sits at in the NoETL document (`workflow[2].loop`), never dropped. IO-free.
//!
//! - `tool`: a step's `tool` to our action and its `with`.
//! - `names`: NoETL's template names (`workload.x`, `<step>.result`) to ours.

mod names;
mod tool;

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::playbook::{Mode, Next, NextArc, Playbook, Step};

/// The `apiVersion` of the documents we translate.
pub const API_VERSION: &str = "noetl.io/v2";
/// The step every NoETL workflow starts from.
pub const START: &str = "start";

/// Keys NoETL defines that we refuse, with why; any other key is refused as unknown.
const UNSUPPORTED: [(&str, &str); 12] = [
    ("loop", "loops are not supported yet (issue 28, item 2)"),
    (
        "case",
        "`case` blocks are not supported: route with `next` arcs and their `when`",
    ),
    (
        "vars",
        "step variables are not supported yet (issue 28, item 3)",
    ),
    ("set", "`set` is not supported yet (issue 28, item 3)"),
    (
        "sink",
        "sinks are not supported: no storage tool exists here",
    ),
    (
        "when",
        "a step's own gate is not supported: put the condition on the arc leading to it",
    ),
    (
        "result",
        "result bindings are not supported: a step's result is `<step>.result`",
    ),
    ("retry", "NoETL's retry policy is not supported"),
    ("spec", "step policies (`spec`) are not supported"),
    ("bind", "extra bindings are not supported"),
    (
        "args",
        "step arguments are not supported: pass values through `workload`",
    ),
    ("keychain", "keychains and credentials are not supported"),
];

/// What is wrong with a NoETL document, at a path in that document (`workflow[2].loop`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct Error {
    pub path: String,
    pub message: String,
}

fn error(path: impl Into<String>, message: impl Into<String>) -> Error {
    Error {
        path: path.into(),
        message: message.into(),
    }
}

/// Whether `document` claims to be a NoETL playbook: a mapping with an `apiVersion`. Ours has
/// none, so such a document is translated (and refused if it is not `noetl.io/v2`).
pub fn is_noetl(document: &Value) -> bool {
    document
        .as_object()
        .is_some_and(|fields| fields.contains_key("apiVersion"))
}

/// Refuses `key` of a mapping at `path`: with why when NoETL defines it, as unknown otherwise.
fn refuse(path: &str, key: &str, known: &[&str]) -> Error {
    let at = if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    };
    match UNSUPPORTED.iter().find(|(name, _)| *name == key) {
        Some((_, why)) => error(at, format!("not supported: {why}")),
        None => error(
            at,
            format!(
                "unknown or unsupported key (supported here: {})",
                known.join(", ")
            ),
        ),
    }
}

/// The fields of a mapping at `path`, every key among `known`.
fn fields<'a>(
    value: &'a Value,
    path: &str,
    known: &[&str],
) -> Result<&'a Map<String, Value>, Error> {
    let fields = value
        .as_object()
        .ok_or_else(|| error(path, "must be a mapping"))?;
    match fields.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(refuse(path, key, known)),
        None => Ok(fields),
    }
}

fn text<'a>(value: &'a Value, path: &str) -> Result<&'a str, Error> {
    value
        .as_str()
        .ok_or_else(|| error(path, "must be a string"))
}

/// Translates a NoETL playbook into ours and validates the result; errors name the place in
/// the NoETL document.
pub fn translate(document: &Value) -> Result<Playbook, Error> {
    let top = fields(
        document,
        "",
        &["apiVersion", "kind", "metadata", "workload", "workflow"],
    )?;
    if top.get("apiVersion").and_then(Value::as_str) != Some(API_VERSION) {
        return Err(error("apiVersion", format!("must be {API_VERSION:?}")));
    }
    if top.get("kind").and_then(Value::as_str) != Some("Playbook") {
        return Err(error("kind", "must be \"Playbook\""));
    }
    let metadata = fields(
        top.get("metadata").unwrap_or(&Value::Null),
        "metadata",
        &["name", "path", "description"],
    )?;
    let name = text(
        metadata.get("name").unwrap_or(&Value::Null),
        "metadata.name",
    )?;
    let input = match top.get("workload") {
        None => None,
        Some(Value::Object(workload)) => Some(workload.clone()),
        Some(_) => return Err(error("workload", "must be a mapping")),
    };
    let workflow = top
        .get("workflow")
        .and_then(Value::as_array)
        .ok_or_else(|| error("workflow", "must be a list of steps"))?;
    if workflow.len() > crate::playbook::MAX_STEPS {
        return Err(error(
            "workflow",
            format!(
                "{} steps is over the limit of {}",
                workflow.len(),
                crate::playbook::MAX_STEPS
            ),
        ));
    }
    let step_names = step_names(workflow)?;
    let mut steps = Vec::with_capacity(workflow.len());
    for (i, step) in workflow.iter().enumerate() {
        steps.push(translate_step(
            step,
            &format!("workflow[{i}]"),
            &step_names,
        )?);
    }
    join_shared_targets(&mut steps)?;
    check_reached(&steps)?;
    let playbook = Playbook {
        name: name.to_owned(),
        input,
        steps,
    };
    playbook
        .validate()
        .map_err(|e| error(noetl_path(&e.path), e.message))?;
    Ok(playbook)
}

/// The names of the steps, by position; a workflow needs a `start`.
fn step_names(workflow: &[Value]) -> Result<HashMap<String, usize>, Error> {
    let mut names = HashMap::with_capacity(workflow.len());
    for (i, step) in workflow.iter().enumerate() {
        let path = format!("workflow[{i}].step");
        let name = step
            .get("step")
            .ok_or_else(|| error(&path, "every step needs a name"))?;
        if let Some(first) = names.insert(text(name, &path)?.to_owned(), i) {
            return Err(error(
                path,
                format!("duplicate step name (also workflow[{first}])"),
            ));
        }
    }
    if !names.contains_key(START) {
        return Err(error(
            "workflow",
            "a NoETL workflow needs a step named `start`",
        ));
    }
    Ok(names)
}

fn translate_step(
    value: &Value,
    path: &str,
    step_names: &HashMap<String, usize>,
) -> Result<Step, Error> {
    let step = fields(value, path, &["step", "desc", "tool", "next"])?;
    let name = text(&step["step"], &format!("{path}.step"))?.to_owned();
    let (action, with) = match step.get("tool") {
        // A step without a tool (`start`, `end`, a router) does nothing: a `noop`.
        None => ("noop".to_owned(), Map::new()),
        Some(tool) => tool::translate(tool, &format!("{path}.tool"), step_names)?,
    };
    let next = match step.get("next") {
        None => None,
        Some(next) => Some(translate_next(next, &format!("{path}.next"), step_names)?),
    };
    Ok(Step {
        name,
        action,
        with,
        needs: Vec::new(),
        pool: None,
        retry: None,
        timeout: None,
        next,
    })
}

/// `next`: a list of arcs `{step, when}` (NoETL's default, exclusive: the first arc whose
/// `when` holds), or `{spec: {mode}, arcs}`.
fn translate_next(
    value: &Value,
    path: &str,
    step_names: &HashMap<String, usize>,
) -> Result<Next, Error> {
    let (mode, arcs, arcs_path) = match value {
        Value::Array(arcs) => (Mode::Exclusive, arcs, path.to_owned()),
        Value::Object(_) => {
            let next = fields(value, path, &["spec", "arcs"])?;
            let mode = match next.get("spec") {
                None => Mode::Exclusive,
                Some(spec) => {
                    let spec = fields(spec, &format!("{path}.spec"), &["mode"])?;
                    match spec.get("mode").and_then(Value::as_str) {
                        None | Some("exclusive") => Mode::Exclusive,
                        Some("inclusive") => Mode::Inclusive,
                        Some(_) => {
                            return Err(error(
                                format!("{path}.spec.mode"),
                                "must be \"exclusive\" or \"inclusive\"",
                            ))
                        }
                    }
                }
            };
            let arcs = next
                .get("arcs")
                .and_then(Value::as_array)
                .ok_or_else(|| error(format!("{path}.arcs"), "must be a list of arcs"))?;
            (mode, arcs, format!("{path}.arcs"))
        }
        _ => return Err(error(path, "must be a list of arcs or {spec, arcs}")),
    };
    let mut translated = Vec::with_capacity(arcs.len());
    for (j, arc) in arcs.iter().enumerate() {
        let at = format!("{arcs_path}[{j}]");
        let arc = fields(arc, &at, &["step", "when"])?;
        let step = text(
            arc.get("step").unwrap_or(&Value::Null),
            &format!("{at}.step"),
        )?;
        let when = match arc.get("when") {
            None => None,
            Some(when) => {
                let when_path = format!("{at}.when");
                Some(names::rewrite_condition(
                    text(when, &when_path)?,
                    &when_path,
                    step_names,
                )?)
            }
        };
        translated.push(NextArc {
            step: step.to_owned(),
            when,
        });
    }
    Ok(Next {
        mode,
        arcs: translated,
    })
}

/// A step that several arcs lead to (an `end` most often) is a join in our model: each of those
/// arcs becomes a `needs`. That says the same only for an arc that is always taken when its
/// source succeeds: unconditional, in an inclusive `next` or one with a single arc.
fn join_shared_targets(steps: &mut [Step]) -> Result<(), Error> {
    let mut arcs_into: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        for (j, arc) in step.next.iter().flat_map(|next| &next.arcs).enumerate() {
            arcs_into.entry(arc.step.clone()).or_default().push((i, j));
        }
    }
    let index: HashMap<String, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, step)| (step.name.clone(), i))
        .collect();
    for (target, arcs) in arcs_into.into_iter().filter(|(_, arcs)| arcs.len() > 1) {
        let Some(&t) = index.get(&target) else {
            continue;
        };
        for &(i, j) in &arcs {
            let next = steps[i]
                .next
                .as_ref()
                .map(|next| (next.mode, next.arcs.len(), next.arcs[j].when.is_some()));
            if let Some((mode, count, conditional)) = next {
                if conditional || (mode == Mode::Exclusive && count > 1) {
                    return Err(error(
                        format!("workflow[{i}].next[{j}]"),
                        format!(
                            "not supported: {target:?} is reached by several arcs, which only \
                             joins when each is always taken (no `when`, and an inclusive \
                             `next` or a single arc)"
                        ),
                    ));
                }
            }
        }
        for &(i, _) in &arcs {
            let source = steps[i].name.clone();
            if let Some(next) = steps[i].next.as_mut() {
                next.arcs.retain(|arc| arc.step != target);
            }
            if steps[i]
                .next
                .as_ref()
                .is_some_and(|next| next.arcs.is_empty())
            {
                steps[i].next = None;
            }
            steps[t].needs.push(source);
        }
    }
    Ok(())
}

/// Only `start` begins a NoETL workflow; any other step must be reached by an arc, or it would
/// run at once here.
fn check_reached(steps: &[Step]) -> Result<(), Error> {
    let reached: std::collections::HashSet<&str> = steps
        .iter()
        .flat_map(|step| step.next.iter().flat_map(|next| &next.arcs))
        .map(|arc| arc.step.as_str())
        .collect();
    for (i, step) in steps.iter().enumerate() {
        if step.name != START && step.needs.is_empty() && !reached.contains(step.name.as_str()) {
            return Err(error(
                format!("workflow[{i}]"),
                format!(
                    "step {:?} is reached by no arc: only `start` begins a workflow",
                    step.name
                ),
            ));
        }
    }
    Ok(())
}

/// A path in our model (`steps[2].with.url`, `steps[0].next.arcs[1].when`) as the NoETL
/// document writes it (`workflow[2].tool.url`, `workflow[0].next[1].when`).
fn noetl_path(path: &str) -> String {
    let Some(rest) = path.strip_prefix("steps") else {
        return path.replacen("name", "metadata.name", 1);
    };
    format!("workflow{rest}")
        .replace(".with.", ".tool.")
        .replace(".action", ".tool.kind")
        .replace(".name", ".step")
        .replace(".next.arcs", ".next")
}

#[cfg(test)]
mod tests;
