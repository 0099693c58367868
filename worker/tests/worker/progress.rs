//! A step longer than its deadlines: progress keeps it from redelivery, heartbeats go on while
//! its report waits, and a finished step waits for its answer in a reporting slot.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_keeps_a_step_longer_than_the_ack_deadline_from_redelivery() {
    let mut shard = FakeShard::start("long").await;
    // Ack deadline 2 s, a 5 s step, progress every 100 ms (a third of the 300 ms lease).
    let worker = shard.worker(2_000);
    let sent = StepCommand {
        lease_ms: 300,
        ..command(23, 1, "sleep", json!({"ms": 5_000}))
    };
    shard.publish(&sent).await;
    let message = shard.next_report().await;
    shard.answer(&message, ReportAck::Recorded).await;
    shard.drained().await;
    assert_eq!(shard.metric("noetl_worker_redeliveries_total", &[]), None);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_go_on_while_a_report_waits_for_an_answer() {
    let mut shard = FakeShard::start("unanswered").await;
    let worker = shard.worker(30_000);
    // A 300 ms lease: a heartbeat every 100 ms.
    let sent = StepCommand {
        lease_ms: 300,
        ..command(29, 1, "noop", Value::Null)
    };
    shard.publish(&sent).await;
    // The step has finished; its report goes unanswered, as on a server that cannot reach its
    // database. The attempt must keep its lease meanwhile.
    let report = report_of(&shard.next_report().await);
    while shard.heartbeats.try_recv().is_ok() {}
    for _ in 0..3 {
        let heartbeat = tokio::time::timeout(WAIT, shard.heartbeats.recv())
            .await
            .expect("heartbeats while the report is unanswered")
            .expect("the fake shard still listens");
        assert_eq!(heartbeat.attempt.get(), 1);
        assert!(!heartbeat.starting);
        assert_eq!(heartbeat.started_at_ms, Some(report.started_at_ms));
    }
    let message = shard.next_report().await;
    shard.answer(&message, ReportAck::Recorded).await;
    shard.drained().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_step_waits_for_its_report_in_a_reporting_slot_not_a_running_one() {
    let mut shard = FakeShard::start("reporting-slots").await;
    // One step runs at once; two finished ones may wait for the shard.
    let worker = Worker::start(Settings {
        concurrency: 1,
        pending_reports: 2,
        ..shard.settings(30_000)
    });
    for id in 1..=3 {
        shard.publish(&command(id, 1, "noop", Value::Null)).await;
    }
    let report_id = |message: &Message| report_of(message).execution_id.get();

    // The first two report while neither is answered: each gave its one running slot up when
    // its action ended.
    let deadline = Instant::now() + WAIT;
    let mut reporting = std::collections::BTreeSet::new();
    while reporting.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "only {reporting:?} reported: a step waiting for its answer kept the running slot"
        );
        reporting.insert(report_id(&shard.next_report().await));
    }
    assert_eq!(reporting, [1, 2].into());
    // The third is in hand (the freed running slot pulled it) and unacked, like the first two.
    eventually("the third command in hand", || async {
        shard.queue_state().await == (3, 3, 0)
    })
    .await;

    // Both reporting slots are taken, so the third reports only once the shard has answered
    // the first; until then only the first two's retries arrive.
    let mut first_answered = false;
    loop {
        let message = shard.next_report().await;
        match report_id(&message) {
            1 => {
                shard.answer(&message, ReportAck::Recorded).await;
                first_answered = true;
            }
            3 => {
                assert!(
                    first_answered,
                    "the third step reported while both reporting slots were taken"
                );
                shard.answer(&message, ReportAck::Recorded).await;
                break;
            }
            _ => {}
        }
    }
    let FakeShard {
        nats: _nats,
        client,
        pool,
        mut results,
        heartbeats: _heartbeats,
    } = shard;
    let recorder = client.clone();
    tokio::spawn(async move {
        while let Some(message) = results.next().await {
            answer(&recorder, &message, ReportAck::Recorded).await;
        }
    });
    drained(&client, pool).await;
    worker.stop().await;
}
