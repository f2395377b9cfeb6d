//! The consume lifecycle the core drives over lapin: settle spans with RabbitMQ's verbs, what
//! each failure policy does at the broker, graceful shutdown, `OnFailure::Stop`, and handlers
//! that settle deliveries themselves.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt};
use opentelemetry::Value;
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_semantic_conventions::attribute as attr;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tower::service_fn;
use tracelink_amqp::{AmqpConsumer, AmqpDelivery, Publish};
use tracelink_core::{ConsumeError, OnFailure};

use crate::support::*;
use crate::{assert_all_acked, producer, props, publish, Countdown};

fn id_of(delivery: &AmqpDelivery) -> String {
    delivery
        .properties()
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default()
}

fn span_with_id(spans: &[SpanData], id: &str) -> SpanData {
    spans
        .iter()
        .find(|s| {
            attributes(s).get(attr::MESSAGING_MESSAGE_ID) == Some(&Value::from(id.to_owned()))
        })
        .unwrap_or_else(|| panic!("a span for {id} in {spans:#?}"))
        .clone()
}

fn assert_settle_span(settle: &SpanData, process: &SpanData, verb: &str, queue: &str) {
    assert_eq!(settle.name, format!("{verb} {queue}:{queue}"));
    assert_eq!(settle.span_kind, SpanKind::Client);
    assert_eq!(settle.parent_span_id, process.span_context.span_id());
    assert_eq!(
        settle.span_context.trace_id(),
        process.span_context.trace_id()
    );
    let attributes = attributes(settle);
    assert_eq!(
        attributes.get(attr::MESSAGING_OPERATION_TYPE),
        Some(&Value::from("settle"))
    );
    assert_eq!(
        attributes.get(attr::MESSAGING_OPERATION_NAME),
        Some(&Value::from(verb.to_owned()))
    );
    assert_eq!(
        attributes.get(attr::MESSAGING_SYSTEM),
        Some(&Value::from("rabbitmq"))
    );
    assert_eq!(
        attributes.get(attr::MESSAGING_DESTINATION_NAME),
        Some(&Value::from(format!("{queue}:{queue}")))
    );
    assert_eq!(settle.status, Status::Unset);
    assert!(
        settle.start_time >= process.end_time,
        "settled after the handler finished"
    );
}

