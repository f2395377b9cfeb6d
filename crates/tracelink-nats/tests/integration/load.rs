//! Load (issue 9), JetStream and core NATS.
//!
//! JetStream: `N` messages through the traced JetStream publisher and the JetStream consume
//! loop, with the handler failing 10% of first attempts (chosen by a seeded LCG). Every message
//! must succeed in the end, none is lost, a failed message is nak'ed and redelivered (never
//! acked before its handler succeeded: the second delivery has `delivered == 2` and the
//! consumer's ack floor reaches the last message with nothing pending) and every `process` span
//! links to its producer span.
//!
//! Core NATS: `N` requests over request/reply, retried until answered (see
//! `core_load_every_request_is_answered_in_the_end_and_parented_to_its_request`).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
use opentelemetry_semantic_conventions::attribute as attr;
use tower::{service_fn, Layer, Service, ServiceExt};
use tracelink_core::Instrumentation;
use tracelink_nats::{
    JetStreamConsumer, JetStreamDelivery, JetStreamPublisher, JetStreamSource, Publish,
};

use crate::jetstream::{assert_all_acked, setup};
use crate::support::{self, until};
use tracelink_testkit::load::{
    assert_attempts, attribute, failing_first_attempts, within, Recorder,
};

/// Messages per run (see docs/RELIABILITY.md for the time a debug build takes).
const N: usize = 100_000;
/// The whole test fails loudly after this.
const DEADLINE: Duration = Duration::from_secs(240);

