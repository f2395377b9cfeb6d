//! Heap allocations per message on the consume path with tracing off (a no-op tracer provider,
//! a propagator that reads nothing), against raw lapin reading one header, over a real RabbitMQ
//! (`AMQP_URL`).
//!
//! ```text
//! cargo bench -p tracelink-amqp --bench allocations
//! TRACELINK_BENCH_MESSAGES=20000 cargo bench -p tracelink-amqp --bench allocations
//! ```
//!
//! Each round publishes `TRACELINK_BENCH_MESSAGES` (default 5000) 64-byte messages carrying a
//! `traceparent` header, waits until the queue holds them all, then consumes them with a
//! prefetch of 256 and counts every allocation of the process (all threads, lapin's IO thread
//! included) while they are consumed and acked:
//!
//! * `raw+header`: lapin's consumer stream, the `traceparent` header read, `basic.ack`;
//! * `adapter`: an `AmqpConsumer` (the core's consume driver over `AmqpSource`) running a
//!   handler that does nothing, acking through `AmqpSettler`.
//!
//! Prints `allocs_per_msg raw+header=<x> adapter=<y>` (the lowest of `TRACELINK_BENCH_ROUNDS`,
//! default 3, rounds each) and the difference; then, without a broker, what of the difference
//! is the per-message work outside the driver's loop: the settle receipt (a clone of lapin's
//! acker) and the core's `ConsumerService` call around a no-op handler, tracing off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::sync::Notify;
use tower::service_fn;
use tracelink_amqp::carrier::value_text;
use tracelink_amqp::{messaging_system, AmqpConsumer, AmqpDelivery};
use tracelink_core::Instrumentation;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const MESSAGES: usize = 5_000;
const ROUNDS: usize = 3;
const PREFETCH: u16 = 256;
const PAYLOAD: [u8; 64] = [b'x'; 64];
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

#[derive(Clone, Copy)]
enum Mode {
    RawWithHeader,
    Adapter,
}

/// Declares a fresh queue and fills it with `messages` messages carrying a `traceparent`.
async fn fill(channel: &Channel, queue: &str, messages: usize) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(TRACEPARENT.into()),
    );
    let properties = BasicProperties::default().with_headers(headers);
    for _ in 0..messages {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &PAYLOAD,
                properties.clone(),
            )
            .await
            .expect("publish")
            .await
            .expect("published");
    }
    loop {
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare");
        if declared.message_count() as usize >= messages {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Allocations while `messages` messages are consumed and acked in `mode`.
async fn consume(
    mode: Mode,
    channel: &Channel,
    queue: &str,
    messages: usize,
    off: &Instrumentation,
) -> usize {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    match mode {
        Mode::RawWithHeader => {
            let region = Region::new(GLOBAL);
            for _ in 0..messages {
                let delivery = consumer.next().await.expect("open").expect("delivery");
                let traceparent = delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|headers| headers.inner().get("traceparent"))
                    .and_then(value_text);
                assert_eq!(std::hint::black_box(traceparent), Some(TRACEPARENT));
                std::hint::black_box(&delivery.data);
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
            }
            region.change().allocations
        }
        Mode::Adapter => {
            let seen = Arc::new(AtomicUsize::new(0));
            let done = Arc::new(Notify::new());
            let handler = {
                let (seen, done) = (seen.clone(), done.clone());
                service_fn(move |delivery: AmqpDelivery| {
                    std::hint::black_box(delivery.data());
                    if seen.fetch_add(1, Ordering::Relaxed) + 1 == messages {
                        done.notify_one();
                    }
                    async { Ok::<_, Infallible>(()) }
                })
            };
            let region = Region::new(GLOBAL);
            AmqpConsumer::new(consumer, off.clone())
                .run(handler, done.notified())
                .await
                .expect("consumer");
            region.change().allocations
        }
    }
}

async fn round(mode: Mode, connection: &Connection, messages: usize, off: &Instrumentation) -> f64 {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .expect("qos");
    let queue = format!(
        "tracelink-bench-allocations-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    fill(&channel, &queue, messages).await;
    let allocations = consume(mode, &channel, &queue, messages, off).await;
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel.close(200, "done".into()).await;
    allocations as f64 / messages as f64
}

/// Allocations per message of the settle receipt and of the core's `ConsumerService` call (tracing
/// off, a no-op handler), over mock deliveries built beforehand.
fn without_broker(off: &Instrumentation, n: usize) -> (f64, f64) {
    use futures_util::FutureExt;
    use lapin::message::Delivery;
    use tower::{Layer, Service};

    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(TRACEPARENT.into()),
    );
    let deliveries = |n: usize| -> Vec<AmqpDelivery> {
        (0..n)
            .map(|i| {
                let mut d = Delivery::mock(
                    i as u64 + 1,
                    "".into(),
                    "orders".into(),
                    false,
                    PAYLOAD.to_vec(),
                );
                d.properties = BasicProperties::default().with_headers(headers.clone());
                AmqpDelivery::new(d, "orders")
            })
            .collect()
    };
    let batch = deliveries(n);
    let mut receipts = Vec::with_capacity(n);
    let region = Region::new(GLOBAL);
    for delivery in &batch {
        receipts.push(delivery.acker().clone());
    }
    let receipt = region.change().allocations as f64 / n as f64;
    drop(receipts);
    let mut service =
        tracelink_core::ConsumerLayer::from(off.clone()).layer(service_fn(|d: AmqpDelivery| {
            std::future::ready(Ok::<_, Infallible>(std::hint::black_box(d).data().len()))
        }));
    let batch = deliveries(n);
    let mut outcomes = Vec::with_capacity(n);
    let region = Region::new(GLOBAL);
    for delivery in batch {
        outcomes.push(service.call(delivery).now_or_never());
    }
    let called = region.change().allocations as f64 / n as f64;
    drop(outcomes);
    (receipt, called)
}

fn main() {
    // `cargo test --benches` passes no `--bench`: only check that the bench builds.
    if !std::env::args().any(|a| a == "--bench") {
        println!("allocations bench: run with `cargo bench -p tracelink-amqp --bench allocations`");
        return;
    }
    let messages = env("TRACELINK_BENCH_MESSAGES", MESSAGES);
    let rounds = env("TRACELINK_BENCH_ROUNDS", ROUNDS).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let connection = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ is required at {} (AMQP_URL): {e}", url()));
        let off = Instrumentation::builder(messaging_system(&url()))
            .with_tracer_provider(&opentelemetry::trace::noop::NoopTracerProvider::new())
            .with_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(vec![]))
            .build();
        // Warm-up: connection, allocator, lazily built statics.
        round(Mode::RawWithHeader, &connection, 200, &off).await;
        round(Mode::Adapter, &connection, 200, &off).await;
        let (mut raw, mut adapter) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..rounds {
            raw = raw.min(round(Mode::RawWithHeader, &connection, messages, &off).await);
            adapter = adapter.min(round(Mode::Adapter, &connection, messages, &off).await);
        }
        println!("allocs_per_msg raw+header={raw:.2} adapter={adapter:.2}");
        let (receipt, service) = without_broker(&off, 10_000);
        println!(
            "without a broker, allocs per message: settle receipt (Acker clone) {receipt:.2}; ConsumerService call, tracing off {service:.2}"
        );
        println!(
            "adapter - raw = {:.2} allocations per message ({messages} messages, best of {rounds} rounds)",
            adapter - raw
        );
        let _ = connection.close(200, "done".into()).await;
    });
}
