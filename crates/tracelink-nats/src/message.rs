//! NATS messages as the core sees them: outgoing [`Publish`], incoming [`NatsDelivery`] and
//! [`JetStreamDelivery`], and the publish responses [`Reply`] and [`JetStreamAck`].

use std::borrow::Cow;
use std::sync::Arc;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::KeyValue;
use tracelink_core::{Destination, IncomingMessage, OutgoingMessage, PublishResponse};

use tracelink_core::carrier::unique_value;

use crate::carrier::{entries, HeaderExtractor, HeaderInjector};

/// The prefix of reply inboxes made by NATS clients (`Client::new_inbox`, requests).
pub const INBOX_PREFIX: &str = "_INBOX.";

/// The low-cardinality template used for reply inboxes in span names and metrics.
pub const INBOX_TEMPLATE: &str = "_INBOX.*";

/// `messaging.nats.message.delivery_count`: how many times JetStream delivered the message.
/// The semantic conventions have no NATS attributes (nor a generic delivery count) yet; the name
/// follows `messaging.servicebus.message.delivery_count`.
pub const DELIVERY_COUNT: &str = "messaging.nats.message.delivery_count";

/// The destination of `subject`: reply inboxes (`_INBOX.…`) are temporary and named by the
/// template `_INBOX.*`, so that per-request names stay out of span names and metrics.
///
/// Inboxes made with a custom prefix (`ConnectOptions::custom_inbox_prefix`) are not recognised;
/// name such spans with [`SpanName::Template`](tracelink_core::SpanName::Template).
pub fn subject_destination(subject: &str) -> Destination<'_> {
    if subject.starts_with(INBOX_PREFIX) {
        Destination::new(subject)
            .with_template(INBOX_TEMPLATE)
            .temporary()
    } else {
        Destination::new(subject)
    }
}

fn message_id(headers: Option<&HeaderMap>) -> Option<&str> {
    let headers = headers?;
    // The exact name is what every client sends; it is a standard header, looked up for free.
    match headers.get(NATS_MESSAGE_ID) {
        Some(v) => Some(v.as_str()),
        None if headers.is_empty() => None,
        None => unique_value(entries(headers), NATS_MESSAGE_ID.as_ref()),
    }
}

/// A message to publish on core NATS or JetStream.
///
/// The tracing headers are injected into [`headers`](Publish::headers), next to the user's own.
/// A `Nats-Msg-Id` header (JetStream de-duplication, [`with_message_id`](Publish::with_message_id))
/// becomes `messaging.message.id`.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The subject to publish to.
    pub subject: Subject,
    /// The payload.
    pub payload: Bytes,
    /// The headers (the trace context is added here).
    pub headers: HeaderMap,
    /// Where responders should reply (core NATS only; requests set their own inbox).
    pub reply: Option<Subject>,
}

impl Publish {
    /// A message with no headers of its own.
    pub fn new(subject: impl Into<Subject>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            payload: payload.into(),
            headers: HeaderMap::new(),
            reply: None,
        }
    }

    /// Replaces the headers.
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the reply subject.
    pub fn with_reply(mut self, reply: impl Into<Subject>) -> Self {
        self.reply = Some(reply.into());
        self
    }

    /// Sets the `Nats-Msg-Id` header (JetStream de-duplication), recorded as
    /// `messaging.message.id`. An id with a line break is ignored.
    pub fn with_message_id(mut self, id: &str) -> Self {
        if let Ok(value) = id.parse::<async_nats::HeaderValue>() {
            self.headers.insert(NATS_MESSAGE_ID, value);
        }
        self
    }
}

impl OutgoingMessage for Publish {
    fn destination(&self) -> Destination<'_> {
        subject_destination(self.subject.as_str())
    }

    fn with_headers_mut(&mut self, f: &mut dyn FnMut(&mut dyn Injector)) {
        f(&mut HeaderInjector(&mut self.headers))
    }

    fn message_id(&self) -> Option<&str> {
        message_id(Some(&self.headers))
    }

    fn body_size(&self) -> Option<usize> {
        Some(self.payload.len())
    }
}

/// A message received on a core NATS subscription, with the queue group it was received in.
#[derive(Debug, Clone)]
pub struct NatsDelivery {
    /// The message as async-nats delivered it.
    pub message: async_nats::Message,
    queue_group: Option<Arc<str>>,
}

impl NatsDelivery {
    /// Wraps `message`, received through `queue_group` when there is one.
    pub fn new(message: async_nats::Message, queue_group: Option<Arc<str>>) -> Self {
        Self {
            message,
            queue_group,
        }
    }

