//! The execution commands that ask the gateway once (or page through): submit and its dry run,
//! get, events, list, cancel and route, with the answer types they read and how they print
//! them. Following an execution until it ends is `follow.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::Duration;

use noetl_contract::engine::StepStatus;
use noetl_contract::message::{EventView, ExecutionStatus, StepView};
use noetl_contract::ExecutionId;
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::cli::{ListArgs, SubmitArgs};
use crate::follow;
use crate::http::{Error, Gateway};
use crate::input::{self, Source, SubmitParts};
use crate::table::{self, Table};

/// Events asked for per page.
const EVENTS_PAGE: u32 = 100;
/// How much of a result, an input or a payload a table shows.
const VALUE_CHARS: usize = 80;

/// `201` (or `200` for an idempotent replay) of `POST /executions`.
#[derive(Debug, Clone, Deserialize)]
pub struct Submitted {
    pub execution_id: ExecutionId,
    pub shard: u32,
    pub status: ExecutionStatus,
}

/// `200` of `POST /executions?dry_run=true`.
#[derive(Debug, Clone, Deserialize)]
pub struct DryRun {
    pub dry_run: bool,
    pub execution_id: ExecutionId,
    pub shard: u32,
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub playbook_name: String,
    #[serde(default)]
    pub playbook_version: Option<u64>,
    #[serde(default)]
    pub plan: Vec<PlannedStep>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PlannedStep {
    pub name: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub needs: Vec<String>,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub level: u32,
}

/// `GET /executions/{id}` (and the answer of a cancel). Read leniently: fields a gateway may
/// not send yet have defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Execution {
    pub execution_id: ExecutionId,
    pub shard: u32,
    pub status: ExecutionStatus,
    #[serde(default)]
    pub playbook_name: String,
    #[serde(default)]
    pub playbook_version: Option<u64>,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
    #[serde(default)]
    pub steps: Vec<StepView>,
}

/// `GET /executions/{id}/events`.
#[derive(Debug, Clone, Deserialize)]
struct EventsPage {
    status: ExecutionStatus,
    events: Vec<Value>,
    #[serde(default)]
    next_after_seq: Option<i64>,
}

/// `GET /executions`.
#[derive(Debug, Clone, Deserialize)]
struct Listing {
    executions: Vec<Value>,
    #[serde(default)]
    next_cursor: Option<String>,
    #[serde(default)]
    partial: bool,
    #[serde(default)]
    missing_shards: Vec<u32>,
}

/// One row of a listing.
#[derive(Debug, Clone, Deserialize)]
pub struct ExecutionSummary {
    pub execution_id: ExecutionId,
    pub shard: u32,
    pub status: ExecutionStatus,
    #[serde(default)]
    pub playbook_name: String,
    #[serde(default)]
    pub playbook_version: Option<u64>,
    #[serde(default)]
    pub created_at: String,
}

/// `GET /route/{id}`.
#[derive(Debug, Clone, Deserialize)]
struct RouteAnswer {
    execution_id: ExecutionId,
    shard: u32,
    shard_count: u32,
    epoch: u64,
    minted_at_ms: i64,
    node: u16,
    sequence: u16,
}

pub async fn submit(gateway: &Gateway, args: SubmitArgs) -> Result<u8, Error> {
    let document = match (&args.file, &args.playbook) {
        (_, Some(_)) => None,
        (Some(file), None) => Some(input::read_document(&Source::from_arg(file))?),
        (None, None) if std::io::stdin().is_terminal() => {
            return Err(Error::Input(
                "give a playbook file (`-` reads stdin) or --playbook NAME".to_owned(),
            ))
        }
        (None, None) => Some(input::read_document(&Source::Stdin)?),
    };
    let body = input::submit_body(SubmitParts {
        document,
        catalog: args.playbook,
        input: args.input,
        labels: args.labels,
    })?;
    let query = if args.dry_run {
        vec![("dry_run", "true".to_owned())]
    } else {
        Vec::new()
    };
    let mut request = gateway
        .request(Method::POST, gateway.url(&["executions"], &query)?)
        .json(&body);
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let response = gateway.send(request).await?;
    let replayed = response
        .headers()
        .get("idempotency-replayed")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    let (raw, answer): (Value, Value) = gateway.read(response).await?;
    if args.dry_run {
        return print_dry_run(raw, answer, args.json);
    }
    let submitted: Submitted =
        serde_json::from_value(answer).map_err(|e| Error::Unexpected(e.to_string()))?;
    if args.json {
        if !args.wait {
            print_json(&raw);
        }
    } else if replayed {
        println!(
            "execution {} on shard {} ({}): submitted earlier with this idempotency key",
            submitted.execution_id,
            submitted.shard,
            submitted.status.as_str()
        );
    } else {
        println!(
            "submitted execution {} to shard {} ({})",
            submitted.execution_id,
            submitted.shard,
            submitted.status.as_str()
        );
    }
    if !args.wait {
        return Ok(0);
    }
    let timeout = args.timeout.map(|t| Duration::from_millis(t.0));
    follow::wait(gateway, submitted.execution_id, timeout, args.json).await
}

