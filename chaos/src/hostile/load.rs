//! Tenant B's steady load: one-step `noop` executions submitted at a fixed rate (open loop: a
//! slow answer does not slow the submits down), each followed to its end by polling. A sample's
//! latency is submit to terminal as seen by polling every [`POLL`], so it covers the gateway,
//! the shard server, NATS and the worker: whatever an attack slows down shows in it. Each sample
//! also says where its time went ([`Phases`]), from the clock of this host, which the processes
//! share: a slow execution's phases name the hop that stalled.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use noetl_chaos::now_ms;

use crate::tap::Tap;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// How often a running execution is read.
pub const POLL: Duration = Duration::from_millis(50);
/// An execution not terminal this long after its submit counts as an error.
const DEADLINE: Duration = Duration::from_secs(30);

/// One execution of B's: when it was submitted, how long to its end, what went wrong, and
/// where its time went.
#[derive(Debug, Clone)]
pub struct Sample {
    pub submitted: Instant,
    pub latency: Duration,
    pub error: Option<String>,
    pub phases: Phases,
}

/// When each hop of one execution was done, in ms after its submit was sent (`None`: not
/// reached, or not known). `committed`, `started` and `recorded` are the shard's timestamps
/// (`created_at`, the step's `started_at` and `finished_at`); `published` and `reported` are
/// the [`Tap`]'s (the relay's publish of the command, the worker's first send of its report,
/// `resends` the sends after it). So the gap before each is the hop that ends with it: the
/// gateway and the shard's commit, the relay, the worker's pull, the step, the report and the
/// shard's write; `seen` is the read that saw the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    pub answered: Option<i64>,
    pub committed: Option<i64>,
    pub published: Option<i64>,
    pub started: Option<i64>,
    pub reported: Option<i64>,
    pub resends: usize,
    pub recorded: Option<i64>,
    pub seen: Option<i64>,
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hops = [
            ("committed", self.committed),
            ("answered", self.answered),
            ("published", self.published),
            ("step started", self.started),
            ("reported", self.reported),
            ("recorded", self.recorded),
            ("seen", self.seen),
        ];
        let known: Vec<String> = hops
            .iter()
            .filter_map(|(hop, ms)| ms.map(|ms| format!("{hop} +{ms} ms")))
            .collect();
        f.write_str(&known.join(", "))?;
        match self.resends {
            0 => Ok(()),
            n => write!(f, " ({n} resent reports)"),
        }
    }
}

