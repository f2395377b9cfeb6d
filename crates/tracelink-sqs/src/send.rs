//! Sending: the raw `SendMessage`/`SendMessageBatch` tower service and where the trace context
//! goes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use aws_sdk_sqs::operation::RequestId;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeNameForSends, MessageSystemAttributeValue,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use opentelemetry::metrics::Counter;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute as attr;
use tower::{Layer, Service};
use tracelink_core::carrier::MapExtractor;
use tracelink_core::{
    BatchProducerLayer, BatchProducerService, DefaultErrorType, Instrumentation, OnInject,
    ProducerLayer, ProducerService, PublishResponse, SpanEvent,
};

use crate::carrier::{string_attribute, xray_header};
use crate::error::{EntryError, SqsError};
use crate::message::SendRequest;

/// SQS rejects a message with more message attributes than this.
pub const MAX_MESSAGE_ATTRIBUTES: usize = 10;

/// Counter of messages whose context did not fit in their message attributes. Not a semantic
/// convention (none exists for it), hence spelled here.
const OVERFLOW_METRIC: &str = "tracelink.sqs.context.overflow";
/// Event the [`TracePlacement`] hook returns on overflow, for the message's own span (no
/// semantic convention either).
const OVERFLOW_EVENT: &str = "trace context did not fit in the message attributes";
/// Attribute of [`OVERFLOW_METRIC`] and [`OVERFLOW_EVENT`]: where the context went instead (`aws_trace_header` or
/// `skipped`). Not a semantic convention either.
const OVERFLOW_OUTCOME: &str = "tracelink.sqs.overflow.outcome";

/// Where the publisher writes the trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TraceCarrier {
    /// The propagator's fields as `String` message attributes (default). When they do not fit
    /// in the 10 attributes SQS allows, the [`OverflowPolicy`] applies.
    #[default]
    MessageAttributes,
    /// Only the `AWSTraceHeader` system attribute, in X-Ray format: it does not count against
    /// the 10 message attributes, and AWS services (Lambda, X-Ray) read it. It carries trace and
    /// span ids and the sampled flag, not baggage.
    AwsTraceHeader,
    /// Both, like the OpenTelemetry Java agent: message attributes (with the overflow policy)
    /// and `AWSTraceHeader` always.
    Both,
}

/// What to do when the message's own attributes leave no room for the propagator's fields.
///
/// Attributes named like one of the propagator's fields (a `traceparent` copied from a received
/// message, say) count as the propagator's own: they are replaced, not added. When the fields
/// still do not fit, none of them is written (SQS would reject the whole message), stale copies
/// of them are removed, and:
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// The context goes into the `AWSTraceHeader` system attribute (X-Ray format) instead
    /// (default). Consumers read it when no message attribute carries a context.
    #[default]
    AwsTraceHeader,
    /// The context is not sent: the consumer starts an unlinked trace. A warn-level `tracing`
    /// event is emitted.
    Skip,
}

/// Where the trace fields of one message go: the outcome of the 10-attribute check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Every field as a message attribute.
    Attributes,
    /// No field fits.
    Overflow,
}

/// Decides whether `fields` fit next to `attributes`, counting attributes named like a field
/// (ASCII case ignored) as the field's own.
pub(crate) fn placement(
    attributes: &HashMap<String, MessageAttributeValue>,
    fields: &HashMap<String, String>,
) -> Placement {
    let others = attributes
        .keys()
        .filter(|name| !fields.keys().any(|f| f.eq_ignore_ascii_case(name)))
        .count();
    if others + fields.len() <= MAX_MESSAGE_ATTRIBUTES {
        Placement::Attributes
    } else {
        Placement::Overflow
    }
}