fn print_dry_run(raw: Value, answer: Value, json: bool) -> Result<u8, Error> {
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
    let mut table = Table::new(["LEVEL", "STEP", "ACTION", "POOL", "NEEDS"]);
    for step in &dry.plan {
        table.row([
            step.level.to_string(),
            step.name.clone(),
            step.action.clone(),
            step.pool.clone().unwrap_or_else(|| "default".to_owned()),
            if step.needs.is_empty() {
                "-".to_owned()
            } else {
                step.needs.join(", ")
            },
        ]);
    }
    out.push_str(&table.render());
    out
}

/// Reads an execution: as received and typed.
pub async fn fetch(gateway: &Gateway, id: ExecutionId) -> Result<(Value, Execution), Error> {
    let id = id.to_string();
    let url = gateway.url(&["executions", &id], &[])?;
    gateway.json(gateway.request(Method::GET, url)).await
}

pub async fn get(gateway: &Gateway, id: ExecutionId, json: bool) -> Result<u8, Error> {
    let (raw, execution) = fetch(gateway, id).await?;
    if json {
        print_json(&raw);
    } else {
        print!("{}", render_execution(&execution));
    }
    Ok(0)
}

pub async fn cancel(gateway: &Gateway, id: ExecutionId, json: bool) -> Result<u8, Error> {
    let id_text = id.to_string();
    let url = gateway.url(&["executions", &id_text, "cancel"], &[])?;
    let (raw, execution): (Value, Execution) =
        gateway.json(gateway.request(Method::POST, url)).await?;
    if json {
        print_json(&raw);
    } else {
        print!("{}", render_execution(&execution));
    }
    if matches!(
        execution.status,
        ExecutionStatus::Succeeded | ExecutionStatus::Failed
    ) {
        eprintln!(
            "noetlctl: execution {id} had already {}; nothing was cancelled",
            execution.status.as_str()
        );
    }
    Ok(0)
}

/// The execution's fields, then a table of its steps.
pub fn render_execution(execution: &Execution) -> String {
    let version = match execution.playbook_version {
        Some(v) => format!(" (version {v})"),
        None => String::new(),
    };
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        out.push_str(&format!(
            "{name:<10} {}\n",
            crate::http::single_line(&value)
        ));
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
    out.push_str(&render_steps(&execution.steps));
    out
}

