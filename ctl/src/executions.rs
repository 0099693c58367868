//! The execution commands that ask the gateway once (or page through): submit and its dry run,
//! get, events, list, cancel and route, with their arguments and the answers they read (the
//! contract's views where the gateway answers with one). Following an execution until it ends
//! is `follow`; how executions and events print is `render`.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, ValueEnum};
use noetl_contract::message::{EventView, ExecutionStatus, ExecutionSummary, ExecutionView};
use noetl_contract::playbook::Millis;
use noetl_contract::{ExecutionId, ShardId};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::follow;
use crate::http::{Error, Gateway};
use crate::input::{self, CatalogRef, Label, Source, SubmitParts};
use crate::plan;
use crate::render::{self, print_json, StepNotes, VALUE_CHARS};
use crate::table::{self, Table};

/// Events asked for per page.
const EVENTS_PAGE: u32 = 100;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A playbook, or a whole submit body ({"playbook", "input", "labels"}), in JSON or YAML;
    /// `-` or nothing reads stdin.
    #[arg(value_name = "FILE|-", conflicts_with = "playbook")]
    pub file: Option<String>,
    /// Submit a playbook of the catalog instead of a file (its latest version by default).
    #[arg(long, value_name = "NAME[@VERSION]", value_parser = input::parse_catalog_ref)]
    pub playbook: Option<CatalogRef>,
    /// Input as a JSON object; its keys override the file's input.
    #[arg(long, value_name = "JSON", value_parser = input::parse_input)]
    pub input: Option<Map<String, Value>>,
    /// A label (repeatable); overrides the file's label of the same key.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = input::parse_label)]
    pub labels: Vec<Label>,
    /// Submitting again with the same key returns the same execution instead of a new one.
    #[arg(long, value_name = "KEY", value_parser = parse_idempotency_key)]
    pub idempotency_key: Option<String>,
    /// Validate and show the plan and the shard it would go to; nothing is persisted.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
    /// Follow the execution until it ends, with a progress bar; the exit code says how it ended.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (e.g. 90s, 10m), with exit code 5.
    #[arg(long, value_name = "DURATION", requires = "wait")]
    pub timeout: Option<Millis>,
    /// Print the gateway's JSON (with --wait: only the final execution).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_enum)]
    pub status: Option<StatusFilter>,
    /// Only executions with this label (repeatable: all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = input::parse_label)]
    pub labels: Vec<Label>,
    /// Only executions of this playbook.
    #[arg(long, value_name = "NAME")]
    pub playbook: Option<String>,
    /// Only the executions of this tree: the root submitted and all its children, at any depth.
    #[arg(long, value_name = "ID")]
    pub root: Option<ExecutionId>,
    /// Only executions created at or after this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub created_after: Option<String>,
    /// Only executions created before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub created_before: Option<String>,
    /// Executions per page.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Start from this page (the cursor a previous page printed).
    #[arg(long, value_name = "CURSOR", conflicts_with = "all")]
    pub cursor: Option<String>,
    /// Read every page, not just the first.
    #[arg(long)]
    pub all: bool,
    /// Print JSON (with --all: every execution in one document).
    #[arg(long)]
    pub json: bool,
}

/// An execution status to filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl StatusFilter {
    pub fn status(self) -> ExecutionStatus {
        match self {
            StatusFilter::Pending => ExecutionStatus::Pending,
            StatusFilter::Running => ExecutionStatus::Running,
            StatusFilter::Succeeded => ExecutionStatus::Succeeded,
            StatusFilter::Failed => ExecutionStatus::Failed,
            StatusFilter::Cancelled => ExecutionStatus::Cancelled,
        }
    }
}

/// An idempotency key travels as a header: visible ASCII only.
fn parse_idempotency_key(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an idempotency key is 1 to 255 visible ASCII characters".to_owned());
    }
    Ok(s.to_owned())
}

/// Checks an RFC 3339 time and passes it on as written.
fn parse_rfc3339(s: &str) -> Result<String, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|_| s.to_owned())
        .map_err(|e| format!("not an RFC 3339 time (like 2026-11-23T10:00:00Z): {e}"))
}

/// `201` (or `200` for an idempotent replay) of `POST /executions`.
#[derive(Debug, Clone, Deserialize)]
pub struct Submitted {
    pub execution_id: ExecutionId,
    pub shard: ShardId,
    pub status: ExecutionStatus,
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
    missing_shards: Vec<ShardId>,
}

