//! Load (issue 9) against moto: `N` messages through the traced batch `SqsPublisher` and
//! `SqsConsumer`, with the handler failing 10% of first attempts (chosen by a seeded LCG). A
//! failed message is made visible again at once (`OnFailure::RedeliverAfter(0)`), the queue's
//! visibility timeout (30 s) is far longer than any handler here, so nothing is redelivered
//! without cause. Every message must succeed in the end, none is lost, a failed message is
//! received again (it was not deleted before its handler succeeded), the queues are empty at
//! the end, and every `process` span links to its message's `create` (PRODUCER) span.
//!
//! The messages are spread over [`QUEUES`] queues worked at once. On each queue one task sends
//! [`CHUNK`] messages (one `SendMessageBatch`) and runs a consumer until all of them succeeded,
//! then sends the next: moto's cost per message grows with the messages stored in the queue, so a
//! short queue is what makes `N` reachable, and one task per queue because moto does not
//! serialise concurrent requests on one queue (see docs/RELIABILITY.md). `N` is set by moto's
//! pace, not tracelink's: about 2.6 ms of moto CPU per message, on one core.
//!
//! `TRACELINK_SQS_LOAD_N`, `TRACELINK_SQS_LOAD_CHUNK` and `TRACELINK_SQS_LOAD_QUEUES` override
//! the defaults (to measure moto's pace; docs/RELIABILITY.md has the figures).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
use opentelemetry_semantic_conventions::attribute as attr;
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::{Instrumentation, OnFailure};
use tracelink_sqs::{
    messaging_system, ReceivedMessage, SendRequest, SqsConsumer, SqsPublisher, SqsSource,
};

use crate::support::*;
use tracelink_testkit::load::{
    assert_attempts, attribute, failing_first_attempts, within, Recorder,
};

/// Messages per run: moto's pace, not tracelink's, sets it (see docs/RELIABILITY.md).
const N: usize = 10_000;
/// Messages sent to a queue at a time (one batch), all handled before the next are sent:
/// keeps moto's queue at most this long.
const CHUNK: usize = 10;
/// Queues worked at once, each by one task that sends and consumes in turn.
const QUEUES: usize = 8;
/// The whole test fails loudly after this.
const DEADLINE: Duration = Duration::from_secs(240);

fn message_id(span: &SpanData) -> String {
    attribute(span, attr::MESSAGING_MESSAGE_ID)
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_every_message_succeeds_in_the_end_and_links_to_its_producer() {
    let n = setting("TRACELINK_SQS_LOAD_N", N);
    within(DEADLINE, &format!("sqs (moto) load, {n} messages"), run(n)).await;
}

async fn run(n: usize) {
    let chunk_len = setting("TRACELINK_SQS_LOAD_CHUNK", CHUNK);
    let queues = setting("TRACELINK_SQS_LOAD_QUEUES", QUEUES);
    let client = client().await;
    let mut urls = Vec::new();
    for _ in 0..queues {
        urls.push(
            queue(
                &client,
                "load",
                &[(QueueAttributeName::VisibilityTimeout, "30")],
            )
            .await,
        );
    }
    let recorder = Recorder::new(message_id);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(recorder.clone())
        .build();
    let instrumentation =
        Instrumentation::builder(messaging_system(Some(&endpoint()), Some("us-east-1")))
            .with_tracer_provider(&provider)
            .with_propagator(w3c())
            .build();

    let fail_first = Arc::new(failing_first_attempts(n, 0x0073_7173));
    let expected_failures = fail_first.iter().filter(|f| **f).count();
    let attempts: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    let successes: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    let distinct = Arc::new(AtomicUsize::new(0));

    // Queue `q` carries the messages `i` with `i % queues == q`, a chunk at a time.
    let mut lanes = tokio::task::JoinSet::new();
    for (q, url) in urls.iter().enumerate() {
        let ids: Vec<usize> = (q..n).step_by(queues).collect();
        let done = Arc::new(AtomicUsize::new(0));
        let handler = {
            let (fail_first, attempts, successes, distinct, done) = (
                fail_first.clone(),
                attempts.clone(),
                successes.clone(),
                distinct.clone(),
                done.clone(),
            );
            service_fn(move |m: ReceivedMessage| {
                let i: usize = m.body().parse().expect("numeric body");
                let attempt = attempts[i].fetch_add(1, Ordering::SeqCst) + 1;
                let result = if attempt == 1 && fail_first[i] {
                    Err(std::io::Error::other("a chosen first attempt fails"))
                } else {
                    if successes[i].fetch_add(1, Ordering::SeqCst) == 0 {
                        distinct.fetch_add(1, Ordering::SeqCst);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(())
                };
                async move { result }
            })
        };
        // No long poll: a failed message, visible again at once, is received at once, and the
        // receive in progress when a chunk is done (dropped by the shutdown) has already found
        // the queue empty.
        let source = SqsSource::new(client.clone(), url)
            .with_wait_time(Duration::ZERO)
            .with_max_messages(10);
        let instrumentation = instrumentation.clone();
        // Batches of 10 (`SendMessageBatch`, one `create` PRODUCER span per message).
        let mut send = SqsPublisher::new(client.clone()).traced_batch(instrumentation.clone());
        let consumer = move || {
            SqsConsumer::new(source.clone(), instrumentation.clone())
                .on_failure(OnFailure::RedeliverAfter(Duration::ZERO))
        };
        let url = url.clone();
        lanes.spawn(async move {
            for chunk in ids.chunks(chunk_len) {
                for batch in chunk.chunks(10) {
                    let requests = batch
                        .iter()
                        .map(|i| SendRequest::new(&url, i.to_string()))
                        .collect();
                    let results = send
                        .ready()
                        .await
                        .unwrap()
                        .call(requests)
                        .await
                        .unwrap_or_else(|e| panic!("send batch {batch:?}: {e}"));
                    for result in results {
                        result.unwrap_or_else(|e| panic!("send batch {batch:?}: {e:?}"));
                    }
                }
                let target = done.load(Ordering::SeqCst) + chunk.len();
                let chunk_handled = {
                    let done = done.clone();
                    async move {
                        while done.load(Ordering::SeqCst) < target {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                };
                consumer()
                    .run(handler.clone(), chunk_handled)
                    .await
                    .unwrap_or_else(|e| panic!("consuming failed: {e:?}"));
            }
        });
    }
    while let Some(lane) = lanes.join_next().await {
        lane.unwrap();
    }
    eprintln!("sqs (moto) load: {queues} queues, chunks of {chunk_len}");

    // Every message succeeded once; a failed first attempt came back (it had not been deleted)
    // and succeeded on its second; nothing came back without cause.
    assert_eq!(
        distinct.load(Ordering::SeqCst),
        n,
        "every message succeeded"
    );
    assert_attempts(&fail_first, &attempts, &successes);
    for url in &urls {
        assert_eq!(
            messages_left(&client, url).await,
            0,
            "every message deleted"
        );
    }

    provider.force_flush().unwrap();
    recorder
        .recorded()
        .assert_linked(n, n + expected_failures, expected_failures);
}