/// A table of steps: name, status, attempt, time taken, and the result or the error.
pub fn render_steps(steps: &[StepView]) -> String {
    let mut table = Table::new(["STEP", "STATUS", "ATTEMPT", "TIME", "RESULT / ERROR"]);
    for step in steps {
        let outcome = match (&step.error, &step.result) {
            (Some(error), _) => format!("error: {}", table::truncate(error, VALUE_CHARS)),
            (None, Some(result)) => table::compact(result, VALUE_CHARS),
            (None, None) => "-".to_owned(),
        };
        table.row([
            step.name.clone(),
            step.status.as_str().to_owned(),
            step.attempt.to_string(),
            took(step.started_at.as_deref(), step.finished_at.as_deref())
                .unwrap_or_else(|| "-".to_owned()),
            outcome,
        ]);
    }
    table.render()
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

pub async fn events(gateway: &Gateway, id: ExecutionId, json: bool) -> Result<u8, Error> {
    let id_text = id.to_string();
    let mut after_seq = 0;
    let mut events = Vec::new();
    let status = loop {
        let url = gateway.url(
            &["executions", &id_text, "events"],
            &[
                ("after_seq", after_seq.to_string()),
                ("limit", EVENTS_PAGE.to_string()),
            ],
        )?;
        let (_, page): (Value, EventsPage) =
            gateway.json(gateway.request(Method::GET, url)).await?;
        events.extend(page.events);
        match page.next_after_seq {
            Some(next) if next > after_seq => after_seq = next,
            Some(next) => {
                return Err(Error::Unexpected(format!(
                    "the event log went back from seq {after_seq} to {next}"
                )))
            }
            None => break page.status,
        }
    };
    if json {
        print_json(&serde_json::json!({
            "execution_id": id_text,
            "status": status.as_str(),
            "events": events,
        }));
        return Ok(0);
    }
    let mut table = Table::new(["SEQ", "TIME", "KIND", "PAYLOAD"]);
    for raw in &events {
        let event: EventView =
            serde_json::from_value(raw.clone()).map_err(|e| Error::Unexpected(e.to_string()))?;
        table.row([
            event.seq.to_string(),
            event.created_at,
            event.kind,
            table::compact(&event.payload, VALUE_CHARS),
        ]);
    }
    print!("{}", table.render());
    println!(
        "\n{} event(s); execution {id}: {}",
        events.len(),
        status.as_str()
    );
    Ok(0)
}

/// One event on one line, for a stream (columns cannot be sized ahead of time).
pub fn event_line(event: &EventView) -> String {
    crate::http::single_line(&format!(
        "{:>4}  {}  {:<20}  {}",
        event.seq,
        event.created_at,
        event.kind,
        table::compact(&event.payload, VALUE_CHARS)
    ))
}

pub async fn list(gateway: &Gateway, args: ListArgs) -> Result<u8, Error> {
    let mut filters = vec![("limit", args.limit.to_string())];
    if let Some(status) = args.status {
        filters.push(("status", status.status().as_str().to_owned()));
    }
    if let Some(labels) = input::label_filter(&args.labels)? {
        filters.push(("labels", labels));
    }
    if let Some(playbook) = &args.playbook {
        filters.push(("playbook", playbook.clone()));
    }
    if let Some(after) = &args.created_after {
        filters.push(("created_after", after.clone()));
    }
    if let Some(before) = &args.created_before {
        filters.push(("created_before", before.clone()));
    }
    let mut cursor = args.cursor.clone();
    let mut seen_cursors = BTreeSet::new();
    let mut rows = Vec::new();
    let mut missing = BTreeSet::new();
    let mut partial = false;
    let next_cursor = loop {
        let mut query = filters.clone();
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let url = gateway.url(&["executions"], &query)?;
        let (raw, page): (Value, Listing) = gateway.json(gateway.request(Method::GET, url)).await?;
        partial |= page.partial;
        missing.extend(page.missing_shards.iter().copied());
        if !args.all {
            if args.json {
                print_json(&raw);
            }
            rows = page.executions;
            break page.next_cursor;
        }
        rows.extend(page.executions);
        match page.next_cursor {
            Some(next) if !seen_cursors.insert(next.clone()) => {
                return Err(Error::Unexpected(format!(
                    "the gateway handed out the cursor {next} twice"
                )))
            }
            Some(next) => cursor = Some(next),
            None => break None,
        }
    };
    if partial {
        eprintln!("noetlctl: warning: {}", partial_warning(&missing));
    }
    if args.json {
        if args.all {
            print_json(&serde_json::json!({
                "executions": rows,
                "partial": partial,
                "missing_shards": missing,
            }));
        }
        return Ok(0);
    }
    let summaries = rows
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<Vec<ExecutionSummary>, _>>()
        .map_err(|e| Error::Unexpected(e.to_string()))?;
    if summaries.is_empty() {
        eprintln!("noetlctl: no executions match");
    } else {
        print!("{}", render_listing(&summaries));
    }
    if let Some(next) = next_cursor {
        eprintln!("noetlctl: more executions: add --cursor {next} for the next page, or --all");
    }
    Ok(0)
}

fn partial_warning(missing: &BTreeSet<u32>) -> String {
    if missing.is_empty() {
        return "partial result: some shards did not answer, so executions may be missing"
            .to_owned();
    }
    let shards = missing
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!("partial result: shard(s) {shards} did not answer, so their executions are missing")
}

fn render_listing(rows: &[ExecutionSummary]) -> String {
    let mut table = Table::new(["ID", "SHARD", "STATUS", "PLAYBOOK", "CREATED"]);
    for row in rows {
        let playbook = match row.playbook_version {
            Some(v) => format!("{}@{v}", row.playbook_name),
            None => row.playbook_name.clone(),
        };
        table.row([
            row.execution_id.to_string(),
            row.shard.to_string(),
            row.status.as_str().to_owned(),
            playbook,
            row.created_at.clone(),
        ]);
    }
    table.render()
}

pub async fn route(gateway: &Gateway, id: ExecutionId, json: bool) -> Result<u8, Error> {
    let id_text = id.to_string();
    let url = gateway.url(&["route", &id_text], &[])?;
    let (raw, route): (Value, RouteAnswer) =
        gateway.json(gateway.request(Method::GET, url)).await?;
    if json {
        print_json(&raw);
        return Ok(0);
    }
    println!("execution  {}", route.execution_id);
    println!("shard      {} of {}", route.shard, route.shard_count);
    println!("epoch      {}", route.epoch);
    println!(
        "minted at  {} ({} ms)",
        crate::topology::timestamp(route.minted_at_ms),
        route.minted_at_ms
    );
    println!("node       {}", route.node);
    println!("sequence   {}", route.sequence);
    Ok(0)
}

/// Pretty JSON on stdout.
pub fn print_json(value: &Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        // A `Value` always serialises; print it compact if it somehow did not.
        Err(_) => println!("{value}"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn execution() -> Execution {
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
        let text = render_execution(&execution());
        assert_eq!(
            text,
            "execution  320816801799737344\n\
             status     failed\n\
             shard      1\n\
             playbook   diamond (version 3)\n\
             labels     env=dev\n\
             input      {\"n\":3}\n\
             created    2026-11-23T10:00:00Z\n\
             updated    2026-11-23T10:00:02Z\n\
             \n\
             STEP  STATUS     ATTEMPT  TIME   RESULT / ERROR\n\
             a     succeeded  1        1.25s  {\"ok\":true}\n\
             b     failed     3        -      error: boom at line 2\n\
             c     skipped    0        -      -\n"
        );
    }

    #[test]
    fn an_execution_from_a_gateway_without_versions_still_reads() {
        let execution: Execution = serde_json::from_value(json!({
            "execution_id": "42", "shard": 0, "status": "running", "playbook_name": "p",
            "input": {}, "labels": {}, "created_at": "t", "updated_at": "t", "steps": []
        }))
        .expect("no playbook_version");
        assert_eq!(execution.playbook_version, None);
        assert!(render_execution(&execution).contains("playbook   p\n"));
    }

    #[test]
    fn a_listing_shows_id_shard_status_playbook_and_time() {
        let rows: Vec<ExecutionSummary> = serde_json::from_value(json!([
            {"execution_id": "320816801799737344", "shard": 14, "status": "running",
             "playbook_name": "diamond", "playbook_version": 2, "labels": {},
             "created_at": "2026-11-23T10:00:01Z", "updated_at": "2026-11-23T10:00:01Z"},
            {"execution_id": "42", "shard": 3, "status": "succeeded",
             "playbook_name": "hello", "playbook_version": null, "labels": {"a": "b"},
             "created_at": "2026-11-23T10:00:00Z", "updated_at": "2026-11-23T10:00:00Z"}
        ]))
        .expect("the documented shape");
        assert_eq!(
            render_listing(&rows),
            "ID                  SHARD  STATUS     PLAYBOOK   CREATED\n\
             320816801799737344  14     running    diamond@2  2026-11-23T10:00:01Z\n\
             42                  3      succeeded  hello      2026-11-23T10:00:00Z\n"
        );
    }

    #[test]
    fn a_partial_listing_names_the_missing_shards() {
        let missing: BTreeSet<u32> = [3, 1].into_iter().collect();
        assert_eq!(
            partial_warning(&missing),
            "partial result: shard(s) 1, 3 did not answer, so their executions are missing"
        );
        assert!(partial_warning(&BTreeSet::new()).contains("some shards"));
    }

    #[test]
    fn a_dry_run_prints_the_plan_by_level() {
        let dry: DryRun = serde_json::from_value(json!({
            "dry_run": true, "execution_id": "42", "shard": 1, "epoch": 2,
            "playbook_name": "diamond", "playbook_version": 3,
            "plan": [
                {"name": "a", "action": "noop", "needs": [], "pool": "default", "level": 0},
                {"name": "d", "action": "noop", "needs": ["b", "c"], "pool": "gpu", "level": 2}
            ]
        }))
        .expect("the documented shape");
        assert_eq!(
            render_dry_run(&dry),
            "dry run: valid; execution 42 would go to shard 1 (epoch 2); nothing was persisted\n\
             playbook diamond version 3: 2 step(s)\n\
             \n\
             LEVEL  STEP  ACTION  POOL     NEEDS\n\
             0      a     noop    default  -\n\
             2      d     noop    gpu      b, c\n"
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
}
