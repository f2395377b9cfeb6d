//! The receive side: a `StreamConsumer` as the core's [`Source`].

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures_util::FutureExt as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{ConsumerContext, DefaultConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::Message;
use rustc_hash::{FxHashMap, FxHasher};
use tracelink_core::{ErrorType, Received, Source};

use crate::message::KafkaMessage;
use crate::settler::{KafkaSettler, Shared, STORE_INTERVAL};

/// The consumer type of this adapter: the core's [`Consumer`](tracelink_core::Consumer) over a
/// [`KafkaSource`]. Build it with `KafkaConsumer::new(source, instrumentation)`, configure it
/// with the core's builder methods and run it with `run(handler, shutdown)` or
/// `run_batches(handler, shutdown)`.
pub type KafkaConsumer<C = tracelink_core::DefaultErrorType, X = DefaultConsumerContext> =
    tracelink_core::Consumer<KafkaSource<X>, C>;

/// A consumer configuration for a [`KafkaSource`]: `bootstrap.servers`, `group.id`, offsets
/// stored by the consumer after each handler's outcome (`enable.auto.offset.store=false`),
/// auto-commit of stored offsets, and `auto.offset.reset=earliest`.
pub fn consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.offset.reset", "earliest");
    config
}

/// An rdkafka [`StreamConsumer`] as the receive side of a [`KafkaConsumer`].
///
/// * Each receive brings one message, copied out of librdkafka's buffer
///   ([`KafkaMessage::detach`] says why). Errors librdkafka recovers from by itself
///   (`PartitionEOF`, `MessageConsumption`) are skipped; any other error stops the consumer
///   ([`ConsumeError::Receive`](tracelink_core::ConsumeError::Receive), its source a
///   [`ClientError`]).
/// * A partition is an ordering key: its messages are handled one after the other, in order,
///   while partitions run side by side up to the consumer's concurrency.
/// * The default prefetch (messages received and not yet settled) is 64.
/// * Receive spans are off by default (a Kafka consumer is a push consumer: librdkafka fetches
///   in the background).
pub struct KafkaSource<X = DefaultConsumerContext>
where
    X: ConsumerContext + 'static,
{
    consumer: Arc<StreamConsumer<X>>,
    group: Option<Arc<str>>,
    /// Topic names and numbers: a message's ordering key and settle receipt cost no allocation.
    topics: FxHashMap<Box<str>, (Arc<str>, u32)>,
    shared: Arc<Shared>,
}

impl<X: ConsumerContext + 'static> std::fmt::Debug for KafkaSource<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Creates the consumer from `config`, forcing `enable.auto.offset.store=false`; the group
    /// (`messaging.consumer.group.name`) is `group.id`. Subscribe or assign through
    /// [`consumer`](KafkaSource::consumer) before running.
    pub fn from_config(config: &ClientConfig) -> KafkaResult<Self> {
        let mut config = config.clone();
        config.set("enable.auto.offset.store", "false");
        let consumer: StreamConsumer = config.create()?;
        Ok(Self::new(consumer, config.get("group.id")))
    }
}

impl<X: ConsumerContext + 'static> KafkaSource<X> {
    /// Receives from `consumer`, which must have been created with
    /// `enable.auto.offset.store=false` (the consumer stores offsets itself, after each
    /// handler's outcome); `group` becomes `messaging.consumer.group.name`.
    pub fn new(consumer: StreamConsumer<X>, group: Option<&str>) -> Self {
        Self {
            consumer: Arc::new(consumer),
            group: group.map(Arc::from),
            topics: FxHashMap::default(),
            shared: Arc::default(),
        }
    }

    /// The rdkafka consumer (to subscribe, assign, ...); clone the `Arc` to reach it while
    /// the consumer runs (committed offsets, watermarks, ...).
    pub fn consumer(&self) -> &Arc<StreamConsumer<X>> {
        &self.consumer
    }

    /// The consumer group, when known.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }
}

/// A receive or settle call of the Kafka client that failed: the source of
/// [`ConsumeError::Receive`](tracelink_core::ConsumeError::Receive) and
/// [`ConsumeError::Settle`](tracelink_core::ConsumeError::Settle) (downcast to this type).
#[derive(Debug, thiserror::Error)]
#[error("kafka consumer failed: {0}")]
pub struct ClientError(#[source] pub KafkaError);

impl ErrorType for ClientError {
    fn error_type(&self) -> std::borrow::Cow<'static, str> {
        crate::publisher::error_type(&self.0)
    }
}

impl<X: ConsumerContext + 'static> Source for KafkaSource<X> {
    type Message = KafkaMessage;
    type Error = ClientError;
    type Settler = KafkaSettler<X>;

    fn settler(&self) -> KafkaSettler<X> {
        KafkaSettler::new(Arc::clone(&self.consumer), Arc::clone(&self.shared))
    }

    async fn receive(mut self, _max: usize) -> (Self, Result<Received<KafkaMessage>, ClientError>) {
        let result = loop {
            // While librdkafka has nothing to deliver, offsets done since the last store still
            // reach it within `STORE_INTERVAL` (the settler stores on its own when busy).
            // A message librdkafka already has is taken without arming a timer: the timer
            // (a clock read and a timer-wheel entry) is for the wait only.
            let received = match self.consumer.recv().now_or_never() {
                Some(received) => received,
                None => tokio::select! {
                    biased;
                    received = self.consumer.recv() => received,
                    () = tokio::time::sleep(STORE_INTERVAL) => {
                        self.shared.store_due(&self.consumer);
                        continue;
                    }
                },
            };
            match received {
                Ok(message) => {
                    if self.shared.fenced(message.topic(), message.partition()) {
                        // Fetched before the partition is rewound to a failed message: it comes
                        // again after the rewind.
                        continue;
                    }
                    let mut message = KafkaMessage::detach(&message, self.group.clone());
                    message.topic = Some(intern(&mut self.topics, message.topic()));
                    break Ok(Received::One(message));
                }
                Err(error) if transient(&error) => continue,
                Err(error) => break Err(ClientError(error)),
            }
        };
        (self, result)
    }

    fn ordering_key(&self, message: &KafkaMessage) -> Option<u64> {
        // The topic's number and the partition: exact, so two partitions never share a key (a
        // message given back behind a rewound partition must be of that partition).
        let partition = u64::from(message.partition() as u32);
        match &message.topic {
            Some((_, id)) => Some(u64::from(*id) << 32 | partition),
            None => {
                let mut hasher = FxHasher::default();
                message.topic().hash(&mut hasher);
                message.partition().hash(&mut hasher);
                Some(hasher.finish())
            }
        }
    }

    fn default_prefetch(&self) -> usize {
        64
    }
}

/// The shared name and number of `topic`, allocated once per topic.
fn intern(topics: &mut FxHashMap<Box<str>, (Arc<str>, u32)>, topic: &str) -> (Arc<str>, u32) {
    if let Some(interned) = topics.get(topic) {
        return interned.clone();
    }
    let interned = (Arc::<str>::from(topic), topics.len() as u32);
    topics.insert(topic.into(), interned.clone());
    interned
}

/// Errors librdkafka recovers from by itself: keep consuming.
fn transient(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::MessageConsumption(_)
    )
}
