//! Metrics, traces and logs of the three processes after a run of the example playbook: every
//! process's `/metrics` shows the work it did, one trace per execution spans gateway, server
//! and worker (W3C trace context in NATS headers, exported over OTLP), logs are JSON when
//! configured, and no secret (database password, NATS password, API token) appears in any log
//! line at any level or in any error, including when the credentials are wrong.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use noetl_test_support::{free_port, NatsServer, Postgres, Process};
use serde_json::Value;

use crate::harness::{binary, eventually, example, Api, Token, DEADLINE};

const NATS_USER: &str = "noetl";
const NATS_PASSWORD: &str = "nats-pw-6f1c9e2a";
const PG_PASSWORD: &str = "pg-pw-0b7d44e1";
const TOKEN: &str = "api-token-93ae51c7";

/// Spans received by the test's OTLP/HTTP (JSON) endpoint: (service, trace id, span name).
type Spans = Arc<Mutex<Vec<(String, String, String)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_traces_and_logs_of_a_run_show_the_work_and_no_secret() {
    noetl_service::init_tracing(noetl_service::LogFormat::Text);
    let nats = NatsServer::start_with_user(NATS_USER, NATS_PASSWORD);
    let pg = Postgres::start();
    pg.create_database("noetl_shard_0");
    let shards = format!(
        "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/noetl_shard_0",
        pg.port()
    );
    let logs = tempfile::tempdir().expect("a log directory");
    let tokens = logs.path().join("tokens.toml");
    let token = Token::new("e2e", "t", &["submit", "read"], TOKEN);
    std::fs::write(&tokens, Token::file(&[token])).expect("write the tokens file");
    let (otlp_url, spans) = otlp_receiver().await;

    let ports = [free_port(), free_port(), free_port()];
    let [gateway_port, server_port, worker_port] = ports;
    let spawn = |name: &str, port: u16, extra: &[(&str, &str)]| {
        let log = logs.path().join(format!("{name}.log"));
        let mut command = traced(name, nats.url(), port, &log);
        command
            .env("NOETL_NATS_USER", NATS_USER)
            .env("NOETL_NATS_PASSWORD", NATS_PASSWORD)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp_url)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .envs(extra.iter().copied());
        Process::spawn(command)
    };
    let processes = [
        spawn("noetl-server", server_port, &[("NOETL_SHARDS", &shards)]),
        spawn("noetl-worker", worker_port, &[]),
        spawn(
            "noetl-gateway",
            gateway_port,
            &[(
                "NOETL_AUTH_TOKENS_FILE",
                tokens.to_str().expect("a UTF-8 path"),
            )],
        ),
    ];
    for port in ports {
        Api::new(format!("http://127.0.0.1:{port}"))
            .wait_ready("every process to be ready")
            .await;
    }
    let api = Api::new(format!("http://127.0.0.1:{gateway_port}")).with_token(TOKEN);
    let id = api.submit(&example("diamond.json")).await;
    api.wait_for_success(id).await;

    // Metrics: each process shows the work it did.
    let expectations: [(u16, &[&str]); 3] = [
        (
            gateway_port,
            &[
                "noetl_gateway_requests_total",
                "noetl_gateway_request_seconds_count",
            ],
        ),
        (
            server_port,
            &[
                "noetl_server_submits_total",
                "noetl_server_commit_batch_size_count",
                "noetl_server_commit_seconds_count",
                "noetl_server_commands_published_total",
                "noetl_server_step_seconds_count",
                "noetl_server_report_batch_size_count",
                "noetl_server_executions_finished_total",
                "noetl_topology_epoch",
            ],
        ),
        (
            worker_port,
            &[
                "noetl_worker_steps_total",
                "noetl_worker_reports_total",
                "noetl_worker_step_seconds_count",
            ],
        ),
    ];
    for (port, names) in expectations {
        let ops = Api::new(format!("http://127.0.0.1:{port}"));
        let scraped = ops.metrics().await.expect("metrics");
        for name in names {
            let total = sum_of(&scraped, name);
            // The topology's first epoch is 0; everything else counted work.
            let least = if *name == "noetl_topology_epoch" {
                0.0
            } else {
                1.0
            };
            assert!(
                total.is_some_and(|total| total >= least),
                "{name} on :{port} is {total:?}\n{scraped}"
            );
        }
        if port == server_port {
            for gauge in [
                "noetl_server_outbox_backlog",
                "noetl_server_pending_commands",
            ] {
                eventually("the backlog gauges to be sampled", DEADLINE, || async {
                    let scraped = ops.metrics().await?;
                    sum_of(&scraped, gauge)
                        .map(drop)
                        .ok_or_else(|| format!("no {gauge}"))
                })
                .await;
            }
        }
    }

    // Traces: one trace for the execution, with spans from all three processes.
    let trace = noetl_bus::trace::trace_id(id).to_string();
    let in_trace = |pick: fn(&(String, String, String)) -> String| -> BTreeSet<String> {
        spans
            .lock()
            .expect("spans")
            .iter()
            .filter(|span| span.1 == trace)
            .map(pick)
            .collect()
    };
    eventually(
        "spans of the execution from every process",
        DEADLINE,
        || async {
            let seen = in_trace(|span| span.0.clone());
            let all: BTreeSet<String> = ["noetl-gateway", "noetl-server", "noetl-worker"]
                .map(str::to_owned)
                .into();
            (seen == all)
                .then_some(())
                .ok_or_else(|| format!("services in trace {trace}: {seen:?}"))
        },
    )
    .await;
    let names = in_trace(|span| span.2.clone());
    for name in ["gateway_request", "shard_request", "dispatch", "step"] {
        assert!(names.contains(name), "no {name} span in {names:?}");
    }

    // Wrong credentials: the errors say what failed, never with the secret.
    let refused = logs.path().join("refused");
    std::fs::create_dir(&refused).expect("a directory");
    let wrong = [
        spawn_refused(
            &refused,
            nats.url(),
            &[
                ("NOETL_NATS_USER", NATS_USER),
                ("NOETL_NATS_PASSWORD", &format!("{NATS_PASSWORD}-wrong")),
                ("NOETL_SHARDS", &shards),
            ],
        ),
        spawn_refused(
            &refused,
            nats.url(),
            &[
                ("NOETL_NATS_USER", NATS_USER),
                ("NOETL_NATS_PASSWORD", NATS_PASSWORD),
                (
                    "NOETL_SHARDS",
                    &format!(
                        "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/noetl_shard_0",
                        free_port()
                    ),
                ),
            ],
        ),
    ];
    for (index, _process) in wrong.iter().enumerate() {
        let log = refused.join(format!("{index}.log"));
        eventually("the refused process to log an error", DEADLINE, || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .any(|line| {
                    ["\"level\":\"WARN\"", "\"level\":\"ERROR\"", "Error:"]
                        .iter()
                        .any(|mark| line.contains(mark))
                })
                .then_some(())
                .ok_or_else(|| format!("{}: {text}", log.display()))
        })
        .await;
    }
    drop(wrong);
    drop(processes);

    let mut lines = 0;
    for log in log_files(logs.path()) {
        let text = std::fs::read_to_string(&log).expect("read a log");
        for line in text.lines() {
            lines += 1;
            for secret in [NATS_PASSWORD, PG_PASSWORD, TOKEN] {
                assert!(
                    !line.contains(secret),
                    "{} leaks a secret: {line}",
                    log.display()
                );
            }
            // JSON logs, except a process's last words on a failed start (anyhow's report).
            if !log.starts_with(&refused) {
                assert!(
                    serde_json::from_str::<Value>(line).is_ok(),
                    "{}: not a JSON line: {line}",
                    log.display()
                );
            }
        }
    }
    assert!(lines > 100, "only {lines} log lines at trace level");
}

