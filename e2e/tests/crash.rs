//! SIGKILL of the server while submits are in flight: every execution that got a 201 is in its
//! shard database afterwards.

mod common;

use std::sync::{Arc, Mutex};

use common::{hello_request, id_of, poll_readyz, spawn_server, start_gateway};
use noetl_contract::{shard_of, ExecutionId, ShardCount};
use noetl_test_support::{NatsServer, Postgres};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Outcomes {
    committed: Vec<ExecutionId>,
    refused: usize,
}

async fn wait_until(what: &str, outcomes: &Mutex<Outcomes>, done: impl Fn(&Outcomes) -> bool) {
    common::eventually(what, common::DEADLINE, || async {
        let outcomes = outcomes.lock().expect("outcomes lock");
        if done(&outcomes) {
            Ok(())
        } else {
            Err(format!(
                "{} committed, {} refused",
                outcomes.committed.len(),
                outcomes.refused
            ))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_201_survives_a_server_sigkill() {
    let nats = NatsServer::start();
    let pg = Postgres::start();
    let shards = pg.create_shards("noetl_shard", 2);
    let count = ShardCount::new(2).expect("two shards");
    let mut server = spawn_server(nats.url(), &shards);
    let cancel = CancellationToken::new();
    let (gateway_url, gateway) = start_gateway(nats.url(), &cancel).await;
    let http = reqwest::Client::new();
    let ready = |status: u16, _: &serde_json::Value| status == 200;
    poll_readyz(&http, &gateway_url, "the server to start", ready).await;

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = CancellationToken::new();
    let submitters: Vec<_> = (0..16)
        .map(|_| {
            let (http, url, outcomes, stop) = (
                http.clone(),
                format!("{gateway_url}/api/v1/executions"),
                outcomes.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let Ok(response) = http.post(&url).json(&hello_request()).send().await else {
                        continue;
                    };
                    let status = response.status().as_u16();
                    let body: serde_json::Value = response.json().await.expect("JSON body");
                    let mut outcomes = outcomes.lock().expect("outcomes lock");
                    match status {
                        201 => outcomes.committed.push(id_of(&body)),
                        503 => outcomes.refused += 1,
                        other => panic!("unexpected {other}: {body}"),
                    }
                }
            })
        })
        .collect();

    wait_until("300 commits before the crash", &outcomes, |o| {
        o.committed.len() >= 300
    })
    .await;
    server.kill();
    let refused_at_kill = outcomes.lock().expect("outcomes lock").refused;
    wait_until("refusals while the server is down", &outcomes, |o| {
        o.refused >= refused_at_kill + 20
    })
    .await;
    let committed_before_restart = outcomes.lock().expect("outcomes lock").committed.len();

    let _restarted = spawn_server(nats.url(), &shards);
    wait_until("300 more commits after the restart", &outcomes, |o| {
        o.committed.len() >= committed_before_restart + 300
    })
    .await;
    stop.cancel();
    for submitter in submitters {
        submitter.await.expect("submitter task");
    }

    let committed = std::mem::take(&mut outcomes.lock().expect("outcomes lock").committed);
    for shard in count.shards() {
        let pool = PgPool::connect(&pg.url(&format!("noetl_shard_{shard}")))
            .await
            .expect("connect");
        let stored: Vec<i64> = sqlx::query_scalar("SELECT execution_id FROM executions")
            .fetch_all(&pool)
            .await
            .expect("read");
        let stored: std::collections::HashSet<i64> = stored.into_iter().collect();
        let expected: Vec<_> = committed
            .iter()
            .filter(|id| shard_of(**id, count) == shard)
            .collect();
        assert!(!expected.is_empty());
        for id in expected {
            assert!(
                stored.contains(&id.get()),
                "execution {id} got a 201 but is not in shard {shard}"
            );
        }
        for id in &stored {
            let id = ExecutionId::new(*id).expect("valid id");
            assert_eq!(shard_of(id, count), shard, "{id} stored in the wrong shard");
        }
        pool.close().await;
    }
    cancel.cancel();
    gateway
        .await
        .expect("gateway task")
        .expect("gateway stopped");
}
