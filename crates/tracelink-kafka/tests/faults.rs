//! Broker faults against librdkafka's mock cluster: a broker goes down while a handler holds a
//! message and comes back. Nothing is lost and no offset is committed before its handler
//! succeeded. (The consumer stopping mid-handler with a new one taking over in the same group
//! is `handler_failure_then_restart_redelivers` in `tests/kafka.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::{ConsumeError, OnFailure};
use tracelink_core::{DefaultErrorType, ProducerService};
use tracelink_kafka::{KafkaMessage, KafkaPublisher, KafkaRecord};

use support::{unique, Backend, Telemetry, TEST_TIMEOUT};

fn text(message: &KafkaMessage) -> String {
    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned()
}

async fn publish(
    producer: &mut ProducerService<KafkaPublisher, DefaultErrorType>,
    topic: &str,
    payload: String,
) {
    producer
        .ready()
        .await
        .unwrap()
        .call(KafkaRecord::new(topic).with_payload(payload))
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_broker_down_and_up_loses_nothing_and_commits_nothing_early() {
    let backend = Backend::mock();
    let Backend::Mock(cluster) = &backend else {
        unreachable!()
    };
    let topic = unique("broker-down");
    let group = unique("group");
    backend.create_topic(&topic, 1).await;
    let telemetry = Telemetry::new();
    let mut producer = KafkaPublisher::new(backend.producer())
        .traced(telemetry.producer_instrumentation(&backend));
    for i in 0..10 {
        publish(&mut producer, &topic, format!("m{i}")).await;
    }
    let instr = telemetry.instrumentation(tracelink_core::MessagingSystem::new("kafka"));

    // First consumer: m5's handler is held while the broker goes down, then fails.
    let succeeded = Arc::new(Mutex::new(BTreeSet::new()));
    let held = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let consume = backend
        .consumer(&group, &topic, instr.clone())
        .on_failure(OnFailure::Stop);
    let handler = {
        let (succeeded, held, release) = (succeeded.clone(), held.clone(), release.clone());
        service_fn(move |m: KafkaMessage| {
            let payload = text(&m);
            let (succeeded, held, release) = (succeeded.clone(), held.clone(), release.clone());
            async move {
                if payload == "m5" {
                    held.notify_one();
                    release.notified().await;
                    return Err(std::io::Error::other("m5 fails while the broker is down"));
                }
                succeeded.lock().unwrap().insert(payload);
                Ok(())
            }
        })
    };
    let first =
        tokio::spawn(async move { consume.run(handler, std::future::pending::<()>()).await });
    tokio::time::timeout(TEST_TIMEOUT, held.notified())
        .await
        .expect("m5 reached its handler");
    cluster.broker_down(-1).expect("broker down");
    // A publish while the broker is down waits for it (message.timeout.ms is 10 s).
    let (published_tx, published_rx) = oneshot::channel();
    let late = {
        let topic = topic.clone();
        let mut producer = KafkaPublisher::new(backend.producer())
            .traced(telemetry.producer_instrumentation(&backend));
        tokio::spawn(async move {
            for i in 10..13 {
                publish(&mut producer, &topic, format!("m{i}")).await;
            }
            let _ = published_tx.send(());
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    release.notify_one();
    // The consumer stops on m5's failure (`OnFailure::Stop`); its closing commit waits for the
    // broker.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.broker_up(-1).expect("broker up");
    let result = tokio::time::timeout(TEST_TIMEOUT, first)
        .await
        .expect("the first consumer stops")
        .unwrap();
    match result {
        Err(ConsumeError::Handler(_)) => {}
        other => panic!("expected m5's failure, got {other:?}"),
    }
    tokio::time::timeout(TEST_TIMEOUT, published_rx)
        .await
        .expect("publishes made while the broker was down complete once it is back")
        .unwrap();
    late.await.unwrap();
    assert_eq!(
        *succeeded.lock().unwrap(),
        (0..5).map(|i| format!("m{i}")).collect::<BTreeSet<_>>(),
        "nothing after the held message ran"
    );

    // A second consumer in the same group starts at or before m5 (nothing was committed past
    // a message whose handler had not succeeded) and gets everything up to m12.
    let consume = backend.consumer(&group, &topic, instr);
    let offsets = Arc::new(Mutex::new(Vec::new()));
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<String>();
    let handler = {
        let (offsets, succeeded) = (offsets.clone(), succeeded.clone());
        service_fn(move |m: KafkaMessage| {
            offsets.lock().unwrap().push(m.offset());
            succeeded.lock().unwrap().insert(text(&m));
            let _ = seen_tx.send(text(&m));
            async { Ok::<_, std::io::Error>(()) }
        })
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let watcher = async move {
        while let Some(payload) = seen_rx.recv().await {
            if payload == "m12" {
                break;
            }
        }
        let _ = stop_tx.send(());
    };
    let run = consume.run(handler, async move {
        let _ = stop_rx.await;
    });
    let (result, ()) = tokio::time::timeout(TEST_TIMEOUT, async { tokio::join!(run, watcher) })
        .await
        .expect("the second loop reached m12");
    result.expect("second loop");
    let offsets = offsets.lock().unwrap().clone();
    assert!(
        offsets.first().is_some_and(|&o| o <= 5),
        "the second consumer resumed at or before the failed message: {offsets:?}"
    );
    assert_eq!(
        *succeeded.lock().unwrap(),
        (0..13).map(|i| format!("m{i}")).collect::<BTreeSet<_>>(),
        "no message lost"
    );
    // Each message was processed under its own process span linked to its send span.
    let sends = telemetry.named(&format!("send {topic}"));
    assert_eq!(sends.len(), 13);
    let processes = telemetry.named(&format!("process {topic}"));
    for process in &processes {
        assert_eq!(process.links.len(), 1, "{:?}", process.attributes);
        let link = &process.links.links[0].span_context;
        assert!(sends
            .iter()
            .any(|s| s.span_context.span_id() == link.span_id()));
    }
}
