//! Performs the engine's decisions: the "do" half of decide-then-do.
//!
//! Every change to an execution happens in one transaction that holds the execution's row lock:
//! read the state, [`engine::decide`], write the changed steps, the new events and the commands
//! (into the outbox), commit, then hand the commands to the relay. Several replicas of one shard
//! stay correct because they take turns on the lock.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use noetl_contract::command::StepCommand;
use noetl_contract::engine::{Decision, Event};
use noetl_contract::status::{ExecutionStatus, StepStatus};
use noetl_contract::step::{Attempt, AttemptToken, StepIndex};
use noetl_contract::{ExecutionId, ShardId};
use sqlx::{Connection as _, PgPool, Postgres, Transaction};
use tokio_util::task::TaskTracker;

use crate::batch::Batcher;
use crate::persistence::{self, Beat, BeatAnswer, Held, Pools};
use crate::relay::{self, Handoff, Relay};
use crate::render::{self, Rendering};

mod children;
mod guard;
mod loops;
mod prepare;
mod results;
mod rows;

pub use children::Children;
use guard::{Checked, Guard};
pub use results::ExecutionLimits;
use rows::{millis, new_tokens, Working};

/// How long attempts may stay silent before they are presumed lost.
#[derive(Debug, Clone, Copy)]
pub struct Leases {
    /// A running attempt must heartbeat within this.
    pub step_lease_ms: u64,
    /// A dispatched attempt no worker has started yet (the command may be queued behind
    /// others) is presumed lost after this.
    pub dispatch_lease_ms: u64,
    /// Upper bound on an attempt when its step sets no `timeout`.
    pub default_timeout_ms: u64,
    /// Upper bound on every attempt (`max_step_timeout_ms`), whatever its step's `timeout`.
    pub max_timeout_ms: u64,
}

/// Where and how report batches run.
#[derive(Debug, Clone, Copy)]
pub struct Batching<'a> {
    pub tracker: &'a TaskTracker,
    pub max_batch: usize,
    pub parallel: usize,
}

/// The outcome of applying an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    NotFound,
    /// Nothing changed: a stale or duplicate event.
    Stale(ExecutionStatus),
    /// Nothing changed: the report names the attempt that owns its step but not its token.
    Refused,
    Changed(ExecutionStatus),
}

/// Orchestration of one shard.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
    /// Worker reports, with the token each carried, applied many per transaction.
    reports: Batcher<Report, Option<Applied>>,
    /// Heartbeats (lease extensions and starting checks), many per statement.
    beats: Batcher<Beat, Owned>,
}

/// A worker's report: the execution, its `Finished` event, the token it carried, and the child
/// it comes from when it is a child's return.
type Report = (
    ExecutionId,
    Event,
    Option<AttemptToken>,
    Option<ExecutionId>,
);

/// A heartbeat's answer from the database.
type Owned = Result<BeatAnswer, persistence::Error>;

/// Concurrent heartbeat batches per shard (each holds one connection of the relaxed pool): one,
/// as one committer, so a moderate load makes fewer, larger batches.
const BEAT_BATCHES: usize = 1;

#[derive(Debug)]
struct Inner {
    shard: ShardId,
    pool: PgPool,
    /// Commits without waiting for the WAL flush: heartbeats only.
    relaxed: PgPool,
    leases: Leases,
    /// What rendering a step's `with` may cost.
    rendering: Rendering,
    /// What one execution may hold, and whether finished executions are counted per tenant.
    limits: ExecutionLimits,
    /// Told after every commit that queued commands.
    relay: Relay,
    /// Mints the ids of the children it starts (one for every shard of the process).
    children: Arc<Children>,
}

/// What one applied event led to, for the caller to act on after the commit.
struct Outcome {
    applied: Applied,
    finished: Option<ExecutionStatus>,
}

impl Outcome {
    fn unchanged(applied: Applied) -> Self {
        Self {
            applied,
            finished: None,
        }
    }
}

/// What a transaction's events led to: one outcome per event, and the commands it queued, for
/// the relay once it commits.
struct Applying {
    outcomes: Vec<Outcome>,
    handoffs: Vec<Handoff>,
    due_now: bool,
}