/// The SQS publisher: [`SendRequest`] → `SendMessage` ([`batch`](SqsPublisher::batch) gives the
/// `SendMessageBatch` one). [`traced`](SqsPublisher::traced) and
/// [`traced_batch`](SqsPublisher::traced_batch) wrap it in the core's producer layers with its
/// [`TracePlacement`] as their [`on_inject`](ProducerLayer::on_inject) hook: each message's trace
/// fields go into its message attributes when they fit in SQS's 10, otherwise per the
/// [`OverflowPolicy`].
///
/// ```no_run
/// # async fn demo(client: aws_sdk_sqs::Client, url: String) -> Result<(), tracelink_sqs::SqsError> {
/// use tower::{Service, ServiceExt};
/// use tracelink_sqs::{messaging_system, SendRequest, SqsPublisher};
/// use tracelink_core::Instrumentation;
///
/// let system = messaging_system(None, Some("us-east-1"));
/// let instrumentation = Instrumentation::new(system);
/// let mut send = SqsPublisher::new(client).traced(instrumentation);
/// let sent = send.ready().await?.call(SendRequest::new(url, "hello")).await?;
/// println!("{:?}", sent.message_id);
/// # Ok(()) }
/// ```
///
/// Used raw inside a producer layer of your own, pass it the publisher's
/// [`placement`](SqsPublisher::placement) too (as `traced` does); without it the publisher places
/// the fields it finds staged with the global propagator, and no event notes an overflow.
#[derive(Debug, Clone)]
pub struct SqsPublisher {
    client: Client,
    /// Without instrumentation: places what a layer without the hook left staged.
    placement: TracePlacement,
}

/// Where each message's trace context goes: the [`OnInject`] hook [`SqsPublisher::traced`] and
/// [`SqsPublisher::traced_batch`] give the core's producer layers (get one with
/// [`SqsPublisher::placement`] for a layer of your own).
///
/// Called with the context the layer just injected (the message's `send` span, or in a batch
/// its own `create` span), it moves the staged propagator fields into the message attributes,
/// or, per the [`TraceCarrier`] and the [`OverflowPolicy`], writes that context's
/// `AWSTraceHeader`. On overflow it counts the message (`tracelink.sqs.context.overflow` on the
/// instrumentation's meter) and returns an event the layer adds to the message's span.
#[derive(Debug, Clone)]
pub struct TracePlacement {
    carrier: TraceCarrier,
    overflow: OverflowPolicy,
    /// The propagator's fields and the overflow counter; `None`: the global propagator, no
    /// counter.
    placing: Option<Placing>,
}

#[derive(Debug, Clone)]
struct Placing {
    instrumentation: Instrumentation,
    overflow_counter: Counter<u64>,
}

impl OnInject<SendRequest> for TracePlacement {
    fn on_inject(&self, request: &mut SendRequest, cx: &Context) -> Option<SpanEvent> {
        self.place(request, |_| xray_header(cx.span().span_context()))
    }
}

impl TracePlacement {
    /// Moves the staged trace fields of `request` into its attributes or its `AWSTraceHeader`
    /// (`header` gives the X-Ray value of the context they encode), per the carrier and overflow
    /// policy. Returns the overflow event, if any.
    fn place(
        &self,
        request: &mut SendRequest,
        header: impl FnOnce(&HashMap<String, String>) -> Option<String>,
    ) -> Option<SpanEvent> {
        let mut fields = std::mem::take(&mut request.staged);
        // The W3C propagator writes an empty `tracestate` when there is none; SQS rejects empty
        // attribute values, and it must not take one of the 10 places.
        fields.retain(|_, value| !value.is_empty());
        if fields.is_empty() {
            return None;
        }
        if !request.attributes.is_empty() {
            // A propagator field it did not write this time (`tracestate` when the context has
            // none), copied from a received message, would pair another trace's state with this
            // context: drop it, so it neither travels nor takes one of the 10 places.
            let propagator_fields = match &self.placing {
                Some(placing) => placing.instrumentation.fields(),
                None => opentelemetry::global::get_text_map_propagator(|p| {
                    p.fields().map(str::to_owned).collect()
                }),
            };
            request.attributes.retain(|k, _| {
                !propagator_fields.iter().any(|f| f.eq_ignore_ascii_case(k))
                    || fields.keys().any(|f| f.eq_ignore_ascii_case(k))
            });
        }
        let mut xray = self.carrier != TraceCarrier::MessageAttributes;
        let mut event = None;
        if self.carrier != TraceCarrier::AwsTraceHeader {
            match placement(&request.attributes, &fields) {
                Placement::Attributes => {
                    for (key, value) in &fields {
                        request
                            .attributes
                            .retain(|k, _| !k.eq_ignore_ascii_case(key));
                        if let Some(value) = string_attribute(value.clone()) {
                            request.attributes.insert(key.clone(), value);
                        }
                    }
                }
                Placement::Overflow => {
                    // A stale copy of a field (copied from a received message) would win over
                    // the AWSTraceHeader on the consumer side and link to the wrong producer.
                    request
                        .attributes
                        .retain(|k, _| !fields.keys().any(|f| f.eq_ignore_ascii_case(k)));
                    let outcome = match self.overflow {
                        OverflowPolicy::AwsTraceHeader => {
                            xray = true;
                            tracing::debug!(
                                queue = request.queue_name(),
                                "trace context does not fit in the message attributes; sent as AWSTraceHeader"
                            );
                            "aws_trace_header"
                        }
                        OverflowPolicy::Skip => {
                            tracing::warn!(
                                queue = request.queue_name(),
                                attributes = request.attributes.len(),
                                "trace context does not fit in SQS's 10 message attributes; not sent"
                            );
                            "skipped"
                        }
                    };
                    if let Some(placing) = &self.placing {
                        placing.overflow_counter.add(
                            1,
                            &[
                                KeyValue::new(attr::MESSAGING_SYSTEM, crate::SYSTEM),
                                KeyValue::new(
                                    attr::MESSAGING_DESTINATION_NAME,
                                    request.queue_name().to_owned(),
                                ),
                                KeyValue::new(OVERFLOW_OUTCOME, outcome),
                            ],
                        );
                    }
                    // Noted on the message's own span: why the consumer may see no
                    // message-attribute context.
                    event = Some((
                        OVERFLOW_EVENT,
                        vec![KeyValue::new(OVERFLOW_OUTCOME, outcome)],
                    ));
                }
            }
        }
        if xray {
            if let Some(header) = header(&fields) {
                request.trace_header = Some(header);
            }
        }
        event
    }
}

