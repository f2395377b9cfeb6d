//! End-to-end throughput over librdkafka's in-process mock cluster: raw rdkafka against
//! tracelink (traced publisher + `KafkaConsumer`), sampled and unsampled, in the same run.
//!
//! ```text
//! cargo bench -p tracelink-kafka --bench throughput
//! TRACELINK_BENCH_MESSAGES=50000 TRACELINK_BENCH_ROUNDS=5 cargo bench -p tracelink-kafka --bench throughput
//! ```
//!
//! Each round publishes N (`TRACELINK_BENCH_MESSAGES`, default 20000) 64-byte messages (up to
//! 1024 in flight), then consumes them in a fresh group (timed from the first message, so the
//! ~3 s group join is not counted). The end-to-end rate of a round is N / (produce time + consume
//! time). Rounds (`TRACELINK_BENCH_ROUNDS`, default 5) of the variants are interleaved, the
//! order rotating; reported are the medians, and traced/raw as the median of the per-round
//! ratios. A fourth variant, raw rdkafka setting a `traceparent` header on each record and reading
//! it back from each message, shows what carrying the header costs the client before any tracing
//! (not in the table). A fifth, the adapter with tracing off (`KafkaPublisher::traced` and
//! `KafkaConsumer::run`, exactly as the traced variants, over a no-op tracer provider and an empty
//! composite propagator), is what the adapter's own machinery costs; it is compared with raw
//! rdkafka carrying the header. Sampled spans go through a batch processor into an exporter that discards them;
//! unsampled use `Sampler::AlwaysOff`. The propagator is tracelink's
//! `W3cTraceContextPropagator`, or the SDK's with `TRACELINK_BENCH_PROPAGATOR=sdk`.
//!
//! Besides the human-readable table it prints `TABLE kafka <sampling> <raw> <traced> <ratio>`
//! lines and one `OFF kafka <header> <off> <off/header>` line (end-to-end median rates, median of
//! the per-round ratios), which `scripts/throughput` collects.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message;
use tokio::sync::oneshot;
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::propagation::W3cTraceContextPropagator;
use tracelink_core::Instrumentation;
use tracelink_kafka::{
    consumer_config, messaging_system, KafkaConsumer, KafkaMessage, KafkaPublisher, KafkaRecord,
    KafkaSource,
};

const IN_FLIGHT: usize = 1024;

/// Discards every span: what sampling costs the process without the cost of a real export.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

/// Whether `TRACELINK_BENCH_PROPAGATOR=sdk` asks for the SDK's W3C propagator.
fn sdk_propagator() -> bool {
    std::env::var("TRACELINK_BENCH_PROPAGATOR").is_ok_and(|v| v == "sdk")
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Raw,
    Sampled,
    Unsampled,
    /// Raw rdkafka carrying one `traceparent` header: set on each record, read back from each
    /// message by the consumer. What propagating a context costs the client before any tracing.
    RawWithHeader,
    /// `KafkaPublisher::traced` and `KafkaConsumer::run` with tracing off (a no-op tracer
    /// provider and a propagator that writes nothing): what the adapter's own machinery costs.
    TracingOff,
}

/// The header `Variant::RawWithHeader` carries.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

struct Round {
    produce: Duration,
    consume: Duration,
}

fn producer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "bench")
        .set("linger.ms", "5");
    config
}

fn instrumentation(config: &ClientConfig, provider: &SdkTracerProvider) -> Instrumentation {
    let builder = Instrumentation::builder(messaging_system(config)).with_tracer_provider(provider);
    if sdk_propagator() {
        builder.with_propagator(TraceContextPropagator::new())
    } else {
        builder.with_propagator(W3cTraceContextPropagator::new())
    }
    .build()
}

/// Tracing off: a no-op tracer provider and a propagator that writes nothing.
fn off_instrumentation(config: &ClientConfig) -> Instrumentation {
    Instrumentation::builder(messaging_system(config))
        .with_tracer_provider(&opentelemetry::trace::noop::NoopTracerProvider::new())
        .with_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(
            vec![],
        ))
        .build()
}

