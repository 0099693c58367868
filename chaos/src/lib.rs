//! What the two runners of this crate share: the cluster of real processes they start
//! ([`cluster`], with the network namespace of [`netns`]), the clock, and how a run's results
//! are written.
//!
//! - `noetl-chaos` (`src/main.rs`): faults under load, checked against the shard databases
//!   (`wiki/reliability.md`).
//! - `noetl-hostile` (`src/hostile/`): hostile input from one tenant while another runs a
//!   steady load (`wiki/limits.md`, "The hostile-input suite").

pub mod cluster;
pub mod netns;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Writes a run's results into `dir`: `results.md` (the printed table) and `results.json`.
pub fn write_results(
    dir: &std::path::Path,
    markdown: String,
    results: &impl serde::Serialize,
) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::write(dir.join("results.md"), markdown).context("failed to write results.md")?;
    let json = serde_json::to_vec_pretty(results).context("failed to encode the results")?;
    std::fs::write(dir.join("results.json"), json).context("failed to write results.json")
}
