//! Load (issue 9) against moto: `N` messages through the traced batch `SqsSender` and `SqsConsumer`,
//! with the handler failing 10% of first attempts (chosen by a seeded LCG). A failed message is
//! made visible again at once (`OnFailure::ChangeVisibility(0)`), the queue's visibility
//! timeout (30 s) is far longer than any handler here, so nothing is redelivered without cause.
//! Every message must succeed in the end, none is lost, a failed message is received again (it
//! was not deleted before its handler succeeded), the queue is empty at the end, and every
//! `process` span links to its message's `create` (PRODUCER) span.
//!
//! `N` is 1 000, not the 100 000 of the other brokers: moto is slow and slows further as the
//! queue grows (each request takes longer with more messages stored). Measured in a debug build
//! on the project's 2-core machine: 2 000 messages took 122 s (29 s of it to send them in
//! batches of 10), over the 90 s budget; 1 000 take about 33 s. See
//! docs/RELIABILITY.md.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
use opentelemetry_semantic_conventions::attribute as attr;
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::Instrumentation;
use tracelink_sqs::{
    messaging_system, OnFailure, ReceivedMessage, SendRequest, SqsConsumer, SqsSender,
};

use crate::support::*;
use tracelink_testkit::load::{assert_attempts, attribute, failing_first_attempts, Recorder};

/// Messages per run: moto's pace, not tracelink's, sets it (see the module docs).
const N: usize = 1_000;
/// The whole test fails loudly after this.
const DEADLINE: Duration = Duration::from_secs(240);

fn message_id(span: &SpanData) -> String {
    attribute(span, attr::MESSAGING_MESSAGE_ID)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_every_message_succeeds_in_the_end_and_links_to_its_producer() {
    let started = Instant::now();
    tokio::time::timeout(DEADLINE, run())
        .await
        .unwrap_or_else(|_| panic!("load test did not finish within {DEADLINE:?}"));
    eprintln!("sqs (moto) load: {N} messages in {:?}", started.elapsed());
}

async fn run() {
    let client = client().await;
    let url = queue(
        &client,
        "load",
        &[(QueueAttributeName::VisibilityTimeout, "30")],
    )
    .await;
    let recorder = Recorder::new(message_id);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(recorder.clone())
        .build();
    let instrumentation =
        Instrumentation::builder(messaging_system(Some(&endpoint()), Some("us-east-1")))
            .with_tracer_provider(&provider)
            .with_propagator(w3c())
            .build();

    // Batches of 10 (`SendMessageBatch`, one `create` PRODUCER span per message): a tenth of
    // the requests of one send per message.
    let sending = Instant::now();
    let mut send = SqsSender::new(client.clone(), instrumentation.clone()).traced_batch();
    for first in (0..N).step_by(10) {
        let batch = (first..(first + 10).min(N))
            .map(|i| SendRequest::new(&url, i.to_string()))
            .collect();
        let results = send
            .ready()
            .await
            .unwrap()
            .call(batch)
            .await
            .unwrap_or_else(|e| panic!("send batch {first}: {e}"));
        for result in results {
            result.unwrap_or_else(|e| panic!("send batch {first}: {e:?}"));
        }
    }
    eprintln!("sqs (moto) load: {N} sent in {:?}", sending.elapsed());

    let fail_first = Arc::new(failing_first_attempts(N, 0x0073_7173));
    let expected_failures = fail_first.iter().filter(|f| **f).count();
    let attempts: Arc<Vec<AtomicU32>> = Arc::new((0..N).map(|_| AtomicU32::new(0)).collect());
    let successes: Arc<Vec<AtomicU32>> = Arc::new((0..N).map(|_| AtomicU32::new(0)).collect());
    let distinct = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (fail_first, attempts, successes, distinct) = (
            fail_first.clone(),
            attempts.clone(),
            successes.clone(),
            distinct.clone(),
        );
        service_fn(move |m: ReceivedMessage| {
            let i: usize = m.body().parse().expect("numeric body");
            let attempt = attempts[i].fetch_add(1, Ordering::SeqCst) + 1;
            let result = if attempt == 1 && fail_first[i] {
                Err(std::io::Error::other("a chosen first attempt fails"))
            } else {
                if successes[i].fetch_add(1, Ordering::SeqCst) == 0 {
                    distinct.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            };
            async move { result }
        })
    };
    let mut consumer = SqsConsumer::builder(client.clone(), &url, instrumentation.clone())
        .with_wait_time(Duration::from_secs(1))
        .with_max_messages(10)
        .on_failure(OnFailure::ChangeVisibility(Duration::ZERO))
        .build(handler);
    while distinct.load(Ordering::SeqCst) < N {
        let outcome = consumer.poll().await.expect("poll");
        assert!(
            outcome.settle_errors.is_empty(),
            "settling failed: {:?}",
            outcome.settle_errors
        );
    }

    // Every message succeeded once; a failed first attempt came back (it had not been deleted)
    // and succeeded on its second; nothing came back without cause.
    assert_eq!(
        distinct.load(Ordering::SeqCst),
        N,
        "every message succeeded"
    );
    assert_attempts(&fail_first, &attempts, &successes);
    assert_eq!(
        messages_left(&client, &url).await,
        0,
        "every message deleted"
    );

    provider.force_flush().unwrap();
    recorder
        .recorded()
        .assert_linked(N, N + expected_failures, expected_failures);
}
