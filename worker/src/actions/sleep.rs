//! `sleep`: waits `with.ms` milliseconds, then succeeds with `{"slept_ms": ms}`.
//! Cancelling the step (timeout, a shard's stop) ends the wait at once.

use std::time::Duration;

use noetl_contract::playbook::MAX_ACTION_MS;
use serde::Deserialize;
use serde_json::json;

use super::{count, ActionContext, ActionResult, Typed};

#[derive(Debug)]
pub struct Sleep;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    #[serde(deserialize_with = "count")]
    ms: u64,
}

impl Typed for Sleep {
    const NAME: &'static str = "sleep";
    type Args = Args;

    async fn call(&self, args: Args, _: &ActionContext) -> ActionResult {
        if args.ms > MAX_ACTION_MS {
            return Err(format!(
                "invalid arguments for sleep: ms: {} is over the limit of {MAX_ACTION_MS} ms",
                args.ms
            ));
        }
        tokio::time::sleep(Duration::from_millis(args.ms)).await;
        Ok(json!({ "slept_ms": args.ms }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::run_attempt;
    use super::*;

    #[tokio::test]
    async fn sleep_waits_and_reports_how_long() {
        let result = run_attempt(&Sleep, json!({"ms": "5"}), 1).await;
        assert_eq!(result, Ok(json!({"slept_ms": 5})));
    }

    #[tokio::test]
    async fn sleep_without_ms_is_a_clear_error() {
        let error = run_attempt(&Sleep, Value::Null, 1)
            .await
            .expect_err("ms is required");
        assert!(error.contains("invalid arguments for sleep"), "{error}");
        assert!(error.contains("ms"), "{error}");
    }

    #[tokio::test]
    async fn sleep_over_a_day_is_refused_at_once() {
        let error = run_attempt(&Sleep, json!({"ms": u64::MAX}), 1)
            .await
            .expect_err("over the limit");
        assert!(error.contains("over the limit"), "{error}");
    }
}
