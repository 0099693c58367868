//! `results.md`: the tables, the ratios and the targets of one run.

use std::fmt::Write as _;

use super::{Results, Summary};
use crate::{Percentiles, Phase};

/// Submit p99 target at half of the peak submit rate.
const SUBMIT_P99_TARGET_MS: f64 = 10.0;
/// End-to-end single-step executions/s over the better peer's.
const PEER_RATIO_TARGET: f64 = 3.0;
/// Cost per execution, 5M stored vs empty.
const GROWTH_COST_TOLERANCE: f64 = 0.2;
/// End-to-end single-step executions/s on a 2-core machine (issue 3).
const SINGLE_STEP_TARGET_PER_SECOND: f64 = 5_000.0;
/// Dispatch latency p50, command committed → worker started (issue 3).
const DISPATCH_P50_TARGET_MS: f64 = 2.0;

fn n(value: f64) -> String {
    if value >= 100.0 {
        let whole = value.round() as i64;
        let digits = whole.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn list(values: &[usize]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn opt(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.3}"))
}

/// p50, p90, p99 and p99.9 in ms, as four cells.
fn percentiles(p: &Percentiles) -> String {
    format!(
        "{} | {} | {} | {}",
        n(p.p50_ms),
        n(p.p90_ms),
        n(p.p99_ms),
        n(p.p999_ms)
    )
}

/// A table of phases, one a row (the name with `note` after it): rate, p50, p99 and p99.9.
fn phase_table<'a>(
    md: &mut String,
    (what, rate): (&str, &str),
    phases: impl IntoIterator<Item = (&'a Phase, &'a str)>,
) {
    let _ = writeln!(
        md,
        "| {what} | {rate} | p50 ms | p99 ms | p99.9 ms |\n|---|---|---|---|---|"
    );
    for (p, note) in phases {
        let _ = writeln!(
            md,
            "| {}{note} | {} | {} | {} | {} |",
            p.name,
            n(p.per_second),
            n(p.latency.p50_ms),
            n(p.latency.p99_ms),
            n(p.latency.p999_ms)
        );
    }
}

pub(super) fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let s = r.summary.as_ref();
    let _ = writeln!(md, "# noetl-bench results, {}\n", r.started_utc);
    let _ = writeln!(
        md,
        "Machine: {} CPUs ({}), {:.0} GiB, Linux {}; PostgreSQL durable: {}; worker concurrency {} (end to end), {} (peers); run took {:.0} s{}.\n",
        r.machine.cpus,
        r.machine.cpu_model,
        r.machine.memory_gib,
        r.machine.kernel,
        r.durable_postgres,
        list(&r.worker_concurrency),
        r.peer_worker_concurrency,
        r.total_seconds,
        if r.quick { " (quick mode: checks the harness, not a speed)" } else { "" }
    );
    let _ = writeln!(md, "Command: `{}`\n", r.command);

    if let Some(b) = &r.baselines {
        let _ = writeln!(md, "## Baselines (same run)\n");
        phase_table(
            &mut md,
            ("baseline", "ops/s"),
            [
                (&b.nats_request_reply, ""),
                (&b.jetstream_publish, ""),
                (&b.postgres_batched_insert, " (batches)"),
            ],
        );
        let _ = writeln!(
            md,
            "\nPostgreSQL rows/s ({} per batch, one durable commit each): {}.\n",
            crate::baselines::PG_BATCH,
            n(b.postgres_rows_per_second)
        );
        if let Some(s) = s {
            let _ = writeln!(
                md,
                "Peak committed submits/s ({}, {} shard(s)) ÷ raw NATS request/reply = {}, ÷ JetStream publish = {}, ÷ PostgreSQL rows inserted = {}.\n",
                n(s.peak_submits_per_second),
                s.peak_submit_shards,
                opt(s.submit_to_nats_request_reply),
                opt(s.submit_to_jetstream_publish),
                opt(s.submit_to_postgres_rows)
            );
        }
    }

    let _ = writeln!(md, "## Submit only (committed, `201 Created`)\n");
    let _ = writeln!(
        md,
        "| shards | clients | paced to /s | submits/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | CPU s / 1,000 |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for run in &r.submit {
        let p = &run.phase;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            run.shards,
            run.client_concurrency,
            run.target_rate.map_or_else(|| "–".to_owned(), n),
            n(p.per_second),
            percentiles(&p.latency),
            p.errors,
            n(run.cpu_seconds_per_1000_total)
        );
    }

    let _ = writeln!(
        md,
        "\n## End to end (submit → terminal), from the shard databases' timestamps\n"
    );
    let _ = writeln!(
        md,
        "| scenario | shards | worker concurrency | clients | executions | executions/s | steps/s | e2e p50 ms | p90 | p99 | p99.9 | dispatch p50 ms | dispatch p99 | failed | CPU s / 1,000 |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for e in &r.e2e {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            e.name,
            e.shards,
            e.worker_concurrency,
            e.client_concurrency,
            e.executions,
            n(e.executions_per_second),
            n(e.executions_per_second * e.steps_per_execution as f64),
            percentiles(&e.e2e),
            n(e.dispatch.p50_ms),
            n(e.dispatch.p99_ms),
            e.failed,
            n(e.cpu_seconds_per_1000_total)
        );
    }

    cpu_breakdown(&mut md, r);

    if let Some(peers) = &r.peers {
        let _ = writeln!(
            md,
            "\n## Peers: the same no-op work (one task per execution), worker concurrency {}\n",
            r.peer_worker_concurrency
        );
        if let Some(reason) = &peers.skipped {
            let _ = writeln!(md, "Peers {reason}.\n");
        }
        let first_shards = r.e2e.first().map_or(1, |e| e.shards);
        let _ = writeln!(
            md,
            "| peer | clients | tasks | tasks/s | p50 ms | p90 | p99 | p99.9 | failed | CPU s / 1,000 | ours (noop-1, {first_shards} shard, worker concurrency {}) ÷ peer |\n|---|---|---|---|---|---|---|---|---|---|---|",
            r.peer_worker_concurrency
        );
        for peer in &peers.peers {
            if let Some(error) = &peer.error {
                let _ = writeln!(
                    md,
                    "| {} | – | – | – | – | – | – | – | – | – | error: {} |",
                    peer.name,
                    error.replace('|', "/")
                );
            }
            for run in &peer.runs {
                let ours = r
                    .e2e
                    .iter()
                    .find(|e| {
                        e.name == "noop-1"
                            && e.shards == first_shards
                            && e.worker_concurrency == peer.worker_concurrency
                            && e.client_concurrency == run.client_concurrency
                    })
                    .map(|e| e.executions_per_second);
                let _ = writeln!(
                    md,
                    "| {} ({}) | {} | {} | {} | {} | {} | {} | {} |",
                    peer.name,
                    peer.version,
                    run.client_concurrency,
                    run.executions,
                    n(run.executions_per_second),
                    percentiles(&run.e2e),
                    run.failed,
                    n(run.cpu_seconds_per_1000_total),
                    ours.map_or_else(
                        || "–".to_owned(),
                        |o| format!("{:.2}", o / run.executions_per_second.max(1e-9))
                    )
                );
            }
        }
        for peer in &peers.peers {
            if !peer.peak_memory.is_empty() {
                let mem: Vec<String> = peer
                    .peak_memory
                    .iter()
                    .map(|m| format!("{} {:.0} MiB", m.process, m.vm_hwm_mib))
                    .collect();
                let _ = writeln!(md, "\n{} peak memory: {}.", peer.name, mem.join(", "));
            }
        }
    }

    if let Some(g) = &r.growth {
        let _ = writeln!(
            md,
            "\n## Growth: one shard from empty to {} stored executions\n",
            g.points.last().map_or(0, |p| p.stored_executions)
        );
        let _ = writeln!(
            md,
            "| stored executions | load s | submits/s | submit p50 ms | p99 ms | p99.9 ms | CPU s / 1,000 submits | paced to {}/s: CPU s / 1,000 | paced p99 ms | list p50 ms | list p99 ms | lists/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|",
            n(g.paced_rate)
        );
        for p in &g.points {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                n(p.stored_executions as f64),
                n(p.load_seconds),
                n(p.submit.phase.per_second),
                n(p.submit.phase.latency.p50_ms),
                n(p.submit.phase.latency.p99_ms),
                n(p.submit.phase.latency.p999_ms),
                n(p.submit.cpu_seconds_per_1000_total),
                n(p.paced_submit.cpu_seconds_per_1000_total),
                n(p.paced_submit.phase.latency.p99_ms),
                n(p.list_first_page.latency.p50_ms),
                n(p.list_first_page.latency.p99_ms),
                n(p.list_first_page.per_second)
            );
        }
        let _ = writeln!(
            md,
            "\nLast ÷ first checkpoint: CPU per submit {:.2} at the same paced rate, {:.2} unpaced; unpaced submit p50 {:.2}, submits/s {:.2}.",
            g.paced_cost_ratio_last_to_first,
            g.cost_ratio_last_to_first,
            g.submit_p50_ratio_last_to_first,
            g.submit_rate_ratio_last_to_first
        );
    }

    if let Some(list) = &r.list {
        let _ = writeln!(
            md,
            "\n## Listing, {} executions per shard (loaded in {:.0} s)\n",
            list.rows_per_shard, list.load_seconds
        );
        phase_table(
            &mut md,
            ("phase", "pages/s"),
            list.phases.iter().map(|p| (p, "")),
        );
    }

    let _ = writeln!(
        md,
        "\n## Peak memory (VmHWM; the largest process of each tree)\n"
    );
    let names: Vec<String> = r
        .memory
        .first()
        .map(|m| m.peak.iter().map(|p| p.process.clone()).collect())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "| shards | mean commit batch | {} |",
        names.join(" MiB | ") + " MiB"
    );
    let _ = writeln!(md, "|---|---|{}", "---|".repeat(names.len()));
    for m in &r.memory {
        let cells: Vec<String> = m
            .peak
            .iter()
            .map(|p| format!("{:.0}", p.vm_hwm_mib))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            m.shards,
            m.mean_commit_batch
                .map_or_else(|| "–".to_owned(), |b| format!("{b:.1}")),
            cells.join(" | ")
        );
    }

    if let Some(s) = s {
        targets(&mut md, s);
    }
    md
}

