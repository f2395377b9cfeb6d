//! The Kafka adapter against real Kafka protocol implementations: librdkafka's mock cluster and
//! tansu (`KAFKA_BROKERS`). Every test runs against both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceId, Tracer, TracerProvider,
};
use opentelemetry::{Context, Value};
use opentelemetry_semantic_conventions::attribute as attr;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tokio::sync::{mpsc, oneshot};
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::ErrorType;
use tracelink_core::{BatchConfig, ConsumeError, OnFailure};
use tracelink_kafka::{KafkaConsumer, KafkaMessage, KafkaPublisher, KafkaRecord};

use support::{assert_kind, attr, unique, Backend, Telemetry, TEST_TIMEOUT};

/// Runs `consume` with `handler` until `n` messages reached the handler, or the loop stopped.
async fn run_until<H, Fut, E>(
    consume: KafkaConsumer,
    n: usize,
    mut handler: H,
) -> Result<(), ConsumeError<E>>
where
    H: FnMut(KafkaMessage) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: ErrorType,
{
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<()>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let counted = service_fn(move |message: KafkaMessage| {
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
        .expect("the consume loop did not finish in time");
    result
}

/// Trace and span id: a link's copy of a context is remote, the exported span's is not.
fn ids(cx: &SpanContext) -> (TraceId, SpanId) {
    (cx.trace_id(), cx.span_id())
}

fn text(message: &KafkaMessage) -> String {
    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned()
}

fn header(message: &KafkaMessage, key: &str) -> Option<Vec<u8>> {
    let headers = rdkafka::Message::headers(message.message())?;
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value.map(<[u8]>::to_vec))
}

both_backends!(round_trip_links_consumer_to_producer);
async fn round_trip_links_consumer_to_producer(backend: Backend) {
    let topic = unique("round-trip");
    let group = unique("group");
    backend.create_topic(&topic, 1).await;
    let telemetry = Telemetry::new();
    let delivered = KafkaPublisher::new(backend.producer())
        .traced(telemetry.producer_instrumentation(&backend))
        .oneshot(
            KafkaRecord::new(&topic)
                .with_key("order-1")
                .with_payload("hello")
                .with_header("user-id", "42"),
        )
        .await
        .expect("publish");
    assert_eq!((delivered.partition, delivered.offset), (0, 0));

    let consumer_instr = telemetry.instrumentation(
        tracelink_core::MessagingSystem::new("kafka").with_client_id("tracelink-test"),
    );
    let consume = backend.consumer(&group, &topic, consumer_instr);
    let tracer = telemetry.provider.tracer("handler");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    run_until(consume, 1, move |message| {
        let process = Context::current().span().span_context().clone();
        let _child = tracer.start("handler work");
        seen2.lock().unwrap().push((
            process,
            text(&message),
            header(&message, "user-id"),
            header(&message, "traceparent").is_some(),
        ));
        async { Ok::<_, std::io::Error>(()) }
    })
    .await
    .expect("consume");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (process_cx, payload, user_header, has_traceparent) = seen[0].clone();
    assert_eq!(payload, "hello");
    assert_eq!(
        user_header.as_deref(),
        Some(&b"42"[..]),
        "user headers are kept"
    );
    assert!(has_traceparent);

    let send = telemetry.named(&format!("send {topic}"));
    assert_eq!(send.len(), 1);
    let send = &send[0];
    assert_kind(send, SpanKind::Producer);
    let (host, port) = backend
        .brokers()
        .split(',')
        .next()
        .and_then(|s| {
            s.rsplit_once(':')
                .map(|(h, p)| (h.to_owned(), p.parse::<i64>().unwrap()))
        })
        .unwrap();
    for (key, value) in [
        (attr::MESSAGING_SYSTEM, Value::from("kafka")),
        (attr::MESSAGING_OPERATION_TYPE, Value::from("send")),
        (attr::MESSAGING_OPERATION_NAME, Value::from("send")),
        (attr::MESSAGING_DESTINATION_NAME, Value::from(topic.clone())),
        (attr::MESSAGING_DESTINATION_PARTITION_ID, Value::from("0")),
        (attr::MESSAGING_KAFKA_OFFSET, Value::from(0_i64)),
        (attr::MESSAGING_KAFKA_MESSAGE_KEY, Value::from("order-1")),
        (attr::MESSAGING_CLIENT_ID, Value::from("tracelink-test")),
        (attr::MESSAGING_MESSAGE_BODY_SIZE, Value::from(5_i64)),
        (attr::SERVER_ADDRESS, Value::from(host)),
        (attr::SERVER_PORT, Value::from(port)),
    ] {
        assert_eq!(attr(send, key), Some(value), "send span attribute {key}");
    }
    assert_eq!(attr(send, attr::MESSAGING_KAFKA_MESSAGE_TOMBSTONE), None);

    let process = telemetry.named(&format!("process {topic}"));
    assert_eq!(process.len(), 1);
    let process = &process[0];
    assert_kind(process, SpanKind::Consumer);
    assert_eq!(process.span_context.span_id(), process_cx.span_id());
    assert_ne!(
        process.span_context.trace_id(),
        send.span_context.trace_id(),
        "a new trace"
    );
    assert_eq!(process.parent_span_id, SpanId::INVALID);
    let links: Vec<_> = process.links.iter().map(|l| ids(&l.span_context)).collect();
    assert_eq!(links, vec![ids(&send.span_context)]);
    for (key, value) in [
        (attr::MESSAGING_SYSTEM, Value::from("kafka")),
        (attr::MESSAGING_OPERATION_TYPE, Value::from("process")),
        (attr::MESSAGING_DESTINATION_NAME, Value::from(topic.clone())),
        (
            attr::MESSAGING_CONSUMER_GROUP_NAME,
            Value::from(group.clone()),
        ),
        (attr::MESSAGING_DESTINATION_PARTITION_ID, Value::from("0")),
        (attr::MESSAGING_KAFKA_OFFSET, Value::from(0_i64)),
        (attr::MESSAGING_KAFKA_MESSAGE_KEY, Value::from("order-1")),
        (attr::MESSAGING_CLIENT_ID, Value::from("tracelink-test")),
    ] {
        assert_eq!(
            attr(process, key),
            Some(value),
            "process span attribute {key}"
        );
    }
    assert_eq!(process.status, Status::Unset);

    let child = telemetry.named("handler work");
    assert_eq!(child.len(), 1);
    assert_eq!(child[0].parent_span_id, process.span_context.span_id());
    assert_eq!(
        child[0].span_context.trace_id(),
        process.span_context.trace_id()
    );
}

both_backends!(tombstones_are_marked);
async fn tombstones_are_marked(backend: Backend) {
    let topic = unique("tombstone");
    backend.create_topic(&topic, 1).await;
    let telemetry = Telemetry::new();
    KafkaPublisher::new(backend.producer())
        .traced(telemetry.producer_instrumentation(&backend))
        .oneshot(KafkaRecord::new(&topic).with_key("gone"))
        .await
        .expect("publish");
    let consume = backend.consumer(
        &unique("group"),
        &topic,
        telemetry.instrumentation(tracelink_core::MessagingSystem::new("kafka")),
    );
    let payloads = Arc::new(Mutex::new(Vec::new()));
    let p2 = payloads.clone();
    run_until(consume, 1, move |m| {
        p2.lock().unwrap().push(m.payload().map(<[u8]>::to_vec));
        async { Ok::<_, std::io::Error>(()) }
    })
    .await
    .expect("consume");
    assert_eq!(*payloads.lock().unwrap(), vec![None]);
    let send = &telemetry.named(&format!("send {topic}"))[0];
    let process = &telemetry.named(&format!("process {topic}"))[0];
    for span in [send, process] {
        assert_eq!(
            attr(span, attr::MESSAGING_KAFKA_MESSAGE_TOMBSTONE),
            Some(Value::from(true))
        );
        assert_eq!(attr(span, attr::MESSAGING_MESSAGE_BODY_SIZE), None);
        assert_eq!(
            attr(span, attr::MESSAGING_KAFKA_MESSAGE_KEY),
            Some(Value::from("gone"))
        );
    }
    assert_eq!(process.links.len(), 1);
    assert_eq!(ids(&process.links[0].span_context), ids(&send.span_context));
}

type RawHeaders<'a> = Vec<(&'a str, &'a [u8])>;

both_backends!(bad_and_duplicated_trace_headers);
async fn bad_and_duplicated_trace_headers(backend: Backend) {
    let topic = unique("bad-headers");
    backend.create_topic(&topic, 1).await;
    let telemetry = Telemetry::new();
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let other = "00-11111111111111111111111111111111-2222222222222222-01";
    let records: Vec<(&str, RawHeaders)> = vec![
        ("non-utf8", vec![("traceparent", &[0xff, 0xfe, 0x00][..])]),
        (
            "conflict",
            vec![
                ("traceparent", valid.as_bytes()),
                ("traceparent", other.as_bytes()),
            ],
        ),
        (
            "identical",
            vec![
                ("traceparent", valid.as_bytes()),
                ("Traceparent", valid.as_bytes()),
            ],
        ),
        ("malformed", vec![("traceparent", b"not a traceparent")]),
    ];
    // Published raw: the test controls every header byte.
    let mut raw = KafkaPublisher::new(backend.producer());
    for (payload, headers) in &records {
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(*value),
            })
        });
        let mut record = KafkaRecord::new(&topic)
            .with_payload(*payload)
            .with_key(vec![0xc3, 0x28]);
        record.headers = Some(headers);
        raw.ready()
            .await
            .unwrap()
            .call(record)
            .await
            .expect("publish");
    }
    let consume = backend.consumer(
        &unique("group"),
        &topic,
        telemetry.instrumentation(tracelink_core::MessagingSystem::new("kafka")),
    );
    let order = Arc::new(Mutex::new(Vec::new()));
    let o2 = order.clone();
    run_until(consume, records.len(), move |m| {
        o2.lock()
            .unwrap()
            .push((text(&m), Context::current().span().span_context().span_id()));
        async { Ok::<_, std::io::Error>(()) }
    })
    .await
    .expect("bad headers never stop the consumer");
    let spans = telemetry.named(&format!("process {topic}"));
    assert_eq!(spans.len(), records.len());
    for (payload, span_id) in order.lock().unwrap().iter() {
        let span = spans
            .iter()
            .find(|s| s.span_context.span_id() == *span_id)
            .unwrap();
        assert_eq!(
            attr(span, attr::MESSAGING_KAFKA_MESSAGE_KEY),
            None,
            "binary keys are not recorded"
        );
        let links: Vec<SpanContext> = span.links.iter().map(|l| l.span_context.clone()).collect();
        match payload.as_str() {
            "identical" => {
                assert_eq!(links.len(), 1, "identical copies read as that value");
                assert_eq!(
                    links[0].trace_id(),
                    TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
                );
                assert_eq!(
                    links[0].span_id(),
                    SpanId::from_hex("00f067aa0ba902b7").unwrap()
                );
            }
            other => assert!(links.is_empty(), "{other}: no link"),
        }
        assert_eq!(span.status, Status::Unset);
    }
}

