//! The shared configuration behind every layer, and the span logic itself.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::global::{self, BoxedTracer, ObjectSafeTracerProvider};
use opentelemetry::metrics::MeterProvider;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Link, Span, SpanContext, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, InstrumentationScope, Key, KeyValue, Value};
use opentelemetry_semantic_conventions::attribute as attr;

use crate::baggage_policy::BaggagePolicy;
use crate::carrier::Bounded;
use crate::link_mode::LinkMode;
use crate::message::{Destination, IncomingMessage, MessagingSystem, OutgoingMessage};
use crate::metrics::{MetricKind, MetricSet, Metrics, SetKey};
use crate::propagation::{W3cCompositePropagator, W3cTraceContextPropagator};
use crate::span_name::SpanName;

/// `error.type` recorded when an operation's future is dropped before it completed.
pub const CANCELLED: &str = "cancelled";

/// Prefix of captured header attributes. The semantic-conventions crate has no constant for this
/// templated name (`messaging.header.<key>` is not in it), so it is spelled here once.
const HEADER_ATTRIBUTE_PREFIX: &str = "messaging.header.";

/// A reference-counted attribute value: cloning it for the span and the metrics of one
/// operation costs no allocation.
fn shared(text: &str) -> Value {
    Value::from(Arc::<str>::from(text))
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("tracelink")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_schema_url(opentelemetry_semantic_conventions::SCHEMA_URL)
        .build()
}

/// Shared, cheaply clonable configuration of tracelink's layers: which system they instrument,
/// where spans and metrics go, how contexts propagate and relate.
///
/// Built with [`Instrumentation::builder`]; [`Instrumentation::new`] takes every default. The
/// tracer and meter come from the global providers *at build time*, so install those first.
#[derive(Clone)]
pub struct Instrumentation {
    inner: Arc<Inner>,
    // Outside `inner` so that `with_link_mode` is a cheap copy (request/reply responders need
    // the parent mode on an otherwise shared configuration).
    link_mode: LinkMode,
}

struct Inner {
    system: MessagingSystem,
    tracer: BoxedTracer,
    propagator: Option<Arc<dyn TextMapPropagator + Send + Sync>>,
    /// Set when `propagator` is tracelink's W3C propagator (alone or composed): inject then
    /// writes `traceparent` borrowed, and extract skips the generic bounds check.
    w3c: Option<W3cCompositePropagator>,
    span_name: SpanName,
    captured_headers: Vec<(String, Key)>,
    baggage_policy: BaggagePolicy,
    create_spans: bool,
    metrics: Metrics,
    meter: opentelemetry::metrics::Meter,
    /// `messaging.system`, `server.address`, `server.port`: on every span and metric.
    common: Vec<KeyValue>,
    client_id: Option<KeyValue>,
}

impl fmt::Debug for Instrumentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrumentation")
            .field("system", &self.inner.system)
            .field("link_mode", &self.link_mode)
            .field("span_name", &self.inner.span_name)
            .field("baggage_policy", &self.inner.baggage_policy)
            .field("custom_propagator", &self.inner.propagator.is_some())
            .finish_non_exhaustive()
    }
}

impl Instrumentation {
    /// Every default: global tracer, meter and propagator; [`LinkMode::Link`].
    pub fn new(system: MessagingSystem) -> Self {
        Self::builder(system).build()
    }

    /// Starts a builder for `system`.
    pub fn builder(system: MessagingSystem) -> InstrumentationBuilder {
        InstrumentationBuilder {
            system,
            tracer: None,
            meter: None,
            propagator: None,
            w3c: None,
            link_mode: LinkMode::default(),
            span_name: SpanName::default(),
            captured_headers: Vec::new(),
            baggage_policy: BaggagePolicy::default(),
            create_spans: true,
        }
    }

    /// The instrumented system.
    pub fn system(&self) -> &MessagingSystem {
        &self.inner.system
    }

    /// The configured link mode.
    pub fn link_mode(&self) -> LinkMode {
        self.link_mode
    }

    /// The same instrumentation with another link mode (say, [`LinkMode::Parent`] for a
    /// request/reply responder, whose caller waits for it).
    pub fn with_link_mode(&self, mode: LinkMode) -> Self {
        Self {
            inner: self.inner.clone(),
            link_mode: mode,
        }
    }

