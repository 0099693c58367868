//! A passive tap on NATS: when each execution's step command was published (the relay's
//! publish to JetStream, which core subscribers of its subject also receive) and when each of
//! its workers' reports was sent (a request on the shard's `result` subject, which every plain
//! subscriber receives besides the shard's queue group). It answers nothing and takes nothing
//! from a queue, so it changes no behaviour; it only splits a slow execution's dispatch (relay,
//! then the worker's pull) and its report (one send, or a resend after a request timeout).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use noetl_chaos::now_ms;
use noetl_contract::subject::{self, ShardRequest};
use noetl_contract::ShardCount;
use tokio::task::JoinHandle;

/// What the tap saw of one execution, in ms since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// The first publish of one of its commands.
    pub published: Option<i64>,
    /// Every report sent for it (a resend follows a request that timed out or failed).
    pub reports: Vec<i64>,
}

type Log = Arc<Mutex<HashMap<String, Seen>>>;

/// The running tap; dropped, it stops.
#[derive(Debug)]
pub struct Tap {
    log: Log,
    tasks: Vec<JoinHandle<()>>,
}

impl Tap {
    /// Taps the commands of `pool` and the reports of every shard of `shards`.
    pub async fn start(
        client: &noetl_bus::Client,
        pool: &str,
        shards: ShardCount,
    ) -> anyhow::Result<Self> {
        let log: Log = Arc::default();
        let mut filters = vec![(subject::pool_commands_filter(pool), Hop::Published)];
        for shard in shards.shards() {
            let filter = subject::shard_request_filter(ShardRequest::Result, shard);
            filters.push((filter, Hop::Report));
        }
        let mut tasks = Vec::new();
        for (filter, hop) in filters {
            let mut subscriber = client.subscribe(filter).await?;
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(message) = subscriber.next().await {
                    let at = now_ms();
                    let Some(id) = message.subject.rsplit('.').next() else {
                        continue;
                    };
                    if let Ok(mut log) = log.lock() {
                        hop.note(log.entry(id.to_owned()).or_default(), at);
                    }
                }
            }));
        }
        Ok(Self { log, tasks })
    }

    /// What was seen of execution `id` so far.
    pub fn seen(&self, id: &str) -> Seen {
        self.log
            .lock()
            .ok()
            .and_then(|log| log.get(id).cloned())
            .unwrap_or_default()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Hop {
    Published,
    Report,
}

impl Hop {
    fn note(self, seen: &mut Seen, at: i64) {
        match self {
            Hop::Published => {
                seen.published.get_or_insert(at);
            }
            Hop::Report => seen.reports.push(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_publish_and_every_report() {
        let mut seen = Seen::default();
        Hop::Published.note(&mut seen, 10);
        Hop::Published.note(&mut seen, 30);
        Hop::Report.note(&mut seen, 40);
        Hop::Report.note(&mut seen, 5_140);
        assert_eq!(
            seen,
            Seen {
                published: Some(10),
                reports: vec![40, 5_140],
            }
        );
    }
}
