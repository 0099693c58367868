//! Copies of recent step commands and step reports, taken off the bus with plain subscriptions,
//! so a fault can publish them a second time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use noetl_contract::subject::{self, ShardRequest};
use noetl_contract::ShardCount;

const KEPT: usize = 256;

/// A message as it was sent: subject and payload.
#[derive(Debug, Clone)]
pub struct Copy {
    pub subject: String,
    pub payload: Bytes,
}

#[derive(Debug, Default)]
pub struct Captured {
    pub commands: Mutex<VecDeque<Copy>>,
    pub reports: Mutex<VecDeque<Copy>>,
}

impl Captured {
    /// Up to `n` of the most recent copies of `which`, newest first.
    pub fn take(which: &Mutex<VecDeque<Copy>>, n: usize) -> Vec<Copy> {
        which
            .lock()
            .map(|q| q.iter().rev().take(n).cloned().collect())
            .unwrap_or_default()
    }
}

fn keep(into: &Mutex<VecDeque<Copy>>, copy: Copy) {
    if let Ok(mut queue) = into.lock() {
        if queue.len() == KEPT {
            queue.pop_front();
        }
        queue.push_back(copy);
    }
}

/// Subscribes to every command and every shard's reports; the client resubscribes by itself
/// after NATS restarts.
pub async fn start(
    client: &async_nats::Client,
    count: ShardCount,
) -> anyhow::Result<Arc<Captured>> {
    let captured = Arc::new(Captured::default());
    let mut subscriptions = vec![(
        client
            .subscribe(subject::command_stream_subjects())
            .await
            .context("failed to subscribe to commands")?,
        true,
    )];
    for shard in count.shards() {
        let reports = client
            .subscribe(subject::shard_request_filter(ShardRequest::Result, shard))
            .await
            .context("failed to subscribe to reports")?;
        subscriptions.push((reports, false));
    }
    for (mut subscription, is_command) in subscriptions {
        let captured = captured.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let copy = Copy {
                    subject: message.subject.to_string(),
                    payload: message.payload,
                };
                let into = if is_command {
                    &captured.commands
                } else {
                    &captured.reports
                };
                keep(into, copy);
            }
        });
    }
    Ok(captured)
}