/// Where the CPU of the busiest run of each kind went.
fn cpu_breakdown(md: &mut String, r: &Results) {
    let mut rows: Vec<(String, &[crate::procs::ProcessCost])> = Vec::new();
    for run in r.submit.iter().filter(|run| run.target_rate.is_none()) {
        if r.submit
            .iter()
            .filter(|o| o.shards == run.shards && o.target_rate.is_none())
            .all(|o| o.client_concurrency <= run.client_concurrency)
        {
            rows.push((
                format!(
                    "submit, {} shard(s), {} clients",
                    run.shards, run.client_concurrency
                ),
                &run.cpu,
            ));
        }
    }
    for e in &r.e2e {
        if r.e2e
            .iter()
            .filter(|o| {
                o.shards == e.shards
                    && o.name == e.name
                    && o.worker_concurrency == e.worker_concurrency
            })
            .all(|o| o.client_concurrency <= e.client_concurrency)
        {
            rows.push((
                format!(
                    "{}, {} shard(s), worker concurrency {}, {} clients",
                    e.name, e.shards, e.worker_concurrency, e.client_concurrency
                ),
                &e.cpu,
            ));
        }
    }
    let Some((_, first)) = rows.first() else {
        return;
    };
    let names: Vec<&str> = first.iter().map(|c| c.process.as_str()).collect();
    let _ = writeln!(
        md,
        "\n## CPU seconds per 1,000 executions, per process (highest client concurrency)\n"
    );
    let _ = writeln!(
        md,
        "| run | {} |\n|---|{}",
        names.join(" | "),
        "---|".repeat(names.len())
    );
    for (name, costs) in rows {
        let cells: Vec<String> = costs
            .iter()
            .map(|c| format!("{:.3}", c.cpu_seconds_per_1000))
            .collect();
        let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
    }
}

