//! Core NATS publish/subscribe throughput: raw async-nats against tracelink's traced publisher
//! and subscriber loop, in the same run, at 100% sampling and unsampled.
//!
//! ```text
//! cargo bench -p tracelink-nats --bench throughput
//! TRACELINK_BENCH_MESSAGES=100000 TRACELINK_BENCH_ROUNDS=7 cargo bench -p tracelink-nats --bench throughput
//! ```
//!
//! One process publishes `TRACELINK_BENCH_MESSAGES` (default 200000) 64-byte messages to a fresh subject
//! on the NATS server at `NATS_URL` (default `nats://127.0.0.1:4222`) while a subscriber in the
//! same process receives them; the time runs from the first publish until the last message was
//! handled. Each variant runs `TRACELINK_BENCH_ROUNDS` (default 5) times, interleaved (the order
//! rotating); reported are the median rates, and traced/raw as the median of the per-round
//! ratios. Sampled spans go through a batch span processor to an exporter that discards them;
//! unsampled use `Sampler::AlwaysOff`. The propagator is tracelink's `W3cTraceContextPropagator`,
//! or the SDK's with `TRACELINK_BENCH_PROPAGATOR=sdk`. Besides the human-readable table it prints
//! `TABLE nats <sampling> <raw> <traced> <ratio>` lines, which `scripts/throughput` collects.
//!
//! A fourth variant, raw async-nats sending a `traceparent` header with every message (and the
//! subscriber reading it back), shows what carrying the context costs the client and the server
//! before any instrumentation runs. A fifth, the adapter with tracing off (`NatsPublisher::traced`
//! and `NatsConsumer::run` over a no-op tracer provider and an empty composite propagator), is
//! what the adapter's own machinery costs; it is compared with the raw client carrying the header
//! in one line, `OFF nats <header> <off> <off/header>` (median rates, median of the per-round
//! ratios), which `scripts/throughput` also collects.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::propagation::W3cTraceContextPropagator;
use tracelink_core::Instrumentation;
use tracelink_nats::{Bytes, NatsConsumer, NatsDelivery, NatsPublisher, Publish};

#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Raw,
    /// Raw async-nats, with a `traceparent` header on every message: what propagation costs the
    /// client and the server, whatever the instrumentation.
    RawWithHeader,
    TracedUnsampled,
    TracedSampled,
    /// `NatsPublisher::traced` and `NatsConsumer::run` with tracing off (a no-op tracer provider
    /// and a propagator that writes nothing): what the adapter's own machinery costs.
    TracingOff,
}

/// The header `Variant::RawWithHeader` carries.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Whether `TRACELINK_BENCH_PROPAGATOR=sdk` asks for the SDK's W3C propagator.
fn sdk_propagator() -> bool {
    std::env::var("TRACELINK_BENCH_PROPAGATOR").is_ok_and(|v| v == "sdk")
}

static SUBJECTS: AtomicU64 = AtomicU64::new(0);

