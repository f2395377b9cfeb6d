//! The consume lifecycle on Kafka: settle spans (`commit`, `seek`), the partition rewound to a
//! failed message (it and the messages after it come again, in order, nothing lost), batches
//! rewound to their first message, and a graceful shutdown that settles the running handler.
//! (`OnFailure::Stop` returning the handler's error, with the message delivered again to a new
//! consumer, is `handler_failure_then_restart_redelivers` in `tests/kafka.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::Value;
use opentelemetry_semantic_conventions::attribute as attr;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Offset;
use tokio::sync::{mpsc, oneshot, Notify};
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::{BatchConfig, ConsumeError, OnFailure};
use tracelink_kafka::{KafkaConsumer, KafkaMessage, KafkaPublisher, KafkaRecord};

use support::{attr, unique, Backend, Telemetry, TEST_TIMEOUT};

fn text(message: &KafkaMessage) -> String {
    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned()
}

async fn publish(backend: &Backend, topic: &str, payloads: &[&str]) {
    let mut publisher = KafkaPublisher::new(backend.producer());
    for payload in payloads {
        publisher
            .ready()
            .await
            .unwrap()
            .call(KafkaRecord::new(topic).with_payload(*payload))
            .await
            .expect("publish");
    }
}

/// Runs `consume` with `handler` (which fails when it returns `Err`) until `n` handler calls
/// finished; returns the payloads in the order the handler saw them.
async fn run_calls<H, Fut>(
    consume: KafkaConsumer,
    n: usize,
    mut handler: H,
) -> (Vec<String>, Result<(), ConsumeError<std::io::Error>>)
where
    H: FnMut(KafkaMessage) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), std::io::Error>> + Send + 'static,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<()>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let recorded = seen.clone();
    let counted = service_fn(move |message: KafkaMessage| {
        recorded.lock().unwrap().push(text(&message));
        let fut = handler(message);
        let seen_tx = seen_tx.clone();
        async move {
            let result = fut.await;
            let _ = seen_tx.send(());
            result
        }
    });
    let watcher = async move {
        for _ in 0..n {
            if seen_rx.recv().await.is_none() {
                return;
            }
        }
        let _ = stop_tx.send(());
    };
    let run = consume.run(counted, async move {
        let _ = stop_rx.await;
    });
    let (result, ()) = tokio::time::timeout(TEST_TIMEOUT, async { tokio::join!(run, watcher) })
        .await
        .expect("the consumer did not finish in time");
    let seen = seen.lock().unwrap().clone();
    (seen, result)
}

/// The group's committed offset of partition 0, as the consumer left it.
fn committed(client: &StreamConsumer, topic: &str) -> Offset {
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition(topic, 0);
    let committed = client
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .find_partition(topic, 0)
        .expect("partition 0")
        .offset()
}

/// Fails each payload of `failing` on its first call only.
fn fail_first(
    failing: &[&str],
) -> impl FnMut(KafkaMessage) -> std::future::Ready<Result<(), std::io::Error>> {
    let failing: Vec<String> = failing.iter().map(|s| s.to_string()).collect();
    let mut failed = Vec::new();
    move |message| {
        let payload = text(&message);
        let result = if failing.contains(&payload) && !failed.contains(&payload) {
            failed.push(payload);
            Err(std::io::Error::other("first attempt fails"))
        } else {
            Ok(())
        };
        std::future::ready(result)
    }
}

