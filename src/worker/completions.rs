//! Group commit of device results: steps that end while a write is in flight are recorded together
//! in the next transaction, so a busy engine pays one commit (one fsync on SQLite) per batch rather
//! than per device. An idle engine writes each result at once: nothing waits for a batch to fill.

use tokio::sync::{mpsc, oneshot};

use crate::store::{ItemCompletion, Store, StoreError};

/// Most device results one transaction records.
const MAX_BATCH: usize = 64;

struct Pending {
    done: ItemCompletion,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Hands device results to the batching writer (cheap to clone).
#[derive(Clone)]
pub(super) struct Completions {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Completions {
    /// Starts the writer on the current runtime; it ends when every handle is dropped.
    pub(super) fn start(store: Store) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(store, rx));
        Self { queue }
    }

    /// Records one device's result, in whichever batch it joins, and says how that went for it.
    pub(super) async fn record(&self, done: ItemCompletion) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(p)) = self.queue.send(Pending { done, reply }) {
            // The writer is gone (only while the runtime shuts down): the lease expires and the step re-runs.
            return Err(StoreError::Unreachable(format!(
                "the result writer has stopped; device {} is left to its lease",
                p.done.item.registration_id
            )));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Unreachable(
                "the result writer stopped before answering".into(),
            ))
        })
    }
}

async fn write_batches(store: Store, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (dones, replies): (Vec<ItemCompletion>, Vec<_>) =
            batch.drain(..).map(|p| (p.done, p.reply)).unzip();
        match store.record_item_steps(&dones).await {
            Ok((results, to_settle)) => {
                // The devices' workers go on (their slots free up) while this writer settles.
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
                store.settle_after(&to_settle).await;
            }
            Err(e) => {
                // Nothing of the batch was recorded. One at a time instead, so a result that cannot
                // be written (or a passing outage) costs only its own device a re-run.
                tracing::warn!(error = %e, devices = dones.len(), "recording a batch of device results failed; one at a time");
                for (d, reply) in dones.iter().zip(replies) {
                    let r = store
                        .complete_item_step(&d.item, &d.transition, &d.effects, d.now)
                        .await;
                    let _ = reply.send(r);
                }
            }
        }
    }
}
