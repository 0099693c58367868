//! SIGKILL of the server while submits are in flight: every execution that got a 201 is in its
//! shard database afterwards.

use std::sync::{Arc, Mutex};

use noetl_contract::{shard_of, ExecutionId};
use tokio_util::sync::CancellationToken;

use crate::harness::{eventually, id_of, Api, Cluster, DEADLINE};

#[derive(Default)]
struct Outcomes {
    committed: Vec<ExecutionId>,
    refused: usize,
}

async fn wait_until(what: &str, outcomes: &Mutex<Outcomes>, done: impl Fn(&Outcomes) -> bool) {
    eventually(what, DEADLINE, || async {
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
    let mut cluster = Cluster::builder().shards(2).server_process().start().await;
    let count = cluster.shard_count;

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = CancellationToken::new();
    let submitters: Vec<_> = (0..16)
        .map(|_| {
            let (api, outcomes, stop) = (Api::clone(&cluster), outcomes.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let Ok(response) = api.submit_hello().await else {
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
    cluster.kill_server();
    let refused_at_kill = outcomes.lock().expect("outcomes lock").refused;
    wait_until("refusals while the server is down", &outcomes, |o| {
        o.refused >= refused_at_kill + 20
    })
    .await;
    let committed_before_restart = outcomes.lock().expect("outcomes lock").committed.len();

    cluster.restart_server();
    wait_until("300 more commits after the restart", &outcomes, |o| {
        o.committed.len() >= committed_before_restart + 300
    })
    .await;
    stop.cancel();
    for submitter in submitters {
        submitter.await.expect("submitter task");
    }

    let committed = std::mem::take(&mut outcomes.lock().expect("outcomes lock").committed);
    let stored = cluster.stored_ids().await;
    for shard in count.shards() {
        let stored: std::collections::HashSet<ExecutionId> =
            stored[&shard].iter().copied().collect();
        let expected: Vec<_> = committed
            .iter()
            .filter(|id| shard_of(**id, count) == shard)
            .collect();
        assert!(!expected.is_empty());
        for id in expected {
            assert!(
                stored.contains(id),
                "execution {id} got a 201 but is not in shard {shard}"
            );
        }
        for id in &stored {
            assert_eq!(
                shard_of(*id, count),
                shard,
                "{id} stored in the wrong shard"
            );
        }
    }
    cluster.stop().await;
}
