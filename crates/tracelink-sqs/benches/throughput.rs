//! Send + receive throughput, traced vs raw aws-sdk-sqs, against the same SQS endpoint in the
//! same run (`AWS_ENDPOINT_URL`, default moto on http://127.0.0.1:5000).
//!
//! ```text
//! cargo bench -p tracelink-sqs --bench throughput
//! ```
//!
//! Each round sends `MESSAGES` messages (one `SendMessage` each, or `SendMessageBatch` of 10),
//! then receives and deletes them (`ReceiveMessage` of 10, `DeleteMessageBatch`). Raw and
//! traced rounds alternate (and alternate which goes first) on fresh queues so drift in the
//! emulator hits both alike; the median of the per-round ratios resists a noisy machine. The
//! emulator bounds absolute speed; the traced/raw ratio is the number that counts. Spans are
//! recorded (sampled) by an SDK tracer provider without exporter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::Instrumentation;
use tracelink_sqs::{messaging_system, ReceivedMessage, SendRequest, SqsConsumer, SqsSender};

const MESSAGES: usize = 100;
const ROUNDS: usize = 10;
const BODY: &str = "0123456789012345678901234567890123456789012345678901234567890123";

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

async fn raw_round(client: &Client, url: &str, mode: Mode) -> Duration {
    let start = Instant::now();
    match mode {
        Mode::Single => {
            for _ in 0..MESSAGES {
                client
                    .send_message()
                    .queue_url(url)
                    .message_body(BODY)
                    .send()
                    .await
                    .unwrap();
            }
        }
        Mode::Batch => {
            for chunk in 0..MESSAGES / 10 {
                let entries = (0..10)
                    .map(|i| {
                        SendMessageBatchRequestEntry::builder()
                            .id(format!("{chunk}-{i}"))
                            .message_body(BODY)
                            .build()
                            .unwrap()
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
    while received < MESSAGES {
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
) -> Duration {
    let start = Instant::now();
    let sender = SqsSender::new(client.clone(), instrumentation.clone());
    match mode {
        Mode::Single => {
            let mut send = sender.traced();
            for _ in 0..MESSAGES {
                send.ready()
                    .await
                    .unwrap()
                    .call(SendRequest::new(url, BODY))
                    .await
                    .unwrap();
            }
        }
        Mode::Batch => {
            let mut send = sender.traced_batch();
            for _ in 0..MESSAGES / 10 {
                let batch = (0..10).map(|_| SendRequest::new(url, BODY)).collect();
                send.ready().await.unwrap().call(batch).await.unwrap();
            }
        }
    }
    let mut consumer = SqsConsumer::builder(client.clone(), url, instrumentation.clone())
        .with_wait_time(Duration::from_secs(1))
        .build(service_fn(|_m: ReceivedMessage| async {
            Ok::<_, Infallible>(())
        }));
    let mut received = 0;
    while received < MESSAGES {
        received += consumer.poll().await.unwrap().deleted;
    }
    start.elapsed()
}

fn rate(total: Duration, rounds: usize) -> f64 {
    (MESSAGES * rounds) as f64 / total.as_secs_f64()
}

fn main() {
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
        let provider = SdkTracerProvider::builder().build();
        let instrumentation = Instrumentation::builder(messaging_system(Some(&endpoint), None))
            .with_tracer_provider(&provider)
            .with_propagator(TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ]))
            .build();

        println!("SQS send + receive + delete at {endpoint}, {MESSAGES} messages x {ROUNDS} rounds per variant");
        for (mode, label) in [(Mode::Single, "SendMessage"), (Mode::Batch, "SendMessageBatch")] {
            // Warm-up: connections, queue creation paths.
            let url = queue(&client, "warm", mode as usize).await;
            raw_round(&client, &url, mode).await;
            traced_round(&client, &url, mode, &instrumentation).await;
            let _ = client.delete_queue().queue_url(&url).send().await;
            let (mut raw, mut traced) = (Duration::ZERO, Duration::ZERO);
            let mut ratios = Vec::with_capacity(ROUNDS);
            for round in 0..ROUNDS {
                // Alternate which variant goes first, so a trend in the emulator's speed
                // favours neither.
                let mut pair = [Duration::ZERO; 2];
                for variant in [round % 2, 1 - round % 2] {
                    let url = queue(&client, &format!("v{variant}m{}", mode as usize), round).await;
                    pair[variant] = if variant == 0 {
                        raw_round(&client, &url, mode).await
                    } else {
                        traced_round(&client, &url, mode, &instrumentation).await
                    };
                    // Keep the emulator's state small.
                    let _ = client.delete_queue().queue_url(&url).send().await;
                }
                raw += pair[0];
                traced += pair[1];
                ratios.push(pair[0].as_secs_f64() / pair[1].as_secs_f64());
            }
            ratios.sort_by(f64::total_cmp);
            let median = ratios[ROUNDS / 2];
            let (raw, traced) = (rate(raw, ROUNDS), rate(traced, ROUNDS));
            println!(
                "{label:>16}: raw {raw:7.0} msg/s   traced {traced:7.0} msg/s   traced/raw {:.3} (median of rounds {median:.3})",
                traced / raw
            );
        }
    });
}
