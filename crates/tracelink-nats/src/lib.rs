//! NATS adapter of [tracelink](https://docs.rs/tracelink), over
//! [async-nats](https://docs.rs/async-nats): traces that survive core NATS publish/subscribe,
//! request/reply and JetStream.
//!
//! * **Carriers**: [`HeaderInjector`] / [`HeaderExtractor`] over [`async_nats::HeaderMap`]. Names
//!   match case-insensitively (Go clients send `Traceparent`), a header repeated with conflicting
//!   values reads as absent, the user's headers are kept.
//! * **Messages**: [`Publish`] (outgoing, core or JetStream), [`Delivery`] (core, with its queue
//!   group) and [`JetStreamDelivery`] (with consumer name and delivery count).
//! * **Publishing**: tower services [`Publisher`], [`Requester`] and [`JetStreamPublisher`] to
//!   wrap in a [`ProducerLayer`](tracelink_core::ProducerLayer) (each has a `traced`
//!   constructor): a PRODUCER span `publish {subject}` whose context travels in the headers.
//! * **Consuming**: [`Subscription`] (plain or queue group) and [`JetStreamConsumer`] (pull; ack
//!   after success, nak on failure) drive a handler wrapped in a
//!   [`ConsumerLayer`](tracelink_core::ConsumerLayer): a CONSUMER span `process {subject}` in a
//!   new trace, linked to the producer span.
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
//! use tower::{service_fn, Layer, Service, ServiceExt};
//! use tracelink_core::{ConsumerLayer, Instrumentation};
//! use tracelink_nats::{Delivery, Publish, Publisher, Subscription};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "nats://127.0.0.1:4222";
//! let client = async_nats::connect(url).await?;
//! // Global tracer provider and propagator unless the builder is given others.
//! let instrumentation = Instrumentation::new(tracelink_nats::messaging_system(url));
//!
//! // Consume: a `process orders` span per message, linked to its producer span.
//! let subscription = Subscription::subscribe(&client, "orders").await?;
//! let handler = ConsumerLayer::from(instrumentation.clone()).layer(service_fn(
//!     |delivery: Delivery| async move {
//!         println!("got {} bytes", delivery.message.payload.len());
//!         Ok::<_, std::convert::Infallible>(())
//!     },
//! ));
//! tokio::spawn(subscription.run(handler));
//!
//! // Publish: a `publish orders` span, its context in the message headers.
//! let mut publisher = Publisher::traced(client.clone(), instrumentation);
//! publisher.ready().await?.call(Publish::new("orders", "hello")).await?;
//! # Ok(())
//! # }
//! ```
//!
//! JetStream:
//!
//! ```no_run
//! use async_nats::jetstream::{self, consumer::pull, stream};
//! use tower::{service_fn, Layer, Service, ServiceExt};
//! use tracelink_core::{ConsumerLayer, Instrumentation};
//! use tracelink_nats::{JetStreamConsumer, JetStreamDelivery, JetStreamPublisher, Publish};
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
//! let mut publisher = JetStreamPublisher::traced(js.clone(), instrumentation.clone());
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
//! let handler = ConsumerLayer::from(instrumentation.clone()).layer(service_fn(
//!     |delivery: JetStreamDelivery| async move {
//!         println!("attempt {:?}", delivery.delivered());
//!         Ok::<_, std::io::Error>(()) // Err: nak, redelivered
//!     },
//! ));
//! JetStreamConsumer::new(consumer, instrumentation).run(handler).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Customisation
//!
//! Everything the core's [`Instrumentation`](tracelink_core::Instrumentation) builder offers:
//! tracer and meter providers, propagator (B3, Jaeger, X-Ray work unchanged), link mode, span
//! names, header capture, baggage policy. [`messaging_system`] builds the
//! [`MessagingSystem`] (`nats`, operation `publish`,
//! `server.address`/`server.port` from the URL). On the JetStream loop: batch size, fetch expiry
//! and nak delay; [`JetStreamConsumer::process_next_batch`] hands a whole fetch to a
//! [`BatchConsumerLayer`](tracelink_core::BatchConsumerLayer)-wrapped handler. The services are
//! plain tower services: add timeouts, retries or concurrency limits around them.
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

mod carrier;
mod error;
mod jetstream;
mod message;
mod publish;
mod responder;
mod subscriber;

pub use carrier::{HeaderExtractor, HeaderInjector};
pub use error::Error;
pub use jetstream::JetStreamConsumer;
pub use message::{
    subject_destination, Delivery, JetStreamAck, JetStreamDelivery, Publish, Reply, DELIVERY_COUNT,
    INBOX_PREFIX, INBOX_TEMPLATE,
};
pub use publish::{JetStreamPublisher, Publisher, Requester};
pub use responder::{Responder, ResponderError, ResponderLayer};
pub use subscriber::Subscription;

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

/// The first name of [`messaging_system`].
#[deprecated(
    since = "0.1.0",
    note = "renamed to `messaging_system`, as in every adapter"
)]
pub fn system(url: &str) -> MessagingSystem {
    messaging_system(url)
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