    /// The header names the configured (or global) propagator reads and writes, e.g.
    /// `traceparent`, `tracestate`, `baggage`: what a consumer must ask a broker for (SQS
    /// `MessageAttributeNames`) and what counts against a header budget.
    pub fn fields(&self) -> Vec<String> {
        match &self.inner.propagator {
            Some(p) => p.fields().map(str::to_owned).collect(),
            None => global::get_text_map_propagator(|p| p.fields().map(str::to_owned).collect()),
        }
    }

    /// The meter the layers record with, for adapters' own instruments.
    pub fn meter(&self) -> &opentelemetry::metrics::Meter {
        &self.inner.meter
    }

    /// Injects `cx` through the configured (or global) propagator.
    pub fn inject(&self, cx: &Context, injector: &mut dyn opentelemetry::propagation::Injector) {
        match &self.inner.propagator {
            Some(p) => p.inject_context(cx, injector),
            None => global::get_text_map_propagator(|p| p.inject_context(cx, injector)),
        }
    }

    /// Injects `cx` into `message`'s headers as the producer layers do. When the configured
    /// propagator is tracelink's [`W3cTraceContextPropagator`] (alone or
    /// [`followed_by`](W3cTraceContextPropagator::followed_by) others), `traceparent` goes
    /// through [`OutgoingMessage::with_str_injector`] borrowed from a stack buffer; otherwise
    /// through [`OutgoingMessage::with_headers_mut`] and [`inject`](Self::inject).
    pub fn inject_message<M: OutgoingMessage + ?Sized>(&self, cx: &Context, message: &mut M) {
        match &self.inner.w3c {
            Some(w3c) => {
                message.with_str_injector(&mut |injector| w3c.inject_context_str(cx, injector))
            }
            None => message.with_headers_mut(&mut |injector| self.inject(cx, injector)),
        }
    }

    /// Extracts a context from `extractor` through the configured (or global) propagator,
    /// relative to an empty context so nothing ambient leaks in. Values longer than
    /// [`MAX_HEADER_VALUE_LEN`](crate::carrier::MAX_HEADER_VALUE_LEN) read as absent.
    pub fn extract(&self, extractor: &dyn Extractor) -> Context {
        if let Some(w3c) = &self.inner.w3c {
            return w3c.extract_bounded(extractor);
        }
        let bounded = Bounded(extractor);
        let empty = Context::new();
        match &self.inner.propagator {
            Some(p) => p.extract_with_context(&empty, &bounded),
            None => global::get_text_map_propagator(|p| p.extract_with_context(&empty, &bounded)),
        }
    }

    /// The producer's span context carried by `message`, when it is valid.
    pub fn producer_context<M: IncomingMessage + ?Sized>(
        &self,
        message: &M,
    ) -> Option<SpanContext> {
        let mut found = None;
        message.with_headers(&mut |ex| found = self.extract_producer(ex).0);
        found
    }

    /// The producer's span context (when valid) and the baggage the policy lets through, as
    /// [`extract`](Self::extract) reads them. With tracelink's W3C propagator alone there is no
    /// baggage to read, and the span context comes without building a [`Context`].
    fn extract_producer(
        &self,
        extractor: &dyn Extractor,
    ) -> (Option<SpanContext>, Option<opentelemetry::baggage::Baggage>) {
        if let Some(alone) = self
            .inner
            .w3c
            .as_ref()
            .and_then(|w3c| w3c.extract_span_context_alone(extractor))
        {
            return (alone, None);
        }
        let cx = self.extract(extractor);
        let span = cx.span();
        let sc = span.span_context();
        let producer = sc.is_valid().then(|| sc.clone());
        (producer, self.inner.baggage_policy.apply(cx.baggage()))
    }

    fn destination_attributes(
        &self,
        attributes: &mut Vec<KeyValue>,
        destination: &Destination<'_>,
        name: &Value,
    ) {
        attributes.push(KeyValue::new(
            attr::MESSAGING_DESTINATION_NAME,
            name.clone(),
        ));
        if let Some(template) = destination.template {
            attributes.push(KeyValue::new(
                attr::MESSAGING_DESTINATION_TEMPLATE,
                template.to_owned(),
            ));
        }
        if destination.temporary {
            attributes.push(KeyValue::new(attr::MESSAGING_DESTINATION_TEMPORARY, true));
        }
        if destination.anonymous {
            attributes.push(KeyValue::new(attr::MESSAGING_DESTINATION_ANONYMOUS, true));
        }
    }

