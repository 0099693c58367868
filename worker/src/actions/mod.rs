//! Step actions: what a worker can do, one file per action behind the [`Action`] trait.
//!
//! An action that only needs its arguments decoded implements [`Typed`] (its name, whether it
//! has effects, the type of its `with`), and gets [`Action`] from it.
//! [`Registry::builtin`] holds the built-ins (`noop`, `sleep`, `fail`, `http`, `shell`);
//! [`Registry::execute`] runs one of them under the step's timeout and cancellation and turns
//! whatever happens (success, failure, timeout, cancellation, panic) into a [`StepOutcome`].
//! Nothing here touches NATS: the runner decides what to do with the outcome.
//!
//! Cancellation works by dropping the action's future, so an action must stop its work when
//! dropped (a child process is killed on drop, a request is aborted).

mod fail;
mod http;
mod noop;
mod shell;
mod sleep;

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use noetl_contract::command::StepOutcome;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::egress::Egress;

/// What an action returns: its result document, or the error the step fails with.
pub type ActionResult = Result<Value, String>;

/// What an action may know about the attempt it runs.
#[derive(Debug, Clone)]
pub struct ActionContext {
    /// 1 for the first attempt of the step.
    pub attempt: u32,
    /// The pool whose consumer the command came from (its `http_allow` applies).
    pub pool: Arc<str>,
}

/// One kind of step. `with` is the step's rendered arguments (`null` when it has none).
pub trait Action: Send + Sync + std::fmt::Debug {
    /// The name steps use in `action`.
    fn name(&self) -> &'static str;
    /// Runs one attempt. The future is dropped when the attempt times out or is cancelled.
    fn run<'a>(&'a self, with: &'a Value, ctx: &'a ActionContext) -> BoxFuture<'a, ActionResult>;
    /// Whether an attempt can change anything besides its result (a request sent, a process
    /// run, a worker slot held for a while). Such an attempt first asks its shard whether it
    /// may start, so a cancelled execution's steps never start and a superseded attempt never
    /// runs. An attempt that cannot (`noop`, `fail`) runs at once: its report is fenced, so
    /// running one that should not have run changes nothing.
    fn has_effects(&self) -> bool {
        true
    }
}

/// An action whose `with` decodes into [`Typed::Args`]. [`Action`] comes with it: `run`
/// decodes `with` (`null` counts as `{}`) and fails the attempt with the error, naming the
/// action, when it does not decode.
pub trait Typed: Send + Sync + std::fmt::Debug {
    /// The name steps use in `action`.
    const NAME: &'static str;
    /// As [`Action::has_effects`].
    const HAS_EFFECTS: bool = true;
    type Args: DeserializeOwned + Send;
    /// Runs one attempt with the decoded arguments.
    fn call<'a>(
        &'a self,
        args: Self::Args,
        ctx: &'a ActionContext,
    ) -> impl Future<Output = ActionResult> + Send + 'a;
}

impl<T: Typed> Action for T {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn run<'a>(&'a self, with: &'a Value, ctx: &'a ActionContext) -> BoxFuture<'a, ActionResult> {
        Box::pin(async move { self.call(arguments(T::NAME, with)?, ctx).await })
    }

    fn has_effects(&self) -> bool {
        T::HAS_EFFECTS
    }
}

/// Failures building the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to build the HTTP client: {0}")]
    HttpClient(String),
}

/// The actions this worker runs, by name.
#[derive(Debug)]
pub struct Registry {
    actions: BTreeMap<&'static str, Box<dyn Action>>,
}

impl Registry {
    /// The built-in actions. `shell` is present either way, so a step that needs it fails
    /// with a clear message rather than as an unknown action. `http` has a client for each of
    /// `pools`, with its egress policy.
    pub fn builtin(
        allow_shell: bool,
        max_output_bytes: usize,
        egress: &Egress,
        pools: &[String],
    ) -> Result<Self, Error> {
        let mut registry = Self {
            actions: BTreeMap::new(),
        };
        registry.register(Box::new(noop::Noop));
        registry.register(Box::new(sleep::Sleep));
        registry.register(Box::new(fail::Fail));
        registry.register(Box::new(http::Http::new(max_output_bytes, egress, pools)?));
        registry.register(Box::new(shell::Shell::new(allow_shell, max_output_bytes)));
        Ok(registry)
    }

    fn register(&mut self, action: Box<dyn Action>) {
        self.actions.insert(action.name(), action);
    }

    /// The registered action called `name`, by its canonical (`'static`) name.
    pub fn get(&self, name: &str) -> Option<&dyn Action> {
        self.actions.get(name).map(|action| action.as_ref())
    }