/// The sum of every sample of metric `name` (all label sets); `None` when it has none.
fn sum_of(scraped: &str, name: &str) -> Option<f64> {
    let samples: Vec<f64> = scraped
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

/// A server that is refused (wrong credentials), logging to the next `<index>.log` of `dir`.
fn spawn_refused(dir: &Path, nats_url: &str, env: &[(&str, &str)]) -> Process {
    let index = std::fs::read_dir(dir).map(Iterator::count).unwrap_or(0);
    let log = dir.join(format!("{index}.log"));
    let mut command = traced("noetl-server", nats_url, free_port(), &log);
    command.envs(env.iter().copied());
    Process::spawn(command)
}

/// `name` listening on `port`, logging every level as JSON to `log`.
fn traced(name: &str, nats_url: &str, port: u16, log: &Path) -> Command {
    let mut command = binary(name, nats_url, &format!("127.0.0.1:{port}"));
    command
        .env("NOETL_LOG_FORMAT", "json")
        .env("RUST_LOG", "trace")
        .stderr(std::fs::File::create(log).expect("log"));
    command
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the log directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            files.extend(log_files(&path));
        } else if path.extension().is_some_and(|e| e == "log") {
            files.push(path);
        }
    }
    files
}

/// An OTLP/HTTP endpoint taking JSON span exports; returns its base URL and what it received.
async fn otlp_receiver() -> (String, Spans) {
    use axum::routing::post;
    let spans: Spans = Arc::default();
    let received = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |axum::Json(export): axum::Json<Value>| {
            let received = received.clone();
            async move {
                received.lock().expect("spans").extend(spans_of(&export));
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

/// (service, trace id, span name) of every span in an OTLP JSON export.
fn spans_of(export: &Value) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        let attributes: HashMap<&str, &Value> = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| Some((a["key"].as_str()?, &a["value"])))
            .collect();
        let service = attributes
            .get("service.name")
            .and_then(|v| v["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                found.push((
                    service.clone(),
                    span["traceId"].as_str().unwrap_or_default().to_lowercase(),
                    span["name"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    found
}
