//! The catalog per tenant (finding 6) and the `http` action's egress policy (finding 7), as in
//! `e2e/tests/e2e/catalog.rs` and `egress.rs`. B is the victim here: it publishes its own
//! playbook, which A then tries to read, run and overwrite.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{json, Value};

use super::{every, problem, step_failed, Ctx, Outcome, TOKEN_B};
use noetl_chaos::now_ms;

/// B publishes a one-step playbook whose step is `b-step`, under a name of its own; the name.
async fn b_publishes(ctx: &Ctx) -> anyhow::Result<String> {
    let name = format!("b-nightly-{}", now_ms());
    let playbook = json!({"name": name, "steps": [{"name": "b-step", "action": "noop"}]});
    let request = ctx
        .request_as(TOKEN_B, Method::POST, "/api/v1/playbooks")
        .json(&playbook);
    let (status, body) = Ctx::answer(request).await?;
    anyhow::ensure!(status == 201, "B's publish answered {status}: {body}");
    Ok(name)
}

/// B's latest version of `name`: its version and its first step's name.
async fn b_latest(ctx: &Ctx, name: &str) -> anyhow::Result<(u64, String)> {
    let request = ctx.request_as(TOKEN_B, Method::GET, &format!("/api/v1/playbooks/{name}"));
    let (status, body) = Ctx::answer(request).await?;
    anyhow::ensure!(status == 200, "B's read answered {status}: {body}");
    Ok((
        body["version"].as_u64().unwrap_or_default(),
        body["playbook"]["steps"][0]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ))
}

/// A lists the catalog, reads B's playbook and a version of it, and runs it by name.
pub async fn catalog_read(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let name = b_publishes(&ctx).await?;
    let (status, listed) = ctx.get_json("/api/v1/playbooks").await?;
    let mut all = vec![Outcome {
        ok: status == 200 && !listed.to_string().contains(&name),
        seen: format!("list {status} without it"),
    }];
    for path in [
        format!("/api/v1/playbooks/{name}"),
        format!("/api/v1/playbooks/{name}/versions/1"),
    ] {
        all.push(problem(
            ctx.get_json(&path).await?,
            404,
            "playbook_not_found",
        ));
    }
    let by_name = json!({"playbook": {"name": name}, "input": {"who": "a"}});
    let run = ctx.post_json("/api/v1/executions", &by_name).await?;
    all.push(problem(run, 404, "playbook_not_found"));
    Ok(every(all))
}

/// A publishes under the name of B's playbook: A gets a playbook of its own, B's stays.
pub async fn catalog_overwrite(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let name = b_publishes(&ctx).await?;
    let mine = json!({"name": name, "steps": [{"name": "a-step", "action": "noop"}]});
    let (status, published) = ctx.post_json("/api/v1/playbooks", &mine).await?;
    let version = published["version"].as_u64().unwrap_or_default();
    let (b_version, b_step) = b_latest(&ctx, &name).await?;
    Ok(Outcome {
        ok: status == 201 && version == 1 && b_version == 1 && b_step == "b-step",
        seen: format!("A {status} v{version}; B v{b_version} {b_step}"),
    })
}

/// One execution of one `http` step to `url` in `pool`, run to its end: its `fetch` step
/// failed with `egress_denied`.
async fn denied(ctx: &Ctx, pool: &str, url: &str) -> anyhow::Result<Outcome> {
    let view: Value = ctx
        .run_to_end(&json!({"playbook": {"name": "egress", "steps": [
            {"name": "fetch", "action": "http", "pool": pool, "with": {"url": url}}
        ]}}))
        .await?;
    Ok(step_failed(&view, "fetch", "egress_denied"))
}

/// Each of `urls` from the default pool, at once.
async fn all_denied(ctx: &Ctx, urls: Vec<String>) -> anyhow::Result<Outcome> {
    let runs = urls.iter().map(|url| denied(ctx, "default", url));
    let all = futures::future::try_join_all(runs).await?;
    Ok(every(all))
}

