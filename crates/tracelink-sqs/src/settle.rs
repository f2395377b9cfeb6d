//! The settle side: `DeleteMessage` and `ChangeMessageVisibility` (and their batch calls) as the
//! core consumer's [`Settler`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use futures_util::future::join_all;
use tracelink_core::{Settlement, Settler};

use crate::error::{EntryError, SqsError};
use crate::message::{Queue, ReceivedMessage};
use crate::source::MAX_VISIBILITY_SECONDS;

/// Entries SQS takes in one batch call.
const MAX_BATCH: usize = 10;

/// Settles the messages of an [`SqsSource`](crate::SqsSource):
///
/// | settlement | call | settle span |
/// |---|---|---|
/// | `Ack` (handler succeeded) | `DeleteMessage` | `delete {queue}` |
/// | `Redeliver` (without delay) | none: SQS redelivers when the visibility timeout expires | none |
/// | `Redeliver` after `d` | `ChangeMessageVisibility` to `d` (whole seconds, rounded up) | `change_visibility {queue}` |
/// | `Reject` | `DeleteMessage` | `delete {queue}` |
/// | `Release` (received, never handled) | `ChangeMessageVisibility` to 0: delivered again at once | `change_visibility {queue}` |
///
/// SQS has no reject: a redrive policy moves a message to its dead-letter queue only after
/// `maxReceiveCount` receives, so leaving a rejected message there would have it handled again,
/// which is what `Reject` rules out. Use [`OnFailure::Redeliver`](tracelink_core::OnFailure)
/// to let a redrive policy dead-letter failing messages.
///
/// Batches of settlements (a batch consumer's, what a consumer gives back when it stops) go
/// out as `DeleteMessageBatch` and `ChangeMessageVisibilityBatch` calls of up to 10 entries;
/// an entry SQS refuses fails alone ([`SqsError::Entry`]).
#[derive(Debug, Clone)]
pub struct SqsSettler {
    client: Client,
    queue: Arc<Queue>,
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
        Self { client, queue }
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
        async move {
            let Some(handle) = receipt else {
                return Ok(());
            };
            match Call::of(settlement) {
                Call::Nothing => Ok(()),
                Call::Delete => client
                    .delete_message()
                    .queue_url(&queue.url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| SqsError::sdk("DeleteMessage", e)),
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
