//! The consume loop: a `StreamConsumer` driven through a handler wrapped in tracelink's consumer
//! layers, storing offsets only after the handler succeeded.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt as _;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    CommitMode, Consumer, ConsumerContext, DefaultConsumerContext, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashMap;
use tower::{Layer, Service};
use tracelink_core::{
    BatchConsumerLayer, ClassifyError, ConsumerLayer, DefaultErrorType, Instrumentation,
};

use crate::message::KafkaMessage;
use crate::producer::messaging_system;

/// What the consume loop does when a handler fails.
///
/// In every case the failed message's offset is stored only when the policy says to move past
/// it, and the `process` span carries the failure (status Error, `error.type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnFailure {
    /// Stop consuming and return the error (the default). The failed message's offset, and
    /// those of later messages of its partition, are not stored: after a restart the group
    /// receives the message again. Handlers still running on other partitions are dropped
    /// (their spans end as `cancelled`, their messages are re-delivered too).
    #[default]
    Stop,
    /// Record a `message skipped` event on the `process` span, store the offset and go on.
    Skip,
}

/// Why [`ConsumeLoop::run`] returned early.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError<E> {
    /// The consumer failed (fatal errors, failed commits).
    #[error("kafka consumer failed: {0}")]
    Kafka(#[from] KafkaError),
    /// The handler failed with [`OnFailure::Stop`]; the message was not committed.
    #[error("handler failed on {topic}/{partition}@{offset}")]
    Handler {
        /// The handler's error.
        #[source]
        error: E,
        /// Topic of the message (the first of the batch in batch mode).
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
    },
    /// The handler service reported it can no longer take requests.
    #[error("handler not ready")]
    NotReady(#[source] E),
}

/// Batch mode of [`ConsumeLoop::run_batches`]: a batch holds up to `max_messages`, or what
/// arrived within `max_wait` of its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most messages in one batch.
    pub max_messages: usize,
    /// Longest wait for a batch to fill, from its first message.
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_messages: 100,
            max_wait: Duration::from_millis(100),
        }
    }
}

/// Drives an rdkafka [`StreamConsumer`] through a handler service wrapped in tracelink's
/// [`ConsumerLayer`] (one `process` span per message) or [`BatchConsumerLayer`], at least once:
///
/// * the consumer must run with `enable.auto.offset.store=false` ([`consumer_config`] and
///   [`ConsumeLoop::from_config`] set it); the loop stores a message's offset only after its
///   handler succeeded (or was skipped under [`OnFailure::Skip`]) and every earlier message of
///   its partition was done, and librdkafka's auto-commit (or the final commit when the loop
///   stops) commits stored offsets only. Done offsets are handed to librdkafka together, at
///   most 50 ms or [`max_in_flight`](ConsumeLoop::with_max_in_flight) messages after they are done (and always before the loop commits and
///   returns), so a crash or rebalance re-delivers at most that window more than an immediate
///   store would; commits happen every `auto.commit.interval.ms` (5 s by default) anyway;
/// * messages of one partition are handled one after the other, in order; partitions run
///   concurrently, with at most [`max_in_flight`](ConsumeLoop::with_max_in_flight) messages
///   received but not yet done across all partitions (default 64);
/// * after a rebalance, offsets of messages from partitions this consumer lost are not stored
///   (librdkafka refuses them): the partition's new owner receives them again;
/// * handler failures follow the [`OnFailure`] policy. For retries, put a
///   `tower::retry::Retry` in the handler stack: the `process` span then covers every attempt.
///
/// The handler runs inside the `process` span (OpenTelemetry context and, with
/// `tracing-opentelemetry`, `tracing` spans nest under it). All handlers run on the task that
/// polls [`run`](ConsumeLoop::run); spawn inside the handler for CPU-heavy work.
pub struct ConsumeLoop<C = DefaultErrorType, X = DefaultConsumerContext>
where
    X: ConsumerContext + 'static,
{
    consumer: StreamConsumer<X>,
    group: Option<Arc<str>>,
    instrumentation: Instrumentation,
    classify: C,
    on_failure: OnFailure,
    max_in_flight: usize,
}

impl<C, X: ConsumerContext + 'static> std::fmt::Debug for ConsumeLoop<C, X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeLoop")
            .field("group", &self.group)
            .field("on_failure", &self.on_failure)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// A consumer configuration for [`ConsumeLoop`]: `bootstrap.servers`, `group.id`, offsets
