//! What the processes cost and whether they live: resident memory (`VmRSS` of
//! `/proc/<pid>/status`) sampled every [`EVERY`] in a background task, so each attack's window
//! has its own peak (`VmHWM`, the lifetime peak, is read once at the end), and whether each
//! process is still the one started (same pid, not exited: the processes are the runner's
//! children, so one that died stays a zombie until reaped and reads as state `Z`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

pub const EVERY: Duration = Duration::from_millis(100);

/// A process to watch: its name in the table and its pid.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// At each instant, each watched process's resident set in KiB (0: unreadable).
type Samples = Arc<Mutex<Vec<(Instant, Vec<u64>)>>>;

/// The sampler; dropped, it stops.
#[derive(Debug)]
pub struct Memory {
    watched: Vec<Watched>,
    samples: Samples,
    task: JoinHandle<()>,
}

impl Memory {
    pub fn start(watched: Vec<Watched>) -> Self {
        let samples: Samples = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (samples, pids) = (
                samples.clone(),
                watched.iter().map(|w| w.pid).collect::<Vec<_>>(),
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(EVERY);
                loop {
                    tick.tick().await;
                    let rss = pids
                        .iter()
                        .map(|pid| status_kib(*pid, "VmRSS:").unwrap_or_default())
                        .collect();
                    if let Ok(mut samples) = samples.lock() {
                        samples.push((Instant::now(), rss));
                    }
                }
            })
        };
        Self {
            watched,
            samples,
            task,
        }
    }

    pub fn watched(&self) -> &[Watched] {
        &self.watched
    }

    /// Each watched process's largest resident set sampled in `[from, to]`, in MiB.
    pub fn peak_mib(&self, from: Instant, to: Instant) -> Vec<u64> {
        let mut peak = vec![0; self.watched.len()];
        if let Ok(samples) = self.samples.lock() {
            for (_, rss) in samples.iter().filter(|(at, _)| *at >= from && *at <= to) {
                for (peak, kib) in peak.iter_mut().zip(rss) {
                    *peak = (*peak).max(*kib);
                }
            }
        }
        peak.into_iter().map(|kib| kib.div_ceil(1024)).collect()
    }

    /// Each watched process's lifetime peak (`VmHWM`), in MiB.
    pub fn lifetime_peak_mib(&self) -> Vec<u64> {
        self.watched
            .iter()
            .map(|w| {
                status_kib(w.pid, "VmHWM:")
                    .unwrap_or_default()
                    .div_ceil(1024)
            })
            .collect()
    }

    /// The watched processes that are no longer running.
    pub fn gone(&self) -> Vec<String> {
        self.watched
            .iter()
            .filter(|w| !alive(w.pid))
            .map(|w| w.name.clone())
            .collect()
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `kB` line of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_kib(&status, field)
}

fn parse_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Running: `/proc/<pid>/stat` exists and its state is not zombie or dead.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses and may hold spaces.
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace()
                .next()
                .map(|s| !matches!(s, "Z" | "X"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kib_of_a_status_line_and_sees_itself_alive() {
        let status = "Name:\tx\nVmHWM:\t  20480 kB\nVmRSS:\t  10240 kB\n";
        assert_eq!(parse_kib(status, "VmRSS:"), Some(10_240));
        assert_eq!(parse_kib(status, "VmHWM:"), Some(20_480));
        assert_eq!(parse_kib(status, "VmSwap:"), None);
        assert!(alive(std::process::id()));
        assert!(status_kib(std::process::id(), "VmRSS:").is_some_and(|kib| kib > 0));
    }
}
