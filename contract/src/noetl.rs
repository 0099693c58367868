//! NoETL's playbook format (`apiVersion: noetl.io/v2`, `kind: Playbook`) translated into our
//! [`Playbook`] at the edge (wiki/playbooks.md, "NoETL playbooks"): one model inside.
//!
//! Only the subset that maps onto our constructs is accepted; every other construct (a
//! `case`, `vars`, a tool we do not have, an unknown key …) is refused with the path
//! it sits at in the NoETL document (`workflow[2].loop`), never dropped. IO-free.
//!
//! - `tool`: a step's `tool` to our action and its `with`.
//! - `names`: NoETL's template names (`workload.x`, `<step>.result`) to ours.

mod names;
mod tool;

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::playbook::{Loop, LoopMode, Mode, Next, NextArc, Playbook, Step};

/// The `apiVersion` of the documents we translate.
pub const API_VERSION: &str = "noetl.io/v2";
/// The step every NoETL workflow starts from.
pub const START: &str = "start";

/// Keys NoETL defines that we refuse, with why; any other key is refused as unknown.
const UNSUPPORTED: [(&str, &str); 11] = [
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
    // Per step, where each of its arcs is written in the document.
    let mut arc_paths = Vec::with_capacity(workflow.len());
    for (i, step) in workflow.iter().enumerate() {
        let (step, paths) = translate_step(step, &format!("workflow[{i}]"), &step_names)?;
        steps.push(step);
        arc_paths.push(paths);
    }
    join_shared_targets(&mut steps, &mut arc_paths)?;
    check_reached(&steps)?;
    let playbook = Playbook {
        name: name.to_owned(),
        input,
        steps,
        max_gotos: None,
    };
    playbook
        .validate()
        .map_err(|e| error(noetl_path(&e.path, &arc_paths), e.message))?;
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

/// The step, and where each of its arcs is written.
fn translate_step(
    value: &Value,
    path: &str,
    step_names: &HashMap<String, usize>,
) -> Result<(Step, Vec<String>), Error> {
    let step = fields(value, path, &["step", "desc", "tool", "next", "loop"])?;
    let name = text(&step["step"], &format!("{path}.step"))?.to_owned();
    let (action, with) = match step.get("tool") {
        // A step without a tool (`start`, `end`, a router) does nothing: a `noop`.
        None => ("noop".to_owned(), Map::new()),
        Some(tool) => tool::translate(tool, &format!("{path}.tool"), step_names)?,
    };
    let (next, arc_paths) = match step.get("next") {
        None => (None, Vec::new()),
        Some(next) => {
            let (next, paths) = translate_next(next, &format!("{path}.next"), step_names)?;
            (Some(next), paths)
        }
    };
    let step = Step {
        name,
        action,
        with,
        needs: Vec::new(),
        pool: None,
        retry: None,
        timeout: None,
        next,
        set: serde_json::Map::new(),
        on_error: Vec::new(),
        loop_: match step.get("loop") {
            None => None,
            Some(looped) => Some(translate_loop(looped, &format!("{path}.loop"), step_names)?),
        },
    };
    Ok((step, arc_paths))
}

/// `loop: {in, iterator, mode}` as ours; NoETL's `mode` is `sequential` (its default) or
/// `parallel`, which runs our default `max_in_flight` items at once.
fn translate_loop(
    value: &Value,
    path: &str,
    step_names: &HashMap<String, usize>,
) -> Result<Loop, Error> {
    let looped = fields(value, path, &["in", "iterator", "mode"])?;
    let items_path = format!("{path}.in");
    let items = text(looped.get("in").unwrap_or(&Value::Null), &items_path)?;
    let iterator_path = format!("{path}.iterator");
    let iterator = text(
        looped.get("iterator").unwrap_or(&Value::Null),
        &iterator_path,
    )?;
    let mode = match looped.get("mode").and_then(Value::as_str) {
        None | Some("sequential") => LoopMode::Sequential,
        Some("parallel") => LoopMode::Parallel,
        Some(_) => {
            return Err(error(
                format!("{path}.mode"),
                "must be \"sequential\" or \"parallel\"",
            ))
        }
    };
    Ok(Loop {
        items: names::rewrite(items, &items_path, step_names)?,
        iterator: iterator.to_owned(),
        mode,
        max_in_flight: None,
    })
}

/// `next`: a list of arcs `{step, when}` (NoETL's default, exclusive: the first arc whose
/// `when` holds), or `{spec: {mode}, arcs}`.
fn translate_next(
    value: &Value,
    path: &str,
    step_names: &HashMap<String, usize>,
) -> Result<(Next, Vec<String>), Error> {
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
    let mut paths = Vec::with_capacity(arcs.len());
    for (j, arc) in arcs.iter().enumerate() {
        let at = format!("{arcs_path}[{j}]");
        paths.push(at.clone());
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
    let next = Next {
        mode,
        arcs: translated,
    };
    Ok((next, paths))
}

/// A step that several arcs lead to (an `end` most often) is a join in our model: each of those
/// arcs becomes a `needs`. That says the same only for an arc that is always taken when its
/// source succeeds: unconditional, in an inclusive `next` or one with a single arc.
fn join_shared_targets(steps: &mut [Step], arc_paths: &mut [Vec<String>]) -> Result<(), Error> {
    // The arcs into each step, `(source, arc)`, by target, in the order they are written.
    let mut arcs_into: Vec<Vec<(usize, usize)>> = vec![Vec::new(); steps.len()];
    let index: HashMap<String, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, step)| (step.name.clone(), i))
        .collect();
    for (i, step) in steps.iter().enumerate() {
        for (j, arc) in step.next.iter().flat_map(|next| &next.arcs).enumerate() {
            if let Some(&t) = index.get(&arc.step) {
                arcs_into[t].push((i, j));
            }
        }
    }
    for (t, arcs) in arcs_into
        .iter()
        .enumerate()
        .filter(|(_, arcs)| arcs.len() > 1)
    {
        for &(i, j) in arcs {
            let Some(next) = &steps[i].next else { continue };
            if next.arcs[j].when.is_some() || (next.mode == Mode::Exclusive && next.arcs.len() > 1)
            {
                return Err(error(
                    arc_paths[i][j].clone(),
                    format!(
                        "not supported: {:?} is reached by several arcs, which only joins when \
                         each is always taken (no `when`, and an inclusive `next` or a single arc)",
                        steps[t].name
                    ),
                ));
            }
        }
    }
    for (t, arcs) in arcs_into
        .iter()
        .enumerate()
        .filter(|(_, arcs)| arcs.len() > 1)
    {
        let target = steps[t].name.clone();
        for &(i, _) in arcs {
            let source = steps[i].name.clone();
            if let Some(next) = steps[i].next.as_mut() {
                let mut kept = next.arcs.iter().map(|arc| arc.step != target);
                arc_paths[i].retain(|_| kept.next().unwrap_or(true));
                next.arcs.retain(|arc| arc.step != target);
                if next.arcs.is_empty() {
                    steps[i].next = None;
                }
            }
            if !steps[t].needs.contains(&source) {
                steps[t].needs.push(source);
            }
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
/// document writes it (`workflow[2].tool.url`, `workflow[0].next[1].when`), given where each
/// step's arcs are written.
fn noetl_path(path: &str, arc_paths: &[Vec<String>]) -> String {
    let Some(rest) = path.strip_prefix("steps[") else {
        return path.replacen("name", "metadata.name", 1);
    };
    let Some((i, rest)) = rest.split_once(']') else {
        return "workflow".to_owned();
    };
    let step = format!("workflow[{i}]");
    if let Some(arc) = rest.strip_prefix(".next.arcs[") {
        let arc = arc.split_once(']').and_then(|(j, tail)| {
            let paths = arc_paths.get(i.parse::<usize>().ok()?)?;
            Some(format!("{}{tail}", paths.get(j.parse::<usize>().ok()?)?))
        });
        return arc.unwrap_or_else(|| format!("{step}.next"));
    }
    let rest = rest
        .replacen(".with", ".tool", 1)
        .replacen(".action", ".tool.kind", 1)
        .replacen(".name", ".step", 1)
        .replacen(".next.arcs", ".next", 1);
    format!("{step}{rest}")
}

#[cfg(test)]
mod tests;