impl SqsPublisher {
    /// A publisher over `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            placement: TracePlacement {
                carrier: TraceCarrier::default(),
                overflow: OverflowPolicy::default(),
                placing: None,
            },
        }
    }

    /// Where the context goes (default [`TraceCarrier::MessageAttributes`]).
    pub fn with_carrier(mut self, carrier: TraceCarrier) -> Self {
        self.placement.carrier = carrier;
        self
    }

    /// What happens when the context does not fit (default [`OverflowPolicy::AwsTraceHeader`]).
    pub fn with_overflow_policy(mut self, policy: OverflowPolicy) -> Self {
        self.placement.overflow = policy;
        self
    }

    /// The SQS client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The [`TracePlacement`] hook for a producer layer over `instrumentation`, with this
    /// publisher's carrier and overflow policy; overflows are counted on the instrumentation's
    /// meter. `traced`/`traced_batch` use it; pass it to
    /// [`ProducerLayer::on_inject`]/[`BatchProducerLayer::on_inject`] in a layer of your own.
    pub fn placement(&self, instrumentation: &Instrumentation) -> TracePlacement {
        TracePlacement {
            carrier: self.placement.carrier,
            overflow: self.placement.overflow,
            placing: Some(Placing {
                instrumentation: instrumentation.clone(),
                overflow_counter: overflow_counter(instrumentation.meter()),
            }),
        }
    }

    /// Wrapped in a [`ProducerLayer`] over `instrumentation`: a PRODUCER `send {queue}` span per
    /// message, the context placed by the publisher's [`TracePlacement`]. Overflows are counted
    /// by `tracelink.sqs.context.overflow` on the instrumentation's meter and noted by an event
    /// on the message's `send` span.
    pub fn traced(
        self,
        instrumentation: Instrumentation,
    ) -> ProducerService<SqsPublisher, DefaultErrorType, TracePlacement> {
        let placement = self.placement(&instrumentation);
        ProducerLayer::from(instrumentation)
            .on_inject(placement)
            .layer(self)
    }

    /// Wrapped in a [`BatchProducerLayer`] over `instrumentation`: one `send {queue}` span per
    /// batch, one PRODUCER `create {queue}` span (and context) per message, per-entry failures
    /// on their spans. An overflow is noted on the message's own `create` span.
    pub fn traced_batch(
        self,
        instrumentation: Instrumentation,
    ) -> BatchProducerService<SqsBatchPublisher, DefaultErrorType, TracePlacement> {
        let placement = self.placement(&instrumentation);
        BatchProducerLayer::from(instrumentation)
            .on_inject(placement)
            .layer(self.batch())
    }

    /// The raw `SendMessageBatch` service with the same configuration.
    pub fn batch(self) -> SqsBatchPublisher {
        SqsBatchPublisher { publisher: self }
    }

    /// Places what a layer without the [`TracePlacement`] hook left staged (nothing after the
    /// hook): with the global propagator, the context read back from the fields for the
    /// `AWSTraceHeader`, since no context was handed over; no span to note an overflow on.
    fn place_staged(&self, request: &mut SendRequest) {
        if request.staged.is_empty() {
            return;
        }
        let _unnoted = self.placement.place(request, |fields| {
            let cx = opentelemetry::global::get_text_map_propagator(|p| {
                p.extract(&MapExtractor(fields))
            });
            xray_header(cx.span().span_context())
        });
    }
}