/// stored by the loop (`enable.auto.offset.store=false`), auto-commit of stored offsets, and
/// `auto.offset.reset=earliest`.
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

impl ConsumeLoop {
    /// Creates the consumer from `config` (forcing `enable.auto.offset.store=false`), with the
    /// group from `group.id` and, when `instrumentation` is `None`, an [`Instrumentation`] from
    /// [`messaging_system`] with the global providers.
    pub fn from_config(
        config: &ClientConfig,
        instrumentation: Option<Instrumentation>,
    ) -> KafkaResult<Self> {
        let mut config = config.clone();
        config.set("enable.auto.offset.store", "false");
        let consumer: StreamConsumer = config.create()?;
        let instrumentation =
            instrumentation.unwrap_or_else(|| Instrumentation::new(messaging_system(&config)));
        Ok(Self::new(consumer, config.get("group.id"), instrumentation))
    }
}

impl<X: ConsumerContext + 'static> ConsumeLoop<DefaultErrorType, X> {
    /// Drives `consumer`, which must have been created with `enable.auto.offset.store=false`;
    /// `group` becomes `messaging.consumer.group.name`.
    pub fn new(
        consumer: StreamConsumer<X>,
        group: Option<&str>,
        instrumentation: Instrumentation,
    ) -> Self {
        Self {
            consumer,
            group: group.map(Arc::from),
            instrumentation,
            classify: DefaultErrorType,
            on_failure: OnFailure::default(),
            max_in_flight: 64,
        }
    }
}

