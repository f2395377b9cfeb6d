//! Publish + consume throughput over a real RabbitMQ: raw lapin against tracelink (traced
//! publish through `AmqpPublisher::traced`, traced consume through `AmqpConsumer`), at
//! 100% sampling and with sampling off, in the same run. Prints messages per second and the
//! traced/raw ratios.
//!
//! ```text
//! cargo bench -p tracelink-amqp --bench throughput
//! TRACELINK_BENCH_MESSAGES=20000 TRACELINK_BENCH_ROUNDS=5 cargo bench -p tracelink-amqp --bench throughput
//! ```
//!
//! Every mode does the same work: one connection publishes `TRACELINK_BENCH_MESSAGES` (default
//! 10000) 64-byte messages through
//! the default exchange, one after the other, without publisher confirms; another connection
//! consumes them with a prefetch of `PREFETCH` and acks each after its (empty) handler. Spans go
//! to a batch processor with an exporter that drops them; metrics go to the no-op global meter.
//! Modes take turns over `TRACELINK_BENCH_ROUNDS` (default 9) rounds (the order rotating);
//! reported: the median rate of each
//! mode, and the median over rounds of traced/raw within the same round, which cancels most of
//! the drift of a shared machine; and the client process's CPU time per message (all threads,
//! from `/proc/self/task/*/schedstat`), which the broker's share of a small machine does not blur.
//! The propagator is tracelink's `W3cTraceContextPropagator`, or the SDK's with
//! `TRACELINK_BENCH_PROPAGATOR=sdk`. `TRACELINK_BENCH_MODES` (a comma-separated list of `raw`,
//! `header`, `sampled`, `unsampled`, `off`) runs only some modes, to profile one at a time;
//! `TRACELINK_BENCH_ADAPTER_SIDE=publish` (or `consume`) puts tracelink on that side only.
//! Besides the human-readable table it prints `TABLE amqp <sampling> <raw> <traced> <ratio>`
//! lines, and `OFF amqp <header> <off> <off/header>` (the adapter with tracing off against raw
//! lapin carrying one `traceparent` header: median rates, median of the per-round ratios), which
//! `scripts/throughput` collects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tokio::sync::Notify;
use tower::{service_fn, Service, ServiceExt};
use tracelink_amqp::{messaging_system, AmqpConsumer, AmqpDelivery, AmqpPublisher, Publish};
use tracelink_core::propagation::W3cTraceContextPropagator;
use tracelink_core::Instrumentation;

const MESSAGES: usize = 10_000;
const ROUNDS: usize = 9;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether `TRACELINK_BENCH_PROPAGATOR=sdk` asks for the SDK's W3C propagator.
fn sdk_propagator() -> bool {
    std::env::var("TRACELINK_BENCH_PROPAGATOR").is_ok_and(|v| v == "sdk")
}
/// One side of the exchange.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Publish,
    Consume,
}

/// `TRACELINK_BENCH_ADAPTER_SIDE=publish` (or `consume`): the adapter modes use tracelink on that
/// side only and raw lapin on the other, to tell the two sides' costs apart.
fn adapter_side() -> Option<Side> {
    match std::env::var("TRACELINK_BENCH_ADAPTER_SIDE").as_deref() {
        Ok("publish") => Some(Side::Publish),
        Ok("consume") => Some(Side::Consume),
        _ => None,
    }
}

const PREFETCH: u16 = 256;
const PAYLOAD: [u8; 64] = [b'x'; 64];

#[derive(Debug)]
struct DropExporter;

impl SpanExporter for DropExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Raw,
    RawWithHeaders,
    Sampled,
    Unsampled,
    /// `AmqpPublisher` and `AmqpConsumer` with tracing off (a no-op tracer provider and a
    /// propagator that writes nothing): what the adapter's own machinery costs.
    TracingOff,
}

