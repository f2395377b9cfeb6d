//! Kafka records and messages as the core sees them.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::SpanContext;
use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute as attr;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders, OwnedMessage};
use rdkafka::Message;
use tracelink_core::carrier::{text, StrInjector};
use tracelink_core::{Destination, IncomingMessage, OutgoingMessage, PublishResponse};

use crate::carrier::{HeaderExtractor, RecordInjector};

/// An owned record to publish through [`KafkaPublisher`](crate::KafkaPublisher).
#[derive(Debug, Clone, Default)]
pub struct KafkaRecord {
    /// The topic.
    pub topic: String,
    /// The key, if any.
    pub key: Option<Vec<u8>>,
    /// The payload; `None` publishes a tombstone.
    pub payload: Option<Vec<u8>>,
    /// The partition; `None` lets the partitioner choose.
    pub partition: Option<i32>,
    /// The timestamp in milliseconds since the epoch; `None` lets the producer set it.
    pub timestamp: Option<i64>,
    /// The headers; the trace context is added to them on publish.
    pub headers: Option<OwnedHeaders>,
}

impl KafkaRecord {
    /// A tombstone (no key, no payload) for `topic`; add parts with the `with_*` methods.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            ..Self::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the payload.
    pub fn with_payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = Some(payload.into());
        self
    }

    /// Sends to `partition`.
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the timestamp (milliseconds since the epoch).
    pub fn with_timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        let headers = self.headers.take().unwrap_or_default();
        self.headers = Some(headers.insert(Header {
            key,
            value: Some(value.as_ref()),
        }));
        self
    }
}

/// `messaging.kafka.message.key` (only when the key is text) and
/// `messaging.kafka.message.tombstone` (only for tombstones).
fn record_attributes(key: Option<&[u8]>, payload: Option<&[u8]>, attributes: &mut Vec<KeyValue>) {
    if let Some(key) = key.and_then(text) {
        attributes.push(KeyValue::new(
            attr::MESSAGING_KAFKA_MESSAGE_KEY,
            key.to_owned(),
        ));
    }
    if payload.is_none() {
        attributes.push(KeyValue::new(attr::MESSAGING_KAFKA_MESSAGE_TOMBSTONE, true));
    }
}

impl OutgoingMessage for KafkaRecord {
    fn destination(&self) -> Destination<'_> {
        Destination::new(&self.topic)
    }

    fn with_headers_mut(&mut self, f: &mut dyn FnMut(&mut dyn Injector)) {
        f(&mut RecordInjector(&mut self.headers));
    }

    fn with_str_injector(&mut self, f: &mut dyn FnMut(&mut dyn StrInjector)) {
        f(&mut RecordInjector(&mut self.headers));
    }

    fn body_size(&self) -> Option<usize> {
        self.payload.as_ref().map(Vec::len)
    }

    fn partition_id(&self) -> Option<Cow<'_, str>> {
        self.partition.map(|p| Cow::Owned(p.to_string()))
    }

    fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        record_attributes(self.key.as_deref(), self.payload.as_deref(), attributes);
    }
}

/// Where a record landed: the response of [`KafkaPublisher`](crate::KafkaPublisher).
///
/// Sets `messaging.destination.partition.id` (unless the record named its partition, which is
/// already on the span) and `messaging.kafka.offset` on the `send` span.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// The partition the record was written to.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    pub(crate) partition_chosen: bool,
    pub(crate) span_context: SpanContext,
}

impl Delivered {
    /// The span context that was current when the record was published: inside a
    /// [`KafkaPublisher::traced`](crate::KafkaPublisher::traced), the `send` span whose context the record
    /// carries (to print or log its ids).
    pub fn span_context(&self) -> &SpanContext {
        &self.span_context
    }
}

impl PublishResponse for Delivered {
    fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        if !self.partition_chosen {
            attributes.push(KeyValue::new(
                attr::MESSAGING_DESTINATION_PARTITION_ID,
                self.partition.to_string(),
            ));
        }
        attributes.push(KeyValue::new(attr::MESSAGING_KAFKA_OFFSET, self.offset));
    }
}

/// A consumed message, with the consumer group that read it: what handlers of a
/// [`KafkaConsumer`](crate::KafkaConsumer) receive.
///
/// Generic over rdkafka's [`Message`], so it also wraps a [`BorrowedMessage`] for consume loops
/// of your own (`KafkaMessage::new(&borrowed)`).
#[derive(Debug, Clone)]
pub struct KafkaMessage<M = OwnedMessage> {
    message: M,
    group: Option<Arc<str>>,
    /// The topic's name and number, interned by the [`KafkaSource`](crate::KafkaSource) that
    /// received the message: its ordering key and its settle receipt then cost no allocation.
    pub(crate) topic: Option<(Arc<str>, u32)>,
}