both_backends!(settle_spans_commit_success_and_seek_back_to_a_failure);
async fn settle_spans_commit_success_and_seek_back_to_a_failure(backend: Backend) {
    let topic = unique("settle");
    let group = unique("group");
    backend.create_topic(&topic, 1).await;
    publish(&backend, &topic, &["ok", "bad"]).await;
    let telemetry = Telemetry::new();
    let consume = backend
        .consumer(
            &group,
            &topic,
            telemetry.instrumentation(tracelink_core::MessagingSystem::new("kafka")),
        )
        .with_settle_spans();
    let client = Arc::clone(consume.source().consumer());
    let (seen, result) = run_calls(consume, 3, fail_first(&["bad"])).await;
    result.expect("Redeliver keeps consuming");
    assert_eq!(
        seen,
        vec!["ok", "bad", "bad"],
        "the failed message came again"
    );
    assert_eq!(
        committed(&client, &topic),
        Offset::Offset(2),
        "both committed once handled"
    );

    let process = telemetry.named(&format!("process {topic}"));
    let commits = telemetry.named(&format!("commit {topic}"));
    let seeks = telemetry.named(&format!("seek {topic}"));
    assert_eq!(process.len(), 3);
    assert_eq!(commits.len(), 2, "one commit per handled success");
    assert_eq!(seeks.len(), 1, "one seek for the failure");
    for settle in commits.iter().chain(&seeks) {
        assert_eq!(settle.span_kind, SpanKind::Client);
        assert_eq!(
            attr(settle, attr::MESSAGING_OPERATION_TYPE),
            Some(Value::from("settle"))
        );
        let parent = process
            .iter()
            .find(|p| p.span_context.span_id() == settle.parent_span_id)
            .unwrap_or_else(|| panic!("{} is a child of a process span", settle.name));
        assert_eq!(
            parent.span_context.trace_id(),
            settle.span_context.trace_id()
        );
        assert_eq!(
            attr(parent, attr::MESSAGING_KAFKA_OFFSET),
            attr(settle, attr::MESSAGING_KAFKA_OFFSET),
            "settles its own process span's message"
        );
        assert!(
            settle.start_time >= parent.end_time,
            "nothing settled before its handler finished"
        );
    }
    let failed = process
        .iter()
        .find(|p| p.span_context.span_id() == seeks[0].parent_span_id)
        .unwrap();
    assert!(matches!(failed.status, Status::Error { .. }));
    assert_eq!(
        attr(&seeks[0], attr::MESSAGING_OPERATION_NAME),
        Some(Value::from("seek"))
    );
    assert_eq!(
        attr(&commits[0], attr::MESSAGING_OPERATION_NAME),
        Some(Value::from("commit"))
    );
}

/// The partition is rewound to each failed message: it comes again, then the messages after
/// it, in order; none is lost, none handled twice except the failed ones.
async fn rewind(backend: Backend, policy: OnFailure) {
    let topic = unique("rewind");
    let group = unique("group");
    backend.create_topic(&topic, 1).await;
    let payloads: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let payloads: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(&backend, &topic, &payloads).await;
    let telemetry = Telemetry::new();
    let consume = backend
        .consumer(
            &group,
            &topic,
            telemetry.instrumentation(tracelink_core::MessagingSystem::new("kafka")),
        )
        .on_failure(policy);
    let client = Arc::clone(consume.source().consumer());
    let times = Arc::new(Mutex::new(Vec::new()));
    let recorded = times.clone();
    let mut handler = fail_first(&["m3", "m6"]);
    let started = Instant::now();
    let (seen, result) = run_calls(consume, 12, move |m| {
        recorded.lock().unwrap().push((text(&m), started.elapsed()));
        handler(m)
    })
    .await;
    result.expect("the rewinds keep consuming");
    assert_eq!(
        seen,
        vec!["m0", "m1", "m2", "m3", "m3", "m4", "m5", "m6", "m6", "m7", "m8", "m9"]
    );
    assert_eq!(committed(&client, &topic), Offset::Offset(10));
    if let OnFailure::RedeliverAfter(delay) = policy {
        let times = times.lock().unwrap().clone();
        for failed in ["m3", "m6"] {
            let at: Vec<Duration> = times
                .iter()
                .filter(|(p, _)| p == failed)
                .map(|(_, t)| *t)
                .collect();
            assert!(
                at[1] - at[0] >= delay,
                "{failed} came again after the delay"
            );
        }
    }
}

both_backends!(rewind_redelivers_the_failed_message_then_the_rest_in_order);
async fn rewind_redelivers_the_failed_message_then_the_rest_in_order(backend: Backend) {
    rewind(backend, OnFailure::Redeliver).await;
}

