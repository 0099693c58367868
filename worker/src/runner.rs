//! The worker's only module that talks to NATS: pulling commands, heartbeats, reports, acks.
//!
//! Each pool pulls from its durable consumer only as many commands as it holds running slots
//! for (`concurrency` of them, shared by all pools), so no command waits in a buffer while its
//! ack deadline runs out. A step gives its running slot up once its action is over, for one of
//! the `pending_reports` slots held while its result waits for the shard: the shard's answer
//! (a batched, durable transaction, milliseconds under load) does not idle the worker, and
//! when every reporting slot is taken finished steps keep their running slots, so the worker
//! pulls no more than the shards take. A vanished or broken consumer is opened again with
//! backoff. Per command:
//!
//! 1. An undecodable payload is terminated (`+TERM`: never redelivered), logged and counted.
//! 2. A `starting` heartbeat asks the shard whether the attempt may start (it writes nothing);
//!    `stop` means "do not start" (cancelled execution, superseded attempt), and the command is
//!    acked unrun. An action without effects ([`crate::actions::Action::has_effects`]: `noop`,
//!    `fail`) skips the question, since its fenced report is all it does.
//! 3. The action runs under the command's timeout. After `FIRST_BEAT_AFTER` (one second;
//!    sooner if the interval is shorter), then every `min(lease, ack_wait) / 3`, the worker
//!    heartbeats the shard (extending the attempt's lease, marking the step running, with the
//!    action's start time) and tells JetStream it is still working (`+WPI`); a `stop` answer
//!    cancels the action and the command is acked unreported.
//! 4. The [`StepReport`](noetl_contract::command::StepReport) goes to the owning shard until
//!    the shard answers, heartbeats going on meanwhile so the attempt keeps its lease; only
//!    then is the command acked. `stale` (a newer attempt owns the step) is acked too. If the
//!    worker shuts down before the shard answered, the command is left unacked, so JetStream
//!    redelivers it.
//!
//! Pulling is here; handling one command, steps 1 to 4, is the private `step` module.
//!
//! On cancellation the pools stop pulling (commands that arrive meanwhile are handed back with
//! `-NAK`), and [`run`] returns once every step in hand has finished and reported.

mod step;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use noetl_bus::commands::{self, AckKind, PullConsumer};
use noetl_bus::Client;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actions::Registry;
use crate::configuration::WorkerConfig;

/// How long one pull waits for commands: short, so an idle pool soon gives its permits back
/// to the others, and a draining worker soon stops pulling.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How long after [`PULL_EXPIRES`] a pull waits for NATS to say it is over (its `408` status)
/// before the worker ends it and pulls again. Now and then nats-server (2.9) sends no end to an
/// expired pull of a pool with steady traffic; left to the client library, such a pull lasts
/// 5 s more (async-nats ends it at `expires` + 5 s), and every command stored for the pool
/// meanwhile waits: the hostile-input suite saw tenant B's steps start 5 s after their commands
/// were stored. An expired pull gets no more commands (where the suite's runs ended such pulls
/// here, none of B's steps waited for a redelivery), so ending it half a second late loses
/// nothing.
const PULL_END_GRACE: Duration = Duration::from_millis(500);
/// Most commands asked for in one pull.
const MAX_PULL: usize = 256;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What every pool loop and step task shares.
#[derive(Debug)]
struct Runner {
    client: Client,
    registry: Registry,
    worker: String,
    ack_wait: Duration,
    request_timeout: Duration,
    /// How long a report is sent again while its shard does not record it (`report_deadline_ms`).
    report_deadline: Duration,
    /// Slots of finished steps whose result the shard has not answered yet.
    reporting: Arc<Semaphore>,
    /// The process's shutdown: stop pulling, and stop retrying reports.
    shutdown: CancellationToken,
}

/// Serves every configured pool until `cancel`, then waits for the steps in hand.
pub async fn run(
    client: Client,
    config: &WorkerConfig,
    registry: Registry,
    cancel: CancellationToken,
) {
    let runner = Arc::new(Runner {
        client,
        registry,
        worker: config.name.clone(),
        ack_wait: config.ack_wait,
        request_timeout: config.request_timeout,
        report_deadline: config.report_deadline,
        reporting: Arc::new(Semaphore::new(config.pending_reports)),
        shutdown: cancel,
    });
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let per_pull = (config.concurrency / config.pools.len()).clamp(1, MAX_PULL);
    let steps = TaskTracker::new();
    let pools = config.pools.iter().map(|pool| {
        serve_pool(
            runner.clone(),
            Arc::from(pool.as_str()),
            permits.clone(),
            per_pull,
            steps.clone(),
        )
    });
    futures::future::join_all(pools).await;
    steps.close();
    if !steps.is_empty() {
        tracing::info!(
            steps = steps.len(),
            "waiting for the steps in hand to finish"
        );
    }
    steps.wait().await;
}

