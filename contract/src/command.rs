//! Step commands and their results: what the server dispatches to workers over JetStream and
//! what workers report back to the owning shard (wiki/spec.md §4.3).
//!
//! A command is identified by `(execution_id, step, attempt)`. Results and heartbeats carry the
//! attempt and its secret token, so the shard can fence them: only the current attempt of a
//! step, told its token by the command, may report.

use serde::{Deserialize, Serialize};

use crate::id::ExecutionId;
use crate::routing::ShardId;
use crate::step::{Attempt, AttemptToken, StepIndex};

/// Run one attempt of one step. Published on [`crate::subject::command`] with the JetStream
/// message id [`StepCommand::message_id`], so a re-published command is de-duplicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepCommand {
    pub execution_id: ExecutionId,
    pub shard: ShardId,
    /// Index of the step in the playbook.
    pub step_index: StepIndex,
    pub step: String,
    /// 1 for the first attempt.
    pub attempt: Attempt,
    pub action: String,
    /// The step's `with`, templates already rendered.
    pub with: serde_json::Value,
    /// Upper bound on this attempt.
    pub timeout_ms: u64,
    /// The worker must heartbeat more often than this, or the attempt is presumed dead.
    pub lease_ms: u64,
    /// The attempt's secret, sent back in its heartbeats and report. Absent from commands
    /// queued before tokens existed (their steps admit reports without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<AttemptToken>,
    /// The loop item this attempt runs (its position in the list), for a loop step; absent
    /// for any other step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
}

impl StepCommand {
    /// JetStream de-duplication id: one per attempt of a step (and of a loop item, whose
    /// attempts take numbers of their step's counter).
    pub fn message_id(&self) -> String {
        let base = format!("{}:{}:{}", self.execution_id, self.step_index, self.attempt);
        match self.item {
            Some(item) => format!("{base}:{item}"),
            None => base,
        }
    }
}

/// What a finished attempt produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StepOutcome {
    Succeeded { result: serde_json::Value },
    Failed { error: String },
}

impl StepOutcome {
    /// Replaces every NUL character (in the result's strings and keys, or in the error) with
    /// U+FFFD, which PostgreSQL can store: neither `jsonb` nor `text` holds U+0000, and a
    /// program's output or an HTTP body may contain it. Returns whether anything was replaced.
    pub fn scrub_nul(&mut self) -> bool {
        match self {
            StepOutcome::Succeeded { result } => scrub_value(result),
            StepOutcome::Failed { error } => scrub_text(error),
        }
    }
}

/// The step error code of a result over a size limit (the shard's `step_result_max_bytes` or
/// `execution_results_max_bytes`, or NATS `max_payload` for the worker's report).
pub const RESULT_TOO_LARGE: &str = "result_too_large";

impl StepOutcome {
    /// The failure that stands for an outcome of `size` bytes over `limit` (`what` names the
    /// limit): small, whatever the outcome was.
    pub fn too_large(size: usize, limit: usize, what: &str) -> Self {
        StepOutcome::Failed {
            error: format!(
                "{RESULT_TOO_LARGE}: the step's result is {size} bytes, over {what} ({limit} bytes)"
            ),
        }
    }

    /// The failure that stands for a result of `size` bytes that would take its execution's
    /// results, `stored` bytes before it, over `limit` (`what` names the limit).
    pub fn too_large_together(size: usize, stored: u64, limit: usize, what: &str) -> Self {
        StepOutcome::Failed {
            error: format!(
                "{RESULT_TOO_LARGE}: the step's result is {size} bytes, and the execution's \
                 results before it {stored} bytes: together over {what} ({limit} bytes)"
            ),
        }
    }

    /// Replaces an outcome whose JSON is over `max_bytes` (a result, or an error text) with
    /// [`StepOutcome::too_large`]; returns its size when it did.
    pub fn cap(&mut self, max_bytes: usize, what: &str) -> Option<usize> {
        let size = serde_json::to_vec(self).map_or(usize::MAX, |json| json.len());
        if size <= max_bytes {
            return None;
        }
        *self = Self::too_large(size, max_bytes, what);
        Some(size)
    }
}

fn scrub_text(text: &mut String) -> bool {
    if !text.contains('\0') {
        return false;
    }
    *text = text.replace('\0', "\u{FFFD}");
    true
}

fn scrub_value(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(text) => scrub_text(text),
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |any, item| scrub_value(item) | any),
        Value::Object(fields) => {
            let mut any = false;
            if fields.keys().any(|key| key.contains('\0')) {
                *fields = std::mem::take(fields)
                    .into_iter()
                    .map(|(key, item)| (key.replace('\0', "\u{FFFD}"), item))
                    .collect();
                any = true;
            }
            fields
                .values_mut()
                .fold(any, |any, item| scrub_value(item) | any)
        }
        _ => false,
    }
}

/// A worker's report of a finished attempt, sent to [`crate::subject::shard_request`] with
/// [`crate::subject::ShardRequest::Result`]. The worker acks the command only after the shard
/// answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub execution_id: ExecutionId,
    pub step_index: StepIndex,
    pub attempt: Attempt,
    #[serde(flatten)]
    pub outcome: StepOutcome,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub worker: String,
    /// The command's [`StepCommand::token`]: a report without the attempt's token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<AttemptToken>,
    /// The loop item this attempt runs (its position in the list), for a loop step; absent
    /// for any other step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
}

