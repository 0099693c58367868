//! The playbook model (wiki/spec.md §4.1) and its validation, done before anything is persisted.
//!
//! This is the shape every process agrees on. Running steps (templates, retries, timeouts in
//! action) belongs to the server and worker; here we only check that a playbook is well formed.
//! Labels are checked here too, by the same rules as names.
//!
//! - `duration`: [`Millis`], the durations a playbook writes with a unit.
//! - `next`: [`Next`], the conditional arcs a step leads to when it succeeds.
//! - `on_error`: [`OnError`], the failure policy of a step, and the execution's goto budget.
//! - `loop_`: [`Loop`], a step run once per item of a list.
//! - `set`: the checks of a step's `set`, the values it writes into the execution's `ctx`.
//! - `schema` (feature `openapi`): the OpenAPI schemas of actions, labels and durations, whose
//!   wire form is not what their Rust type says.

mod child;
mod duration;
mod loop_;
mod next;
mod on_error;
#[cfg(feature = "openapi")]
mod schema;
mod set;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

pub use child::{ChildPlaybook, MAX_NESTING, PLAYBOOK_ACTION};
pub use duration::Millis;
pub use loop_::{Loop, LoopMode, DEFAULT_LOOP_IN_FLIGHT, MAX_LOOP_IN_FLIGHT};
pub use next::{Mode, Next, NextArc, MAX_ARCS};
pub use on_error::{OnError, Then, DEFAULT_MAX_GOTOS, MAX_GOTOS, MAX_ON_ERROR_RULES};
#[cfg(feature = "openapi")]
pub use schema::{ActionSchema, LabelsSchema};
pub use set::{MAX_CTX_NAME_LEN, MAX_SET_NAMES};

/// Labels attached to an execution: small string pairs for selection.
pub type Labels = BTreeMap<String, String>;

pub const MAX_STEPS: usize = 1_000;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_VALUE_LEN: usize = 256;
pub const MAX_RETRY_ATTEMPTS: u32 = 100;
/// The longest `timeout` of a step: one day.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// The longest `retry.backoff`: one hour.
pub const MAX_BACKOFF_MS: u64 = 3_600_000;
/// The longest wait before a retry, however often the backoff has doubled: one day.
pub const MAX_RETRY_DELAY_MS: u64 = 86_400_000;
/// The longest `with.ms` of a `sleep`, and `with.timeout_ms` of an `http` or `shell` step,
/// when written as a number (a template is checked by the worker when it renders): one day,
/// as a step's `timeout`, since both are checked by [`Playbook::check_durations`].
pub const MAX_ACTION_MS: u64 = MAX_TIMEOUT_MS;
/// The fields of `with` that are durations in milliseconds, by action.
const ACTION_DURATIONS: [(&str, &str); 3] = [
    ("sleep", "ms"),
    ("http", "timeout_ms"),
    ("shell", "timeout_ms"),
];
/// Actions built into the worker.
pub const BUILTIN_ACTIONS: [&str; 5] = ["noop", "sleep", "http", "shell", "fail"];

/// A small DAG of steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    /// 1 to 128 letters, digits, `_`, `-` or `.`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.-]{1,128}$"))]
    pub name: String,
    /// Default input, overridden key by key by the execution's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Map<String, serde_json::Value>>,
    /// 1 to 1,000 steps; their `needs` form a DAG.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 1000))]
    pub steps: Vec<Step>,
    /// How many `goto`s of the steps' `on_error` one execution may take: 0 to 100, default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 100))]
    pub max_gotos: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique in the playbook; 1 to 128 letters, digits, `_`, `-` or `.`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.-]{1,128}$"))]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = ActionSchema))]
    pub action: String,
    /// Action arguments; strings are templates over `{input, ctx, steps.<name>.result}`.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub with: serde_json::Map<String, serde_json::Value>,
    /// Names of the steps that must succeed before this one runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// The worker pool that runs it (`default` when absent): 1 to 64 letters, digits, `_` or `-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Upper bound on one attempt: `"30s"`, `"500ms"`, `"2m"`, or milliseconds; at most 1 day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Millis>,
    /// The steps it leads to when it succeeds, each arc on a condition (wiki/playbooks.md,
    /// "Branches"); the targets run after it and are skipped when their arc is not taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Next>,
    /// Values written into the execution's context when the step succeeds, read by later
    /// templates as `ctx.<name>`: templates over `{input, steps, ctx, result}`, `result` being
    /// this step's (wiki/playbooks.md, "Execution variables"). At most 32 names.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub set: serde_json::Map<String, serde_json::Value>,
    /// What a failed attempt leads to: rules `{when, then}` tried in order (wiki/playbooks.md,
    /// "Failure policy"); at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(max_items = 16))]
    pub on_error: Vec<OnError>,
    /// Runs the action once per item of a list (wiki/playbooks.md, "Loops"); the step's result
    /// is the list of the items' results, in item order.
    #[serde(default, rename = "loop", skip_serializing_if = "Option::is_none")]
    pub loop_: Option<Loop>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, the first included.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub max_attempts: u32,
    /// Delay before the second attempt (at most 1 h); doubles on each further attempt, up to
    /// 1 day.
    #[serde(default)]
    pub backoff: Millis,
}

