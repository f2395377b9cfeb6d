//! Memory and message flow with an unreachable OTLP collector.
//!
//! `cargo bench --bench memory`
//!
//! Sends `TRACELINK_MEMORY_MESSAGES` (default 1 000 000) messages through `ProducerLayer` into a
//! bounded in-process channel (capacity 1024) and, in another task, through `ConsumerLayer`
//! around a no-op handler: every message gets a sampled PRODUCER span and a CONSUMER span
//! (`Sampler::AlwaysOn`, tracelink's `W3cTraceContextPropagator`, metrics to the default no-op
//! meter). Four set-ups take turns over `TRACELINK_MEMORY_ROUNDS` (default 3) rounds:
//!
//! * `none`: no span processor at all (spans are built and dropped): the yardstick;
//! * `discard`: the SDK's batch processor into an exporter that discards: what the batch
//!   processor itself costs, so the dead exporters can be compared with it as well;
//! * `otlp-grpc`: the real `opentelemetry-otlp` exporter (tonic) behind the SDK's batch
//!   processor, to `http://127.0.0.1:<port>` where nothing listens;
//! * `otlp-http`: the same over HTTP/protobuf (reqwest, blocking client).
//!
//! For each run it reports the message rate (first publish to last message handled) and the
//! resident memory from `/proc/self/status`: `VmRSS` before and after, and the peak (`VmHWM`,
//! reset before each run through `/proc/self/clear_refs`) minus `VmRSS` before. At the end:
//! the median rate of each set-up against `none` (the dead exporter must not slow messages:
//! spans are dropped, messages are not), the largest peak growth of a run, and the highest peak
//! of any run against the process's resident size at start (before the runtime existed). Lines starting with `MEMORY` are meant for
//! scripts.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tokio::sync::mpsc;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tracelink::core::propagation::W3cTraceContextPropagator;
use tracelink::{ConsumerLayer, Instrumentation, MessagingSystem};

// The message number is the test's business; the bench does not read it.
#[allow(dead_code)]
#[path = "../tests/support/in_process.rs"]
mod in_process;
use in_process::{closed_port, memory_kb, queueing_producer, reset_peak, Message};

/// Discards every span: the batch processor's own cost, without any export.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    None,
    Discard,
    OtlpGrpc,
    OtlpHttp,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::None => "none",
            Setup::Discard => "discard",
            Setup::OtlpGrpc => "otlp-grpc",
            Setup::OtlpHttp => "otlp-http",
        }
    }
}

fn provider(setup: Setup, port: u16, runtime: &tokio::runtime::Runtime) -> SdkTracerProvider {
    let builder = SdkTracerProvider::builder().with_sampler(Sampler::AlwaysOn);
    match setup {
        Setup::None => builder.build(),
        Setup::Discard => builder.with_batch_exporter(Discard).build(),
        Setup::OtlpGrpc => {
            // tonic's channel lives on the runtime it was built in.
            let _guard = runtime.enter();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(format!("http://127.0.0.1:{port}"))
                .build()
                .unwrap();
            builder.with_batch_exporter(exporter).build()
        }
        // Built outside the runtime: the blocking reqwest client must not live in async context.
        Setup::OtlpHttp => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("http://127.0.0.1:{port}/v1/traces"))
                .build()
                .unwrap();
            builder.with_batch_exporter(exporter).build()
        }
    }
}

