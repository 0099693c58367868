//! The results: a row per attack (outcome, B's errors and p99 against its baseline, restarts,
//! peak resident memory), printed as markdown and written as `results.md` and `results.json`.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

/// The bounds every row is checked against.
#[derive(Debug, Clone, Serialize)]
pub struct Bounds {
    /// B's p99 during an attack may be at most this many times its baseline…
    pub p99_factor: f64,
    /// …where the baseline counts as at least this much (a few-ms baseline on a shared
    /// machine would make any check flaky).
    pub p99_floor_ms: u64,
    /// Peak resident memory of each of gateway, server, worker and nats-server.
    pub rss_mib: u64,
    /// B's executions each window (the baseline's too) must hold: at least 100, so that its
    /// p99 is not simply its slowest.
    pub min_samples: usize,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub finding: String,
    pub attack: String,
    pub expected: String,
    pub seen: String,
    pub outcome_ok: bool,
    /// B's executions submitted in the attack's window, those that failed, and a few reasons.
    pub b_executions: usize,
    pub b_errors: usize,
    pub b_error_examples: Vec<String>,
    pub b_p99_ms: u64,
    /// B's slowest execution in the window: its latency and where the time went.
    pub b_slowest: Option<String>,
    /// The worst stall of the host the control probe saw in the window, if any.
    pub host_stall: Option<String>,
    /// Set when the row was measured again (its first window failed only B's p99, during a
    /// stall of the host): what the first window measured. The row's other fields are the
    /// second window's.
    pub remeasured: Option<String>,
    /// Processes that exited or changed pid by the end of the window.
    pub restarts: Vec<String>,
    /// Peak resident memory (MiB) in the window, in the order of `Report::processes`.
    pub peak_rss_mib: Vec<u64>,
    pub window_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub bounds: Bounds,
    /// B's executions per second.
    pub rate: u32,
    pub baseline_executions: usize,
    pub baseline_errors: usize,
    pub baseline_p99_ms: u64,
    /// Set when the baseline was measured again, after a stall of the host: what the first
    /// measurement was.
    pub baseline_remeasured: Option<String>,
    /// The watched processes, in the order of each row's `peak_rss_mib`.
    pub processes: Vec<String>,
    /// Lifetime peak (`VmHWM`) of each, read at the end.
    pub lifetime_peak_mib: Vec<u64>,
    pub rows: Vec<Row>,
    pub not_covered: Vec<String>,
}

impl Report {
    /// B's p99 limit in any attack's window.
    pub fn p99_limit_ms(&self) -> u64 {
        let base = self.baseline_p99_ms.max(self.bounds.p99_floor_ms) as f64;
        (base * self.bounds.p99_factor).round() as u64
    }

    /// The row's p99 over the (floored) baseline.
    fn ratio(&self, row: &Row) -> f64 {
        row.b_p99_ms as f64 / self.baseline_p99_ms.max(self.bounds.p99_floor_ms) as f64
    }

    pub fn row_passed(&self, row: &Row) -> bool {
        self.passed_but_latency(row) && row.b_p99_ms <= self.p99_limit_ms()
    }

    /// Every check of the row but B's p99 holds.
    fn passed_but_latency(&self, row: &Row) -> bool {
        row.outcome_ok
            && row.b_executions >= self.bounds.min_samples
            && row.b_errors == 0
            && row.restarts.is_empty()
            && row
                .peak_rss_mib
                .iter()
                .all(|mib| *mib <= self.bounds.rss_mib)
    }

    /// The row failed on B's p99 alone, while the control probe saw the host stall, and was
    /// not measured again yet: it may be, once. An error of B's (a quota refusal too), a wrong
    /// outcome, a restart or memory over the bound is never measured again.
    pub fn may_remeasure(&self, row: &Row) -> bool {
        row.remeasured.is_none()
            && row.host_stall.is_some()
            && self.passed_but_latency(row)
            && !self.row_passed(row)
    }