    /// Runs `name` with `with`; the attempt fails when it takes longer than `timeout`, when
    /// `cancel` fires, or when the action panics.
    pub async fn execute(
        &self,
        name: &str,
        with: &Value,
        ctx: &ActionContext,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> StepOutcome {
        let Some(action) = self.get(name) else {
            let known: Vec<&str> = self.actions.keys().copied().collect();
            return StepOutcome::Failed {
                error: format!(
                    "unknown action {name:?} (this worker runs: {})",
                    known.join(", ")
                ),
            };
        };
        let run = AssertUnwindSafe(action.run(with, ctx)).catch_unwind();
        let result = tokio::select! {
            () = cancel.cancelled() => Err("cancelled".to_owned()),
            finished = tokio::time::timeout(timeout, run) => match finished {
                Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
                Ok(Err(_panic)) => Err(format!("the {name} action panicked")),
                Ok(Ok(result)) => result,
            },
        };
        match result {
            Ok(result) => StepOutcome::Succeeded { result },
            Err(error) => StepOutcome::Failed { error },
        }
    }
}

/// Decodes an action's `with` (`null` counts as `{}`), naming the action in the error.
fn arguments<T: DeserializeOwned>(action: &str, with: &Value) -> Result<T, String> {
    match with {
        Value::Null => T::deserialize(&Value::Object(serde_json::Map::new())),
        other => T::deserialize(other),
    }
    .map_err(|e| format!("invalid arguments for {action}: {e}"))
}

/// A count given as a number or, since templates render to strings, as a string of digits.
struct Count(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number (or a string of digits)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Count, E> {
                u64::try_from(v)
                    .map(Count)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Count, E> {
                v.trim()
                    .parse()
                    .map(Count)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    Count::deserialize(deserializer).map(|count| count.0)
}

fn optional_count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    Option::<Count>::deserialize(deserializer).map(|count| count.map(|count| count.0))
}

/// Text of captured output, at most `max` bytes of it, and whether some was cut off.
fn capped_text(mut bytes: Vec<u8>, max: usize) -> (String, bool) {
    let truncated = bytes.len() > max;
    bytes.truncate(max);
    (String::from_utf8_lossy(&bytes).into_owned(), truncated)
}

/// Runs one attempt of `action` (`attempt` counts from 1) in the pool `default`, as the
/// actions' tests do.
#[cfg(test)]
async fn run_attempt(action: &dyn Action, with: Value, attempt: u32) -> ActionResult {
    let ctx = ActionContext {
        attempt,
        pool: Arc::from("default"),
    };
    action.run(&with, &ctx).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> Registry {
        Registry::builtin(false, 1024, &Egress::default(), &[]).expect("registry")
    }

    const LONG: Duration = Duration::from_secs(60);

    /// Runs `name` once, as attempt 1, never cancelled.
    async fn execute(
        registry: &Registry,
        name: &str,
        with: Value,
        timeout: Duration,
    ) -> StepOutcome {
        let ctx = ActionContext {
            attempt: 1,
            pool: Arc::from("default"),
        };
        let never = CancellationToken::new();
        registry.execute(name, &with, &ctx, timeout, &never).await
    }

    #[derive(Debug)]
    struct Panics;

    impl Action for Panics {
        fn name(&self) -> &'static str {
            "panics"
        }
        fn run<'a>(&'a self, _: &'a Value, _: &'a ActionContext) -> BoxFuture<'a, ActionResult> {
            Box::pin(async { panic!("on purpose") })
        }
    }

    #[tokio::test]
    async fn an_unknown_action_fails_the_attempt_naming_the_known_ones() {
        let outcome = execute(&registry(), "teleport", json!({}), LONG).await;
        let StepOutcome::Failed { error } = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert!(error.contains("unknown action \"teleport\""), "{error}");
        assert!(error.contains("noop"), "{error}");
    }

    #[tokio::test]
    async fn an_attempt_longer_than_its_timeout_fails() {
        let timeout = Duration::from_millis(20);
        let outcome = execute(&registry(), "sleep", json!({"ms": 60_000}), timeout).await;
        assert_eq!(
            outcome,
            StepOutcome::Failed {
                error: "timed out after 20 ms".into()
            }
        );
    }

    #[tokio::test]
    async fn sleep_honours_cancellation() {
        let registry = registry();
        let cancel = CancellationToken::new();
        let with = json!({"ms": 600_000});
        let context = ActionContext {
            attempt: 1,
            pool: Arc::from("default"),
        };
        let running = registry.execute("sleep", &with, &context, LONG, &cancel);
        cancel.cancel();
        assert_eq!(
            running.await,
            StepOutcome::Failed {
                error: "cancelled".into()
            }
        );
    }

    #[tokio::test]
    async fn a_panicking_action_fails_the_attempt() {
        let mut registry = registry();
        registry.register(Box::new(Panics));
        let outcome = execute(&registry, "panics", Value::Null, LONG).await;
        assert_eq!(
            outcome,
            StepOutcome::Failed {
                error: "the panics action panicked".into()
            }
        );
    }

    #[test]
    fn counts_may_be_numbers_or_digit_strings() {
        #[derive(Debug, Deserialize)]
        struct Args {
            #[serde(deserialize_with = "count")]
            n: u64,
            #[serde(default, deserialize_with = "optional_count")]
            m: Option<u64>,
        }
        let parsed: Args = arguments("t", &json!({"n": "12", "m": 3})).expect("valid");
        assert_eq!((parsed.n, parsed.m), (12, Some(3)));
        let parsed: Args = arguments("t", &json!({"n": 1})).expect("valid");
        assert_eq!(parsed.m, None);
        for wrong in [json!("soon"), json!(-1), json!(1.5)] {
            let error = arguments::<Args>("t", &json!({ "n": wrong })).expect_err("not a count");
            assert!(error.contains("invalid arguments for t"), "{error}");
            assert!(error.contains("a whole number"), "{error}");
        }
    }

    #[test]
    fn null_arguments_are_an_empty_object() {
        #[derive(Debug, Deserialize)]
        struct Args {
            #[serde(default)]
            n: Option<u64>,
        }
        let parsed: Args = arguments("t", &Value::Null).expect("null is {}");
        assert_eq!(parsed.n, None);
    }

    #[test]
    fn captured_text_is_capped_in_bytes() {
        assert_eq!(capped_text(b"hello".to_vec(), 3), ("hel".to_owned(), true));
        assert_eq!(capped_text(b"hi".to_vec(), 3), ("hi".to_owned(), false));
    }
}
