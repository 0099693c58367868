//! The control probe: whether the host itself stalled, measured apart from every process under
//! test. Two threads of the suite's own, outside its async runtime: one sleeps [`TICK`] and
//! notes how late it woke (the host did not run a ready thread: the CPU was taken), the other
//! writes and syncs a small file beside the run's results every [`TICK`] and notes how long that
//! took (the disk, which PostgreSQL's commits and JetStream's store share, held writes back).
//! Neither goes through the gateway, the servers, NATS or PostgreSQL, so a stall they see is
//! the host's. A row whose only failure is B's p99 while the probe saw a stall of at least
//! [`HOST_STALL`] is measured once more (`main.rs`); a stall the attack itself caused comes
//! back with it.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often each probe thread measures.
pub const TICK: Duration = Duration::from_millis(50);
/// A thread woken this late, or a small write this slow to sync, is a stall of the host: far
/// beyond what scheduling two busy cores or a loaded disk costs otherwise (tens of ms), and
/// well under B's p99 bound, so a stall that could push B's p99 over the bound is seen.
pub const HOST_STALL: Duration = Duration::from_millis(500);

/// What one measurement found: when it ended, what was measured and how long it stalled.
type Samples = Arc<Mutex<Vec<(Instant, &'static str, Duration)>>>;

/// The running probe; dropped, it stops.
#[derive(Debug)]
pub struct Probe {
    samples: Samples,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Probe {
    /// Starts both threads; the disk probe writes `file`, and removes it when stopped.
    pub fn start(file: PathBuf) -> Self {
        let samples = Samples::default();
        let stop = Arc::new(AtomicBool::new(false));
        let scheduler = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let asleep = Instant::now();
                    std::thread::sleep(TICK);
                    note(&samples, "cpu", asleep.elapsed().saturating_sub(TICK));
                }
            })
        };
        let disk = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let writing = Instant::now();
                    if write_and_sync(&file).is_ok() {
                        note(&samples, "disk", writing.elapsed());
                    }
                    std::thread::sleep(TICK);
                }
                let _ = std::fs::remove_file(&file);
            })
        };
        Self {
            samples,
            stop,
            threads: vec![scheduler, disk],
        }
    }

    /// The longest stall measured in `[from, to]` and what stalled (`cpu` or `disk`), when it
    /// was at least [`HOST_STALL`].
    pub fn stall(&self, from: Instant, to: Instant) -> Option<(&'static str, Duration)> {
        let samples = self.samples.lock().ok()?;
        worst(&samples, from, to).filter(|(_, stalled)| *stalled >= HOST_STALL)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn note(samples: &Samples, what: &'static str, stalled: Duration) {
    if let Ok(mut samples) = samples.lock() {
        samples.push((Instant::now(), what, stalled));
    }
}

/// The worst stall overlapping `[from, to]`: a stall is noted when it ends, which may be after
/// the window it began in.
fn worst(
    samples: &[(Instant, &'static str, Duration)],
    from: Instant,
    to: Instant,
) -> Option<(&'static str, Duration)> {
    samples
        .iter()
        .filter(|(ended, _, stalled)| {
            *ended >= from && ended.checked_sub(*stalled).is_none_or(|began| began <= to)
        })
        .map(|(_, what, stalled)| (*what, *stalled))
        .max_by_key(|(_, stalled)| *stalled)
}

fn write_and_sync(file: &PathBuf) -> std::io::Result<()> {
    let mut out = std::fs::File::create(file)?;
    out.write_all(&[0; 4096])?;
    out.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_stall_overlapping_a_window_counts() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let ms = Duration::from_millis;
        let samples = vec![
            (at(1_000), "cpu", ms(3)),
            (at(2_000), "disk", ms(700)),
            // From 1000 to 6000: ends after the window [0, 1500], began within it.
            (at(6_000), "cpu", ms(5_000)),
            // From 5600 to 6500: ended before the window [7000, 8000].
            (at(6_500), "disk", ms(900)),
        ];
        assert_eq!(worst(&samples, at(0), at(1_500)), Some(("cpu", ms(5_000))));
        assert_eq!(worst(&samples, at(0), at(900)), None);
        assert_eq!(
            worst(&samples, at(1_500), at(2_500)),
            Some(("cpu", ms(5_000)))
        );
        assert_eq!(
            worst(&samples, at(6_100), at(6_200)),
            Some(("disk", ms(900)))
        );
        assert_eq!(worst(&samples, at(7_000), at(8_000)), None);
    }
}