    fn operation_attributes(
        &self,
        attributes: &mut Vec<KeyValue>,
        operation_type: &'static str,
        operation_name: &'static str,
    ) {
        attributes.extend(self.inner.common.iter().cloned());
        attributes.push(KeyValue::new(
            attr::MESSAGING_OPERATION_TYPE,
            operation_type,
        ));
        attributes.push(KeyValue::new(
            attr::MESSAGING_OPERATION_NAME,
            operation_name,
        ));
    }

    /// The cached metric attribute set of an operation, and the values its span shares with it:
    /// `messaging.destination.name` and the consumer group and subscription attributes (taken
    /// from the cached set, so a message on a known destination allocates none of them).
    fn metric_values(
        &self,
        kind: MetricKind,
        operation_name: &'static str,
        destination: &Destination<'_>,
        group: Option<&str>,
        subscription: Option<&str>,
    ) -> (Arc<MetricSet>, Value, [Option<KeyValue>; 2]) {
        // Metrics must stay low-cardinality: prefer the template over a per-request name.
        let metric_name = destination.template.unwrap_or(destination.name);
        let key = SetKey {
            kind,
            operation: operation_name,
            destination: metric_name,
            group,
            subscription,
        };
        let set = self.inner.metrics.set(key, || {
            let mut attributes = Vec::with_capacity(self.inner.common.len() + 4);
            attributes.extend(self.inner.common.iter().cloned());
            attributes.push(KeyValue::new(
                attr::MESSAGING_OPERATION_NAME,
                operation_name,
            ));
            attributes.push(KeyValue::new(
                attr::MESSAGING_DESTINATION_NAME,
                shared(metric_name),
            ));
            if let Some(group) = group {
                attributes.push(KeyValue::new(
                    attr::MESSAGING_CONSUMER_GROUP_NAME,
                    shared(group),
                ));
            }
            if let Some(subscription) = subscription {
                attributes.push(KeyValue::new(
                    attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
                    shared(subscription),
                ));
            }
            attributes
        });
        let name = match destination.template {
            None => set.destination().clone(),
            Some(_) => shared(destination.name),
        };
        let consumer = [
            set.group()
                .map(|g| KeyValue::new(attr::MESSAGING_CONSUMER_GROUP_NAME, g.clone())),
            set.subscription()
                .map(|s| KeyValue::new(attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME, s.clone())),
        ];
        (set, name, consumer)
    }

    /// Starts the PRODUCER span for `message` (child of the current context) and injects its
    /// context into the message's headers.
    pub(crate) fn start_publish<M: OutgoingMessage + ?Sized>(
        &self,
        message: &mut M,
        parent: &Context,
        operation: PublishOperation,
    ) -> Operation {
        let started = SystemTime::now();
        let inner = &*self.inner;
        let (operation_type, operation_name, kind) = match operation {
            PublishOperation::Send => ("send", inner.system.publish_operation, SpanKind::Producer),
            PublishOperation::Create => ("create", "create", SpanKind::Producer),
        };
        let destination = message.destination();
        let name = inner.span_name.render(operation_name, &destination);
        let (metric, destination_name) = match operation {
            PublishOperation::Send => {
                let (set, name, _) = self.metric_values(
                    MetricKind::Publish,
                    operation_name,
                    &destination,
                    None,
                    None,
                );
                (Some((set, 1)), name)
            }
            PublishOperation::Create => (None, shared(destination.name)),
        };
        // Attributes samplers may need go in at span start; the rest only when recording.
        let mut attributes = Vec::with_capacity(10);
        self.operation_attributes(&mut attributes, operation_type, operation_name);
        self.destination_attributes(&mut attributes, &destination, &destination_name);
        let builder = inner
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(started)
            .with_attributes(attributes);
        let mut span = inner.tracer.build_with_context(builder, parent);
        if span.is_recording() {
            let mut details = Vec::with_capacity(8);
            if let Some(client_id) = &inner.client_id {
                details.push(client_id.clone());
            }
            push_message_attributes(
                &mut details,
                message.message_id().map(Cow::Borrowed),
                message.conversation_id(),
                message.body_size(),
                message.partition_id(),
            );
            message.attributes(&mut details);
            span.set_attributes(details);
        }
        let cx = parent.with_span(span);
        self.inject_message(&cx, message);
        Operation::new(self.clone(), cx, metric, started)
    }