fn subject() -> String {
    format!(
        "bench.throughput.{}.{}",
        std::process::id(),
        SUBJECTS.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits until `count` messages were received, or nothing arrived for a second (slow-consumer
/// drops); returns how many arrived and when the last one did.
async fn wait(received: &AtomicU64, count: u64) -> (u64, Instant) {
    let mut last = (0, Instant::now());
    loop {
        let now = received.load(Ordering::Acquire);
        if now >= count {
            return (now, Instant::now());
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            return last;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

async fn run(client: &async_nats::Client, variant: Variant, count: u64) -> (f64, u64) {
    let subject = subject();
    let payload = Bytes::from(vec![b'x'; 64]);
    let received = Arc::new(AtomicU64::new(0));
    let provider = match variant {
        Variant::TracedSampled => SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOn)
            .with_batch_exporter(Discard)
            .build(),
        _ => SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOff)
            .build(),
    };
    let builder =
        Instrumentation::builder(tracelink_nats::messaging_system("nats://127.0.0.1:4222"));
    let instrumentation = if variant == Variant::TracingOff {
        builder
            .with_tracer_provider(&opentelemetry::trace::noop::NoopTracerProvider::new())
            .with_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(
                vec![],
            ))
    } else if sdk_propagator() {
        builder
            .with_tracer_provider(&provider)
            .with_propagator(TraceContextPropagator::new())
    } else {
        builder
            .with_tracer_provider(&provider)
            .with_propagator(W3cTraceContextPropagator::new())
    }
    .build();

    let raw = matches!(variant, Variant::Raw | Variant::RawWithHeader);
    let consumer = if raw {
        let mut subscriber = client.subscribe(subject.clone()).await.unwrap();
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                // Read the header back, as a consumer extracting the context would.
                std::hint::black_box(
                    message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("traceparent"))
                        .map(|v| v.as_str().len()),
                );
                std::hint::black_box(&message);
                received.fetch_add(1, Ordering::Release);
            }
        })
    } else {
        let subscriber = client.subscribe(subject.clone()).await.unwrap();
        let received = received.clone();
        let handler = service_fn(move |delivery: NatsDelivery| {
            std::hint::black_box(&delivery);
            received.fetch_add(1, Ordering::Release);
            std::future::ready(Ok::<_, Infallible>(()))
        });
        let consumer = NatsConsumer::new(subscriber, instrumentation.clone());
        tokio::spawn(async move {
            let _ = consumer.run(handler, std::future::pending::<()>()).await;
        })
    };
    client.flush().await.unwrap();

    let subject = async_nats::Subject::from(subject);
    let started = Instant::now();
    if variant == Variant::Raw {
        for _ in 0..count {
            client
                .publish(subject.clone(), payload.clone())
                .await
                .unwrap();
        }
    } else if variant == Variant::RawWithHeader {
        for _ in 0..count {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("traceparent", TRACEPARENT);
            client
                .publish_with_headers(subject.clone(), headers, payload.clone())
                .await
                .unwrap();
        }
    } else {
        let mut publisher = NatsPublisher::new(client.clone()).traced(instrumentation);
        for _ in 0..count {
            publisher
                .ready()
                .await
                .unwrap()
                .call(Publish::new(subject.clone(), payload.clone()))
                .await
                .unwrap();
        }
    }
    let published = started.elapsed();
    client.flush().await.unwrap();
    let (got, done) = wait(&received, count).await;
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        println!(
            "  {variant:?}: publish loop {published:?}, end to end {:?}",
            done - started
        );
    }
    consumer.abort();
    let _ = provider.shutdown();
    (
        got as f64 / (done - started).as_secs_f64(),
        count.saturating_sub(got),
    )
}

/// `TRACELINK_BENCH_<name>`, else the older `BENCH_<name>`, else `default`.
fn env(name: &str, default: u64) -> u64 {
    std::env::var(format!("TRACELINK_BENCH_{name}"))
        .or_else(|_| std::env::var(format!("BENCH_{name}")))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with a tiny count.
    let quick = std::env::args().all(|a| a != "--bench");
    let count = if quick {
        1000
    } else {
        env("MESSAGES", 200_000)
    };
    let rounds = if quick { 1 } else { env("ROUNDS", 5) };
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("no NATS server at {url}: {e}"));
        let variants = [
            Variant::Raw,
            Variant::RawWithHeader,
            Variant::TracedUnsampled,
            Variant::TracedSampled,
            Variant::TracingOff,
        ];
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        let mut dropped = [0u64; 5];
        for round in 0..rounds {
            // Rotate the order so no variant always runs first.
            for k in 0..variants.len() {
                let i = (k + round as usize) % variants.len();
                let variant = variants[i];
                let (rate, lost) = run(&client, variant, count).await;
                println!("round {round} {variant:?}: {rate:.0} msg/s ({lost} dropped)");
                rates[i].push(rate);
                dropped[i] += lost;
            }
        }
        // traced/raw (or against another baseline) within each round, then the median over
        // rounds.
        let ratio_to = |i: usize, base: usize| {
            median(
                rates[i]
                    .iter()
                    .zip(&rates[base])
                    .map(|(t, r)| t / r)
                    .collect(),
            )
        };
        let ratio = |i: usize| ratio_to(i, 0);
        let med = |i: usize| median(rates[i].clone());
        println!();
        println!(
            "{count} messages of 64 bytes, medians of {rounds} rounds, end to end, {} propagator:",
            if sdk_propagator() {
                "SDK W3C"
            } else {
                "tracelink W3C"
            }
        );
        for (i, variant) in variants.iter().enumerate() {
            println!(
                "  {variant:?}: {:.0} msg/s ({} dropped in all rounds)",
                med(i),
                dropped[i]
            );
        }
        println!("  traced/raw unsampled: {:.2}  (target >= 0.85)", ratio(2));
        println!("  traced/raw sampled:   {:.2}  (target >= 0.60)", ratio(3));
        println!(
            "  raw with a traceparent header / raw: {:.2}  (the cost of carrying the header)",
            ratio(1)
        );
        println!(
            "  adapter with tracing off / raw with the header: {:.2}  (target >= 0.97)",
            ratio_to(4, 1)
        );
        for (i, sampling) in [(3, "sampled"), (2, "unsampled")] {
            println!(
                "TABLE nats {sampling} {:.0} {:.0} {:.3}",
                med(0),
                med(i),
                ratio(i)
            );
        }
        println!("OFF nats {:.0} {:.0} {:.3}", med(1), med(4), ratio_to(4, 1));
    });
}
