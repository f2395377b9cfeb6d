//! Load (issue 9) against librdkafka's mock cluster and against tansu: `N` records through the
//! traced producer and the consume loop, with the handler failing 10% of first attempts (chosen by a seeded
//! LCG). The consumer's default failure policy is `OnFailure::Redeliver` (the partition is
//! rewound to the failed record), and the adapter documents retries as a `tower::retry::Retry` in the
//! handler stack: that is what this test uses, so a failed first attempt is retried inside its
//! `process` span (which then covers both attempts) and the loop never stops. It asserts that
//! every record succeeds in the end, none is lost, no offset is committed past a record whose
//! handler has not succeeded yet (sampled while failing attempts run) and every offset is
//! committed at the end, and that every `process` span links to its producer span.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
use opentelemetry_semantic_conventions::attribute as attr;
use rdkafka::consumer::Consumer;
use rdkafka::Offset;
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::{Instrumentation, MessagingSystem};
use tracelink_kafka::{
    consumer_config, messaging_system, KafkaConsumer, KafkaMessage, KafkaPublisher, KafkaRecord,
    KafkaSource,
};

use support::{unique, Backend};
use tracelink_testkit::load::{
    assert_attempts, attribute, failing_first_attempts, within, Recorder,
};

/// Records per run, on either broker (see docs/RELIABILITY.md for the time a debug build takes).
const N: usize = 100_000;
/// Partitions of the topic: the loop handles partitions concurrently.
const PARTITIONS: i32 = 4;
/// The whole test fails loudly after this.
const DEADLINE: Duration = Duration::from_secs(240);

fn message_id(span: &SpanData) -> String {
    format!(
        "{}/{}",
        attribute(span, attr::MESSAGING_DESTINATION_PARTITION_ID),
        attribute(span, attr::MESSAGING_KAFKA_OFFSET)
    )
}

/// Retries a failed message once (the test's handler fails only first attempts).
#[derive(Clone)]
struct RetryOnce;

impl<E> tower::retry::Policy<KafkaMessage, (), E> for RetryOnce {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut KafkaMessage, result: &mut Result<(), E>) -> Option<Self::Future> {
        result.is_err().then(|| std::future::ready(()))
    }

    fn clone_request(&mut self, message: &KafkaMessage) -> Option<KafkaMessage> {
        Some(message.clone())
    }
}

both_backends!(load_every_record_succeeds_in_the_end_and_links_to_its_producer);

async fn load_every_record_succeeds_in_the_end_and_links_to_its_producer(backend: Backend) {
    let name = match backend {
        Backend::Mock(_) => "mock cluster",
        Backend::Tansu(_) => "tansu",
    };
    let what = format!("kafka ({name}) load, {N} records");
    within(DEADLINE, &what, run(backend, name, N)).await;
}

