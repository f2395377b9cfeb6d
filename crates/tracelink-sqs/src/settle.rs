//! The settle side: `DeleteMessage` and `ChangeMessageVisibility` (and their batch calls) as the
//! core consumer's [`Settler`].

use std::future::{poll_fn, Future};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use futures_util::future::join_all;
use tokio::sync::oneshot;
use tracelink_core::{Settlement, Settler};

use crate::error::{EntryError, SqsError};
use crate::message::{Queue, ReceivedMessage};
use crate::source::MAX_VISIBILITY_SECONDS;

/// Entries SQS takes in one batch call.
const MAX_BATCH: usize = 10;
/// Turns of the consumer a delete waits for others to join it (each a poll, no timer).
const GATHER_TURNS: usize = MAX_BATCH;
/// `error.type` of a delete whose batch call was dropped before it answered.
const CANCELLED: &str = "cancelled";

/// Settles the messages of an [`SqsSource`](crate::SqsSource):
///
/// | settlement | call | settle span |
/// |---|---|---|
/// | `Ack` (handler succeeded) | `DeleteMessageBatch` with the deletes asked for within a few turns (a lone one: `DeleteMessage`) | `delete {queue}` |
/// | `Redeliver` (without delay) | none: SQS redelivers when the visibility timeout expires | none |
/// | `Redeliver` after `d` | `ChangeMessageVisibility` to `d` (whole seconds, rounded up) | `change_visibility {queue}` |
/// | `Reject` | delete, as `Ack` | `delete {queue}` |
/// | `Release` (received, never handled) | `ChangeMessageVisibility` to 0: delivered again at once | `change_visibility {queue}` |
///
/// SQS has no reject: a redrive policy moves a message to its dead-letter queue only after
/// `maxReceiveCount` receives, so leaving a rejected message there would have it handled again,
/// which is what `Reject` rules out. Use [`OnFailure::Redeliver`](tracelink_core::OnFailure)
/// to let a redrive policy dead-letter failing messages.
///
/// Deletes asked for within a few turns of the consumer (the messages of handlers that finished
/// close together; each turn is a poll, there is no timer) go out as one `DeleteMessageBatch`;
/// batches of settlements (a batch consumer's,
/// what a consumer gives back when it stops) as `DeleteMessageBatch` and
/// `ChangeMessageVisibilityBatch` calls. Either way at most 10 entries per call, and an entry
/// SQS refuses fails alone ([`SqsError::Entry`]).
#[derive(Debug, Clone)]
pub struct SqsSettler {
    client: Client,
    queue: Arc<Queue>,
    deletes: Arc<Deletes>,
}

/// A delete waiting to be sent: its receipt handle and where its result goes.
type PendingDelete = (String, oneshot::Sender<Result<(), SqsError>>);

/// Deletes waiting to be sent.
#[derive(Debug, Default)]
struct Deletes {
    pending: Mutex<Vec<PendingDelete>>,
}

