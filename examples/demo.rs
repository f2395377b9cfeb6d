//! The zero-setup tour: `cargo run --example demo --features kafka`.
//!
//! Starts librdkafka's in-process mock Kafka cluster (nothing to install), publishes a handful of
//! orders through tracelink's traced publisher, consumes them through the Kafka consumer whose
//! handler does its work in child spans (one of them a `tracing` span), then prints every trace as
//! a tree: the producer traces with their `send` spans, the consumer traces with their `process`
//! span, the handler's spans beneath it, and the link from each consumer trace back to the
//! producer span it came from. Exits non-zero if any message was not linked to its producer.
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set (say, the Jaeger of `docker-compose.yml`), the same spans
//! and the metrics are exported over OTLP as well.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tokio::sync::{mpsc, Mutex};
use tower::{service_fn, Service, ServiceExt};
use tracelink::kafka::rdkafka::config::ClientConfig;
use tracelink::kafka::rdkafka::consumer::Consumer;
use tracelink::kafka::rdkafka::mocking::MockCluster;
use tracelink::kafka::rdkafka::producer::FutureProducer;
use tracelink::kafka::{
    consumer_config, messaging_system, KafkaConsumer, KafkaMessage, KafkaPublisher, KafkaRecord,
    KafkaSource,
};
use tracelink::Instrumentation;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const TOPIC: &str = "orders";
const ORDERS: [(&str, &str); 5] = [
    ("order-1001", r#"{"sku":"tea","qty":2}"#),
    ("order-1002", r#"{"sku":"mug","qty":1}"#),
    ("order-1003", r#"{"sku":"tea","qty":5}"#),
    ("order-1004", r#"{"sku":"pot","qty":1}"#),
    ("order-1005", r#"{"sku":"mug","qty":4}"#),
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Spans stay in memory so the demo can print them (and go over OTLP too when
    // OTEL_EXPORTER_OTLP_ENDPOINT is set); a `tracing` subscriber bridges `tracing` spans into
    // the same provider.
    let exporter = InMemorySpanExporter::default();
    let telemetry = common::init_with("tracelink-demo", |builder| {
        builder.with_simple_exporter(exporter.clone())
    })?;
    let provider = telemetry.tracer_provider().clone();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("demo")))
        .init();

    let cluster = MockCluster::new(1)?;
    cluster.create_topic(TOPIC, 2, 1)?;
    let brokers = cluster.bootstrap_servers();
    println!("mock Kafka cluster at {brokers}, topic {TOPIC:?} (2 partitions)\n");

    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", &brokers)
        .set("client.id", "checkout");
    let instrumentation = |config: &ClientConfig| {
        Instrumentation::builder(messaging_system(config))
            .with_tracer_provider(&provider)
            .with_propagator(TraceContextPropagator::new())
            .build()
    };

    // Publish: each order in a `checkout` span of its own, the `send orders` span beneath it.
    let app_tracer = provider.tracer("checkout-service");
    let producer: FutureProducer = producer_config.create()?;
    let mut publish = KafkaPublisher::new(producer).traced(instrumentation(&producer_config));
    let mut sent = HashMap::new();
    for (key, order) in ORDERS {
        let checkout = app_tracer.start(format!("checkout {key}"));
        let cx = Context::current_with_span(checkout);
        let record = KafkaRecord::new(TOPIC).with_key(key).with_payload(order);
        let delivered = {
            let _guard = cx.clone().attach();
            publish.ready().await?.call(record).await?
        };
        cx.span().end();
        common::print_sent(TOPIC, delivered.span_context());
        sent.insert(delivered.span_context().span_id(), key);
    }
    println!();

    // Consume: a `process orders` span per message in a new trace, linked to its `send` span.
    let mut config = consumer_config(&brokers, "fulfilment");
    config.set("client.id", "fulfilment");
    let consumer_instrumentation = instrumentation(&config);
    let source = KafkaSource::from_config(&config)?;
    source.consumer().subscribe(&[TOPIC])?;
    // Both partitions side by side, each in order.
    let consume = KafkaConsumer::new(source, consumer_instrumentation.clone()).with_concurrency(2);
    println!("consumer group joining (the mock cluster takes about 3 s)...");

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let work_tracer = Arc::new(provider.tracer("fulfilment-service"));
    let stock = Arc::new(Mutex::new(BTreeMap::<String, i64>::new()));
    let handler = service_fn(move |message: KafkaMessage| {
        let link = consumer_instrumentation.producer_context(&message);
        common::print_processed(TOPIC, &Context::current(), link.as_ref());
        let (done_tx, work_tracer, stock) = (done_tx.clone(), work_tracer.clone(), stock.clone());
        async move {
            let order = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            // A `tracing` span: a child of the process span through tracing-opentelemetry.
            async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                tracing::info!(%order, "order is valid");
            }
            .instrument(tracing::info_span!(
                "validate order",
                offset = message.offset()
            ))
            .await;
            // An OpenTelemetry span, also a child of the process span.
            work_tracer.in_span("reserve stock", |cx| {
                let sku = order.split('"').nth(3).unwrap_or("?").to_owned();
                cx.span().set_attribute(KeyValue::new("sku", sku.clone()));
                stock
                    .try_lock()
                    .map(|mut s| *s.entry(sku).or_default() += 1)
                    .ok();
            });
            let _ = done_tx.send(());
            Ok::<_, Infallible>(())
        }
    });
    let shutdown = async move {
        for _ in 0..ORDERS.len() {
            if done_rx.recv().await.is_none() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), consume.run(handler, shutdown))
        .await
        .map_err(|_| "the demo did not consume every order within 30 s")??;

    let spans = exporter.get_finished_spans()?;
    let unlinked = print_traces(&spans);
    // Flushes the OTLP exports, if any, before `exit` skips the destructors.
    drop(telemetry);
    if unlinked > 0 {
        eprintln!("\n{unlinked} message(s) were NOT linked to their producer span");
        std::process::exit(1);
    }
    println!("\nevery message was linked to the span that produced it");
    Ok(())
}

/// Prints one tree per trace (producer traces first); returns how many `process` spans lack a
/// link to an exported `send` span.
fn print_traces(spans: &[SpanData]) -> usize {
    let by_id: HashMap<SpanId, &SpanData> = spans
        .iter()
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    let mut traces: Vec<(TraceId, Vec<&SpanData>)> = Vec::new();
    for span in spans {
        let trace = span.span_context.trace_id();
        match traces.iter_mut().find(|(t, _)| *t == trace) {
            Some((_, members)) => members.push(span),
            None => traces.push((trace, vec![span])),
        }
    }
    // Producer traces (the ones holding a `send` span) first, then consumer traces.
    traces.sort_by_key(|(_, members)| !members.iter().any(|s| s.name.starts_with("send ")));
    let mut unlinked = 0;
    for (trace, members) in &traces {
        println!("\ntrace {trace}");
        for root in members
            .iter()
            .filter(|s| !by_id.contains_key(&s.parent_span_id))
        {
            print_span(root, members, 1, &by_id, &mut unlinked);
        }
    }
    unlinked
}

fn print_span(
    span: &SpanData,
    members: &[&SpanData],
    depth: usize,
    by_id: &HashMap<SpanId, &SpanData>,
    unlinked: &mut usize,
) {
    let indent = "  ".repeat(depth);
    println!(
        "{indent}└─ {} [{:?}] span_id={}",
        span.name,
        span.span_kind,
        span.span_context.span_id()
    );
    if span.name.starts_with("process ") {
        let producer = span
            .links
            .iter()
            .find_map(|link| by_id.get(&link.span_context.span_id()).copied())
            .filter(|p| p.name.starts_with("send "));
        match producer {
            Some(p) => println!(
                "{indent}   ↳ link to {} in trace {} (span {})",
                p.name,
                p.span_context.trace_id(),
                p.span_context.span_id()
            ),
            None => {
                println!("{indent}   ↳ NO LINK to a producer span");
                *unlinked += 1;
            }
        }
    }
    let mut children: Vec<&&SpanData> = members
        .iter()
        .filter(|c| c.parent_span_id == span.span_context.span_id())
        .collect();
    children.sort_by_key(|c| c.start_time);
    for child in children {
        print_span(child, members, depth + 1, by_id, unlinked);
    }
}