async fn run(backend: Backend, name: &str, n: usize) {
    let topic = unique("load");
    let group = unique("load-group");
    backend.create_topic(&topic, PARTITIONS).await;
    let recorder = Recorder::new(message_id);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(recorder.clone())
        .build();
    let instrumentation = |system: MessagingSystem| {
        Instrumentation::builder(system)
            .with_tracer_provider(&provider)
            .with_propagator(TraceContextPropagator::new())
            .build()
    };

    // Sends run concurrently (up to 1000 in flight): one at a time, each would wait out
    // librdkafka's linger.
    let producer = KafkaPublisher::new(backend.producer()).traced(instrumentation(
        messaging_system(&backend.producer_config()),
    ));
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..n {
        if sends.len() >= 1000 {
            sends.join_next().await.unwrap().unwrap();
        }
        let mut producer = producer.clone();
        let record = KafkaRecord::new(&topic).with_payload(i.to_string());
        sends.spawn(async move {
            producer
                .ready()
                .await
                .unwrap()
                .call(record)
                .await
                .unwrap_or_else(|e| panic!("publish {i}: {e:?}"));
        });
    }
    while let Some(sent) = sends.join_next().await {
        sent.unwrap();
    }

    let fail_first = Arc::new(failing_first_attempts(n, 0x006b_6166_6b61));
    let expected_failures = fail_first.iter().filter(|f| **f).count();
    let attempts: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    let successes: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    let distinct = Arc::new(AtomicUsize::new(0));
    let early_commits = Arc::new(Mutex::new(Vec::new()));
    let commit_checks = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    // As `Backend::consumer`, with auto-commit every 100 ms so that offsets are committed
    // while the test runs and the sampled check below compares against real commits.
    let mut config = consumer_config(&backend.brokers(), &group);
    config
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("auto.commit.interval.ms", "100")
        .set("client.id", "tracelink-test");
    let source = KafkaSource::from_config(&config).expect("consumer");
    source.consumer().subscribe(&[&topic]).expect("subscribe");
    let client = Arc::clone(source.consumer());
    let consume = KafkaConsumer::new(source, instrumentation(MessagingSystem::new("kafka")));
    let real_commits_seen = Arc::new(AtomicUsize::new(0));
    let flaky = {
        let (fail_first, attempts, successes, distinct, done) = (
            fail_first.clone(),
            attempts.clone(),
            successes.clone(),
            distinct.clone(),
            done.clone(),
        );
        let (client, early_commits, commit_checks, real_commits_seen) = (
            client.clone(),
            early_commits.clone(),
            commit_checks.clone(),
            real_commits_seen.clone(),
        );
        service_fn(move |message: KafkaMessage| {
            let i: usize = std::str::from_utf8(message.payload().unwrap_or_default())
                .expect("utf-8 payload")
                .parse()
                .expect("numeric payload");
            let attempt = attempts[i].fetch_add(1, Ordering::SeqCst) + 1;
            let result = if attempt == 1 && fail_first[i] {
                // Sampled (it is a broker round trip): while this record has not succeeded,
                // its partition's committed offset must not be past it.
                if commit_checks
                    .fetch_add(1, Ordering::SeqCst)
                    .is_multiple_of(50)
                {
                    let committed = tokio::task::block_in_place(|| {
                        client
                            .committed(Duration::from_secs(10))
                            .expect("committed offsets")
                    });
                    let element = committed
                        .find_partition(message.topic(), message.partition())
                        .expect("an assigned partition");
                    if let Offset::Offset(offset) = element.offset() {
                        real_commits_seen.fetch_add(1, Ordering::SeqCst);
                        if offset > message.offset() {
                            early_commits.lock().unwrap().push((i, offset));
                        }
                    }
                }
                Err(std::io::Error::other("a chosen first attempt fails"))
            } else {
                if successes[i].fetch_add(1, Ordering::SeqCst) == 0
                    && distinct.fetch_add(1, Ordering::SeqCst) + 1 == n
                {
                    done.notify_one();
                }
                Ok(())
            };
            std::future::ready(result)
        })
    };
    let handler = tower::retry::Retry::new(RetryOnce, flaky);
    let signal = {
        let done = done.clone();
        async move { done.notified().await }
    };
    consume
        .run(handler, signal)
        .await
        .expect("every record succeeds after its retry, so the loop does not stop");

    assert_eq!(distinct.load(Ordering::SeqCst), n, "every record succeeded");
    assert_attempts(&fail_first, &attempts, &successes);
    let total: u32 = attempts.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    assert_eq!(total as usize, n + expected_failures, "attempts in all");
    eprintln!(
        "kafka ({name}) load: {} failing first attempts, {} of them checked against a real commit",
        commit_checks.load(Ordering::SeqCst),
        real_commits_seen.load(Ordering::SeqCst)
    );
    assert!(
        real_commits_seen.load(Ordering::SeqCst) > 0,
        "committed offsets were checked against real commits ({} checks)",
        commit_checks.load(Ordering::SeqCst)
    );
    assert_eq!(
        *early_commits.lock().unwrap(),
        vec![],
        "committed before success"
    );
    // The loop commits stored offsets when it stops: every partition is committed to its end.
    let committed = tokio::task::block_in_place(|| {
        client
            .committed(Duration::from_secs(10))
            .expect("committed offsets")
    });
    // Each partition's end, from the producer's delivery reports (one past the highest offset
    // a send was acknowledged at). tansu 0.6.0 reports a wrong high watermark (the base offset
    // of the partition's last record batch plus one, not its last offset plus one: see
    // docs/RELIABILITY.md), so the broker's watermark is compared only on the mock cluster.
    let mut ends = vec![0i64; PARTITIONS as usize];
    for key in recorder.recorded().producers.keys() {
        let (partition, offset) = key.split_once('/').expect("partition/offset");
        let partition: usize = partition.parse().expect("partition");
        let offset: i64 = offset.parse().expect("offset");
        ends[partition] = ends[partition].max(offset + 1);
    }
    assert_eq!(
        ends.iter().sum::<i64>(),
        n as i64,
        "every partition holds exactly the records sent to it, from offset 0"
    );
    for partition in 0..PARTITIONS {
        let element = committed
            .find_partition(&topic, partition)
            .expect("an assigned partition");
        assert_eq!(
            element.offset(),
            Offset::Offset(ends[partition as usize]),
            "partition {partition} committed to its end"
        );
        if let Backend::Mock(_) = backend {
            let (_, high) = client
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .expect("watermarks");
            assert_eq!(
                high, ends[partition as usize],
                "partition {partition}: high watermark"
            );
        }
    }

    provider.force_flush().unwrap();
    recorder.recorded().assert_linked(n, n, 0);
}
