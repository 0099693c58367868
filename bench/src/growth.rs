//! Growth: submit and first-page listing on one shard as it fills from empty to millions of
//! stored executions, loaded between checkpoints with [`crate::list::bulk_load`], not through the
//! API, and settled ([`crate::list::settle`]) before each checkpoint is measured. Cost per
//! execution (CPU seconds of every process per 1,000 submits) should stay flat.
//!
//! Each checkpoint measures submits twice: as fast as the clients can, and paced to one fixed
//! rate (half of what the empty shard sustained). Cost per operation falls as load rises (more
//! work per batch, per wake-up, per system call, in every process, the gateway and NATS too), so
//! only the paced figures compare the shard's size alone; the unpaced ones mix in the rate.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::Cluster;
use crate::{load, submit_run, Phase, SubmitRun};

#[derive(Debug, Serialize)]
pub struct GrowthPoint {
    /// Executions the shard held when this checkpoint's phases began.
    pub stored_executions: i64,
    pub load_seconds: f64,
    pub submit: SubmitRun,
    /// Submits paced to [`Growth::paced_rate`], the same at every checkpoint.
    pub paced_submit: SubmitRun,
    pub list_first_page: Phase,
}

#[derive(Debug, Serialize)]
pub struct Growth {
    pub points: Vec<GrowthPoint>,
    /// Submits/s of every checkpoint's paced phase: half the first checkpoint's unpaced rate.
    pub paced_rate: f64,
    /// CPU per 1,000 submits at the last checkpoint ÷ at the first, unpaced.
    pub cost_ratio_last_to_first: f64,
    /// The same at the paced rate: the shard's size alone.
    pub paced_cost_ratio_last_to_first: f64,
    pub submit_p50_ratio_last_to_first: f64,
    pub submit_rate_ratio_last_to_first: f64,
}

pub async fn run(
    cluster: &Cluster,
    http: &reqwest::Client,
    checkpoints: &[usize],
    concurrency: usize,
    list_concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Growth> {
    let mut loaded = 0usize;
    let mut points = Vec::new();
    let mut paced_rate = None;
    for (index, &checkpoint) in checkpoints.iter().enumerate() {
        let more = checkpoint.saturating_sub(loaded);
        let started = Instant::now();
        if more > 0 {
            eprintln!("growth: loading {more} executions into one shard (to {checkpoint})…");
            // A node id per load keeps the ids of different loads apart.
            crate::list::bulk_load(&cluster.pools, more, 1_001 + u32::try_from(index)?).await?;
            loaded = checkpoint;
        } else {
            crate::list::settle(&cluster.pools).await?;
        }
        let load_seconds = started.elapsed().as_secs_f64();
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM executions")
            .fetch_one(&cluster.pools[0])
            .await?;
        let submit = submit_run(cluster, http, concurrency, duration, None).await?;
        let rate = *paced_rate.get_or_insert(submit.phase.per_second / 2.0);
        eprintln!("growth: submits paced to {rate:.0}/s at {stored} stored…");
        let paced_submit = submit_run(cluster, http, concurrency, duration, Some(rate)).await?;
        eprintln!("growth: list first page at {stored} stored…");
        let url = format!("{}/api/v1/executions?limit=100", cluster.gateway);
        let client = http.clone();
        let list_first_page = load(
            "list first page (limit 100)",
            list_concurrency,
            duration,
            None,
            move || {
                let request = client.get(&url);
                async move {
                    match request.send().await {
                        Ok(r) if r.status().is_success() => {
                            r.json::<serde_json::Value>().await.is_ok_and(|body| {
                                body["executions"]
                                    .as_array()
                                    .is_some_and(|e| e.len() == 100)
                            })
                        }
                        _ => false,
                    }
                }
            },
        )
        .await;
        points.push(GrowthPoint {
            stored_executions: stored,
            load_seconds,
            submit,
            paced_submit,
            list_first_page,
        });
    }
    let ratio = |f: &dyn Fn(&GrowthPoint) -> f64| match (points.first(), points.last()) {
        (Some(first), Some(last)) if f(first) > 0.0 => f(last) / f(first),
        _ => 0.0,
    };
    Ok(Growth {
        paced_rate: paced_rate.unwrap_or(0.0),
        cost_ratio_last_to_first: ratio(&|p| p.submit.cpu_seconds_per_1000_total),
        paced_cost_ratio_last_to_first: ratio(&|p| p.paced_submit.cpu_seconds_per_1000_total),
        submit_p50_ratio_last_to_first: ratio(&|p| p.submit.phase.latency.p50_ms),
        submit_rate_ratio_last_to_first: ratio(&|p| p.submit.phase.per_second),
        points,
    })
}
