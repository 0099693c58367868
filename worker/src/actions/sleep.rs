//! `sleep`: waits `with.ms` milliseconds, then succeeds with `{"slept_ms": ms}`.
//! Cancelling the step (timeout, a shard's stop) ends the wait at once.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{arguments, count, Action, ActionContext, ActionResult};

#[derive(Debug)]
pub struct Sleep;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    #[serde(deserialize_with = "count")]
    ms: u64,
}

impl Action for Sleep {
    fn name(&self) -> &'static str {
        "sleep"
    }

    fn run<'a>(&'a self, with: &'a Value, _ctx: &'a ActionContext) -> BoxFuture<'a, ActionResult> {
        Box::pin(async move {
            let args: Args = arguments(self.name(), with)?;
            tokio::time::sleep(Duration::from_millis(args.ms)).await;
            Ok(json!({ "slept_ms": args.ms }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleep_waits_and_reports_how_long() {
        let ctx = ActionContext { attempt: 1 };
        let result = Sleep.run(&json!({"ms": "5"}), &ctx).await;
        assert_eq!(result, Ok(json!({"slept_ms": 5})));
    }

    #[tokio::test]
    async fn sleep_without_ms_is_a_clear_error() {
        let ctx = ActionContext { attempt: 1 };
        let error = Sleep
            .run(&Value::Null, &ctx)
            .await
            .expect_err("ms is required");
        assert!(error.contains("invalid arguments for sleep"), "{error}");
        assert!(error.contains("ms"), "{error}");
    }
}
