//! `noop`: does nothing and succeeds with `{}`; its `with` is ignored.

use futures::future::BoxFuture;
use serde_json::{json, Value};

use super::{Action, ActionContext, ActionResult};

#[derive(Debug)]
pub struct Noop;

impl Action for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }

    fn has_effects(&self) -> bool {
        false
    }

    fn run<'a>(&'a self, _with: &'a Value, _ctx: &'a ActionContext) -> BoxFuture<'a, ActionResult> {
        Box::pin(async { Ok(json!({})) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn noop_succeeds_with_an_empty_object() {
        let ctx = ActionContext { attempt: 1 };
        let result = Noop.run(&json!({"ignored": true}), &ctx).await;
        assert_eq!(result, Ok(json!({})));
    }
}
