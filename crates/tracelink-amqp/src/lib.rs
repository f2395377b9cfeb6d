//! RabbitMQ adapter of [tracelink](https://docs.rs/tracelink), over
//! [lapin](https://docs.rs/lapin) 4: trace context carried in the AMQP headers table, a traced
//! publish service, and a traced consumer (the core's consume lifecycle over a lapin consumer)
//! that runs handlers inside linked `process` spans and acks only after they succeeded.
//!
//! | role | item |
//! |---|---|
//! | system helper | [`messaging_system`]: the [`MessagingSystem`](tracelink_core::MessagingSystem) for a connection URI |
//! | carriers | [`carrier`]: [`FieldTableInjector`] / [`FieldTableExtractor`] over [`FieldTable`](lapin::types::FieldTable): inject long strings; read long strings, short strings and UTF-8 byte arrays; anything else reads as absent |
//! | outgoing message | [`Publish`]: exchange, routing key, payload, properties, options; the user's headers are kept |
//! | publisher | [`AmqpPublisher::new`]`(channel)`, a Tower service returning the publisher confirmation; [`traced`](AmqpPublisher::traced)`(instrumentation)` puts it in PRODUCER spans |
//! | incoming message | [`AmqpDelivery`]: a lapin delivery with its queue |
//! | consumer | [`AmqpConsumer`]`::new(lapin_consumer, instrumentation)`, the core's [`Consumer`](tracelink_core::Consumer) over an [`AmqpSource`]; `run(handler, shutdown)` |
//!
//! Spans follow the semantic conventions for RabbitMQ: `publish {destination}` (PRODUCER) with
//! `messaging.destination.name` = `{exchange}:{routing key}` (`amq.default` for the default
//! exchange without a key), `messaging.rabbitmq.destination.routing_key`,
//! `messaging.message.id` (from `message_id`), `messaging.message.conversation_id` (from
//! `correlation_id`), `messaging.message.body.size`, `server.address`/`server.port`; and
//! `process {exchange}:{routing key}:{queue}` (CONSUMER), in a new trace linked to the producer
//! span, with `messaging.rabbitmq.message.delivery_tag` as well; with settle spans on, an
//! `ack`/`nack`/`reject {exchange}:{routing key}:{queue}` CLIENT span per settlement, child of
//! the process span. Failures carry a low-cardinality `error.type`: `nack`, `unroutable`, the
//! AMQP reply name (`NOT-FOUND`, ...), `channel_closed`, `connection_closed`, `io`.
//!
//! # Quick start
//!
//! ```no_run
//! use std::convert::Infallible;
//! use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
//! use lapin::types::FieldTable;
//! use lapin::{Connection, ConnectionProperties};
//! use tower::{service_fn, ServiceExt};
//! use tracelink_amqp::{messaging_system, AmqpConsumer, AmqpDelivery, AmqpPublisher, Publish};
//! use tracelink_core::Instrumentation;
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
//! AmqpPublisher::new(channel.clone())
//!     .traced(instrumentation.clone())
//!     .oneshot(Publish::to_queue("orders".into(), b"hello".to_vec()))
//!     .await?;
//!
//! // Consume: a CONSUMER span `process orders:orders` per message, linked to the producer span;
//! // acked after the handler returned Ok, requeued (`basic.nack`) after an error.
//! let consumer = channel
//!     .basic_consume(
//!         "orders".into(),
//!         "".into(),
//!         BasicConsumeOptions::default(),
//!         FieldTable::default(),
//!     )
//!     .await?;
//! let handler = service_fn(|delivery: AmqpDelivery| async move {
//!     println!("got {} bytes", delivery.data().len());
//!     Ok::<_, Infallible>(())
//! });
//! let shutdown = async { /* e.g. tokio::signal::ctrl_c().await */ };
//! AmqpConsumer::new(consumer, instrumentation)
//!     .run(handler, shutdown)
//!     .await?;
//! channel.close(200, "done".into()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Failure policy
//!
//! What each [`OnFailure`](tracelink_core::OnFailure) policy does on RabbitMQ (a failed
//! message is never acknowledged):
//!
//! | policy | RabbitMQ |
//! |---|---|
//! | `Redeliver` (default) | `basic.nack` with `requeue`: back to the queue and delivered again at once, flagged `redelivered` (settle span `nack`) |
//! | `RedeliverAfter(d)` | the same as `Redeliver`: RabbitMQ cannot delay a requeue, `d` is ignored (delay with a dead-letter exchange and a message TTL) |
//! | `Reject` | `basic.reject` without `requeue`: to the queue's dead-letter exchange, or dropped when it has none (settle span `reject`) |
//! | `Stop` | `basic.nack` with `requeue` as `Redeliver`, then the consumer stops and `run` returns `ConsumeError::Handler` |
//! | given back on stop (`Release`) | `basic.nack` with `requeue` for what the consumer received but did not hand to a handler (no settle span); deliveries lapin buffered but the consumer never took go back when their channel closes |
//!
//! # Customisation
//!
//! * Everything the core offers through [`Instrumentation::builder`](tracelink_core::Instrumentation::builder):
//!   tracer and meter providers, propagator, [`LinkMode`](tracelink_core::LinkMode), span names,
//!   captured headers, baggage policy.
//! * Publisher confirms: put the channel in confirm mode
//!   ([`Channel::confirm_select`](lapin::Channel::confirm_select)); the producer span then ends
//!   with the broker's confirmation and a `basic.nack` fails the publish ([`PublishError::Nacked`]).
//! * [`AmqpConsumer`]: the core's builder, `with_concurrency` (default 1), `on_failure`,
//!   `with_settle_spans`, `with_receive_spans`, `with_error_type`, `with_prefetch` (deliveries
//!   taken from lapin ahead of the handlers; default 1). How many deliveries RabbitMQ sends
//!   ahead stays yours: [`Channel::basic_qos`](lapin::Channel::basic_qos).
//! * Consume errors: `run` returns [`tracelink_core::ConsumeError`]; the `source` of its
//!   `Receive` and `Settle` variants is an [`AmqpError`].
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
pub use consume::{AmqpConsumer, AmqpSettler, AmqpSource};
pub use error::{lapin_error_type, AmqpError, PublishError};
pub use message::{
    delivery_destination, publish_destination, AmqpDelivery, Publish, DEFAULT_EXCHANGE,
};
pub use publish::{AmqpPublisher, PublishFuture, Published};
pub use system::{messaging_system, RABBITMQ};

/// Re-exported so applications name the same lapin version.
pub use lapin;