both_backends!(handler_failure_then_restart_redelivers);
async fn handler_failure_then_restart_redelivers(backend: Backend) {
    let topic = unique("redeliver");
    let group = unique("group");
    backend.create_topic(&topic, 1).await;
    let telemetry = Telemetry::new();
    let mut producer = KafkaPublisher::new(backend.producer())
        .traced(telemetry.producer_instrumentation(&backend));
    for payload in ["m0", "m1", "m2"] {
        producer
            .ready()
            .await
            .unwrap()
            .call(KafkaRecord::new(&topic).with_payload(payload))
            .await
            .expect("publish");
    }
    let instr = telemetry.instrumentation(tracelink_core::MessagingSystem::new("kafka"));

    let first = Arc::new(Mutex::new(Vec::new()));
    {
        let consume = backend
            .consumer(&group, &topic, instr.clone())
            .on_failure(OnFailure::Stop);
        let f2 = first.clone();
        let result = run_until(consume, 3, move |m| {
            let payload = text(&m);
            f2.lock().unwrap().push(payload.clone());
            async move {
                if payload == "m1" {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "bad order",
                    ))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        match result {
            Err(ConsumeError::Handler(error)) => {
                assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
            }
            other => panic!("expected the handler error, got {other:?}"),
        }
    }
    assert_eq!(
        *first.lock().unwrap(),
        vec!["m0", "m1"],
        "nothing after the failure"
    );

    let failed: Vec<_> = telemetry
        .named(&format!("process {topic}"))
        .into_iter()
        .filter(|s| attr(s, attr::MESSAGING_KAFKA_OFFSET) == Some(Value::from(1_i64)))
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        attr(&failed[0], attr::ERROR_TYPE),
        Some(Value::from("InvalidData"))
    );
    assert!(matches!(failed[0].status, Status::Error { .. }));

    // A restart in the same group starts at the failed message: nothing lost, nothing early.
    let consume = backend.consumer(&group, &topic, instr);
    let second = Arc::new(Mutex::new(Vec::new()));
    let s2 = second.clone();
    run_until(consume, 2, move |m| {
        s2.lock().unwrap().push((text(&m), m.offset()));
        async { Ok::<_, std::io::Error>(()) }
    })
    .await
    .expect("second run");
    assert_eq!(
        *second.lock().unwrap(),
        vec![("m1".to_owned(), 1), ("m2".to_owned(), 2)]
    );
}

both_backends!(reject_policy_commits_with_an_event);
async fn reject_policy_commits_with_an_event(backend: Backend) {
    let topic = unique("skip");
    let group = unique("group");
    backend.create_topic(&topic, 1).await;
    let telemetry = Telemetry::new();
    let mut producer = KafkaPublisher::new(backend.producer());
    for payload in ["bad", "good"] {
        producer
            .ready()
            .await
            .unwrap()
            .call(KafkaRecord::new(&topic).with_payload(payload))
            .await
            .expect("publish");
    }
    let instr = telemetry.instrumentation(tracelink_core::MessagingSystem::new("kafka"));
    {
        let consume = backend
            .consumer(&group, &topic, instr.clone())
            .on_failure(OnFailure::Reject);
        run_until(consume, 2, |m| {
            let bad = text(&m) == "bad";
            async move {
                if bad {
                    Err(std::io::Error::other("bad"))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .expect("reject keeps consuming");
    }
    let spans = telemetry.named(&format!("process {topic}"));
    let rejected: Vec<_> = spans
        .iter()
        .filter(|s| s.events.iter().any(|e| e.name == "message rejected"))
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        attr(rejected[0], attr::MESSAGING_KAFKA_OFFSET),
        Some(Value::from(0_i64))
    );
    assert_eq!(
        attr(rejected[0], attr::ERROR_TYPE),
        Some(Value::from("Other"))
    );

    // Both offsets were committed: a restart sees only what comes next.
    producer
        .ready()
        .await
        .unwrap()
        .call(KafkaRecord::new(&topic).with_payload("next"))
        .await
        .expect("publish");
    let consume = backend.consumer(&group, &topic, instr);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    run_until(consume, 1, move |m| {
        s2.lock().unwrap().push(text(&m));
        async { Ok::<_, std::io::Error>(()) }
    })
    .await
    .expect("restart");
    assert_eq!(*seen.lock().unwrap(), vec!["next"]);
}

both_backends!(batches_link_every_message);
async fn batches_link_every_message(backend: Backend) {
    let topic = unique("batch");
    backend.create_topic(&topic, 1).await;
    let telemetry = Telemetry::new();
    let mut producer = KafkaPublisher::new(backend.producer())
        .traced(telemetry.producer_instrumentation(&backend));
    for i in 0..5 {
        producer
            .ready()
            .await
            .unwrap()
            .call(KafkaRecord::new(&topic).with_payload(format!("b{i}")))
            .await
            .expect("publish");
    }
    let consume = backend.consumer(
        &unique("group"),
        &topic,
        telemetry.instrumentation(tracelink_core::MessagingSystem::new("kafka")),
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stop_tx = Arc::new(Mutex::new(Some(stop_tx)));
    let received = Arc::new(Mutex::new(Vec::new()));
    let r2 = received.clone();
    let handler = service_fn(move |batch: Vec<KafkaMessage>| {
        let mut received = r2.lock().unwrap();
        received.push(batch.iter().map(text).collect::<Vec<_>>());
        if received.iter().map(Vec::len).sum::<usize>() >= 5 {
            if let Some(tx) = stop_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
        async { Ok::<_, std::io::Error>(()) }
    });
    let config = BatchConfig {
        max_messages: 5,
        max_wait: Duration::from_secs(2),
    };
    tokio::time::timeout(
        TEST_TIMEOUT,
        consume.with_batch(config).run_batches(handler, async move {
            let _ = stop_rx.await;
        }),
    )
    .await
    .expect("timed out")
    .expect("batches");
    let batches = received.lock().unwrap().clone();
    assert_eq!(
        batches.concat(),
        vec!["b0", "b1", "b2", "b3", "b4"],
        "order kept"
    );

    let sends = telemetry.named(&format!("send {topic}"));
    let process = telemetry.named(&format!("process {topic}"));
    assert_eq!(process.len(), batches.len(), "one span per batch");
    let mut linked: Vec<_> = process
        .iter()
        .flat_map(|s| s.links.iter().map(|l| ids(&l.span_context)))
        .collect();
    let mut sent: Vec<_> = sends.iter().map(|s| ids(&s.span_context)).collect();
    linked.sort_by_key(|(_, span)| span.to_string());
    sent.sort_by_key(|(_, span)| span.to_string());
    assert_eq!(linked, sent, "one link per message, to its send span");
    for span in &process {
        assert_kind(span, SpanKind::Consumer);
        let count = span.links.len() as i64;
        let expected = (count > 1).then(|| Value::from(count));
        assert_eq!(attr(span, attr::MESSAGING_BATCH_MESSAGE_COUNT), expected);
        for link in span.links.iter() {
            assert!(link
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == attr::MESSAGING_KAFKA_OFFSET));
        }
    }
}

both_backends!(partition_order_kept_under_concurrency);
async fn partition_order_kept_under_concurrency(backend: Backend) {
    let topic = unique("order");
    backend.create_topic(&topic, 3).await;
    let telemetry = Telemetry::new();
    let mut producer = KafkaPublisher::new(backend.producer());
    for seq in 0..30 {
        let partition = seq % 3;
        producer
            .ready()
            .await
            .unwrap()
            .call(
                KafkaRecord::new(&topic)
                    .with_partition(partition)
                    .with_payload(seq.to_string()),
            )
            .await
            .expect("publish");
    }
    let consume = backend
        .consumer(
            &unique("group"),
            &topic,
            telemetry.instrumentation(tracelink_core::MessagingSystem::new("kafka")),
        )
        .with_concurrency(8);
    let log = Arc::new(Mutex::new(Vec::new()));
    let active = Arc::new(Mutex::new((0usize, 0usize)));
    let (l2, a2) = (log.clone(), active.clone());
    run_until(consume, 30, move |m| {
        let (log, active) = (l2.clone(), a2.clone());
        let seq: i32 = text(&m).parse().unwrap();
        let partition = m.partition();
        async move {
            {
                let mut a = active.lock().unwrap();
                a.0 += 1;
                a.1 = a.1.max(a.0);
            }
            // Later messages finish faster, so a loop that did not keep order would reorder.
            tokio::time::sleep(Duration::from_millis(u64::from((30 - seq as u32) % 7))).await;
            log.lock().unwrap().push((partition, seq));
            active.lock().unwrap().0 -= 1;
            Ok::<_, std::io::Error>(())
        }
    })
    .await
    .expect("consume");
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 30);
    for partition in 0..3 {
        let seqs: Vec<i32> = log
            .iter()
            .filter(|(p, _)| *p == partition)
            .map(|(_, s)| *s)
            .collect();
        let expected: Vec<i32> = (0..30).filter(|s| s % 3 == partition).collect();
        assert_eq!(seqs, expected, "partition {partition} in order");
    }
    let max_active = active.lock().unwrap().1;
    assert!(
        max_active > 1,
        "partitions were handled concurrently (max {max_active})"
    );
    assert!(
        max_active <= 3,
        "at most one handler per partition (max {max_active})"
    );
}

both_backends!(delivery_failures_set_error_type);
async fn delivery_failures_set_error_type(backend: Backend) {
    let topic = unique("fail");
    backend.create_topic(&topic, 1).await;
    let telemetry = Telemetry::new();
    let result = KafkaPublisher::new(backend.producer())
        .traced(telemetry.producer_instrumentation(&backend))
        .oneshot(
            KafkaRecord::new(&topic)
                .with_partition(7)
                .with_payload("lost"),
        )
        .await;
    let error = result.expect_err("partition 7 does not exist");
    assert_eq!(error.error_type(), "UnknownPartition");
    let returned = error
        .message
        .as_ref()
        .map(|m| rdkafka::Message::payload(m).map(<[u8]>::to_vec));
    assert_eq!(
        returned,
        Some(Some(b"lost".to_vec())),
        "the message is handed back"
    );
    let send = telemetry.named(&format!("send {topic}"));
    assert_eq!(send.len(), 1);
    assert_eq!(
        attr(&send[0], attr::ERROR_TYPE),
        Some(Value::from("UnknownPartition"))
    );
    assert_eq!(
        attr(&send[0], attr::MESSAGING_DESTINATION_PARTITION_ID),
        Some(Value::from("7"))
    );
    assert_eq!(attr(&send[0], attr::MESSAGING_KAFKA_OFFSET), None);
    assert!(matches!(send[0].status, Status::Error { .. }));
}

/// Retries each failed message once.
#[derive(Clone)]
struct RetryOnce(usize);

impl<E> tower::retry::Policy<KafkaMessage, (), E> for RetryOnce {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut KafkaMessage, result: &mut Result<(), E>) -> Option<Self::Future> {
        if result.is_err() && self.0 > 0 {
            self.0 -= 1;
            Some(std::future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, message: &KafkaMessage) -> Option<KafkaMessage> {
        Some(message.clone())
    }
}

both_backends!(tower_retry_inside_the_process_span);
async fn tower_retry_inside_the_process_span(backend: Backend) {
    let topic = unique("retry");
    backend.create_topic(&topic, 1).await;
    let telemetry = Telemetry::new();
    KafkaPublisher::new(backend.producer())
        .oneshot(KafkaRecord::new(&topic).with_payload("flaky"))
        .await
        .expect("publish");
    let consume = backend.consumer(
        &unique("group"),
        &topic,
        telemetry.instrumentation(tracelink_core::MessagingSystem::new("kafka")),
    );
    let attempts = Arc::new(Mutex::new(0));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stop_tx = Arc::new(Mutex::new(Some(stop_tx)));
    let a2 = attempts.clone();
    let flaky = service_fn(move |_: KafkaMessage| {
        let mut attempts = a2.lock().unwrap();
        *attempts += 1;
        let result = if *attempts == 1 {
            Err(std::io::Error::other("first attempt fails"))
        } else {
            if let Some(tx) = stop_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            Ok(())
        };
        std::future::ready(result)
    });
    let handler = tower::retry::Retry::new(RetryOnce(1), flaky);
    tokio::time::timeout(
        TEST_TIMEOUT,
        consume.run(handler, async move {
            let _ = stop_rx.await;
        }),
    )
    .await
    .expect("timed out")
    .expect("the retry succeeded, so the loop does not stop");
    assert_eq!(*attempts.lock().unwrap(), 2);
    let process = telemetry.named(&format!("process {topic}"));
    assert_eq!(process.len(), 1, "one span covers both attempts");
    assert_eq!(process[0].status, Status::Unset);
    assert_eq!(attr(&process[0], attr::ERROR_TYPE), None);
}