impl Orchestrator {
    /// An orchestrator whose report batches run as described by `batching`, within `limits`,
    /// starting children with the ids `children` mints.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shard: ShardId,
        pools: Pools,
        leases: Leases,
        rendering: Rendering,
        limits: ExecutionLimits,
        relay: Relay,
        children: Arc<Children>,
        batching: Batching<'_>,
    ) -> Self {
        let Pools {
            pool,
            relaxed,
            reports: report_pool,
        } = pools;
        let beat_pool = relaxed.clone();
        let inner = Arc::new(Inner {
            shard,
            pool,
            relaxed,
            leases,
            rendering,
            limits,
            relay,
            children,
        });
        let reports = Inner::batches(
            &inner,
            report_pool,
            batching.parallel,
            &batching,
            Inner::apply_batch,
        );
        let beats = Inner::batches(
            &inner,
            beat_pool,
            BEAT_BATCHES,
            &batching,
            Inner::beat_batch,
        );
        Self {
            inner,
            reports,
            beats,
        }
    }

    pub fn shard(&self) -> ShardId {
        self.inner.shard
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn leases(&self) -> Leases {
        self.inner.leases
    }

    /// Applies `event` to execution `id` in a transaction of its own.
    pub async fn apply(
        &self,
        id: ExecutionId,
        event: Event,
    ) -> Result<Applied, persistence::Error> {
        self.inner.apply(id, event, Guard::None).await
    }

    /// Expires an attempt's lease (of a step, or of its loop `item`), unless a heartbeat
    /// extended it since it was found expired.
    pub async fn expire(
        &self,
        id: ExecutionId,
        step: StepIndex,
        attempt: Attempt,
        item: Option<u32>,
    ) -> Result<Applied, persistence::Error> {
        let event = of_item(item, Event::LeaseExpired { step, attempt });
        let guard = Guard::LeaseExpired {
            step,
            attempt,
            item,
        };
        self.inner.apply(id, event, guard).await
    }

    /// Fails the step of a command too large to publish and moves its outbox row to the dead
    /// letters, in one transaction; stale when the row or the attempt is gone.
    pub async fn dead_letter(
        &self,
        command: &StepCommand,
        undeliverable: persistence::Undeliverable,
    ) -> Result<Applied, persistence::Error> {
        let (step, attempt, error) = (command.step_index, command.attempt, undeliverable.reason());
        let event = of_item(
            command.item,
            Event::Undeliverable {
                step,
                attempt,
                error,
            },
        );
        let guard = Guard::DeadLetter(undeliverable);
        self.inner.apply(command.execution_id, event, guard).await
    }

    /// Applies a worker's report, batched with others into one transaction; `None` when the
    /// database failed (the worker retries). A report for the attempt that owns its step is
    /// [`Applied::Refused`] unless `token` is that attempt's ([`AttemptToken::admits`]).
    pub async fn report(
        &self,
        id: ExecutionId,
        event: Event,
        token: Option<AttemptToken>,
    ) -> Option<Applied> {
        self.reports
            .submit((id, event, token, None))
            .await
            .flatten()
    }

    /// [`Orchestrator::report`] for a child's return: from `child`, which must be the child the
    /// attempt started.
    pub async fn child_returned(
        &self,
        id: ExecutionId,
        event: Event,
        token: Option<AttemptToken>,
        child: ExecutionId,
    ) -> Option<Applied> {
        self.reports
            .submit((id, event, token, Some(child)))
            .await
            .flatten()
    }

    /// A heartbeat. A `starting` check only reads whether the attempt still owns its step;
    /// any other beat extends the attempt's lease, records when it started, and marks a
    /// still-`dispatched` step running. [`BeatAnswer::Lost`] when the attempt no longer owns
    /// its step, [`BeatAnswer::Refused`] when the beat lacks its token (the worker must stop,
    /// or not start; nothing was written).
    ///
    /// Heartbeats write through the relaxed pool, whose commits do not wait for the WAL flush:
    /// one lost in a crash only lets the lease run out, which is the crash's consequence anyway,
    /// and a lost `step_started` loses its sequence number with it, so the log stays gapless.
    /// A step that ends before its first beat after the check gets `step_started` with its
    /// result, and its `started_at` from the report.
    pub async fn heartbeat(&self, beat: Beat) -> Result<BeatAnswer, persistence::Error> {
        let inner = &self.inner;
        let (id, step, attempt, item) = (beat.execution_id, beat.step, beat.attempt, beat.item);
        let owned =
            self.beats
                .submit(beat)
                .await
                .unwrap_or(Err(persistence::Error::Unavailable(
                    "the shard is shutting down",
                )))?;
        match owned {
            BeatAnswer::Owns(StepStatus::Dispatched) if !beat.starting => {
                let started = of_item(item, Event::Started { step, attempt });
                let mut tx = inner.relaxed.begin().await?;
                let applying = inner
                    .apply_in(&mut tx, &[(id, started, Guard::None)])
                    .await?;
                tx.commit().await?;
                Ok(BeatAnswer::Owns(
                    match inner.after_commit(applying)[0].applied {
                        Applied::Changed(_) => StepStatus::Running,
                        // Another heartbeat got there first, or the report did; the next
                        // heartbeat or the report itself settles it.
                        _ => StepStatus::Dispatched,
                    },
                ))
            }
            owned => Ok(owned),
        }
    }
}