impl<M: Message> KafkaMessage<M> {
    /// Wraps `message`.
    pub fn new(message: M) -> Self {
        Self {
            message,
            group: None,
            topic: None,
        }
    }

    /// Sets the consumer group (`messaging.consumer.group.name`).
    pub fn with_group(mut self, group: impl Into<Arc<str>>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// The rdkafka message.
    pub fn message(&self) -> &M {
        &self.message
    }

    /// Unwraps the rdkafka message.
    pub fn into_inner(self) -> M {
        self.message
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        self.message.topic()
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.message.partition()
    }

    /// The offset.
    pub fn offset(&self) -> i64 {
        self.message.offset()
    }

    /// The key.
    pub fn key(&self) -> Option<&[u8]> {
        self.message.key()
    }

    /// The payload; `None` for a tombstone.
    pub fn payload(&self) -> Option<&[u8]> {
        self.message.payload()
    }

    /// The consumer group, when known.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }
}

impl KafkaMessage<OwnedMessage> {
    /// Copies a borrowed message out of the consumer's buffer.
    ///
    /// The consume path needs this copy: payload, key and topic name are 3 heap allocations per
    /// message (the headers are copied by librdkafka, in C); see `benches/allocations.rs`.
    /// rdkafka's zero-copy [`BorrowedMessage`] borrows its `StreamConsumer` (it frees
    /// librdkafka's buffer on drop), so it cannot outlive the receive call that produced it,
    /// while a handler gets an owned, `'static` message that it may keep or send elsewhere.
    /// Keeping the borrowed message would take a self-referential owner (the consumer's `Arc`
    /// plus a message borrowing it), which needs `unsafe` code (forbidden in this workspace) or
    /// a crate built on it, and even then rdkafka's receive is an `async fn` borrowing the
    /// consumer, which such owners cannot wrap. A message type of our own holding the interned
    /// topic name would save the topic's allocation, but could not implement rdkafka's
    /// `Message` trait (its `payload_mut` is an `unsafe fn`).
    pub fn detach(message: &BorrowedMessage<'_>, group: Option<Arc<str>>) -> Self {
        Self {
            message: message.detach(),
            group,
            topic: None,
        }
    }
}

impl<M: Message> IncomingMessage for KafkaMessage<M> {
    fn destination(&self) -> Destination<'_> {
        Destination::new(self.message.topic())
    }

    fn with_headers(&self, f: &mut dyn FnMut(&dyn Extractor)) {
        match self.message.headers() {
            Some(headers) => f(&HeaderExtractor(headers)),
            None => f(&HeaderExtractor(&OwnedHeaders::new())),
        }
    }

    fn body_size(&self) -> Option<usize> {
        self.message.payload().map(<[u8]>::len)
    }

    fn partition_id(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(self.message.partition().to_string()))
    }

    fn consumer_group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        attributes.push(KeyValue::new(
            attr::MESSAGING_KAFKA_OFFSET,
            self.message.offset(),
        ));
        record_attributes(self.message.key(), self.message.payload(), attributes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;

    #[test]
    fn record_attributes_skip_binary_keys_and_mark_tombstones() {
        let mut a = Vec::new();
        KafkaRecord::new("t")
            .with_key(vec![0xff])
            .attributes(&mut a);
        assert_eq!(
            a,
            vec![KeyValue::new(attr::MESSAGING_KAFKA_MESSAGE_TOMBSTONE, true)]
        );
        let mut a = Vec::new();
        KafkaRecord::new("t")
            .with_key("k")
            .with_payload("p")
            .attributes(&mut a);
        assert_eq!(
            a,
            vec![KeyValue::new(attr::MESSAGING_KAFKA_MESSAGE_KEY, "k")]
        );
    }

    #[test]
    fn incoming_message_metadata() {
        let owned = OwnedMessage::new(
            Some(b"body".to_vec()),
            Some(b"key".to_vec()),
            "orders".into(),
            Timestamp::NotAvailable,
            3,
            42,
            None,
        );
        let m = KafkaMessage::new(owned).with_group("g");
        assert_eq!(m.destination().name, "orders");
        assert_eq!(m.partition_id().as_deref(), Some("3"));
        assert_eq!(m.consumer_group(), Some("g"));
        assert_eq!(m.body_size(), Some(4));
        let mut a = Vec::new();
        m.attributes(&mut a);
        assert_eq!(
            a,
            vec![
                KeyValue::new(attr::MESSAGING_KAFKA_OFFSET, 42),
                KeyValue::new(attr::MESSAGING_KAFKA_MESSAGE_KEY, "key"),
            ]
        );
        let mut seen = false;
        m.with_headers(&mut |ex| seen = ex.get("traceparent").is_none());
        assert!(seen);
    }
}