    /// Starts the `send` span of a batch publish: PRODUCER, or CLIENT when every message gets a
    /// `create` span of its own.
    pub(crate) fn start_batch_send(
        &self,
        destination: &Destination<'_>,
        count: usize,
        parent: &Context,
    ) -> Operation {
        let inner = &*self.inner;
        let operation_name = inner.system.publish_operation;
        let kind = if inner.create_spans {
            SpanKind::Client
        } else {
            SpanKind::Producer
        };
        let started = SystemTime::now();
        let mut attributes = Vec::with_capacity(12);
        self.operation_attributes(&mut attributes, "send", operation_name);
        let (metric, destination_name, _) =
            self.metric_values(MetricKind::Publish, operation_name, destination, None, None);
        self.destination_attributes(&mut attributes, destination, &destination_name);
        if let Some(client_id) = &inner.client_id {
            attributes.push(client_id.clone());
        }
        if count > 1 {
            attributes.push(KeyValue::new(
                attr::MESSAGING_BATCH_MESSAGE_COUNT,
                count as i64,
            ));
        }
        let builder = inner
            .tracer
            .span_builder(inner.span_name.render(operation_name, destination))
            .with_kind(kind)
            .with_start_time(started)
            .with_attributes(attributes);
        let span = inner.tracer.build_with_context(builder, parent);
        Operation::new(
            self.clone(),
            parent.with_span(span),
            Some((metric, count as u64)),
            started,
        )
    }

    pub(crate) fn create_spans(&self) -> bool {
        self.inner.create_spans
    }

    /// Extracts the producer context, applies the baggage policy and captures headers.
    fn read_message<M: IncomingMessage + ?Sized>(
        &self,
        message: &M,
        captured: &mut Vec<KeyValue>,
    ) -> (Option<SpanContext>, Option<opentelemetry::baggage::Baggage>) {
        let mut producer = None;
        let mut baggage = None;
        let inner = &*self.inner;
        message.with_headers(&mut |ex| {
            (producer, baggage) = self.extract_producer(ex);
            for (header, key) in &inner.captured_headers {
                if let Some(value) = Bounded(ex).get(header) {
                    captured.push(KeyValue::new(key.clone(), value.to_owned()));
                }
            }
        });
        (producer, baggage)
    }

    fn message_attributes<M: IncomingMessage + ?Sized>(
        &self,
        message: &M,
        attributes: &mut Vec<KeyValue>,
    ) {
        push_message_attributes(
            attributes,
            message.message_id(),
            message.conversation_id(),
            message.body_size(),
            message.partition_id(),
        );
        message.attributes(attributes);
    }

    fn consumer_attributes(&self, keys: &[Option<KeyValue>; 2], attributes: &mut Vec<KeyValue>) {
        attributes.extend(keys.iter().flatten().cloned());
        if let Some(client_id) = &self.inner.client_id {
            attributes.push(client_id.clone());
        }
    }

    /// The parent context of a process span, per the link mode.
    fn process_parent(&self, ambient: &Context, producer: Option<&SpanContext>) -> Context {
        match (self.link_mode, producer) {
            (LinkMode::Parent, Some(sc)) => ambient.with_remote_span_context(sc.clone()),
            _ => ambient.clone(),
        }
    }

    fn with_baggage(
        cx: Context,
        ambient: &Context,
        baggage: Option<opentelemetry::baggage::Baggage>,
    ) -> Context {
        match baggage {
            None => cx,
            Some(incoming) => {
                let mut merged = crate::baggage_policy::copy(ambient.baggage());
                for (key, (value, metadata)) in incoming.iter() {
                    merged.insert_with_metadata(key.clone(), value.clone(), metadata.clone());
                }
                cx.with_baggage(merged)
            }
        }
    }

