//! Applying events under the execution's row lock, against a real PostgreSQL.

use std::sync::Arc;

use noetl_contract::command::StepOutcome;
use noetl_contract::engine::Event;
use noetl_contract::message::SubmitCommand;
use noetl_contract::shards::ShardMap;
use noetl_contract::{ExecutionId, ShardId};
use noetl_server::orchestrate::{Applied, Batching, Leases, Orchestrator, Pools};
use noetl_server::persistence;
use noetl_test_support::Postgres;
use tokio_util::task::TaskTracker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_queued_behind_the_lock_see_what_it_committed() {
    let pg = Postgres::start();
    pg.create_database("orchestrate");
    let map = ShardMap::parse(&pg.url("orchestrate")).expect("valid DSN");
    let dsn = map.get(ShardId::new(0)).expect("one shard");
    let pool = persistence::pool(dsn, 16).expect("pool");
    persistence::migrate(&pool).await.expect("migrate");
    let tracker = TaskTracker::new();
    let orchestrator = Orchestrator::new(
        ShardId::new(0),
        Pools {
            pool: pool.clone(),
            relaxed: persistence::relaxed_pool(dsn, 4).expect("pool"),
        },
        Leases {
            step_lease_ms: 30_000,
            dispatch_lease_ms: 300_000,
            default_timeout_ms: 60_000,
        },
        Arc::new(tokio::sync::Notify::new()),
        Batching {
            tracker: &tracker,
            max_batch: 100,
            parallel: 2,
        },
    );
    let id = ExecutionId::new(4_242).expect("valid id");
    let command: SubmitCommand = serde_json::from_value(serde_json::json!({
        "execution_id": id,
        "playbook": {"name": "once", "steps": [{"name": "only", "action": "noop"}]},
        "input": {},
        "labels": {}
    }))
    .expect("valid command");
    persistence::insert_executions(&pool, &[orchestrator.prepare(&command)])
        .await
        .expect("insert");

    // Hold the execution's lock while copies of the report queue behind it, as they do when a
    // worker's retried report meets the original; then finish the step in the holding
    // transaction. The queued copies must see that and record nothing.
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM executions WHERE execution_id = $1 FOR UPDATE")
        .bind(id.get())
        .execute(&mut *holder)
        .await
        .expect("lock");
    let finished = || Event::Finished {
        step: 0,
        attempt: 1,
        outcome: StepOutcome::Succeeded {
            result: serde_json::json!({"n": 1}),
        },
    };
    let queued = tokio::spawn({
        let orchestrator = orchestrator.clone();
        async move {
            let alone = (0..4).map(|_| orchestrator.apply(id, finished()));
            let batched = (0..4).map(|_| orchestrator.report(id, finished()));
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
        .fetch_one(&pool)
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
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(results, 0, "nothing recorded behind the holder's back");
    drop(orchestrator);
    tracker.close();
    tracker.wait().await;
}