fn overflow_counter(meter: &opentelemetry::metrics::Meter) -> Counter<u64> {
    meter
        .u64_counter(OVERFLOW_METRIC)
        .with_unit("{message}")
        .with_description(
            "Messages whose trace context did not fit in SQS's 10 message attributes.",
        )
        .build()
}

fn trace_header_attribute(
    header: Option<String>,
) -> Option<HashMap<MessageSystemAttributeNameForSends, MessageSystemAttributeValue>> {
    let value = MessageSystemAttributeValue::builder()
        .data_type("String")
        .string_value(header?)
        .build()
        .ok()?;
    Some(HashMap::from([(
        MessageSystemAttributeNameForSends::AwsTraceHeader,
        value,
    )]))
}

fn non_empty<K, V>(map: HashMap<K, V>) -> Option<HashMap<K, V>> {
    (!map.is_empty()).then_some(map)
}

/// What SQS answered to a sent message.
#[derive(Debug, Clone, Default)]
pub struct SentMessage {
    /// `MessageId`: the span's `messaging.message.id`.
    pub message_id: Option<String>,
    /// `SequenceNumber` (FIFO queues).
    pub sequence_number: Option<String>,
    /// The request id: the span's `aws.request_id`.
    pub request_id: Option<String>,
}

impl PublishResponse for SentMessage {
    fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        if let Some(id) = &self.message_id {
            attributes.push(KeyValue::new(attr::MESSAGING_MESSAGE_ID, id.clone()));
        }
        if let Some(id) = &self.request_id {
            attributes.push(KeyValue::new(attr::AWS_REQUEST_ID, id.clone()));
        }
    }
}

/// The boxed response future of [`SqsPublisher`].
pub type SendFuture<T> = Pin<Box<dyn Future<Output = Result<T, SqsError>> + Send>>;

impl Service<SendRequest> for SqsPublisher {
    type Response = SentMessage;
    type Error = SqsError;
    type Future = SendFuture<SentMessage>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: SendRequest) -> Self::Future {
        self.place_staged(&mut request);
        let send = self
            .client
            .send_message()
            .queue_url(request.queue_url())
            .message_body(request.body)
            .set_message_attributes(non_empty(request.attributes))
            .set_message_system_attributes(trace_header_attribute(request.trace_header))
            .set_delay_seconds(request.delay_seconds)
            .set_message_group_id(request.group_id)
            .set_message_deduplication_id(request.deduplication_id);
        Box::pin(async move {
            let output = send
                .send()
                .await
                .map_err(|e| SqsError::sdk("SendMessage", e))?;
            Ok(SentMessage {
                request_id: output.request_id().map(str::to_owned),
                message_id: output.message_id,
                sequence_number: output.sequence_number,
            })
        })
    }
}

/// The per-entry outcome of a `SendMessageBatch`, in request order. Failed entries carry the SQS
/// error code; the core records them on their `create` spans.
pub type BatchSent = Vec<Result<SentMessage, EntryError>>;

/// The raw `SendMessageBatch` service (`Vec<SendRequest>`, 1 to 10 messages for one queue),
/// from [`SqsPublisher::batch`]; [`SqsPublisher::traced_batch`] wraps it in the core's
/// [`BatchProducerLayer`].
#[derive(Debug, Clone)]
pub struct SqsBatchPublisher {
    publisher: SqsPublisher,
}