impl<C, X: ConsumerContext + 'static> ConsumeLoop<C, X> {
    /// Classifies handler errors for `error.type` with `classify` (see
    /// [`ConsumerLayer::with_error_type`]).
    pub fn with_error_type<C2>(self, classify: C2) -> ConsumeLoop<C2, X> {
        ConsumeLoop {
            consumer: self.consumer,
            group: self.group,
            instrumentation: self.instrumentation,
            classify,
            on_failure: self.on_failure,
            max_in_flight: self.max_in_flight,
        }
    }

    /// What to do when the handler fails (default [`OnFailure::Stop`]).
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// Most messages received but not yet done, across partitions (at least 1).
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// The rdkafka consumer (to subscribe, assign, seek, ...).
    pub fn consumer(&self) -> &StreamConsumer<X> {
        &self.consumer
    }

    /// Consumes until `shutdown` resolves or an error stops the loop (see [`OnFailure`]).
    ///
    /// On shutdown, handlers already running finish, messages received but not started are left
    /// for redelivery, and stored offsets are committed before it returns.
    pub async fn run<S, F>(&self, handler: S, shutdown: F) -> Result<(), ConsumeError<S::Error>>
    where
        S: Service<KafkaMessage>,
        C: ClassifyError<S::Error> + Clone,
        F: Future<Output = ()>,
    {
        let mut service = ConsumerLayer::from(self.instrumentation.clone())
            .with_error_type(self.classify.clone())
            .layer(MarkSkipped {
                inner: handler,
                skip: self.on_failure == OnFailure::Skip,
            });
        let mut shutdown = std::pin::pin!(shutdown.fuse());
        let mut stopping = false;
        // The partitions with a handler running, each with the messages received behind it
        // (an empty queue allocates nothing). One lookup when a message arrives and one when
        // its handler is done; FxHash, as the keys come from the consumer's own assignment.
        let mut running: FxHashMap<(Arc<str>, i32), VecDeque<KafkaMessage>> = FxHashMap::default();
        // Topic names, shared by the keys above so a message costs no name allocation.
        let mut topics: FxHashMap<Box<str>, Arc<str>> = FxHashMap::default();
        let mut in_flight = FuturesUnordered::new();
        let mut buffered = 0usize;
        let mut stores = Stores::default();
        let mut store_timer = tokio::time::interval(STORE_INTERVAL);
        store_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if stopping && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                Some((key, offset, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    buffered -= 1;
                    let (topic, partition): (Arc<str>, i32) = key;
                    match result {
                        Ok(_) => stores.done(&topic, partition, offset),
                        Err(error) if self.on_failure == OnFailure::Skip => {
                            drop(error);
                            stores.done(&topic, partition, offset);
                        }
                        Err(error) => {
                            // The handler's error is what matters; a failed commit only re-delivers more.
                            self.flush(&mut stores);
                            let _ = self.commit_stored(CommitMode::Async);
                            return Err(ConsumeError::Handler {
                                error,
                                topic: topic.to_string(),
                                partition,
                                offset,
                            });
                        }
                    }
                    if stores.pending >= self.max_in_flight {
                        self.flush(&mut stores);
                    }
                    let key = (topic, partition);
                    let next = running.get_mut(&key).and_then(VecDeque::pop_front);
                    match next {
                        Some(message) if !stopping => {
                            let offset = message.offset();
                            ready(&mut service).await.map_err(ConsumeError::NotReady)?;
                            let fut = service.call(message);
                            in_flight.push(tagged(fut, key, offset));
                        }
                        _ => {
                            running.remove(&key);
                        }
                    }
                }
                _ = store_timer.tick(), if stores.pending > 0 => self.flush(&mut stores),
                () = &mut shutdown, if !stopping => {
                    stopping = true;
                    // Received but never started: left for redelivery, offsets untouched.
                    for queue in running.values_mut() {
                        buffered -= queue.len();
                        queue.clear();
                    }
                }
                received = self.consumer.recv(), if !stopping && buffered < self.max_in_flight => {
                    let message = match received {
                        Ok(message) => KafkaMessage::detach(&message, self.group.clone()),
                        Err(error) if transient(&error) => continue,
                        Err(error) => return Err(ConsumeError::Kafka(error)),
                    };
                    buffered += 1;
                    let topic = match topics.get(message.topic()) {
                        Some(topic) => topic.clone(),
                        None => {
                            let topic: Arc<str> = Arc::from(message.topic());
                            topics.insert(message.topic().into(), topic.clone());
                            topic
                        }
                    };
                    let key = (topic, message.partition());
                    if let Some(queue) = running.get_mut(&key) {
                        queue.push_back(message);
                    } else {
                        let offset = message.offset();
                        ready(&mut service).await.map_err(ConsumeError::NotReady)?;
                        let fut = service.call(message);
                        running.insert(key.clone(), VecDeque::new());
                        in_flight.push(tagged(fut, key, offset));
                    }
                }
            }
        }
        self.flush(&mut stores);
        self.commit_stored(CommitMode::Sync)?;
        Ok(())
    }

    /// Consumes in batches (see [`BatchConfig`]) until `shutdown` resolves or an error stops the
    /// loop: one `process` span per batch with one link per message, batches handled one at a
    /// time (so partition order holds), offsets of a batch stored after its handler succeeded.
    pub async fn run_batches<S, F>(
        &self,
        handler: S,
        config: BatchConfig,
        shutdown: F,
    ) -> Result<(), ConsumeError<S::Error>>
    where
        S: Service<Vec<KafkaMessage>>,
        C: ClassifyError<S::Error> + Clone,
        F: Future<Output = ()>,
    {
        let mut service = BatchConsumerLayer::from(self.instrumentation.clone())
            .with_error_type(self.classify.clone())
            .layer(MarkSkipped {
                inner: handler,
                skip: self.on_failure == OnFailure::Skip,
            });
        let max_messages = config.max_messages.max(1);
        let mut shutdown = std::pin::pin!(shutdown.fuse());
        let mut stopping = false;
        while !stopping {
            let mut batch = Vec::with_capacity(max_messages);
            let mut deadline = None;
            while batch.len() < max_messages {
                let wait = async {
                    match deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    () = &mut shutdown => {
                        stopping = true;
                        break;
                    }
                    () = wait => break,
                    received = self.consumer.recv() => match received {
                        Ok(message) => {
                            batch.push(KafkaMessage::detach(&message, self.group.clone()));
                            if deadline.is_none() {
                                deadline = Some(tokio::time::Instant::now() + config.max_wait);
                            }
                        }
                        Err(error) if transient(&error) => {}
                        Err(error) => return Err(ConsumeError::Kafka(error)),
                    },
                }
            }
            if stopping || batch.is_empty() {
                // A partial batch at shutdown is left for redelivery.
                break;
            }
            let done: Vec<(Arc<str>, i32, i64)> = batch
                .iter()
                .map(|m| (Arc::from(m.topic()), m.partition(), m.offset()))
                .collect();
            ready(&mut service).await.map_err(ConsumeError::NotReady)?;
            match service.call(batch).await {
                Ok(_) => {}
                Err(_) if self.on_failure == OnFailure::Skip => {}
                Err(error) => {
                    // The handler's error is what matters; a failed commit only re-delivers more.
                    let _ = self.commit_stored(CommitMode::Async);
                    let (topic, partition, offset) = done.into_iter().next().unwrap_or_default();
                    return Err(ConsumeError::Handler {
                        error,
                        topic: topic.to_string(),
                        partition,
                        offset,
                    });
                }
            }
            let mut stores = Stores::default();
            for (topic, partition, offset) in &done {
                stores.done(topic, *partition, *offset);
            }
            self.flush(&mut stores);
        }
        self.commit_stored(CommitMode::Sync)?;
        Ok(())
    }

    /// Hands the offsets of done messages to librdkafka, one list for all partitions.
    fn flush(&self, stores: &mut Stores) {
        if stores.pending == 0 {
            return;
        }
        let mut list = TopicPartitionList::with_capacity(stores.next.len());
        for ((topic, partition), next) in stores.next.drain() {
            // Only fails for an offset out of range, which a consumed offset + 1 never is.
            let _ = list.add_partition_offset(&topic, partition, Offset::Offset(next));
        }
        stores.pending = 0;
        // Partitions revoked meanwhile are refused (the others are stored): their new owner
        // re-delivers those messages, which keeps at-least-once.
        let _ = self.consumer.store_offsets(&list);
    }

    /// Commits stored offsets; having nothing to commit is not an error.
    fn commit_stored(&self, mode: CommitMode) -> KafkaResult<()> {
        match self.consumer.commit_consumer_state(mode) {
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            other => other,
        }
    }
}