/// The shard's answer to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportAck {
    /// Recorded now.
    Recorded,
    /// Not recorded: a newer attempt owns the step, the step already has its result, the
    /// execution ended, or the report does not carry the attempt's token. The worker acks the
    /// command and moves on.
    Stale,
}

/// Sent to [`crate::subject::shard_request`] with [`crate::subject::ShardRequest::Heartbeat`]:
/// before the action starts, the `starting` check (may this attempt start?); while it runs,
/// "still working on it", which extends the attempt's lease and marks the step running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub execution_id: ExecutionId,
    pub step_index: StepIndex,
    pub attempt: Attempt,
    pub worker: String,
    /// The check before the action starts: the shard answers whether the attempt still owns
    /// its step and writes nothing, so a step that ends soon costs no write for its start (its
    /// result records it). Absent (false) from workers that predate it: every beat writes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starting: bool,
    /// When the action started, by the worker's clock (the step's `started_at`, never later
    /// than the shard's now); absent on the `starting` check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    /// The command's [`StepCommand::token`]: a beat without the attempt's token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<AttemptToken>,
    /// The loop item this attempt runs (its position in the list), for a loop step; absent
    /// for any other step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
}

/// The shard's answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeartbeatAck {
    /// Keep going; the lease is extended.
    Continue,
    /// Stop: the execution was cancelled, this attempt was superseded, or the beat does not
    /// carry the attempt's token.
    Stop,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_outcome_over_its_cap_becomes_a_small_result_too_large_failure() {
        let mut small = StepOutcome::Succeeded {
            result: json!({"a": 1}),
        };
        assert_eq!(small.cap(1024, "the cap"), None);
        assert_eq!(
            small,
            StepOutcome::Succeeded {
                result: json!({"a": 1})
            }
        );

        let mut large = StepOutcome::Succeeded {
            result: json!("é".repeat(600)),
        };
        let size = large.cap(1024, "the cap").expect("over the cap");
        assert!(size > 1024, "{size}");
        let StepOutcome::Failed { error } = &large else {
            panic!("{large:?}");
        };
        assert!(error.starts_with("result_too_large: "), "{error}");
        assert!(error.contains("over the cap (1024 bytes)"), "{error}");

        let mut long_error = StepOutcome::Failed {
            error: "x".repeat(2048),
        };
        assert!(long_error.cap(1024, "the cap").is_some());
        assert!(serde_json::to_vec(&long_error).expect("json").len() < 200);
    }

    #[test]
    fn nul_characters_of_a_result_or_an_error_become_replacement_characters() {
        let mut outcome = StepOutcome::Succeeded {
            result: json!({"body": "a\u{0}b", "k\u{0}": [1, "\u{0}"], "n": 1}),
        };
        assert!(outcome.scrub_nul());
        assert_eq!(
            outcome,
            StepOutcome::Succeeded {
                result: json!({"body": "a\u{FFFD}b", "k\u{FFFD}": [1, "\u{FFFD}"], "n": 1})
            }
        );
        assert!(!outcome.scrub_nul(), "nothing left to replace");
        let mut failed = StepOutcome::Failed {
            error: "exit 1: \u{0}".into(),
        };
        assert!(failed.scrub_nul());
        assert_eq!(
            failed,
            StepOutcome::Failed {
                error: "exit 1: \u{FFFD}".into()
            }
        );
    }

    #[test]
    fn report_shape_is_flat_and_tagged() {
        let report = StepReport {
            execution_id: ExecutionId::new(7).expect("valid"),
            step_index: StepIndex::new(1),
            attempt: Attempt::new(2),
            outcome: StepOutcome::Failed {
                error: "boom".into(),
            },
            started_at_ms: 1,
            finished_at_ms: 2,
            worker: "w1".into(),
            token: None,
            item: None,
        };
        let value = serde_json::to_value(&report).expect("serialize");
        assert!(
            value.get("item").is_none(),
            "absent for a step without a loop"
        );
        assert_eq!(value["outcome"], "failed");
        assert_eq!(value["error"], "boom");
        assert_eq!(value["execution_id"], "7");
        assert_eq!(
            (&value["step_index"], &value["attempt"]),
            (&json!(1), &json!(2))
        );
        let back: StepReport = serde_json::from_value(value).expect("parse");
        assert_eq!(back, report);
    }

    #[test]
    fn message_ids_differ_per_attempt() {
        let command = StepCommand {
            execution_id: ExecutionId::new(9).expect("valid"),
            shard: ShardId::new(0),
            step_index: StepIndex::new(3),
            step: "b".into(),
            attempt: Attempt::FIRST,
            action: "noop".into(),
            with: json!({}),
            timeout_ms: 1_000,
            lease_ms: 10_000,
            token: None,
            item: None,
        };
        let item = StepCommand {
            item: Some(4),
            ..command.clone()
        };
        assert_eq!(item.message_id(), "9:3:1:4");
        let retry = StepCommand {
            attempt: Attempt::new(2),
            ..command.clone()
        };
        assert_eq!(command.message_id(), "9:3:1");
        assert_ne!(command.message_id(), retry.message_id());
    }
}
