//! The worker against a real NATS: the test plays the owning shard itself, answering heartbeats
//! and reports over plain request/reply, and reads the command stream's state to see acks.
//! Each test uses its own pool name, so its metrics are its own.

use std::future::Future;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use noetl_bus::{Client, Message, NatsConfig, Subscriber};
use noetl_contract::command::{
    Heartbeat, HeartbeatAck, ReportAck, StepCommand, StepOutcome, StepReport,
};
use noetl_contract::message::Reply;
use noetl_contract::step::{Attempt, AttemptToken, StepIndex};
use noetl_contract::subject::{self, ShardRequest};
use noetl_contract::{ExecutionId, ShardId};
use noetl_test_support::NatsServer;
use noetl_worker::configuration::{Settings, WorkerConfig};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[path = "worker/progress.rs"]
mod progress;

const WAIT: Duration = Duration::from_secs(30);
const SHARD: ShardId = ShardId::new(0);
const WORKER: &str = "test-worker";

async fn connect(nats: &NatsServer) -> Client {
    let client = noetl_bus::connect(&NatsConfig {
        url: nats.url().to_owned(),
        client_name: "fake-shard".to_owned(),
        security: noetl_bus::NatsSecurity::default(),
    })
    .await
    .expect("connect");
    noetl_bus::commands::stream(&client)
        .await
        .expect("command stream");
    client
}

struct Worker {
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// The tests' worker settings: four steps at once on `pool`, quick to give up on an answer.
fn settings(nats: &NatsServer, pool: &str, ack_wait_ms: u64) -> Settings {
    Settings {
        common: noetl_service::CommonSettings::new(nats.url()),
        pools: vec![pool.to_owned()],
        concurrency: 4,
        name: Some(WORKER.to_owned()),
        ack_wait_ms,
        request_timeout_ms: 300,
        listen: "127.0.0.1:0".parse().expect("address"),
        ..Settings::default()
    }
}

impl Worker {
    fn start(settings: Settings) -> Self {
        let config = WorkerConfig::from_settings(settings, None, false).expect("valid config");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(noetl_worker::run(config, cancel.clone()));
        Self { cancel, task }
    }

    /// Cancels and waits for the drain to finish.
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the worker drains in time")
            .expect("the worker task does not panic")
            .expect("the worker stops cleanly");
    }
}

fn command(id: i64, attempt: u32, action: &str, with: Value) -> StepCommand {
    StepCommand {
        execution_id: ExecutionId::new(id).expect("valid id"),
        shard: SHARD,
        step_index: StepIndex::new(1),
        step: "the-step".to_owned(),
        attempt: Attempt::new(attempt),
        action: action.to_owned(),
        with,
        timeout_ms: 60_000,
        lease_ms: 3_000,
        token: Some(AttemptToken::from_bytes([id as u8; 16])),
        item: None,
    }
}

async fn subscribe(client: &Client, kind: ShardRequest) -> Subscriber {
    noetl_bus::queue_subscribe(
        client,
        subject::shard_request_filter(kind, SHARD),
        "fake-shard".to_owned(),
    )
    .await
    .expect("subscribe")
}

/// Answers every heartbeat with `decide(n)` (n counts from 1) and passes each one on.
fn answer_heartbeats(
    client: Client,
    mut heartbeats: Subscriber,
    decide: impl Fn(usize) -> HeartbeatAck + Send + 'static,
) -> mpsc::UnboundedReceiver<Heartbeat> {
    let (seen, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut count = 0;
        while let Some(message) = heartbeats.next().await {
            count += 1;
            let heartbeat: Heartbeat =
                noetl_bus::decode(&message.subject, &message.payload).expect("a heartbeat");
            // Seen before answered, so whatever the answer lets the worker do comes after.
            let gone = seen.send(heartbeat).is_err();
            answer(&client, &message, decide(count)).await;
            if gone {
                return;
            }
        }
    });
    received
}

async fn next_request(requests: &mut Subscriber) -> Message {
    tokio::time::timeout(WAIT, requests.next())
        .await
        .expect("a request in time")
        .expect("the subscription is open")
}

fn report_of(message: &Message) -> StepReport {
    noetl_bus::decode(&message.subject, &message.payload).expect("a step report")
}

async fn answer<T: Serialize>(client: &Client, message: &Message, value: T) {
    noetl_bus::respond(client, message, &Reply::Ok(value))
        .await
        .expect("respond");
    client.flush().await.expect("flush");
}

/// Messages left in the command stream, and the pool consumer's unacked and redelivered counts.
async fn queue_state(client: &Client, pool: &str) -> (u64, usize, usize) {
    let stream = noetl_bus::commands::stream(client).await.expect("stream");
    let messages = stream.get_info().await.expect("stream info").state.messages;
    let consumer = stream
        .consumer_info(subject::pool_consumer(pool))
        .await
        .expect("consumer info");
    (messages, consumer.num_ack_pending, consumer.num_redelivered)
}