/// The running load; [`Steady::stop`] waits for every execution it submitted to be followed
/// to its end.
#[derive(Debug)]
pub struct Steady {
    stop: Arc<AtomicBool>,
    /// When each execution was submitted, as soon as it was.
    submits: Arc<Mutex<Vec<Instant>>>,
    ticker: JoinHandle<()>,
    in_flight: Arc<AtomicUsize>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Steady {
    /// `rate` executions per second, submitted with `token` to `gateway`; `tap` tells when
    /// each one's command was published and its report sent.
    pub fn start(
        http: reqwest::Client,
        gateway: &str,
        token: &str,
        rate: u32,
        tap: Arc<Tap>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let submits = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let client = Client {
            http,
            base: format!("{gateway}/api/v1/executions"),
            auth: format!("Bearer {token}"),
            tap,
        };
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let ticker = {
            let (stop, submits, in_flight, samples) = (
                stop.clone(),
                submits.clone(),
                in_flight.clone(),
                samples.clone(),
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (client, in_flight, samples) =
                        (client.clone(), in_flight.clone(), samples.clone());
                    let submitted = Instant::now();
                    if let Ok(mut submits) = submits.lock() {
                        submits.push(submitted);
                    }
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let sample = client.execute(submitted).await;
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
            submits,
            ticker,
            in_flight,
            samples,
        }
    }

    /// The samples of the executions submitted in `[from, to)`, once every one of them ended
    /// (each gives up after its own deadline, so this ends).
    pub async fn ended(&self, from: Instant, to: Instant) -> Vec<Sample> {
        let submitted = self.submitted_between(from, to);
        loop {
            let ended: Vec<Sample> = self
                .samples
                .lock()
                .map(|samples| {
                    samples
                        .iter()
                        .filter(|s| s.submitted >= from && s.submitted < to)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            if ended.len() >= submitted {
                return ended;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// How many executions were submitted in `[from, to)`, ended or not.
    pub fn submitted_between(&self, from: Instant, to: Instant) -> usize {
        self.submits
            .lock()
            .map(|submits| {
                submits
                    .iter()
                    .filter(|at| **at >= from && **at < to)
                    .count()
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

    /// Every sample so far as CSV, one execution a line in order of submit: its submit in ms
    /// after `start`, its latency, its hops ([`Phases`], ms after its submit, empty when not
    /// known) and its error. The run keeps it as `samples.csv`, to see which hop a stall sat in
    /// and which executions it held.
    pub fn csv(&self, start: Instant) -> String {
        let mut samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        samples.sort_by_key(|s| s.submitted);
        let ms = |at: Option<i64>| at.map(|at| at.to_string()).unwrap_or_default();
        let mut out = "submitted_ms,latency_ms,committed,answered,published,started,reported,resends,recorded,seen,error\n".to_owned();
        for s in samples {
            let p = s.phases;
            let line = [
                s.submitted
                    .checked_duration_since(start)
                    .map_or(0, |d| d.as_millis())
                    .to_string(),
                s.latency.as_millis().to_string(),
                ms(p.committed),
                ms(p.answered),
                ms(p.published),
                ms(p.started),
                ms(p.reported),
                p.resends.to_string(),
                ms(p.recorded),
                ms(p.seen),
                s.error.unwrap_or_default().replace([',', '\n'], " "),
            ];
            out.push_str(&line.join(","));
            out.push('\n');
        }
        out
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
    tap: Arc<Tap>,
}

impl Client {
    async fn execute(&self, submitted: Instant) -> Sample {
        let sent = now_ms();
        let mut phases = Phases::default();
        let mut id = None;
        let error = self.run(sent, &mut phases, &mut id).await.err();
        if let Some(id) = id {
            let seen = self.tap.seen(&id);
            phases.published = seen.published.map(|at| at - sent);
            phases.reported = seen.reports.first().map(|at| at - sent);
            phases.resends = seen.reports.len().saturating_sub(1);
        }
        Sample {
            submitted,
            latency: submitted.elapsed(),
            error,
            phases,
        }
    }

    /// Submits one execution at `sent` and polls it until it succeeded, noting its `id` and
    /// `phases`; `Err` says what went wrong.
    async fn run(
        &self,
        sent: i64,
        phases: &mut Phases,
        id: &mut Option<String>,
    ) -> Result<(), String> {
        let since = |at: i64| Some(at - sent);
        let body = json!({
            "playbook": {"name": "steady", "steps": [{"name": "one", "action": "noop"}]},
            "labels": {"suite": "hostile"}
        });
        let (status, receipt) = self.send(self.http.post(&self.base).json(&body)).await?;
        phases.answered = since(now_ms());
        if status != 201 {
            return Err(format!("submit: {status} {}", receipt["code"]));
        }
        let url = format!(
            "{}/{}",
            self.base,
            id.insert(
                receipt["execution_id"]
                    .as_str()
                    .ok_or_else(|| format!("submit: no execution id in {receipt}"))?
                    .to_owned()
            )
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (status, view) = self.send(self.http.get(&url)).await?;
            if status == 200 {
                phases.committed = rfc3339_ms(&view["created_at"]).and_then(since);
                phases.started = rfc3339_ms(&view["steps"][0]["started_at"]).and_then(since);
                phases.recorded = rfc3339_ms(&view["steps"][0]["finished_at"]).and_then(since);
                phases.seen = since(now_ms());
            }
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

/// An RFC 3339 timestamp as ms since the Unix epoch.
fn rfc3339_ms(value: &Value) -> Option<i64> {
    let at = time::OffsetDateTime::parse(
        value.as_str()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
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

    #[test]
    fn phases_read_the_shard_timestamps_and_name_each_hop() {
        assert_eq!(
            rfc3339_ms(&json!("2026-12-07T21:55:21.378920Z")),
            Some(1_796_680_521_378)
        );
        assert_eq!(rfc3339_ms(&json!("yesterday")), None);
        assert_eq!(rfc3339_ms(&Value::Null), None);
        let phases = Phases {
            answered: Some(12),
            committed: Some(8),
            published: Some(10),
            started: Some(5_040),
            reported: Some(5_041),
            resends: 1,
            recorded: None,
            seen: Some(10_088),
        };
        assert_eq!(
            phases.to_string(),
            "committed +8 ms, answered +12 ms, published +10 ms, step started +5040 ms, \
             reported +5041 ms, seen +10088 ms (1 resent reports)"
        );
    }
}
