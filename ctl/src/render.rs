//! How executions, their steps and their events print: the field list and step table of
//! `get`, `cancel` and `submit --wait`, the one-line events of `watch`, and pretty JSON.

use std::collections::BTreeMap;

use noetl_contract::engine::{LoopProgress, StepStatus};
use noetl_contract::message::{EventView, ExecutionView, StepView};
use serde_json::Value;

use crate::table::{self, single_line, Table};

/// How much of a result, an input or a payload a table shows.
pub const VALUE_CHARS: usize = 80;

/// Pretty JSON on stdout.
pub fn print_json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        // A `Value` always serialises; print it compact if it somehow did not.
        Err(_) => println!("{value}"),
    }
}

/// With `json`, the gateway's answer as received; else what `text` prints for people.
pub fn answer(raw: &Value, json: bool, text: impl FnOnce()) {
    if json {
        print_json(raw);
    } else {
        text();
    }
}

/// What the steps table says of a step beyond its view, by step name: facts gathered elsewhere,
/// such as the event log's reason for a skip. Each kind of fact adds a constructor here, and
/// [`detail`] says where it goes in the step's `DETAIL` cell.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepNotes {
    skipped: BTreeMap<String, String>,
    /// The tree of children under each `playbook` step, in depth-first order.
    children: BTreeMap<String, Vec<ChildRow>>,
}

/// One child execution under a step of the table: how deep (1: the step's own child), started
/// by which step of its parent, and as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChildRow {
    depth: usize,
    via: String,
    id: String,
    status: String,
    playbook: String,
}

impl StepNotes {
    /// The reason of each `step_skipped` of `events` (`not_taken after route`, ...).
    pub fn from_events(events: &[EventView]) -> Self {
        let skipped = events
            .iter()
            .filter(|e| e.kind == "step_skipped")
            .filter_map(|e| {
                let step = e.payload["step"].as_str()?;
                let reason = e.payload["reason"].as_str().unwrap_or("skipped");
                let because = match e.payload["because"].as_str() {
                    Some(because) => format!(" after {because}"),
                    None => String::new(),
                };
                Some((step.to_owned(), format!("{reason}{because}")))
            })
            .collect();
        Self {
            skipped,
            ..Self::default()
        }
    }

    /// Adds `child` under the table's step `step`, `depth` levels down, started by its parent's
    /// step `via`; children are added depth first, each after its parent.
    pub fn add_child(&mut self, step: &str, depth: usize, via: &str, child: &ExecutionView) {
        self.children
            .entry(step.to_owned())
            .or_default()
            .push(ChildRow {
                depth,
                via: via.to_owned(),
                id: child.execution_id.to_string(),
                status: child.status.as_str().to_owned(),
                playbook: child.playbook_name.clone(),
            });
    }
}

/// Whether the steps table would say more with the event log ([`StepNotes::from_events`]).
pub fn wants_events(steps: &[StepView]) -> bool {
    steps.iter().any(|s| s.status == StepStatus::Skipped)
}

/// The execution's fields, then a table of its steps with `notes`.
pub fn execution(execution: &ExecutionView, notes: &StepNotes) -> String {
    let version = match execution.playbook_version {
        Some(v) => format!(" (version {v})"),
        None => String::new(),
    };
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        out.push_str(&format!("{name:<10} {}\n", single_line(&value)));
    };
    field("execution", execution.execution_id.to_string());
    field("status", execution.status.as_str().to_owned());
    field("shard", execution.shard.to_string());
    field("playbook", format!("{}{version}", execution.playbook_name));
    field("labels", table::labels(&execution.labels));
    if execution.input.as_object().is_some_and(|i| !i.is_empty()) {
        field("input", table::compact(&execution.input, 2 * VALUE_CHARS));
    }
    field("created", execution.created_at.clone());
    field("updated", execution.updated_at.clone());
    out.push('\n');
    out.push_str(&steps(&execution.steps, notes));
    out
}

