//! The settle side: offsets stored in partition order, a failed message's partition rewound.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashMap;
use tracelink_core::{Settlement, Settler};

use crate::message::KafkaMessage;
use crate::source::ClientError;

/// Longest time a done message's offset waits before it is handed to librdkafka. Offsets are
/// committed every `auto.commit.interval.ms` (5 s by default), so a store this much later changes
/// what a crash re-delivers by at most this window; it saves a librdkafka topic lookup, two
/// allocations and a lock per message (`store_offset` by name), which was a fifth of the consume
/// loop's own cost per message on the mock cluster.
pub(crate) const STORE_INTERVAL: Duration = Duration::from_millis(50);

/// Most done messages whose offsets wait to be handed to librdkafka together.
const STORE_BATCH: usize = 64;

/// What a [`KafkaSettler`] keeps of a message to settle it: its topic, partition and offset.
#[derive(Debug, Clone)]
pub struct KafkaReceipt {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
}

/// The settle side of a [`KafkaSource`](crate::KafkaSource), made by the source for its
/// consumer. Kafka has no per-message acknowledgement: a consumer group moves past a message
/// by committing a later offset of its partition, so:
///
/// | settlement | what it does | settle span |
/// |---|---|---|
/// | `Ack` (handler succeeded), `Reject` ([`OnFailure::Reject`](tracelink_core::OnFailure::Reject)) | the message is done: the offset after it is stored (`rd_kafka_offsets_store`, in partition order, batched: at most 50 ms or 64 messages later) and committed by librdkafka's auto-commit and when the consumer stops | `commit {topic}` |
/// | `Redeliver` ([`OnFailure::Redeliver`](tracelink_core::OnFailure::Redeliver), [`Stop`](tracelink_core::OnFailure::Stop)) | nothing is stored for it; the partition is rewound (`seek`) to the message, which is consumed again, followed by the messages after it (the consumer gives those back unhandled) | `seek {topic}` |
/// | `Redeliver` after a delay ([`OnFailure::RedeliverAfter`](tracelink_core::OnFailure::RedeliverAfter)) | the same, the rewind happening after the delay (the settle waits, so a shutdown waits for it too); messages of that partition fetched meanwhile are dropped, to come again after the rewind | `seek {topic}` |
/// | `Release` (received, never handled, when the consumer stops or behind a rewound message) | nothing: its offset is not stored, so the group delivers it again after a restart or rebalance (or the rewind does) | none |
///
/// Stored offsets never pass a message that was not done, as messages of one partition are
/// handled one after the other. Offsets of partitions revoked by a rebalance are refused by
/// librdkafka: their new owner delivers those messages again. [`close`](Settler::close) hands
/// the remaining done offsets to librdkafka and commits synchronously.
pub struct KafkaSettler<X>
where
    X: ConsumerContext + 'static,
{
    consumer: Arc<StreamConsumer<X>>,
    shared: Arc<Shared>,
}

impl<X: ConsumerContext + 'static> std::fmt::Debug for KafkaSettler<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettler").finish_non_exhaustive()
    }
}