impl Service<Vec<SendRequest>> for SqsBatchPublisher {
    type Response = BatchSent;
    type Error = SqsError;
    type Future = SendFuture<BatchSent>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut requests: Vec<SendRequest>) -> Self::Future {
        let len = requests.len();
        if !(1..=10).contains(&len) {
            return Box::pin(std::future::ready(Err(SqsError::BatchSize(len))));
        }
        if requests.iter().any(|r| !r.same_queue(&requests[0])) {
            return Box::pin(std::future::ready(Err(SqsError::MixedQueues)));
        }
        let queue_url = requests[0].queue_url().to_owned();
        let mut entries = Vec::with_capacity(len);
        for (index, mut request) in requests.drain(..).enumerate() {
            self.publisher.place_staged(&mut request);
            // Entry ids are the indices: that is how failures map back to request order.
            let entry = SendMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .message_body(request.body)
                .set_message_attributes(non_empty(request.attributes))
                .set_message_system_attributes(trace_header_attribute(request.trace_header))
                .set_delay_seconds(request.delay_seconds)
                .set_message_group_id(request.group_id)
                .set_message_deduplication_id(request.deduplication_id)
                .build();
            match entry {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    let err = SqsError::Sdk {
                        operation: "SendMessageBatch",
                        code: std::borrow::Cow::Borrowed("construction_failure"),
                        source: Box::new(e),
                    };
                    return Box::pin(std::future::ready(Err(err)));
                }
            }
        }
        let send = self
            .publisher
            .client
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries));
        Box::pin(async move {
            let output = send
                .send()
                .await
                .map_err(|e| SqsError::sdk("SendMessageBatch", e))?;
            let request_id = output.request_id().map(str::to_owned);
            let mut results: BatchSent = (0..len)
                .map(|index| {
                    Err(EntryError {
                        id: index.to_string(),
                        code: MISSING_ENTRY.to_owned(),
                        message: Some("SQS reported neither success nor failure".to_owned()),
                        sender_fault: false,
                    })
                })
                .collect();
            for ok in output.successful() {
                if let Some(slot) = ok
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| results.get_mut(i))
                {
                    *slot = Ok(SentMessage {
                        message_id: Some(ok.message_id().to_owned()),
                        sequence_number: ok.sequence_number().map(str::to_owned),
                        request_id: request_id.clone(),
                    });
                }
            }
            for failed in output.failed() {
                if let Some(slot) = failed
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| results.get_mut(i))
                {
                    *slot = Err(EntryError::from(failed));
                }
            }
            Ok(results)
        })
    }
}

