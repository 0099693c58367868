//! Following an execution until it ends: `submit --wait` polls the execution and draws a
//! progress bar, `watch` prints the live event stream. Both ride out a gateway or shard that is
//! down for a moment, and both exit with the code of the final status.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use noetl_contract::engine::StepStatus;
use noetl_contract::message::{ExecutionStatus, ExecutionView, StepView};
use noetl_contract::ExecutionId;
use reqwest::header::ACCEPT;
use serde_json::Value;

use crate::exit;
use crate::http::{Error, Gateway};
use crate::render::{self, step_finished};
use crate::sse::{self, StreamItem};

/// How often `--wait` reads the execution.
const POLL: Duration = Duration::from_millis(500);
/// How long the gateway may keep failing (unreachable, 5xx) before following gives up.
const OUTAGE_BUDGET: Duration = Duration::from_secs(30);
/// How long to wait before reconnecting a stream that broke.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Steps the progress bar lists by name; more are summed up in one line.
const LISTED_STEPS: usize = 12;

/// The exit code of a final status: `0` succeeded, `6` failed, `7` cancelled; `5` (not yet)
/// for one that is not final.
pub fn exit_code(status: ExecutionStatus) -> u8 {
    match status {
        ExecutionStatus::Succeeded => 0,
        ExecutionStatus::Failed => exit::EXECUTION_FAILED,
        ExecutionStatus::Cancelled => exit::EXECUTION_CANCELLED,
        ExecutionStatus::Pending | ExecutionStatus::Running => exit::NOT_YET,
    }
}

/// Remembers when the gateway started failing, and says when it has failed for too long.
#[derive(Debug, Default)]
struct Outage {
    since: Option<Instant>,
}

impl Outage {
    fn ok(&mut self) {
        self.since = None;
    }

    /// `Ok` with the error while it is worth retrying; `Err` when it is not transient or the
    /// outage has lasted [`OUTAGE_BUDGET`].
    fn failed(&mut self, error: Error, now: Instant) -> Result<Error, Error> {
        let since = *self.since.get_or_insert(now);
        if !error.is_transient() || now.duration_since(since) >= OUTAGE_BUDGET {
            return Err(error);
        }
        Ok(error)
    }
}

/// Reads an execution: as received and typed.
pub async fn fetch(gateway: &Gateway, id: ExecutionId) -> Result<(Value, ExecutionView), Error> {
    gateway.get(&["executions", &id.to_string()], &[]).await
}

/// Polls the execution until it is final (or `timeout` passed), drawing a progress bar on
/// stderr, then prints the table of its steps (or, with `json`, the execution's JSON).
pub async fn wait(
    gateway: &Gateway,
    id: ExecutionId,
    timeout: Option<Duration>,
    json: bool,
) -> Result<u8, Error> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut progress = Progress::new();
    let mut outage = Outage::default();
    let mut last: Option<(Value, ExecutionView)> = None;
    loop {
        match fetch(gateway, id).await {
            Ok((raw, execution)) => {
                outage.ok();
                progress.show(&execution);
                if execution.status.is_terminal() {
                    progress.finish();
                    print_final(&raw, &execution, json);
                    return Ok(exit_code(execution.status));
                }
                last = Some((raw, execution));
            }
            Err(e) => match outage.failed(e, Instant::now()) {
                Ok(e) => progress.note(&format!("gateway: {e}; retrying")),
                Err(e) => {
                    progress.finish();
                    return Err(e);
                }
            },
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            progress.finish();
            let status = last.as_ref().map_or("running", |(_, e)| e.status.as_str());
            if let Some((raw, execution)) = &last {
                print_final(raw, execution, json);
            }
            eprintln!(
                "noetlctl: execution {id} is still {status} after {:?}; it goes on (follow it with `noetlctl watch {id}`)",
                timeout.unwrap_or_default()
            );
            return Ok(exit::NOT_YET);
        }
        let pause = deadline.map_or(POLL, |d| POLL.min(d - now));
        tokio::time::sleep(pause).await;
    }
}

fn print_final(raw: &Value, execution: &ExecutionView, json: bool) {
    render::answer(raw, json, || {
        println!(
            "execution {} {}",
            execution.execution_id,
            execution.status.as_str()
        );
        print!(
            "{}",
            render::steps(&execution.steps, &render::StepNotes::default())
        );
    });
}

/// The progress bar on a terminal; on anything else (a CI log, a file) one line per change of
/// a step instead, since a bar redrawn in place would be noise there.
struct Progress {
    bar: ProgressBar,
    seen: HashMap<String, (StepStatus, u32)>,
}