/// Longest time a done message's offset waits before it is handed to librdkafka. Offsets are
/// committed every `auto.commit.interval.ms` (5 s by default), so a store this much later changes
/// what a crash re-delivers by at most this window; it saves a librdkafka topic lookup, two
/// allocations and a lock per message (`store_offset` by name), which was a fifth of the loop's
/// own cost per message on the mock cluster.
const STORE_INTERVAL: Duration = Duration::from_millis(50);

/// Offsets of done messages not yet handed to librdkafka: per partition, the next offset to
/// consume (the last done + 1, as `rd_kafka_offsets_store` wants it).
#[derive(Debug, Default)]
struct Stores {
    next: FxHashMap<(Arc<str>, i32), i64>,
    /// Messages done since the last flush.
    pending: usize,
}

impl Stores {
    fn done(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        self.pending += 1;
        // Messages of a partition finish in order: the latest is the highest.
        *self.next.entry((Arc::clone(topic), partition)).or_default() = offset + 1;
    }
}

/// Errors librdkafka recovers from by itself: keep consuming.
fn transient(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::MessageConsumption(_)
    )
}

/// One opaque future type for every handler call of a loop, tagged with its partition and offset.
fn tagged<F: Future>(
    fut: F,
    key: (Arc<str>, i32),
    offset: i64,
) -> impl Future<Output = ((Arc<str>, i32), i64, F::Output)> {
    fut.map(move |result| (key, offset, result))
}

async fn ready<S: Service<R>, R>(service: &mut S) -> Result<(), S::Error> {
    poll_fn(|cx| service.poll_ready(cx)).await
}

/// Inside the consumer layer: under [`OnFailure::Skip`], marks the `process` span of a failed
/// handler with a `message skipped` event.
#[derive(Debug, Clone)]
struct MarkSkipped<S> {
    inner: S,
    skip: bool,
}

type Pass<T, E> = fn(Result<T, E>) -> Result<T, E>;
type Marked<F, T, E> = futures_util::future::Map<F, Pass<T, E>>;

fn keep<T, E>(result: Result<T, E>) -> Result<T, E> {
    result
}

fn mark<T, E>(result: Result<T, E>) -> Result<T, E> {
    if result.is_err() {
        // No semantic-conventions name exists for this event.
        Context::current()
            .span()
            .add_event("message skipped", Vec::new());
    }
    result
}

impl<S: Service<R>, R> Service<R> for MarkSkipped<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = Marked<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let f: Pass<S::Response, S::Error> = if self.skip { mark } else { keep };
        self.inner.call(request).map(f)
    }
}