    /// Every row passed, and no process's lifetime peak went over the bound (a spike shorter
    /// than the sampling interval shows only there).
    pub fn passed(&self) -> bool {
        self.baseline_errors == 0
            && self.baseline_executions >= self.bounds.min_samples
            && self
                .lifetime_peak_mib
                .iter()
                .all(|mib| *mib <= self.bounds.rss_mib)
            && !self.rows.is_empty()
            && self.rows.iter().all(|row| self.row_passed(row))
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "noetl-hostile: tenant A attacks while tenant B submits {} executions/s; B's baseline: {} executions, {} errors, p99 {} ms (submit to terminal). Bounds: B's p99 <= {} x max(baseline, {} ms) = {} ms; 0 errors; 0 restarts; peak RSS <= {} MiB each ({}).\n",
            self.rate,
            self.baseline_executions,
            self.baseline_errors,
            self.baseline_p99_ms,
            self.bounds.p99_factor,
            self.bounds.p99_floor_ms,
            self.p99_limit_ms(),
            self.bounds.rss_mib,
            self.processes.join(", ")
        );
        let _ = writeln!(
            out,
            "| # | attack | expected | seen | B errors | B p99 (x floored baseline) | restarts | peak RSS MiB ({}) | result |",
            self.processes.join(" / ")
        );
        let _ = writeln!(out, "|---|---|---|---|---:|---:|---:|---|---|");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} of {} | {} ms ({:.1}x) | {} | {} | {} |",
                row.finding,
                cell(&row.attack),
                cell(&row.expected),
                cell(&format!(
                    "{} {}",
                    if row.outcome_ok { "yes:" } else { "NO:" },
                    row.seen
                )),
                row.b_errors,
                row.b_executions,
                row.b_p99_ms,
                self.ratio(row),
                if row.restarts.is_empty() {
                    "0".to_owned()
                } else {
                    row.restarts.join(", ")
                },
                row.peak_rss_mib
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" / "),
                match (self.row_passed(row), &row.remeasured) {
                    (true, None) => "pass",
                    (true, Some(_)) => "pass (measured again)",
                    (false, _) => "FAIL",
                }
            );
        }
        let _ = writeln!(
            out,
            "\nlifetime peak RSS (VmHWM) MiB: {}",
            self.processes
                .iter()
                .zip(&self.lifetime_peak_mib)
                .map(|(name, mib)| format!("{name} {mib}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for row in self.rows.iter().filter(|r| !r.b_error_examples.is_empty()) {
            let _ = writeln!(
                out,
                "B's errors during \"{}\": {}",
                row.attack,
                row.b_error_examples.join("; ")
            );
        }
        if let Some(first) = &self.baseline_remeasured {
            let _ = writeln!(out, "baseline measured again: {first}");
        }
        for row in &self.rows {
            if let Some(first) = &row.remeasured {
                let _ = writeln!(out, "measured again: \"{}\": {first}", row.attack);
            }
            if let Some(slowest) = row.b_slowest.as_ref().filter(|_| !self.row_passed(row)) {
                let host = row.host_stall.as_deref().unwrap_or("none");
                let _ = writeln!(
                    out,
                    "B's slowest during \"{}\": {slowest}; host stall (probe): {host}",
                    row.attack
                );
            }
        }
        let _ = writeln!(
            out,
            "no row (each says why): {}",
            self.not_covered.join("; ")
        );
        let _ = writeln!(
            out,
            "\nresult: {}",
            if self.passed() {
                "PASS: every attack got its documented outcome; B saw no error nor slowdown; nothing restarted; memory within bounds"
            } else {
                "FAIL"
            }
        );
        out
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        noetl_chaos::write_results(dir, self.markdown(), self)
    }
}