async fn eventually<Fut: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> Fut) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The owning shard, played by the test: a NATS server and a client of it, subscribed to the
/// pool's step reports and answering its heartbeats, set up before the worker starts.
struct FakeShard {
    nats: NatsServer,
    client: Client,
    pool: &'static str,
    results: Subscriber,
    /// Every heartbeat, as it was answered.
    heartbeats: mpsc::UnboundedReceiver<Heartbeat>,
}

impl FakeShard {
    /// A shard for `pool` that answers every heartbeat with `Continue`.
    async fn start(pool: &'static str) -> Self {
        Self::answering(pool, |_| HeartbeatAck::Continue).await
    }

    /// A shard for `pool` that answers heartbeat n (from 1) with `decide(n)`.
    async fn answering(
        pool: &'static str,
        decide: impl Fn(usize) -> HeartbeatAck + Send + 'static,
    ) -> Self {
        let nats = NatsServer::start();
        let client = connect(&nats).await;
        let results = subscribe(&client, ShardRequest::Result).await;
        let heartbeats = answer_heartbeats(
            client.clone(),
            subscribe(&client, ShardRequest::Heartbeat).await,
            decide,
        );
        Self {
            nats,
            client,
            pool,
            results,
            heartbeats,
        }
    }

    /// The tests' worker settings for this shard's pool.
    fn settings(&self, ack_wait_ms: u64) -> Settings {
        settings(&self.nats, self.pool, ack_wait_ms)
    }

    fn worker(&self, ack_wait_ms: u64) -> Worker {
        Worker::start(self.settings(ack_wait_ms))
    }

    async fn publish(&self, command: &StepCommand) {
        noetl_bus::commands::publish(&self.client, self.pool, command)
            .await
            .expect("publish");
    }

    /// The next step report the worker sent.
    async fn next_report(&mut self) -> Message {
        next_request(&mut self.results).await
    }

    async fn answer(&self, message: &Message, ack: ReportAck) {
        answer(&self.client, message, ack).await;
    }

    /// Messages left in the command stream, and the pool consumer's unacked and redelivered
    /// counts.
    async fn queue_state(&self) -> (u64, usize, usize) {
        queue_state(&self.client, self.pool).await
    }

    async fn drained(&self) {
        drained(&self.client, self.pool).await;
    }

    /// How many steps of `action` the worker ended with `outcome` on this pool.
    fn steps(&self, action: &str, outcome: &str) -> Option<f64> {
        self.metric(
            "noetl_worker_steps_total",
            &[("action", action), ("outcome", outcome)],
        )
    }

    /// The value of the worker's counter `name` for this pool whose labels include `labels`.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = noetl_service::install_metrics().render();
        let pool = ("pool", self.pool);
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .find(|line| {
                labels
                    .iter()
                    .chain([&pool])
                    .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
            })
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }
}

