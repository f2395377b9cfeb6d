//! Load (issue 9): `N` messages through the traced producer and the consume loop, with the
//! handler failing 10% of first attempts (chosen by a seeded LCG). Every message must succeed
//! in the end, none is lost, a failed message is nacked back to the queue (never acked before
//! its handler succeeded) and every `process` span links to its producer span.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicQosOptions;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
use opentelemetry_semantic_conventions::attribute as attr;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tracelink_amqp::{messaging_system, AmqpConsumer, AmqpDelivery, AmqpPublisher, Publish};
use tracelink_core::{Instrumentation, ProducerLayer};

use crate::support::*;
use tracelink_testkit::load::{
    assert_attempts, attribute, failing_first_attempts, within, Recorder,
};

/// Messages per run (a debug build handles them in well under the 90 s budget, see
/// docs/RELIABILITY.md).
const N: usize = 100_000;
/// The whole test fails loudly after this.
const DEADLINE: Duration = Duration::from_secs(240);

fn message_id(span: &SpanData) -> String {
    attribute(span, attr::MESSAGING_MESSAGE_ID)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_every_message_succeeds_in_the_end_and_links_to_its_producer() {
    within(DEADLINE, &format!("rabbitmq load, {N} messages"), run()).await;
}

async fn run() {
    let recorder = Recorder::new(message_id);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(recorder.clone())
        .build();
    let instrumentation = Instrumentation::builder(messaging_system(&url()))
        .with_tracer_provider(&provider)
        .with_propagator(TraceContextPropagator::new())
        .build();
    let (_connection, channel, queue) = channel_with_queue("load", FieldTable::default()).await;

    let mut producer = ServiceBuilder::new()
        .layer(ProducerLayer::from(instrumentation.clone()))
        .service(AmqpPublisher::new(channel.clone()));
    for i in 0..N {
        producer
            .ready()
            .await
            .expect("ready")
            .call(
                Publish::to_queue(queue.as_str().into(), i.to_string().into_bytes())
                    .with_properties(
                        BasicProperties::default().with_message_id(i.to_string().into()),
                    ),
            )
            .await
            .expect("publish");
    }

    let fail_first = Arc::new(failing_first_attempts(N, 0x7261_6262_6974));
    let expected_failures = fail_first.iter().filter(|f| **f).count();
    let attempts: Arc<Vec<AtomicU32>> = Arc::new((0..N).map(|_| AtomicU32::new(0)).collect());
    let successes: Arc<Vec<AtomicU32>> = Arc::new((0..N).map(|_| AtomicU32::new(0)).collect());
    // A message redelivered without having been marked redelivered, or a failed message seen
    // again as a first delivery, would mean it was not nacked back (or acked too early).
    let wrong_redelivered = Arc::new(AtomicUsize::new(0));
    let distinct = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (fail_first, attempts, successes, wrong_redelivered, distinct, done) = (
            fail_first.clone(),
            attempts.clone(),
            successes.clone(),
            wrong_redelivered.clone(),
            distinct.clone(),
            done.clone(),
        );
        service_fn(move |delivery: AmqpDelivery| {
            let i: usize = std::str::from_utf8(delivery.data())
                .expect("utf-8 body")
                .parse()
                .expect("numeric body");
            let attempt = attempts[i].fetch_add(1, Ordering::SeqCst) + 1;
            if delivery.redelivered() != (attempt > 1) {
                wrong_redelivered.fetch_add(1, Ordering::SeqCst);
            }
            let result = if attempt == 1 && fail_first[i] {
                Err(std::io::Error::other("a chosen first attempt fails"))
            } else {
                if successes[i].fetch_add(1, Ordering::SeqCst) == 0
                    && distinct.fetch_add(1, Ordering::SeqCst) + 1 == N
                {
                    done.notify_one();
                }
                Ok(())
            };
            async move { result }
        })
    };
    channel
        .basic_qos(500, BasicQosOptions::default())
        .await
        .expect("qos");
    let consumer = consume(&channel, &queue).await;
    let signal = {
        let done = done.clone();
        async move { done.notified().await }
    };
    AmqpConsumer::new(consumer, instrumentation.clone())
        .with_concurrency(32)
        .run(handler, signal)
        .await
        .expect("the loop ends without error");

    // Every message succeeded once; a failed first attempt was redelivered (so it had been
    // nacked, not acked) and succeeded on its second; nothing was delivered without cause.
    assert_eq!(
        distinct.load(Ordering::SeqCst),
        N,
        "every message succeeded"
    );
    assert_attempts(&fail_first, &attempts, &successes);
    assert_eq!(
        wrong_redelivered.load(Ordering::SeqCst),
        0,
        "redelivered flags"
    );
    // Closing the channel returns anything unacked to the queue: it must stay empty.
    channel.close(200, "done".into()).await.expect("close");
    let (_check_connection, check, _) =
        channel_with_queue("load-check", FieldTable::default()).await;
    assert_eq!(
        ready_count(&check, &queue).await,
        0,
        "every message was acked"
    );

    provider.force_flush().expect("flush");
    recorder
        .recorded()
        .assert_linked(N, N + expected_failures, expected_failures);
}