impl<X: ConsumerContext + 'static> KafkaSettler<X> {
    pub(crate) fn new(consumer: Arc<StreamConsumer<X>>, shared: Arc<Shared>) -> Self {
        Self { consumer, shared }
    }

    /// Marks `receipt` done: its partition's next offset to store.
    fn done(&self, receipt: KafkaReceipt) {
        let mut stores = self.shared.stores();
        stores.done(receipt);
        if stores.pending >= STORE_BATCH || stores.due() {
            stores.flush(&self.consumer);
        }
    }

    /// Rewinds the partition of `receipt` to it.
    fn rewind(&self, receipt: &KafkaReceipt) -> Result<(), ClientError> {
        // Asynchronous (timeout 0): librdkafka raises the partition's version barrier in this
        // call, so messages it fetched before are discarded from here on, and the next message
        // of the partition handed out is this one.
        self.consumer
            .seek(
                &receipt.topic,
                receipt.partition,
                Offset::Offset(receipt.offset),
                Timeout::After(Duration::ZERO),
            )
            .map_err(ClientError)
    }

    /// Settles a message as the table of [`KafkaSettler`] says.
    fn settle_one(
        &self,
        receipt: KafkaReceipt,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<X> {
        let mut immediate = Ok(());
        let mut delayed = None;
        match settlement {
            Settlement::Ack | Settlement::Reject => self.done(receipt),
            Settlement::Redeliver { delay: None } => immediate = self.rewind(&receipt),
            Settlement::Redeliver { delay: Some(delay) } => {
                self.shared.fence(&receipt);
                delayed = Some((
                    Arc::clone(&self.consumer),
                    Arc::clone(&self.shared),
                    receipt,
                    delay,
                ));
            }
            // Release, and whatever later versions of the core add: store nothing, so the
            // message is delivered again.
            _ => {}
        }
        async move {
            if let Some((consumer, shared, receipt, delay)) = delayed {
                tokio::time::sleep(delay).await;
                let settler = KafkaSettler { consumer, shared };
                settler.rewind(&receipt)?;
                // No await between the rewind and lifting the fence: no stale message slips in.
                settler.shared.unfence(&receipt);
            }
            immediate
        }
    }
}

impl<X: ConsumerContext + 'static> Settler<KafkaMessage> for KafkaSettler<X> {
    type Receipt = KafkaReceipt;
    type Error = ClientError;

    fn receipt(&self, message: &KafkaMessage) -> KafkaReceipt {
        let topic = match &message.topic {
            Some((topic, _)) => Arc::clone(topic),
            None => Arc::from(rdkafka::Message::topic(message.message())),
        };
        KafkaReceipt {
            topic,
            partition: message.partition(),
            offset: message.offset(),
        }
    }

    fn operation(&self, settlement: Settlement) -> Option<&'static str> {
        match settlement {
            Settlement::Ack | Settlement::Reject => Some("commit"),
            // The consumer's own call that makes the message come again: `seek` back to it.
            Settlement::Redeliver { .. } => Some("seek"),
            _ => None,
        }
    }

    fn settle(
        &self,
        receipt: KafkaReceipt,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<X> {
        self.settle_one(receipt, settlement)
    }

    fn settle_all(
        &self,
        items: Vec<(KafkaReceipt, Settlement)>,
    ) -> impl Future<Output = Vec<Result<(), ClientError>>> + Send + 'static + use<X> {
        // A batch may hold several messages of a partition: rewind each partition once, to its
        // first message to redeliver (rewinding to every one in turn would land on the last).
        let mut first: FxHashMap<(Arc<str>, i32), i64> = FxHashMap::default();
        for (receipt, settlement) in &items {
            if let Settlement::Redeliver { .. } = settlement {
                let offset = first
                    .entry((Arc::clone(&receipt.topic), receipt.partition))
                    .or_insert(receipt.offset);
                *offset = (*offset).min(receipt.offset);
            }
        }
        let calls: Vec<_> = items
            .into_iter()
            .map(|(receipt, settlement)| {
                let rewinds = match settlement {
                    Settlement::Redeliver { .. } => {
                        first.get(&(Arc::clone(&receipt.topic), receipt.partition))
                            == Some(&receipt.offset)
                    }
                    _ => true,
                };
                let settlement = match rewinds {
                    true => settlement,
                    // Comes again with the rewind of its partition's first message.
                    false => Settlement::Release,
                };
                self.settle_one(receipt, settlement)
            })
            .collect();
        futures_util::future::join_all(calls)
    }

    fn close(&self) -> impl Future<Output = Result<(), ClientError>> + Send + 'static + use<X> {
        let consumer = Arc::clone(&self.consumer);
        let shared = Arc::clone(&self.shared);
        async move {
            shared.stores().flush(&consumer);
            // A synchronous commit waits for the group coordinator (for as long as it is
            // unreachable): off the runtime's worker threads.
            let committed = tokio::task::spawn_blocking(move || {
                consumer.commit_consumer_state(CommitMode::Sync)
            })
            .await;
            match committed {
                // Nothing to commit is not an error.
                Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) | Ok(())) => Ok(()),
                Ok(Err(error)) => Err(ClientError(error)),
                // The blocking pool is shutting down: librdkafka's own close commits instead.
                Err(_) => Ok(()),
            }
        }
    }
}

