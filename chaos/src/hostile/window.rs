//! The windows of B's load that the table measures: the baseline (B's load alone) and one per
//! attack, each lasting until B submitted enough executions for its p99 to mean one, and the
//! one re-measurement a row may get when the control probe saw the host stall in its window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::attacks::{Attack, Ctx, Outcome};
use crate::load::{quantile, Steady};
use crate::probe::Probe;

/// Longest an attack may take before its row fails.
const ATTACK_DEADLINE: Duration = Duration::from_secs(90);

/// How long a window lasts at least, and how many of B's executions it must hold.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub at_least: Duration,
    pub samples: usize,
}

/// B's executions submitted in a window, once all of them ended.
#[derive(Debug, Clone)]
pub struct Measured {
    pub executions: usize,
    pub errors: Vec<String>,
    pub p99_ms: u64,
    /// The slowest execution: its latency and where the time went.
    pub slowest: Option<String>,
    /// The worst stall of the host the probe saw in the window, when it was one.
    pub host_stall: Option<String>,
}

/// Waits until `span` is over from `from` and B submitted enough executions since.
pub async fn close(load: &Steady, from: Instant, span: Span) -> Instant {
    tokio::time::sleep_until((from + span.at_least).into()).await;
    // Polling B's own submits, one period apart at most: the window ends with the submit that
    // makes the count, not at a guessed time.
    while load.submitted_between(from, Instant::now()) < span.samples {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Instant::now()
}

/// Runs `attack` and measures B's load while it runs, for `span` at least: its outcome, and
/// the window `[from, to)`.
pub async fn attack(
    ctx: &Arc<Ctx>,
    attack: &Attack,
    load: &Steady,
    span: Span,
) -> (Outcome, Instant, Instant) {
    let from = Instant::now();
    let outcome = match tokio::time::timeout(ATTACK_DEADLINE, (attack.run)(ctx.clone())).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome {
            ok: false,
            seen: format!("error: {e:#}"),
        },
        Err(_) => Outcome {
            ok: false,
            seen: format!("no outcome after {ATTACK_DEADLINE:?}"),
        },
    };
    // The rest of the window is measurement of B's load.
    let to = close(load, from, span).await;
    (outcome, from, to)
}

/// B's executions submitted in `[from, to)`, once each ended, and the probe's view of the host.
pub async fn measure(load: &Steady, probe: &Probe, from: Instant, to: Instant) -> Measured {
    let samples = load.ended(from, to).await;
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    let slowest = samples
        .iter()
        .max_by_key(|s| s.latency)
        .map(|s| format!("{} ms: {}", millis(s.latency), s.phases));
    Measured {
        executions: samples.len(),
        errors: samples.iter().filter_map(|s| s.error.clone()).collect(),
        p99_ms: millis(quantile(&mut latencies, 0.99)),
        slowest,
        host_stall: probe
            .stall(from, to)
            .map(|(what, stalled)| format!("{what} {} ms", millis(stalled))),
    }
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
