//! Server start-up and the commit path against a real PostgreSQL (and NATS where needed).

use noetl_contract::message::ExecutionStatus;
use noetl_contract::shards::ShardMap;
use noetl_contract::{ExecutionId, ShardId};
use noetl_server::commit::Committer;
use noetl_server::configuration::{ServerConfig, Settings};
use noetl_server::persistence::{self, NewExecution};
use noetl_test_support::{NatsServer, Postgres};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn pool_for(pg: &Postgres, database: &str) -> sqlx::PgPool {
    let map = ShardMap::parse(&pg.url(database)).expect("valid DSN");
    let dsn = map.get(ShardId::new(0)).expect("one shard");
    persistence::pool(dsn, 4).expect("pool")
}

fn config(nats: &NatsServer, shards: &str) -> ServerConfig {
    let settings = Settings {
        common: noetl_service::CommonSettings::new(nats.url()),
        shards: Some(shards.to_owned()),
        listen: "127.0.0.1:0".parse().expect("address"),
        ..Settings::default()
    };
    ServerConfig::from_settings(settings, None).expect("valid config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_migrate_one_database_safely() {
    let pg = Postgres::start();
    pg.create_database("shared");
    let migrations = (0..6).map(|_| {
        let pool = pool_for(&pg, "shared");
        async move { persistence::migrate(&pool).await }
    });
    for outcome in futures::future::join_all(migrations).await {
        outcome.expect("every concurrent migration succeeds");
    }
    let pool = pool_for(&pg, "shared");
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables
         WHERE table_name IN ('executions', 'execution_events', 'shard_identity')",
    )
    .fetch_one(&pool)
    .await
    .expect("query");
    assert_eq!(tables, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_listed_at_another_position_is_refused() {
    let pg = Postgres::start();
    let shards = pg.create_shards("swap", 2);
    // swap_1 was shard 0 in an earlier configuration.
    let pool = pool_for(&pg, "swap_1");
    persistence::migrate(&pool).await.expect("migrate");
    persistence::claim_shard(&pool, ShardId::new(0))
        .await
        .expect("claim");
    persistence::claim_shard(&pool, ShardId::new(0))
        .await
        .expect("claiming the same shard again is fine");

    let nats = NatsServer::start();
    let error = noetl_server::run(config(&nats, &shards), CancellationToken::new())
        .await
        .expect_err("the server must refuse a reordered NOETL_SHARDS");
    let text = format!("{error:#}");
    assert!(text.contains("belongs to shard 0"), "{text}");
    assert!(text.contains("reordered"), "{text}");
}

fn new_execution(raw_id: i64) -> NewExecution {
    NewExecution {
        execution_id: ExecutionId::new(raw_id).expect("valid id"),
        playbook_name: "grouped".to_owned(),
        playbook_version: None,
        tenant: noetl_contract::message::DEFAULT_TENANT.to_owned(),
        playbook: r#"{"name":"grouped","steps":[{"name":"a","action":"noop"}]}"#.to_owned(),
        input: "{}".to_owned(),
        labels: "{}".to_owned(),
        status: ExecutionStatus::Pending,
        steps: Vec::new(),
        events: vec![("execution_created".to_owned(), "{}".to_owned())],
        outbox: Vec::new(),
        parent: None,
    }
}

/// `_count` of a Prometheus summary with the given shard label.
fn summary_count(rendered: &str, metric: &str, shard: &str) -> Option<u64> {
    let prefix = format!("{metric}_count{{shard=\"{shard}\"}} ");
    rendered
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_are_committed_in_groups() {
    let metrics = noetl_service::install_metrics();
    let pg = Postgres::start();
    pg.create_database("grouped");
    let pool = pool_for(&pg, "grouped");
    persistence::migrate(&pool).await.expect("migrate");
    // A shard number no other test uses, so its metrics are this test's alone.
    let shard = ShardId::new(77);
    let tracker = TaskTracker::new();
    let (relay, _feed) = noetl_server::relay::Relay::new(shard);
    let committer = Committer::spawn(shard, pool.clone(), relay, Some(1_000), 100, 1, &tracker);

    let commits = (1..=500).map(|n| committer.commit(new_execution(n)));
    let outcomes = futures::future::join_all(commits).await;
    assert!(outcomes.iter().all(|o| matches!(o, Ok(c) if c.created)));
    drop(committer);
    tracker.close();
    tracker.wait().await;

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM executions")
        .fetch_one(&pool)
        .await
        .expect("count");
    let first_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM execution_events WHERE seq = 1")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!((stored, first_events), (500, 500));
    let batches = summary_count(&metrics.render(), "noetl_server_commit_batch_size", "77")
        .expect("the batch size is recorded");
    assert!(
        (5..500).contains(&batches),
        "500 concurrent submits took {batches} transactions (at most 100 per batch)"
    );
}