/// With settle spans on, a success is acked (`ack`) only once its handler finished and a
/// failure under `OnFailure::Reject` is rejected (`reject`) to the dead-letter queue; both
/// settle spans are CLIENT children of their process spans.
#[tokio::test]
async fn settle_spans_ack_and_reject_under_their_process_spans() {
    let t = telemetry();
    let (_connection, channel, dead) =
        channel_with_queue("settle-dlq", FieldTable::default()).await;
    let queue = unique("settle");
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
    for id in ["ok", "bad"] {
        publish(
            &mut producer,
            Publish::to_queue(queue.as_str().into(), id.as_bytes().to_vec())
                .with_properties(props(id)),
        )
        .await
        .expect("publish");
    }

    // One delivery at a time: while the first is unacknowledged, the second stays ready.
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let countdown = Countdown::new(2);
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    let handler = {
        let (countdown, release) = (countdown.clone(), release.clone());
        service_fn(move |delivery: AmqpDelivery| {
            let (countdown, release, started_tx) =
                (countdown.clone(), release.clone(), started_tx.clone());
            async move {
                let id = id_of(&delivery);
                countdown.count();
                if id == "ok" {
                    let _ = started_tx.send(());
                    release.acquire().await.expect("semaphore").forget();
                    Ok(())
                } else {
                    Err(std::io::Error::other("poison"))
                }
            }
        })
    };
    let consumer = consume(&channel, &queue).await;
    let run = tokio::spawn(
        AmqpConsumer::new(consumer, t.instrumentation.clone())
            .with_settle_spans()
            .on_failure(OnFailure::Reject)
            .run(handler, countdown.signal()),
    );

    // The successful handler is running: its message is not acknowledged yet.
    within("handler starts", started.recv())
        .await
        .expect("started");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        t.spans_named(&format!("ack {queue}:{queue}")).is_empty(),
        "no ack before the handler finished"
    );
    assert_eq!(
        ready_count(&channel, &queue).await,
        1,
        "the running handler's message is not acked, so the next one is not sent"
    );
    if let Some(unacked) = unacked_count(&queue) {
        assert_eq!(
            unacked, 1,
            "the broker still holds the running handler's message"
        );
    }
    release.add_permits(1);
    within("consumer stops", run)
        .await
        .expect("task")
        .expect("run returns Ok");

    let process = t.spans_named(&format!("process {queue}:{queue}"));
    assert_eq!(process.len(), 2);
    let (ok, bad) = (span_with_id(&process, "ok"), span_with_id(&process, "bad"));
    assert_eq!(ok.status, Status::Unset);
    assert_eq!(bad.status, Status::error("Other"));
    let ack = t.one(&format!("ack {queue}:{queue}"), SpanKind::Client);
    let reject = t.one(&format!("reject {queue}:{queue}"), SpanKind::Client);
    assert_settle_span(&ack, &ok, "ack", &queue);
    assert_settle_span(&reject, &bad, "reject", &queue);
    assert!(t.spans_named(&format!("nack {queue}:{queue}")).is_empty());

    // At the broker: the rejected message is dead-lettered, not requeued; the other was acked.
    let dead_lettered = within("dead letter", async {
        loop {
            if let Some(m) = channel
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(dead_lettered.delivery.data, b"bad");
    assert_all_acked(channel, &queue).await;
}

/// Shutdown while a handler runs: the handler finishes, its message is acked, `run` returns Ok;
/// the messages it never handled go to the next consumer.
#[tokio::test]
async fn graceful_shutdown_finishes_and_settles_the_running_handler() {
    const COUNT: usize = 3;
    let t = telemetry();
    let (_connection, channel, queue) = channel_with_queue("shutdown", FieldTable::default()).await;
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

    // A consumer on a channel of its own, to which RabbitMQ sends every message ahead.
    let consumer_channel = _connection.create_channel().await.expect("channel");
    consumer_channel
        .basic_qos(COUNT as u16, BasicQosOptions::default())
        .await
        .expect("qos");
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    let handler = {
        let (handled, release) = (handled.clone(), release.clone());
        service_fn(move |delivery: AmqpDelivery| {
            let (handled, release, started_tx) =
                (handled.clone(), release.clone(), started_tx.clone());
            async move {
                let _ = started_tx.send(());
                release.acquire().await.expect("semaphore").forget();
                handled.lock().unwrap().push(id_of(&delivery));
                Ok::<_, Infallible>(())
            }
        })
    };
    let (stop, shutdown) = oneshot::channel::<()>();
    let consumer = consume(&consumer_channel, &queue).await;
    let run = tokio::spawn(
        AmqpConsumer::new(consumer, t.instrumentation.clone())
            .with_settle_spans()
            .run(handler, async move {
                let _ = shutdown.await;
            }),
    );
    within("handler starts", started.recv())
        .await
        .expect("started");
    stop.send(()).expect("shutdown sent");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!run.is_finished(), "run waits for the handler in flight");
    release.add_permits(COUNT);
    within("consumer stops", run)
        .await
        .expect("task")
        .expect("run returns Ok");
    let handled = handled.lock().unwrap().clone();
    assert_eq!(
        handled,
        vec!["m0".to_owned()],
        "one handler ran, to its end"
    );
    let process = t.one(&format!("process {queue}:{queue}"), SpanKind::Consumer);
    let ack = t.one(&format!("ack {queue}:{queue}"), SpanKind::Client);
    assert_settle_span(&ack, &process, "ack", &queue);

    // The deliveries RabbitMQ had sent ahead go back to the queue with their channel.
    consumer_channel
        .close(200, "done".into())
        .await
        .expect("close");
    let countdown = Countdown::new(COUNT - 1);
    let received = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (countdown, received) = (countdown.clone(), received.clone());
        service_fn(move |delivery: AmqpDelivery| {
            received.lock().unwrap().push(id_of(&delivery));
            countdown.count();
            async { Ok::<_, Infallible>(()) }
        })
    };
    let consumer = consume(&channel, &queue).await;
    within(
        "the rest is delivered again",
        AmqpConsumer::new(consumer, t.instrumentation.clone()).run(handler, countdown.signal()),
    )
    .await
    .expect("run");
    let received: BTreeSet<_> = received.lock().unwrap().iter().cloned().collect();
    let want: BTreeSet<_> = (1..COUNT).map(|i| format!("m{i}")).collect();
    assert_eq!(
        received, want,
        "the unhandled messages, and not the acked one"
    );
    assert_all_acked(channel, &queue).await;
}