/// A table of steps: name, status, attempt, time taken, and its [`detail`]; under a `playbook`
/// step, the tree of its children from `notes` (`└ <id>`, indented by depth).
pub fn steps(steps: &[StepView], notes: &StepNotes) -> String {
    let mut table = Table::new(["STEP", "STATUS", "ATTEMPT", "TIME", "DETAIL"]);
    for step in steps {
        table.row([
            step.name.clone(),
            step.status.as_str().to_owned(),
            step.attempt.to_string(),
            took(step.started_at.as_deref(), step.finished_at.as_deref())
                .unwrap_or_else(|| "-".to_owned()),
            detail(step, notes),
        ]);
        for child in notes.children.get(&step.name).into_iter().flatten() {
            table.row([
                format!("{}└ {}", "  ".repeat(child.depth), child.id),
                child.status.clone(),
                "-".to_owned(),
                "-".to_owned(),
                format!("child of {}: {}", child.via, child.playbook),
            ]);
        }
    }
    table.render()
}

/// What a step's row says beyond its status: its error, why it was skipped (from `notes`), its
/// result, or `-`.
fn detail(step: &StepView, notes: &StepNotes) -> String {
    let said = if let Some(error) = &step.error {
        format!("error: {}", table::truncate(error, VALUE_CHARS))
    } else if let Some(reason) = notes.skipped.get(&step.name) {
        format!("skipped: {}", table::truncate(reason, VALUE_CHARS))
    } else {
        match &step.result {
            Some(result) => table::compact(result, VALUE_CHARS),
            None => "-".to_owned(),
        }
    };
    match &step.loop_ {
        Some(progress) if said == "-" => loop_progress(progress),
        Some(progress) => format!("{} · {said}", loop_progress(progress)),
        None => said,
    }
}

/// A loop step's progress: `loop k/N` (items ended of the list), then what is running and what
/// failed, if anything.
pub fn loop_progress(progress: &LoopProgress) -> String {
    let ended = progress.succeeded.saturating_add(progress.failed);
    let mut out = format!("loop {ended}/{}", progress.total);
    let mut more = Vec::new();
    if progress.in_flight > 0 {
        more.push(format!("{} running", progress.in_flight));
    }
    if progress.failed > 0 {
        more.push(format!("{} failed", progress.failed));
    }
    if !more.is_empty() {
        out.push_str(&format!(" ({})", more.join(", ")));
    }
    out
}

/// `1.25s` between two RFC 3339 times, if both parse.
fn took(started: Option<&str>, finished: Option<&str>) -> Option<String> {
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    };
    let elapsed = parse(finished?)? - parse(started?)?;
    let millis = elapsed.whole_milliseconds();
    (millis >= 0).then(|| format!("{:.2}s", millis as f64 / 1_000.0))
}

/// Whether a step will change no more.
pub fn step_finished(status: StepStatus) -> bool {
    matches!(
        status,
        StepStatus::Succeeded | StepStatus::Failed | StepStatus::Skipped | StepStatus::Cancelled
    )
}