impl Mode {
    /// The name `TRACELINK_BENCH_MODES` selects this mode by.
    fn key(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::RawWithHeaders => "header",
            Mode::Sampled => "sampled",
            Mode::Unsampled => "unsampled",
            Mode::TracingOff => "off",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw lapin",
            Mode::RawWithHeaders => "raw lapin + traceparent",
            Mode::Sampled => "traced, 100% sampled",
            Mode::Unsampled => "traced, unsampled",
            Mode::TracingOff => "adapter, tracing off",
        }
    }
}

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn fresh_queue(channel: &Channel, round: usize, mode: Mode) -> String {
    let queue = format!(
        "tracelink-bench-{}-{round}-{}",
        std::process::id(),
        mode as u8
    );
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .expect("queue.declare");
    queue
}

async fn consumer_channel(connection: &Connection) -> Channel {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .expect("qos");
    channel
}

async fn consume(channel: &Channel, queue: &str) -> lapin::Consumer {
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

/// Messages per second from the first publish to the last ack, and the client's CPU time per
/// message in microseconds (when known).
async fn run(
    mode: Mode,
    round: usize,
    producer: &Connection,
    consumer: &Connection,
    instr: Option<&Instrumentation>,
    messages: usize,
) -> (f64, Option<f64>) {
    let publish_channel = producer.create_channel().await.expect("channel");
    let consume_channel = consumer_channel(consumer).await;
    let queue = fresh_queue(&publish_channel, round, mode).await;
    let lapin_consumer = consume(&consume_channel, &queue).await;
    let started = Instant::now();
    let cpu_started = process_cpu_seconds();

    let publishing = {
        let queue = queue.clone();
        let instr = instr.cloned();
        tokio::spawn(async move {
            let instr = match adapter_side() {
                Some(Side::Consume) => None,
                _ => instr,
            };
            match instr {
                None => {
                    // The same header a traced publish adds, to tell the broker's share of the
                    // cost (a bigger frame to parse) from the client's.
                    let properties = match mode {
                        Mode::RawWithHeaders => {
                            let mut headers = FieldTable::default();
                            headers.insert(
                                "traceparent".into(),
                                AMQPValue::LongString(
                                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                                        .into(),
                                ),
                            );
                            BasicProperties::default().with_headers(headers)
                        }
                        _ => BasicProperties::default(),
                    };
                    for _ in 0..messages {
                        publish_channel
                            .basic_publish(
                                "".into(),
                                queue.as_str().into(),
                                BasicPublishOptions::default(),
                                &PAYLOAD,
                                properties.clone(),
                            )
                            .await
                            .expect("publish")
                            .await
                            .expect("published");
                    }
                }
                Some(instr) => {
                    let mut publisher = AmqpPublisher::new(publish_channel.clone()).traced(instr);
                    for _ in 0..messages {
                        let message = Publish::to_queue(queue.as_str().into(), &PAYLOAD[..]);
                        publisher
                            .ready()
                            .await
                            .expect("ready")
                            .call(message)
                            .await
                            .expect("publish");
                    }
                }
            }
            publish_channel
        })
    };

    let instr = match adapter_side() {
        Some(Side::Publish) => None,
        _ => instr,
    };
    match instr {
        None => {
            let mut lapin_consumer = lapin_consumer;
            for _ in 0..messages {
                let delivery = lapin_consumer
                    .next()
                    .await
                    .expect("open")
                    .expect("delivery");
                // Read the header back (when there is one), as a consumer extracting the context
                // would.
                std::hint::black_box(
                    delivery
                        .properties
                        .headers()
                        .as_ref()
                        .and_then(|headers| headers.inner().get("traceparent")),
                );
                std::hint::black_box(&delivery.data);
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
            }
        }
        Some(instr) => {
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
            AmqpConsumer::new(lapin_consumer, instr.clone())
                .run(handler, done.notified())
                .await
                .expect("consumer");
        }
    }
    let elapsed = started.elapsed();
    let publish_channel = publishing.await.expect("publisher task");
    let cpu = process_cpu_seconds()
        .zip(cpu_started)
        .map(|(end, start)| (end - start) * 1e6 / messages as f64);
    let _ = publish_channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = consume_channel.close(200, "done".into()).await;
    let _ = publish_channel.close(200, "done".into()).await;
    (messages as f64 / elapsed.as_secs_f64(), cpu)
}

/// CPU time of this whole process (every thread: client, lapin's IO, span export) in seconds,
/// summed from `/proc/self/task/*/schedstat` (nanoseconds on CPU); `None` off Linux.
fn process_cpu_seconds() -> Option<f64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread that exited meanwhile has no file any more: it simply stops counting.
        if let Ok(stat) = std::fs::read_to_string(path) {
            total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total as f64 / 1e9)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn instrumentation(sampler: Sampler) -> (SdkTracerProvider, Instrumentation) {
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_batch_exporter(DropExporter)
        .build();
    let builder =
        Instrumentation::builder(messaging_system(&url())).with_tracer_provider(&provider);
    let instr = if sdk_propagator() {
        builder.with_propagator(TraceContextPropagator::new())
    } else {
        builder.with_propagator(W3cTraceContextPropagator::new())
    }
    .build();
    (provider, instr)
}

/// Nanoseconds a delivery of the consumer side's own work, without a broker: `AmqpDelivery::new`
/// over a mock delivery carrying a `traceparent`, then `ConsumerLayer` (with `instr`) around a
/// no-op handler; and `AmqpDelivery::new` alone.
fn consumer_side_alone(instr: &Instrumentation, iterations: u32) -> (f64, f64) {
    use futures_util::FutureExt;
    use lapin::message::Delivery;
    use tower::Layer;

    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    );
    let delivery = || {
        let mut d = Delivery::mock(1, "".into(), "orders".into(), false, PAYLOAD.to_vec());
        d.properties = BasicProperties::default().with_headers(headers.clone());
        d
    };
    let mut service =
        tracelink_core::ConsumerLayer::from(instr.clone()).layer(service_fn(|d: AmqpDelivery| {
            std::future::ready(Ok::<_, Infallible>(std::hint::black_box(d).data().len()))
        }));
    let per = |started: Instant| started.elapsed().as_nanos() as f64 / f64::from(iterations);
    let started = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(AmqpDelivery::new(delivery(), "orders"));
    }
    let new_only = per(started);
    let started = Instant::now();
    for _ in 0..iterations {
        let _ = service
            .call(AmqpDelivery::new(delivery(), "orders"))
            .now_or_never();
    }
    (per(started), new_only)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects a
    // quick run: one round of a few messages would not say anything, so it only checks that
    // the bench builds.
    if !std::env::args().any(|a| a == "--bench") {
        println!("throughput bench: run with `cargo bench -p tracelink-amqp --bench throughput`");
        return;
    }
    let messages = env("TRACELINK_BENCH_MESSAGES", MESSAGES);
    let rounds = env("TRACELINK_BENCH_ROUNDS", ROUNDS);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let producer = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ is required at {} (AMQP_URL): {e}", url()));
        let consumer = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .expect("second connection");
        let (sampled_provider, sampled) = instrumentation(Sampler::AlwaysOn);
        let (unsampled_provider, unsampled) = instrumentation(Sampler::AlwaysOff);
        let off = Instrumentation::builder(messaging_system(&url()))
            .with_tracer_provider(&opentelemetry::trace::noop::NoopTracerProvider::new())
            .with_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(vec![]))
            .build();
        let iterations = 100_000;
        let (with_off, new_only) = consumer_side_alone(&off, iterations);
        println!(
            "consumer side without a broker, ns/delivery: AmqpDelivery::new {new_only:.0}; with ConsumerLayer: tracing off {with_off:.0}, unsampled {:.0}, sampled {:.0}",
            consumer_side_alone(&unsampled, iterations).0,
            consumer_side_alone(&sampled, iterations).0,
        );

        // Warm-up: connections, queues, allocator.
        run(Mode::Raw, 0, &producer, &consumer, None, messages).await;
        run(Mode::Sampled, 0, &producer, &consumer, Some(&sampled), messages).await;

        // `TRACELINK_BENCH_MODES=raw,off` (say) runs only those modes, for a profiler; the
        // table needs raw, sampled and unsampled.
        let selected = std::env::var("TRACELINK_BENCH_MODES").ok();
        let modes: Vec<Mode> = [
            Mode::Raw,
            Mode::RawWithHeaders,
            Mode::Sampled,
            Mode::Unsampled,
            Mode::TracingOff,
        ]
        .into_iter()
        .filter(|m| {
            selected
                .as_deref()
                .is_none_or(|s| s.split(',').any(|k| k.trim() == m.key()))
        })
        .collect();
        assert!(!modes.is_empty(), "TRACELINK_BENCH_MODES selects no mode");
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        for round in 1..=rounds {
            // Rotate the order so no mode always runs first.
            for k in 0..modes.len() {
                let i = (k + round) % modes.len();
                let instr = match modes[i] {
                    Mode::Raw | Mode::RawWithHeaders => None,
                    Mode::Sampled => Some(&sampled),
                    Mode::Unsampled => Some(&unsampled),
                    Mode::TracingOff => Some(&off),
                };
                let (rate, cpu_per_message) = run(modes[i], round, &producer, &consumer, instr, messages).await;
                rates[i].push(rate);
                cpu[i].extend(cpu_per_message);
            }
        }
        println!(
            "publish + consume, {messages} x {} B messages, prefetch {PREFETCH}, {rounds} rounds, {} propagator",
            PAYLOAD.len(),
            if sdk_propagator() { "SDK W3C" } else { "tracelink W3C" }
        );
        let raw = modes.iter().position(|m| *m == Mode::Raw);
        for (i, mode) in modes.iter().enumerate() {
            let ratios: Vec<f64> = match raw {
                Some(raw) => rates[i].iter().zip(&rates[raw]).map(|(t, r)| t / r).collect(),
                None => vec![f64::NAN],
            };
            let all: Vec<String> = rates[i].iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "{:<24} median {:>7.0} msg/s   traced/raw (median of per-round ratios) {:.3}   client CPU {}   rounds: {}",
                mode.name(),
                median(rates[i].clone()),
                median(ratios),
                match cpu[i].is_empty() {
                    true => "n/a".to_owned(),
                    false => format!("{:.1} us/msg", median(cpu[i].clone())),
                },
                all.join(" ")
            );
        }
        for (mode, sampling) in [(Mode::Sampled, "sampled"), (Mode::Unsampled, "unsampled")] {
            let (Some(raw), Some(i)) = (raw, modes.iter().position(|m| *m == mode)) else {
                continue;
            };
            let ratios: Vec<f64> = rates[i].iter().zip(&rates[raw]).map(|(t, r)| t / r).collect();
            println!(
                "TABLE amqp {sampling} {:.0} {:.0} {:.3}",
                median(rates[raw].clone()),
                median(rates[i].clone()),
                median(ratios)
            );
        }
        let header = modes.iter().position(|m| *m == Mode::RawWithHeaders);
        let off = modes.iter().position(|m| *m == Mode::TracingOff);
        if let (Some(header), Some(off)) = (header, off) {
            let ratios: Vec<f64> = rates[off].iter().zip(&rates[header]).map(|(o, h)| o / h).collect();
            println!(
                "OFF amqp {:.0} {:.0} {:.3}",
                median(rates[header].clone()),
                median(rates[off].clone()),
                median(ratios)
            );
        }
        let _ = sampled_provider.shutdown();
        let _ = unsampled_provider.shutdown();
    });
}