/// What is wrong with a playbook, and where (a JSON-path-like location such as `steps[2].needs[0]`).
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

/// Names: ASCII letters, digits, `_`, `-`, `.`; so they are safe in logs, URLs and labels.
fn check_name(path: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(error(
            path,
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(error(
            path,
            format!("{name:?} may only contain letters, digits, '_', '-' and '.'"),
        ));
    }
    Ok(())
}

/// Where `value` holds a NUL character (in a key or a string), as a path below `at`, e.g.
/// `input.a[2]`: PostgreSQL's `jsonb` cannot store it, so such a submit is refused up front
/// instead of failing the transaction it would share with other executions.
pub fn find_nul(value: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(text) if text.contains('\0') => Some(at.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_nul(item, &format!("{at}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            let path = format!("{at}.{key}");
            if key.contains('\0') {
                Some(path)
            } else {
                find_nul(item, &path)
            }
        }),
        _ => None,
    }
}

/// Whether `name` is a valid playbook (and so catalog) name: what the catalog can hold.
pub fn is_valid_name(name: &str) -> bool {
    check_name("name", name).is_ok()
}

/// Pool names become a NATS subject token, so they are narrower than names: no `.`.
pub fn check_pool(path: &str, pool: &str) -> Result<(), Error> {
    if pool.is_empty()
        || pool.len() > 64
        || !pool
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        return Err(error(
            path,
            format!("pool {pool:?} must be 1 to 64 letters, digits, '_' or '-'"),
        ));
    }
    Ok(())
}

/// The pool a step runs in when it names none.
pub const DEFAULT_POOL: &str = "default";

/// A step as a dry run shows it: what it runs, where, and after what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlannedStep {
    pub name: String,
    pub action: String,
    pub needs: Vec<String>,
    pub pool: String,
    /// 0 for a step without needs or arc leading to it, else one more than the deepest of
    /// those: steps of one level may run in parallel.
    pub level: u32,
    /// The arcs it leads to when it succeeds, as the playbook writes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Next>,
    /// The execution variables its `set` writes (`ctx.<name>`), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<String>,
    /// Its failure policy, as the playbook writes it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_error: Vec<OnError>,
    /// Its loop (`in`, `iterator`, `mode`, `max_in_flight`), as the playbook writes it.
    #[serde(default, rename = "loop", skip_serializing_if = "Option::is_none")]
    pub loop_: Option<Loop>,
    /// The playbook a `playbook` step runs as a child execution, with its own plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<PlannedChild>,
}

/// The child playbook of a `playbook` step, as a dry run shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlannedChild {
    pub name: String,
    /// The catalog version a reference names (the latest when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The child's own plan; empty for a catalog reference, resolved only when it is submitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(no_recursion))]
    pub plan: Vec<PlannedStep>,
}

impl PlannedChild {
    fn of(child: ChildPlaybook) -> Self {
        match child {
            ChildPlaybook::Inline(playbook) => Self {
                name: playbook.name.clone(),
                version: None,
                plan: playbook.plan(),
            },
            ChildPlaybook::Catalog { name, version } => Self {
                name,
                version,
                plan: Vec::new(),
            },
        }
    }
}