/// `GET /route/{id}`.
#[derive(Debug, Clone, Deserialize)]
struct RouteAnswer {
    execution_id: ExecutionId,
    shard: ShardId,
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
        return plan::print_dry_run(raw, answer, args.json);
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

/// How many levels of children `get` shows under a step.
const CHILD_DEPTH: usize = 4;

/// Adds the children of `execution`'s `playbook` steps to `notes`, depth first, at most
/// [`CHILD_DEPTH`] levels down.
async fn child_tree(
    gateway: &Gateway,
    execution: &ExecutionView,
    notes: &mut StepNotes,
) -> Result<(), Error> {
    // (the top step, depth, the step that started it, the child), popped in step order.
    let mut pending: Vec<(String, usize, String, ExecutionId)> = execution
        .steps
        .iter()
        .rev()
        .filter_map(|s| Some((s.name.clone(), 1, s.name.clone(), s.child_id?)))
        .collect();
    while let Some((top, depth, via, id)) = pending.pop() {
        let (_, child) = follow::fetch(gateway, id).await?;
        notes.add_child(&top, depth, &via, &child);
        if depth < CHILD_DEPTH {
            pending.extend(
                child
                    .steps
                    .iter()
                    .rev()
                    .filter_map(|s| Some((top.clone(), depth + 1, s.name.clone(), s.child_id?))),
            );
        }
    }
    Ok(())
}

/// The execution, and for people the reasons of its skipped steps from its event log and the
/// tree of its children.
pub async fn get(gateway: &Gateway, id: ExecutionId, json: bool) -> Result<u8, Error> {
    let (raw, execution) = follow::fetch(gateway, id).await?;
    let mut notes = if !json && render::wants_events(&execution.steps) {
        let (events, _) = event_log(gateway, id).await?;
        let events = events
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<Vec<EventView>, _>>()
            .map_err(|e| Error::Unexpected(e.to_string()))?;
        StepNotes::from_events(&events)
    } else {
        StepNotes::default()
    };
    if !json {
        child_tree(gateway, &execution, &mut notes).await?;
    }
    render::answer(&raw, json, || {
        print!("{}", render::execution(&execution, &notes))
    });
    Ok(0)
}

pub async fn cancel(gateway: &Gateway, id: ExecutionId, json: bool) -> Result<u8, Error> {
    let id_text = id.to_string();
    let url = gateway.url(&["executions", &id_text, "cancel"], &[])?;
    let (raw, execution): (Value, ExecutionView) =
        gateway.json(gateway.request(Method::POST, url)).await?;
    render::answer(&raw, json, || {
        print!("{}", render::execution(&execution, &StepNotes::default()))
    });
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

/// `DELETE /executions/{id}`: the answer has no body.
pub async fn delete(gateway: &Gateway, id: ExecutionId) -> Result<u8, Error> {
    let url = gateway.url(&["executions", &id.to_string()], &[])?;
    gateway.send(gateway.request(Method::DELETE, url)).await?;
    eprintln!("deleted execution {id}");
    Ok(0)
}

pub async fn events(gateway: &Gateway, id: ExecutionId, json: bool) -> Result<u8, Error> {
    let id_text = id.to_string();
    let (events, status) = event_log(gateway, id).await?;
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

/// Every event of execution `id`, page after page, and its status when the last was read.
async fn event_log(
    gateway: &Gateway,
    id: ExecutionId,
) -> Result<(Vec<Value>, ExecutionStatus), Error> {
    let id_text = id.to_string();
    let mut after_seq = 0;
    let mut events = Vec::new();
    let status = loop {
        let query = [
            ("after_seq", after_seq.to_string()),
            ("limit", EVENTS_PAGE.to_string()),
        ];
        let (_, page): (Value, EventsPage) = gateway
            .get(&["executions", &id_text, "events"], &query)
            .await?;
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
    Ok((events, status))
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
    if let Some(root) = args.root {
        filters.push(("root_id", root.to_string()));
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
        let (raw, page): (Value, Listing) = gateway.get(&["executions"], &query).await?;
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

fn partial_warning(missing: &BTreeSet<ShardId>) -> String {
    if missing.is_empty() {
        return "partial result: some shards did not answer, so executions may be missing"
            .to_owned();
    }
    let shards = missing
        .iter()
        .map(ShardId::to_string)
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
    let (raw, route): (Value, RouteAnswer) = gateway.get(&["route", &id.to_string()], &[]).await?;
    render::answer(&raw, json, || {
        println!("execution  {}", route.execution_id);
        println!("shard      {} of {}", route.shard, route.shard_count);
        println!("epoch      {}", route.epoch);
        println!(
            "minted at  {} ({} ms)",
            table::timestamp(route.minted_at_ms),
            route.minted_at_ms
        );
        println!("node       {}", route.node);
        println!("sequence   {}", route.sequence);
    });
    Ok(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
        let missing: BTreeSet<ShardId> = [3, 1].into_iter().map(ShardId::new).collect();
        assert_eq!(
            partial_warning(&missing),
            "partial result: shard(s) 1, 3 did not answer, so their executions are missing"
        );
        assert!(partial_warning(&BTreeSet::new()).contains("some shards"));
    }
}
