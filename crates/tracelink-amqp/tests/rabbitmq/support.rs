//! Shared by the RabbitMQ integration tests: connection, unique names, in-memory spans.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use opentelemetry::trace::SpanKind;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracelink_amqp::messaging_system;
use tracelink_core::Instrumentation;

pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `(host, port)` of the broker, as the spans should report them.
pub fn server() -> (String, i64) {
    let uri = AMQPUri::from_str(&url()).expect("AMQP_URL parses");
    (uri.authority.host, i64::from(uri.authority.port))
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "tracelink-test-{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Connects, failing loudly when the broker is missing.
pub async fn connect(name: &str) -> Connection {
    let properties = ConnectionProperties::default().with_connection_name(LongString::from(name));
    Connection::connect(&url(), properties).await.unwrap_or_else(|e| {
        panic!(
            "RabbitMQ is required at {} (set AMQP_URL; `eval \"$(scripts/services)\"` starts it): {e}",
            url()
        )
    })
}

/// A channel on a fresh connection, and a fresh queue declared on it.
pub async fn channel_with_queue(
    prefix: &str,
    arguments: FieldTable,
) -> (Connection, Channel, String) {
    let connection = connect(&unique(prefix)).await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = unique(prefix);
    declare(&channel, &queue, arguments).await;
    (connection, channel, queue)
}

/// Declares `queue` with the broker's defaults plus `arguments`. Not auto-delete (a consumer
/// that loses its connection must not take the queue with it): `x-expires` removes it a minute
/// after its last use instead.
pub async fn declare(channel: &Channel, queue: &str, mut arguments: FieldTable) {
    arguments.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::default(), arguments)
        .await
        .expect("queue.declare");
}

/// Messages ready in `queue` (passive declare).
pub async fn ready_count(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive queue.declare")
        .message_count()
}

pub struct Telemetry {
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
    pub instrumentation: Instrumentation,
}

/// An instrumentation exporting to memory, with the W3C trace-context propagator (never the
/// global providers: tests run in parallel).
pub fn telemetry() -> Telemetry {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let instrumentation = Instrumentation::builder(messaging_system(&url()))
        .with_tracer_provider(&provider)
        .with_propagator(TraceContextPropagator::new())
        .build();
    Telemetry {
        exporter,
        provider,
        instrumentation,
    }
}

impl Telemetry {
    pub fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().expect("finished spans")
    }

    pub fn spans_named(&self, name: &str) -> Vec<SpanData> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }

    pub fn one(&self, name: &str, kind: SpanKind) -> SpanData {
        let spans = self.spans_named(name);
        assert_eq!(
            spans.len(),
            1,
            "one span named {name:?} in {:#?}",
            self.spans()
        );
        let span = spans.into_iter().next().expect("one span");
        assert_eq!(span.span_kind, kind, "kind of {name}");
        span
    }
}

/// Attributes as a sorted map, for exact comparisons.
pub fn attributes(span: &SpanData) -> BTreeMap<String, Value> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.to_string(), kv.value.clone()))
        .collect()
}

pub fn expected(pairs: Vec<KeyValue>) -> BTreeMap<String, Value> {
    pairs
        .into_iter()
        .map(|kv| (kv.key.to_string(), kv.value))
        .collect()
}

/// Awaits `f` for at most 20 s, so a broken test fails instead of hanging.
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub async fn consume(channel: &Channel, queue: &str) -> Consumer {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume")
}

/// Closes the connection named `name` from the broker's side (`rabbitmqctl close_connection`).
/// Returns false when `rabbitmqctl` is not available here.
pub fn broker_closes_connection(name: &str) -> bool {
    let Ok(output) = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "--no-table-headers",
            "-q",
            "pid",
            "client_properties",
        ])
        .output()
    else {
        return false;
    };
    if !output.status.success() {
        return false;
    }
    let listing = String::from_utf8_lossy(&output.stdout);
    let line = listing
        .lines()
        .find(|line| line.contains(name))
        .unwrap_or_else(|| panic!("connection {name} not listed by rabbitmqctl:\n{listing}"));
    let pid = line.split('\t').next().expect("a pid column");
    let closed = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", pid, "closed by a tracelink test"])
        .output()
        .expect("rabbitmqctl close_connection");
    assert!(
        closed.status.success(),
        "rabbitmqctl close_connection failed: {closed:?}"
    );
    true
}

/// Same span: trace and span ids (the remote flag differs between a span and its extracted copy).
pub fn same_span(
    a: &opentelemetry::trace::SpanContext,
    b: &opentelemetry::trace::SpanContext,
) -> bool {
    a.trace_id() == b.trace_id() && a.span_id() == b.span_id()
}

/// Messages delivered from `queue` and not yet acknowledged, as the broker counts them
/// (`rabbitmqctl list_queues`); `None` when `rabbitmqctl` is not available here.
pub fn unacked_count(queue: &str) -> Option<u32> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "--no-table-headers",
            "-q",
            "name",
            "messages_unacknowledged",
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let listing = String::from_utf8_lossy(&output.stdout);
    let line = listing
        .lines()
        .find(|line| line.split('\t').next() == Some(queue))
        .unwrap_or_else(|| panic!("queue {queue} not listed by rabbitmqctl:\n{listing}"));
    Some(
        line.split('\t')
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .expect("a count"),
    )
}