impl Playbook {
    /// The steps in an order they can run in: by level, then as written. Meant for a
    /// validated playbook; a step whose needs never resolve (a cycle) is left out.
    pub fn plan(&self) -> Vec<PlannedStep> {
        let index: std::collections::HashMap<&str, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| (step.name.as_str(), i))
            .collect();
        let sources = self.arc_sources();
        let mut levels: Vec<Option<u32>> = vec![None; self.steps.len()];
        // Each pass settles at least one more step of a DAG.
        for _ in 0..self.steps.len() {
            for (i, step) in self.steps.iter().enumerate() {
                if levels[i].is_some() {
                    continue;
                }
                let needs: Option<Vec<u32>> = step
                    .needs
                    .iter()
                    .map(|need| index.get(need.as_str()).copied())
                    .chain(sources[i].map(Some))
                    .map(|j| j.and_then(|j| levels[j]))
                    .collect();
                if let Some(needs) = needs {
                    levels[i] = Some(needs.into_iter().max().map_or(0, |deepest| deepest + 1));
                }
            }
        }
        let mut planned: Vec<PlannedStep> = self
            .steps
            .iter()
            .zip(levels)
            .filter_map(|(step, level)| {
                Some(PlannedStep {
                    name: step.name.clone(),
                    action: step.action.clone(),
                    needs: step.needs.clone(),
                    pool: step.pool.clone().unwrap_or_else(|| DEFAULT_POOL.to_owned()),
                    level: level?,
                    next: step.next.clone(),
                    set: step.set.keys().cloned().collect(),
                    on_error: step.on_error.clone(),
                    loop_: step.loop_.clone(),
                    child: step.child_playbook().map(PlannedChild::of),
                })
            })
            .collect();
        planned.sort_by_key(|step| step.level);
        planned
    }

    /// Checks names, actions, references, retry bounds, arcs, that `needs` and arcs
    /// together form a DAG, and the playbooks its `playbook` steps run.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_at(0)
    }

    /// [`Playbook::validate`] for a playbook nested `depth` levels deep in another.
    fn validate_at(&self, depth: u32) -> Result<(), Error> {
        check_name("name", &self.name)?;
        if self.steps.is_empty() {
            return Err(error("steps", "a playbook needs at least one step"));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(error(
                "steps",
                format!(
                    "{} steps is over the limit of {MAX_STEPS}",
                    self.steps.len()
                ),
            ));
        }
        let mut index_of: HashMap<&str, usize> = HashMap::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            check_name(&format!("steps[{i}].name"), &step.name)?;
            if let Some(first) = index_of.insert(&step.name, i) {
                return Err(error(
                    format!("steps[{i}].name"),
                    format!("duplicate step name {:?} (also steps[{first}])", step.name),
                ));
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            if step.is_child() {
                child::check(i, step, depth)?;
            } else if !BUILTIN_ACTIONS.contains(&step.action.as_str()) {
                return Err(error(
                    format!("steps[{i}].action"),
                    format!(
                        "unknown action {:?} (known: {}, {PLAYBOOK_ACTION})",
                        step.action,
                        BUILTIN_ACTIONS.join(", ")
                    ),
                ));
            }
            if let Some(pool) = &step.pool {
                check_pool(&format!("steps[{i}].pool"), pool)?;
            }
            if let Some(retry) = step.retry {
                if !(1..=MAX_RETRY_ATTEMPTS).contains(&retry.max_attempts) {
                    return Err(error(
                        format!("steps[{i}].retry.max_attempts"),
                        format!("must be between 1 and {MAX_RETRY_ATTEMPTS}"),
                    ));
                }
                check_at_most(
                    format!("steps[{i}].retry.backoff"),
                    retry.backoff.0,
                    MAX_BACKOFF_MS,
                )?;
            }
            if let (false, Err((field, message))) =
                (step.is_child(), crate::template::check(&step.with))
            {
                return Err(error(format!("steps[{i}].{field}"), message));
            }
            if let Some(timeout) = step.timeout {
                if timeout == Millis(0) {
                    return Err(error(format!("steps[{i}].timeout"), "must be positive"));
                }
            }
            check_step_durations(i, step, MAX_TIMEOUT_MS, "one day")?;
            set::check(i, step)?;
            loop_::check(i, step)?;
            let mut seen: HashMap<&str, usize> = HashMap::with_capacity(step.needs.len());
            for (j, need) in step.needs.iter().enumerate() {
                let path = format!("steps[{i}].needs[{j}]");
                if let Some(first) = seen.insert(need, j) {
                    return Err(error(
                        path,
                        format!("{need:?} is listed twice (also needs[{first}])"),
                    ));
                }
                match index_of.get(need.as_str()) {
                    None => return Err(error(path, format!("unknown step {need:?}"))),
                    Some(&k) if k == i => {
                        return Err(error(path, "a step cannot need itself"));
                    }
                    Some(_) => {}
                }
            }
        }
        next::check(self, &index_of)?;
        on_error::check(self, &index_of)?;
        self.check_acyclic(&index_of)
    }

    /// Kahn's algorithm over `needs` and arcs: if some steps never become ready, they sit on a
    /// cycle.
    fn check_acyclic(&self, index_of: &HashMap<&str, usize>) -> Result<(), Error> {
        let mut waiting_on: Vec<usize> = vec![0; self.steps.len()];
        let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); self.steps.len()];
        for (i, step) in self.steps.iter().enumerate() {
            for need in &step.needs {
                dependants[index_of[need.as_str()]].push(i);
                waiting_on[i] += 1;
            }
            for arc in step.next.iter().flat_map(|next| &next.arcs) {
                let target = index_of[arc.step.as_str()];
                dependants[i].push(target);
                waiting_on[target] += 1;
            }
        }
        let mut ready: Vec<usize> = (0..self.steps.len())
            .filter(|&i| waiting_on[i] == 0)
            .collect();
        let mut done = 0;
        while let Some(i) = ready.pop() {
            done += 1;
            for &d in &dependants[i] {
                waiting_on[d] -= 1;
                if waiting_on[d] == 0 {
                    ready.push(d);
                }
            }
        }
        if done == self.steps.len() {
            return Ok(());
        }
        let on_cycle: Vec<&str> = (0..self.steps.len())
            .filter(|&i| waiting_on[i] > 0)
            .map(|i| self.steps[i].name.as_str())
            .collect();
        Err(error(
            "steps",
            format!(
                "the needs and arcs form a cycle through {}",
                on_cycle.join(", ")
            ),
        ))
    }
}

