//! CPU time and peak memory of the processes the harness started, read from `/proc`.
//!
//! A process is watched with its descendants (PostgreSQL forks a backend per connection, Celery
//! and npm may fork), so its CPU time is the sum over the tree and its peak memory the largest
//! `VmHWM` of any process in it (resident memory shared between the processes of a tree, like
//! PostgreSQL's shared buffers, would be counted many times by a sum).

use std::collections::HashMap;

use serde::Serialize;

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, which Linux fixes at 100 per second
/// for user space whatever the kernel's own tick rate.
const TICKS_PER_SECOND: f64 = 100.0;

/// The processes of one run, by the name the report gives them.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    roots: Vec<Root>,
}

#[derive(Debug, Clone)]
struct Root {
    name: String,
    pid: u32,
    /// With its descendants. The harness itself is watched alone: the processes it starts are
    /// its children and are watched by their own names (what it spent on children that already
    /// exited, like the peers' drivers, is in its own counters).
    tree: bool,
}

/// CPU seconds of each watched process (with its descendants) at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot(Vec<(String, f64)>);

/// One process's share of a phase.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCost {
    pub process: String,
    pub cpu_seconds: f64,
    pub cpu_seconds_per_1000: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeakMemory {
    pub process: String,
    pub vm_hwm_mib: f64,
}

impl Watched {
    /// Watches `pid` and its descendants as `name`, in place of what was watched by that name
    /// (a restarted process).
    pub fn add(&mut self, name: &str, pid: u32) {
        let root = Root {
            name: name.to_owned(),
            pid,
            tree: true,
        };
        match self.roots.iter_mut().find(|r| r.name == name) {
            Some(existing) => *existing = root,
            None => self.roots.push(root),
        }
    }

    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.roots.iter().find(|r| r.name == name).map(|r| r.pid)
    }

    /// The harness itself, which generates the load.
    pub fn with_self(mut self) -> Self {
        self.roots.push(Root {
            name: "bench (load generator)".to_owned(),
            pid: std::process::id(),
            tree: false,
        });
        self
    }

    fn processes(&self, table: &HashMap<u32, Stat>, root: &Root) -> Vec<u32> {
        if root.tree {
            tree(table, root.pid)
        } else {
            vec![root.pid]
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let table = process_table();
        Snapshot(
            self.roots
                .iter()
                .map(|root| {
                    let ticks: u64 = self
                        .processes(&table, root)
                        .iter()
                        .filter_map(|p| table.get(p))
                        .map(|stat| stat.cpu_ticks)
                        .sum();
                    (root.name.clone(), ticks as f64 / TICKS_PER_SECOND)
                })
                .collect(),
        )
    }

    /// Peak resident memory so far of each watched process tree.
    pub fn peak_memory(&self) -> Vec<PeakMemory> {
        let table = process_table();
        self.roots
            .iter()
            .map(|root| PeakMemory {
                process: root.name.clone(),
                vm_hwm_mib: self
                    .processes(&table, root)
                    .iter()
                    .filter_map(|p| vm_hwm_kib(*p))
                    .max()
                    .unwrap_or(0) as f64
                    / 1024.0,
            })
            .collect()
    }
}

impl Snapshot {
    /// CPU spent by each process since `earlier`, per 1,000 of `operations`.
    pub fn cost_since(&self, earlier: &Snapshot, operations: u64) -> Vec<ProcessCost> {
        self.0
            .iter()
            .map(|(name, now)| {
                let before = earlier
                    .0
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0.0, |(_, s)| *s);
                // A backend that exited between the snapshots takes its ticks with it.
                let cpu_seconds = (now - before).max(0.0);
                ProcessCost {
                    process: name.clone(),
                    cpu_seconds,
                    cpu_seconds_per_1000: if operations == 0 {
                        0.0
                    } else {
                        cpu_seconds * 1000.0 / operations as f64
                    },
                }
            })
            .collect()
    }
}

/// The parent of a running process.
pub fn parent_of(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_stat(&text)?.parent)
}

/// Sum of every process's CPU seconds per 1,000 operations.
pub fn total_per_1000(costs: &[ProcessCost]) -> f64 {
    costs.iter().map(|c| c.cpu_seconds_per_1000).sum()
}

#[derive(Debug, Clone, Copy)]
struct Stat {
    parent: u32,
    /// utime + stime of the process, plus cutime + cstime of children it already reaped.
    cpu_ticks: u64,
}

fn process_table() -> HashMap<u32, Stat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat(&text)?))
        })
        .collect()
}

/// Fields after the command name, which is in parentheses and may itself hold spaces or `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Numbered from field 3 (state): ppid is 4, utime 14, stime 15, cutime 16, cstime 17.
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        parent: u32::try_from(field(4)?).ok()?,
        cpu_ticks: field(14)? + field(15)? + field(16)? + field(17)?,
    })
}

fn tree(table: &HashMap<u32, Stat>, root: u32) -> Vec<u32> {
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            table
                .iter()
                .filter(|(_, stat)| stat.parent == parent)
                .map(|(pid, _)| *pid),
        );
        next += 1;
    }
    found
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_a_spaced_command_name_parses() {
        let line =
            "42 (postgres: bench (x)) S 7 42 42 0 -1 4194560 100 0 0 0 12 3 4 5 20 0 1 0 1 1 1";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(stat.parent, 7);
        assert_eq!(stat.cpu_ticks, 12 + 3 + 4 + 5);
    }

    #[test]
    fn this_process_is_watched_and_has_a_peak() {
        let watched = Watched::default().with_self();
        let before = watched.snapshot();
        let spin: u64 = (0..5_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(spin > 0);
        let costs = watched.snapshot().cost_since(&before, 1000);
        assert_eq!(costs.len(), 1);
        assert!(costs[0].cpu_seconds >= 0.0);
        assert!(watched.peak_memory()[0].vm_hwm_mib > 0.0);
    }
}
