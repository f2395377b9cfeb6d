//! Send + receive throughput, traced vs raw aws-sdk-sqs, against the same SQS endpoint in the
//! same run (`AWS_ENDPOINT_URL`, default moto on http://127.0.0.1:5000).
//!
//! ```text
//! cargo bench -p tracelink-sqs --bench throughput
//! TRACELINK_BENCH_MESSAGES=200 TRACELINK_BENCH_ROUNDS=5 cargo bench -p tracelink-sqs --bench throughput
//! ```
//!
//! Each round sends `TRACELINK_BENCH_MESSAGES` (default 100, a multiple of 10) messages (one
//! `SendMessage` each, or `SendMessageBatch` of 10), then receives and deletes them
//! (raw: `ReceiveMessage` of 10, `DeleteMessageBatch`; traced: `SqsConsumer::run`, which long-polls
//! `ReceiveMessage` of 10 and deletes each message after its handler, the deletes of handlers
//! that finished together in one `DeleteMessageBatch`). Raw, raw with one `traceparent` message
//! attribute (sent with every message, asked for and read back on receive), traced-sampled,
//! traced-unsampled and tracing-off (the adapter's `SqsPublisher::traced`/`traced_batch` and
//! `SqsConsumer::run` over a no-op tracer provider and an empty composite propagator) runs
//! take turns (the order rotating) on fresh queues over `TRACELINK_BENCH_ROUNDS` (default 7)
//! rounds so drift in the emulator hits all alike; reported are the median rates and the median
//! of the per-round traced/raw ratios, which resists a noisy machine. The emulator bounds
//! absolute speed; the traced/raw ratio is the number that counts. Sampled spans go through a
//! batch processor into an exporter that discards them; unsampled use `Sampler::AlwaysOff`. The
//! propagator is tracelink's `W3cTraceContextPropagator` (with the SDK's baggage propagator), or
//! the SDK's trace-context one with `TRACELINK_BENCH_PROPAGATOR=sdk`. Besides the human-readable
//! lines it prints `TABLE sqs <sampling> <raw> <traced> <ratio>` lines and one
//! `OFF sqs <header> <off> <off/header>` line (tracing off against raw with the attribute; median
//! rates, median of the per-round ratios), all for `SendMessage`, which `scripts/throughput`
//! collects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::propagation::W3cTraceContextPropagator;
use tracelink_core::Instrumentation;
use tracelink_sqs::{
    messaging_system, ReceivedMessage, SendRequest, SqsConsumer, SqsPublisher, SqsSource,
};

const MESSAGES: usize = 100;
const ROUNDS: usize = 7;

/// Discards every span: what sampling costs the process without the cost of a real export.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

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

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
const BODY: &str = "0123456789012345678901234567890123456789012345678901234567890123";

/// The message attribute the raw-with-header variant carries.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn traceparent_attribute() -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(TRACEPARENT)
        .build()
        .unwrap()
}

/// What one variant runs.
#[derive(Clone, Copy)]
enum Kind<'a> {
    /// Raw aws-sdk-sqs; `true`: with one `traceparent` message attribute on every message,
    /// read back on receive.
    Raw(bool),
    /// The adapter, with this instrumentation.
    Adapter(&'a Instrumentation),
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Single,
    Batch,
}

async fn queue(client: &Client, tag: &str, round: usize) -> String {
    let name = format!("bench-{tag}-{}-{round}", std::process::id());
    client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create queue (is moto running?)")
        .queue_url()
        .unwrap_or_default()
        .to_owned()
}

async fn raw_round(
    client: &Client,
    url: &str,
    mode: Mode,
    header: bool,
    messages: usize,
) -> Duration {
    let start = Instant::now();
    match mode {
        Mode::Single => {
            for _ in 0..messages {
                let mut send = client.send_message().queue_url(url).message_body(BODY);
                if header {
                    send = send.message_attributes("traceparent", traceparent_attribute());
                }
                send.send().await.unwrap();
            }
        }
        Mode::Batch => {
            for chunk in 0..messages / 10 {
                let entries = (0..10)
                    .map(|i| {
                        let mut entry = SendMessageBatchRequestEntry::builder()
                            .id(format!("{chunk}-{i}"))
                            .message_body(BODY);
                        if header {
                            entry =
                                entry.message_attributes("traceparent", traceparent_attribute());
                        }
                        entry.build().unwrap()
                    })
                    .collect();
                client
                    .send_message_batch()
                    .queue_url(url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
    let mut received = 0;
    while received < messages {
        let out = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("traceparent")
            .send()
            .await
            .unwrap();
        let messages = out.messages.unwrap_or_default();
        for message in &messages {
            // Read the attribute back, as a consumer extracting the context would.
            std::hint::black_box(
                message
                    .message_attributes()
                    .and_then(|a| a.get("traceparent"))
                    .and_then(|v| v.string_value()),
            );
        }
        received += messages.len();
        if messages.is_empty() {
            continue;
        }
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap())
                    .build()
                    .unwrap()
            })
            .collect();
        client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
    }
    start.elapsed()
}

async fn traced_round(
    client: &Client,
    url: &str,
    mode: Mode,
    instrumentation: &Instrumentation,
    messages: usize,
) -> Duration {
    let start = Instant::now();
    let publisher = SqsPublisher::new(client.clone());
    match mode {
        Mode::Single => {
            let mut send = publisher.traced(instrumentation.clone());
            for _ in 0..messages {
                send.ready()
                    .await
                    .unwrap()
                    .call(SendRequest::new(url, BODY))
                    .await
                    .unwrap();
            }
        }
        Mode::Batch => {
            let mut send = publisher.traced_batch(instrumentation.clone());
            for _ in 0..messages / 10 {
                let batch = (0..10).map(|_| SendRequest::new(url, BODY)).collect();
                send.ready().await.unwrap().call(batch).await.unwrap();
            }
        }
    }
    // The consumer's own settling: a delete per handled message, up to 10 handlers at once,
    // the deletes of those that finished together in one `DeleteMessageBatch`.
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let handler = service_fn(move |_m: ReceivedMessage| {
        counter.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, Infallible>(()) }
    });
    let all_handled = async move {
        while handled.load(Ordering::Relaxed) < messages {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    SqsConsumer::new(
        SqsSource::new(client.clone(), url).with_wait_time(Duration::from_secs(1)),
        instrumentation.clone(),
    )
    .with_concurrency(10)
    .run(handler, all_handled)
    .await
    .unwrap();
    start.elapsed()
}

fn rate(elapsed: Duration, messages: usize) -> f64 {
    messages as f64 / elapsed.as_secs_f64()
}

fn instrumentation(endpoint: &str, provider: &SdkTracerProvider) -> Instrumentation {
    let builder = Instrumentation::builder(messaging_system(Some(endpoint), None))
        .with_tracer_provider(provider);
    if sdk_propagator() {
        builder.with_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]))
    } else {
        builder.with_propagator(TextMapCompositePropagator::new(vec![
            Box::new(W3cTraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]))
    }
    .build()
}

