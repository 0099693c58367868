//! The product under the NATS users and permissions it ships (`deploy/base/nats.conf`): the
//! server, the worker and the gateway each log in as their role, with their role's inbox prefix
//! as `deploy/base` sets it, and an execution, a playbook push, an idempotent submit and a
//! listing all work. (`make validate-deploy` checks subject by
//! subject what each role may and may not do; this checks that what the binaries actually do is
//! allowed.)

mod common;

use std::process::{Command, Stdio};

use common::{poll_readyz, wait_for_success};
use noetl_test_support::{cargo_bin, free_port, NatsServer, Postgres, Process};
use serde_json::{json, Value};

const PASSWORDS: [(&str, &str); 5] = [
    ("NATS_ROUTE_PASSWORD", "route-pw"),
    ("NATS_GATEWAY_PASSWORD", "gateway-pw"),
    ("NATS_SERVER_PASSWORD", "server-pw"),
    ("NATS_WORKER_PASSWORD", "worker-pw"),
    ("NATS_OPERATOR_PASSWORD", "operator-pw"),
];

/// deploy/base/nats.conf for one standalone local server: its pid file in `dir`, its store
/// where the harness says (`-sd`), without the cluster block (routes are not what this checks),
/// and without `sync_interval`, which the nats-server 2.9 of Debian does not know
/// (validate-deploy checks the file as it is with the version the StatefulSet runs).
fn local_config(dir: &std::path::Path) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/base/nats.conf"
    ))
    .expect("deploy/base/nats.conf");
    let mut local = String::new();
    let mut in_cluster = false;
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        if line.starts_with("cluster {") {
            in_cluster = true;
        } else if in_cluster {
            in_cluster = line != "}";
        } else if !trimmed.starts_with("sync_interval") && !trimmed.starts_with("store_dir") {
            let line = line.replace(
                "\"/var/run/nats/nats.pid\"",
                &format!("\"{}\"", dir.join("nats.pid").display()),
            );
            local.push_str(&line);
            local.push('\n');
        }
    }
    let path = dir.join("nats.conf");
    std::fs::write(&path, local).expect("write the configuration");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binaries_work_as_their_nats_users() {
    noetl_service::init_tracing(noetl_service::LogFormat::Text);
    let dir = tempfile::tempdir().expect("a directory");
    // The configuration reads its passwords and server name from the environment, as in the pod.
    std::env::set_var("POD_NAME", "noetl-nats-0");
    for (name, value) in PASSWORDS {
        std::env::set_var(name, value);
    }
    let nats = NatsServer::start_with(
        "127.0.0.1",
        [
            "-c".to_owned(),
            local_config(dir.path()).display().to_string(),
            "-m".to_owned(),
            "0".to_owned(),
        ]
        .to_vec(),
    );
    let pg = Postgres::start();
    let shards = pg.create_shards("noetl_shard", 2);

    let spawn = |binary: &str, role: &str, port: u16, extra: &[(&str, &str)]| {
        let mut command = Command::new(cargo_bin(binary));
        command
            .env("NOETL_NATS_URL", nats.url())
            .env("NOETL_NATS_USER", role)
            .env("NOETL_NATS_PASSWORD", format!("{role}-pw"))
            .env("NOETL_NATS_INBOX_PREFIX", format!("_INBOX_{role}"))
            .env("NOETL_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied())
            .stdout(Stdio::null());
        Process::spawn(command)
    };
    let ports = [free_port(), free_port(), free_port()];
    let _processes = [
        spawn(
            "noetl-server",
            "server",
            ports[0],
            &[("NOETL_SHARDS", &shards)],
        ),
        spawn("noetl-worker", "worker", ports[1], &[]),
        spawn("noetl-gateway", "gateway", ports[2], &[]),
    ];
    let http = reqwest::Client::new();
    for port in ports {
        let url = format!("http://127.0.0.1:{port}");
        poll_readyz(&http, &url, "every process to be ready", |status, _| {
            status == 200
        })
        .await;
    }
    let gateway = format!("http://127.0.0.1:{}", ports[2]);

    // The catalog (the gateway's bucket) and an execution of a pushed playbook.
    let playbook = json!({"name": "perm", "steps": [
        {"name": "a", "action": "noop"},
        {"name": "b", "action": "noop", "needs": ["a"]}
    ]});
    let pushed = http
        .post(format!("{gateway}/api/v1/playbooks"))
        .json(&playbook)
        .send()
        .await
        .expect("push");
    assert_eq!(pushed.status().as_u16(), 201);
    let mut ids = Vec::new();
    for key in ["k1", "k1", "k2"] {
        let response = http
            .post(format!("{gateway}/api/v1/executions"))
            .header("Idempotency-Key", key)
            .json(&json!({"playbook": {"name": "perm"}}))
            .send()
            .await
            .expect("submit");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("a receipt");
        assert!(matches!(status, 200 | 201), "{status} {body}");
        ids.push(body["execution_id"].as_str().expect("an id").to_owned());
    }
    assert_eq!(ids[0], ids[1], "the key's replay names the same execution");
    for id in [&ids[0], &ids[2]] {
        wait_for_success(&http, &gateway, None, id).await;
    }
    let listed: Value = http
        .get(format!("{gateway}/api/v1/executions"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("a page");
    assert_eq!(listed["partial"], false, "{listed}");
    assert_eq!(
        listed["executions"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
}
