//! `fail`: fails with `with.message`, for testing retries and failure paths.
//!
//! With `with.until_attempt: N` it fails while the attempt is below N and then succeeds
//! (with `{"attempt": n}`), so a test can make a step fail twice and pass on the third try.

use serde::Deserialize;
use serde_json::json;

use super::{optional_count, ActionContext, ActionResult, Typed};

const DEFAULT_MESSAGE: &str = "failed on purpose";

#[derive(Debug)]
pub struct Fail;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Args {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, deserialize_with = "optional_count")]
    until_attempt: Option<u64>,
}

impl Typed for Fail {
    const NAME: &'static str = "fail";
    const HAS_EFFECTS: bool = false;
    type Args = Args;

    async fn call(&self, args: Args, ctx: &ActionContext) -> ActionResult {
        match args.until_attempt {
            Some(until) if u64::from(ctx.attempt) >= until => Ok(json!({ "attempt": ctx.attempt })),
            _ => Err(args.message.unwrap_or_else(|| DEFAULT_MESSAGE.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::run_attempt;
    use super::*;

    #[tokio::test]
    async fn fail_always_fails_with_its_message() {
        let result = run_attempt(&Fail, json!({"message": "boom"}), 7).await;
        assert_eq!(result, Err("boom".to_owned()));
        let result = run_attempt(&Fail, Value::Null, 7).await;
        assert_eq!(result, Err(DEFAULT_MESSAGE.to_owned()));
    }

    #[tokio::test]
    async fn until_attempt_fails_the_earlier_attempts_then_succeeds() {
        let with = json!({"message": "not yet", "until_attempt": 3});
        let mut results = Vec::new();
        for attempt in 1..=4 {
            results.push(run_attempt(&Fail, with.clone(), attempt).await);
        }
        assert_eq!(
            results,
            vec![
                Err("not yet".to_owned()),
                Err("not yet".to_owned()),
                Ok(json!({"attempt": 3})),
                Ok(json!({"attempt": 4})),
            ]
        );
    }
}
