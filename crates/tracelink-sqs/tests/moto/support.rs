//! Shared by the moto tests: a client for the emulator, unique queues, an in-memory exporter.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanContext, SpanKind};
use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracelink_core::Instrumentation;
use tracelink_sqs::messaging_system;

/// The emulator's endpoint: `AWS_ENDPOINT_URL`, by default moto on its usual port.
pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

pub async fn client() -> Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .load()
        .await;
    Client::new(&config)
}

/// A queue no other test uses. Fails loudly when the emulator is not there.
pub async fn queue(
    client: &Client,
    test: &str,
    attributes: &[(QueueAttributeName, &str)],
) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!(
        "{test}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut create = client.create_queue().queue_name(&name);
    for (k, v) in attributes {
        create = create.attributes(k.clone(), *v);
    }
    create
        .send()
        .await
        .unwrap_or_else(|e| panic!("cannot create an SQS queue at {} (is moto running? `eval \"$(scripts/services)\"`): {e:?}", endpoint()))
        .queue_url()
        .expect("queue url")
        .to_owned()
}

pub struct Telemetry {
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
    pub instrumentation: Instrumentation,
}

pub fn telemetry() -> Telemetry {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let instrumentation =
        Instrumentation::builder(messaging_system(Some(&endpoint()), Some("us-east-1")))
            .with_tracer_provider(&provider)
            .with_propagator(w3c())
            .build();
    Telemetry {
        exporter,
        provider,
        instrumentation,
    }
}

pub fn w3c() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

impl Telemetry {
    pub fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap()
    }

    pub fn named(&self, name: &str) -> Vec<SpanData> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }

    pub fn one(&self, name: &str) -> SpanData {
        let mut spans = self.named(name);
        assert_eq!(
            spans.len(),
            1,
            "exactly one `{name}` span in {:#?}",
            self.spans()
        );
        spans.remove(0)
    }
}

pub fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == Key::from(key.to_owned()))
        .map(|kv| &kv.value)
}

pub fn string_attr(span: &SpanData, key: &str) -> String {
    match attr(span, key) {
        Some(v) => v.as_str().into_owned(),
        None => panic!("span `{}` has no {key}: {:?}", span.name, span.attributes),
    }
}

pub fn assert_attrs(span: &SpanData, expected: &[KeyValue]) {
    for kv in expected {
        assert_eq!(
            attr(span, kv.key.as_str()),
            Some(&kv.value),
            "span `{}` attribute {}: {:?}",
            span.name,
            kv.key,
            span.attributes
        );
    }
}

pub fn link_ids(span: &SpanData) -> Vec<(String, String)> {
    span.links
        .iter()
        .map(|l| {
            (
                l.span_context.trace_id().to_string(),
                l.span_context.span_id().to_string(),
            )
        })
        .collect()
}

pub fn ids(sc: &SpanContext) -> (String, String) {
    (sc.trace_id().to_string(), sc.span_id().to_string())
}

pub fn assert_kind(span: &SpanData, kind: SpanKind) {
    assert_eq!(span.span_kind, kind, "kind of `{}`", span.name);
}

/// Messages visible plus in flight.
pub async fn messages_left(client: &Client, queue_url: &str) -> i64 {
    let out = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let attrs = out.attributes().unwrap();
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|k| {
        attrs
            .get(k)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    })
    .sum()
}
