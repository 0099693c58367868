//! The steady load: clients submitting executions at a fixed rate, their playbooks taken in turn
//! from [`SHAPES`] (a four-step diamond; one in ten a parent whose middle step runs an inline
//! sub-playbook, and one in ten a loop of sleeping items), a quarter of them with an `Idempotency-Key` that they retry with the same body
//! until they get an answer, and the client's own log of every execution id it was given
//! (`201 Created`, or a replay).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use noetl_contract::ExecutionId;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// One answer that named an execution: the client was told it exists.
#[derive(Debug, Clone, Serialize)]
pub struct Ack {
    pub execution_id: ExecutionId,
    pub shape: Shape,
    pub idempotency_key: Option<String>,
    pub status: u16,
    pub at_ms: i64,
}

/// A playbook of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// `a` → (`b`, `c` sleeping) → `d`.
    Diamond,
    /// `a` → `kid` (a child running `a` → `b` sleeping) → `d`.
    Parent,
    /// `a` → `each` (a loop of [`LOOP_ITEMS`] sleeping items, four at a time) → `d`.
    Looped,
}

/// The shapes a client submits in turn: a new shape is one more entry.
pub const SHAPES: &[Shape] = &[
    Shape::Parent,
    Shape::Looped,
    Shape::Diamond,
    Shape::Diamond,
    Shape::Diamond,
    Shape::Diamond,
    Shape::Diamond,
    Shape::Diamond,
    Shape::Diamond,
    Shape::Diamond,
];

/// The `playbook` step of a [`Shape::Parent`], whose result names the child.
pub const CHILD_STEP: &str = "kid";
/// The loop step of a [`Shape::Looped`], and how many items it runs.
pub const LOOP_STEP: &str = "each";
pub const LOOP_ITEMS: usize = 8;

/// What the clients were told, kept in memory for the checks and appended to a JSON-lines file.
#[derive(Debug)]
pub struct ClientLog {
    acks: Mutex<Vec<Ack>>,
    file: Mutex<BufWriter<File>>,
    refused: AtomicU64,
}

impl ClientLog {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file =
            File::create(path).with_context(|| format!("failed to create {}", path.display()))?;
        Ok(Self {
            acks: Mutex::new(Vec::new()),
            file: Mutex::new(BufWriter::new(file)),
            refused: AtomicU64::new(0),
        })
    }

    fn record(&self, ack: Ack) {
        if let Ok(mut file) = self.file.lock() {
            if let Ok(line) = serde_json::to_string(&ack) {
                let _ = writeln!(file, "{line}");
            }
        }
        if let Ok(mut acks) = self.acks.lock() {
            acks.push(ack);
        }
    }

    pub fn flush(&self) {
        if let Ok(mut file) = self.file.lock() {
            let _ = file.flush();
        }
    }

    /// How many answers named an execution so far.
    pub fn len(&self) -> usize {
        self.acks.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// Submits that got no execution (refused, timed out, connection failed).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The answers from index `from` on.
    pub fn since(&self, from: usize) -> Vec<Ack> {
        self.acks
            .lock()
            .map(|a| a.get(from..).map(<[Ack]>::to_vec).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Idempotency keys that the client was given two different executions for.
    pub fn keys_answered_twice(&self) -> usize {
        let acks = self.acks.lock().map(|a| a.clone()).unwrap_or_default();
        let mut by_key: HashMap<String, ExecutionId> = HashMap::new();
        let mut conflicts = 0;
        for ack in acks {
            if let Some(key) = ack.idempotency_key {
                match by_key.get(&key) {
                    Some(id) if *id != ack.execution_id => conflicts += 1,
                    Some(_) => {}
                    None => {
                        by_key.insert(key, ack.execution_id);
                    }
                }
            }
        }
        conflicts
    }
}

/// The running clients; [`Load::stop`] lets each finish its submit (and its key's retries).
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<()>>,
}

/// The label that carries the idempotency key, so the shard databases show which key made which
/// execution.
pub const KEY_LABEL: &str = "chaos_key";

impl Load {
    /// `clients` clients together submitting `rate` executions per second.
    pub fn start(
        http: reqwest::Client,
        gateway: &str,
        rate: u32,
        clients: u32,
        run: &str,
        log: Arc<ClientLog>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let period = Duration::from_secs_f64(f64::from(clients) / f64::from(rate.max(1)));
        let url = format!("{gateway}/api/v1/executions");
        let clients = (0..clients)
            .map(|client| {
                let (http, url, stop, log) = (http.clone(), url.clone(), stop.clone(), log.clone());
                let run = run.to_owned();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        n += 1;
                        let key = (n % 4 == 0).then(|| format!("{run}-{client}-{n}"));
                        let shape = SHAPES[usize::try_from(n).unwrap_or_default() % SHAPES.len()];
                        submit(&http, &url, shape, key, &log).await;
                    }
                })
            })
            .collect();
        Self { stop, clients }
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            let _ = client.await;
        }
    }
}

fn step(name: &str, action: &str, needs: &[&str]) -> Value {
    let mut step = json!({
        "name": name,
        "action": action,
        "needs": needs,
        "retry": {"max_attempts": 5, "backoff": "100ms"}
    });
    if action == "sleep" {
        // Long enough that a fault finds executions in flight on every process.
        step["with"] = json!({"ms": 1_000});
    }
    step
}

