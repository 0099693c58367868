//! Group work: items queued by many request handlers are taken in batches by a few tasks, so
//! one transaction (and one WAL flush) serves many requests.
//!
//! Batching needs no timer: a task takes whatever queued while the previous batch was being
//! handled. Under light load a batch is one item and adds no delay; under heavy load batches
//! grow up to `max_batch`. Several tasks overlap one batch's flush with gathering the next.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::task::TaskTracker;

struct Pending<T, R> {
    item: T,
    reply: oneshot::Sender<R>,
}

/// Queues items for batch handling. Dropping every clone lets the tasks finish the queue and
/// stop.
pub struct Batcher<T, R> {
    queue: mpsc::Sender<Pending<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T, R> std::fmt::Debug for Batcher<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts `parallel` tasks on `tracker`, each with a state of its own from `state` (its
    /// database connection) and calling `handle` with it and up to `max_batch` items; `handle`
    /// gives the state back with one result per item, in order.
    pub fn spawn<S, F, Fut>(
        max_batch: usize,
        parallel: usize,
        tracker: &TaskTracker,
        state: impl Fn() -> S,
        handle: F,
    ) -> Self
    where
        S: Send + 'static,
        F: Fn(S, Vec<T>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = (S, Vec<R>)> + Send,
    {
        let (queue, receiver) = mpsc::channel(max_batch * parallel * 2);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..parallel {
            let (receiver, handle) = (receiver.clone(), handle.clone());
            let mut state = state();
            tracker.spawn(async move {
                while let Some(batch) = next_batch(&receiver, max_batch).await {
                    let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) =
                        batch.into_iter().map(|p| (p.item, p.reply)).unzip();
                    let (kept, results) = handle(state, items).await;
                    state = kept;
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
            });
        }
        Self { queue }
    }

    /// Queues `item` and waits for its result; `None` when the batcher is shutting down or the
    /// batch was abandoned.
    pub async fn submit(&self, item: T) -> Option<R> {
        let (reply, result) = oneshot::channel();
        self.queue.send(Pending { item, reply }).await.ok()?;
        result.await.ok()
    }
}

async fn next_batch<T, R>(
    receiver: &Mutex<mpsc::Receiver<Pending<T, R>>>,
    max_batch: usize,
) -> Option<Vec<Pending<T, R>>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut batch = Vec::with_capacity(max_batch.min(64));
    batch.push(first);
    while batch.len() < max_batch {
        match receiver.try_recv() {
            Ok(pending) => batch.push(pending),
            Err(_) => break,
        }
    }
    Some(batch)
}