impl Progress {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} steps finished  {elapsed}  {prefix}\n{msg}",
        )
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        if !bar.is_hidden() {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Self {
            bar,
            seen: HashMap::new(),
        }
    }

    fn show(&mut self, execution: &ExecutionView) {
        let finished = execution
            .steps
            .iter()
            .filter(|s| step_finished(s.status))
            .count();
        self.bar.set_length(execution.steps.len() as u64);
        self.bar.set_position(finished as u64);
        self.bar.set_prefix(execution.status.as_str());
        if self.bar.is_hidden() {
            for line in step_changes(&mut self.seen, &execution.steps) {
                eprintln!("{line}");
            }
        } else {
            self.bar
                .set_message(live_lines(&execution.steps, LISTED_STEPS));
        }
    }

    fn note(&self, note: &str) {
        if self.bar.is_hidden() {
            eprintln!("noetlctl: {note}");
        } else {
            self.bar.set_message(note.to_owned());
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The steps under the bar: every step while they fit, else the ones in flight or failed and a
/// count of the rest.
pub fn live_lines(steps: &[StepView], max: usize) -> String {
    let width = steps
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    let line = |step: &StepView| {
        let attempt = if step.attempt.get() > 1 {
            format!(" (attempt {})", step.attempt)
        } else {
            String::new()
        };
        let looped = step
            .loop_
            .as_ref()
            .map(|progress| format!("  {}", render::loop_progress(progress)))
            .unwrap_or_default();
        format!(
            "  {:<width$}  {}{attempt}{looped}",
            step.name,
            step.status.as_str()
        )
    };
    if steps.len() <= max {
        return steps.iter().map(line).collect::<Vec<_>>().join("\n");
    }
    let notable = |s: &&StepView| {
        matches!(
            s.status,
            StepStatus::Dispatched | StepStatus::Running | StepStatus::Failed
        )
    };
    let mut lines: Vec<String> = steps.iter().filter(notable).take(max).map(line).collect();
    let mut rest: Vec<(StepStatus, usize)> = Vec::new();
    for step in steps.iter().filter(|s| !notable(s)) {
        match rest.iter_mut().find(|(status, _)| *status == step.status) {
            Some((_, count)) => *count += 1,
            None => rest.push((step.status, 1)),
        }
    }
    let hidden = steps.iter().filter(notable).count().saturating_sub(max);
    let mut summary: Vec<String> = rest
        .iter()
        .map(|(status, count)| format!("{count} {}", status.as_str()))
        .collect();
    if hidden > 0 {
        summary.push(format!("{hidden} more in flight or failed"));
    }
    if !summary.is_empty() {
        lines.push(format!("  … {}", summary.join(", ")));
    }
    lines.join("\n")
}

/// One line for each step whose status or attempt changed since the last call.
pub fn step_changes(
    seen: &mut HashMap<String, (StepStatus, u32)>,
    steps: &[StepView],
) -> Vec<String> {
    let mut lines = Vec::new();
    for step in steps {
        let now = (step.status, step.attempt.get());
        if seen.get(&step.name) == Some(&now) {
            continue;
        }
        let first_sight = seen.insert(step.name.clone(), now).is_none();
        // Steps nobody has touched yet are not news.
        if first_sight && step.status == StepStatus::Pending {
            continue;
        }
        lines.push(format!(
            "step {}: {} (attempt {})",
            step.name,
            step.status.as_str(),
            step.attempt
        ));
    }
    lines
}

/// Prints the execution's live events until the stream's `end`, reconnecting (from the last
/// event seen) when the stream breaks; the exit code is that of the final status.
pub async fn watch(gateway: &Gateway, id: ExecutionId, json: bool) -> Result<u8, Error> {
    let id_text = id.to_string();
    let url = gateway.url(&["executions", &id_text, "stream"], &[])?;
    let mut last_seq: Option<i64> = None;
    let mut outage = Outage::default();
    loop {
        let mut request = gateway
            .stream_request(url.clone())
            .header(ACCEPT, "text/event-stream");
        if let Some(seq) = last_seq {
            request = request.header("Last-Event-ID", seq.to_string());
        }
        let broke = match gateway.send(request).await {
            Ok(mut response) => {
                let mut parser = sse::Parser::default();
                loop {
                    match response.chunk().await {
                        Ok(Some(bytes)) => {
                            outage.ok();
                            for event in parser.feed(&bytes) {
                                match sse::interpret(&event).map_err(Error::Unexpected)? {
                                    StreamItem::End(status) => {
                                        if !json {
                                            println!("end: execution {id} {}", status.as_str());
                                        }
                                        return Ok(exit_code(status));
                                    }
                                    StreamItem::Event { event, raw } => {
                                        if last_seq.is_some_and(|seen| event.seq <= seen) {
                                            continue; // replayed after a reconnect
                                        }
                                        last_seq = Some(event.seq);
                                        if json {
                                            println!("{raw}");
                                        } else {
                                            println!("{}", render::event_line(&event));
                                        }
                                    }
                                }
                            }
                        }
                        Ok(None) => {
                            break Error::Transport(
                                "the stream ended before the execution did".to_owned(),
                            )
                        }
                        Err(e) => break gateway.transport(e),
                    }
                }
            }
            Err(e) => e,
        };
        let error = outage.failed(broke, Instant::now())?;
        eprintln!("noetlctl: {error}; reconnecting");
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn steps(states: &[(&str, &str, u32)]) -> Vec<StepView> {
        states
            .iter()
            .map(|(name, status, attempt)| {
                serde_json::from_value(json!({"name": name, "status": status, "attempt": attempt}))
                    .expect("a step")
            })
            .collect()
    }

    #[test]
    fn final_statuses_map_to_exit_codes() {
        assert_eq!(exit_code(ExecutionStatus::Succeeded), 0);
        assert_eq!(exit_code(ExecutionStatus::Failed), 6);
        assert_eq!(exit_code(ExecutionStatus::Cancelled), 7);
        assert_eq!(exit_code(ExecutionStatus::Running), 5);
        assert_eq!(exit_code(ExecutionStatus::Pending), 5);
    }

    #[test]
    fn the_live_list_shows_every_step_while_they_fit_and_sums_up_the_quiet_ones_else() {
        let few = [
            ("a", "succeeded", 1),
            ("bb", "running", 2),
            ("c", "pending", 0),
        ];
        let many = [
            ("a", "succeeded", 1),
            ("b", "running", 1),
            ("c", "failed", 3),
            ("d", "pending", 0),
            ("e", "pending", 0),
            ("f", "dispatched", 1),
        ];
        for (states, max, expected) in [
            (
                &few[..],
                5,
                "  a   succeeded\n  bb  running (attempt 2)\n  c   pending",
            ),
            (
                &many[..],
                2,
                "  b  running\n  c  failed (attempt 3)\n  … 1 succeeded, 2 pending, 1 more in flight or failed",
            ),
        ] {
            assert_eq!(live_lines(&steps(states), max), expected);
        }
    }

    #[test]
    fn the_live_list_shows_a_loops_progress() {
        let mut list = steps(&[("each", "running", 1)]);
        list[0].loop_ = serde_json::from_value(
            serde_json::json!({"total": 10, "next": 5, "succeeded": 3, "failed": 0, "in_flight": 2}),
        )
        .expect("a loop's progress");
        assert_eq!(
            live_lines(&list, 8),
            "  each  running  loop 3/10 (2 running)"
        );
    }

    #[test]
    fn step_changes_report_each_transition_once() {
        let mut seen = HashMap::new();
        let first = step_changes(
            &mut seen,
            &steps(&[("a", "dispatched", 1), ("b", "pending", 0)]),
        );
        assert_eq!(first, vec!["step a: dispatched (attempt 1)"]);
        let again = step_changes(
            &mut seen,
            &steps(&[("a", "dispatched", 1), ("b", "pending", 0)]),
        );
        assert!(again.is_empty());
        let later = step_changes(
            &mut seen,
            &steps(&[("a", "dispatched", 2), ("b", "running", 1)]),
        );
        assert_eq!(
            later,
            vec![
                "step a: dispatched (attempt 2)",
                "step b: running (attempt 1)"
            ]
        );
    }

    #[test]
    fn an_outage_is_ridden_out_for_a_while_only() {
        let down = || Error::Transport("cannot reach the gateway".into());
        let start = Instant::now();
        let mut outage = Outage::default();
        assert!(outage.failed(down(), start).is_ok());
        let almost = start + OUTAGE_BUDGET - Duration::from_secs(1);
        assert!(outage.failed(down(), almost).is_ok());
        assert!(outage.failed(down(), start + OUTAGE_BUDGET).is_err());
        // An answer in between starts the count again.
        outage.ok();
        assert!(outage.failed(down(), start + OUTAGE_BUDGET).is_ok());
        // A refusal is never retried.
        let refused = Error::Status {
            status: 404,
            detail: "Not Found".into(),
        };
        assert!(Outage::default().failed(refused, start).is_err());
    }
}
