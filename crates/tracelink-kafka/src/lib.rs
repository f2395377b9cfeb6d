//! Kafka adapter of [tracelink](https://docs.rs/tracelink), over
//! [rdkafka](https://docs.rs/rdkafka): OpenTelemetry traces that survive Kafka.
//!
//! * [`carrier`]: [`HeaderInjector`] over rdkafka's `OwnedHeaders` (keeps your headers, replaces
//!   stale trace headers) and [`HeaderExtractor`] over anything implementing `Headers` (non-UTF-8
//!   values read as absent; conflicting repeated keys read as absent).
//! * [`KafkaProducer`]: a tower service publishing [`KafkaRecord`]s through a `FutureProducer`;
//!   [`KafkaProducer::traced`] wraps it in a `send {topic}` PRODUCER span that sets
//!   `messaging.destination.partition.id`, `messaging.kafka.offset`,
//!   `messaging.kafka.message.key` (text keys only), `messaging.kafka.message.tombstone`, and
//!   `error.type` (the librdkafka error code name) on failed deliveries.
//! * [`ConsumeLoop`]: drives a `StreamConsumer` through your handler inside a `process {topic}`
//!   CONSUMER span in a new trace, linked to the producer span. At least once: offsets are stored
//!   only after the handler succeeded; partition order is kept; in-flight messages are bounded;
//!   handler failures follow [`OnFailure`]. [`ConsumeLoop::run_batches`] hands the handler
//!   batches, with one link per message.
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
//!     consumer_config, messaging_system, ConsumeLoop, KafkaMessage, KafkaProducer, KafkaRecord,
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
//! let delivered = KafkaProducer::new(producer)
//!     .traced(instrumentation.clone())
//!     .oneshot(KafkaRecord::new("orders").with_key("o-1").with_payload("{\"qty\":1}"))
//!     .await?;
//! println!("partition {} offset {}", delivered.partition, delivered.offset);
//!
//! // Consume: a `process orders` span per message, linked to the `send` span.
//! let consume = ConsumeLoop::from_config(
//!     &consumer_config("127.0.0.1:9092", "order-service"),
//!     Some(instrumentation),
//! )?;
//! consume.consumer().subscribe(&["orders"])?;
//! let handler = service_fn(|message: KafkaMessage| async move {
//!     println!("order {:?}", message.payload());
//!     Ok::<_, Infallible>(())
//! });
//! // Runs until the shutdown future resolves (here: never); then commits what was handled.
//! consume.run(handler, std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Customisation
//!
//! * Everything about spans (tracer provider, propagator, [`LinkMode`](tracelink_core::LinkMode),
//!   span names, captured headers, baggage policy) is configured on the
//!   [`Instrumentation`](tracelink_core::Instrumentation) you pass in; [`messaging_system`] fills
//!   `server.address`/`server.port` and `messaging.client.id` from an rdkafka `ClientConfig`.
//! * The traced producer is a plain tower service: add timeouts, rate limits or retries with
//!   `tower::ServiceBuilder` around [`TracedProducer`] (one `send` span per attempt) or around
//!   [`KafkaProducer`] inside the layer (one span for all attempts). Errors are [`ProduceError`]
//!   (with the undelivered message).
//! * [`ConsumeLoop`]: [`OnFailure`] (stop and return the error, or skip with a span event),
//!   [`with_max_in_flight`](ConsumeLoop::with_max_in_flight),
//!   [`with_error_type`](ConsumeLoop::with_error_type) for handler errors that do not implement
//!   [`ErrorType`](tracelink_core::ErrorType); retries compose as a `tower::retry::Retry` in the
//!   handler stack; [`BatchConfig`] for [`run_batches`](ConsumeLoop::run_batches).
//! * Consume loops of your own: wrap a `BorrowedMessage` in [`KafkaMessage::new`] and call a
//!   [`ConsumerLayer`](tracelink_core::ConsumerLayer)-wrapped service with it.
//!
//! # Cargo features
//!
//! None. rdkafka is used with its default features: librdkafka is built from source by its build
//! script (needs a C compiler and `make`), with zlib.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]
#![deny(unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod carrier;
mod consumer;
mod message;
mod producer;

pub use carrier::{HeaderExtractor, HeaderInjector};
pub use consumer::{consumer_config, BatchConfig, ConsumeError, ConsumeLoop, OnFailure};
pub use message::{Delivered, KafkaMessage, KafkaRecord};
pub use producer::{error_type, messaging_system, KafkaProducer, ProduceError, TracedProducer};

/// Re-exported so users name the same rdkafka version.
pub use rdkafka;
