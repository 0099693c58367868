//! Applying events under the execution's row lock, relaying what it queued, and reading back
//! what it wrote, against a real PostgreSQL.

use futures::StreamExt;

use noetl_contract::command::{StepCommand, StepOutcome};
use noetl_contract::engine::Event;
use noetl_contract::message::SubmitCommand;
use noetl_contract::shards::ShardMap;
use noetl_contract::status::StepStatus;
use noetl_contract::step::{Attempt, AttemptToken, StepIndex};
use noetl_contract::{ExecutionId, ShardId};
use noetl_server::orchestrate::{Applied, Batching, ExecutionLimits, Leases, Orchestrator};
use noetl_server::persistence::{self, Beat, BeatAnswer, Pools};
use noetl_server::relay::Relay;
use noetl_server::render::Rendering;
use noetl_test_support::{NatsServer, Postgres};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[path = "orchestrate/relay.rs"]
mod relaying;

/// A shard's orchestrator on a fresh database on a PostgreSQL of its own, with the tasks of its
/// batches.
struct Shard {
    tracker: TaskTracker,
    orchestrator: Orchestrator,
    pools: Pools,
    /// `pools.pool`.
    pool: PgPool,
    _postgres: Postgres,
}

impl Shard {
    /// With no relay running.
    async fn start(database: &str) -> Self {
        Self::with_relay(database, Relay::new(ShardId::new(0)).0).await
    }

    async fn with_relay(database: &str, relay: Relay) -> Self {
        let postgres = Postgres::start();
        let pools = shard_pools(&postgres, database).await;
        let tracker = TaskTracker::new();
        let pool = pools.pool.clone();
        let orchestrator = Orchestrator::new(
            ShardId::new(0),
            pools.clone(),
            Leases {
                step_lease_ms: 30_000,
                dispatch_lease_ms: 300_000,
                default_timeout_ms: 60_000,
                max_timeout_ms: 86_400_000,
            },
            Rendering::default(),
            ExecutionLimits {
                results_max_bytes: 512 * 1024,
                tenant_quota: false,
            },
            relay,
            std::sync::Arc::new(noetl_server::orchestrate::Children::new(
                noetl_bus::nodes::NodeLease::default(),
                4,
            )),
            Batching {
                tracker: &tracker,
                max_batch: 100,
                parallel: 2,
            },
        );
        Self {
            tracker,
            orchestrator,
            pools,
            pool,
            _postgres: postgres,
        }
    }

    /// Commits executions `ids` of `playbook` as a committer does, without handing their
    /// commands to a relay.
    async fn insert(&self, ids: impl IntoIterator<Item = i64>, playbook: &serde_json::Value) {
        let mut rows = Vec::new();
        for id in ids {
            let submit = submit(id, playbook.clone());
            rows.push(self.orchestrator.prepare(&submit).await.expect("prepared"));
        }
        let mut connection = self.pool.acquire().await.expect("connection");
        persistence::insert_executions(&mut connection, &rows, None)
            .await
            .expect("insert");
    }

