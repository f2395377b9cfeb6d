//! Broker-independent core of [tracelink](https://docs.rs/tracelink): traces that survive message
//! brokers.
//!
//! On publish, [`ProducerLayer`] opens a PRODUCER span and injects its context into the message's
//! headers through the installed propagator (W3C `traceparent`/`tracestate`/`baggage` by
//! default). On consume, [`ConsumerLayer`] extracts that context and runs the handler inside a
//! CONSUMER `process` span that starts a **new trace** with a **span link** to the producer span
//! ([`LinkMode::Link`]), or, with [`LinkMode::Parent`], continues the producer's trace and keeps
//! the link. Span names, kinds, attributes and metrics follow the OpenTelemetry messaging
//! semantic conventions.
//!
//! The core knows no broker: adapter crates (`tracelink-kafka`, `tracelink-amqp`,
//! `tracelink-nats`, `tracelink-sqs`) implement [`OutgoingMessage`], [`IncomingMessage`] and
//! [`PublishResponse`] for their client's types, provide carriers following the rules in
//! [`carrier`], and implement [`Source`] and [`Settler`] for their client's receive and settle
//! calls. The consume lifecycle is the core's [`Consumer`]: every adapter's consumer type
//! (`KafkaConsumer`, `AmqpConsumer`, `NatsConsumer`, `JetStreamConsumer`, `SqsConsumer`) is a
//! `Consumer` over its source, with the same builder, the same `run(handler, shutdown)`, the same
//! [`OnFailure`] policy, the same [`ConsumeError`] and the same spans.
//!
//! # Quick start
//!
//! ```
//! use std::collections::HashMap;
//! use std::convert::Infallible;
//! use opentelemetry::propagation::{Extractor, Injector};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tracelink_core::carrier::{MapExtractor, MapInjector};
//! use tracelink_core::{
//!     ConsumerLayer, Destination, IncomingMessage, MessagingSystem, OutgoingMessage, ProducerLayer,
//! };
//!
//! // A message type of your own (adapters provide these for real brokers).
//! #[derive(Clone)]
//! struct Msg { queue: String, headers: HashMap<String, String> }
//!
//! impl OutgoingMessage for Msg {
//!     fn destination(&self) -> Destination<'_> { Destination::new(&self.queue) }
//!     fn with_headers_mut(&mut self, f: &mut dyn FnMut(&mut dyn Injector)) {
//!         f(&mut MapInjector(&mut self.headers))
//!     }
//! }
//! impl IncomingMessage for Msg {
//!     fn destination(&self) -> Destination<'_> { Destination::new(&self.queue) }
//!     fn with_headers(&self, f: &mut dyn FnMut(&dyn Extractor)) { f(&MapExtractor(&self.headers)) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let system = MessagingSystem::new("my_queue");
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
//!
//! // Publish: a PRODUCER span `send orders`, its context injected into the headers.
//! let mut producer = ServiceBuilder::new()
//!     .layer(ProducerLayer::new(system.clone()))
//!     .service(service_fn(move |msg: Msg| {
//!         let tx = tx.clone();
//!         async move { tx.send(msg).map_err(|_| std::io::Error::other("closed")) }
//!     }));
//! producer.ready().await.unwrap()
//!     .call(Msg { queue: "orders".into(), headers: HashMap::new() }).await.unwrap();
//!
//! // Consume: a CONSUMER span `process orders` in a new trace, linked to the producer span.
//! let mut consumer = ServiceBuilder::new()
//!     .layer(ConsumerLayer::new(system))
//!     .service(service_fn(|msg: Msg| async move {
//!         println!("handling a message from {}", msg.queue);
//!         Ok::<_, Infallible>(())
//!     }));
//! let msg = rx.recv().await.unwrap();
//! consumer.ready().await.unwrap().call(msg).await.unwrap();
//! # }
//! ```
//!
//! # Customisation
//!
//! Build an [`Instrumentation`] and turn it into any layer with `From`:
//!
//! * tracer and meter: the global providers (scope `tracelink`) or
//!   [`with_tracer_provider`](InstrumentationBuilder::with_tracer_provider) /
//!   [`with_meter_provider`](InstrumentationBuilder::with_meter_provider);
//! * propagator: the global one (so B3, Jaeger or X-Ray propagators work unchanged) or
//!   [`with_propagator`](InstrumentationBuilder::with_propagator);
//! * [`LinkMode`]: link (default) or parent-and-link;
//! * [`SpanName`]: destination, a template for high-cardinality destinations, or none;
//! * header capture: an opt-in allow-list recorded as `messaging.header.<name>`;
//! * [`BaggagePolicy`] for untrusted producers: keep, drop or cap;
//! * `error.type` from failures: [`ErrorType`] on your error, or a [`ClassifyError`] hook
//!   (`with_error_type` on each layer).
//!
//! Batches: [`BatchProducerLayer`] (one `send` span, one `create` context per message) and
//! [`BatchConsumerLayer`] (one `process` span, one link per message).
//!
//! Consumers ([`Consumer`]): concurrency and prefetch, the [`OnFailure`] policy, CLIENT settle
//! spans (`ack`, `nack`, `delete`, `commit`, ... children of the `process` span), CLIENT
//! `receive` spans (on by default for pull consumers), batches ([`BatchConfig`]), and a graceful
//! shutdown that finishes and settles the messages in flight. The consumer applies the
//! [`ConsumerLayer`] itself: a handler is a plain `Service` over the broker's delivery type.
//!
//! # Metrics
//!
//! From the global meter provider unless given one: `messaging.client.operation.duration` (send
//! and receive), `messaging.process.duration`, `messaging.client.sent.messages`, and
//! `messaging.client.consumed.messages` (counted once per message, when it reaches a handler,
//! so pull consumers do not count a message on receive and again on process), with
//! `messaging.system`, `messaging.operation.name`, `messaging.destination.name` (the template
//! when there is one), `server.address`/`server.port`, consumer group and subscription, and
//! `error.type` on failures.
//!
//! # Composition with tower
//!
//! The layers are plain tower layers. Put retries *outside* the consumer layer to get one
//! `process` span per attempt (each failed attempt shows its error), or *inside* it to get one
//! span covering every attempt. A timeout outside the layer drops the handler future: the span
//! ends with `error.type` = `cancelled`. A timeout inside it fails the handler with
//! `error.type` = `timeout`.
//!
//! # Cargo features
//!
//! None: the core always depends on `opentelemetry` (trace and metrics API), `tower` and
//! `opentelemetry-semantic-conventions`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]
#![deny(unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod baggage_policy;
pub mod carrier;
mod consume;
mod consumer;
mod error_type;
mod instrumentation;
mod link_mode;
mod message;
mod metrics;
mod producer;
pub mod propagation;
mod span_name;

pub use baggage_policy::BaggagePolicy;
pub use consume::{
    BatchConfig, ConsumeError, Consumer, OnFailure, Received, Settlement, Settler, Source,
};
pub use consumer::{
    BatchConsumerFuture, BatchConsumerLayer, BatchConsumerService, ConsumerFuture, ConsumerLayer,
    ConsumerService,
};
pub use error_type::{ClassifyError, DefaultErrorType, ErrorType, TypeNameErrorType, OTHER_ERROR};
pub use instrumentation::{
    ClientSpan, Instrumentation, InstrumentationBuilder, ReceiveSpan, SettleSpan, CANCELLED,
};
pub use link_mode::LinkMode;
pub use message::{
    server_from_url, BatchPublishResponse, Destination, IncomingMessage, MessagingSystem,
    OutgoingMessage, PublishResponse,
};
pub use producer::{
    BatchProducerFuture, BatchProducerLayer, BatchProducerService, OnInject, ProducerFuture,
    ProducerLayer, ProducerService, SpanEvent,
};
pub use span_name::SpanName;

/// Re-exported so adapters and users name the same versions.
pub use opentelemetry;
