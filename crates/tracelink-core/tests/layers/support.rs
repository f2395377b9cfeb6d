//! Shared by the layer tests: an in-memory SDK pipeline and a test message type whose headers are
//! raw bytes (so non-UTF-8 and repeated keys can be expressed).
#![allow(dead_code)]

use std::borrow::Cow;

use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracelink_core::carrier::{all_values, text, unique_value};
use tracelink_core::{
    Destination, IncomingMessage, Instrumentation, InstrumentationBuilder, MessagingSystem,
    OutgoingMessage, PublishResponse,
};

pub struct Telemetry {
    pub spans: InMemorySpanExporter,
    pub tracer_provider: SdkTracerProvider,
    pub metrics: InMemoryMetricExporter,
    pub meter_provider: SdkMeterProvider,
}

impl Telemetry {
    pub fn new() -> Self {
        let spans = InMemorySpanExporter::default();
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let metrics = InMemoryMetricExporter::default();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        Self {
            spans,
            tracer_provider,
            metrics,
            meter_provider,
        }
    }

    pub fn system() -> MessagingSystem {
        MessagingSystem::new("test_broker").with_server("broker.local", Some(5672))
    }

    /// A builder wired to this pipeline and to W3C trace context + baggage propagation.
    pub fn builder(&self) -> InstrumentationBuilder {
        Instrumentation::builder(Self::system())
            .with_tracer_provider(&self.tracer_provider)
            .with_meter_provider(&self.meter_provider)
            .with_propagator(w3c())
    }

    pub fn instrumentation(&self) -> Instrumentation {
        self.builder().build()
    }

    pub fn finished(&self) -> Vec<SpanData> {
        self.spans.get_finished_spans().expect("spans")
    }

    pub fn span(&self, name: &str) -> SpanData {
        let spans = self.finished();
        let mut found: Vec<SpanData> = spans.into_iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "expected exactly one span named {name:?}");
        found.remove(0)
    }

    pub fn collect_metrics(&self) -> Vec<ResourceMetrics> {
        self.meter_provider.force_flush().expect("flush");
        self.metrics.get_finished_metrics().expect("metrics")
    }
}

pub fn w3c() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// A test message whose header values are bytes.
#[derive(Debug, Clone, Default)]
pub struct Msg {
    pub queue: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub id: Option<String>,
    pub body: Vec<u8>,
}

impl Msg {
    pub fn new(queue: &str) -> Self {
        Self {
            queue: queue.into(),
            body: b"hello".to_vec(),
            ..Self::default()
        }
    }

    pub fn with_header(mut self, key: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    pub fn header(&self, key: &str) -> Option<&str> {
        unique_value(self.entries(), key)
    }

    fn entries(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.headers.iter().map(|(k, v)| (k.as_str(), text(v)))
    }
}

struct MsgInjector<'a>(&'a mut Vec<(String, Vec<u8>)>);

impl Injector for MsgInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        self.0.push((key.to_owned(), value.into_bytes()));
    }
}

struct MsgExtractor<'a>(&'a Msg);

impl Extractor for MsgExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        unique_value(self.0.entries(), key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.headers.iter().map(|(k, _)| k.as_str()).collect()
    }
    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        all_values(self.0.entries(), key)
    }
}

impl OutgoingMessage for Msg {
    fn destination(&self) -> Destination<'_> {
        Destination::new(&self.queue)
    }
    fn with_headers_mut(&mut self, f: &mut dyn FnMut(&mut dyn Injector)) {
        f(&mut MsgInjector(&mut self.headers))
    }
    fn message_id(&self) -> Option<&str> {
        self.id.as_deref()
    }
    fn body_size(&self) -> Option<usize> {
        Some(self.body.len())
    }
}

impl IncomingMessage for Msg {
    fn destination(&self) -> Destination<'_> {
        Destination::new(&self.queue)
    }
    fn with_headers(&self, f: &mut dyn FnMut(&dyn Extractor)) {
        f(&MsgExtractor(self))
    }
    fn message_id(&self) -> Option<Cow<'_, str>> {
        self.id.as_deref().map(Cow::Borrowed)
    }
    fn body_size(&self) -> Option<usize> {
        Some(self.body.len())
    }
    fn consumer_group(&self) -> Option<&str> {
        Some("workers")
    }
}

/// What the fake broker answers to a publish.
#[derive(Debug, Clone)]
pub struct Ack {
    pub offset: i64,
}

impl PublishResponse for Ack {
    fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        attributes.push(KeyValue::new("messaging.test.offset", self.offset));
    }
}

/// Attributes as sorted `(key, value)` strings, for exact comparisons.
pub fn attrs(attributes: &[KeyValue]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = attributes
        .iter()
        .map(|kv| (kv.key.to_string(), value(&kv.value)))
        .collect();
    out.sort();
    out
}

pub fn value(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        other => other.to_string(),
    }
}

pub fn expected(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    out.sort();
    out
}

/// The `(trace id, span id)` of the span current in `cx`.
pub fn ids(cx: &Context) -> (TraceId, SpanId) {
    let span = cx.span();
    let sc = span.span_context();
    (sc.trace_id(), sc.span_id())
}

/// Sum of a counter, over data points whose attributes include every `(key, value)` in `filter`.
pub fn counter_sum(metrics: &[ResourceMetrics], name: &str, filter: &[(&str, &str)]) -> u64 {
    let mut total = 0;
    for rm in metrics {
        for sm in rm.scope_metrics() {
            for m in sm.metrics().filter(|m| m.name() == name) {
                if let AggregatedMetrics::U64(MetricData::Sum(sum)) = m.data() {
                    for dp in sum.data_points() {
                        if matches(dp.attributes(), filter) {
                            total += dp.value();
                        }
                    }
                }
            }
        }
    }
    total
}

/// Count of a histogram's recordings, over matching data points, and their attribute lists.
pub fn histogram(
    metrics: &[ResourceMetrics],
    name: &str,
    filter: &[(&str, &str)],
) -> (u64, Vec<Vec<(String, String)>>) {
    let mut count = 0;
    let mut attribute_sets = Vec::new();
    for rm in metrics {
        for sm in rm.scope_metrics() {
            for m in sm.metrics().filter(|m| m.name() == name) {
                assert_eq!(m.unit(), "s");
                if let AggregatedMetrics::F64(MetricData::Histogram(h)) = m.data() {
                    for dp in h.data_points() {
                        if matches(dp.attributes(), filter) {
                            count += dp.count();
                            let kvs: Vec<KeyValue> = dp.attributes().cloned().collect();
                            attribute_sets.push(attrs(&kvs));
                        }
                    }
                }
            }
        }
    }
    (count, attribute_sets)
}

fn matches<'a>(attributes: impl Iterator<Item = &'a KeyValue>, filter: &[(&str, &str)]) -> bool {
    let attributes: Vec<&KeyValue> = attributes.collect();
    filter.iter().all(|(k, v)| {
        attributes
            .iter()
            .any(|kv| kv.key.as_str() == *k && value(&kv.value) == *v)
    })
}

/// The same span (trace and span id), whatever the `is_remote` flags say.
pub fn assert_same(a: &opentelemetry::trace::SpanContext, b: &opentelemetry::trace::SpanContext) {
    assert_eq!((a.trace_id(), a.span_id()), (b.trace_id(), b.span_id()));
}
