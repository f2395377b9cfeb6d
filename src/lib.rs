//! # tracelink
//!
//! Traces that survive message brokers. On publish, a PRODUCER span whose context travels in the
//! message headers; on consume, a CONSUMER span in a new trace with a span link back to the
//! producer. OpenTelemetry messaging semantic conventions, Tower layers, one adapter per broker.
//!
//! This facade re-exports [`core`] (always) and one module per enabled broker adapter:
//!
//! | feature | module | client |
//! |---|---|---|
//! | `kafka` | `kafka` | rdkafka |
//! | `amqp` | `amqp` | lapin (RabbitMQ) |
//! | `nats` | `nats` | async-nats (core and JetStream) |
//! | `sqs` | `sqs` | aws-sdk-sqs |
//!
//! See the README for the tour and [`tracelink_core`](crate::core) for the layers.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use tracelink_core as core;
pub use tracelink_core::{
    BaggagePolicy, BatchConfig, BatchConsumerLayer, BatchProducerLayer, ConsumeError, Consumer,
    ConsumerLayer, Destination, Instrumentation, LinkMode, MessagingSystem, OnFailure,
    ProducerLayer, SpanName,
};

/// The NATS adapter (async-nats: core publish/subscribe, request/reply, JetStream).
#[cfg(feature = "nats")]
pub use tracelink_nats as nats;

/// The Amazon SQS adapter (aws-sdk-sqs: message-attribute and `AWSTraceHeader` carriers, traced
/// `SendMessage`/`SendMessageBatch`, a receive loop that deletes after success).
#[cfg(feature = "sqs")]
pub use tracelink_sqs as sqs;

/// The RabbitMQ adapter (lapin: `FieldTable` carriers, traced publish with publisher confirms, a
/// consume loop that acks after success and nacks on failure).
#[cfg(feature = "amqp")]
pub use tracelink_amqp as amqp;

/// The Kafka adapter (rdkafka: header carriers, a traced `FutureProducer` publisher, an
/// at-least-once `KafkaConsumer` over `StreamConsumer` with per-message and batch modes).
#[cfg(feature = "kafka")]
pub use tracelink_kafka as kafka;

/// The README's code blocks, compiled (and, where they need no broker, run) as doc tests, so the
/// README cannot drift from the API.
#[cfg(all(
    doctest,
    feature = "kafka",
    feature = "amqp",
    feature = "nats",
    feature = "sqs"
))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
