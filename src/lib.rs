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
//! See the README for the tour and `tracelink_core` for the layers.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use tracelink_core as core;
pub use tracelink_core::{
    BaggagePolicy, BatchConsumerLayer, BatchProducerLayer, ConsumerLayer, Destination,
    Instrumentation, LinkMode, MessagingSystem, ProducerLayer, SpanName,
};
