//! RabbitMQ adapter of [tracelink](https://docs.rs/tracelink), over
//! [lapin](https://docs.rs/lapin) 4: trace context carried in the AMQP headers table, a traced
//! publish service, and a consume loop that runs handlers inside linked `process` spans and acks
//! only after they succeeded.
//!
//! | piece | what it does |
//! |---|---|
//! | [`FieldTableInjector`] / [`FieldTableExtractor`] | carriers over [`FieldTable`](lapin::types::FieldTable): inject long strings; read long strings, short strings and UTF-8 byte arrays; anything else reads as absent |
//! | [`Publish`] | an outgoing message (exchange, routing key, payload, properties, options); the user's headers are kept |
//! | [`AmqpPublisher`] | a Tower service over a lapin [`Channel`](lapin::Channel) returning the publisher confirmation; wrap it in a [`ProducerLayer`](tracelink_core::ProducerLayer) |
//! | [`AmqpDelivery`] | an incoming delivery with its queue |
//! | [`ConsumeLoop`] | drives a lapin [`Consumer`](lapin::Consumer) through a handler wrapped in a [`ConsumerLayer`](tracelink_core::ConsumerLayer); ack on success, nack (requeue by default) on failure |
//! | [`messaging_system`] | the [`MessagingSystem`](tracelink_core::MessagingSystem) for a connection URI |
//!
//! Spans follow the semantic conventions for RabbitMQ: `publish {destination}` (PRODUCER) with
//! `messaging.destination.name` = `{exchange}:{routing key}` (`amq.default` for the default
//! exchange without a key), `messaging.rabbitmq.destination.routing_key`,
//! `messaging.message.id` (from `message_id`), `messaging.message.conversation_id` (from
//! `correlation_id`), `messaging.message.body.size`, `server.address`/`server.port`; and
//! `process {exchange}:{routing key}:{queue}` (CONSUMER), in a new trace linked to the producer
//! span, with `messaging.rabbitmq.message.delivery_tag` as well. Failures carry a low-cardinality
//! `error.type`: `nack`, `unroutable`, the AMQP reply name (`NOT-FOUND`, ...),
//! `channel_closed`, `connection_closed`, `io`.
//!
//! # Quick start
//!
//! ```no_run
//! use std::convert::Infallible;
//! use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
//! use lapin::types::FieldTable;
//! use lapin::{Connection, ConnectionProperties};
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tracelink_amqp::{messaging_system, AmqpDelivery, AmqpPublisher, ConsumeLoop, Publish};
//! use tracelink_core::{Instrumentation, ProducerLayer};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
//! let connection = Connection::connect(url, ConnectionProperties::default()).await?;
//! let channel = connection.create_channel().await?;
//! channel
//!     .queue_declare("orders".into(), QueueDeclareOptions::default(), FieldTable::default())
//!     .await?;
//!
//! // Built once, after the global tracer provider and propagator are installed.
//! let instrumentation = Instrumentation::new(messaging_system(url));
//!
//! // Publish: a PRODUCER span `publish orders`, its context in the message headers.
//! let mut producer = ServiceBuilder::new()
//!     .layer(ProducerLayer::from(instrumentation.clone()))
//!     .service(AmqpPublisher::new(channel.clone()));
//! producer
//!     .ready()
//!     .await?
//!     .call(Publish::to_queue("orders".into(), b"hello".to_vec()))
//!     .await?;
//!
//! // Consume: a CONSUMER span `process orders:orders` per message, linked to the producer span;
//! // acked after the handler returned Ok.
//! let consumer = channel
//!     .basic_consume(
//!         "orders".into(),
//!         "".into(),
//!         BasicConsumeOptions::default(),
//!         FieldTable::default(),
//!     )
//!     .await?;
//! ConsumeLoop::new(consumer, instrumentation)
//!     .run(service_fn(|delivery: AmqpDelivery| async move {
//!         println!("got {} bytes", delivery.data().len());
//!         Ok::<_, Infallible>(())
//!     }))
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Customisation
//!
//! * Everything the core offers through [`Instrumentation::builder`](tracelink_core::Instrumentation::builder):
//!   tracer and meter providers, propagator, [`LinkMode`](tracelink_core::LinkMode), span names,
//!   captured headers, baggage policy.
//! * Publisher confirms: put the channel in confirm mode
//!   ([`Channel::confirm_select`](lapin::Channel::confirm_select)); the producer span then ends
//!   with the broker's confirmation and a `basic.nack` fails the publish ([`PublishError::Nacked`]).
//! * [`ConsumeLoop`]: [`with_concurrency`](ConsumeLoop::with_concurrency) (default 1),
//!   [`with_requeue`](ConsumeLoop::with_requeue) (default `true`; `false` sends failed messages
//!   to the dead-letter exchange), [`with_error_type`](ConsumeLoop::with_error_type),
//!   [`with_settle_spans`](ConsumeLoop::with_settle_spans) (`ack`/`nack` CLIENT spans), and
//!   [`run_until`](ConsumeLoop::run_until) for a graceful stop. Prefetch stays yours:
//!   [`Channel::basic_qos`](lapin::Channel::basic_qos).
//!
//! # Cargo features
//!
//! None of its own. lapin is used with its `tokio` runtime feature and without a TLS backend;
//! enable one (`rustls`, `native-tls`, `openssl`) on your own `lapin` dependency for `amqps://`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]
#![deny(unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod carrier;
mod consume;
mod error;
mod message;
mod publish;
mod system;

pub use carrier::{FieldTableExtractor, FieldTableInjector};
pub use consume::ConsumeLoop;
pub use error::{lapin_error_type, ConsumeError, PublishError};
pub use message::{
    delivery_destination, publish_destination, AmqpDelivery, Publish, DEFAULT_EXCHANGE,
};
pub use publish::{AmqpPublisher, PublishFuture, Published};
#[allow(deprecated)]
pub use system::{messaging_system, rabbitmq, RABBITMQ};

/// Re-exported so applications name the same lapin version.
pub use lapin;