impl Deletes {
    fn push(&self, handle: String) -> oneshot::Receiver<Result<(), SqsError>> {
        let (tx, rx) = oneshot::channel();
        self.lock().push((handle, tx));
        rx
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Up to 10 pending deletes.
    fn take(&self) -> Vec<PendingDelete> {
        let mut pending = self.lock();
        let n = pending.len().min(MAX_BATCH);
        pending.drain(..n).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PendingDelete>> {
        // Nothing panics while holding the lock; a poisoned list is still a list.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Lets the consumer run once: the settlements it asks for in that turn join the batch.
async fn yield_once() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// Sends pending deletes (up to 10) as one `DeleteMessageBatch` (a lone one as `DeleteMessage`),
/// each result to its settlement.
async fn flush_deletes(client: Client, queue: Arc<Queue>, deletes: Arc<Deletes>) {
    let batch = deletes.take();
    if batch.is_empty() {
        return;
    }
    if batch.len() == 1 {
        // Alone in its turn (one handler at a time): the plain call is the cheaper one.
        if let Some((handle, sender)) = batch.into_iter().next() {
            let result = client
                .delete_message()
                .queue_url(&queue.url)
                .receipt_handle(handle)
                .send()
                .await
                .map(drop)
                .map_err(|e| SqsError::sdk("DeleteMessage", e));
            let _ = sender.send(result);
        }
        return;
    }
    let (handles, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let chunk = handles.into_iter().enumerate().collect();
    let mut senders: Vec<_> = senders.into_iter().map(Some).collect();
    for (index, result) in settle_chunk(client, queue, Call::Delete, chunk).await {
        if let Some(sender) = senders.get_mut(index).and_then(Option::take) {
            // The settlement may have been dropped with its consumer: nobody to tell.
            let _ = sender.send(result);
        }
    }
}

/// What one settlement does at SQS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Nothing,
    Delete,
    ChangeVisibility(i32),
}

impl Call {
    fn of(settlement: Settlement) -> Self {
        match settlement {
            Settlement::Ack | Settlement::Reject => Call::Delete,
            Settlement::Redeliver { delay: Some(delay) } => {
                Call::ChangeVisibility(visibility_seconds(delay))
            }
            Settlement::Release => Call::ChangeVisibility(0),
            _ => Call::Nothing,
        }
    }
}

/// `d` in whole seconds, rounded up, within what SQS allows.
fn visibility_seconds(d: Duration) -> i32 {
    let seconds = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    seconds.min(MAX_VISIBILITY_SECONDS) as i32
}

impl SqsSettler {
    pub(crate) fn new(client: Client, queue: Arc<Queue>) -> Self {
        Self {
            client,
            queue,
            deletes: Arc::default(),
        }
    }
}

impl Settler<ReceivedMessage> for SqsSettler {
    /// The receipt handle (SQS always sends one).
    type Receipt = Option<String>;
    type Error = SqsError;

    fn receipt(&self, message: &ReceivedMessage) -> Option<String> {
        message.receipt_handle().map(str::to_owned)
    }

    fn operation(&self, settlement: Settlement) -> Option<&'static str> {
        match Call::of(settlement) {
            Call::Nothing => None,
            Call::Delete => Some("delete"),
            Call::ChangeVisibility(_) => Some("change_visibility"),
        }
    }

    fn settle(
        &self,
        receipt: Option<String>,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), SqsError>> + Send + 'static + use<> {
        let client = self.client.clone();
        let queue = self.queue.clone();
        let call = Call::of(settlement);
        // A delete joins the others asked for within a few turns.
        let delete = match (&receipt, call) {
            (Some(handle), Call::Delete) => {
                Some((self.deletes.push(handle.clone()), self.deletes.clone()))
            }
            _ => None,
        };
        async move {
            if let Some((result, deletes)) = delete {
                // Let the consumer run a few turns (each settles at most one more handler)
                // so the deletes of handlers that finish together share a call.
                for _ in 0..GATHER_TURNS {
                    if deletes.len() >= MAX_BATCH {
                        break;
                    }
                    yield_once().await;
                }
                flush_deletes(client, queue, deletes).await;
                return result.await.unwrap_or_else(|_| {
                    Err(SqsError::Entry {
                        operation: "DeleteMessageBatch",
                        source: EntryError {
                            id: String::new(),
                            code: CANCELLED.to_owned(),
                            message: Some("the batch delete was cancelled".to_owned()),
                            sender_fault: false,
                        },
                    })
                });
            }
            let Some(handle) = receipt else {
                return Ok(());
            };
            match call {
                Call::Nothing | Call::Delete => Ok(()),
                Call::ChangeVisibility(seconds) => client
                    .change_message_visibility()
                    .queue_url(&queue.url)
                    .receipt_handle(handle)
                    .visibility_timeout(seconds)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| SqsError::sdk("ChangeMessageVisibility", e)),
            }
        }
    }

    fn settle_all(
        &self,
        items: Vec<(Option<String>, Settlement)>,
    ) -> impl Future<Output = Vec<Result<(), SqsError>>> + Send + 'static + use<> {
        let client = self.client.clone();
        let queue = self.queue.clone();
        let len = items.len();
        // Group by call (deletes; visibility changes per timeout), keeping each item's index.
        let mut groups: Vec<(Call, Vec<(usize, String)>)> = Vec::new();
        for (index, (receipt, settlement)) in items.into_iter().enumerate() {
            let call = Call::of(settlement);
            let Some(handle) = receipt else { continue };
            if call == Call::Nothing {
                continue;
            }
            match groups.iter_mut().find(|(c, _)| *c == call) {
                Some((_, entries)) => entries.push((index, handle)),
                None => groups.push((call, vec![(index, handle)])),
            }
        }
        let mut chunks = Vec::new();
        for (call, entries) in groups {
            let mut entries = entries.into_iter().peekable();
            while entries.peek().is_some() {
                let chunk: Vec<_> = entries.by_ref().take(MAX_BATCH).collect();
                chunks.push(settle_chunk(client.clone(), queue.clone(), call, chunk));
            }
        }
        async move {
            let mut results: Vec<Result<(), SqsError>> = (0..len).map(|_| Ok(())).collect();
            for outcome in join_all(chunks).await {
                for (index, result) in outcome {
                    if let Some(slot) = results.get_mut(index) {
                        *slot = result;
                    }
                }
            }
            results
        }
    }
}

