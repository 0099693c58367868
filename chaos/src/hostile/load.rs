//! Tenant B's steady load: one-step `noop` executions submitted at a fixed rate (open loop: a
//! slow answer does not slow the submits down), each followed to its end by polling. A sample's
//! latency is submit to terminal as seen by polling every [`POLL`], so it covers the gateway,
//! the shard server, NATS and the worker: whatever an attack slows down shows in it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// How often a running execution is read.
pub const POLL: Duration = Duration::from_millis(50);
/// An execution not terminal this long after its submit counts as an error.
const DEADLINE: Duration = Duration::from_secs(30);

/// One execution of B's: when it was submitted, how long to its end, and what went wrong.
#[derive(Debug, Clone)]
pub struct Sample {
    pub submitted: Instant,
    pub latency: Duration,
    pub error: Option<String>,
}

/// The running load; [`Steady::stop`] waits for every execution it submitted to be followed
/// to its end.
#[derive(Debug)]
pub struct Steady {
    stop: Arc<AtomicBool>,
    ticker: JoinHandle<()>,
    in_flight: Arc<AtomicUsize>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Steady {
    /// `rate` executions per second, submitted with `token` to `gateway`.
    pub fn start(http: reqwest::Client, gateway: &str, token: &str, rate: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let client = Client {
            http,
            base: format!("{gateway}/api/v1/executions"),
            auth: format!("Bearer {token}"),
        };
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let ticker = {
            let (stop, in_flight, samples) = (stop.clone(), in_flight.clone(), samples.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (client, in_flight, samples) =
                        (client.clone(), in_flight.clone(), samples.clone());
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let sample = client.execute().await;
                        if let Ok(mut samples) = samples.lock() {
                            samples.push(sample);
                        }
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        Self {
            stop,
            ticker,
            in_flight,
            samples,
        }
    }

    /// The samples of the executions submitted in `[from, to)` that have ended so far.
    pub fn between(&self, from: Instant, to: Instant) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|samples| {
                samples
                    .iter()
                    .filter(|s| s.submitted >= from && s.submitted < to)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many executions ended without an error so far.
    pub fn succeeded(&self) -> usize {
        self.samples
            .lock()
            .map(|samples| samples.iter().filter(|s| s.error.is_none()).count())
            .unwrap_or_default()
    }

    /// Stops submitting and waits until every execution submitted was followed to its end
    /// (each gives up after its own deadline, so this ends).
    pub async fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        while !self.ticker.is_finished() || self.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(POLL).await;
        }
    }
}

#[derive(Debug, Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Client {
    async fn execute(&self) -> Sample {
        let submitted = Instant::now();
        let error = self.run().await.err();
        Sample {
            submitted,
            latency: submitted.elapsed(),
            error,
        }
    }

    /// Submits one execution and polls it until it succeeded; `Err` says what went wrong.
    async fn run(&self) -> Result<(), String> {
        let body = json!({
            "playbook": {"name": "steady", "steps": [{"name": "one", "action": "noop"}]},
            "labels": {"suite": "hostile"}
        });
        let (status, receipt) = self.send(self.http.post(&self.base).json(&body)).await?;
        if status != 201 {
            return Err(format!("submit: {status} {}", receipt["code"]));
        }
        let id = receipt["execution_id"]
            .as_str()
            .ok_or_else(|| format!("submit: no execution id in {receipt}"))?;
        let url = format!("{}/{id}", self.base);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (status, view) = self.send(self.http.get(&url)).await?;
            match (status, view["status"].as_str()) {
                (200, Some("succeeded")) => return Ok(()),
                (200, Some(ended @ ("failed" | "cancelled"))) => {
                    return Err(format!("execution {ended}"))
                }
                (200, _) => {}
                (status, _) => return Err(format!("read: {status} {}", view["code"])),
            }
            if Instant::now() > deadline {
                return Err(format!("not ended after {DEADLINE:?}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
        let response = request
            .header("authorization", &self.auth)
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }
}

/// The `q`-quantile (0–1) of `latencies`, nearest rank; zero when empty.
pub fn quantile(latencies: &mut [Duration], q: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.sort_unstable();
    let rank = (q * latencies.len() as f64).ceil() as usize;
    latencies[rank.clamp(1, latencies.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_99th_percentile_of_a_hundred_is_the_second_largest() {
        let mut latencies: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        latencies.reverse();
        assert_eq!(quantile(&mut latencies, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&mut [], 0.99), Duration::ZERO);
        assert_eq!(
            quantile(&mut [Duration::from_millis(7)], 0.99),
            Duration::from_millis(7)
        );
    }
}