/// One event on one line, for a stream (columns cannot be sized ahead of time).
pub fn event_line(event: &EventView) -> String {
    single_line(&format!(
        "{:>4}  {}  {:<20}  {}",
        event.seq,
        event.created_at,
        event.kind,
        table::compact(&event.payload, VALUE_CHARS)
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn failed_execution() -> ExecutionView {
        serde_json::from_value(json!({
            "execution_id": "320816801799737344",
            "shard": 1,
            "status": "failed",
            "playbook_name": "diamond",
            "playbook_version": 3,
            "input": {"n": 3},
            "labels": {"env": "dev"},
            "created_at": "2026-11-23T10:00:00Z",
            "updated_at": "2026-11-23T10:00:02Z",
            "steps": [
                {"name": "a", "status": "succeeded", "attempt": 1, "result": {"ok": true},
                 "started_at": "2026-11-23T10:00:00.100Z", "finished_at": "2026-11-23T10:00:01.350Z"},
                {"name": "b", "status": "failed", "attempt": 3, "error": "boom\nat line 2"},
                {"name": "c", "status": "skipped", "attempt": 0}
            ],
            "links": {"self": "/api/v1/executions/320816801799737344"}
        }))
        .expect("the documented shape")
    }

    #[test]
    fn an_execution_prints_its_fields_and_a_step_table() {
        assert_eq!(
            execution(&failed_execution(), &StepNotes::default()),
            "execution  320816801799737344\n\
             status     failed\n\
             shard      1\n\
             playbook   diamond (version 3)\n\
             labels     env=dev\n\
             input      {\"n\":3}\n\
             created    2026-11-23T10:00:00Z\n\
             updated    2026-11-23T10:00:02Z\n\
             \n\
             STEP  STATUS     ATTEMPT  TIME   DETAIL\n\
             a     succeeded  1        1.25s  {\"ok\":true}\n\
             b     failed     3        -      error: boom at line 2\n\
             c     skipped    0        -      -\n"
        );
    }

    #[test]
    fn a_loop_step_shows_its_items_ended_of_the_list() {
        let step = |progress: Value, result: Value| -> StepView {
            serde_json::from_value(json!({"name": "each", "status": "running", "attempt": 7,
                                          "loop": progress, "result": result}))
            .expect("a loop step")
        };
        let running = step(
            json!({"total": 8, "next": 6, "succeeded": 3, "failed": 1, "in_flight": 2}),
            Value::Null,
        );
        assert_eq!(
            detail(&running, &StepNotes::default()),
            "loop 4/8 (2 running, 1 failed)"
        );
        let done = step(
            json!({"total": 2, "next": 2, "succeeded": 2, "failed": 0, "in_flight": 0}),
            json!([1, 2]),
        );
        assert_eq!(detail(&done, &StepNotes::default()), "loop 2/2 · [1,2]");
    }

    #[test]
    fn a_skipped_step_says_why_from_the_event_log() {
        let view = failed_execution();
        assert!(wants_events(&view.steps));
        let event = |seq: i64, kind: &str, payload: Value| EventView {
            seq,
            kind: kind.into(),
            payload,
            created_at: "2026-11-23T10:00:02Z".into(),
        };
        let events = [
            event(
                1,
                "step_failed",
                json!({"step": "b", "attempt": 3, "error": "boom"}),
            ),
            event(
                2,
                "step_skipped",
                json!({"step": "c", "attempt": 0, "reason": "dependency_failed", "because": "b"}),
            ),
            event(
                3,
                "step_skipped",
                json!({"attempt": 0, "reason": "not_taken"}),
            ),
        ];
        let notes = StepNotes::from_events(&events);
        let table = steps(&view.steps, &notes);
        assert!(
            table
                .ends_with("c     skipped    0        -      skipped: dependency_failed after b\n"),
            "{table}"
        );
        assert!(
            table.contains("error: boom at line 2"),
            "an error stays: {table}"
        );
        assert!(
            !wants_events(&view.steps[..2]),
            "no skipped step, no event log"
        );
    }

    fn child(id: &str, status: &str, name: &str) -> ExecutionView {
        serde_json::from_value(json!({
            "execution_id": id, "shard": 0, "status": status, "playbook_name": name,
            "input": {}, "labels": {}, "created_at": "t", "updated_at": "t", "steps": []
        }))
        .expect("a child")
    }

    #[test]
    fn children_print_as_a_tree_under_their_step() {
        let view = failed_execution();
        let mut notes = StepNotes::default();
        notes.add_child("b", 1, "b", &child("11", "failed", "kid"));
        notes.add_child("b", 2, "inner", &child("12", "running", "grandkid"));
        let table = steps(&view.steps, &notes);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[2].starts_with("b "), "{table}");
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["└", "11", "failed", "-", "-", "child", "of", "b:", "kid"],
            "{table}"
        );
        assert!(lines[4].starts_with("    └ 12  running"), "{table}");
        assert!(lines[4].ends_with("child of inner: grandkid"), "{table}");
        assert!(lines[5].starts_with("c "), "{table}");
    }

    #[test]
    fn an_execution_from_a_gateway_without_versions_still_reads() {
        let view: ExecutionView = serde_json::from_value(json!({
            "execution_id": "42", "shard": 0, "status": "running", "playbook_name": "p",
            "input": {}, "labels": {}, "created_at": "t", "updated_at": "t", "steps": []
        }))
        .expect("no playbook_version");
        assert_eq!(view.playbook_version, None);
        assert!(execution(&view, &StepNotes::default()).contains("playbook   p\n"));
    }

    #[test]
    fn stream_lines_hold_seq_time_kind_and_payload() {
        let event = EventView {
            seq: 7,
            kind: "step_succeeded".into(),
            payload: json!({"step": "a"}),
            created_at: "2026-11-23T10:00:00Z".into(),
        };
        assert_eq!(
            event_line(&event),
            "   7  2026-11-23T10:00:00Z  step_succeeded        {\"step\":\"a\"}"
        );
    }

    #[test]
    fn only_final_step_states_are_finished() {
        assert!(step_finished(StepStatus::Skipped) && step_finished(StepStatus::Cancelled));
        assert!(!step_finished(StepStatus::Running) && !step_finished(StepStatus::Pending));
    }
}
