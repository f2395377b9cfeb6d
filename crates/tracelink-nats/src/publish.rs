//! Publishing tower services to wrap in a [`ProducerLayer`]: core publish, request and JetStream
//! publish.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_nats::jetstream::message::PublishMessage as JetStreamPublishMessage;
use futures_util::future::BoxFuture;
use tower::{Layer, Service};
use tracelink_core::{DefaultErrorType, Instrumentation, ProducerLayer, ProducerService};

use crate::error::Error;
use crate::message::{JetStreamAck, Publish, Reply};

/// Publishes [`Publish`] messages on core NATS. Answers `()` once the message is handed to the
/// client's connection (core NATS has no broker acknowledgement).
///
/// [`traced`](NatsPublisher::traced) wraps it in a [`ProducerLayer`]: a PRODUCER span
/// `publish {subject}` per message, its context in the message headers.
#[derive(Debug, Clone)]
pub struct NatsPublisher {
    // Shared, not cloned per message: a `Client` clone touches several reference counts.
    client: Arc<async_nats::Client>,
}

impl NatsPublisher {
    /// A publisher over `client`.
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            client: Arc::new(client),
        }
    }

    /// This publisher wrapped in a [`ProducerLayer`] built from `instrumentation`.
    pub fn traced(
        self,
        instrumentation: Instrumentation,
    ) -> ProducerService<Self, DefaultErrorType> {
        ProducerLayer::from(instrumentation).layer(self)
    }
}

impl Service<Publish> for NatsPublisher {
    type Response = ();
    type Error = Error;
    type Future = BoxFuture<'static, Result<(), Error>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Publish) -> Self::Future {
        let client = Arc::clone(&self.client);
        Box::pin(async move {
            let Publish {
                subject,
                payload,
                headers,
                reply,
            } = message;
            // An empty header block would still be sent (`HPUB`), and costs the server and the
            // subscribers a header parse: leave it out.
            match (reply, headers.is_empty()) {
                (Some(reply), false) => {
                    client
                        .publish_with_reply_and_headers(subject, reply, headers, payload)
                        .await?
                }
                (Some(reply), true) => client.publish_with_reply(subject, reply, payload).await?,
                (None, false) => {
                    client
                        .publish_with_headers(subject, headers, payload)
                        .await?
                }
                (None, true) => client.publish(subject, payload).await?,
            }
            Ok(())
        })
    }
}

/// Sends [`Publish`] messages as requests and answers their [`Reply`].
///
/// Wrapped in a [`ProducerLayer`] ([`traced`](Requester::traced)), the PRODUCER span `publish {subject}`
/// lasts until the reply arrives (or the request fails with `error.type` such as `timed_out` or
/// `no_responders`), and its context travels with the request: a [`Responder`](crate::Responder)
/// makes its `process` span a child of it. The message's `reply` field is ignored: the client
/// uses an inbox of its own.
#[derive(Debug, Clone)]
pub struct Requester {
    client: async_nats::Client,
}

impl Requester {
    /// A requester over `client` (its request timeout applies).
    pub fn new(client: async_nats::Client) -> Self {
        Self { client }
    }

    /// This requester wrapped in a [`ProducerLayer`] built from `instrumentation`.
    pub fn traced(
        self,
        instrumentation: Instrumentation,
    ) -> ProducerService<Self, DefaultErrorType> {
        ProducerLayer::from(instrumentation).layer(self)
    }
}

impl Service<Publish> for Requester {
    type Response = Reply;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Reply, Error>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Publish) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move {
            let reply = if message.headers.is_empty() {
                client.request(message.subject, message.payload).await?
            } else {
                client
                    .request_with_headers(message.subject, message.headers, message.payload)
                    .await?
            };
            Ok(Reply(reply))
        })
    }
}

/// Publishes [`Publish`] messages to JetStream and answers the stream's acknowledgement once it
/// arrived, so the PRODUCER span covers the round trip and fails (`error.type` such as
/// `timed_out` or `stream_not_found`) when the message was not stored.
///
/// A `Nats-Msg-Id` header ([`Publish::with_message_id`]) de-duplicates and is recorded as
/// `messaging.message.id`.
#[derive(Debug, Clone)]
pub struct JetStreamPublisher {
    context: async_nats::jetstream::Context,
}

impl JetStreamPublisher {
    /// A publisher over the JetStream `context`.
    pub fn new(context: async_nats::jetstream::Context) -> Self {
        Self { context }
    }

    /// This publisher wrapped in a [`ProducerLayer`] built from `instrumentation`.
    pub fn traced(
        self,
        instrumentation: Instrumentation,
    ) -> ProducerService<Self, DefaultErrorType> {
        ProducerLayer::from(instrumentation).layer(self)
    }
}

impl Service<Publish> for JetStreamPublisher {
    type Response = JetStreamAck;
    type Error = Error;
    type Future = BoxFuture<'static, Result<JetStreamAck, Error>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Publish) -> Self::Future {
        let context = self.context.clone();
        Box::pin(async move {
            let publish = JetStreamPublishMessage::build()
                .payload(message.payload)
                .headers(message.headers);
            let ack = context
                .send_publish(message.subject, publish)
                .await?
                .await?;
            Ok(JetStreamAck(ack))
        })
    }
}
