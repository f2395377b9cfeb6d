//! Integration tests against a real RabbitMQ (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Each test uses queues of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod hostile;
mod lifecycle;
mod load;
mod support;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lapin::options::{BasicGetOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, ByteArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{KeyValue, Value};
use opentelemetry_semantic_conventions::attribute as attr;
use tokio::sync::{mpsc, Notify, Semaphore};
use tower::{service_fn, Service, ServiceExt};
use tracelink_amqp::{AmqpConsumer, AmqpDelivery, AmqpPublisher, Publish, PublishError};
use tracelink_core::{ConsumeError, OnFailure};

use support::*;

fn producer(
    t: &Telemetry,
    channel: &Channel,
) -> impl Service<Publish, Response = tracelink_amqp::Published, Error = PublishError> {
    AmqpPublisher::new(channel.clone()).traced(t.instrumentation.clone())
}

async fn publish<S>(
    producer: &mut S,
    message: Publish,
) -> Result<tracelink_amqp::Published, PublishError>
where
    S: Service<Publish, Response = tracelink_amqp::Published, Error = PublishError>,
{
    producer.ready().await?.call(message).await
}

/// Fires once `n` messages were counted.
#[derive(Clone)]
struct Countdown {
    seen: Arc<AtomicUsize>,
    n: usize,
    done: Arc<Notify>,
}

impl Countdown {
    fn new(n: usize) -> Self {
        Self {
            seen: Arc::new(AtomicUsize::new(0)),
            n,
            done: Arc::new(Notify::new()),
        }
    }

    fn count(&self) {
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
            self.done.notify_one();
        }
    }

    fn signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let done = self.done.clone();
        async move { done.notified().await }
    }
}

fn props(id: &str) -> BasicProperties {
    BasicProperties::default().with_message_id(id.into())
}

fn common(operation_type: &'static str, operation_name: &'static str) -> Vec<KeyValue> {
    let (host, port) = server();
    vec![
        KeyValue::new(attr::MESSAGING_SYSTEM, "rabbitmq"),
        KeyValue::new(attr::MESSAGING_OPERATION_TYPE, operation_type),
        KeyValue::new(attr::MESSAGING_OPERATION_NAME, operation_name),
        KeyValue::new(attr::SERVER_ADDRESS, host),
        KeyValue::new(attr::SERVER_PORT, port),
    ]
}

/// The channel is closed so that unacknowledged messages would return to the queue; then the
/// queue must be empty.
async fn assert_all_acked(channel: Channel, queue: &str) {
    channel
        .close(200, "done".into())
        .await
        .expect("close channel");
    let (_connection, check, _) = channel_with_queue("check", FieldTable::default()).await;
    assert_eq!(
        ready_count(&check, queue).await,
        0,
        "every message was acked"
    );
}

#[tokio::test]
async fn round_trip_links_the_process_span_to_the_publish_span() {
    let t = telemetry();
    let (_connection, channel, queue) =
        channel_with_queue("roundtrip", FieldTable::default()).await;
    let mut producer = producer(&t, &channel);
    let published = publish(
        &mut producer,
        Publish::to_queue(queue.as_str().into(), b"hello".to_vec())
            .with_properties(props("m-1").with_correlation_id("c-1".into())),
    )
    .await
    .expect("publish");
    assert!(!published.confirmed(), "no confirm mode: NotRequested");

    let countdown = Countdown::new(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (countdown, seen) = (countdown.clone(), seen.clone());
        service_fn(move |delivery: AmqpDelivery| {
            let cx = opentelemetry::Context::current();
            seen.lock()
                .unwrap()
                .push((delivery.data().to_vec(), cx.span().span_context().clone()));
            countdown.count();
            async { Ok::<_, Infallible>(()) }
        })
    };
    let consumer = consume(&channel, &queue).await;
    within(
        "consume",
        AmqpConsumer::new(consumer, t.instrumentation.clone()).run(handler, countdown.signal()),
    )
    .await
    .expect("loop");

    let send = t.one(&format!("publish {queue}"), SpanKind::Producer);
    let mut want = common("send", "publish");
    want.extend([
        KeyValue::new(attr::MESSAGING_DESTINATION_NAME, queue.clone()),
        KeyValue::new(
            attr::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
            queue.clone(),
        ),
        KeyValue::new(attr::MESSAGING_MESSAGE_ID, "m-1"),
        KeyValue::new(attr::MESSAGING_MESSAGE_CONVERSATION_ID, "c-1"),
        KeyValue::new(attr::MESSAGING_MESSAGE_BODY_SIZE, 5),
    ]);
    assert_eq!(attributes(&send), expected(want));
    assert_eq!(send.status, Status::Unset);

    let process = t.one(&format!("process {queue}:{queue}"), SpanKind::Consumer);
    let mut want = common("process", "process");
    want.extend([
        KeyValue::new(attr::MESSAGING_DESTINATION_NAME, format!("{queue}:{queue}")),
        KeyValue::new(
            attr::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
            queue.clone(),
        ),
        KeyValue::new(attr::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG, 1),
        KeyValue::new(attr::MESSAGING_MESSAGE_ID, "m-1"),
        KeyValue::new(attr::MESSAGING_MESSAGE_CONVERSATION_ID, "c-1"),
        KeyValue::new(attr::MESSAGING_MESSAGE_BODY_SIZE, 5),
    ]);
    assert_eq!(attributes(&process), expected(want));
    assert_eq!(process.parent_span_id, SpanId::INVALID, "a new trace");
    assert_ne!(
        process.span_context.trace_id(),
        send.span_context.trace_id()
    );
    assert_eq!(process.links.links.len(), 1);
    assert!(same_span(
        &process.links.links[0].span_context,
        &send.span_context
    ));

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(b"hello".to_vec(), process.span_context.clone())],
        "handler ran in the process span"
    );
    assert_all_acked(channel, &queue).await;
}