    /// Starts the CONSUMER `process` span for one message; returns the context the handler runs in.
    pub(crate) fn start_process<M: IncomingMessage + ?Sized>(&self, message: &M) -> Operation {
        let started = SystemTime::now();
        let inner = &*self.inner;
        let ambient = Context::current();
        let mut attributes = Vec::with_capacity(16);
        self.operation_attributes(&mut attributes, "process", "process");
        let (producer, baggage) = self.read_message(message, &mut attributes);
        let destination = message.destination();
        let (metric, destination_name, consumer_keys) = self.metric_values(
            MetricKind::Process,
            "process",
            &destination,
            message.consumer_group(),
            message.subscription_name(),
        );
        self.destination_attributes(&mut attributes, &destination, &destination_name);
        self.consumer_attributes(&consumer_keys, &mut attributes);
        let parent = self.process_parent(&ambient, producer.as_ref());
        let mut builder = inner
            .tracer
            .span_builder(inner.span_name.render("process", &destination))
            .with_kind(SpanKind::Consumer)
            .with_start_time(started)
            .with_attributes(attributes);
        if let Some(sc) = producer {
            builder = builder.with_links(vec![Link::with_context(sc)]);
        }
        let mut span = inner.tracer.build_with_context(builder, &parent);
        if span.is_recording() {
            let mut details = Vec::with_capacity(8);
            self.message_attributes(message, &mut details);
            span.set_attributes(details);
        }
        let cx = Self::with_baggage(parent.with_span(span), &ambient, baggage);
        Operation::new(self.clone(), cx, Some((metric, 1)), started)
    }

    /// Starts one CONSUMER `process` span for a batch, with one link per message that carried a
    /// valid context. Empty batches get no span.
    pub(crate) fn start_batch_process<M: IncomingMessage>(
        &self,
        messages: &[M],
    ) -> Option<Operation> {
        let first = messages.first()?;
        let started = SystemTime::now();
        let inner = &*self.inner;
        let ambient = Context::current();
        let destination = first.destination();
        let mut attributes = Vec::with_capacity(12);
        self.operation_attributes(&mut attributes, "process", "process");
        let (metric, destination_name, consumer_keys) = self.metric_values(
            MetricKind::Process,
            "process",
            &destination,
            first.consumer_group(),
            first.subscription_name(),
        );
        self.destination_attributes(&mut attributes, &destination, &destination_name);
        self.consumer_attributes(&consumer_keys, &mut attributes);
        if messages.len() > 1 {
            attributes.push(KeyValue::new(
                attr::MESSAGING_BATCH_MESSAGE_COUNT,
                messages.len() as i64,
            ));
        }
        let links = self.links(messages);
        let builder = inner
            .tracer
            .span_builder(inner.span_name.render("process", &destination))
            .with_kind(SpanKind::Consumer)
            .with_start_time(started)
            .with_attributes(attributes)
            .with_links(links);
        let span = inner.tracer.build_with_context(builder, &ambient);
        Some(Operation::new(
            self.clone(),
            ambient.with_span(span),
            Some((metric, messages.len() as u64)),
            started,
        ))
    }

    /// One link per message that carried a valid context, with the message's own attributes.
    fn links<M: IncomingMessage>(&self, messages: &[M]) -> Vec<Link> {
        messages
            .iter()
            .filter_map(|message| {
                let sc = self.producer_context(message)?;
                let mut attributes = Vec::new();
                self.message_attributes(message, &mut attributes);
                Some(Link::new(sc, attributes, 0))
            })
            .collect()
    }

    /// Starts the CLIENT `receive {destination}` span of a pull consumer, from `started` (when the
    /// poll began), with a link to each received message that carried a valid context. Returns
    /// `None` for an empty poll: no span is recorded for it.
    pub fn receive_span<M: IncomingMessage>(
        &self,
        destination: Destination<'_>,
        started: SystemTime,
        messages: &[M],
    ) -> Option<ReceiveSpan> {
        let first = messages.first()?;
        Some(self.start_receive(
            destination,
            started,
            [first.consumer_group(), first.subscription_name()],
            messages.len(),
            self.links(messages),
        ))
    }