fn playbook(shape: Shape) -> Value {
    match shape {
        Shape::Diamond => json!({
            "name": "chaos-diamond",
            "steps": [
                step("a", "noop", &[]),
                step("b", "sleep", &["a"]),
                step("c", "sleep", &["a"]),
                step("d", "noop", &["b", "c"]),
            ]
        }),
        // The `playbook` step has no retry: one child per parent, whose end is the step's.
        Shape::Parent => json!({
            "name": "chaos-parent",
            "steps": [
                step("a", "noop", &[]),
                {"name": CHILD_STEP, "action": "playbook", "needs": ["a"], "with": {
                    "playbook": {"name": "chaos-child", "steps": [
                        step("a", "noop", &[]),
                        step("b", "sleep", &["a"]),
                    ]},
                    "input": {}
                }},
                step("d", "noop", &[CHILD_STEP]),
            ]
        }),
        Shape::Looped => {
            let mut each = step(LOOP_STEP, "sleep", &["a"]);
            each["with"] = json!({"ms": "{{ 100 + n * 25 }}"});
            each["loop"] = json!({
                "in": "{{ input.items }}",
                "iterator": "n",
                "mode": "parallel",
                "max_in_flight": 4
            });
            json!({
                "name": "chaos-loop",
                "input": {"items": (0..LOOP_ITEMS).collect::<Vec<_>>()},
                "steps": [step("a", "noop", &[]), each, step("d", "noop", &[LOOP_STEP])]
            })
        }
    }
}

fn body(shape: Shape, key: Option<&str>) -> Value {
    let mut labels = json!({"suite": "chaos"});
    if let Some(key) = key {
        labels[KEY_LABEL] = json!(key);
    }
    json!({
        "playbook": playbook(shape),
        "input": {},
        "labels": labels
    })
}

/// Attempts a keyed submit gets before the client gives up on its key.
const KEY_ATTEMPTS: u32 = 40;

async fn submit(
    http: &reqwest::Client,
    url: &str,
    shape: Shape,
    key: Option<String>,
    log: &ClientLog,
) {
    let body = body(shape, key.as_deref());
    let attempts = if key.is_some() { KEY_ATTEMPTS } else { 1 };
    for attempt in 0..attempts {
        if attempt > 0 {
            // A client's retry pace, not synchronisation.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut request = http.post(url).json(&body);
        if let Some(key) = &key {
            request = request.header("Idempotency-Key", key);
        }
        let Ok(response) = request.send().await else {
            log.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        let id = answer["execution_id"]
            .as_str()
            .and_then(|s| s.parse::<ExecutionId>().ok());
        match (status, id) {
            (200 | 201, Some(execution_id)) => {
                log.record(Ack {
                    execution_id,
                    shape,
                    idempotency_key: key.clone(),
                    status,
                    at_ms: noetl_chaos::now_ms(),
                });
                return;
            }
            _ => {
                log.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: i64, key: Option<&str>) -> Ack {
        Ack {
            execution_id: ExecutionId::new(id).expect("a valid id"),
            shape: Shape::Diamond,
            idempotency_key: key.map(str::to_owned),
            status: 201,
            at_ms: 0,
        }
    }

    #[test]
    fn a_key_answered_with_two_executions_is_a_duplicate_and_a_replay_is_not() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = ClientLog::create(&dir.path().join("log.jsonl")).expect("a log");
        log.record(ack(1, Some("k1")));
        log.record(ack(1, Some("k1")));
        log.record(ack(2, None));
        log.record(ack(3, None));
        assert_eq!(log.keys_answered_twice(), 0);
        log.record(ack(4, Some("k1")));
        assert_eq!(log.keys_answered_twice(), 1);
        assert_eq!(log.since(3).len(), 2);
    }

    #[test]
    fn keyed_bodies_carry_their_key_as_a_label() {
        assert_eq!(
            body(Shape::Diamond, Some("k"))["labels"][KEY_LABEL],
            json!("k")
        );
        assert!(body(Shape::Parent, None)["labels"].get(KEY_LABEL).is_none());
    }

    #[test]
    fn one_submit_in_ten_is_a_parent_whose_child_step_runs_an_inline_playbook() {
        let parents = SHAPES.iter().filter(|s| **s == Shape::Parent).count();
        assert_eq!((parents, SHAPES.len()), (1, 10));
        let steps = &body(Shape::Parent, None)["playbook"]["steps"];
        let kid = steps
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == CHILD_STEP))
            .expect("the child step");
        assert_eq!(kid["action"], json!("playbook"));
        assert!(kid["with"]["playbook"]["steps"].is_array());
    }

    #[test]
    fn one_submit_in_ten_is_a_valid_loop_over_its_items() {
        let loops = SHAPES.iter().filter(|s| **s == Shape::Looped).count();
        assert_eq!(loops, 1);
        let body = body(Shape::Looped, None);
        let playbook: noetl_contract::playbook::Playbook =
            serde_json::from_value(body["playbook"].clone()).expect("a playbook");
        playbook.validate().expect("valid");
        let each = playbook
            .steps
            .iter()
            .find(|s| s.name == LOOP_STEP)
            .expect("the loop step");
        assert!(each.loop_.is_some());
        assert_eq!(
            body["playbook"]["input"]["items"].as_array().map(Vec::len),
            Some(LOOP_ITEMS)
        );
    }
}
