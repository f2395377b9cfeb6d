//! Heap allocations per message on the consume path with tracing off: raw aws-sdk-sqs reading
//! one attribute against tracelink's `SqsConsumer`, against the same SQS endpoint
//! (`AWS_ENDPOINT_URL`, default moto on http://127.0.0.1:5000).
//!
//! ```text
//! cargo bench -p tracelink-sqs --bench allocations
//! ```
//!
//! Tracing off: the no-op tracer provider and an empty composite propagator (the meter is the
//! global one, a no-op unless set). `TRACELINK_BENCH_MESSAGES` (default 200) messages, each with
//! a `traceparent` message attribute, are sent to a fresh queue before counting starts; counted
//! is the whole consume side, SDK included, making the same SQS calls on both sides:
//! `ReceiveMessage` of up to 10 and a `DeleteMessageBatch` of what it brought. Raw reads the
//! `traceparent` attribute of each message; tracelink runs `SqsConsumer::run` (concurrency 1,
//! prefetch 10) with a handler reading the same attribute, and its settler sends the deletes of
//! handlers that finished within a few turns of each other as one `DeleteMessageBatch`.
//!
//! Counting uses a `#[global_allocator]` from `stats_alloc` over the whole process (the runtime
//! is single-threaded). Prints `allocs_per_msg raw+header=<x> adapter=<y>`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::alloc::System;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::config::{Credentials, Region as AwsRegion};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::noop::NoopTracerProvider;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::service_fn;
use tracelink_core::Instrumentation;
use tracelink_sqs::{messaging_system, ReceivedMessage, SqsConsumer, SqsSource};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn messages() -> usize {
    std::env::var("TRACELINK_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

async fn client() -> Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(AwsRegion::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
        .load()
        .await;
    Client::new(&config)
}

/// A fresh queue holding `n` messages, each with a `traceparent` attribute.
async fn filled_queue(client: &Client, label: &str, n: usize) -> String {
    let name = format!(
        "alloc-{label}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    );
    let url = client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("an SQS endpoint (moto: `eval \"$(scripts/services)\"`)")
        .queue_url()
        .unwrap()
        .to_owned();
    let attribute = MessageAttributeValue::builder()
        .data_type("String")
        .string_value(TRACEPARENT)
        .build()
        .unwrap();
    for start in (0..n).step_by(10) {
        let entries = (start..(start + 10).min(n))
            .map(|i| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body("x".repeat(64))
                    .message_attributes("traceparent", attribute.clone())
                    .build()
                    .unwrap()
            })
            .collect();
        client
            .send_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
    }
    url
}

async fn raw(client: &Client, url: &str, n: usize) -> usize {
    let mut handled = 0;
    let mut found = 0;
    while handled < n {
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
        if messages.is_empty() {
            continue;
        }
        let mut entries = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            let header = message
                .message_attributes()
                .and_then(|a| a.get("traceparent"))
                .and_then(|v| v.string_value());
            found += usize::from(header.is_some());
            entries.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(message.receipt_handle().unwrap())
                    .build()
                    .unwrap(),
            );
            handled += 1;
        }
        client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
    }
    found
}

async fn adapter(client: &Client, url: &str, n: usize) -> usize {
    let instrumentation = Instrumentation::builder(messaging_system(Some(&endpoint()), None))
        .with_tracer_provider(&NoopTracerProvider::new())
        .with_propagator(TextMapCompositePropagator::new(vec![]))
        .build();
    let handled = Arc::new(AtomicUsize::new(0));
    let found = Arc::new(AtomicUsize::new(0));
    let (counter, finder) = (handled.clone(), found.clone());
    let handler = service_fn(move |message: ReceivedMessage| {
        let header = message
            .attribute("traceparent")
            .and_then(|v| v.string_value());
        finder.fetch_add(usize::from(header.is_some()), Ordering::Relaxed);
        counter.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, std::convert::Infallible>(()) }
    });
    let all_handled = async move {
        while handled.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    SqsConsumer::new(
        SqsSource::new(client.clone(), url)
            .with_wait_time(Duration::from_secs(1))
            .with_message_attribute_names(["traceparent"]),
        instrumentation,
    )
    .run(handler, all_handled)
    .await
    .unwrap();
    found.load(Ordering::Relaxed)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = messages();
    runtime.block_on(async {
        let client = client().await;
        let raw_url = filled_queue(&client, "raw", n).await;
        let adapter_url = filled_queue(&client, "adapter", n).await;

        let region = Region::new(GLOBAL);
        let started = std::time::Instant::now();
        let found = raw(&client, &raw_url, n).await;
        let raw_elapsed = started.elapsed();
        let raw_allocs = region.change().allocations;
        assert_eq!(found, n, "every raw message carried its attribute");

        let region = Region::new(GLOBAL);
        let started = std::time::Instant::now();
        let found = adapter(&client, &adapter_url, n).await;
        let adapter_elapsed = started.elapsed();
        let adapter_allocs = region.change().allocations;
        assert_eq!(found, n, "every message carried its attribute");

        println!(
            "allocs_per_msg raw+header={:.1} adapter={:.1}",
            raw_allocs as f64 / n as f64,
            adapter_allocs as f64 / n as f64
        );
        // Not a throughput measurement (one run, the emulator's pace): a sanity check.
        println!("elapsed raw={raw_elapsed:?} adapter={adapter_elapsed:?}");
    });
}