/// `Err` naming `path` when `ms` is over `max`.
fn check_at_most(path: String, ms: u64, max: u64) -> Result<(), Error> {
    if ms > max {
        return Err(error(
            path,
            format!("{ms} ms is over the limit of {max} ms"),
        ));
    }
    Ok(())
}

impl Playbook {
    /// `Err` naming the first field of a step that may run longer than `max_ms`: a step's
    /// `timeout`, or the `with.ms` of a `sleep` or `with.timeout_ms` of an `http` or `shell`
    /// step written as a number (or digits); `limit` names the bound in the message. A
    /// template is left to the worker, which bounds the attempt by its `timeout_ms`.
    /// [`Playbook::validate`] checks this at one day; a shard checks it again at its
    /// `max_step_timeout_ms`.
    pub fn check_durations(&self, max_ms: u64, limit: &str) -> Result<(), Error> {
        self.steps
            .iter()
            .enumerate()
            .try_for_each(|(i, step)| check_step_durations(i, step, max_ms, limit))
    }
}

/// [`Playbook::check_durations`] for the `i`th step.
fn check_step_durations(i: usize, step: &Step, max_ms: u64, limit: &str) -> Result<(), Error> {
    let over = |path: String| {
        Err(error(
            path,
            format!("must be at most {max_ms} ms ({limit})"),
        ))
    };
    if step.timeout.is_some_and(|timeout| timeout.0 > max_ms) {
        return over(format!("steps[{i}].timeout"));
    }
    for (action, field) in ACTION_DURATIONS {
        if step.action != action {
            continue;
        }
        let too_long = match step.with.get(field) {
            Some(serde_json::Value::Number(n)) => n.as_f64().is_some_and(|ms| ms > max_ms as f64),
            Some(serde_json::Value::String(text)) => {
                let digits = text.trim();
                !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && digits.parse::<u64>().map_or(true, |ms| ms > max_ms)
            }
            _ => false,
        };
        if too_long {
            return over(format!("steps[{i}].with.{field}"));
        }
    }
    Ok(())
}

/// Checks label keys and values (`labels.<key>` in errors).
pub fn validate_labels(labels: &Labels) -> Result<(), Error> {
    if labels.len() > MAX_LABELS {
        return Err(error(
            "labels",
            format!("{} labels is over the limit of {MAX_LABELS}", labels.len()),
        ));
    }
    for (key, value) in labels {
        check_name(&format!("labels.{key}"), key)?;
        if value.len() > MAX_LABEL_VALUE_LEN {
            return Err(error(
                format!("labels.{key}"),
                format!("value is over {MAX_LABEL_VALUE_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
