//! The plan of a dry run (`submit --dry-run`): each step's level, action, pool, needs and
//! branches, as the gateway planned it without storing anything.

use noetl_contract::playbook::{LoopMode, Mode, PlannedStep};
use noetl_contract::{ExecutionId, ShardId};
use serde::Deserialize;
use serde_json::Value;

use crate::http::Error;
use crate::render::{print_json, VALUE_CHARS};
use crate::table::{self, single_line, Table};

/// `200` of `POST /executions?dry_run=true`.
#[derive(Debug, Clone, Deserialize)]
pub struct DryRun {
    pub dry_run: bool,
    pub execution_id: ExecutionId,
    pub shard: ShardId,
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub playbook_name: String,
    #[serde(default)]
    pub playbook_version: Option<u32>,
    #[serde(default)]
    pub plan: Vec<PlannedStep>,
}

/// Prints a dry run's plan (or, with `json`, the answer as received).
pub fn print_dry_run(raw: Value, answer: Value, json: bool) -> Result<u8, Error> {
    // A gateway without dry runs ignores the parameter and submits for real: say so loudly.
    if answer.get("dry_run").and_then(Value::as_bool) != Some(true) {
        let id = answer
            .get("execution_id")
            .and_then(Value::as_str)
            .unwrap_or("(unknown)");
        return Err(Error::Unexpected(format!(
            "this gateway does not support dry runs: it submitted execution {id} for real (cancel it with `noetlctl cancel {id}`)"
        )));
    }
    if json {
        print_json(&raw);
        return Ok(0);
    }
    let dry: DryRun =
        serde_json::from_value(answer).map_err(|e| Error::Unexpected(e.to_string()))?;
    print!("{}", render_dry_run(&dry));
    Ok(0)
}