both_backends!(rewind_after_a_delay);
async fn rewind_after_a_delay(backend: Backend) {
    rewind(
        backend,
        OnFailure::RedeliverAfter(Duration::from_millis(300)),
    )
    .await;
}

both_backends!(failed_batch_is_rewound_to_its_first_message);
async fn failed_batch_is_rewound_to_its_first_message(backend: Backend) {
    let topic = unique("batch-rewind");
    let group = unique("group");
    backend.create_topic(&topic, 1).await;
    let payloads: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    let payloads: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(&backend, &topic, &payloads).await;
    let telemetry = Telemetry::new();
    let consume = backend
        .consumer(
            &group,
            &topic,
            telemetry.instrumentation(tracelink_core::MessagingSystem::new("kafka")),
        )
        .with_batch(BatchConfig {
            max_messages: 3,
            max_wait: Duration::from_secs(2),
        });
    let client = Arc::clone(consume.source().consumer());
    let batches = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stop_tx = Arc::new(Mutex::new(Some(stop_tx)));
    let recorded = batches.clone();
    let handler = service_fn(move |batch: Vec<KafkaMessage>| {
        let mut batches = recorded.lock().unwrap();
        let texts: Vec<String> = batch.iter().map(text).collect();
        let fail = batches.is_empty();
        batches.push(texts.clone());
        if texts.last().map(String::as_str) == Some("m5") {
            if let Some(tx) = stop_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
        std::future::ready(match fail {
            true => Err(std::io::Error::other("the first batch fails")),
            false => Ok(()),
        })
    });
    tokio::time::timeout(
        TEST_TIMEOUT,
        consume.run_batches(handler, async move {
            let _ = stop_rx.await;
        }),
    )
    .await
    .expect("timed out")
    .expect("Redeliver keeps consuming");
    let batches = batches.lock().unwrap().clone();
    assert_eq!(batches[0], vec!["m0", "m1", "m2"]);
    assert_eq!(
        batches[1..].concat(),
        vec!["m0", "m1", "m2", "m3", "m4", "m5"],
        "the whole failed batch came again, then the rest"
    );
    assert_eq!(committed(&client, &topic), Offset::Offset(6));
}

both_backends!(shutdown_lets_the_running_handler_finish_and_commits_it);
async fn shutdown_lets_the_running_handler_finish_and_commits_it(backend: Backend) {
    let topic = unique("shutdown");
    let group = unique("group");
    backend.create_topic(&topic, 1).await;
    publish(&backend, &topic, &["m0", "m1", "m2"]).await;
    let telemetry = Telemetry::new();
    let instr = telemetry.instrumentation(tracelink_core::MessagingSystem::new("kafka"));
    let consume = backend
        .consumer(&group, &topic, instr.clone())
        .with_settle_spans();
    let client = Arc::clone(consume.source().consumer());
    let started = Arc::new(Notify::new());
    let handled = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (started, handled) = (started.clone(), handled.clone());
        service_fn(move |m: KafkaMessage| {
            let (started, handled) = (started.clone(), handled.clone());
            async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(500)).await;
                handled.lock().unwrap().push(text(&m));
                Ok::<_, std::io::Error>(())
            }
        })
    };
    let shutdown = {
        let started = started.clone();
        async move { started.notified().await }
    };
    tokio::time::timeout(TEST_TIMEOUT, consume.run(handler, shutdown))
        .await
        .expect("timed out")
        .expect("a shutdown returns Ok");
    assert_eq!(
        *handled.lock().unwrap(),
        vec!["m0"],
        "the running handler finished"
    );
    assert_eq!(
        committed(&client, &topic),
        Offset::Offset(1),
        "its message was committed"
    );
    assert_eq!(telemetry.named(&format!("commit {topic}")).len(), 1);
    drop(client);

    // The messages never handled come to the next consumer of the group.
    let consume = backend.consumer(&group, &topic, instr);
    let (seen, result) = run_calls(consume, 2, |_| std::future::ready(Ok(()))).await;
    result.expect("second consumer");
    assert_eq!(seen, vec!["m1", "m2"]);
}