impl Inner {
    /// Batches of `T` for `handle`, on `parallel` tasks that each keep a connection of `pool`.
    fn batches<T, R, F, Fut>(
        inner: &Arc<Self>,
        pool: PgPool,
        parallel: usize,
        batching: &Batching<'_>,
        handle: F,
    ) -> Batcher<T, R>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(Arc<Self>, Held, Vec<T>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = (Held, Vec<R>)> + Send,
    {
        let inner = inner.clone();
        Batcher::spawn(
            batching.max_batch,
            parallel,
            batching.tracker,
            move || Held::new(pool.clone()),
            move |held, items| handle(inner.clone(), held, items),
        )
    }

    async fn apply(
        &self,
        id: ExecutionId,
        event: Event,
        guard: Guard,
    ) -> Result<Applied, persistence::Error> {
        let mut tx = persistence::begin_generic(&self.pool).await?;
        let applying = self.apply_in(&mut tx, &[(id, event, guard)]).await?;
        tx.commit().await?;
        Ok(self.after_commit(applying)[0].applied)
    }

    /// Handles many heartbeats in one statement; if that fails, each on its own, so one bad
    /// beat cannot hold back the others.
    async fn beat_batch(self: Arc<Self>, mut held: Held, beats: Vec<Beat>) -> (Held, Vec<Owned>) {
        let lease_ms = millis(self.leases.step_lease_ms);
        let batched =
            async { persistence::beat_attempts(held.connection().await?, &beats, lease_ms).await }
                .await;
        let owned = match held.checked(batched) {
            Ok(owned) => owned.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::warn!(shard = %self.shard, error = %e, beats = beats.len(), "heartbeat batch failed; writing one by one");
                let mut owned = Vec::with_capacity(beats.len());
                for beat in beats {
                    let one = async {
                        let mut connection = self.relaxed.acquire().await?;
                        persistence::beat_attempts(&mut connection, &[beat], lease_ms).await
                    }
                    .await;
                    owned.push(one.map(|mut t| t.pop().unwrap_or(BeatAnswer::Lost)));
                }
                owned
            }
        };
        (held, owned)
    }

    /// Applies many reports in one transaction (one statement to lock and read, one to write).
    /// If the batch fails, each report is retried on its own, so one bad report cannot hold
    /// back the others.
    async fn apply_batch(
        self: Arc<Self>,
        mut held: Held,
        items: Vec<Report>,
    ) -> (Held, Vec<Option<Applied>>) {
        metrics::histogram!("noetl_server_report_batch_size", "shard" => self.shard.to_string())
            .record(items.len() as f64);
        let guarded: Vec<_> = items
            .iter()
            .map(|(id, event, token, child)| {
                (*id, event.clone(), Guard::report(event, *token, *child))
            })
            .collect();
        let batched = async {
            let mut tx = held.connection().await?.begin().await?;
            let applying = self.apply_in(&mut tx, &guarded).await?;
            tx.commit().await?;
            Ok::<_, persistence::Error>(applying)
        };
        let batched = batched.await;
        let applied = match held.checked(batched) {
            Ok(applying) => self
                .after_commit(applying)
                .into_iter()
                .map(|o| Some(o.applied))
                .collect(),
            Err(e) => {
                tracing::warn!(shard = %self.shard, error = %e, reports = items.len(), "report batch failed; applying one by one");
                let mut applied = Vec::with_capacity(items.len());
                for (id, event, token, child) in items {
                    let guard = Guard::report(&event, token, child);
                    match self.apply(id, event, guard).await {
                        Ok(a) => applied.push(Some(a)),
                        Err(e) => {
                            tracing::error!(shard = %self.shard, execution_id = %id, error = %e, "applying a report failed");
                            applied.push(None);
                        }
                    }
                }
                applied
            }
        };
        (held, applied)
    }