/// Opens the pool's consumer and pulls from it; opens it again whenever it breaks.
async fn serve_pool(
    runner: Arc<Runner>,
    pool: Arc<str>,
    permits: Arc<Semaphore>,
    per_pull: usize,
    steps: TaskTracker,
) {
    let cancel = runner.shutdown.clone();
    let mut backoff = Backoff::new();
    while !cancel.is_cancelled() {
        let opened = tokio::select! {
            () = cancel.cancelled() => return,
            opened = commands::pool_consumer(&runner.client, &pool, runner.ack_wait) => opened,
        };
        let consumer = match opened {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::warn!(%pool, %error, "cannot open the pool's consumer; retrying");
                backoff.wait(&cancel).await;
                continue;
            }
        };
        tracing::info!(%pool, "consuming commands");
        loop {
            let pulled = pull(&runner, &pool, &consumer, &permits, per_pull, &steps).await;
            match pulled {
                Ok(Pulled::More) => backoff.reset(),
                Ok(Pulled::Cancelled) => return,
                Err(error) => {
                    tracing::warn!(%pool, %error, "lost the pool's consumer; opening it again");
                    metrics::counter!("noetl_worker_consumer_restarts_total", "pool" => pool.to_string())
                        .increment(1);
                    backoff.wait(&cancel).await;
                    break;
                }
            }
        }
    }
}

enum Pulled {
    More,
    Cancelled,
}

/// One pull: takes free permits (waiting for one), asks for that many commands, and starts a
/// step task for each that arrives.
async fn pull(
    runner: &Arc<Runner>,
    pool: &Arc<str>,
    consumer: &PullConsumer,
    permits: &Arc<Semaphore>,
    per_pull: usize,
    steps: &TaskTracker,
) -> Result<Pulled, noetl_bus::Error> {
    let cancel = &runner.shutdown;
    let first = tokio::select! {
        () = cancel.cancelled() => return Ok(Pulled::Cancelled),
        permit = permits.clone().acquire_owned() => permit,
    };
    let Ok(first) = first else {
        return Ok(Pulled::Cancelled);
    };
    let mut held = vec![first];
    while held.len() < per_pull {
        match permits.clone().try_acquire_owned() {
            Ok(permit) => held.push(permit),
            Err(_) => break,
        }
    }
    let batch = commands::pull(consumer, held.len(), PULL_EXPIRES).await?;
    tokio::pin!(batch);
    let over = tokio::time::sleep(PULL_EXPIRES + PULL_END_GRACE);
    tokio::pin!(over);
    let mut draining = false;
    loop {
        let next = tokio::select! {
            () = cancel.cancelled(), if !draining => {
                draining = true;
                continue;
            }
            () = &mut over => {
                tracing::warn!(%pool, "the pull's end never came from NATS; pulling again");
                metrics::counter!("noetl_worker_pulls_unended_total", "pool" => pool.to_string())
                    .increment(1);
                None
            }
            next = batch.next() => next,
        };
        let delivery = match next {
            None if draining => return Ok(Pulled::Cancelled),
            None => return Ok(Pulled::More),
            Some(Err(error)) => return Err(error),
            Some(Ok(delivery)) => delivery,
        };
        match held.pop() {
            Some(permit) if !draining => {
                let step = step::handle(runner.clone(), pool.clone(), delivery, permit);
                steps.spawn(step);
            }
            _ => {
                // Arrived as shutdown began (or beyond what was asked for): hand it straight
                // back for another worker rather than let it wait out its ack deadline.
                if let Err(error) = delivery.ack_with(AckKind::Nak(None)).await {
                    tracing::debug!(%pool, %error, "could not hand a command back");
                }
            }
        }
    }
}

/// Exponential delay between retries, from [`BACKOFF_START`] up to [`BACKOFF_MAX`].
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: BACKOFF_START,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_START;
    }

    /// Waits the current delay and doubles it; `false` when `cancel` fired first.
    async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backoff_doubles_up_to_its_cap_and_stops_on_cancel() {
        let mut backoff = Backoff::new();
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(!backoff.wait(&cancel).await);
        assert_eq!(backoff.next, BACKOFF_START * 2);
        for _ in 0..10 {
            backoff.wait(&cancel).await;
        }
        assert_eq!(backoff.next, BACKOFF_MAX);
        backoff.reset();
        assert_eq!(backoff.next, BACKOFF_START);
    }
}