fn message_id(span: &SpanData) -> String {
    attribute(span, attr::MESSAGING_MESSAGE_ID)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_every_message_succeeds_in_the_end_and_links_to_its_producer() {
    within(DEADLINE, &format!("jetstream load, {N} messages"), run()).await;
}

async fn run() {
    let url = support::url();
    let recorder = Recorder::new(message_id);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(recorder.clone())
        .build();
    let instrumentation = Instrumentation::builder(tracelink_nats::messaging_system(&url))
        .with_tracer_provider(&provider)
        .with_propagator(TraceContextPropagator::new())
        .build();
    let (js, _stream, subject, consumer) =
        setup(support::connect().await, Duration::from_secs(30)).await;

    let mut publisher = JetStreamPublisher::new(js).traced(instrumentation.clone());
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
    let handler = service_fn({
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
    });
    let source = JetStreamSource::new(consumer.clone()).with_expires(Duration::from_secs(2));
    JetStreamConsumer::new(source, instrumentation.clone())
        .with_prefetch(500)
        .run(handler, until(|| distinct.load(Ordering::SeqCst) >= N))
        .await
        .expect("consume");

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

/// Requests in flight at once in the core load test.
const IN_FLIGHT: usize = 2000;
/// How long a requester waits for a reply before asking again. Only a failed handler (which does
/// not reply) may make a request wait this long: a request retried after a reply that was merely
/// slow would show as a second attempt of a message whose first attempt succeeded, and fail the
/// test. The slowest successful request is printed, to compare with it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The core NATS load test, over request/reply: core NATS is at most once and has no
/// acknowledgement, so a message's success is its reply, and the requester retries until it gets
/// one (the `ResponderLayer` replies after its handler succeeded, never on failure). `N` requests
/// through the traced `Requester`, `IN_FLIGHT` at a time, to a `ResponderLayer`-wrapped handler on
/// a core subscription that fails 10% of first attempts. Every request must be answered, each
/// handler run exactly once (twice for a chosen failure) with exactly one success, the requester
/// must see a timeout exactly for the chosen failures (no reply for a failed run, no retry
/// without cause), and every `process` span must be a child of, and linked to, the `publish`
/// span of the attempt it served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_load_every_request_is_answered_in_the_end_and_parented_to_its_request() {
    within(
        DEADLINE,
        &format!("core nats load, {N} requests"),
        run_core(),
    )
    .await;
}

async fn run_core() {
    use futures_util::StreamExt;
    use tracelink_nats::{Bytes, NatsDelivery, Requester, ResponderLayer};

    let url = support::url();
    // The responder's reply spans (`publish _INBOX.*`) are not messages of the test.
    let recorder = Recorder::new(message_id).keeping(|span| !span.name.contains("_INBOX"));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(recorder.clone())
        .build();
    let instrumentation = Instrumentation::builder(tracelink_nats::messaging_system(&url))
        .with_tracer_provider(&provider)
        .with_propagator(TraceContextPropagator::new())
        .build();
    let connect = || {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .connect(url.clone())
    };
    let responder_client = connect().await.unwrap();
    let requester_client = connect().await.unwrap();
    let subject = support::unique("load");

    let fail_first = Arc::new(failing_first_attempts(N, 0x636f_7265));
    let expected_failures = fail_first.iter().filter(|f| **f).count();
    let attempts: Arc<Vec<AtomicU32>> = Arc::new((0..N).map(|_| AtomicU32::new(0)).collect());
    let successes: Arc<Vec<AtomicU32>> = Arc::new((0..N).map(|_| AtomicU32::new(0)).collect());
    let layer = ResponderLayer::new(responder_client.clone(), &instrumentation);
    let handler = layer.layer(service_fn({
        let (fail_first, attempts, successes) =
            (fail_first.clone(), attempts.clone(), successes.clone());
        move |request: NatsDelivery| {
            let i: usize = std::str::from_utf8(&request.message.payload)
                .expect("utf-8 payload")
                .parse()
                .expect("numeric payload");
            let attempt = attempts[i].fetch_add(1, Ordering::SeqCst) + 1;
            let result = if attempt == 1 && fail_first[i] {
                Err(std::io::Error::other("a chosen first attempt fails"))
            } else {
                successes[i].fetch_add(1, Ordering::SeqCst);
                Ok(request.message.payload.clone())
            };
            async move { result }
        }
    }));
    let subscriber = responder_client.subscribe(subject.clone()).await.unwrap();
    // The subscription is in place before the first request.
    support::round_trip(&responder_client).await;
    let responder = tokio::spawn(
        layer
            .consumer(subscriber)
            .run(handler, std::future::pending::<()>()),
    );

    // Per request: the attempts the requester made and the slowest answered one.
    let requester = Requester::new(requester_client.clone()).traced(instrumentation.clone());
    let asked: Vec<(usize, u32, Duration, Vec<String>)> = futures_util::stream::iter(0..N)
        .map(|i| {
            let mut requester = requester.clone();
            let subject = subject.clone();
            async move {
                let mut errors = Vec::new();
                for attempt in 1u32.. {
                    let asked_at = Instant::now();
                    let id = format!("{i}.{attempt}");
                    let result = requester
                        .ready()
                        .await
                        .unwrap()
                        .call(Publish::new(subject.clone(), i.to_string()).with_message_id(&id))
                        .await;
                    match result {
                        Ok(reply) => {
                            assert_eq!(reply.0.payload, Bytes::from(i.to_string()), "reply to {i}");
                            return (i, attempt, asked_at.elapsed(), errors);
                        }
                        Err(err) => {
                            errors.push(format!("{}", tracelink_core::ErrorType::error_type(&err)))
                        }
                    }
                }
                unreachable!()
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    assert!(!responder.is_finished(), "the responder keeps running");

    assert_eq!(asked.len(), N, "every request answered");
    assert_attempts(&fail_first, &attempts, &successes);
    let mut slowest = Duration::ZERO;
    for (i, requester_attempts, elapsed, errors) in &asked {
        // A reply only for a run that succeeded: the requester saw no reply (a timeout) exactly
        // where the handler failed, and asked as often as the handler ran.
        let want = if fail_first[*i] { 2 } else { 1 };
        assert_eq!(*requester_attempts, want, "requests for {i}: {errors:?}");
        assert!(
            errors.iter().all(|e| e == "timed_out"),
            "request {i}: {errors:?}"
        );
        slowest = slowest.max(*elapsed);
    }
    eprintln!("core nats load: slowest answered request {slowest:?} (timeout {REQUEST_TIMEOUT:?})");

    provider.force_flush().unwrap();
    let recorded = recorder.recorded();
    recorded.assert_linked(
        N + expected_failures,
        N + expected_failures,
        expected_failures,
    );
    recorded.assert_parented();
}
