//! The messages the adapter sends and receives, and what the core reads from them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute as attr;
use tracelink_core::carrier::{MapExtractor, MapInjector};
use tracelink_core::{Destination, IncomingMessage, Instrumentation, OutgoingMessage};

use crate::carrier::{span_context_from_xray, AttributeExtractor};
use crate::sns;

/// The queue name in a queue URL (`https://sqs.us-east-1.amazonaws.com/123456789012/orders` →
/// `orders`): its last path segment.
pub fn queue_name(queue_url: &str) -> &str {
    let trimmed = queue_url.trim_end_matches('/');
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

/// A queue: its URL and the name taken from it.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) url: String,
    name: String,
}

impl Queue {
    pub(crate) fn new(url: String) -> Arc<Self> {
        let name = queue_name(&url).to_owned();
        Arc::new(Self { url, name })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// A message to send with [`SqsPublisher`](crate::SqsPublisher): `SendMessage`, or one entry of
/// `SendMessageBatch`.
///
/// The trace context is not written into [`attributes`](SendRequest::attributes) directly: the
/// propagator's fields are staged, and the [`TracePlacement`](crate::TracePlacement) hook the
/// producer layer calls right after injecting decides whether they fit in SQS's 10 message
/// attributes (see [`OverflowPolicy`](crate::OverflowPolicy)).
#[derive(Debug, Clone)]
pub struct SendRequest {
    queue: Arc<Queue>,
    pub(crate) body: String,
    pub(crate) attributes: HashMap<String, MessageAttributeValue>,
    pub(crate) trace_header: Option<String>,
    pub(crate) delay_seconds: Option<i32>,
    pub(crate) group_id: Option<String>,
    pub(crate) deduplication_id: Option<String>,
    /// The propagator's output, placed by the `TracePlacement` hook (else by the publisher).
    pub(crate) staged: HashMap<String, String>,
}

impl SendRequest {
    /// A message with `body` for the queue at `queue_url`.
    pub fn new(queue_url: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            queue: Queue::new(queue_url.into()),
            body: body.into(),
            attributes: HashMap::new(),
            trace_header: None,
            delay_seconds: None,
            group_id: None,
            deduplication_id: None,
            staged: HashMap::new(),
        }
    }

    /// Adds a message attribute (SQS allows 10 per message, the trace context's included).
    pub fn with_attribute(mut self, name: impl Into<String>, value: MessageAttributeValue) -> Self {
        self.attributes.insert(name.into(), value);
        self
    }

    /// Adds a `String` message attribute; an empty value, which SQS rejects, is ignored.
    pub fn with_string_attribute(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        if let Some(value) = crate::carrier::string_attribute(value.into()) {
            self.attributes.insert(name.into(), value);
        }
        self
    }

    /// Sets the `AWSTraceHeader` system attribute yourself. The publisher replaces it when it
    /// writes the trace context there.
    pub fn with_aws_trace_header(mut self, header: impl Into<String>) -> Self {
        self.trace_header = Some(header.into());
        self
    }

    /// `DelaySeconds`.
    pub fn with_delay_seconds(mut self, seconds: i32) -> Self {
        self.delay_seconds = Some(seconds);
        self
    }

    /// `MessageGroupId` (FIFO queues and fair queues).
    pub fn with_group_id(mut self, id: impl Into<String>) -> Self {
        self.group_id = Some(id.into());
        self
    }

    /// `MessageDeduplicationId` (FIFO queues).
    pub fn with_deduplication_id(mut self, id: impl Into<String>) -> Self {
        self.deduplication_id = Some(id.into());
        self
    }

    /// The queue URL.
    pub fn queue_url(&self) -> &str {
        &self.queue.url
    }

    /// The queue name (last segment of the URL).
    pub fn queue_name(&self) -> &str {
        self.queue.name()
    }

    /// The body.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The message attributes set so far (the trace context among them once placed).
    pub fn attributes(&self) -> &HashMap<String, MessageAttributeValue> {
        &self.attributes
    }

    /// The trace context fields the propagator produced, waiting to be placed (empty once the
    /// placement hook or the publisher placed them).
    pub fn trace_fields(&self) -> &HashMap<String, String> {
        &self.staged
    }

    pub(crate) fn same_queue(&self, other: &SendRequest) -> bool {
        Arc::ptr_eq(&self.queue, &other.queue) || self.queue.url == other.queue.url
    }
}

impl OutgoingMessage for SendRequest {
    fn destination(&self) -> Destination<'_> {
        Destination::new(self.queue.name())
    }

    fn with_headers_mut(&mut self, f: &mut dyn FnMut(&mut dyn Injector)) {
        f(&mut MapInjector(&mut self.staged))
    }

    fn message_id(&self) -> Option<&str> {
        None
    }

    fn body_size(&self) -> Option<usize> {
        Some(self.body.len())
    }

    fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        attributes.push(KeyValue::new(
            attr::AWS_SQS_QUEUE_URL,
            self.queue.url.clone(),
        ));
    }
}

/// Where a received message's trace context came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextSource {
    /// The propagator's message attributes (`traceparent`, ...).
    MessageAttributes,
    /// The `MessageAttributes` of an SNS notification envelope in the body (SNS subscription
    /// without raw message delivery).
    SnsEnvelope,
    /// The `AWSTraceHeader` system attribute (X-Ray format).
    AwsTraceHeader,
    /// None: the message starts a trace of its own.
    None,
}