/// The local HTTP target listens on loopback: reachable from the `fetch` pool, not the default.
pub async fn egress_loopback(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let port = ctx.target.rsplit(':').next().unwrap_or_default().to_owned();
    all_denied(
        &ctx,
        vec![
            format!("http://127.0.0.1:{port}/text/10"),
            format!("http://localhost:{port}/text/10"),
            format!("http://[::ffff:127.0.0.1]:{port}/text/10"),
        ],
    )
    .await
}

pub async fn egress_metadata(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    all_denied(
        &ctx,
        vec!["http://169.254.169.254/latest/meta-data/".to_owned()],
    )
    .await
}

/// Private and unique-local ranges, and the cluster's own NATS port.
pub async fn egress_private(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let nats = ctx.nats.server_info().port.to_string();
    all_denied(
        &ctx,
        vec![
            "http://10.0.0.1/".to_owned(),
            "http://192.168.1.1/".to_owned(),
            "http://[fd00::1]/".to_owned(),
            format!("http://127.0.0.1:{nats}/"),
        ],
    )
    .await
}

/// The `fetch` pool may reach the target, which redirects to the metadata address: every
/// redirect is checked as the first request was.
pub async fn egress_redirect(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let url = format!(
        "{}/redirect?http://169.254.169.254/latest/meta-data/",
        ctx.target
    );
    denied(&ctx, "fetch", &url).await
}

/// A fills its quota of executions in flight with sleeping ones, submitting until refused (at
/// most twice the quota: one shard full, the other nearly). The refusal is 429
/// `tenant_quota_exceeded`, and B's submit right after it is stored. A's executions are
/// cancelled at the end.
pub async fn in_flight_quota(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let hold = json!({"playbook": {"name": "hold", "steps": [
        {"name": "nap", "action": "sleep", "with": {"ms": 120_000}}
    ]}});
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..=2 * ctx.tenant_max_executions_in_flight {
        let (status, receipt) = ctx.post_json("/api/v1/executions", &hold).await?;
        match receipt["execution_id"].as_str() {
            Some(id) if status == 201 => held.push(id.to_owned()),
            _ => {
                refused = Some((status, receipt));
                break;
            }
        }
    }
    let b_request = ctx
        .request_as(TOKEN_B, Method::POST, "/api/v1/executions")
        .json(&json!({"playbook": {"name": "b-while-a-is-full", "steps": [
            {"name": "b-step", "action": "noop"}
        ]}}));
    let (b_status, b_receipt) = Ctx::answer(b_request).await?;
    for id in &held {
        let (status, body) = ctx
            .post_json(&format!("/api/v1/executions/{id}/cancel"), &json!({}))
            .await?;
        anyhow::ensure!(status == 200, "cancel answered {status}: {body}");
    }
    let quota = problem(
        refused.unwrap_or((201, Value::Null)),
        429,
        "tenant_quota_exceeded",
    );
    Ok(Outcome {
        ok: quota.ok && held.len() >= ctx.tenant_max_executions_in_flight && b_status == 201,
        seen: format!(
            "{} after {} in flight; B {b_status}{}",
            quota.seen,
            held.len(),
            if b_status == 201 {
                String::new()
            } else {
                format!(" {b_receipt}")
            }
        ),
    })
}

/// A submits a step to B's pool (`pool_tenants`), and a `shell` step (open to no token's
/// tenant): each is refused with 403 `pool_forbidden` before anything is stored.
pub async fn pools(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let mut all = Vec::new();
    for step in [
        json!({"name": "borrow", "action": "noop", "pool": "b-only"}),
        json!({"name": "ls", "action": "shell", "with": {"argv": ["ls"]}}),
    ] {
        let body = json!({"playbook": {"name": "pools", "steps": [step]}});
        let seen = ctx.post_json("/api/v1/executions", &body).await?;
        all.push(problem(seen, 403, "pool_forbidden"));
    }
    Ok(every(all))
}