/// State the source and the settler of one consumer share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    stores: Mutex<Stores>,
    /// Partitions waiting to be rewound to the offset of a failed message (its redelivery
    /// delay): messages of theirs fetched meanwhile are dropped.
    fences: Mutex<FxHashMap<(Arc<str>, i32), i64>>,
    /// How many fences: the receive path looks at `fences` only when there are some.
    fenced: AtomicUsize,
}

impl Shared {
    fn stores(&self) -> MutexGuard<'_, Stores> {
        // A panic while holding the lock leaves offsets that are still valid to store.
        self.stores.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fences(&self) -> MutexGuard<'_, FxHashMap<(Arc<str>, i32), i64>> {
        self.fences.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands done offsets to librdkafka when they waited `STORE_INTERVAL`.
    pub(crate) fn store_due<X: ConsumerContext + 'static>(&self, consumer: &StreamConsumer<X>) {
        let mut stores = self.stores();
        if stores.due() {
            stores.flush(consumer);
        }
    }

    fn fence(&self, receipt: &KafkaReceipt) {
        let previous = self.fences().insert(
            (Arc::clone(&receipt.topic), receipt.partition),
            receipt.offset,
        );
        if previous.is_none() {
            self.fenced.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn unfence(&self, receipt: &KafkaReceipt) {
        let mut fences = self.fences();
        let key = (Arc::clone(&receipt.topic), receipt.partition);
        if fences.get(&key) == Some(&receipt.offset) {
            fences.remove(&key);
            self.fenced.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether messages of this partition are dropped until it is rewound.
    pub(crate) fn fenced(&self, topic: &str, partition: i32) -> bool {
        self.fenced.load(Ordering::Relaxed) > 0
            && self
                .fences()
                .keys()
                .any(|(t, p)| *p == partition && &**t == topic)
    }
}

/// Offsets of done messages not yet handed to librdkafka: per partition, the next offset to
/// consume (the last done + 1, as `rd_kafka_offsets_store` wants it).
#[derive(Debug, Default)]
struct Stores {
    next: FxHashMap<(Arc<str>, i32), i64>,
    /// Messages done since the last store.
    pending: usize,
    /// When the oldest of them was done.
    since: Option<Instant>,
}

impl Stores {
    fn done(&mut self, receipt: KafkaReceipt) {
        self.pending += 1;
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
        // Messages of a partition finish in order: the latest is the highest.
        self.next
            .insert((receipt.topic, receipt.partition), receipt.offset + 1);
    }

    fn due(&self) -> bool {
        self.since
            .is_some_and(|since| since.elapsed() >= STORE_INTERVAL)
    }

    /// Hands the offsets of done messages to librdkafka, one list for all partitions.
    fn flush<X: ConsumerContext + 'static>(&mut self, consumer: &StreamConsumer<X>) {
        if self.pending == 0 {
            return;
        }
        let mut list = TopicPartitionList::with_capacity(self.next.len());
        for ((topic, partition), next) in self.next.drain() {
            // Only fails for an offset out of range, which a consumed offset + 1 never is.
            let _ = list.add_partition_offset(&topic, partition, Offset::Offset(next));
        }
        self.pending = 0;
        self.since = None;
        // Partitions revoked meanwhile are refused (the others are stored): their new owner
        // re-delivers those messages, which keeps at-least-once.
        let _ = consumer.store_offsets(&list);
    }
}