fn render_dry_run(dry: &DryRun) -> String {
    let epoch = dry
        .epoch
        .map(|e| format!(" (epoch {e})"))
        .unwrap_or_default();
    let mut out = format!(
        "dry run: valid; execution {} would go to shard {}{epoch}; nothing was persisted\n",
        dry.execution_id, dry.shard
    );
    let version = dry
        .playbook_version
        .map(|v| format!(" version {v}"))
        .unwrap_or_default();
    out.push_str(&format!(
        "playbook {}{version}: {} step(s)\n\n",
        dry.playbook_name,
        dry.plan.len()
    ));
    let mut table = Table::new(["LEVEL", "STEP", "ACTION", "POOL", "NEEDS", "DETAIL"]);
    for step in &dry.plan {
        table.row([
            step.level.to_string(),
            step.name.clone(),
            step.action.clone(),
            step.pool.clone(),
            if step.needs.is_empty() {
                "-".to_owned()
            } else {
                step.needs.join(", ")
            },
            detail(step),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// What a step does beyond its action, as the plan shows it: its branches (`next exclusive:
/// big when input.n > 10, small`), the variables it sets (`set ctx.total`) and its failure
/// policy (`on_error: when … then retry, then fail`), or `-`.
fn detail(step: &PlannedStep) -> String {
    let mut parts = Vec::new();
    if let Some(next) = &step.next {
        let mode = match next.mode {
            Mode::Exclusive => "exclusive",
            Mode::Inclusive => "inclusive",
        };
        let arcs: Vec<String> = next
            .arcs
            .iter()
            .map(|arc| conditional(arc.when.as_deref(), &arc.step))
            .collect();
        parts.push(format!("next {mode}: {}", arcs.join(", ")));
    }
    if !step.set.is_empty() {
        let names: Vec<String> = step.set.iter().map(|n| format!("ctx.{n}")).collect();
        parts.push(format!("set {}", names.join(", ")));
    }
    if !step.on_error.is_empty() {
        let rules: Vec<String> = step
            .on_error
            .iter()
            .map(|rule| conditional(rule.when.as_deref(), &format!("then {}", rule.then)))
            .collect();
        parts.push(format!("on_error: {}", rules.join(", ")));
    }
    if let Some(looped) = &step.loop_ {
        let how = match looped.mode {
            LoopMode::Parallel => format!("parallel, {} at once", looped.in_flight()),
            LoopMode::Sequential => "sequential".to_owned(),
        };
        parts.push(format!(
            "loop {} over {} ({how})",
            looped.iterator,
            single_line(&looped.items)
        ));
    }
    if let Some(child) = &step.child {
        let version = child
            .version
            .map(|v| format!(" version {v}"))
            .unwrap_or_default();
        let steps = match child.plan.len() {
            0 => String::new(),
            n => format!(" ({n} step(s))"),
        };
        parts.push(format!("child {}{version}{steps}", child.name));
    }
    if parts.is_empty() {
        return "-".to_owned();
    }
    table::truncate(&parts.join("; "), 2 * VALUE_CHARS)
}

/// `what`, after its condition when it has one: `when <condition> <what>` for a rule, `<what>
/// when <condition>` for an arc's target.
fn conditional(when: Option<&str>, what: &str) -> String {
    match when {
        Some(when) if what.starts_with("then ") => format!("when {} {what}", single_line(when)),
        Some(when) => format!("{what} when {}", single_line(when)),
        None => what.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_dry_run_prints_the_plan_by_level() {
        let dry: DryRun = serde_json::from_value(json!({
            "dry_run": true, "execution_id": "42", "shard": 1, "epoch": 2,
            "playbook_name": "diamond", "playbook_version": 3,
            "plan": [
                {"name": "a", "action": "noop", "needs": [], "pool": "default", "level": 0,
                 "next": {"mode": "exclusive", "arcs": [
                     {"step": "b", "when": "{{ input.n > 10 }}"}, {"step": "c"}]}},
                {"name": "d", "action": "noop", "needs": ["b", "c"], "pool": "gpu", "level": 2,
                 "set": ["total"],
                 "on_error": [{"when": "{{ attempt < 3 }}", "then": "retry"}, {"then": "goto:a"}]},
                {"name": "e", "action": "noop", "needs": ["d"], "pool": "default", "level": 3}
            ]
        }))
        .expect("the documented shape");
        assert_eq!(
            render_dry_run(&dry),
            "dry run: valid; execution 42 would go to shard 1 (epoch 2); nothing was persisted\n\
             playbook diamond version 3: 3 step(s)\n\
             \n\
             LEVEL  STEP  ACTION  POOL     NEEDS  DETAIL\n\
             0      a     noop    default  -      next exclusive: b when {{ input.n > 10 }}, c\n\
             2      d     noop    gpu      b, c   set ctx.total; on_error: when {{ attempt < 3 }} then retry, then goto:a\n\
             3      e     noop    default  d      -\n"
        );
    }

    #[test]
    fn a_dry_run_shows_loops_and_children() {
        let dry: DryRun = serde_json::from_value(json!({
            "dry_run": true, "execution_id": "42", "shard": 0, "epoch": 1,
            "playbook_name": "fan",
            "plan": [
                {"name": "each", "action": "noop", "needs": [], "pool": "default", "level": 0,
                 "loop": {"in": "{{ input.files }}", "iterator": "f", "max_in_flight": 8}},
                {"name": "one", "action": "noop", "needs": [], "pool": "default", "level": 0,
                 "loop": {"in": "{{ input.files }}", "iterator": "f", "mode": "sequential"}},
                {"name": "kid", "action": "playbook", "needs": ["each"], "pool": "default",
                 "level": 1, "child": {"name": "inner", "plan": [
                     {"name": "x", "action": "noop", "needs": [], "pool": "default", "level": 0}]}},
                {"name": "ref", "action": "playbook", "needs": [], "pool": "default", "level": 0,
                 "child": {"name": "nightly", "version": 2}}
            ]
        }))
        .expect("the documented shape");
        let table = render_dry_run(&dry);
        for line in [
            "loop f over {{ input.files }} (parallel, 8 at once)",
            "loop f over {{ input.files }} (sequential)",
            "child inner (1 step(s))",
            "child nightly version 2",
        ] {
            assert!(table.contains(line), "{line:?} in {table}");
        }
    }

    #[test]
    fn a_real_submit_answered_to_a_dry_run_is_an_error() {
        let answer = json!({"execution_id": "42", "shard": 1, "status": "running"});
        match print_dry_run(answer.clone(), answer, false) {
            Err(Error::Unexpected(message)) => {
                assert!(message.contains("submitted execution 42"), "{message}")
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