/// Text safe in a markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(b_p99_ms: u64) -> Row {
        Row {
            finding: "1".to_owned(),
            attack: "loops | more".to_owned(),
            expected: "400 x".to_owned(),
            seen: "400 x".to_owned(),
            outcome_ok: true,
            b_executions: 60,
            b_errors: 0,
            b_error_examples: Vec::new(),
            b_p99_ms,
            b_slowest: None,
            host_stall: None,
            remeasured: None,
            restarts: Vec::new(),
            peak_rss_mib: vec![30, 40, 20],
            window_ms: 3_000,
        }
    }

    fn report(rows: Vec<Row>) -> Report {
        Report {
            bounds: Bounds {
                p99_factor: 5.0,
                p99_floor_ms: 250,
                rss_mib: 512,
                min_samples: 60,
            },
            rate: 20,
            baseline_executions: 100,
            baseline_errors: 0,
            baseline_p99_ms: 100,
            baseline_remeasured: None,
            processes: vec!["gateway".into(), "server".into(), "worker".into()],
            lifetime_peak_mib: vec![31, 41, 21],
            rows,
            not_covered: vec!["9: later".to_owned()],
        }
    }

    #[test]
    fn the_p99_is_checked_against_the_floored_baseline() {
        assert_eq!(report(Vec::new()).p99_limit_ms(), 1_250);
        assert!(report(vec![row(1_250)]).passed());
        assert!(!report(vec![row(1_251)]).passed());
        assert!(!report(Vec::new()).passed(), "no rows, no pass");
    }

    #[test]
    fn an_error_a_restart_a_wrong_outcome_or_memory_over_the_bound_fails_the_row() {
        let mut errors = row(10);
        errors.b_errors = 1;
        let mut restarted = row(10);
        restarted.restarts = vec!["server".to_owned()];
        let mut wrong = row(10);
        wrong.outcome_ok = false;
        let mut memory = row(10);
        memory.peak_rss_mib[1] = 513;
        let mut few = row(10);
        few.b_executions = 59;
        for failing in [errors, restarted, wrong, memory, few] {
            assert!(!report(vec![failing]).passed());
        }
        let mut spike = report(vec![row(10)]);
        spike.lifetime_peak_mib[0] = 513;
        assert!(!spike.passed(), "a peak between two samples still counts");
    }

    #[test]
    fn the_table_has_a_row_per_attack() {
        let table = report(vec![row(500)]).markdown();
        assert!(
            table.contains("| 1 | loops / more | 400 x | yes: 400 x | 0 of 60 | 500 ms (2.0x) | 0 | 30 / 40 / 20 | pass |"),
            "{table}"
        );
        assert!(table.contains("PASS"), "{table}");
    }

    #[test]
    fn only_a_slow_row_during_a_host_stall_is_measured_again_and_only_once() {
        let report = report(Vec::new());
        let mut slow = row(5_088);
        assert!(
            !report.may_remeasure(&slow),
            "no stall of the host: a failure"
        );
        slow.host_stall = Some("cpu 4800 ms".to_owned());
        assert!(report.may_remeasure(&slow));
        let mut quota = row(5_088);
        quota.host_stall = slow.host_stall.clone();
        quota.b_errors = 3;
        assert!(
            !report.may_remeasure(&quota),
            "B's errors (429 tenant_quota_exceeded) fail the row, stall or not"
        );
        let mut fast = row(10);
        fast.host_stall = slow.host_stall.clone();
        assert!(!report.may_remeasure(&fast), "it passed");
        let mut again = slow;
        again.remeasured = Some("first window: p99 5088 ms".to_owned());
        assert!(!report.may_remeasure(&again), "once");
        let mut twice = self::report(vec![again]);
        assert!(!twice.passed(), "still slow the second time: a failure");
        twice.rows[0].b_p99_ms = 300;
        assert!(twice.passed());
        assert!(
            twice.markdown().contains("| pass (measured again) |")
                && twice
                    .markdown()
                    .contains("measured again: \"loops | more\": first window"),
            "{}",
            twice.markdown()
        );
    }
}