async fn round(
    variant: Variant,
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    n: usize,
    index: usize,
) -> Round {
    let brokers = cluster.bootstrap_servers();
    let topic = format!("bench-{variant:?}-{index}");
    cluster.create_topic(&topic, 1, 1).unwrap();
    let provider = SdkTracerProvider::builder()
        .with_sampler(match variant {
            Variant::Unsampled | Variant::TracingOff => Sampler::AlwaysOff,
            _ => Sampler::AlwaysOn,
        })
        .with_batch_exporter(Discard)
        .build();
    let config = producer_config(&brokers);
    let payload = vec![b'x'; 64];

    // Publish.
    let producer: FutureProducer = config.create().unwrap();
    let started = Instant::now();
    match variant {
        Variant::Raw | Variant::RawWithHeader => {
            let mut pending = FuturesUnordered::new();
            for i in 0..n {
                if pending.len() >= IN_FLIGHT {
                    let done: Result<(), _> = pending.next().await.unwrap();
                    done.unwrap();
                }
                let producer = producer.clone();
                let (topic, payload) = (&topic, &payload);
                pending.push(async move {
                    let key = i.to_string();
                    let mut record = FutureRecord::to(topic).key(&key).payload(payload);
                    if variant == Variant::RawWithHeader {
                        record = record.headers(OwnedHeaders::new().insert(Header {
                            key: "traceparent",
                            value: Some(TRACEPARENT),
                        }));
                    }
                    producer.send(record, Timeout::Never).await.map(|_| ())
                });
            }
            while let Some(result) = pending.next().await {
                result.unwrap();
            }
        }
        Variant::Sampled | Variant::Unsampled | Variant::TracingOff => {
            let instr = match variant {
                Variant::TracingOff => off_instrumentation(&config),
                _ => instrumentation(&config, &provider),
            };
            let mut service = KafkaPublisher::new(producer.clone())
                .with_queue_timeout(Timeout::Never)
                .traced(instr);
            let mut pending = FuturesUnordered::new();
            for i in 0..n {
                if pending.len() >= IN_FLIGHT {
                    let done: Result<_, tracelink_kafka::ProduceError> =
                        pending.next().await.unwrap();
                    done.unwrap();
                }
                let record = KafkaRecord::new(&topic)
                    .with_key(i.to_string())
                    .with_payload(payload.clone());
                pending.push(service.ready().await.unwrap().call(record));
            }
            while let Some(result) = pending.next().await {
                result.unwrap();
            }
        }
    }
    let produce = started.elapsed();

    // Consume, timed from the first message.
    let group = format!("{topic}-group");
    let consumer_config = consumer_config(&brokers, &group);
    let first = Arc::new(Mutex::new(None::<Instant>));
    let consume = match variant {
        Variant::Raw | Variant::RawWithHeader => {
            let consumer: StreamConsumer = consumer_config.create().unwrap();
            consumer.subscribe(&[&topic]).unwrap();
            let mut count = 0;
            let mut first_at = None;
            while count < n {
                let message = consumer.recv().await.unwrap();
                first_at.get_or_insert_with(Instant::now);
                black_box(message.payload());
                if variant == Variant::RawWithHeader {
                    let headers = message.headers().unwrap();
                    let traceparent = headers.iter().find(|h| h.key == "traceparent");
                    assert_eq!(traceparent.unwrap().value, Some(TRACEPARENT.as_bytes()));
                }
                consumer.store_offset_from_message(&message).unwrap();
                count += 1;
            }
            first_at.unwrap().elapsed()
        }
        Variant::Sampled | Variant::Unsampled | Variant::TracingOff => {
            let source = KafkaSource::from_config(&consumer_config).unwrap();
            source.consumer().subscribe(&[&topic]).unwrap();
            let instr = match variant {
                Variant::TracingOff => off_instrumentation(&consumer_config),
                _ => instrumentation(&consumer_config, &provider),
            };
            let consume = KafkaConsumer::new(source, instr);
            let count = Arc::new(AtomicUsize::new(0));
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let stop_tx = Arc::new(Mutex::new(Some(stop_tx)));
            let last = Arc::new(Mutex::new(None::<Instant>));
            let handler = {
                let first = first.clone();
                let last = last.clone();
                service_fn(move |message: KafkaMessage| {
                    first.lock().unwrap().get_or_insert_with(Instant::now);
                    black_box(message.payload());
                    if count.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        // Timed to the last message handled, as the raw loop is: the commit
                        // when the consumer stops is a one-off, not per-message cost.
                        *last.lock().unwrap() = Some(Instant::now());
                        if let Some(tx) = stop_tx.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                    }
                    std::future::ready(Ok::<_, Infallible>(()))
                })
            };
            consume
                .run(handler, async move {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            let first_at = first.lock().unwrap().unwrap();
            let last_at = last.lock().unwrap().unwrap();
            last_at - first_at
        }
    };
    let _ = provider.shutdown();
    Round { produce, consume }
}

/// Nanoseconds per message of the consumer layer alone (no broker): the core's `process` span
/// around a no-op handler, for a message carrying a `traceparent`.
fn layer_only(sampler: Sampler, iterations: u32) -> f64 {
    use futures_util::FutureExt;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use rdkafka::message::OwnedMessage;
    use tower::Layer;
    use tracelink_kafka::HeaderInjector;

    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_batch_exporter(Discard)
        .build();
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", "127.0.0.1:9092");
    let instrumentation = instrumentation(&config, &provider);
    let mut headers = OwnedHeaders::new();
    let cx = opentelemetry::Context::new().with_remote_span_context(
        opentelemetry::trace::SpanContext::new(
            opentelemetry::trace::TraceId::from(1_u128),
            opentelemetry::trace::SpanId::from(1_u64),
            opentelemetry::trace::TraceFlags::SAMPLED,
            true,
            Default::default(),
        ),
    );
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut headers));
    let message = OwnedMessage::new(
        Some(vec![b'x'; 64]),
        Some(b"key-1".to_vec()),
        "orders".into(),
        rdkafka::Timestamp::NotAvailable,
        0,
        42,
        Some(headers),
    );
    let mut service = tracelink_core::ConsumerLayer::from(instrumentation).layer(service_fn(
        |m: KafkaMessage| std::future::ready(Ok::<_, Infallible>(black_box(m).offset())),
    ));
    let started = Instant::now();
    for _ in 0..iterations {
        let m = KafkaMessage::new(message.clone()).with_group("g");
        let _ = service.call(m).now_or_never();
    }
    let elapsed = started.elapsed();
    let _ = provider.shutdown();
    elapsed.as_nanos() as f64 / f64::from(iterations)
}

