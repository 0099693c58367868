//! Templates with no budget, values PostgreSQL cannot store, YAML aliases and unbounded
//! durations (findings 1, 3, 5 and 9 of issue 27): the strings are those of the e2e tests
//! (`e2e/tests/e2e/templates.rs`, `catalog.rs`).

use std::sync::Arc;

use serde_json::{json, Value};

use super::{every, problem, step_failed, Ctx, Outcome};

/// Nested loops of 10^10 iterations: the fuel stops them.
const NESTED_LOOPS: &str =
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}";
/// `~` doubling a string in a namespace, 40 times: a terabyte.
const DOUBLING: &str = "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}";
/// A list wrapped in itself 100 000 times (it once overflowed the server's stack).
const DEEP_LOOP: &str = "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}";
/// 2 MB from one multiplication.
const REPEATED: &str = "{{ 'a' * 2100000 }}";
const NUL: &str = "{{ '\\x00' }}";

/// A one-step playbook whose step renders `template` as `with.x` at submit.
fn first_step(template: &str) -> Value {
    json!({"playbook": {"name": "hostile", "steps": [
        {"name": "render", "action": "noop", "with": {"x": template}}
    ]}})
}

/// `template` rendered by a step that runs after another succeeded: when the first step's
/// report is applied, under the execution's row lock.
fn later_step(template: &str) -> Value {
    json!({"playbook": {"name": "hostile-later", "steps": [
        {"name": "first", "action": "noop"},
        {"name": "render", "action": "noop", "needs": ["first"],
         "with": {"x": template, "from": "{{ steps.first.result }}"}}
    ]}})
}

async fn refused(ctx: &Ctx, body: Value, status: u16, code: &str) -> anyhow::Result<Outcome> {
    Ok(problem(
        ctx.post_json("/api/v1/executions", &body).await?,
        status,
        code,
    ))
}

pub async fn nested_loops(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    refused(
        &ctx,
        first_step(NESTED_LOOPS),
        400,
        "template_budget_exceeded",
    )
    .await
}

pub async fn repeated(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    refused(&ctx, first_step(REPEATED), 400, "template_budget_exceeded").await
}

pub async fn doubling(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    refused(&ctx, first_step(DOUBLING), 400, "invalid_playbook").await
}

pub async fn deep_loop(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    refused(&ctx, first_step(DEEP_LOOP), 400, "invalid_playbook").await
}

pub async fn deep_literal(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let template = format!("{{{{ {}1{} }}}}", "[".repeat(40), "]".repeat(40));
    refused(&ctx, first_step(&template), 400, "template_budget_exceeded").await
}

pub async fn later_loops(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let view = ctx.run_to_end(&later_step(NESTED_LOOPS)).await?;
    Ok(step_failed(&view, "render", "template_budget_exceeded"))
}

pub async fn nul_first(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    refused(&ctx, first_step(NUL), 400, "unstorable_value").await
}

pub async fn nul_later(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let view = ctx.run_to_end(&later_step(NUL)).await?;
    Ok(step_failed(&view, "render", "unstorable_value"))
}

pub async fn backoff(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let body = json!({"playbook": {"name": "forever", "steps": [
        {"name": "fail", "action": "fail", "with": {"message": "{{ 'no' }}"},
         "retry": {"max_attempts": 2, "backoff": u64::MAX}}
    ]}});
    refused(&ctx, body, 400, "invalid_playbook").await
}

/// A body of about 50 KB whose `input.b` is 10,000 aliases of a list of 10,000 scalars.
pub async fn yaml_aliases(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let width = 10_000;
    let bomb = format!(
        "playbook:\n  name: laughs\n  steps:\n    - name: a\n      action: noop\ninput:\n  a: &a [{}]\n  b: [{}]\n",
        vec!["x"; width].join(","),
        vec!["*a"; width].join(",")
    );
    let seen = ctx
        .post_raw("/api/v1/executions", "application/yaml", bomb)
        .await?;
    Ok(problem(seen, 400, "yaml_expansion_limit"))
}

/// Each out-of-range duration and a duplicate `needs`, submitted and published.
pub async fn bounds(ctx: Arc<Ctx>) -> anyhow::Result<Outcome> {
    let cases = [
        json!([{"name": "s", "action": "noop", "timeout": u64::MAX}]),
        json!([{"name": "s", "action": "noop", "timeout": "8760h"}]),
        json!([{"name": "s", "action": "fail", "retry": {"max_attempts": 100, "backoff": u64::MAX}}]),
        json!([{"name": "s", "action": "sleep", "with": {"ms": u64::MAX}}]),
        json!([{"name": "s", "action": "noop"}, {"name": "t", "action": "noop", "needs": ["s", "s"]}]),
    ];
    let mut all = Vec::new();
    for steps in cases {
        let playbook = json!({"name": "bounded", "steps": steps});
        let submit = json!({ "playbook": playbook });
        all.push(refused(&ctx, submit, 400, "invalid_playbook").await?);
        let published = ctx.post_json("/api/v1/playbooks", &playbook).await?;
        all.push(problem(published, 400, "invalid_playbook"));
    }
    Ok(every(all))
}