/// "met", or how far `value` is below `target`.
fn shortfall(value: f64, target: f64) -> String {
    if value >= target {
        "met".to_owned()
    } else {
        format!(
            "missed, {:.0}% short ({:.2}× to go)",
            (1.0 - value / target) * 100.0,
            target / value.max(f64::MIN_POSITIVE)
        )
    }
}

fn targets(md: &mut String, s: &Summary) {
    let _ = writeln!(md, "\n## Targets\n");
    match (&s.best_peer, s.ours_over_best_peer) {
        (Some((peer, workers, rate)), Some(ratio)) => {
            let _ = writeln!(
                md,
                "- End-to-end single step ≥ {PEER_RATIO_TARGET}× the better peer at equal worker concurrency ({workers}): best noop-1 {} executions/s ÷ best peer {} ({} tasks/s) = **{ratio:.2}×**: {}.",
                n(s.best_e2e_single_at_peer_workers.unwrap_or(0.0)),
                peer,
                n(*rate),
                if ratio >= PEER_RATIO_TARGET { "met".to_owned() } else { format!("missed, {:.0}% short of {PEER_RATIO_TARGET}×", (1.0 - ratio / PEER_RATIO_TARGET) * 100.0) }
            );
        }
        _ => {
            let _ = writeln!(md, "- End-to-end single step ≥ {PEER_RATIO_TARGET}× the better peer: not measured (no peer ran).");
        }
    }
    let _ = writeln!(
        md,
        "- End-to-end single step ≥ {} executions/s: best noop-1 **{}/s** ({} shard(s), worker concurrency {}): {}.",
        n(SINGLE_STEP_TARGET_PER_SECOND),
        n(s.best_e2e_single_per_second),
        s.best_e2e_single_shards,
        s.best_e2e_single_workers,
        shortfall(s.best_e2e_single_per_second, SINGLE_STEP_TARGET_PER_SECOND)
    );
    if let Some((shards, workers, clients, p50)) = s.lowest_single_dispatch_p50 {
        let verdict = if p50 <= DISPATCH_P50_TARGET_MS {
            "met".to_owned()
        } else {
            format!("missed by {:.2} ms", p50 - DISPATCH_P50_TARGET_MS)
        };
        let _ = writeln!(
            md,
            "- Dispatch p50 ≤ {DISPATCH_P50_TARGET_MS} ms (command committed → worker started): lowest noop-1 p50 **{p50:.2} ms** ({shards} shard(s), worker concurrency {workers}, {clients} client(s)): {verdict}.",
        );
    }
    for (shards, paced, achieved, p99) in &s.half_peak_submit_p99_ms {
        let _ = writeln!(
            md,
            "- Submit p99 < {SUBMIT_P99_TARGET_MS} ms at half of peak, {shards} shard(s) (paced to {}/s, achieved {}/s): p99 **{p99:.2} ms**: {}.",
            n(*paced),
            n(*achieved),
            if *p99 < SUBMIT_P99_TARGET_MS { "met".to_owned() } else { format!("missed by {:.2} ms ({:.1}×)", p99 - SUBMIT_P99_TARGET_MS, p99 / SUBMIT_P99_TARGET_MS) }
        );
    }
    if let (Some(unpaced), Some((rate, ratio))) = (s.growth_cost_ratio, s.growth_paced_cost_ratio) {
        let verdict = |ratio: f64| {
            if (ratio - 1.0).abs() <= GROWTH_COST_TOLERANCE {
                "met".to_owned()
            } else {
                format!(
                    "missed by {:.0} points",
                    ((ratio - 1.0).abs() - GROWTH_COST_TOLERANCE) * 100.0
                )
            }
        };
        let _ = writeln!(
            md,
            "- Cost per execution within ±{:.0}% from empty to the largest checkpoint: CPU per submit ratio at the same load ({}/s) **{ratio:.2}**: {}; as fast as the clients could (a rate that differs between checkpoints) {unpaced:.2}: {}.",
            GROWTH_COST_TOLERANCE * 100.0,
            n(rate),
            verdict(ratio),
            verdict(unpaced)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shortfall_says_how_far_from_the_target() {
        assert_eq!(shortfall(6_000.0, 5_000.0), "met");
        assert_eq!(shortfall(5_000.0, 5_000.0), "met");
        assert_eq!(
            shortfall(1_250.0, 5_000.0),
            "missed, 75% short (4.00× to go)"
        );
        assert_eq!(shortfall(0.0, 5_000.0).split(',').next(), Some("missed"));
    }
}