fn provider(sampler: Sampler) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_batch_exporter(Discard)
        .build()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with a tiny count.
    let quick = std::env::args().all(|a| a != "--bench");
    let (messages, rounds) = if quick {
        (10, 1)
    } else {
        (
            env("TRACELINK_BENCH_MESSAGES", MESSAGES).max(10) / 10 * 10,
            env("TRACELINK_BENCH_ROUNDS", ROUNDS).max(1),
        )
    };
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
            .load()
            .await;
        let client = Client::new(&config);
        let sampled_provider = provider(Sampler::AlwaysOn);
        let unsampled_provider = provider(Sampler::AlwaysOff);
        let sampled = instrumentation(&endpoint, &sampled_provider);
        let unsampled = instrumentation(&endpoint, &unsampled_provider);
        // Tracing off: a no-op tracer provider and a propagator that writes nothing.
        let off = Instrumentation::builder(messaging_system(Some(&endpoint), None))
            .with_tracer_provider(&opentelemetry::trace::noop::NoopTracerProvider::new())
            .with_propagator(TextMapCompositePropagator::new(vec![]))
            .build();
        // Raw first (the baseline of the traced/raw ratios), raw with the header second (the
        // baseline of off/header).
        let variants: [(&str, Kind<'_>); 5] = [
            ("raw", Kind::Raw(false)),
            ("header", Kind::Raw(true)),
            ("sampled", Kind::Adapter(&sampled)),
            ("unsampled", Kind::Adapter(&unsampled)),
            ("off", Kind::Adapter(&off)),
        ];
        const HEADER: usize = 1;
        const OFF: usize = 4;

        println!(
            "SQS send + receive + delete at {endpoint}, {messages} messages x {rounds} rounds per variant, {} propagator",
            if sdk_propagator() { "SDK W3C" } else { "tracelink W3C" }
        );
        for (mode, label) in [(Mode::Single, "SendMessage"), (Mode::Batch, "SendMessageBatch")] {
            // Warm-up: connections, queue creation paths.
            let url = queue(&client, "warm", mode as usize).await;
            raw_round(&client, &url, mode, false, messages).await;
            traced_round(&client, &url, mode, &sampled, messages).await;
            let _ = client.delete_queue().queue_url(&url).send().await;
            let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
            for round in 0..rounds {
                // Rotate which variant goes first, so a trend in the emulator's speed favours
                // none.
                for k in 0..variants.len() {
                    let v = (k + round) % variants.len();
                    let url = queue(&client, &format!("v{v}m{}", mode as usize), round).await;
                    let elapsed = match variants[v].1 {
                        Kind::Raw(header) => raw_round(&client, &url, mode, header, messages).await,
                        Kind::Adapter(instr) => {
                            traced_round(&client, &url, mode, instr, messages).await
                        }
                    };
                    rates[v].push(rate(elapsed, messages));
                    // Keep the emulator's state small.
                    let _ = client.delete_queue().queue_url(&url).send().await;
                }
            }
            let ratio_to = |v: usize, base: usize| {
                median(rates[v].iter().zip(&rates[base]).map(|(t, r)| t / r).collect())
            };
            let raw = median(rates[0].clone());
            for (v, (name, _)) in variants.iter().enumerate().skip(1) {
                let ratio = ratio_to(v, 0);
                let traced = median(rates[v].clone());
                println!(
                    "{label:>16} {name:<9}: raw {raw:7.0} msg/s   {name} {traced:7.0} msg/s   {name}/raw (median of rounds) {ratio:.3}"
                );
                if mode == Mode::Single && matches!(*name, "sampled" | "unsampled") {
                    println!("TABLE sqs {name} {raw:.0} {traced:.0} {ratio:.3}");
                }
            }
            let header = median(rates[HEADER].clone());
            let off_rate = median(rates[OFF].clone());
            let off_ratio = ratio_to(OFF, HEADER);
            println!(
                "{label:>16} off/header: header {header:7.0} msg/s   off {off_rate:7.0} msg/s   off/header (median of rounds) {off_ratio:.3}  (target >= 0.97)"
            );
            if mode == Mode::Single {
                println!("OFF sqs {header:.0} {off_rate:.0} {off_ratio:.3}");
            }
        }
        let _ = sampled_provider.shutdown();
        let _ = unsampled_provider.shutdown();
    });
}
