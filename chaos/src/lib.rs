//! What the two runners of this crate share: the cluster of real processes they start
//! ([`cluster`], with the network namespace of [`netns`]) and the clock.
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
