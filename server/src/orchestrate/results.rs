//! The bytes of an execution's step results together, and their cap
//! (`execution_results_max_bytes`): a result that would take them over fails its step with
//! `result_too_large`, so the execution stays readable in one reply.

use std::io;

use noetl_contract::command::StepOutcome;
use noetl_contract::engine::Event;

/// What a finished attempt's result adds to its execution's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Charge {
    /// The size of the result's JSON (0 for anything else than a successful result).
    pub(super) bytes: i64,
    /// The result was over the cap and replaced with the `result_too_large` failure.
    pub(super) capped: bool,
}

/// Charges `event` to an execution whose results take `stored` bytes: a successful result that
/// would take them over `max_bytes` is replaced with the `result_too_large` failure, which adds
/// nothing. A loop item's result is charged as it is recorded (the loop's list, assembled from
/// them, is not charged again).
pub(super) fn charge(event: &mut Event, stored: i64, max_bytes: usize) -> Charge {
    const NOTHING: Charge = Charge {
        bytes: 0,
        capped: false,
    };
    let outcome = match event {
        Event::Finished { outcome, .. } => outcome,
        Event::Item { event, .. } => match event.as_mut() {
            Event::Finished { outcome, .. } => outcome,
            _ => return NOTHING,
        },
        _ => return NOTHING,
    };
    let StepOutcome::Succeeded { result } = outcome else {
        return NOTHING;
    };
    let size = json_size(result);
    let stored = u64::try_from(stored).unwrap_or(0);
    if stored.saturating_add(size as u64) <= max_bytes as u64 {
        return Charge {
            bytes: i64::try_from(size).unwrap_or(i64::MAX),
            capped: false,
        };
    }
    *outcome = StepOutcome::too_large_together(size, stored, max_bytes, LIMIT);
    Charge {
        bytes: 0,
        capped: true,
    }
}

/// The setting the cap is read from, as errors and metrics name it.
pub(super) const LIMIT: &str = "execution_results_max_bytes";

/// The bytes of `value`'s JSON, as the shard stores and replies with it, without building it.
fn json_size(value: &serde_json::Value) -> usize {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).map_or(usize::MAX, |()| counter.0)
}

struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The server's settings that bound one execution, and the tenant quota's bookkeeping.
#[derive(Debug, Clone, Copy)]
pub struct ExecutionLimits {
    /// `execution_results_max_bytes`: the step results of one execution together.
    pub results_max_bytes: usize,
    /// `max_loop_items`: the items of one loop.
    pub max_loop_items: u32,
    /// Whether `tenant_max_executions_in_flight` is set, so ending an execution counts it in
    /// its tenant's `tenant_finished` row (off: that row is never touched).
    pub tenant_quota: bool,
}

#[cfg(test)]
mod tests {
    use noetl_contract::step::{Attempt, StepIndex};
    use serde_json::json;

    use super::*;

    fn finished(result: serde_json::Value) -> Event {
        Event::Finished {
            step: StepIndex::new(0),
            attempt: Attempt::FIRST,
            outcome: StepOutcome::Succeeded { result },
            started_at_ms: 0,
        }
    }

    #[test]
    fn a_result_is_charged_its_json_until_the_results_together_pass_the_cap() {
        let mut fits = finished(json!("abc"));
        assert_eq!(
            charge(&mut fits, 5, 10),
            Charge {
                bytes: 5,
                capped: false
            }
        );
        assert_eq!(fits, finished(json!("abc")));

        let mut over = finished(json!("abcd"));
        assert_eq!(
            charge(&mut over, 5, 10),
            Charge {
                bytes: 0,
                capped: true
            }
        );
        let Event::Finished {
            outcome: StepOutcome::Failed { error },
            ..
        } = &over
        else {
            panic!("{over:?}");
        };
        assert!(error.starts_with("result_too_large: "), "{error}");
        assert!(
            error.contains("6 bytes") && error.contains("before it 5 bytes"),
            "{error}"
        );
        assert!(
            error.contains("over execution_results_max_bytes (10 bytes)"),
            "{error}"
        );

        let mut failed = Event::Finished {
            step: StepIndex::new(0),
            attempt: Attempt::FIRST,
            outcome: StepOutcome::Failed {
                error: "x".repeat(100),
            },
            started_at_ms: 0,
        };
        assert_eq!(charge(&mut failed, 5, 10).bytes, 0);
        assert_eq!(charge(&mut Event::Cancel, 50, 10).bytes, 0);
    }

    #[test]
    fn a_loop_items_result_is_charged_and_capped_like_a_steps() {
        let item = |result| Event::Item {
            item: 3,
            event: Box::new(finished(result)),
        };
        assert_eq!(charge(&mut item(json!("abc")), 5, 10).bytes, 5);
        let mut over = item(json!("abcd"));
        assert!(charge(&mut over, 5, 10).capped);
        let Event::Item { event, .. } = &over else {
            panic!("{over:?}");
        };
        assert!(
            matches!(
                event.as_ref(),
                Event::Finished {
                    outcome: StepOutcome::Failed { .. },
                    ..
                }
            ),
            "{over:?}"
        );
    }
}
