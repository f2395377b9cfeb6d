//! Kafka adapter of [tracelink](https://docs.rs/tracelink), over
//! [rdkafka](https://docs.rs/rdkafka): OpenTelemetry traces that survive Kafka.
//!
//! * [`carrier`]: [`HeaderInjector`] over rdkafka's `OwnedHeaders` (keeps your headers, replaces
//!   stale trace headers) and [`HeaderExtractor`] over anything implementing `Headers` (non-UTF-8
//!   values read as absent; conflicting repeated keys read as absent).
//! * [`KafkaPublisher`]: a tower service publishing [`KafkaRecord`]s through a `FutureProducer`;
//!   [`KafkaPublisher::traced`] wraps it in a `send {topic}` PRODUCER span that sets
//!   `messaging.destination.partition.id`, `messaging.kafka.offset`,
//!   `messaging.kafka.message.key` (text keys only), `messaging.kafka.message.tombstone`, and
//!   `error.type` (the librdkafka error code name) on failed deliveries.
//! * [`KafkaConsumer`]: the core's [`Consumer`](tracelink_core::Consumer) over a
//!   [`KafkaSource`] (a `StreamConsumer`): your handler runs inside a `process {topic}` CONSUMER
//!   span in a new trace, linked to the producer span. At least once: offsets are stored only
//!   after the handler's outcome, in partition order; messages of a partition are handled one
//!   after the other; `run_batches` hands the handler batches, with one link per message.
//!
//! # Quick start
//!
//! ```no_run
//! use std::convert::Infallible;
//! use rdkafka::config::ClientConfig;
//! use rdkafka::consumer::Consumer;
//! use rdkafka::producer::FutureProducer;
//! use tower::{service_fn, ServiceExt};
//! use tracelink_core::Instrumentation;
//! use tracelink_kafka::{
//!     consumer_config, messaging_system, KafkaConsumer, KafkaMessage, KafkaPublisher,
//!     KafkaRecord, KafkaSource,
//! };
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = ClientConfig::new();
//! config.set("bootstrap.servers", "127.0.0.1:9092");
//! let producer: FutureProducer = config.create()?;
//! let instrumentation = Instrumentation::new(messaging_system(&config));
//!
//! // Publish: a `send orders` span; its context travels in the record's headers.
//! let delivered = KafkaPublisher::new(producer)
//!     .traced(instrumentation.clone())
//!     .oneshot(KafkaRecord::new("orders").with_key("o-1").with_payload("{\"qty\":1}"))
//!     .await?;
//! println!("partition {} offset {}", delivered.partition, delivered.offset);
//!
//! // Consume: a `process orders` span per message, linked to the `send` span.
//! let source = KafkaSource::from_config(&consumer_config("127.0.0.1:9092", "order-service"))?;
//! source.consumer().subscribe(&["orders"])?;
//! let handler = service_fn(|message: KafkaMessage| async move {
//!     println!("order {:?}", message.payload());
//!     Ok::<_, Infallible>(())
//! });
//! // Runs until the shutdown future completes (here: never); then commits what was handled.
//! KafkaConsumer::new(source, instrumentation)
//!     .with_concurrency(8)
//!     .run(handler, std::future::pending::<()>())
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Failure policy
//!
//! What the core's [`OnFailure`](tracelink_core::OnFailure) policies do on Kafka (the
//! settler's table, [`KafkaSettler`], has the details):
//!
//! | policy | Kafka |
//! |---|---|
//! | `Redeliver` (default) | no offset stored for it; the partition is rewound (`seek`) to the message, which is handled again, then the messages after it, in order (settle span `seek`) |
//! | `RedeliverAfter(d)` | the same, the rewind after `d` (messages of that partition fetched meanwhile are dropped and come again) |
//! | `Reject` | the offset past it is stored and committed, as for a success (settle span `commit`); the `process` span has a `message rejected` event |
//! | `Stop` | rewound as `Redeliver`; the consumer stops, commits what was done and returns `ConsumeError::Handler`; a restarted consumer of the group receives the message again |
//! | released (received, never handled, at stop) | no offset stored: delivered again after a restart or rebalance |
//!
//! # Customisation
//!
//! * Everything about spans (tracer provider, propagator, [`LinkMode`](tracelink_core::LinkMode),
//!   span names, captured headers, baggage policy) is configured on the
//!   [`Instrumentation`](tracelink_core::Instrumentation) you pass in; [`messaging_system`] fills
//!   `server.address`/`server.port` and `messaging.client.id` from an rdkafka `ClientConfig`.
//! * The traced publisher is a plain tower service: add timeouts, rate limits or retries with
//!   `tower::ServiceBuilder` around the traced publisher ([`KafkaPublisher::traced`]) (one `send` span per attempt) or around
//!   [`KafkaPublisher`] inside the layer (one span for all attempts). Errors are [`ProduceError`]
//!   (with the undelivered message).
//! * [`KafkaConsumer`] has the core's builder: `with_concurrency` (partitions handled side by
//!   side), `with_prefetch` (default 64), `on_failure`, `with_settle_spans` (`commit {topic}`,
//!   `seek {topic}`), `with_receive_spans`, `with_batch`, `with_error_type`; retries compose as a
//!   `tower::retry::Retry` in the handler stack (the `process` span covers every attempt).
//!   Receive and settle failures carry a [`ClientError`].
//! * Consume loops of your own: wrap a `BorrowedMessage` in [`KafkaMessage::new`] and call a
//!   [`ConsumerLayer`](tracelink_core::ConsumerLayer)-wrapped service with it.
//!
//! # Cargo features
//!
//! * `bound-metrics` (default): forwards tracelink-core's `bound-metrics`.
//!
//! rdkafka is used with its default features: librdkafka is built from source by its build
//! script (needs a C compiler and `make`), with zlib.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]
#![deny(unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod carrier;
mod message;
mod publisher;
mod settler;
mod source;

pub use carrier::{HeaderExtractor, HeaderInjector};
pub use message::{Delivered, KafkaMessage, KafkaRecord};
pub use publisher::{error_type, messaging_system, KafkaPublisher, ProduceError};
pub use settler::{KafkaReceipt, KafkaSettler};
pub use source::{consumer_config, ClientError, KafkaConsumer, KafkaSource};

/// Re-exported so users name the same rdkafka version.
pub use rdkafka;