async fn drained(client: &Client, pool: &str) {
    eventually("the command stream to be empty", || async {
        queue_state(client, pool).await == (0, 0, 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_is_acked_only_after_the_shard_records_its_report() {
    let mut shard = FakeShard::start("records").await;
    let worker = shard.worker(30_000);

    let sent = command(7, 2, "fail", json!({"until_attempt": 2}));
    shard.publish(&sent).await;

    // The shard lets the first report go unanswered: the worker must retry, not ack.
    let first = shard.next_report().await;
    let report = report_of(&first);
    assert_eq!(report.execution_id, sent.execution_id);
    assert_eq!(report.step_index.get(), 1);
    assert_eq!(report.attempt.get(), 2);
    assert_eq!(report.worker, WORKER);
    assert_eq!(
        report.token, sent.token,
        "the report carries the attempt's token"
    );
    assert_eq!(
        report.outcome,
        StepOutcome::Succeeded {
            result: json!({"attempt": 2})
        }
    );
    assert!(report.started_at_ms <= report.finished_at_ms);
    let retried = shard.next_report().await;
    assert_eq!(report_of(&retried), report, "the retry repeats the report");
    assert_eq!(
        shard.queue_state().await,
        (1, 1, 0),
        "unacked until the shard has answered"
    );

    shard.answer(&retried, ReportAck::Recorded).await;
    shard.drained().await;

    // `fail` has no effects besides its fenced report, so it starts without asking the shard:
    // every heartbeat seen is one of the unanswered report's, with the action's start.
    while let Ok(heartbeat) = shard.heartbeats.try_recv() {
        assert!(
            !heartbeat.starting,
            "no starting check for an action without effects"
        );
        assert_eq!(heartbeat.started_at_ms, Some(report.started_at_ms));
    }
    assert_eq!(shard.steps("fail", "succeeded"), Some(1.0));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_report_their_own_outcome_and_a_stale_answer_is_acked() {
    let mut shard = FakeShard::start("attempts").await;
    let worker = shard.worker(30_000);

    let with = json!({"message": "not yet", "until_attempt": 2});
    for attempt in [1, 2] {
        shard
            .publish(&command(11, attempt, "fail", with.clone()))
            .await;
    }
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let message = shard.next_report().await;
        let report = report_of(&message);
        // Attempt 2 superseded attempt 1, so the shard ignores attempt 1's late result.
        let ack = match report.attempt.get() {
            1 => ReportAck::Stale,
            _ => ReportAck::Recorded,
        };
        shard.answer(&message, ack).await;
        outcomes.push((report.attempt.get(), report.outcome));
    }
    outcomes.sort_by_key(|(attempt, _)| *attempt);
    assert_eq!(
        outcomes,
        vec![
            (
                1,
                StepOutcome::Failed {
                    error: "not yet".to_owned()
                }
            ),
            (
                2,
                StepOutcome::Succeeded {
                    result: json!({"attempt": 2})
                }
            ),
        ]
    );
    shard.drained().await;
    assert_eq!(
        shard.metric("noetl_worker_reports_total", &[("reply", "stale")]),
        Some(1.0)
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_command_is_terminated_and_counted() {
    let mut shard = FakeShard::start("garbage").await;
    // A short ack deadline: were the payload only nak'd or left unacked, it would come back.
    let worker = shard.worker(500);

    let id = ExecutionId::new(5).expect("valid id");
    shard
        .client
        .publish(subject::command(shard.pool, SHARD, id), "{not json".into())
        .await
        .expect("publish garbage");
    let valid = command(6, 1, "noop", Value::Null);
    shard.publish(&valid).await;

    let message = shard.next_report().await;
    assert_eq!(report_of(&message).execution_id, valid.execution_id);
    shard.answer(&message, ReportAck::Recorded).await;
    shard.drained().await;
    assert_eq!(
        shard.metric("noetl_worker_undecodable_total", &[]),
        Some(1.0)
    );
    assert_eq!(shard.metric("noetl_worker_redeliveries_total", &[]), None);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_is_recreated() {
    let mut shard = FakeShard::start("phoenix").await;
    let worker = shard.worker(30_000);

    let stream = noetl_bus::commands::stream(&shard.client)
        .await
        .expect("stream");
    let name = subject::pool_consumer(shard.pool);
    eventually("the worker to create its consumer", || async {
        stream.consumer_info(&name).await.is_ok()
    })
    .await;
    stream.delete_consumer(&name).await.expect("delete");

    let sent = command(9, 1, "noop", Value::Null);
    shard.publish(&sent).await;
    let message = shard.next_report().await;
    assert_eq!(report_of(&message).execution_id, sent.execution_id);
    shard.answer(&message, ReportAck::Recorded).await;
    shard.drained().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_answer_cancels_the_step_and_acks_it_unreported() {
    let mut shard = FakeShard::answering("stopper", |n| match n {
        1 => HeartbeatAck::Continue,
        _ => HeartbeatAck::Stop,
    })
    .await;
    let worker = shard.worker(30_000);

    let sent = StepCommand {
        lease_ms: 300,
        ..command(13, 1, "sleep", json!({"ms": 600_000}))
    };
    shard.publish(&sent).await;
    let check = shard.heartbeats.recv().await.expect("the first heartbeat");
    assert!(check.starting);
    assert_eq!(
        check.token, sent.token,
        "the check carries the attempt's token"
    );
    let running = shard
        .heartbeats
        .recv()
        .await
        .expect("a heartbeat answered stop");
    assert!(!running.starting, "a beat of the running step");
    assert_eq!(running.token, sent.token, "and so does every beat");
    assert!(running.started_at_ms.is_some(), "with the action's start");
    shard.drained().await;

    // The worker reports before it acks, so a report would be here by now.
    shard.client.flush().await.expect("flush");
    assert!(
        shard.results.next().now_or_never().is_none(),
        "a stopped step reports nothing"
    );
    assert_eq!(shard.steps("sleep", "stopped"), Some(1.0));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_running_step_finish_and_report() {
    let mut shard = FakeShard::start("drain").await;
    let worker = shard.worker(30_000);

    shard
        .publish(&command(17, 1, "sleep", json!({"ms": 300})))
        .await;
    shard.heartbeats.recv().await.expect("the step started");
    worker.cancel.cancel();

    let message = shard.next_report().await;
    assert_eq!(
        report_of(&message).outcome,
        StepOutcome::Succeeded {
            result: json!({"slept_ms": 300})
        }
    );
    shard.answer(&message, ReportAck::Recorded).await;
    worker.stop().await;
    assert_eq!(shard.queue_state().await, (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_the_shard_never_recorded_is_left_for_redelivery_at_shutdown() {
    let mut shard = FakeShard::start("abandon").await;
    let worker = shard.worker(30_000);

    shard.publish(&command(19, 1, "noop", Value::Null)).await;
    shard.next_report().await;
    worker.stop().await;
    assert_eq!(
        shard.queue_state().await,
        (1, 1, 0),
        "still in the stream, delivered and unacked"
    );
}
