//! Load (issue 9): `N` messages through the traced JetStream publisher and the JetStream
//! consume loop, with the handler failing 10% of first attempts (chosen by a seeded LCG). Every
//! message must succeed in the end, none is lost, a failed message is nak'ed and redelivered
//! (never acked before its handler succeeded: the second delivery has `delivered == 2` and the
//! consumer's ack floor reaches the last message with nothing pending) and every `process` span
//! links to its producer span.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
use opentelemetry_semantic_conventions::attribute as attr;
use tower::{service_fn, Layer, Service, ServiceExt};
use tracelink_core::{ConsumerLayer, Instrumentation};
use tracelink_nats::{JetStreamConsumer, JetStreamDelivery, JetStreamPublisher, Publish};

use crate::jetstream::{assert_all_acked, setup};
use crate::support;
use tracelink_testkit::load::{assert_attempts, attribute, failing_first_attempts, Recorder};

/// Messages per run (see docs/RELIABILITY.md for the time a debug build takes).
const N: usize = 100_000;
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
    eprintln!("jetstream load: {N} messages in {:?}", started.elapsed());
}

async fn run() {
    let url = support::url();
    let recorder = Recorder::new(message_id);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(recorder.clone())
        .build();
    let instrumentation = Instrumentation::builder(tracelink_nats::system(&url))
        .with_tracer_provider(&provider)
        .with_propagator(TraceContextPropagator::new())
        .build();
    let (js, _stream, subject, consumer) =
        setup(support::connect().await, Duration::from_secs(30)).await;

    let mut publisher = JetStreamPublisher::traced(js, instrumentation.clone());
    for i in 0..N {
        let id = i.to_string();
        publisher
            .ready()
            .await
            .unwrap()
            .call(Publish::new(subject.as_str(), id.clone()).with_message_id(&id))
            .await
            .unwrap_or_else(|e| panic!("publish {i}: {e}"));
    }

    let fail_first = Arc::new(failing_first_attempts(N, 0x6e61_7473));
    let expected_failures = fail_first.iter().filter(|f| **f).count();
    let attempts: Arc<Vec<AtomicU32>> = Arc::new((0..N).map(|_| AtomicU32::new(0)).collect());
    let successes: Arc<Vec<AtomicU32>> = Arc::new((0..N).map(|_| AtomicU32::new(0)).collect());
    // JetStream's delivery count must equal the attempts seen: a message delivered again without
    // having been nak'ed, or not redelivered after a nak, shows here.
    let wrong_delivery_count = Arc::new(AtomicUsize::new(0));
    let distinct = Arc::new(AtomicUsize::new(0));
    let mut handler = ConsumerLayer::from(instrumentation.clone()).layer(service_fn({
        let (fail_first, attempts, successes, wrong_delivery_count, distinct) = (
            fail_first.clone(),
            attempts.clone(),
            successes.clone(),
            wrong_delivery_count.clone(),
            distinct.clone(),
        );
        move |delivery: JetStreamDelivery| {
            let i: usize = std::str::from_utf8(&delivery.message.payload)
                .expect("utf-8 payload")
                .parse()
                .expect("numeric payload");
            let attempt = attempts[i].fetch_add(1, Ordering::SeqCst) + 1;
            if delivery.delivered() != Some(i64::from(attempt)) {
                wrong_delivery_count.fetch_add(1, Ordering::SeqCst);
            }
            let result = if attempt == 1 && fail_first[i] {
                Err(std::io::Error::other("a chosen first attempt fails"))
            } else {
                if successes[i].fetch_add(1, Ordering::SeqCst) == 0 {
                    distinct.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            };
            async move { result }
        }
    }));
    let mut loop_ = JetStreamConsumer::new(consumer.clone(), instrumentation.clone())
        .with_batch_size(500)
        .with_expires(Duration::from_secs(2));
    while distinct.load(Ordering::SeqCst) < N {
        loop_.process_next(&mut handler).await.expect("consume");
    }

    assert_eq!(
        distinct.load(Ordering::SeqCst),
        N,
        "every message succeeded"
    );
    assert_attempts(&fail_first, &attempts, &successes);
    assert_eq!(
        wrong_delivery_count.load(Ordering::SeqCst),
        0,
        "delivery counts"
    );
    assert_all_acked(&consumer, N as u64).await;

    provider.force_flush().unwrap();
    recorder
        .recorded()
        .assert_linked(N, N + expected_failures, expected_failures);
}