    /// Records the CLIENT `receive {destination}` span of a poll that failed (from `started`,
    /// when the poll began, to now) with status Error and `error.type`, and its
    /// `messaging.client.operation.duration`.
    pub fn receive_failed(
        &self,
        destination: Destination<'_>,
        started: SystemTime,
        error_type: impl Into<Cow<'static, str>>,
    ) {
        self.start_receive(destination, started, [None, None], 0, Vec::new())
            .fail(error_type);
    }

    fn start_receive(
        &self,
        destination: Destination<'_>,
        started: SystemTime,
        [group, subscription]: [Option<&str>; 2],
        count: usize,
        links: Vec<Link>,
    ) -> ReceiveSpan {
        let inner = &*self.inner;
        let ambient = Context::current();
        let mut attributes = Vec::with_capacity(12);
        self.operation_attributes(&mut attributes, "receive", "receive");
        let (metric, destination_name, consumer_keys) = self.metric_values(
            MetricKind::Receive,
            "receive",
            &destination,
            group,
            subscription,
        );
        self.destination_attributes(&mut attributes, &destination, &destination_name);
        self.consumer_attributes(&consumer_keys, &mut attributes);
        if count > 1 {
            attributes.push(KeyValue::new(
                attr::MESSAGING_BATCH_MESSAGE_COUNT,
                count as i64,
            ));
        }
        let builder = inner
            .tracer
            .span_builder(inner.span_name.render("receive", &destination))
            .with_kind(SpanKind::Client)
            .with_start_time(started)
            .with_attributes(attributes)
            .with_links(links);
        let span = inner.tracer.build_with_context(builder, &ambient);
        // The poll started before we were called: the span and the metric measure from there.
        let operation = Operation::new(
            self.clone(),
            ambient.with_span(span),
            Some((metric, 0)),
            started,
        );
        ClientSpan { operation }
    }

    /// Starts a CLIENT settle span, `{operation_name} {destination}` (`ack`, `nack`, `delete`,
    /// `commit`, ...), as a child of `parent` (the message's process span, say), with
    /// `messaging.operation.type` = `settle`, the instrumentation's common attributes and
    /// `attributes` (delivery tag, message id, ...). Its duration goes to
    /// `messaging.client.operation.duration`.
    pub fn settle_span(
        &self,
        operation_name: &'static str,
        destination: Destination<'_>,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> SettleSpan {
        let started = SystemTime::now();
        let inner = &*self.inner;
        let mut all = Vec::with_capacity(8 + attributes.len());
        self.operation_attributes(&mut all, "settle", operation_name);
        let (metric, destination_name, _) = self.metric_values(
            MetricKind::Receive,
            operation_name,
            &destination,
            None,
            None,
        );
        self.destination_attributes(&mut all, &destination, &destination_name);
        all.extend(attributes);
        let builder = inner
            .tracer
            .span_builder(inner.span_name.render(operation_name, &destination))
            .with_kind(SpanKind::Client)
            .with_start_time(started)
            .with_attributes(all);
        let span = inner.tracer.build_with_context(builder, parent);
        ClientSpan {
            operation: Operation::new(
                self.clone(),
                parent.with_span(span),
                Some((metric, 0)),
                started,
            ),
        }
    }
}

/// Whether a header name is one that carries credentials, which header capture refuses.
fn is_credential(name: &str) -> bool {
    const EXACT: [&str; 4] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ];
    const PARTS: [&str; 6] = [
        "password",
        "secret",
        "token",
        "api-key",
        "apikey",
        "credential",
    ];
    let name = name.to_ascii_lowercase();
    EXACT.contains(&name.as_str()) || PARTS.iter().any(|part| name.contains(part))
}

/// The per-message attributes both message traits describe.
fn push_message_attributes(
    attributes: &mut Vec<KeyValue>,
    id: Option<Cow<'_, str>>,
    conversation_id: Option<&str>,
    body_size: Option<usize>,
    partition_id: Option<Cow<'_, str>>,
) {
    if let Some(id) = id {
        attributes.push(KeyValue::new(attr::MESSAGING_MESSAGE_ID, id.into_owned()));
    }
    if let Some(id) = conversation_id {
        attributes.push(KeyValue::new(
            attr::MESSAGING_MESSAGE_CONVERSATION_ID,
            id.to_owned(),
        ));
    }
    if let Some(size) = body_size {
        attributes.push(KeyValue::new(
            attr::MESSAGING_MESSAGE_BODY_SIZE,
            i64::try_from(size).unwrap_or(i64::MAX),
        ));
    }
    if let Some(partition) = partition_id {
        attributes.push(KeyValue::new(
            attr::MESSAGING_DESTINATION_PARTITION_ID,
            partition.into_owned(),
        ));
    }
}