    /// Applies each event, in order, to its execution under the execution's row lock, inside
    /// `tx`: locks and reads every execution named in one statement, decides in memory (events
    /// of one execution apply one after the other to its state), writes every change in one
    /// statement. One outcome per item.
    async fn apply_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        items: &[(ExecutionId, Event, Guard)],
    ) -> Result<Applying, persistence::Error> {
        let mut ids: Vec<ExecutionId> = items.iter().map(|(id, _, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut working = BTreeMap::new();
        for locked in persistence::lock_executions(tx, &ids).await? {
            let id = locked.execution_id;
            let work = Working::new(
                locked,
                self.rendering.budget,
                self.limits.max_loop_items,
                self.children.max_depth,
            )?;
            working.insert(id, work);
        }
        loops::load(tx, &mut working, items).await?;
        let mut outcomes = Vec::with_capacity(items.len());
        for (id, event, guard) in items {
            let Some(work) = working.get_mut(id) else {
                outcomes.push(Outcome::unchanged(Applied::NotFound));
                continue;
            };
            match guard.check(tx, *id, work).await? {
                Checked::Holds => {}
                Checked::Refused => {
                    outcomes.push(Outcome::unchanged(Applied::Refused));
                    continue;
                }
                Checked::Stale => {
                    outcomes.push(Outcome::unchanged(Applied::Stale(work.state.status)));
                    continue;
                }
            }
            // A report brings its attempt's start, for a step no heartbeat recorded as started.
            let reported_start = match event {
                Event::Finished {
                    step,
                    started_at_ms,
                    ..
                } => Some((*step, *started_at_ms)),
                _ => None,
            };
            // The steps whose child runs, to cancel with their execution.
            let running = match event {
                Event::Cancel => noetl_contract::engine::children::in_flight(&work.state),
                _ => Vec::new(),
            };
            let mut event = event.clone();
            let charge = results::charge(
                &mut event,
                work.results_bytes,
                self.limits.results_max_bytes,
            );
            let decision = render::decide(&mut work.state, event, &self.rendering).await;
            if !decision.applied {
                outcomes.push(Outcome::unchanged(Applied::Stale(work.state.status)));
                continue;
            }
            work.results_bytes = work.results_bytes.saturating_add(charge.bytes);
            if charge.capped {
                tracing::info!(shard = %self.shard, execution_id = %id, "a result over execution_results_max_bytes fails its step");
                metrics::counter!("noetl_server_results_too_large_total", "shard" => self.shard.to_string(), "limit" => results::LIMIT)
                    .increment(1);
            }
            let mut finished = decision.finished;
            let mut collect = decision.collect.clone();
            self.absorb(tx, *id, work, &decision, &running, reported_start)
                .await?;
            // Loops whose items all ended: their result, assembled once, succeeds them.
            while let Some(step) = collect.pop() {
                let result = loops::result(tx, *id, work, &self.leases, step).await?;
                let event = Event::LoopCollected { step, result };
                let decision = render::decide(&mut work.state, event, &self.rendering).await;
                finished = finished.or(decision.finished);
                collect.extend(decision.collect.iter().copied());
                self.absorb(tx, *id, work, &decision, &[], None).await?;
            }
            outcomes.push(Outcome {
                applied: Applied::Changed(work.state.status),
                finished,
            });
        }
        let mut loop_changes = Vec::new();
        for (id, work) in &mut working {
            loop_changes.push(work.take_loops(*id, &self.leases));
        }
        let changes: Vec<persistence::ExecutionChange> = working
            .into_iter()
            .filter(|(_, work)| work.changed)
            .map(|(id, work)| work.into_change(id, self.limits.tenant_quota))
            .collect();
        let outbox_ids = persistence::save_changes(tx, &changes).await?;
        for change in &loop_changes {
            persistence::save_loops(tx, change).await?;
        }
        let (handoffs, due_now) = relay::handoffs(
            changes.into_iter().map(|c| (c.execution_id, c.outbox)),
            outbox_ids.into_iter().collect(),
        );
        Ok(Applying {
            outcomes,
            handoffs,
            due_now,
        })
    }

    /// Takes what `decision` changed into `work` (execution `id`), with the messages of the
    /// child protocol it makes (`running`: the steps whose child ran before a cancel).
    async fn absorb(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        id: ExecutionId,
        work: &mut Working,
        decision: &Decision,
        running: &[StepIndex],
        reported_start: Option<(StepIndex, i64)>,
    ) -> Result<(), persistence::Error> {
        let tokens = new_tokens(decision);
        let messages = self
            .children
            .messages(tx, work, id, decision, &tokens, running)
            .await?;
        work.absorb(
            (id, self.shard),
            &self.leases,
            decision,
            &tokens,
            reported_start,
            &self.rendering.secret_headers,
        );
        work.outbox.extend(messages);
        Ok(())
    }

    /// Hands the committed commands to the relay; returns the outcomes.
    fn after_commit(&self, applying: Applying) -> Vec<Outcome> {
        let Applying {
            outcomes,
            handoffs,
            due_now,
        } = applying;
        self.relay.committed(handoffs, due_now);
        for status in outcomes.iter().filter_map(|o| o.finished) {
            metrics::counter!("noetl_server_executions_finished_total", "shard" => self.shard.to_string(), "status" => status.as_str())
                .increment(1);
        }
        outcomes
    }
}

/// `event` as an event of loop `item`, when it names one.
fn of_item(item: Option<u32>, event: Event) -> Event {
    match item {
        Some(item) => Event::Item {
            item,
            event: Box::new(event),
        },
        None => event,
    }
}