    /// The queue group the message was received in.
    pub fn queue_group(&self) -> Option<&str> {
        self.queue_group.as_deref()
    }

    /// Unwraps the message.
    pub fn into_inner(self) -> async_nats::Message {
        self.message
    }
}

fn with_headers(headers: Option<&HeaderMap>, f: &mut dyn FnMut(&dyn Extractor)) {
    match headers {
        Some(headers) => f(&HeaderExtractor(headers)),
        None => f(&HeaderExtractor(&HeaderMap::new())),
    }
}

impl IncomingMessage for NatsDelivery {
    fn destination(&self) -> Destination<'_> {
        subject_destination(self.message.subject.as_str())
    }

    fn with_headers(&self, f: &mut dyn FnMut(&dyn Extractor)) {
        with_headers(self.message.headers.as_ref(), f)
    }

    fn message_id(&self) -> Option<Cow<'_, str>> {
        message_id(self.message.headers.as_ref()).map(Cow::Borrowed)
    }

    fn body_size(&self) -> Option<usize> {
        Some(self.message.payload.len())
    }

    fn consumer_group(&self) -> Option<&str> {
        self.queue_group()
    }
}

/// A message pulled from a JetStream consumer.
///
/// `messaging.destination.subscription.name` is the consumer's name, `messaging.message.id` the
/// `Nats-Msg-Id` header, and [`DELIVERY_COUNT`] the number of delivery attempts.
#[derive(Debug, Clone)]
pub struct JetStreamDelivery {
    /// The message as async-nats delivered it (ack it through the consume loop, not here).
    pub message: jetstream::Message,
}

impl JetStreamDelivery {
    /// Wraps `message`.
    pub fn new(message: jetstream::Message) -> Self {
        Self { message }
    }

    /// How many times JetStream delivered this message (1 on the first delivery), when the
    /// message carries JetStream metadata.
    pub fn delivered(&self) -> Option<i64> {
        self.message.info().ok().map(|info| info.delivered)
    }

    /// The stream sequence number, when the message carries JetStream metadata.
    pub fn stream_sequence(&self) -> Option<u64> {
        self.message.info().ok().map(|info| info.stream_sequence)
    }

    /// Unwraps the message.
    pub fn into_inner(self) -> jetstream::Message {
        self.message
    }
}

impl IncomingMessage for JetStreamDelivery {
    fn destination(&self) -> Destination<'_> {
        subject_destination(self.message.subject.as_str())
    }

    fn with_headers(&self, f: &mut dyn FnMut(&dyn Extractor)) {
        with_headers(self.message.headers.as_ref(), f)
    }

    fn message_id(&self) -> Option<Cow<'_, str>> {
        message_id(self.message.headers.as_ref()).map(Cow::Borrowed)
    }

    fn body_size(&self) -> Option<usize> {
        Some(self.message.payload.len())
    }

    fn subscription_name(&self) -> Option<&str> {
        self.message.info().ok().map(|info| info.consumer)
    }

    fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        if let Some(delivered) = self.delivered() {
            attributes.push(KeyValue::new(DELIVERY_COUNT, delivered));
        }
    }
}

/// The answer to a traced request ([`Requester`](crate::Requester)).
#[derive(Debug, Clone)]
pub struct Reply(pub async_nats::Message);

impl PublishResponse for Reply {}

/// The acknowledgement of a traced JetStream publish
/// ([`JetStreamPublisher`](crate::JetStreamPublisher)): stream, sequence, duplicate flag.
#[derive(Debug, Clone)]
pub struct JetStreamAck(pub jetstream::publish::PublishAck);

impl PublishResponse for JetStreamAck {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inboxes_are_temporary_with_a_template() {
        let d = subject_destination("_INBOX.abc.def");
        assert_eq!(d.template, Some(INBOX_TEMPLATE));
        assert!(d.temporary);
        let d = subject_destination("orders");
        assert_eq!((d.name, d.template, d.temporary), ("orders", None, false));
    }

    #[test]
    fn message_id_from_nats_msg_id() {
        let p = Publish::new("orders", "x").with_message_id("id-1");
        assert_eq!(OutgoingMessage::message_id(&p), Some("id-1"));
        assert_eq!(OutgoingMessage::body_size(&p), Some(1));
        let mut headers = HeaderMap::new();
        headers.insert("nats-msg-id", "lower");
        assert_eq!(message_id(Some(&headers)), Some("lower"));
        assert_eq!(message_id(None), None);
    }
}