/// Builds an [`Instrumentation`].
pub struct InstrumentationBuilder {
    system: MessagingSystem,
    tracer: Option<BoxedTracer>,
    meter: Option<opentelemetry::metrics::Meter>,
    propagator: Option<Arc<dyn TextMapPropagator + Send + Sync>>,
    w3c: Option<W3cCompositePropagator>,
    link_mode: LinkMode,
    span_name: SpanName,
    captured_headers: Vec<String>,
    baggage_policy: BaggagePolicy,
    create_spans: bool,
}

impl fmt::Debug for InstrumentationBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentationBuilder")
            .field("system", &self.system)
            .field("link_mode", &self.link_mode)
            .finish_non_exhaustive()
    }
}

impl InstrumentationBuilder {
    /// Spans go to `provider` instead of the global tracer provider.
    pub fn with_tracer_provider<P>(mut self, provider: &P) -> Self
    where
        P: ObjectSafeTracerProvider,
    {
        self.tracer = Some(BoxedTracer::new(provider.boxed_tracer(scope())));
        self
    }

    /// Metrics go to `provider` instead of the global meter provider.
    pub fn with_meter_provider<P: MeterProvider>(mut self, provider: &P) -> Self {
        self.meter = Some(provider.meter_with_scope(scope()));
        self
    }

    /// Propagates with `propagator` instead of the global one.
    pub fn with_propagator<P>(mut self, propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        // tracelink's own W3C propagator is recognised once, here, for the allocation-free path.
        let any: &dyn Any = &propagator;
        self.w3c = if any.is::<W3cTraceContextPropagator>() {
            Some(W3cCompositePropagator::default())
        } else {
            any.downcast_ref::<W3cCompositePropagator>().cloned()
        };
        self.propagator = Some(Arc::new(propagator));
        self
    }

    /// How consumer spans relate to the producer's context (default [`LinkMode::Link`]).
    pub fn with_link_mode(mut self, mode: LinkMode) -> Self {
        self.link_mode = mode;
        self
    }

    /// What span names say after the operation (default [`SpanName::Destination`]).
    pub fn with_span_name(mut self, span_name: SpanName) -> Self {
        self.span_name = span_name;
        self
    }

    /// Records the named headers of incoming messages as `messaging.header.<name>` attributes
    /// (names lower-cased). Off by default: headers may carry personal data.
    ///
    /// Names that carry credentials are never captured, even when listed: `authorization`,
    /// `proxy-authorization`, `cookie`, `set-cookie`, and any name containing `password`,
    /// `secret`, `token`, `api-key`, `apikey` or `credential` (ASCII case ignored).
    pub fn with_captured_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.captured_headers = names
            .into_iter()
            .map(Into::into)
            .filter(|name| !is_credential(name))
            .collect();
        self
    }

    /// What to do with baggage from producers (default [`BaggagePolicy::Keep`]).
    pub fn with_baggage_policy(mut self, policy: BaggagePolicy) -> Self {
        self.baggage_policy = policy;
        self
    }

    /// Batch publishes inject the `send` span's context into every message instead of giving
    /// each message a `create` span of its own.
    pub fn without_create_spans(mut self) -> Self {
        self.create_spans = false;
        self
    }

    /// Builds the instrumentation.
    pub fn build(self) -> Instrumentation {
        let tracer = self
            .tracer
            .unwrap_or_else(|| global::tracer_with_scope(scope()));
        let meter = self
            .meter
            .unwrap_or_else(|| global::meter_with_scope(scope()));
        let mut common = vec![KeyValue::new(
            attr::MESSAGING_SYSTEM,
            shared(&self.system.name),
        )];
        if let Some(address) = &self.system.server_address {
            common.push(KeyValue::new(attr::SERVER_ADDRESS, shared(address)));
        }
        if let Some(port) = self.system.server_port {
            common.push(KeyValue::new(attr::SERVER_PORT, i64::from(port)));
        }
        let client_id = self
            .system
            .client_id
            .clone()
            .map(|id| KeyValue::new(attr::MESSAGING_CLIENT_ID, shared(&id)));
        let captured_headers = self
            .captured_headers
            .into_iter()
            .map(|name| {
                let key = Key::new(format!(
                    "{HEADER_ATTRIBUTE_PREFIX}{}",
                    name.to_ascii_lowercase()
                ));
                (name, key)
            })
            .collect();
        Instrumentation {
            inner: Arc::new(Inner {
                system: self.system,
                tracer,
                propagator: self.propagator,
                w3c: self.w3c,
                span_name: self.span_name,
                captured_headers,
                baggage_policy: self.baggage_policy,
                create_spans: self.create_spans,
                metrics: Metrics::new(&meter),
                meter,
                common,
                client_id,
            }),
            link_mode: self.link_mode,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum PublishOperation {
    Send,
    Create,
}

/// One instrumented operation in flight: its span (inside `cx`), start time and metric
/// attributes. Ends the span exactly once: on success, on failure, or when dropped.
pub(crate) struct Operation {
    instrumentation: Instrumentation,
    cx: Context,
    /// When the operation started: the span's start time and the metric's, from one clock
    /// read (and one more at the end), where the SDK and the metric would otherwise read the
    /// clock twice each.
    started: SystemTime,
    metric: Option<(Arc<MetricSet>, u64)>,
    finished: bool,
}

impl fmt::Debug for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operation")
            .field("span_context", self.cx.span().span_context())
            .field("finished", &self.finished)
            .finish()
    }
}