/// A message received from SQS, as the handler sees it.
///
/// The trace context is read from the propagator's message attributes; when they carry no
/// valid context, from the `MessageAttributes` of an SNS notification envelope in the body;
/// then from the `AWSTraceHeader` system attribute. [`context_source`](Self::context_source)
/// tells which one it was.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    message: Message,
    queue: Arc<Queue>,
    /// The context recovered from the SNS envelope or `AWSTraceHeader`, re-encoded in the
    /// propagator's own format so the configured propagator reads it.
    recovered: Option<HashMap<String, String>>,
    source: ContextSource,
}

impl ReceivedMessage {
    /// Wraps a message received from the queue at `queue_url` (for receive loops of your own),
    /// finding its trace context with `instrumentation`'s propagator.
    pub fn new(
        message: Message,
        queue_url: impl Into<String>,
        instrumentation: &Instrumentation,
    ) -> Self {
        Self::with_queue(message, Queue::new(queue_url.into()), instrumentation)
    }

    pub(crate) fn with_queue(
        message: Message,
        queue: Arc<Queue>,
        instrumentation: &Instrumentation,
    ) -> Self {
        let mut received = Self {
            message,
            queue,
            recovered: None,
            source: ContextSource::None,
        };
        received.locate_context(instrumentation);
        received
    }

    fn locate_context(&mut self, instrumentation: &Instrumentation) {
        if instrumentation.producer_context(self).is_some() {
            self.source = ContextSource::MessageAttributes;
            return;
        }
        if let Some(fields) = self.message.body().and_then(sns::envelope_attributes) {
            let cx = instrumentation.extract(&MapExtractor(&fields));
            if cx.span().span_context().is_valid() {
                self.recovered = Some(fields);
                self.source = ContextSource::SnsEnvelope;
                return;
            }
        }
        let header = self
            .message
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader));
        if let Some(sc) = header.and_then(|h| span_context_from_xray(h)) {
            let mut fields = HashMap::new();
            let cx = Context::new().with_remote_span_context(sc);
            instrumentation.inject(&cx, &mut MapInjector(&mut fields));
            self.recovered = Some(fields);
            self.source = ContextSource::AwsTraceHeader;
        }
    }

    /// The SDK's message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Unwraps the SDK's message.
    pub fn into_message(self) -> Message {
        self.message
    }

    /// The body (empty when SQS sent none).
    pub fn body(&self) -> &str {
        self.message.body().unwrap_or_default()
    }

    /// A message attribute.
    pub fn attribute(&self, name: &str) -> Option<&MessageAttributeValue> {
        self.message.message_attributes().and_then(|a| a.get(name))
    }

    /// A system attribute (`ApproximateReceiveCount`, `AWSTraceHeader`, ...), when requested.
    pub fn system_attribute(&self, name: &MessageSystemAttributeName) -> Option<&str> {
        self.message
            .attributes()
            .and_then(|a| a.get(name))
            .map(String::as_str)
    }

    /// The queue URL.
    pub fn queue_url(&self) -> &str {
        &self.queue.url
    }

    /// The queue name.
    pub fn queue_name(&self) -> &str {
        self.queue.name()
    }

    /// Where the trace context came from.
    pub fn context_source(&self) -> ContextSource {
        self.source
    }

    pub(crate) fn receipt_handle(&self) -> Option<&str> {
        self.message.receipt_handle()
    }
}

/// Reads as empty: a message without attributes.
struct NoFields;

impl Extractor for NoFields {
    fn get(&self, _key: &str) -> Option<&str> {
        None
    }

    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// The recovered context's fields over the message's own attributes, so captured headers
/// (`with_captured_headers`) still read the attributes when the context came from elsewhere.
struct Layered<'a> {
    recovered: MapExtractor<'a>,
    attributes: AttributeExtractor<'a>,
}

impl Extractor for Layered<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.recovered.get(key).or_else(|| self.attributes.get(key))
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys = self.recovered.keys();
        for key in self.attributes.keys() {
            if !keys.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                keys.push(key);
            }
        }
        keys
    }
}

impl IncomingMessage for ReceivedMessage {
    fn destination(&self) -> Destination<'_> {
        Destination::new(self.queue.name())
    }

    fn with_headers(&self, f: &mut dyn FnMut(&dyn Extractor)) {
        match (&self.recovered, self.message.message_attributes()) {
            (Some(fields), Some(attributes)) => f(&Layered {
                recovered: MapExtractor(fields),
                attributes: AttributeExtractor(attributes),
            }),
            (Some(fields), None) => f(&MapExtractor(fields)),
            (None, Some(attributes)) => f(&AttributeExtractor(attributes)),
            (None, None) => f(&NoFields),
        }
    }

    fn message_id(&self) -> Option<Cow<'_, str>> {
        self.message.message_id().map(Cow::Borrowed)
    }

    fn body_size(&self) -> Option<usize> {
        self.message.body().map(str::len)
    }

    fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        attributes.push(KeyValue::new(
            attr::AWS_SQS_QUEUE_URL,
            self.queue.url.clone(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_from_urls() {
        assert_eq!(
            queue_name("https://sqs.us-east-1.amazonaws.com/123456789012/orders"),
            "orders"
        );
        assert_eq!(
            queue_name("http://127.0.0.1:5000/123456789012/q.fifo/"),
            "q.fifo"
        );
        assert_eq!(queue_name("orders"), "orders");
        let q = Queue::new("http://h/1/jobs".into());
        assert_eq!(q.name(), "jobs");
    }
}
