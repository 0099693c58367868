//! `noetlctl bench`: loads a running cluster through its gateway with single-`noop`-step
//! executions from `--concurrency` clients for `--seconds`, then follows every one to its end.
//! Reports committed submits/s and submit latency (HDR histogram: p50, p90, p99, p99.9), and
//! end-to-end executions/s and latency from the executions' own `created_at`/`updated_at`.
//! The full harness with baselines and peers is `make bench` (the `noetl-bench` binary).

use clap::Args;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use noetl_contract::ExecutionId;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use noetl_contract::message::ExecutionView;

use crate::follow::fetch;
use crate::http::{Error, Gateway};
use crate::render::print_json;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Submits in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// How long to submit.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Only submit: do not follow the executions to their end.
    #[arg(long)]
    pub no_follow: bool,
    /// Give up following after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub follow_timeout: u64,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How often an unfinished execution is read again while following.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Deserialize)]
struct Submitted {
    execution_id: ExecutionId,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid bounds")
}

/// p50, p90, p99, p99.9 and max in milliseconds of a histogram of microseconds.
fn quantiles(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({"p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
           "max_ms": h.max() as f64 / 1000.0})
}

async fn submit_one(gateway: &Gateway, body: &Value) -> Result<ExecutionId, Error> {
    let request = gateway
        .request(Method::POST, gateway.url(&["executions"], &[])?)
        .json(body);
    let (_, submitted): (Value, Submitted) = gateway.json(request).await?;
    Ok(submitted.execution_id)
}

/// Reads the execution until it is terminal.
async fn follow(
    gateway: &Gateway,
    id: ExecutionId,
    until: Instant,
) -> Result<ExecutionView, Error> {
    loop {
        let (_, execution) = fetch(gateway, id).await?;
        if execution.status.is_terminal() {
            return Ok(execution);
        }
        if Instant::now() > until {
            return Err(Error::Transport(format!(
                "execution {id} did not end in time ({})",
                execution.status.as_str()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn unix_seconds(rfc3339: &str) -> Option<f64> {
    let at = OffsetDateTime::parse(rfc3339, &Rfc3339).ok()?;
    Some(at.unix_timestamp_nanos() as f64 / 1e9)
}

pub async fn run(gateway: &Gateway, args: BenchArgs) -> Result<u8, Error> {
    let concurrency = args.concurrency.max(1);
    let body = json!({
        "playbook": {"name": "noetlctl-bench", "steps": [{"name": "noop", "action": "noop"}]},
        "labels": {"bench": "noetlctl"}
    });
    let seconds = Duration::from_secs(args.seconds);
    eprintln!(
        "submitting single-noop executions from {} client(s) for {} s…",
        concurrency, args.seconds
    );
    let started = Instant::now();
    let deadline = started + seconds;
    let clients = (0..concurrency).map(|_| {
        let (gateway, body) = (gateway.clone(), body.clone());
        tokio::spawn(async move {
            let (mut latency, mut ids, mut errors) = (histogram(), Vec::new(), 0u64);
            while Instant::now() < deadline {
                let sent = Instant::now();
                match submit_one(&gateway, &body).await {
                    Ok(id) => {
                        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        latency.saturating_record(micros.max(1));
                        ids.push(id);
                    }
                    Err(_) => errors += 1,
                }
            }
            (latency, ids, errors)
        })
    });
    let (mut submit_latency, mut ids, mut errors) = (histogram(), Vec::new(), 0u64);
    for client in futures::future::join_all(clients).await {
        let (latency, client_ids, client_errors) =
            client.map_err(|e| Error::Unexpected(format!("a client task failed: {e}")))?;
        submit_latency
            .add(latency)
            .map_err(|e| Error::Unexpected(e.to_string()))?;
        ids.extend(client_ids);
        errors += client_errors;
    }
    let submit_seconds = started.elapsed().as_secs_f64();
    let mut report = json!({
        "concurrency": concurrency,
        "submits": ids.len(),
        "submit_errors": errors,
        "submits_per_second": ids.len() as f64 / submit_seconds,
        "submit_latency": quantiles(&submit_latency),
    });
    if !args.no_follow {
        eprintln!("following {} executions to their end…", ids.len());
        let until = Instant::now() + Duration::from_secs(args.follow_timeout);
        let ended: Vec<Result<ExecutionView, Error>> = futures::stream::iter(ids.iter().copied())
            .map(|id| follow(gateway, id, until))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let (mut e2e, mut first, mut last, mut failed) = (histogram(), f64::MAX, 0f64, 0u64);
        for execution in ended {
            let execution = execution?;
            if let (Some(created), Some(updated)) = (
                unix_seconds(&execution.created_at),
                unix_seconds(&execution.updated_at),
            ) {
                e2e.saturating_record((((updated - created) * 1e6) as u64).max(1));
                first = first.min(created);
                last = last.max(updated);
            }
            if execution.status.as_str() != "succeeded" {
                failed += 1;
            }
        }
        report["failed"] = json!(failed);
        report["e2e_per_second"] = json!(if last > first {
            ids.len() as f64 / (last - first)
        } else {
            0.0
        });
        report["e2e_latency"] = quantiles(&e2e);
    }
    if args.json {
        print_json(&report);
    } else {
        print!("{}", render(&report));
    }
    Ok(0)
}

fn render(report: &Value) -> String {
    let line = |name: &str, rate: &Value, latency: &Value| {
        format!(
            "{name:<28} {:>10.0}/s   p50 {:>8.2} ms   p90 {:>8.2} ms   p99 {:>8.2} ms   p99.9 {:>8.2} ms\n",
            rate.as_f64().unwrap_or(0.0),
            latency["p50_ms"].as_f64().unwrap_or(0.0),
            latency["p90_ms"].as_f64().unwrap_or(0.0),
            latency["p99_ms"].as_f64().unwrap_or(0.0),
            latency["p999_ms"].as_f64().unwrap_or(0.0),
        )
    };
    let mut out = format!(
        "{} submits from {} client(s), {} errors\n",
        report["submits"], report["concurrency"], report["submit_errors"]
    );
    out.push_str(&line(
        "submit (committed)",
        &report["submits_per_second"],
        &report["submit_latency"],
    ));
    if report.get("e2e_latency").is_some() {
        out.push_str(&line(
            "end to end (submit → end)",
            &report["e2e_per_second"],
            &report["e2e_latency"],
        ));
        out.push_str(&format!("{} did not succeed\n", report["failed"]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_renders_both_lines_when_followed() {
        let mut h = histogram();
        h.saturating_record(2_000);
        let report = json!({"concurrency": 4, "submits": 10, "submit_errors": 0,
            "submits_per_second": 100.0, "submit_latency": quantiles(&h),
            "failed": 0, "e2e_per_second": 50.0, "e2e_latency": quantiles(&h)});
        let text = render(&report);
        assert!(text.contains("submit (committed)"), "{text}");
        assert!(text.contains("end to end"), "{text}");
        assert!(text.contains("p50     2.00 ms"), "{text}");
    }

    #[test]
    fn rfc3339_times_become_unix_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:01.5Z"), Some(1.5));
        assert_eq!(unix_seconds("not a time"), None);
    }
}
