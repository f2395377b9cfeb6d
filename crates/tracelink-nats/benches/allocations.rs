//! Heap allocations per message on the consume path with tracing off: raw async-nats reading one
//! header against tracelink's consumers, core NATS and JetStream.
//!
//! ```text
//! cargo bench -p tracelink-nats --bench allocations
//! ```
//!
//! Tracing off: the no-op tracer provider and an empty composite propagator (the meter is the
//! global one, a no-op unless set). Each message carries a `traceparent` header.
//!
//! * Core NATS: `TRACELINK_BENCH_MESSAGES` (default 2000) messages are published and left in
//!   the subscription's buffer (the client has parsed them) before counting starts, so what is
//!   counted is what the consume side does with a message once the client delivered it: raw, a
//!   `Subscriber::next` and a header lookup; tracelink, a `NatsConsumer::run` over the same
//!   subscriber and a handler doing the same lookup.
//! * JetStream: the same number of messages is stored in a stream; counted is the whole consume
//!   side, client included: raw, fetches of up to 100 messages, a header lookup and an `ack`
//!   per message (`Message::ack`); tracelink, a `JetStreamConsumer::run` (prefetch 100) with the
//!   same handler.
//!
//! Counting uses a `#[global_allocator]` from `stats_alloc` over the whole process (the runtime
//! is single-threaded). Prints `allocs_per_msg raw+header=<x> adapter=<y>` per path.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::alloc::System;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::noop::NoopTracerProvider;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::service_fn;
use tracelink_core::Instrumentation;
use tracelink_nats::{
    JetStreamConsumer, JetStreamDelivery, JetStreamSource, NatsConsumer, NatsDelivery,
};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn messages() -> usize {
    std::env::var("TRACELINK_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn instrumentation(url: &str) -> Instrumentation {
    Instrumentation::builder(tracelink_nats::messaging_system(url))
        .with_tracer_provider(&NoopTracerProvider::new())
        .with_propagator(TextMapCompositePropagator::new(vec![]))
        .build()
}

fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", TRACEPARENT);
    headers
}

