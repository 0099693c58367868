//! The results: one row per injection, a table per fault, written as markdown and JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::check::Duplicates;
use crate::faults::Fault;

#[derive(Debug, Serialize)]
pub struct Injection {
    pub fault: Fault,
    pub round: u32,
    pub detail: String,
    /// Injection to heal.
    pub fault_ms: u64,
    /// Executions not yet terminal when the fault was injected.
    pub in_flight: u64,
    /// Executions the clients were given from the injection until the backlog had drained.
    pub executions: usize,
    pub lost: u64,
    pub lost_ids: Vec<String>,
    pub duplicated: u64,
    pub misrouted: u64,
    /// Children of the parents submitted (`lost`, `duplicated` and `misrouted` count theirs).
    pub children: u64,
    /// Parents and children that do not name each other ([`crate::children::Family`]).
    pub mislinked: u64,
    /// Of the executions checked, those that ended `failed` (terminal, not lost).
    pub failed: u64,
    /// Heal to backlog drained; `None`: not within the deadline.
    pub recovery_ms: Option<u64>,
}

impl Injection {
    pub fn summary(&self) -> String {
        format!(
            "{} | in flight {} + submitted {} (+ {} children) | lost {} duplicated {} misrouted {} mislinked {} failed {} | recovery {}",
            self.detail,
            self.in_flight,
            self.executions,
            self.children,
            self.lost,
            self.duplicated,
            self.misrouted,
            self.mislinked,
            self.failed,
            seconds(self.recovery_ms)
        )
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: String,
    pub seed: u64,
    pub shards: u32,
    pub netns: bool,
    pub skipped: Vec<Fault>,
    pub seconds: u64,
    /// Executions the clients were given in the whole run.
    pub executions: usize,
    pub refused_submits: u64,
    pub failed_executions: u64,
    pub final_lost: u64,
    pub final_lost_ids: Vec<String>,
    pub final_duplicates: Duplicates,
    pub final_misrouted: u64,
    pub final_children: u64,
    pub final_mislinked: u64,
    pub final_drain_ms: Option<u64>,
    pub injections: Vec<Injection>,
}

fn seconds(ms: Option<u64>) -> String {
    ms.map_or_else(
        || "not recovered".to_owned(),
        |ms| format!("{:.1} s", ms as f64 / 1000.0),
    )
}

impl Report {
    pub fn passed(&self) -> bool {
        self.final_lost == 0
            && self.final_duplicates.total() == 0
            && self.final_misrouted == 0
            && self.final_mislinked == 0
            && self.final_drain_ms.is_some()
            && self.injections.iter().all(|i| {
                i.lost == 0
                    && i.duplicated == 0
                    && i.misrouted == 0
                    && i.mislinked == 0
                    && i.recovery_ms.is_some()
            })
    }

    pub fn markdown(&self) -> String {
        let mut by_fault: BTreeMap<Fault, Vec<&Injection>> = BTreeMap::new();
        for injection in &self.injections {
            by_fault.entry(injection.fault).or_default().push(injection);
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "noetl-chaos {} run: {} shards, seed {}, {} s, {} executions acknowledged to clients ({} submits refused or timed out while faults lasted, {} executions ended failed), and {} children of theirs ({} parent and child not naming each other)\n",
            self.mode,
            self.shards,
            self.seed,
            self.seconds,
            self.executions,
            self.refused_submits,
            self.failed_executions,
            self.final_children,
            self.final_mislinked
        );
        let _ = writeln!(
            out,
            "| fault | injections | executions during (in flight + submitted) | lost | duplicated | misrouted | recovery (mean / max) |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
        for (fault, rows) in &by_fault {
            let recovered: Vec<u64> = rows.iter().filter_map(|r| r.recovery_ms).collect();
            let recovery = if recovered.len() == rows.len() && !recovered.is_empty() {
                let mean = recovered.iter().sum::<u64>() / recovered.len() as u64;
                let max = recovered.iter().copied().max().unwrap_or_default();
                format!("{} / {}", seconds(Some(mean)), seconds(Some(max)))
            } else {
                format!(
                    "{} of {} not recovered",
                    rows.len() - recovered.len(),
                    rows.len()
                )
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} + {} | {} | {} | {} | {} |",
                fault.describe(),
                rows.len(),
                rows.iter().map(|r| r.in_flight).sum::<u64>(),
                rows.iter().map(|r| r.executions).sum::<usize>(),
                rows.iter().map(|r| r.lost).sum::<u64>(),
                rows.iter().map(|r| r.duplicated).sum::<u64>(),
                rows.iter().map(|r| r.misrouted).sum::<u64>(),
                recovery
            );
        }
        for fault in &self.skipped {
            let _ = writeln!(
                out,
                "| {} | skipped: no network namespace | | | | | |",
                fault.describe()
            );
        }
        let _ = writeln!(
            out,
            "| **whole run, at the end** | {} | {} | {} | {} | {} | drained in {} |",
            self.injections.len(),
            self.executions,
            self.final_lost,
            self.final_duplicates.total(),
            self.final_misrouted,
            seconds(self.final_drain_ms)
        );
        let _ = writeln!(
            out,
            "\nresult: {}",
            if self.passed() {
                "PASS: nothing lost, duplicated or misrouted; every execution and child terminal"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn injection(lost: u64, recovery_ms: Option<u64>) -> Injection {
        Injection {
            fault: Fault::KillServer,
            round: 1,
            detail: String::new(),
            fault_ms: 0,
            in_flight: 3,
            executions: 10,
            lost,
            lost_ids: Vec::new(),
            duplicated: 0,
            misrouted: 0,
            children: 1,
            mislinked: 0,
            failed: 0,
            recovery_ms,
        }
    }

    fn report(injections: Vec<Injection>) -> Report {
        Report {
            mode: "short".to_owned(),
            seed: 1,
            shards: 2,
            netns: true,
            skipped: Vec::new(),
            seconds: 1,
            executions: 10,
            refused_submits: 0,
            failed_executions: 0,
            final_lost: 0,
            final_lost_ids: Vec::new(),
            final_duplicates: Duplicates::default(),
            final_misrouted: 0,
            final_children: 1,
            final_mislinked: 0,
            final_drain_ms: Some(5),
            injections,
        }
    }

    #[test]
    fn a_loss_or_a_backlog_that_never_drains_fails_the_run() {
        assert!(report(vec![injection(0, Some(1_000))]).passed());
        assert!(!report(vec![injection(1, Some(1_000))]).passed());
        assert!(!report(vec![injection(0, None)]).passed());
        let mut duplicated = report(vec![injection(0, Some(1_000))]);
        duplicated.final_duplicates.terminal_twice = 1;
        assert!(!duplicated.passed());
        let mut mislinked = report(vec![injection(0, Some(1_000))]);
        mislinked.injections[0].mislinked = 1;
        assert!(!mislinked.passed());
    }

    #[test]
    fn the_table_has_a_row_per_fault_and_one_for_the_whole_run() {
        let table = report(vec![injection(0, Some(1_500)), injection(0, Some(500))]).markdown();
        assert!(table.contains("| SIGKILL server | 2 | 6 + 20 | 0 | 0 | 0 | 1.0 s / 1.5 s |"));
        assert!(table.contains("**whole run, at the end**"));
        assert!(table.contains("PASS"));
    }
}
