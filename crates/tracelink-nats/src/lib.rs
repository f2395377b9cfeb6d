//! NATS adapter of [tracelink](https://docs.rs/tracelink), over
//! [async-nats](https://docs.rs/async-nats): traces that survive core NATS publish/subscribe,
//! request/reply and JetStream.
//!
//! * **Carriers** ([`carrier`]): [`HeaderInjector`] / [`HeaderExtractor`] over
//!   [`async_nats::HeaderMap`]. Names match case-insensitively (Go clients send `Traceparent`),
//!   a header repeated with conflicting values reads as absent, the user's headers are kept.
//! * **Messages**: [`Publish`] (outgoing, core or JetStream), [`NatsDelivery`] (core, with its
//!   queue group) and [`JetStreamDelivery`] (with consumer name and delivery count).
//! * **Publishing**: [`NatsPublisher`], [`Requester`] and [`JetStreamPublisher`], each with
//!   `new(client)` and `.traced(instrumentation)`: a tower service with a PRODUCER span
//!   `publish {subject}` whose context travels in the headers.
//! * **Consuming**: [`NatsConsumer`] (a core subscription, plain or in a queue group) and
//!   [`JetStreamConsumer`] (a pull consumer) are the core's
//!   [`Consumer`](tracelink_core::Consumer) over [`NatsSource`] and [`JetStreamSource`]:
//!   `new(subscriber_or_pull_consumer, instrumentation)`, the core's builder methods, then
//!   `run(handler, shutdown)` (or `run_batches` on JetStream). The handler is a plain tower
//!   service; each message is handled in a CONSUMER span `process {subject}` in a new trace,
//!   linked to the producer span.
//! * **Request/reply**: [`Requester`] on one side, [`ResponderLayer`] on the other: the
//!   responder's `process` span is a *child* of the requester's span (the caller waits for the
//!   answer), and the reply is published from inside it.
//!
//! `messaging.system` is `nats`: the semantic conventions have no well-known value for NATS yet
//! (open-telemetry/semantic-conventions#2266); `nats` is what the Java agent's jnats
//! instrumentation uses. The destination is the subject; reply inboxes (`_INBOX.…`) are temporary
//! destinations named `_INBOX.*` in span names and metrics ([`subject_destination`]).
//!
//! # Quick start
//!
//! ```no_run
//! use tower::{service_fn, Service, ServiceExt};
//! use tracelink_core::Instrumentation;
//! use tracelink_nats::{NatsConsumer, NatsDelivery, NatsPublisher, Publish};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "nats://127.0.0.1:4222";
//! let client = async_nats::connect(url).await?;
//! // Global tracer provider and propagator unless the builder is given others.
//! let instrumentation = Instrumentation::new(tracelink_nats::messaging_system(url));
//!
//! // Consume: a `process orders` span per message, linked to its producer span.
//! let subscriber = client.subscribe("orders").await?;
//! let handler = service_fn(|delivery: NatsDelivery| async move {
//!     println!("got {} bytes", delivery.message.payload.len());
//!     Ok::<_, std::convert::Infallible>(())
//! });
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let consumer = tokio::spawn(
//!     NatsConsumer::new(subscriber, instrumentation.clone()).run(handler, stopped),
//! );
//!
//! // Publish: a `publish orders` span, its context in the message headers.
//! let mut publisher = NatsPublisher::new(client.clone()).traced(instrumentation);
//! publisher.ready().await?.call(Publish::new("orders", "hello")).await?;
//!
//! let _ = stop.send(());
//! consumer.await??;
//! # Ok(())
//! # }
//! ```
//!
//! JetStream:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use async_nats::jetstream::{self, consumer::pull, stream};
//! use tower::{service_fn, Service, ServiceExt};
//! use tracelink_core::{Instrumentation, OnFailure};
//! use tracelink_nats::{
//!     JetStreamConsumer, JetStreamDelivery, JetStreamPublisher, JetStreamSource, Publish,
//! };
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "nats://127.0.0.1:4222";
//! let js = jetstream::new(async_nats::connect(url).await?);
//! let instrumentation = Instrumentation::new(tracelink_nats::messaging_system(url));
//! let stream = js
//!     .get_or_create_stream(stream::Config {
//!         name: "ORDERS".into(),
//!         subjects: vec!["orders.>".into()],
//!         ..Default::default()
//!     })
//!     .await?;
//!
//! let mut publisher = JetStreamPublisher::new(js.clone()).traced(instrumentation.clone());
//! let ack = publisher
//!     .ready()
//!     .await?
//!     .call(Publish::new("orders.new", "hello").with_message_id("order-1"))
//!     .await?;
//! println!("stored as {} #{}", ack.0.stream, ack.0.sequence);
//!
//! let consumer = stream
//!     .get_or_create_consumer("workers", pull::Config {
//!         durable_name: Some("workers".into()),
//!         ..Default::default()
//!     })
//!     .await?;
//! let handler = service_fn(|delivery: JetStreamDelivery| async move {
//!     println!("attempt {:?}", delivery.delivered());
//!     Ok::<_, std::io::Error>(()) // Err: nak, redelivered after 1 s
//! });
//! let source = JetStreamSource::new(consumer).with_expires(Duration::from_secs(2));
//! JetStreamConsumer::new(source, instrumentation)
//!     .with_concurrency(8)
//!     .on_failure(OnFailure::RedeliverAfter(Duration::from_secs(1)))
//!     .with_settle_spans()
//!     .run(handler, std::future::pending::<()>())
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Failure policy
//!
//! What each [`OnFailure`](tracelink_core::OnFailure) policy does with a failed handler's
//! message, and what happens to messages received but not handled when the consumer stops
//! (`Release`):
//!
//! | policy | JetStream | core NATS |
//! |---|---|---|
//! | `Redeliver` (default) | `nak`: redelivered at once (or per the consumer's `backoff`) | nothing: core NATS has no acknowledgement, the message is not redelivered (at most once) |
//! | `RedeliverAfter(d)` | `nak` with delay `d` | nothing (at most once) |
//! | `Reject` | `term`: never redelivered | nothing (at most once) |
//! | `Stop` | `nak`, then the consumer stops and `run` returns `ConsumeError::Handler` | nothing; the consumer stops and `run` returns `ConsumeError::Handler` |
//! | given back on stop (`Release`) | `nak` without delay: redelivered at once to any consumer | lost (at most once) |
//!
//! Settle spans ([`with_settle_spans`](tracelink_core::Consumer::with_settle_spans)) are
//! `ack`, `nak` and `term` on JetStream; core NATS makes no settle call, so has none.
//!
//! # Customisation
//!
//! Everything the core's [`Instrumentation`](tracelink_core::Instrumentation) builder offers:
//! tracer and meter providers, propagator (B3, Jaeger, X-Ray work unchanged), link mode, span
//! names, header capture, baggage policy. [`messaging_system`] builds the
//! [`MessagingSystem`] (`nats`, operation `publish`,
//! `server.address`/`server.port` from the URL). The consumers take the core's builder methods
//! (concurrency, prefetch, failure policy, settle and receive spans, batches); the JetStream
//! source its fetch expiry ([`JetStreamSource::with_expires`]). The publishers are plain tower
//! services: add timeouts, retries or concurrency limits around them.
//!
//! # Cargo features
//!
//! None of its own. It depends on `async-nats` 0.51 with its default features (re-exported as
//! [`async_nats`]) and `tracelink-core`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]
#![deny(unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod carrier;
mod error;
mod jetstream;
mod message;
mod publish;
mod responder;
mod source;

pub use carrier::{HeaderExtractor, HeaderInjector};
pub use error::Error;
pub use jetstream::{JetStreamConsumer, JetStreamReceipt, JetStreamSettler, JetStreamSource};
pub use message::{
    subject_destination, JetStreamAck, JetStreamDelivery, NatsDelivery, Publish, Reply,
    DELIVERY_COUNT, INBOX_PREFIX, INBOX_TEMPLATE,
};
pub use publish::{JetStreamPublisher, NatsPublisher, Requester};
pub use responder::{Responder, ResponderError, ResponderLayer};
pub use source::{NatsConsumer, NatsSettler, NatsSource};

/// Re-exported so users name the same version.
pub use async_nats;
/// Re-exported: message payloads are [`bytes::Bytes`].
pub use bytes::Bytes;

use tracelink_core::MessagingSystem;

/// The `messaging.system` value for NATS (no well-known value exists yet; see the crate docs).
pub const SYSTEM: &str = "nats";

/// The [`MessagingSystem`] for the NATS server at `url` (`nats://host:port`, also `tls://`, a
/// user-info part, or a comma-separated list whose first entry is used): `messaging.system` =
/// `nats`, publish operations named `publish`, `server.address` and `server.port` (default 4222).
///
/// Every adapter names this helper `messaging_system`.
pub fn messaging_system(url: &str) -> MessagingSystem {
    let system = MessagingSystem::new(SYSTEM).with_publish_operation("publish");
    match server(url) {
        Some((host, port)) => system.with_server(host, Some(port)),
        None => system,
    }
}

/// The first server of a NATS URL (list), with NATS's default port when none is given.
fn server(url: &str) -> Option<(&str, u16)> {
    tracelink_core::server_from_url(url).map(|(host, port)| (host, port.unwrap_or(4222)))
}

#[cfg(test)]
mod tests {
    use super::server;

    #[test]
    fn server_from_url() {
        assert_eq!(server("nats://127.0.0.1:4222"), Some(("127.0.0.1", 4222)));
        assert_eq!(
            server("tls://u:p@nats.example:7422/x"),
            Some(("nats.example", 7422))
        );
        assert_eq!(server("localhost"), Some(("localhost", 4222)));
        assert_eq!(server("nats://a:1,nats://b:2"), Some(("a", 1)));
        assert_eq!(server("nats://[::1]:4223"), Some(("::1", 4223)));
        assert_eq!(server("nats://host:notaport"), Some(("host", 4222)));
        assert_eq!(server(""), None);
    }
}