fn main() {
    let n: usize = std::env::var("TRACELINK_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rounds: usize = std::env::var("TRACELINK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // `cargo test --benches` runs benches with `--bench` absent: keep that quick.
    let (n, rounds) = if std::env::args().any(|a| a == "--bench") {
        (n, rounds)
    } else {
        (200, 1)
    };
    let iterations = if n >= 1000 { 200_000 } else { 1_000 };
    let clone_only = {
        let message = rdkafka::message::OwnedMessage::new(
            Some(vec![b'x'; 64]),
            Some(b"key-1".to_vec()),
            "orders".into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            42,
            None,
        );
        let started = Instant::now();
        for _ in 0..iterations {
            black_box(KafkaMessage::new(message.clone()).with_group("g"));
        }
        started.elapsed().as_nanos() as f64 / f64::from(iterations)
    };
    println!(
        "consumer layer alone, ns/message: sampled {:.0}, unsampled {:.0} (message clone {:.0})",
        layer_only(Sampler::AlwaysOn, iterations),
        layer_only(Sampler::AlwaysOff, iterations),
        clone_only,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cluster = MockCluster::new(1).unwrap();
        let variants = [
            Variant::Raw,
            Variant::Sampled,
            Variant::Unsampled,
            Variant::RawWithHeader,
            Variant::TracingOff,
        ];
        let mut results: Vec<Vec<Round>> = variants.iter().map(|_| Vec::new()).collect();
        // Warm-up (not counted): the mock cluster's first topics and connections are slower.
        for variant in variants {
            round(variant, &cluster, n.min(5_000), usize::MAX).await;
        }
        for index in 0..rounds {
            // Rotate the order so no variant always runs first.
            for k in 0..variants.len() {
                let slot = (k + index) % variants.len();
                let r = round(variants[slot], &cluster, n, index).await;
                println!(
                    "round {index} {:<9}: produce {:>8.0} msg/s, consume {:>9.0} msg/s, end to end {:>8.0} msg/s",
                    format!("{:?}", variants[slot]).to_lowercase(),
                    n as f64 / r.produce.as_secs_f64(),
                    n as f64 / r.consume.as_secs_f64(),
                    n as f64 / (r.produce + r.consume).as_secs_f64(),
                );
                results[slot].push(r);
            }
        }
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let produce = |slot: usize| median(results[slot].iter().map(|r| rate(r.produce)).collect());
        let consume = |slot: usize| median(results[slot].iter().map(|r| rate(r.consume)).collect());
        let end_to_end = |r: &Round| rate(r.produce + r.consume);
        let e2e = |slot: usize| median(results[slot].iter().map(end_to_end).collect());
        // traced/raw (or against another baseline) within each round, then the median over
        // rounds.
        let ratio_to = |slot: usize, base: usize| {
            median(
                results[slot]
                    .iter()
                    .zip(&results[base])
                    .map(|(t, r)| end_to_end(t) / end_to_end(r))
                    .collect(),
            )
        };
        let ratio = |slot: usize| ratio_to(slot, 0);
        println!(
            "kafka mock cluster, {n} messages x {rounds} rounds (medians), 64-byte payloads, {} propagator",
            if sdk_propagator() { "SDK W3C" } else { "tracelink W3C" }
        );
        println!(
            "{:<10} {:>14} {:>14} {:>12} {:>12} {:>12} {:>10}",
            "variant",
            "produce msg/s",
            "consume msg/s",
            "produce/raw",
            "consume/raw",
            "e2e msg/s",
            "e2e/raw"
        );
        for (slot, variant) in variants.iter().enumerate() {
            println!(
                "{:<10} {:>14.0} {:>14.0} {:>12.3} {:>12.3} {:>12.0} {:>10.3}",
                format!("{variant:?}").to_lowercase(),
                produce(slot),
                consume(slot),
                produce(slot) / produce(0),
                consume(slot) / consume(0),
                e2e(slot),
                ratio(slot),
            );
        }
        println!(
            "raw with a traceparent header / raw (end to end): {:.3}  (the cost of carrying the header)",
            ratio(3)
        );
        println!(
            "adapter with tracing off / raw with the header (end to end): {:.3}  (target >= 0.97)",
            ratio_to(4, 3)
        );
        for (slot, sampling) in [(1, "sampled"), (2, "unsampled")] {
            println!(
                "TABLE kafka {sampling} {:.0} {:.0} {:.3}",
                e2e(0),
                e2e(slot),
                ratio(slot)
            );
        }
        println!("OFF kafka {:.0} {:.0} {:.3}", e2e(3), e2e(4), ratio_to(4, 3));
    });
}
