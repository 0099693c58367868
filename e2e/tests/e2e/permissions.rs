//! The product under the NATS users and permissions it ships (`deploy/base/nats.conf`): the
//! server, the worker and the gateway each log in as their role, with their role's inbox prefix
//! as `deploy/base` sets it, and an execution, a playbook push, an idempotent submit and a
//! listing all work. (`make validate-deploy` checks subject by
//! subject what each role may and may not do; this checks that what the binaries actually do is
//! allowed.)

use noetl_test_support::{free_port, NatsServer, Postgres, Process};
use reqwest::Method;
use serde_json::json;

use crate::harness::{binary, id_of, Api};

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
    let mut env = PASSWORDS.to_vec();
    env.push(("POD_NAME", "noetl-nats-0"));
    let nats = NatsServer::start_with(
        "127.0.0.1",
        [
            "-c".to_owned(),
            local_config(dir.path()).display().to_string(),
            "-m".to_owned(),
            "0".to_owned(),
        ]
        .to_vec(),
        &env,
    );
    let pg = Postgres::start();
    let shards = pg.create_shards("noetl_shard", 2);

    let spawn = |name: &str, role: &str, port: u16, extra: &[(&str, &str)]| {
        let mut command = binary(name, nats.url(), &format!("127.0.0.1:{port}"));
        command
            .env("NOETL_NATS_USER", role)
            .env("NOETL_NATS_PASSWORD", format!("{role}-pw"))
            .env("NOETL_NATS_INBOX_PREFIX", format!("_INBOX_{role}"))
            .envs(extra.iter().copied());
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
    for port in ports {
        Api::new(format!("http://127.0.0.1:{port}"))
            .wait_ready("every process to be ready")
            .await;
    }
    let gateway = Api::new(format!("http://127.0.0.1:{}", ports[2]));

    // The catalog (the gateway's bucket) and an execution of a pushed playbook.
    let playbook = json!({"name": "perm", "steps": [
        {"name": "a", "action": "noop"},
        {"name": "b", "action": "noop", "needs": ["a"]}
    ]});
    let (status, pushed) = gateway.post_json("/api/v1/playbooks", &playbook).await;
    assert_eq!(status, 201, "{pushed}");
    // Listing reads the tenant's pointers through a filtered consumer of the bucket.
    let (status, listed) = gateway.get_json("/api/v1/playbooks").await;
    assert_eq!(
        (status, &listed["playbooks"][0]["name"]),
        (200, &json!("perm")),
        "{listed}"
    );
    let mut ids = Vec::new();
    for key in ["k1", "k1", "k2"] {
        let request = gateway
            .request(Method::POST, "/api/v1/executions")
            .header("Idempotency-Key", key)
            .json(&json!({"playbook": {"name": "perm"}}));
        let (status, body) = Api::answer(request).await;
        assert!(matches!(status, 200 | 201), "{status} {body}");
        ids.push(id_of(&body));
    }
    assert_eq!(ids[0], ids[1], "the key's replay names the same execution");
    for id in [ids[0], ids[2]] {
        gateway.wait_for_success(id).await;
    }
    let (_, listed) = gateway.get_json("/api/v1/executions").await;
    assert_eq!(listed["partial"], false, "{listed}");
    assert_eq!(
        listed["executions"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    // A child execution: the server leases a node id of its own, starts the child on its
    // shard and hands its end back (the child and return subjects are the servers' alone).
    let parent = json!({"playbook": {"name": "parent", "steps": [
        {"name": "c", "action": "playbook", "with": {"playbook": playbook}}
    ]}});
    let (status, body) = gateway.post_json("/api/v1/executions", &parent).await;
    assert_eq!(status, 201, "{body}");
    let done = gateway.wait_for_success(id_of(&body)).await;
    assert_eq!(done["steps"][0]["result"]["status"], "succeeded", "{done}");
}