impl Operation {
    fn new(
        instrumentation: Instrumentation,
        cx: Context,
        metric: Option<(Arc<MetricSet>, u64)>,
        started: SystemTime,
    ) -> Self {
        Self {
            instrumentation,
            cx,
            started,
            metric,
            finished: false,
        }
    }

    pub(crate) fn context(&self) -> &Context {
        &self.cx
    }

    /// Adds an event to the operation's span.
    pub(crate) fn event(&self, name: &'static str) {
        self.cx.span().add_event(name, Vec::new());
    }

    pub(crate) fn succeed(mut self, attributes: Vec<KeyValue>) {
        if !attributes.is_empty() {
            self.cx.span().set_attributes(attributes);
        }
        self.finish(None);
    }

    pub(crate) fn fail(mut self, error_type: Cow<'static, str>) {
        self.finish(Some(error_type));
    }

    fn finish(&mut self, error_type: Option<Cow<'static, str>>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let span = self.cx.span();
        if let Some(error_type) = &error_type {
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, error_type.clone()));
            span.set_status(Status::error(error_type.clone()));
        }
        let ended = SystemTime::now();
        span.end_with_timestamp(ended);
        if let Some((set, count)) = self.metric.take() {
            // The wall clock may step back meanwhile: such an operation counts as instant.
            let seconds = ended
                .duration_since(self.started)
                .unwrap_or_default()
                .as_secs_f64();
            self.instrumentation
                .inner
                .metrics
                .record(&set, count, seconds, error_type);
        }
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        self.finish(Some(Cow::Borrowed(CANCELLED)));
    }
}

/// A CLIENT span of a consumer: `receive` from [`Instrumentation::receive_span`], or a settle
/// span (`ack`, `nack`, `delete`, ...) from [`Instrumentation::settle_span`].
///
/// End it with [`end`](ClientSpan::end) or [`fail`](ClientSpan::fail); dropping it ends it as
/// cancelled.
#[derive(Debug)]
pub struct ClientSpan {
    operation: Operation,
}

/// The CLIENT `receive` span of a pull consumer.
pub type ReceiveSpan = ClientSpan;

/// A CLIENT settle span.
pub type SettleSpan = ClientSpan;

impl ClientSpan {
    /// The context holding the span, to parent other spans on it.
    pub fn context(&self) -> &Context {
        self.operation.context()
    }

    /// Ends the span successfully.
    pub fn end(self) {
        self.operation.succeed(Vec::new());
    }

    /// Ends the span with status Error and `error.type`.
    pub fn fail(self, error_type: impl Into<Cow<'static, str>>) {
        self.operation.fail(error_type.into());
    }
}
