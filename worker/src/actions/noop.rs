//! `noop`: does nothing and succeeds with `{}`; its `with` is ignored.

use serde::de::IgnoredAny;
use serde_json::json;

use super::{ActionContext, ActionResult, Typed};

#[derive(Debug)]
pub struct Noop;

impl Typed for Noop {
    const NAME: &'static str = "noop";
    const HAS_EFFECTS: bool = false;
    type Args = IgnoredAny;

    async fn call(&self, _: IgnoredAny, _: &ActionContext) -> ActionResult {
        Ok(json!({}))
    }
}

#[cfg(test)]
mod tests {
    use super::super::run_attempt;
    use super::*;

    #[tokio::test]
    async fn noop_succeeds_with_an_empty_object_whatever_its_arguments() {
        for with in [json!({"ignored": true}), json!(null), json!([1, 2])] {
            assert_eq!(run_attempt(&Noop, with, 1).await, Ok(json!({})));
        }
    }
}