/// One `DeleteMessageBatch` or `ChangeMessageVisibilityBatch` call of at most 10 entries; the
/// result of each entry, by its index among the settled items.
async fn settle_chunk(
    client: Client,
    queue: Arc<Queue>,
    call: Call,
    chunk: Vec<(usize, String)>,
) -> Vec<(usize, Result<(), SqsError>)> {
    // Entry ids are the items' indices: that is how failures map back.
    let (operation, sent) = match call {
        Call::Delete => {
            let entries = chunk
                .iter()
                .filter_map(|(index, handle)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(index.to_string())
                        .receipt_handle(handle)
                        .build()
                        .ok()
                })
                .collect();
            let sent = client
                .delete_message_batch()
                .queue_url(&queue.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map(|out| out.failed)
                .map_err(|e| SqsError::sdk("DeleteMessageBatch", e));
            ("DeleteMessageBatch", sent)
        }
        Call::ChangeVisibility(seconds) => {
            let entries = chunk
                .iter()
                .filter_map(|(index, handle)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(index.to_string())
                        .receipt_handle(handle)
                        .visibility_timeout(seconds)
                        .build()
                        .ok()
                })
                .collect();
            let sent = client
                .change_message_visibility_batch()
                .queue_url(&queue.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map(|out| out.failed)
                .map_err(|e| SqsError::sdk("ChangeMessageVisibilityBatch", e));
            ("ChangeMessageVisibilityBatch", sent)
        }
        Call::Nothing => return Vec::new(),
    };
    match sent {
        Ok(failed) => chunk
            .into_iter()
            .map(|(index, _)| {
                let id = index.to_string();
                let result = match failed.iter().find(|f| f.id == id) {
                    Some(entry) => Err(entry_error(operation, entry)),
                    None => Ok(()),
                };
                (index, result)
            })
            .collect(),
        Err(error) => {
            // The whole call failed: its first entry gets the SDK's error, the others a copy of
            // its code.
            let code = error.code().to_owned();
            let text = error.to_string();
            let mut error = Some(error);
            chunk
                .into_iter()
                .map(|(index, _)| {
                    let failure = error.take().unwrap_or_else(|| SqsError::Entry {
                        operation,
                        source: EntryError {
                            id: index.to_string(),
                            code: code.clone(),
                            message: Some(text.clone()),
                            sender_fault: false,
                        },
                    });
                    (index, Err(failure))
                })
                .collect()
        }
    }
}

fn entry_error(operation: &'static str, entry: &BatchResultErrorEntry) -> SqsError {
    SqsError::Entry {
        operation,
        source: EntryError::from(entry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settlements_map_to_sqs_calls() {
        assert_eq!(Call::of(Settlement::Ack), Call::Delete);
        assert_eq!(Call::of(Settlement::Reject), Call::Delete);
        assert_eq!(
            Call::of(Settlement::Redeliver { delay: None }),
            Call::Nothing
        );
        assert_eq!(
            Call::of(Settlement::Redeliver {
                delay: Some(Duration::from_millis(1500))
            }),
            Call::ChangeVisibility(2)
        );
        assert_eq!(
            Call::of(Settlement::Redeliver {
                delay: Some(Duration::from_secs(100_000))
            }),
            Call::ChangeVisibility(43_200)
        );
        assert_eq!(Call::of(Settlement::Release), Call::ChangeVisibility(0));
    }
}
