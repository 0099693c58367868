//! The plan of a dry run (`submit --dry-run`): each step's level, action, pool, needs and
//! branches, as the gateway planned it without storing anything.

use noetl_contract::playbook::{Mode, Next, PlannedStep};
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
    let mut table = Table::new(["LEVEL", "STEP", "ACTION", "POOL", "NEEDS", "NEXT"]);
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
            next(step.next.as_ref()),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// A step's branches as the plan shows them: its mode, then each arc's target and condition
/// (`exclusive: big when input.n > 10, small`), or `-`.
fn next(next: Option<&Next>) -> String {
    let Some(next) = next else {
        return "-".to_owned();
    };
    let mode = match next.mode {
        Mode::Exclusive => "exclusive",
        Mode::Inclusive => "inclusive",
    };
    let arcs: Vec<String> = next
        .arcs
        .iter()
        .map(|arc| match &arc.when {
            Some(when) => format!("{} when {}", arc.step, single_line(when)),
            None => arc.step.clone(),
        })
        .collect();
    table::truncate(&format!("{mode}: {}", arcs.join(", ")), VALUE_CHARS)
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
                {"name": "d", "action": "noop", "needs": ["b", "c"], "pool": "gpu", "level": 2}
            ]
        }))
        .expect("the documented shape");
        assert_eq!(
            render_dry_run(&dry),
            "dry run: valid; execution 42 would go to shard 1 (epoch 2); nothing was persisted\n\
             playbook diamond version 3: 2 step(s)\n\
             \n\
             LEVEL  STEP  ACTION  POOL     NEEDS  NEXT\n\
             0      a     noop    default  -      exclusive: b when {{ input.n > 10 }}, c\n\
             2      d     noop    gpu      b, c   -\n"
        );
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
