//! JetStream: publish acknowledgement, pull consumption, nak and redelivery, batches.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use opentelemetry::trace::{SpanId, SpanKind, Status};
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::{BatchConfig, OnFailure};
use tracelink_nats::{
    JetStreamConsumer, JetStreamDelivery, JetStreamPublisher, JetStreamSource, Publish,
};

use crate::support::{self, assert_kind, attributes, until, Telemetry};

pub(crate) async fn setup(
    client: async_nats::Client,
    ack_wait: Duration,
) -> (
    jetstream::Context,
    String,
    String,
    jetstream::consumer::PullConsumer,
) {
    let js = jetstream::new(client);
    let name = support::unique("STREAM");
    let subject = format!("{}.events", name.to_lowercase());
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("workers".into()),
            ack_wait,
            ..Default::default()
        })
        .await
        .unwrap();
    (js, name, subject, consumer)
}

/// Waits until the server saw the acks (they are not confirmed) of messages 1..=`last`, with
/// nothing pending.
pub(crate) async fn assert_all_acked(consumer: &jetstream::consumer::PullConsumer, last: u64) {
    let mut consumer = consumer.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = consumer.info().await.unwrap().clone();
        if (
            info.ack_floor.stream_sequence,
            info.num_ack_pending,
            info.num_pending,
        ) == (last, 0, 0)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all acked: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn publish_ack_and_pull_consumption() {
    let url = support::url();
    let telemetry = Telemetry::new();
    let instrumentation = telemetry.instrumentation(&url);
    let (js, stream, subject, consumer) =
        setup(support::connect().await, Duration::from_secs(30)).await;

    let mut publisher = JetStreamPublisher::new(js.clone()).traced(instrumentation.clone());
    let ack = publisher
        .ready()
        .await
        .unwrap()
        .call(Publish::new(subject.as_str(), "stored").with_message_id("msg-1"))
        .await
        .unwrap();
    assert_eq!(ack.0.stream, stream);
    assert_eq!(ack.0.sequence, 1);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = service_fn({
        let seen = seen.clone();
        move |delivery: JetStreamDelivery| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push((delivery.stream_sequence(), delivery.delivered()));
                Ok::<_, std::io::Error>(())
            }
        }
    });
    let source = JetStreamSource::new(consumer.clone()).with_expires(Duration::from_secs(2));
    JetStreamConsumer::new(source, instrumentation)
        .run(handler, until(|| !seen.lock().unwrap().is_empty()))
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![(Some(1), Some(1))]);

    let producer = telemetry
        .wait_for(&format!("publish {subject}"), 1)
        .await
        .remove(0);
    let receive = telemetry
        .wait_for(&format!("receive {stream}"), 1)
        .await
        .remove(0);
    let process = telemetry
        .wait_for(&format!("process {subject}"), 1)
        .await
        .remove(0);
    assert_kind(&producer, SpanKind::Producer);
    assert_kind(&receive, SpanKind::Client);
    assert_kind(&process, SpanKind::Consumer);
    assert_eq!(attributes(&producer)["messaging.message.id"], "msg-1");

    let process_attributes = attributes(&process);
    assert_eq!(process_attributes["messaging.message.id"], "msg-1");
    assert_eq!(
        process_attributes["messaging.destination.subscription.name"],
        "workers"
    );
    assert_eq!(process_attributes[tracelink_nats::DELIVERY_COUNT], "1");
    assert_eq!(process_attributes["messaging.destination.name"], subject);
    assert_eq!(process.parent_span_id, SpanId::INVALID, "a new trace");
    assert_ne!(
        process.span_context.trace_id(),
        producer.span_context.trace_id()
    );
    assert_eq!(process.links.links.len(), 1);
    assert_eq!(
        process.links.links[0].span_context.span_id(),
        producer.span_context.span_id()
    );
    assert_eq!(receive.links.links.len(), 1);
    assert_eq!(
        receive.links.links[0].span_context.span_id(),
        producer.span_context.span_id()
    );
    assert_eq!(attributes(&receive)["messaging.operation.type"], "receive");

    // Acked: nothing left.
    assert_all_acked(&consumer, 1).await;
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn failed_handler_is_naked_and_redelivered_nothing_lost() {
    let url = support::url();
    let telemetry = Telemetry::new();
    let instrumentation = telemetry.instrumentation(&url);
    let (js, stream, subject, consumer) =
        setup(support::connect().await, Duration::from_secs(30)).await;
    const COUNT: u64 = 5;
    let mut publisher = JetStreamPublisher::new(js.clone()).traced(instrumentation.clone());
    for i in 0..COUNT {
        publisher
            .ready()
            .await
            .unwrap()
            .call(Publish::new(subject.as_str(), format!("job {i}")))
            .await
            .unwrap();
    }

    // The first delivery of every message fails; the second succeeds.
    let succeeded = Arc::new(Mutex::new(Vec::new()));
    let handler = service_fn({
        let succeeded = succeeded.clone();
        move |delivery: JetStreamDelivery| {
            let succeeded = succeeded.clone();
            async move {
                if delivery.delivered() == Some(1) {
                    return Err(std::io::Error::other("first attempt fails"));
                }
                succeeded
                    .lock()
                    .unwrap()
                    .push(delivery.stream_sequence().unwrap());
                Ok(())
            }
        }
    });
    let source = JetStreamSource::new(consumer.clone()).with_expires(Duration::from_secs(2));
    tokio::time::timeout(
        Duration::from_secs(30),
        JetStreamConsumer::new(source, instrumentation)
            .on_failure(OnFailure::RedeliverAfter(Duration::from_millis(50)))
            .run(
                handler,
                until(|| succeeded.lock().unwrap().len() as u64 == COUNT),
            ),
    )
    .await
    .expect("every message succeeds in time")
    .unwrap();
    let mut done = succeeded.lock().unwrap().clone();
    done.sort();
    assert_eq!(
        done,
        (1..=COUNT).collect::<Vec<_>>(),
        "every message handled once it succeeded"
    );

    let spans = telemetry
        .wait_for(&format!("process {subject}"), 2 * COUNT as usize)
        .await;
    let failed: Vec<_> = spans
        .iter()
        .filter(|s| matches!(s.status, Status::Error { .. }))
        .collect();
    assert_eq!(failed.len(), COUNT as usize);
    for span in &failed {
        let a = attributes(span);
        assert_eq!(a[tracelink_nats::DELIVERY_COUNT], "1");
        assert_eq!(a["error.type"], "Other");
    }
    for span in spans
        .iter()
        .filter(|s| !matches!(s.status, Status::Error { .. }))
    {
        assert_eq!(attributes(span)[tracelink_nats::DELIVERY_COUNT], "2");
    }
    assert_all_acked(&consumer, COUNT).await;
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn batch_mode_has_one_span_with_a_link_per_message() {
    let url = support::url();
    let telemetry = Telemetry::new();
    let instrumentation = telemetry.instrumentation(&url);
    let (js, stream, subject, consumer) =
        setup(support::connect().await, Duration::from_secs(30)).await;
    const COUNT: usize = 4;
    let mut publisher = JetStreamPublisher::new(js.clone()).traced(instrumentation.clone());
    for i in 0..COUNT {
        publisher
            .ready()
            .await
            .unwrap()
            .call(Publish::new(subject.as_str(), format!("job {i}")))
            .await
            .unwrap();
    }
    let batches = Arc::new(Mutex::new(Vec::new()));
    let handler = service_fn({
        let batches = batches.clone();
        move |batch: Vec<JetStreamDelivery>| {
            batches.lock().unwrap().push(batch.len());
            async move { Ok::<_, std::io::Error>(()) }
        }
    });
    let source = JetStreamSource::new(consumer.clone()).with_expires(Duration::from_secs(2));
    JetStreamConsumer::new(source, instrumentation)
        .with_batch(BatchConfig {
            max_messages: 10,
            max_wait: Duration::from_millis(300),
        })
        .run_batches(handler, until(|| !batches.lock().unwrap().is_empty()))
        .await
        .unwrap();
    assert_eq!(*batches.lock().unwrap(), vec![COUNT]);

    let producers = telemetry
        .wait_for(&format!("publish {subject}"), COUNT)
        .await;
    let process = telemetry
        .wait_for(&format!("process {subject}"), 1)
        .await
        .remove(0);
    assert_kind(&process, SpanKind::Consumer);
    assert_eq!(
        attributes(&process)["messaging.batch.message_count"],
        COUNT.to_string()
    );
    let mut linked: Vec<_> = process
        .links
        .links
        .iter()
        .map(|l| l.span_context.span_id().to_string())
        .collect();
    let mut published: Vec<_> = producers
        .iter()
        .map(|s| s.span_context.span_id().to_string())
        .collect();
    linked.sort();
    published.sort();
    assert_eq!(linked, published);

    assert_all_acked(&consumer, COUNT as u64).await;
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn empty_fetch_records_no_receive_span() {
    let url = support::url();
    let telemetry = Telemetry::new();
    let instrumentation = telemetry.instrumentation(&url);
    let (js, stream, _subject, consumer) =
        setup(support::connect().await, Duration::from_secs(30)).await;
    let handler = service_fn(|_: JetStreamDelivery| async { Ok::<_, std::io::Error>(()) });
    let source = JetStreamSource::new(consumer).with_expires(Duration::from_millis(300));
    // Two or three empty fetches.
    JetStreamConsumer::new(source, instrumentation)
        .run(handler, tokio::time::sleep(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(
        !telemetry
            .names()
            .iter()
            .any(|n| n == &format!("receive {stream}")),
        "{:?}",
        telemetry.names()
    );
    js.delete_stream(&stream).await.unwrap();
}