#[tokio::test]
async fn user_headers_are_kept_and_context_travels_as_long_strings() {
    let t = telemetry();
    let (_connection, channel, queue) = channel_with_queue("headers", FieldTable::default()).await;
    let mut headers = FieldTable::default();
    headers.insert("x-tenant".into(), AMQPValue::LongString("acme".into()));
    headers.insert("x-attempt".into(), AMQPValue::LongInt(3));
    headers.insert("x-flag".into(), AMQPValue::Boolean(true));
    let mut producer = producer(&t, &channel);
    publish(
        &mut producer,
        Publish::to_queue(queue.as_str().into(), b"x".to_vec())
            .with_properties(BasicProperties::default().with_headers(headers)),
    )
    .await
    .expect("publish");

    let message = within("basic.get", async {
        loop {
            if let Some(m) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
            {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let received = message
        .delivery
        .properties
        .headers()
        .clone()
        .expect("headers");
    let received = received.inner();
    assert_eq!(
        received.get("x-tenant"),
        Some(&AMQPValue::LongString("acme".into()))
    );
    assert_eq!(received.get("x-attempt"), Some(&AMQPValue::LongInt(3)));
    assert_eq!(received.get("x-flag"), Some(&AMQPValue::Boolean(true)));
    let send = t.one(&format!("publish {queue}"), SpanKind::Producer);
    let sc = &send.span_context;
    let traceparent = format!("00-{}-{}-01", sc.trace_id(), sc.span_id());
    assert_eq!(
        received.get("traceparent"),
        Some(&AMQPValue::LongString(traceparent.into())),
        "injected as a long string"
    );
    let keys: BTreeSet<&str> = received.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["traceparent", "x-attempt", "x-flag", "x-tenant"]),
        "the user's headers and traceparent (an empty tracestate is left out)"
    );
}

#[tokio::test]
async fn a_failing_handler_is_nacked_requeued_and_redelivered() {
    let t = telemetry();
    let (_connection, channel, queue) = channel_with_queue("requeue", FieldTable::default()).await;
    let mut producer = producer(&t, &channel);
    publish(
        &mut producer,
        Publish::to_queue(queue.as_str().into(), b"x".to_vec()),
    )
    .await
    .expect("publish");

    let countdown = Countdown::new(1);
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (countdown, attempts) = (countdown.clone(), attempts.clone());
        service_fn(move |delivery: AmqpDelivery| {
            attempts.lock().unwrap().push(delivery.redelivered());
            let result = if delivery.redelivered() {
                countdown.count();
                Ok(())
            } else {
                Err(std::io::Error::other("first attempt fails"))
            };
            async move { result }
        })
    };
    let consumer = consume(&channel, &queue).await;
    within(
        "consume",
        AmqpConsumer::new(consumer, t.instrumentation.clone())
            .with_settle_spans()
            .run(handler, countdown.signal()),
    )
    .await
    .expect("loop");
    assert_eq!(*attempts.lock().unwrap(), vec![false, true]);

    let send = t.one(&format!("publish {queue}"), SpanKind::Producer);
    let mut process = t.spans_named(&format!("process {queue}:{queue}"));
    assert_eq!(process.len(), 2);
    process.sort_by_key(|s| s.start_time);
    let (failed, succeeded) = (&process[0], &process[1]);
    assert_eq!(failed.status, Status::error("Other"));
    assert_eq!(
        attributes(failed).get(attr::ERROR_TYPE),
        Some(&Value::from("Other"))
    );
    assert_eq!(
        attributes(failed).get(attr::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG),
        Some(&Value::I64(1))
    );
    assert_eq!(succeeded.status, Status::Unset);
    assert_eq!(attributes(succeeded).get(attr::ERROR_TYPE), None);
    assert_eq!(
        attributes(succeeded).get(attr::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG),
        Some(&Value::I64(2))
    );
    for span in [failed, succeeded] {
        assert_eq!(span.links.links.len(), 1);
        assert!(same_span(
            &span.links.links[0].span_context,
            &send.span_context
        ));
    }

    // Settle spans: a nack under the failed attempt, an ack under the successful one.
    let nack = t.one(&format!("nack {queue}:{queue}"), SpanKind::Client);
    let ack = t.one(&format!("ack {queue}:{queue}"), SpanKind::Client);
    for (settle, process, name, tag) in [(&nack, failed, "nack", 1), (&ack, succeeded, "ack", 2)] {
        assert_eq!(settle.parent_span_id, process.span_context.span_id());
        assert_eq!(
            settle.span_context.trace_id(),
            process.span_context.trace_id()
        );
        assert_eq!(
            attributes(settle),
            expected(
                common("settle", name)
                    .into_iter()
                    .chain([
                        KeyValue::new(attr::MESSAGING_DESTINATION_NAME, format!("{queue}:{queue}")),
                        KeyValue::new(
                            attr::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                            queue.clone(),
                        ),
                        KeyValue::new(attr::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG, tag),
                    ])
                    .collect()
            )
        );
    }
    assert_all_acked(channel, &queue).await;
}

#[tokio::test]
async fn reject_sends_a_failed_message_to_the_dead_letter_queue() {
    let t = telemetry();
    let (_connection, channel, dead) = channel_with_queue("dlq", FieldTable::default()).await;
    let queue = unique("dlx-source");
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.as_str().into()),
    );
    declare(&channel, &queue, arguments).await;
    let mut producer = producer(&t, &channel);
    publish(
        &mut producer,
        Publish::to_queue(queue.as_str().into(), b"poison".to_vec()),
    )
    .await
    .expect("publish");

    let countdown = Countdown::new(1);
    let handler = {
        let countdown = countdown.clone();
        service_fn(move |_: AmqpDelivery| {
            countdown.count();
            async { Err::<(), _>(std::io::Error::other("always fails")) }
        })
    };
    let consumer = consume(&channel, &queue).await;
    within(
        "consume",
        AmqpConsumer::new(consumer, t.instrumentation.clone())
            .on_failure(OnFailure::Reject)
            .run(handler, countdown.signal()),
    )
    .await
    .expect("loop");

    let dead_lettered = within("dead letter", async {
        loop {
            if let Some(m) = channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
            {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(dead_lettered.delivery.data, b"poison");
    assert_eq!(ready_count(&channel, &queue).await, 0, "not requeued");
}

#[tokio::test]
async fn a_connection_closed_with_unacked_messages_loses_nothing() {
    const COUNT: usize = 5;
    let t = telemetry();
    let (_connection, channel, queue) =
        channel_with_queue("conn-loss", FieldTable::default()).await;
    let mut producer = producer(&t, &channel);
    for i in 0..COUNT {
        publish(
            &mut producer,
            Publish::to_queue(queue.as_str().into(), format!("m{i}").into_bytes())
                .with_properties(props(&format!("m{i}"))),
        )
        .await
        .expect("publish");
    }

    // A consumer on a connection of its own, whose handlers hold every message unacked.
    let name = unique("doomed-consumer");
    let doomed = connect(&name).await;
    let doomed_channel = doomed.create_channel().await.expect("channel");
    doomed_channel
        .basic_qos(COUNT as u16, BasicQosOptions::default())
        .await
        .expect("qos");
    let consumer = consume(&doomed_channel, &queue).await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    let handler = {
        let release = release.clone();
        service_fn(move |delivery: AmqpDelivery| {
            let (started_tx, release) = (started_tx.clone(), release.clone());
            async move {
                let _ = started_tx.send(delivery.delivery().delivery_tag);
                release.acquire().await.expect("semaphore").forget();
                Ok::<_, Infallible>(())
            }
        })
    };
    let run = tokio::spawn(
        AmqpConsumer::new(consumer, t.instrumentation.clone())
            .with_concurrency(COUNT)
            .with_settle_spans()
            .run(handler, std::future::pending::<()>()),
    );
    for _ in 0..COUNT {
        within("handlers start", started.recv())
            .await
            .expect("a handler started");
    }

    if !broker_closes_connection(&name) {
        // No rabbitmqctl here (a remote broker): drop the connection from our side instead.
        doomed
            .close(320, "closed by a tracelink test".into())
            .await
            .expect("close");
    }
    let result = within("loop stops", async {
        // Let the handlers finish only once the connection is gone: their acks cannot reach it.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        release.add_permits(COUNT);
        run.await.expect("loop task")
    })
    .await;
    // The handlers' acks find their channel gone (a settle error), or the consumer's stream
    // reports it (a receive error): either way the loop says so.
    match &result {
        Err(ConsumeError::Settle {
            operation,
            error_type,
            ..
        }) => {
            assert_eq!(*operation, "ack", "{result:?}");
            assert_eq!(error_type, "channel_closed", "{result:?}");
            // A settlement that could not be sent is never silent: its span says so.
            let acks = t.spans_named(&format!("ack {queue}:{queue}"));
            assert!(!acks.is_empty());
            for ack in &acks {
                assert_eq!(ack.status, Status::error("channel_closed"));
                assert_eq!(
                    attributes(ack).get(attr::ERROR_TYPE),
                    Some(&Value::from("channel_closed"))
                );
            }
        }
        Err(ConsumeError::Receive { .. }) => {}
        _ => panic!("the loop reports the closed connection: {result:?}"),
    }

    // A new consumer receives every message again.
    let fresh = connect(&unique("fresh-consumer")).await;
    let fresh_channel = fresh.create_channel().await.expect("channel");
    let countdown = Countdown::new(COUNT);
    let received = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (countdown, received) = (countdown.clone(), received.clone());
        service_fn(move |delivery: AmqpDelivery| {
            received.lock().unwrap().push((
                String::from_utf8_lossy(delivery.data()).into_owned(),
                delivery.redelivered(),
            ));
            countdown.count();
            async { Ok::<_, Infallible>(()) }
        })
    };
    let consumer = consume(&fresh_channel, &queue).await;
    within(
        "redelivery",
        AmqpConsumer::new(consumer, t.instrumentation.clone()).run(handler, countdown.signal()),
    )
    .await
    .expect("loop");
    let received: BTreeSet<_> = received.lock().unwrap().iter().cloned().collect();
    let want: BTreeSet<_> = (0..COUNT).map(|i| (format!("m{i}"), true)).collect();
    assert_eq!(received, want, "every message redelivered");
    assert_all_acked(fresh_channel, &queue).await;
}

/// A valid traceparent for a context of our own.
fn foreign_context() -> (SpanContext, String) {
    let sc = SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let header = format!("00-{}-{}-01", sc.trace_id(), sc.span_id());
    (sc, header)
}

#[tokio::test]
async fn header_values_of_other_amqp_types() {
    let t = telemetry();
    let (_connection, channel, queue) = channel_with_queue("types", FieldTable::default()).await;
    let (producer_cx, traceparent) = foreign_context();
    let mut nested = FieldTable::default();
    nested.insert(
        "traceparent".into(),
        AMQPValue::LongString(traceparent.as_str().into()),
    );
    let cases: Vec<(&str, Option<AMQPValue>, bool)> = vec![
        (
            "long-string",
            Some(AMQPValue::LongString(traceparent.as_str().into())),
            true,
        ),
        (
            "byte-array",
            Some(AMQPValue::ByteArray(ByteArray::from(
                traceparent.as_bytes(),
            ))),
            true,
        ),
        ("long-int", Some(AMQPValue::LongInt(42)), false),
        ("boolean", Some(AMQPValue::Boolean(true)), false),
        ("table", Some(AMQPValue::FieldTable(nested)), false),
        (
            "not-utf8",
            Some(AMQPValue::LongString(LongString::from(vec![
                0xff, 0xfe, 0x00,
            ]))),
            false,
        ),
        (
            "garbage-text",
            Some(AMQPValue::LongString("not a traceparent".into())),
            false,
        ),
        ("no-header", None, false),
    ];
    for (id, value, _) in &cases {
        let mut headers = FieldTable::default();
        headers.insert("x-other".into(), AMQPValue::LongLongInt(-1));
        if let Some(value) = value {
            headers.insert("traceparent".into(), value.clone());
        }
        channel
            .basic_publish(
                ShortString::default(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"x",
                props(id).with_headers(headers),
            )
            .await
            .expect("publish")
            .await
            .expect("published");
    }

    let countdown = Countdown::new(cases.len());
    let handler = {
        let countdown = countdown.clone();
        service_fn(move |_: AmqpDelivery| {
            countdown.count();
            async { Ok::<_, Infallible>(()) }
        })
    };
    let consumer = consume(&channel, &queue).await;
    within(
        "consume",
        AmqpConsumer::new(consumer, t.instrumentation.clone()).run(handler, countdown.signal()),
    )
    .await
    .expect("bad headers never stop the loop");

    let spans = t.spans_named(&format!("process {queue}:{queue}"));
    assert_eq!(spans.len(), cases.len());
    for (id, _, linked) in &cases {
        let span = spans
            .iter()
            .find(|s| {
                attributes(s).get(attr::MESSAGING_MESSAGE_ID) == Some(&Value::from(id.to_string()))
            })
            .unwrap_or_else(|| panic!("a process span for {id}"));
        let links: Vec<_> = span
            .links
            .links
            .iter()
            .map(|l| l.span_context.clone())
            .collect();
        if *linked {
            assert_eq!(links, vec![producer_cx.clone()], "{id} carries the context");
        } else {
            assert!(links.is_empty(), "{id} reads as absent, got {links:?}");
        }
        assert_eq!(span.status, Status::Unset, "{id}");
    }
    assert_all_acked(channel, &queue).await;
}

#[tokio::test]
async fn publisher_confirms_are_recorded() {
    let t = telemetry();
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let (connection, channel, queue) = channel_with_queue("confirms", arguments).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut producer = producer(&t, &channel);

    let first = publish(
        &mut producer,
        Publish::to_queue(queue.as_str().into(), b"1".to_vec()).with_properties(props("first")),
    )
    .await
    .expect("the first message fits");
    assert!(
        first.confirmed(),
        "acked by the broker: {:?}",
        first.confirmation
    );
    let second = publish(
        &mut producer,
        Publish::to_queue(queue.as_str().into(), b"2".to_vec()).with_properties(props("second")),
    )
    .await;
    assert!(
        matches!(second, Err(PublishError::Nacked(_))),
        "the full queue rejects: {second:?}"
    );

    let spans = t.spans_named(&format!("publish {queue}"));
    assert_eq!(spans.len(), 2);
    let by_id = |id: &str| {
        spans
            .iter()
            .find(|s| {
                attributes(s).get(attr::MESSAGING_MESSAGE_ID) == Some(&Value::from(id.to_owned()))
            })
            .unwrap_or_else(|| panic!("span of {id}"))
            .clone()
    };
    let ok = by_id("first");
    assert_eq!(ok.status, Status::Unset);
    assert_eq!(attributes(&ok).get(attr::ERROR_TYPE), None);
    let nacked = by_id("second");
    assert_eq!(nacked.status, Status::error("nack"));
    assert_eq!(
        attributes(&nacked).get(attr::ERROR_TYPE),
        Some(&Value::from("nack"))
    );

    // A mandatory message no queue is bound for comes back.
    let nowhere = unique("no-such-queue");
    let returned = publish(
        &mut producer,
        Publish::to_queue(nowhere.as_str().into(), b"r".to_vec()).with_options(
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
        ),
    )
    .await;
    assert!(
        matches!(returned, Err(PublishError::Returned(_))),
        "{returned:?}"
    );
    let unroutable = t.one(&format!("publish {nowhere}"), SpanKind::Producer);
    assert_eq!(
        attributes(&unroutable).get(attr::ERROR_TYPE),
        Some(&Value::from("unroutable"))
    );

    // An unknown exchange: the broker closes the channel.
    let other = connection.create_channel().await.expect("channel");
    other
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut producer = self::producer(&t, &other);
    let exchange = unique("no-such-exchange");
    let result = publish(
        &mut producer,
        Publish::new(exchange.as_str().into(), "rk".into(), b"3".to_vec()),
    )
    .await;
    assert!(matches!(result, Err(PublishError::Lapin(_))), "{result:?}");
    let failed = t.one(&format!("publish {exchange}:rk"), SpanKind::Producer);
    assert_eq!(
        attributes(&failed).get(attr::ERROR_TYPE),
        Some(&Value::from("NOT-FOUND"))
    );
    assert_eq!(failed.status, Status::error("NOT-FOUND"));

    // A closed channel fails the publish before it reaches the broker.
    let result = publish(
        &mut producer,
        Publish::to_queue(queue.as_str().into(), b"4".to_vec()).with_properties(props("closed")),
    )
    .await;
    assert!(matches!(result, Err(PublishError::Lapin(_))), "{result:?}");
    let closed = by_id_in(&t.spans_named(&format!("publish {queue}")), "closed");
    assert_eq!(
        attributes(&closed).get(attr::ERROR_TYPE),
        Some(&Value::from("channel_closed"))
    );
}

fn by_id_in(
    spans: &[opentelemetry_sdk::trace::SpanData],
    id: &str,
) -> opentelemetry_sdk::trace::SpanData {
    spans
        .iter()
        .find(|s| {
            attributes(s).get(attr::MESSAGING_MESSAGE_ID) == Some(&Value::from(id.to_owned()))
        })
        .unwrap_or_else(|| panic!("span of {id}"))
        .clone()
}

#[tokio::test]
async fn concurrency_is_bounded() {
    const COUNT: usize = 8;
    const LIMIT: usize = 3;
    let t = telemetry();
    let (_connection, channel, queue) =
        channel_with_queue("concurrency", FieldTable::default()).await;
    channel
        .basic_qos(COUNT as u16, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut producer = producer(&t, &channel);
    for _ in 0..COUNT {
        publish(
            &mut producer,
            Publish::to_queue(queue.as_str().into(), b"x".to_vec()),
        )
        .await
        .expect("publish");
    }

    let countdown = Countdown::new(COUNT);
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (countdown, running, most) = (countdown.clone(), running.clone(), most.clone());
        service_fn(move |_: AmqpDelivery| {
            let (countdown, running, most) = (countdown.clone(), running.clone(), most.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Long enough for the loop to start every handler it is allowed to.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                countdown.count();
                Ok::<_, Infallible>(())
            }
        })
    };
    let consumer = consume(&channel, &queue).await;
    within(
        "consume",
        AmqpConsumer::new(consumer, t.instrumentation.clone())
            .with_concurrency(LIMIT)
            .run(handler, countdown.signal()),
    )
    .await
    .expect("loop");
    assert_eq!(
        most.load(Ordering::SeqCst),
        LIMIT,
        "up to {LIMIT} handlers at once, never more"
    );
    assert_eq!(
        t.spans_named(&format!("process {queue}:{queue}")).len(),
        COUNT
    );
    assert_all_acked(channel, &queue).await;
}

#[tokio::test]
async fn parent_mode_continues_the_producer_trace() {
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let instrumentation =
        tracelink_core::Instrumentation::builder(tracelink_amqp::messaging_system(&url()))
            .with_tracer_provider(&provider)
            .with_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new())
            .with_link_mode(tracelink_core::LinkMode::Parent)
            .build();
    let t = Telemetry {
        exporter,
        provider,
        instrumentation,
    };
    let (_connection, channel, queue) = channel_with_queue("parent", FieldTable::default()).await;
    let mut producer = producer(&t, &channel);
    publish(
        &mut producer,
        Publish::to_queue(queue.as_str().into(), b"x".to_vec()),
    )
    .await
    .expect("publish");
    let countdown = Countdown::new(1);
    let handler = {
        let countdown = countdown.clone();
        service_fn(move |_: AmqpDelivery| {
            countdown.count();
            async { Ok::<_, Infallible>(()) }
        })
    };
    let consumer = consume(&channel, &queue).await;
    within(
        "consume",
        AmqpConsumer::new(consumer, t.instrumentation.clone()).run(handler, countdown.signal()),
    )
    .await
    .expect("loop");
    let send = t.one(&format!("publish {queue}"), SpanKind::Producer);
    let process = t.one(&format!("process {queue}:{queue}"), SpanKind::Consumer);
    assert_eq!(
        process.span_context.trace_id(),
        send.span_context.trace_id()
    );
    assert_eq!(process.parent_span_id, send.span_context.span_id());
    assert_eq!(
        process.links.links.len(),
        1,
        "the link is kept in parent mode"
    );
    assert!(same_span(
        &process.links.links[0].span_context,
        &send.span_context
    ));
}