fn read_header(headers: Option<&HeaderMap>) -> usize {
    headers
        .and_then(|h| h.get("traceparent"))
        .map_or(0, |v| std::hint::black_box(v.as_str()).len())
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Publishes `count` messages to `subject` from `client` and waits until `subscriber`'s client
/// has them all in the subscription's buffer.
async fn fill(client: &async_nats::Client, subject: &str, count: usize) {
    for _ in 0..count {
        client
            .publish_with_headers(subject.to_owned(), headers(), "payload".into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
}

async fn wait_buffered(client: &async_nats::Client, before: u64, count: usize) {
    let stats = client.statistics();
    while stats.in_messages.load(Ordering::SeqCst) < before + count as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Parsed and in the subscription's channel.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

async fn core_raw(url: &str, count: usize) -> f64 {
    let publisher = async_nats::connect(url).await.unwrap();
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(count + 16)
        .connect(url)
        .await
        .unwrap();
    let subject = unique("alloc.raw");
    let mut subscriber = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let before = client.statistics().in_messages.load(Ordering::SeqCst);
    fill(&publisher, &subject, count).await;
    wait_buffered(&client, before, count).await;

    let region = Region::new(GLOBAL);
    let mut read = 0;
    for _ in 0..count {
        let message = subscriber.next().await.unwrap();
        read += read_header(message.headers.as_ref());
        std::hint::black_box(&message);
    }
    let stats = region.change();
    assert_eq!(read, count * TRACEPARENT.len());
    stats.allocations as f64 / count as f64
}

async fn core_adapter(url: &str, count: usize) -> f64 {
    let publisher = async_nats::connect(url).await.unwrap();
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(count + 16)
        .connect(url)
        .await
        .unwrap();
    let subject = unique("alloc.adapter");
    let subscriber = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let before = client.statistics().in_messages.load(Ordering::SeqCst);
    fill(&publisher, &subject, count).await;
    wait_buffered(&client, before, count).await;

    let instrumentation = instrumentation(url);
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = service_fn({
        let handled = handled.clone();
        move |delivery: NatsDelivery| {
            read_header(delivery.message.headers.as_ref());
            handled.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, std::convert::Infallible>(()))
        }
    });
    let region = Region::new(GLOBAL);
    let consumer = NatsConsumer::new(subscriber, instrumentation);
    consumer.run(handler, until(&handled, count)).await.unwrap();
    let stats = region.change();
    assert_eq!(handled.load(Ordering::SeqCst), count);
    stats.allocations as f64 / count as f64
}

/// Completes once `count` messages were handled (yielding in between, no timer).
async fn until(handled: &AtomicUsize, count: usize) {
    std::future::poll_fn(|cx| {
        if handled.load(Ordering::SeqCst) >= count {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

async fn stream_with(
    client: &async_nats::Client,
    count: usize,
) -> (
    jetstream::Context,
    String,
    jetstream::consumer::PullConsumer,
) {
    let js = jetstream::new(client.clone());
    let name = unique("ALLOC");
    let subject = format!("{}.events", name.to_lowercase());
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::Memory,
            max_age: Duration::from_secs(300),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut acks = Vec::with_capacity(count);
    for _ in 0..count {
        acks.push(
            js.publish_with_headers(subject.clone(), headers(), "payload".into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("alloc".into()),
            ack_wait: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap();
    (js, name, consumer)
}

async fn jetstream_raw(url: &str, count: usize) -> f64 {
    let client = async_nats::connect(url).await.unwrap();
    let (js, name, consumer) = stream_with(&client, count).await;
    let region = Region::new(GLOBAL);
    let mut done = 0;
    while done < count {
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            read_header(message.headers.as_ref());
            message.ack().await.unwrap();
            done += 1;
        }
    }
    let stats = region.change();
    js.delete_stream(&name).await.unwrap();
    stats.allocations as f64 / count as f64
}

async fn jetstream_adapter(url: &str, count: usize) -> f64 {
    let client = async_nats::connect(url).await.unwrap();
    let (js, name, consumer) = stream_with(&client, count).await;
    let instrumentation = instrumentation(url);
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = service_fn({
        let handled = handled.clone();
        move |delivery: JetStreamDelivery| {
            read_header(delivery.message.headers.as_ref());
            handled.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, std::convert::Infallible>(()))
        }
    });
    let region = Region::new(GLOBAL);
    let source = JetStreamSource::new(consumer).with_expires(Duration::from_secs(2));
    JetStreamConsumer::new(source, instrumentation)
        .with_prefetch(100)
        .run(handler, until(&handled, count))
        .await
        .unwrap();
    let stats = region.change();
    assert_eq!(handled.load(Ordering::SeqCst), count);
    js.delete_stream(&name).await.unwrap();
    stats.allocations as f64 / count as f64
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = url();
    let count = messages();
    runtime.block_on(async {
        let raw = within("core raw", core_raw(&url, count)).await;
        let adapter = within("core adapter", core_adapter(&url, count)).await;
        println!("core NATS ({count} messages, tracing off)");
        println!("allocs_per_msg raw+header={raw:.2} adapter={adapter:.2}");
        let raw = within("jetstream raw", jetstream_raw(&url, count)).await;
        let adapter = within("jetstream adapter", jetstream_adapter(&url, count)).await;
        println!("JetStream ({count} messages, tracing off, client included)");
        println!("allocs_per_msg raw+header={raw:.2} adapter={adapter:.2}");
    });
}

/// `f`'s result, or a panic naming `what` after two minutes (a bench never hangs silently).
async fn within(what: &str, f: impl std::future::Future<Output = f64>) -> f64 {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result in 120 s (is NATS at {}?)", url()))
}