/// Publishes `n` messages and consumes them in another task; the time from the first publish
/// to the last message handled.
async fn flow(instrumentation: Instrumentation, n: usize) -> Duration {
    let (tx, mut rx) = mpsc::channel::<Message>(1024);
    let consumer_instrumentation = instrumentation.clone();
    let consumer = tokio::spawn(async move {
        let mut consumer = ServiceBuilder::new()
            .layer(ConsumerLayer::from(consumer_instrumentation))
            .service(service_fn(|message: Message| {
                std::hint::black_box(&message.body);
                std::future::ready(Ok::<_, Infallible>(()))
            }));
        let mut handled = 0usize;
        while let Some(message) = rx.recv().await {
            consumer.ready().await.unwrap().call(message).await.unwrap();
            handled += 1;
        }
        handled
    });
    let mut producer = queueing_producer(instrumentation, tx);
    let started = Instant::now();
    for _ in 0..n {
        let message = Message::new(0);
        producer.ready().await.unwrap().call(message).await.unwrap();
    }
    // Dropping the producer drops the last sender: the consumer ends after the last message.
    drop(producer);
    let handled = consumer.await.unwrap();
    assert_eq!(handled, n, "every message reaches the handler");
    started.elapsed()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this quickly.
    let quick = std::env::args().all(|a| a != "--bench");
    let n = if quick {
        10_000
    } else {
        env("TRACELINK_MEMORY_MESSAGES", 1_000_000)
    };
    let rounds = if quick {
        1
    } else {
        env("TRACELINK_MEMORY_ROUNDS", 3).max(1)
    };
    let (rss_at_start, _) = memory_kb();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = closed_port().port();
    let resettable = reset_peak();
    println!(
        "{n} messages per run through ProducerLayer -> channel -> ConsumerLayer, 100% sampled, \
         {rounds} rounds; OTLP endpoint 127.0.0.1:{port} (closed); VmRSS at start {rss_at_start} kB"
    );
    if !resettable {
        println!(
            "(cannot reset VmHWM through /proc/self/clear_refs: peaks are since process start)"
        );
    }

    // Warm-up: the runtime's threads, the allocator's arenas, the SDK's first spans.
    {
        let provider = provider(Setup::None, port, &runtime);
        let instrumentation = instrumentation(&provider);
        runtime.block_on(flow(instrumentation, n.min(20_000)));
        let _ = provider.shutdown();
    }

    let setups = [
        Setup::None,
        Setup::Discard,
        Setup::OtlpGrpc,
        Setup::OtlpHttp,
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut peak_growth = vec![0i64; setups.len()];
    let mut rss_growth = vec![0i64; setups.len()];
    let mut highest_peak = 0u64;
    println!(
        "{:<6} {:<10} {:>12} {:>14} {:>14} {:>16} {:>12}",
        "round", "setup", "msg/s", "VmRSS before", "VmRSS after", "peak - before", "shutdown"
    );
    for round in 0..rounds {
        for k in 0..setups.len() {
            let slot = (k + round) % setups.len();
            let setup = setups[slot];
            let provider = provider(setup, port, &runtime);
            let instrumentation = instrumentation(&provider);
            reset_peak();
            let (before, _) = memory_kb();
            let elapsed = runtime.block_on(flow(instrumentation, n));
            let (after, peak) = memory_kb();
            // Outside the timed flow: flushing to a dead endpoint may wait for its timeout.
            let shutdown_started = Instant::now();
            let _ = provider.shutdown();
            let shutdown = shutdown_started.elapsed();
            let rate = n as f64 / elapsed.as_secs_f64();
            let growth = peak as i64 - before as i64;
            println!(
                "{round:<6} {:<10} {rate:>12.0} {:>11} kB {:>11} kB {:>13} kB {:>10.2} s",
                setup.name(),
                before,
                after,
                growth,
                shutdown.as_secs_f64()
            );
            highest_peak = highest_peak.max(peak);
            rates[slot].push(rate);
            peak_growth[slot] = peak_growth[slot].max(growth);
            rss_growth[slot] = rss_growth[slot].max(after as i64 - before as i64);
        }
    }
    let (rss_at_end, _) = memory_kb();
    let yardstick = median(rates[0].clone());
    println!();
    // Per-round ratios (the runs of a round are neighbours in time), then the median.
    let ratio = |slot: usize, base: usize| {
        median(
            rates[slot]
                .iter()
                .zip(&rates[base])
                .map(|(r, b)| r / b)
                .collect(),
        )
    };
    for (slot, setup) in setups.iter().enumerate() {
        println!(
            "MEMORY {} messages={n} msgs_per_s={:.0} ratio_to_none={:.3} ratio_to_discard={:.3} \
             max_peak_growth_kb={} max_rss_growth_kb={}",
            setup.name(),
            median(rates[slot].clone()),
            ratio(slot, 0),
            ratio(slot, 1),
            peak_growth[slot],
            rss_growth[slot],
        );
    }
    println!(
        "MEMORY process rss_start_kb={rss_at_start} rss_end_kb={rss_at_end} \
         highest_peak_kb={highest_peak} growth_kb={} yardstick_msgs_per_s={yardstick:.0}",
        highest_peak.saturating_sub(rss_at_start)
    );
}

fn instrumentation(provider: &SdkTracerProvider) -> Instrumentation {
    Instrumentation::builder(MessagingSystem::new("in_process"))
        .with_tracer_provider(provider)
        .with_propagator(W3cTraceContextPropagator::new())
        .build()
}