    /// Stops the batch tasks once the orchestrator is gone.
    async fn stop(self) {
        drop(self.orchestrator);
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_queued_behind_the_lock_see_what_it_committed() {
    let shard = Shard::start("orchestrate").await;
    let (orchestrator, pool) = (&shard.orchestrator, &shard.pool);
    let id = ExecutionId::new(4_242).expect("valid id");
    shard.insert([id.get()], &one_step()).await;

    // Hold the execution's lock while copies of the report queue behind it, as they do when a
    // worker's retried report meets the original; then finish the step in the holding
    // transaction. The queued copies must see that and record nothing.
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM executions WHERE execution_id = $1 FOR UPDATE")
        .bind(id.get())
        .execute(&mut *holder)
        .await
        .expect("lock");
    let finished = || succeeded(0, serde_json::json!({"n": 1}), 1);
    let token = token(pool, id, 0).await;
    let queued = tokio::spawn({
        let orchestrator = orchestrator.clone();
        async move {
            let alone = (0..4).map(|_| orchestrator.apply(id, finished()));
            let batched = (0..4).map(|_| orchestrator.report(id, finished(), token));
            let (alone, batched) = tokio::join!(
                futures::future::join_all(alone),
                futures::future::join_all(batched)
            );
            alone
                .into_iter()
                .map(|a| a.expect("apply"))
                .chain(batched.into_iter().map(|a| a.expect("report")))
                .collect::<Vec<_>>()
        }
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .expect("pg_stat_activity");
        // Four separate transactions, and at least one report batch.
        if waiting >= 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copies never queued ({waiting} waiting)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    sqlx::query(
        "UPDATE execution_steps SET status = 'succeeded', result = '{\"n\": 1}'
         WHERE execution_id = $1 AND step_index = 0",
    )
    .bind(id.get())
    .execute(&mut *holder)
    .await
    .expect("finish the step");
    holder.commit().await.expect("commit");

    let outcomes = queued.await.expect("queued applies");
    assert!(
        outcomes.iter().all(|a| !matches!(a, Applied::Changed(_))),
        "a queued copy recorded the result again: {outcomes:?}"
    );
    let results: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM execution_events WHERE execution_id = $1 AND kind = 'step_succeeded'",
    )
    .bind(id.get())
    .fetch_one(pool)
    .await
    .expect("count");
    assert_eq!(results, 0, "nothing recorded behind the holder's back");
    shard.stop().await;
}

/// The pools of a fresh, migrated shard database.
async fn shard_pools(pg: &Postgres, database: &str) -> Pools {
    pg.create_database(database);
    let map = ShardMap::parse(&pg.url(database)).expect("valid DSN");
    let dsn = map.get(ShardId::new(0)).expect("one shard");
    let pool = persistence::pool(dsn, 16).expect("pool");
    persistence::migrate(&pool).await.expect("migrate");
    Pools {
        pool,
        relaxed: persistence::relaxed_pool(dsn, 4).expect("pool"),
        reports: persistence::generic_pool(dsn, 2).expect("pool"),
    }
}

/// The token of the attempt that owns step `step` of `id`, as the shard stored it and sent it
/// in the command (a worker reports with it).
async fn token(pool: &PgPool, id: ExecutionId, step: u32) -> Option<AttemptToken> {
    let stored: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT attempt_token FROM execution_steps WHERE execution_id = $1 AND step_index = $2",
    )
    .bind(id.get())
    .bind(step as i32)
    .fetch_one(pool)
    .await
    .expect("the step's row");
    stored.map(|bytes| AttemptToken::from_slice(&bytes).expect("16 bytes"))
}

/// A playbook of one step.
fn one_step() -> serde_json::Value {
    serde_json::json!({"name": "one", "steps": [{"name": "a", "action": "noop"}]})
}

/// A worker's report that the first attempt of `step` succeeded with `result`.
fn succeeded(step: u32, result: serde_json::Value, started_at_ms: i64) -> Event {
    Event::Finished {
        step: StepIndex::new(step),
        attempt: Attempt::FIRST,
        outcome: StepOutcome::Succeeded { result },
        started_at_ms,
    }
}

/// Runs one statement, as an operator (or a bug) would change a row.
async fn execute(pool: &PgPool, statement: &str) {
    sqlx::query(statement)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

fn submit(id: i64, playbook: serde_json::Value) -> SubmitCommand {
    serde_json::from_value(serde_json::json!({
        "execution_id": ExecutionId::new(id).expect("valid id"),
        "playbook": playbook,
        "input": {},
        "labels": {}
    }))
    .expect("valid command")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_many_executions_applied_together_advance_each_once() {
    let shard = Shard::start("batched").await;
    let (orchestrator, pool) = (&shard.orchestrator, &shard.pool);
    // Two parallel steps joined by a third: each execution gets two reports at once, and its
    // join must be dispatched exactly once whichever order they apply in.
    let playbook = serde_json::json!({"name": "join", "steps": [
        {"name": "a", "action": "noop"},
        {"name": "b", "action": "noop"},
        {"name": "c", "action": "noop", "needs": ["a", "b"]}
    ]});
    let ids: Vec<i64> = (1..=20).map(|i| 10_000 + i).collect();
    shard.insert(ids.clone(), &playbook).await;
    let finished = |step| succeeded(step, serde_json::json!({"step": step}), 1);
    let mut tokens = std::collections::HashMap::new();
    for &id in &ids {
        let id = ExecutionId::new(id).expect("valid id");
        for step in [0, 1] {
            tokens.insert((id, step), token(pool, id, step).await);
        }
    }
    let reports = ids.iter().flat_map(|&id| {
        let id = ExecutionId::new(id).expect("valid id");
        // Each report twice, as a worker retrying an unanswered report sends it.
        [0, 1, 0, 1].map(|step| orchestrator.report(id, finished(step), tokens[&(id, step)]))
    });
    let applied = futures::future::join_all(reports).await;
    let changed = applied
        .iter()
        .filter(|a| matches!(a, Some(Applied::Changed(_))))
        .count();
    assert_eq!(
        changed,
        2 * ids.len(),
        "each result recorded once: {applied:?}"
    );
    assert!(applied.iter().all(Option::is_some), "{applied:?}");

    for &id in &ids {
        let kinds: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, kind FROM execution_events WHERE execution_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(pool)
        .await
        .expect("events");
        let seqs: Vec<i64> = kinds.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "gapless log of {id}"
        );
        let count = |kind: &str| kinds.iter().filter(|(_, k)| k == kind).count();
        assert_eq!(count("step_succeeded"), 2, "{id}: {kinds:?}");
        assert_eq!(
            count("step_dispatched"),
            3,
            "a, b, then c once: {id}: {kinds:?}"
        );
        let (status, last_seq): (String, i64) =
            sqlx::query_as("SELECT status, last_event_seq FROM executions WHERE execution_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .expect("execution");
        assert_eq!(status, "running", "{id} waits for c");
        assert_eq!(last_seq, seqs.len() as i64, "{id}");
        let c: (String, i32) = sqlx::query_as(
            "SELECT status, attempt FROM execution_steps WHERE execution_id = $1 AND step_index = 2",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("step c");
        assert_eq!(c, ("dispatched".to_owned(), 1), "{id}");
    }
    let commands: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await
        .expect("outbox");
    assert_eq!(
        commands,
        3 * ids.len() as i64,
        "a and b at submit, c once per execution"
    );
    shard.stop().await;
}

/// Starting checks, beats and reports of many steps, batched together: a check answers
/// without writing (the dispatch lease stands, no `started_at`), a beat marks its step running
/// from the worker's start, a report of a step that was never beaten records that start, and
/// an attempt that does not own its step is told to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_written_together_keep_their_own_answers() {
    let shard = Shard::start("beats").await;
    let (orchestrator, pool) = (&shard.orchestrator, &shard.pool);
    let ids: Vec<ExecutionId> = (1..=30)
        .map(|i| ExecutionId::new(20_000 + i).expect("valid id"))
        .collect();
    shard
        .insert(ids.iter().map(|id| id.get()), &one_step())
        .await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    // Started a minute ago by the worker's clock; a clock a minute ahead is clamped to now.
    let started_ms = now_ms - 60_000;
    let mut tokens = std::collections::HashMap::new();
    for &id in &ids {
        tokens.insert(id, token(pool, id, 0).await);
    }
    let beat = |id, attempt, starting, started_at_ms| {
        orchestrator.heartbeat(Beat {
            execution_id: id,
            step: StepIndex::new(0),
            attempt: Attempt::new(attempt),
            starting,
            started_at_ms,
            token: tokens[&id],
        })
    };
    let (checks, beats, ahead, reports) = tokio::join!(
        // Attempt 1 owns each step; attempt 2 does not exist.
        futures::future::join_all(
            ids[..10]
                .iter()
                .flat_map(|&id| [beat(id, 1, true, None), beat(id, 2, true, None)])
        ),
        futures::future::join_all(ids[10..15].iter().flat_map(|&id| {
            [
                beat(id, 1, false, Some(started_ms)),
                beat(id, 2, false, Some(started_ms)),
            ]
        })),
        futures::future::join_all(ids[15..20].iter().map(|&id| beat(
            id,
            1,
            false,
            Some(now_ms + 60_000)
        ))),
        futures::future::join_all(ids[20..].iter().map(|&id| {
            orchestrator.report(
                id,
                succeeded(0, serde_json::json!({}), started_ms),
                tokens[&id],
            )
        })),
    );
    for answers in [&checks, &beats] {
        for (i, answer) in answers.iter().enumerate() {
            let answer = answer.as_ref().expect("heartbeat handled");
            if i % 2 == 1 {
                assert_eq!(
                    *answer,
                    BeatAnswer::Lost,
                    "an attempt that does not own its step"
                );
            } else {
                assert!(
                    matches!(answer, BeatAnswer::Owns(_)),
                    "beat {i}: {answer:?}"
                );
            }
        }
    }
    for answer in &ahead {
        assert_eq!(
            *answer.as_ref().expect("heartbeat handled"),
            BeatAnswer::Owns(StepStatus::Running)
        );
    }
    for answer in &reports {
        assert!(matches!(answer, Some(Applied::Changed(_))), "{answer:?}");
    }

    // Per step: status, seconds from started_at to now, seconds of lease left, events.
    type Seen = (i64, String, Option<f64>, Option<f64>, Vec<String>);
    let steps: Vec<Seen> = sqlx::query_as(
        "SELECT s.execution_id, s.status,
                EXTRACT(EPOCH FROM now() - s.started_at)::float8,
                EXTRACT(EPOCH FROM s.lease_expires_at - now())::float8,
                (SELECT array_agg(kind ORDER BY seq) FROM execution_events e
                 WHERE e.execution_id = s.execution_id)
         FROM execution_steps s ORDER BY s.execution_id",
    )
    .fetch_all(pool)
    .await
    .expect("steps");
    assert_eq!(steps.len(), ids.len());
    for (i, (id, status, since_start, lease_left, events)) in steps.into_iter().enumerate() {
        let started = events.contains(&"step_started".to_owned());
        match i {
            0..10 => {
                assert_eq!(status, "dispatched", "{id}: a check writes nothing");
                assert_eq!(since_start, None, "{id}");
                assert!(lease_left > Some(200.0), "{id}: {lease_left:?}");
                assert!(!started, "{id}: {events:?}");
            }
            10..20 => {
                assert_eq!(status, "running", "{id}");
                assert!(
                    lease_left < Some(60.0),
                    "{id}: the step lease, {lease_left:?}"
                );
                assert!(started, "{id}: {events:?}");
                let since_start = since_start.expect("started_at");
                if i < 15 {
                    assert!(
                        since_start >= 59.0,
                        "{id}: the worker's start, {since_start}"
                    );
                } else {
                    assert!(since_start >= 0.0, "{id}: not in the future, {since_start}");
                }
            }
            _ => {
                assert_eq!(status, "succeeded", "{id}");
                assert_eq!(lease_left, None, "{id}");
                let since_start = since_start.expect("started_at from the report");
                assert!(since_start >= 59.0, "{id}: {since_start}");
                assert!(started, "{id}: {events:?}");
            }
        }
    }
    shard.stop().await;
}

/// A step index or an attempt the types cannot hold (negative: the schema's checks forbid it,
/// so they are dropped here first, as a bug or a hand edit could leave such a row) is reported
/// as a malformed row by every read of it, never taken for 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_step_index_or_attempt_is_a_malformed_row() {
    let shard = Shard::start("malformed").await;
    let pool = &shard.pool;
    let id = ExecutionId::new(50_001).expect("valid id");
    shard.insert([id.get()], &one_step()).await;
    execute(
        pool,
        "ALTER TABLE execution_steps DROP CONSTRAINT execution_steps_attempt_check,
                                     DROP CONSTRAINT execution_steps_step_index_check",
    )
    .await;
    let malformed = |e: &persistence::Error| matches!(e, persistence::Error::Malformed(_));

    execute(pool, "UPDATE execution_steps SET attempt = -1").await;
    let read = persistence::get_execution(pool, ShardId::new(0), id, "default").await;
    assert!(read.as_ref().is_err_and(malformed), "{read:?}");
    let locked = shard.orchestrator.apply(id, Event::Cancel).await;
    assert!(locked.as_ref().is_err_and(malformed), "{locked:?}");

    // In flight with an expired lease, so the lease scan reads it; first with a good attempt.
    execute(
        pool,
        "UPDATE execution_steps SET attempt = 1, lease_expires_at = now() - interval '1 minute'",
    )
    .await;
    let expired = persistence::expired_leases(pool, 10).await.expect("scan");
    assert_eq!(expired, [(id, StepIndex::new(0), Attempt::FIRST)]);
    execute(pool, "UPDATE execution_steps SET step_index = -3").await;
    let scanned = persistence::expired_leases(pool, 10).await;
    assert!(scanned.as_ref().is_err_and(malformed), "{scanned:?}");
    shard.stop().await;
}

/// Each attempt has a token of its own, in its step's row and in its command: a report without
/// it is refused and changes nothing, and a retry's report with the first attempt's token is
/// refused while its own is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_has_a_token_of_its_own_and_only_it_is_heard() {
    let shard = Shard::start("tokens").await;
    let (orchestrator, pool) = (&shard.orchestrator, &shard.pool);
    let id = ExecutionId::new(31_337).expect("valid id");
    let playbook = serde_json::json!({"name": "retried", "steps": [
        {"name": "a", "action": "noop", "retry": {"max_attempts": 2}}
    ]});
    shard.insert([id.get()], &playbook).await;
    let finished = |attempt, outcome| Event::Finished {
        step: StepIndex::new(0),
        attempt: Attempt::new(attempt),
        outcome,
        started_at_ms: 1,
    };
    let failed = || StepOutcome::Failed {
        error: "boom".to_owned(),
    };
    let first = token(pool, id, 0).await.expect("the first attempt's token");
    let refused = orchestrator.report(id, finished(1, failed()), None).await;
    assert_eq!(refused, Some(Applied::Refused));
    let recorded = orchestrator
        .report(id, finished(1, failed()), Some(first))
        .await;
    assert!(
        matches!(recorded, Some(Applied::Changed(_))),
        "{recorded:?}"
    );
    let second = token(pool, id, 0).await.expect("the retry's token");
    assert_ne!(second, first, "a retry draws a new token");

    let commands: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT command FROM outbox WHERE execution_id = $1 ORDER BY id")
            .bind(id.get())
            .fetch_all(pool)
            .await
            .expect("outbox");
    let sent: Vec<Option<AttemptToken>> = commands
        .into_iter()
        .map(|c| {
            serde_json::from_value::<StepCommand>(c)
                .expect("a command")
                .token
        })
        .collect();
    assert_eq!(
        sent,
        [Some(first), Some(second)],
        "each command carries its token"
    );

    let succeeded = || StepOutcome::Succeeded {
        result: serde_json::json!({}),
    };
    let stolen = orchestrator
        .report(id, finished(2, succeeded()), Some(first))
        .await;
    assert_eq!(stolen, Some(Applied::Refused));
    let own = orchestrator
        .report(id, finished(2, succeeded()), Some(second))
        .await;
    assert!(matches!(own, Some(Applied::Changed(_))), "{own:?}");
    shard.stop().await;
}
