//! Heap allocations per message on the consume path with tracing off (no-op tracer provider,
//! no propagator), against raw rdkafka reading one header, over librdkafka's in-process mock
//! cluster.
//!
//! ```text
//! cargo bench -p tracelink-kafka --bench allocations
//! ```
//!
//! N messages (`TRACELINK_BENCH_MESSAGES`, default 5000), each with a `traceparent` header, are
//! consumed four ways in fresh groups: raw rdkafka (`recv`, read the header, store the offset);
//! raw rdkafka copying each message out of librdkafka's buffer as the adapter must
//! (`BorrowedMessage::detach`, see `KafkaMessage::detach`); the adapter's own share, its
//! `KafkaSource::receive` and `KafkaSettler` `Ack` called in a loop without the core's consumer;
//! and `KafkaConsumer` with a no-op handler. Counting starts at the 100th message (after the group join and the first fetches)
//! and uses a `#[global_allocator]` from `stats_alloc` over the whole process, on a
//! single-threaded runtime. librdkafka allocates through C `malloc`, which is not counted.
//! Prints `allocs_per_msg raw+header=<x> adapter=<y>` and
//! `allocs_per_msg raw+detach=<z> source+settler=<w>`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::alloc::System;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::{Arc, Mutex};

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::noop::NoopTracerProvider;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::sync::oneshot;
use tower::service_fn;
use tracelink_core::{Instrumentation, MessagingSystem, Received, Settlement, Settler, Source};
use tracelink_kafka::{consumer_config, KafkaConsumer, KafkaMessage, KafkaSource};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// Messages before counting starts.
const WARM_UP: usize = 100;

fn allocations() -> usize {
    GLOBAL.stats().allocations
}

#[derive(Clone, Copy, PartialEq)]
enum Raw {
    Header,
    Detach,
}

async fn raw(brokers: &str, topic: &str, n: usize, variant: Raw) -> f64 {
    let group = format!("{topic}-raw-{}", variant as u8);
    let consumer: StreamConsumer = consumer_config(brokers, &group).create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut start = 0;
    for i in 0..n {
        if i == WARM_UP {
            start = allocations();
        }
        let message = consumer.recv().await.unwrap();
        match variant {
            Raw::Header => {
                let headers = message.headers().unwrap();
                let traceparent = headers.iter().find(|h| h.key == "traceparent");
                assert_eq!(traceparent.unwrap().value, Some(TRACEPARENT.as_bytes()));
            }
            Raw::Detach => {
                let owned = message.detach();
                let headers = owned.headers().unwrap();
                let traceparent = headers.iter().find(|h| h.key == "traceparent");
                assert_eq!(traceparent.unwrap().value, Some(TRACEPARENT.as_bytes()));
                black_box(owned);
            }
        }
        consumer.store_offset_from_message(&message).unwrap();
    }
    (allocations() - start) as f64 / (n - WARM_UP) as f64
}

/// The adapter's own share: its source's receive and its settler's `Ack`, without the core's
/// consumer around them.
async fn source_and_settler(brokers: &str, topic: &str, n: usize) -> f64 {
    let group = format!("{topic}-source");
    let mut source = KafkaSource::from_config(&consumer_config(brokers, &group)).unwrap();
    source.consumer().subscribe(&[topic]).unwrap();
    let settler = source.settler();
    let mut start = 0;
    for i in 0..n {
        if i == WARM_UP {
            start = allocations();
        }
        let (returned, received) = source.receive(1).await;
        source = returned;
        let Ok(Received::One(message)) = received else {
            panic!("one message")
        };
        black_box(source.ordering_key(&message));
        let receipt = settler.receipt(&message);
        drop(message);
        settler.settle(receipt, Settlement::Ack).await.unwrap();
    }
    let per_message = (allocations() - start) as f64 / (n - WARM_UP) as f64;
    settler.close().await.unwrap();
    per_message
}

async fn adapter(brokers: &str, topic: &str, n: usize) -> f64 {
    let group = format!("{topic}-adapter");
    let source = KafkaSource::from_config(&consumer_config(brokers, &group)).unwrap();
    source.consumer().subscribe(&[topic]).unwrap();
    let instrumentation = Instrumentation::builder(MessagingSystem::new("kafka"))
        .with_tracer_provider(&NoopTracerProvider::new())
        .with_propagator(TextMapCompositePropagator::new(vec![]))
        .build();
    let counts = Arc::new(Mutex::new((0usize, 0usize, 0usize)));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut stop_tx = Some(stop_tx);
    let handler = {
        let counts = counts.clone();
        service_fn(move |message: KafkaMessage| {
            let mut counts = counts.lock().unwrap();
            if counts.0 == WARM_UP {
                counts.1 = allocations();
            }
            counts.0 += 1;
            if counts.0 == n {
                counts.2 = allocations();
                if let Some(tx) = stop_tx.take() {
                    let _ = tx.send(());
                }
            }
            black_box(message.payload());
            std::future::ready(Ok::<_, Infallible>(()))
        })
    };
    KafkaConsumer::new(source, instrumentation)
        .run(handler, async move {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    let (_, start, end) = *counts.lock().unwrap();
    // Between the handler calls of message 100 and message n: n - 100 messages.
    (end - start) as f64 / (n - WARM_UP) as f64
}

fn main() {
    let n: usize = std::env::var("TRACELINK_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    // `cargo test --benches` runs benches with `--bench` absent: keep that quick.
    let n = if std::env::args().any(|a| a == "--bench") {
        n
    } else {
        WARM_UP + 200
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cluster = MockCluster::new(1).unwrap();
        let topic = "allocations";
        cluster.create_topic(topic, 1, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let payload = vec![b'x'; 64];
        for i in 0..n {
            let key = i.to_string();
            let record = FutureRecord::to(topic).key(&key).payload(&payload).headers(
                OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some(TRACEPARENT),
                }),
            );
            producer.send(record, Timeout::Never).await.unwrap();
        }
        let raw_header = raw(&brokers, topic, n, Raw::Header).await;
        let raw_detach = raw(&brokers, topic, n, Raw::Detach).await;
        let source = source_and_settler(&brokers, topic, n).await;
        let adapter = adapter(&brokers, topic, n).await;
        println!("allocs_per_msg raw+header={raw_header:.2} adapter={adapter:.2}");
        println!("allocs_per_msg raw+detach={raw_detach:.2} source+settler={source:.2}");
    });
}