/// `OnFailure::Stop`: `run` returns the handler's error and the message is requeued.
#[tokio::test]
async fn stop_returns_the_handler_error_and_the_message_is_redelivered() {
    let t = telemetry();
    let (connection, channel, queue) = channel_with_queue("stop", FieldTable::default()).await;
    let mut producer = producer(&t, &channel);
    publish(
        &mut producer,
        Publish::to_queue(queue.as_str().into(), b"x".to_vec()).with_properties(props("m")),
    )
    .await
    .expect("publish");

    let consumer_channel = connection.create_channel().await.expect("channel");
    let handler =
        service_fn(|_: AmqpDelivery| async { Err::<(), _>(std::io::Error::other("cannot go on")) });
    let consumer = consume(&consumer_channel, &queue).await;
    let result = within(
        "consumer stops",
        AmqpConsumer::new(consumer, t.instrumentation.clone())
            .with_settle_spans()
            .on_failure(OnFailure::Stop)
            .run(handler, std::future::pending::<()>()),
    )
    .await;
    match &result {
        Err(ConsumeError::Handler(e)) => assert_eq!(e.to_string(), "cannot go on"),
        _ => panic!("the handler's error: {result:?}"),
    }
    let process = t.one(&format!("process {queue}:{queue}"), SpanKind::Consumer);
    let nack = t.one(&format!("nack {queue}:{queue}"), SpanKind::Client);
    assert_settle_span(&nack, &process, "nack", &queue);

    // Given back: another consumer gets it, flagged as redelivered. (The stopped consumer's
    // channel is closed first: RabbitMQ may have pushed the requeued message to it again before
    // its cancellation arrived.)
    consumer_channel
        .close(200, "done".into())
        .await
        .expect("close");
    let again = within("redelivered", async {
        loop {
            if let Some(m) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(again.delivery.data, b"x");
    assert!(again.delivery.redelivered);
}

/// A handler that acks its delivery itself: the consumer neither settles it again nor fails,
/// whatever the handler then returns.
#[tokio::test]
async fn a_handler_that_acks_itself_is_not_settled_again() {
    let t = telemetry();
    let (_connection, channel, queue) = channel_with_queue("self-ack", FieldTable::default()).await;
    let mut producer = producer(&t, &channel);
    for id in ["ok", "err"] {
        publish(
            &mut producer,
            Publish::to_queue(queue.as_str().into(), id.as_bytes().to_vec())
                .with_properties(props(id)),
        )
        .await
        .expect("publish");
    }
    let countdown = Countdown::new(2);
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (countdown, attempts) = (countdown.clone(), attempts.clone());
        service_fn(move |delivery: AmqpDelivery| {
            let (countdown, attempts) = (countdown.clone(), attempts.clone());
            async move {
                let id = id_of(&delivery);
                attempts.lock().unwrap().push(id.clone());
                assert!(delivery
                    .acker()
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack"));
                countdown.count();
                match id.as_str() {
                    "ok" => Ok(()),
                    _ => Err(std::io::Error::other("after acking")),
                }
            }
        })
    };
    let consumer = consume(&channel, &queue).await;
    within(
        "consume",
        AmqpConsumer::new(consumer, t.instrumentation.clone()).run(handler, countdown.signal()),
    )
    .await
    .expect("a delivery settled by its handler does not stop the consumer");
    assert_eq!(
        *attempts.lock().unwrap(),
        vec!["ok".to_owned(), "err".to_owned()]
    );
    // Had the failed one been nacked with requeue after the handler's ack, it would be back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ready_count(&channel, &queue).await, 0, "nothing requeued");
    assert_all_acked(channel, &queue).await;
}

/// The process span's context is the handler's current context (checked once more here with
/// settle spans on, where the core keeps that context to parent the settle span on).
#[tokio::test]
async fn the_handler_runs_in_its_process_span_with_settle_spans_on() {
    let t = telemetry();
    let (_connection, channel, queue) = channel_with_queue("cx", FieldTable::default()).await;
    let mut producer = producer(&t, &channel);
    publish(
        &mut producer,
        Publish::to_queue(queue.as_str().into(), b"x".to_vec()).with_properties(props("m")),
    )
    .await
    .expect("publish");
    let countdown = Countdown::new(1);
    let seen = Arc::new(Mutex::new(None));
    let handler = {
        let (countdown, seen) = (countdown.clone(), seen.clone());
        service_fn(move |_: AmqpDelivery| {
            *seen.lock().unwrap() = Some(
                opentelemetry::Context::current()
                    .span()
                    .span_context()
                    .clone(),
            );
            countdown.count();
            async { Ok::<_, Infallible>(()) }
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
    .expect("run");
    let process = t.one(&format!("process {queue}:{queue}"), SpanKind::Consumer);
    assert_eq!(
        seen.lock().unwrap().clone(),
        Some(process.span_context.clone())
    );
    let ack = t.one(&format!("ack {queue}:{queue}"), SpanKind::Client);
    assert_settle_span(&ack, &process, "ack", &queue);
}
