//! What every end-to-end test uses: [`Cluster::builder`] for a whole cluster (its own NATS and
//! PostgreSQL, a server and a gateway), [`Api`] to call a gateway, the workspace's binaries as
//! processes, and [`eventually`] to wait.

mod api;
mod cluster;
mod process;

use std::time::Duration;

use noetl_contract::command::{Heartbeat, HeartbeatAck, ReportAck, StepOutcome, StepReport};
use noetl_contract::step::{Attempt, AttemptToken, StepIndex};
use noetl_contract::subject::{self, ShardRequest};
use noetl_contract::ExecutionId;
use noetl_contract::ShardId;
use serde_json::{json, Value};

pub use api::Api;
pub use cluster::{gateway_settings, Cluster, Gateway, Worker};
pub use process::{binary, describe, noetlctl, stdout};

pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `probe` until it returns `Ok`, or panics after `deadline` with `what` and the last
/// state `probe` described in its `Err`. Tests wait with this, never with a bare sleep.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(state) => assert!(
                tokio::time::Instant::now() < give_up,
                "timed out waiting for {what}; last seen: {state}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An API token of a gateway's tokens file.
#[derive(Debug, Clone, Copy)]
pub struct Token {
    name: &'static str,
    tenant: &'static str,
    scopes: &'static [&'static str],
    /// The token itself; the file holds only its digest.
    secret: &'static str,
}

impl Token {
    pub const fn new(
        name: &'static str,
        tenant: &'static str,
        scopes: &'static [&'static str],
        secret: &'static str,
    ) -> Self {
        Self {
            name,
            tenant,
            scopes,
            secret,
        }
    }

    /// A tokens file (`NOETL_AUTH_TOKENS_FILE`) with `tokens`.
    pub fn file(tokens: &[Token]) -> String {
        tokens
            .iter()
            .map(|token| {
                format!(
                    "[[tokens]]\nname = {:?}\ntenant = {:?}\nscopes = {:?}\nsha256 = {:?}\n\n",
                    token.name,
                    token.tenant,
                    token.scopes,
                    digest(token.secret)
                )
            })
            .collect()
    }
}

/// The SHA-256 digest of a token, in hex, as a tokens file holds it.
fn digest(token: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A NATS client for a test's own requests.
pub async fn connect(nats_url: &str) -> noetl_bus::Client {
    noetl_bus::connect(&noetl_bus::NatsConfig {
        url: nats_url.to_owned(),
        client_name: "e2e-test".to_owned(),
        security: noetl_bus::NatsSecurity::default(),
    })
    .await
    .expect("connect to NATS")
}

/// What a client holding a stolen worker credential sends for step 0 of `id`, attempt `attempt`
/// (of loop `item`), with `token`: a successful result, and a heartbeat (`starting` or not).
pub fn forged(
    id: ExecutionId,
    attempt: Attempt,
    token: Option<AttemptToken>,
    item: Option<u32>,
    starting: bool,
) -> (StepReport, Heartbeat) {
    let now = noetl_bus::unix_now_ms();
    let report = StepReport {
        execution_id: id,
        step_index: StepIndex::new(0),
        attempt,
        outcome: StepOutcome::Succeeded {
            result: json!({"forged": true}),
        },
        started_at_ms: now,
        finished_at_ms: now,
        worker: "stolen".to_owned(),
        token,
        item,
    };
    let beat = Heartbeat {
        execution_id: id,
        step_index: StepIndex::new(0),
        attempt,
        worker: "stolen".to_owned(),
        starting,
        started_at_ms: (!starting).then_some(now),
        token,
        item,
    };
    (report, beat)
}

/// Sends `report` and `beat` ([`forged`]) to the shard of their execution, asserting that it
/// records neither: the report is answered `stale`, the heartbeat `stop`.
pub async fn assert_forgery_refused(
    client: &noetl_bus::Client,
    shard: ShardId,
    report: &StepReport,
    beat: &Heartbeat,
) {
    let wait = Duration::from_secs(5);
    let ask = |kind| subject::shard_request(kind, shard, report.execution_id);
    let ack: ReportAck = noetl_bus::request(client, ask(ShardRequest::Result), report, wait)
        .await
        .expect("the shard answers");
    assert_eq!(ack, ReportAck::Stale, "a forged result is not recorded");
    let ack: HeartbeatAck = noetl_bus::request(client, ask(ShardRequest::Heartbeat), beat, wait)
        .await
        .expect("the shard answers");
    assert_eq!(
        ack,
        HeartbeatAck::Stop,
        "a forged heartbeat is told to stop"
    );
}

pub fn hello_request() -> Value {
    json!({
        "playbook": {
            "name": "hello",
            "steps": [
                {"name": "greet", "action": "noop"},
                {"name": "wait", "action": "sleep", "with": {"ms": 10}, "needs": ["greet"]}
            ]
        },
        "input": {"who": "world"},
        "labels": {"suite": "e2e"}
    })
}

/// Asserts that an answer of `status` with `body` is a problem document of `expected` with
/// `code`.
#[track_caller]
pub fn assert_problem(status: u16, body: &Value, expected: u16, code: &str) {
    assert_eq!(
        (status, body["code"].as_str()),
        (expected, Some(code)),
        "{body}"
    );
}

pub fn id_of(body: &Value) -> ExecutionId {
    body["execution_id"]
        .as_str()
        .unwrap_or_else(|| panic!("execution_id is a string in {body}"))
        .parse()
        .expect("execution_id is decimal")
}

/// An example playbook of the repository's examples/, parsed.
pub fn example(name: &str) -> Value {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Serves `app` on a free loopback port for the rest of the test; its base URL.
pub async fn serve_loopback(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}