/// `error.type` of a batch entry SQS's answer did not mention.
const MISSING_ENTRY: &str = "missing_entry";

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    fn attrs(n: usize) -> HashMap<String, MessageAttributeValue> {
        (0..n)
            .map(|i| {
                (
                    format!("user{i}"),
                    string_attribute(format!("v{i}")).unwrap(),
                )
            })
            .collect()
    }

    fn w3c(keys: &[&str]) -> HashMap<String, String> {
        keys.iter()
            .map(|k| (k.to_string(), "x".to_string()))
            .collect()
    }

    #[test]
    fn fields_fit_up_to_ten_attributes() {
        let fields = w3c(&["traceparent", "tracestate"]);
        assert_eq!(placement(&attrs(8), &fields), Placement::Attributes);
        assert_eq!(placement(&attrs(9), &fields), Placement::Overflow);
        assert_eq!(
            placement(&attrs(9), &w3c(&["traceparent"])),
            Placement::Attributes
        );
        assert_eq!(
            placement(&attrs(10), &w3c(&["traceparent"])),
            Placement::Overflow
        );
        assert_eq!(
            placement(&attrs(0), &w3c(&["traceparent"])),
            Placement::Attributes
        );
    }

    fn placement_with(
        carrier: TraceCarrier,
        overflow: OverflowPolicy,
    ) -> (TracePlacement, SdkMeterProvider, InMemoryMetricExporter) {
        use opentelemetry::propagation::TextMapCompositePropagator;
        use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
        let exporter = InMemoryMetricExporter::default();
        let meter = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let instrumentation =
            Instrumentation::builder(tracelink_core::MessagingSystem::new("aws_sqs"))
                .with_propagator(TextMapCompositePropagator::new(vec![
                    Box::new(TraceContextPropagator::new()),
                    Box::new(BaggagePropagator::new()),
                ]))
                .with_meter_provider(&meter)
                .build();
        let placement = publisher(carrier, overflow).placement(&instrumentation);
        (placement, meter, exporter)
    }

    fn publisher(carrier: TraceCarrier, overflow: OverflowPolicy) -> SqsPublisher {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .build();
        SqsPublisher::new(Client::from_conf(config))
            .with_carrier(carrier)
            .with_overflow_policy(overflow)
    }

    fn hook(carrier: TraceCarrier, overflow: OverflowPolicy) -> TracePlacement {
        placement_with(carrier, overflow).0
    }

    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const XRAY: &str = "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1";

    /// The context the layer injected: the one `TRACEPARENT` encodes.
    fn injected() -> Context {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ))
    }

    fn request(user: usize, fields: &[(&str, &str)]) -> SendRequest {
        let mut request = SendRequest::new("http://localhost/1/q", "body");
        request.attributes = attrs(user);
        request.staged = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        request
    }

    #[test]
    fn place_writes_fields_that_fit_and_drops_empty_ones() {
        let s = hook(
            TraceCarrier::MessageAttributes,
            OverflowPolicy::AwsTraceHeader,
        );
        let mut r = request(9, &[("traceparent", TRACEPARENT), ("tracestate", "")]);
        assert!(
            s.on_inject(&mut r, &injected()).is_none(),
            "no overflow event"
        );
        assert_eq!(r.attributes.len(), 10);
        assert_eq!(
            r.attributes["traceparent"].string_value(),
            Some(TRACEPARENT)
        );
        assert!(r.trace_header.is_none());
        assert!(r.staged.is_empty());
    }

    #[test]
    fn place_overflows_into_aws_trace_header_and_removes_stale_fields() {
        let (s, meter, exporter) = placement_with(
            TraceCarrier::MessageAttributes,
            OverflowPolicy::AwsTraceHeader,
        );
        let mut r = request(9, &[("traceparent", TRACEPARENT), ("baggage", "k=v")]);
        r.attributes.insert(
            "Traceparent".into(),
            string_attribute("stale".into()).unwrap(),
        );
        let event = s.on_inject(&mut r, &injected());
        assert_eq!(
            r.attributes.len(),
            9,
            "stale traceparent removed, nothing added"
        );
        assert!(!r
            .attributes
            .keys()
            .any(|k| k.eq_ignore_ascii_case("traceparent")));
        assert_eq!(r.trace_header.as_deref(), Some(XRAY));
        let (name, attributes) = event.expect("the overflow is returned as an event");
        assert_eq!(name, OVERFLOW_EVENT);
        assert_eq!(
            attributes,
            vec![KeyValue::new(OVERFLOW_OUTCOME, "aws_trace_header")]
        );

        let mut r = request(10, &[("traceparent", TRACEPARENT)]);
        assert!(s.on_inject(&mut r, &injected()).is_some());
        assert_eq!(r.attributes.len(), 10);
        assert_eq!(r.trace_header.as_deref(), Some(XRAY));
        assert_eq!(overflow_count(&meter, &exporter), 2, "both counted");
    }

    #[test]
    fn the_aws_trace_header_is_the_injected_context_not_the_fields() {
        // The header comes from the context the layer hands over (a batch entry's own `create`
        // span), whatever the staged fields say.
        let s = hook(TraceCarrier::AwsTraceHeader, OverflowPolicy::Skip);
        let other = "00-11111111111111111111111111111111-2222222222222222-01";
        let mut r = request(0, &[("traceparent", other)]);
        assert!(s.on_inject(&mut r, &injected()).is_none());
        assert_eq!(r.trace_header.as_deref(), Some(XRAY));
        // No valid context handed over: no header.
        let mut r = request(0, &[("traceparent", TRACEPARENT)]);
        s.on_inject(&mut r, &Context::new());
        assert!(r.trace_header.is_none());
    }

    #[test]
    fn place_drops_a_stale_field_the_propagator_did_not_write() {
        let s = hook(
            TraceCarrier::MessageAttributes,
            OverflowPolicy::AwsTraceHeader,
        );
        // 9 user attributes, one of them a `tracestate` copied from a received message; the
        // current context has no trace state, so only `traceparent` was staged.
        let mut r = request(8, &[("traceparent", TRACEPARENT)]);
        r.attributes.insert(
            "tracestate".into(),
            string_attribute("stale=1".into()).unwrap(),
        );
        s.on_inject(&mut r, &injected());
        assert!(
            !r.attributes.contains_key("tracestate"),
            "stale state dropped"
        );
        assert_eq!(
            r.attributes["traceparent"].string_value(),
            Some(TRACEPARENT)
        );
        assert_eq!(r.attributes.len(), 9, "8 user attributes and traceparent");
        assert!(r.trace_header.is_none(), "it fits: no overflow");
    }

    #[test]
    fn place_skips_without_fallback() {
        let (s, meter, exporter) =
            placement_with(TraceCarrier::MessageAttributes, OverflowPolicy::Skip);
        let mut r = request(10, &[("traceparent", TRACEPARENT)]);
        let (name, attributes) = s.on_inject(&mut r, &injected()).unwrap();
        assert_eq!(name, OVERFLOW_EVENT);
        assert_eq!(attributes, vec![KeyValue::new(OVERFLOW_OUTCOME, "skipped")]);
        assert_eq!(r.attributes.len(), 10);
        assert!(!r.attributes.contains_key("traceparent"));
        assert!(r.trace_header.is_none());
        assert_eq!(overflow_count(&meter, &exporter), 1);
    }

    #[test]
    fn place_per_carrier() {
        let mut r = request(0, &[("traceparent", TRACEPARENT)]);
        hook(TraceCarrier::AwsTraceHeader, OverflowPolicy::Skip).on_inject(&mut r, &injected());
        assert!(r.attributes.is_empty());
        assert_eq!(r.trace_header.as_deref(), Some(XRAY));

        let mut r = request(0, &[("traceparent", TRACEPARENT)]);
        hook(TraceCarrier::Both, OverflowPolicy::Skip).on_inject(&mut r, &injected());
        assert_eq!(r.attributes.len(), 1);
        assert_eq!(r.trace_header.as_deref(), Some(XRAY));
    }

    #[test]
    fn without_the_hook_the_publisher_places_with_the_global_propagator() {
        // The raw publisher inside a layer without the hook: the fields are still staged when
        // it is called; it places them itself (the global propagator's fields, and the context
        // they encode for the AWSTraceHeader).
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let s = publisher(
            TraceCarrier::MessageAttributes,
            OverflowPolicy::AwsTraceHeader,
        );
        let mut r = request(10, &[("traceparent", TRACEPARENT)]);
        s.place_staged(&mut r);
        assert_eq!(r.attributes.len(), 10);
        assert_eq!(r.trace_header.as_deref(), Some(XRAY));
        assert!(r.staged.is_empty());

        let mut r = request(2, &[("traceparent", TRACEPARENT)]);
        s.place_staged(&mut r);
        assert_eq!(r.attributes.len(), 3);
        assert!(r.trace_header.is_none());

        // After the hook nothing is left staged: nothing to do.
        let mut r = request(10, &[]);
        s.place_staged(&mut r);
        assert_eq!(r.attributes.len(), 10);
        assert!(r.trace_header.is_none());
    }

    fn overflow_count(meter: &SdkMeterProvider, exporter: &InMemoryMetricExporter) -> u64 {
        use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
        meter.force_flush().unwrap();
        let mut total = 0;
        for rm in exporter.get_finished_metrics().unwrap() {
            for scope in rm.scope_metrics() {
                for metric in scope.metrics() {
                    if metric.name() != OVERFLOW_METRIC {
                        continue;
                    }
                    if let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric.data() {
                        total = sum.data_points().map(|p| p.value()).sum();
                    }
                }
            }
        }
        total
    }

    #[test]
    fn present_propagator_keys_count_as_the_propagators_own() {
        let mut user = attrs(9);
        user.insert(
            "Traceparent".into(),
            string_attribute("stale".into()).unwrap(),
        );
        // 10 attributes, one of them the propagator's own: the fresh traceparent replaces it.
        assert_eq!(
            placement(&user, &w3c(&["traceparent"])),
            Placement::Attributes
        );
        assert_eq!(
            placement(&user, &w3c(&["traceparent", "baggage"])),
            Placement::Overflow
        );
    }
}
