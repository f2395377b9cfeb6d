//! Core NATS: publish/subscribe, Go-style headers, queue groups, request/reply.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use tokio::sync::mpsc;
use tower::{service_fn, Layer, Service, ServiceExt};
use tracelink_core::{ConsumeError, Instrumentation, OnFailure};
use tracelink_nats::{
    NatsConsumer, NatsDelivery, NatsPublisher, NatsSource, Publish, Requester, ResponderLayer,
};

use crate::support::{self, assert_kind, attributes, common, expected, Telemetry};

fn with_common(url: &str, pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    let mut map = expected(pairs);
    for (k, v) in common(url) {
        map.insert(k.into(), v);
    }
    map
}

#[tokio::test]
async fn publish_subscribe_round_trip_links_to_the_producer() {
    let url = support::url();
    let client = support::connect().await;
    let telemetry = Telemetry::new();
    let instrumentation = telemetry.instrumentation(&url);
    let subject = support::unique("orders");

    let subscriber = client.subscribe(subject.clone()).await.unwrap();
    support::round_trip(&client).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = service_fn(move |delivery: NatsDelivery| {
        let tx = tx.clone();
        async move {
            let user = delivery
                .message
                .headers
                .as_ref()
                .and_then(|h| h.get("user").map(|v| v.as_str().to_owned()));
            tx.send((delivery.message.payload.clone(), user)).unwrap();
            Ok::<_, std::convert::Infallible>(())
        }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer =
        tokio::spawn(NatsConsumer::new(subscriber, instrumentation.clone()).run(handler, stopped));

    let mut headers = HeaderMap::new();
    headers.insert("user", "kept");
    let mut publisher = NatsPublisher::new(client.clone()).traced(instrumentation);
    publisher
        .ready()
        .await
        .unwrap()
        .call(Publish::new(subject.as_str(), "hello").with_headers(headers))
        .await
        .unwrap();

    let (payload, user) = rx.recv().await.unwrap();
    stop.send(()).unwrap();
    consumer.await.unwrap().unwrap();
    assert_eq!(&payload[..], b"hello");
    assert_eq!(user.as_deref(), Some("kept"), "the user's headers are kept");

    let producer = telemetry
        .wait_for(&format!("publish {subject}"), 1)
        .await
        .remove(0);
    let consumer = telemetry
        .wait_for(&format!("process {subject}"), 1)
        .await
        .remove(0);
    assert_kind(&producer, SpanKind::Producer);
    assert_kind(&consumer, SpanKind::Consumer);
    assert_eq!(
        attributes(&producer),
        with_common(
            &url,
            &[
                ("messaging.operation.type", "send"),
                ("messaging.operation.name", "publish"),
                ("messaging.destination.name", &subject),
                ("messaging.message.body.size", "5"),
            ]
        )
    );
    assert_eq!(
        attributes(&consumer),
        with_common(
            &url,
            &[
                ("messaging.operation.type", "process"),
                ("messaging.operation.name", "process"),
                ("messaging.destination.name", &subject),
                ("messaging.message.body.size", "5"),
            ]
        )
    );
    // A new trace, linked to the producer span.
    assert_ne!(
        consumer.span_context.trace_id(),
        producer.span_context.trace_id()
    );
    assert_eq!(consumer.parent_span_id, SpanId::INVALID);
    assert_eq!(consumer.links.links.len(), 1);
    assert_eq!(
        consumer.links.links[0].span_context,
        producer.span_context.clone().into_remote()
    );
}

trait IntoRemote {
    fn into_remote(self) -> Self;
}

impl IntoRemote for opentelemetry::trace::SpanContext {
    fn into_remote(self) -> Self {
        opentelemetry::trace::SpanContext::new(
            self.trace_id(),
            self.span_id(),
            self.trace_flags(),
            true,
            self.trace_state().clone(),
        )
    }
}

#[tokio::test]
async fn go_style_header_names_are_read() {
    let url = support::url();
    let client = support::connect().await;
    let telemetry = Telemetry::new();
    let subject = support::unique("go");
    let subscriber = client.subscribe(subject.clone()).await.unwrap();
    support::round_trip(&client).await;

    // What a Go client sends: canonicalised `Traceparent`.
    let mut headers = HeaderMap::new();
    headers.insert(
        "Traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    client
        .publish_with_headers(subject.clone(), headers, "from go".into())
        .await
        .unwrap();

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = std::sync::Mutex::new(Some(tx));
    let handler = service_fn(move |_: NatsDelivery| {
        if let Some(tx) = tx.lock().unwrap().take() {
            tx.send(()).unwrap();
        }
        async { Ok::<_, std::convert::Infallible>(()) }
    });
    // Stops once the one message was handled (and finishes handling it first).
    NatsConsumer::new(subscriber, telemetry.instrumentation(&url))
        .run(handler, rx)
        .await
        .unwrap();

    let consumer = telemetry
        .wait_for(&format!("process {subject}"), 1)
        .await
        .remove(0);
    assert_eq!(consumer.links.links.len(), 1);
    let link = &consumer.links.links[0].span_context;
    assert_eq!(
        link.trace_id(),
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
    );
    assert_eq!(
        link.span_id(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
}

#[tokio::test]
async fn queue_group_delivers_each_message_once_and_records_the_group() {
    let url = support::url();
    let client = support::connect().await;
    let telemetry = Telemetry::new();
    let instrumentation = telemetry.instrumentation(&url);
    let subject = support::unique("work");
    let group = support::unique("workers");
    const COUNT: usize = 20;

    let handled = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let source = NatsSource::queue_subscribe(&client, subject.as_str(), group.as_str())
            .await
            .unwrap();
        let handled = handled.clone();
        let handler = service_fn(move |delivery: NatsDelivery| {
            let handled = handled.clone();
            async move {
                assert!(delivery.queue_group().is_some());
                handled.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(())
            }
        });
        tasks.push(tokio::spawn(
            NatsConsumer::new(source, instrumentation.clone())
                .with_concurrency(4)
                .run(handler, std::future::pending::<()>()),
        ));
    }
    support::round_trip(&client).await;

    let mut publisher = NatsPublisher::new(client.clone()).traced(instrumentation);
    for i in 0..COUNT {
        publisher
            .ready()
            .await
            .unwrap()
            .call(Publish::new(subject.as_str(), format!("job {i}")))
            .await
            .unwrap();
    }
    let spans = telemetry
        .wait_for(&format!("process {subject}"), COUNT)
        .await;
    // Give a wrongly duplicated delivery the time to show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        handled.load(Ordering::SeqCst),
        COUNT,
        "each message handled exactly once"
    );
    for span in spans {
        assert_eq!(
            attributes(&span).get("messaging.consumer.group.name"),
            Some(&group),
            "{span:?}"
        );
    }
    for task in tasks {
        task.abort();
    }
}

#[tokio::test]
async fn request_reply_makes_the_requester_span_the_parent() {
    let url = support::url();
    let client = support::connect().await;
    let telemetry = Telemetry::new();
    let subject = support::unique("echo");

    let subscriber = client.subscribe(subject.clone()).await.unwrap();
    let layer = ResponderLayer::new(client.clone(), &telemetry.builder(&url).build());
    let responder = layer.layer(service_fn(|request: NatsDelivery| async move {
        let mut answer = b"re: ".to_vec();
        answer.extend_from_slice(&request.message.payload);
        Ok::<_, std::convert::Infallible>(tracelink_nats::Bytes::from(answer))
    }));
    let task = tokio::spawn(
        layer
            .consumer(subscriber)
            .run(responder, std::future::pending::<()>()),
    );
    support::round_trip(&client).await;

    let mut requester = Requester::new(client.clone()).traced(telemetry.instrumentation(&url));
    let reply = requester
        .ready()
        .await
        .unwrap()
        .call(Publish::new(subject.as_str(), "ping"))
        .await
        .unwrap();
    assert_eq!(&reply.0.payload[..], b"re: ping");

    let request = telemetry
        .wait_for(&format!("publish {subject}"), 1)
        .await
        .remove(0);
    let process = telemetry
        .wait_for(&format!("process {subject}"), 1)
        .await
        .remove(0);
    let answer = telemetry.wait_for("publish _INBOX.*", 1).await.remove(0);
    assert_kind(&request, SpanKind::Producer);
    assert_kind(&process, SpanKind::Consumer);
    assert_kind(&answer, SpanKind::Producer);
    // One trace: requester -> responder's process span -> reply publish.
    let trace = request.span_context.trace_id();
    assert_eq!(process.span_context.trace_id(), trace);
    assert_eq!(process.parent_span_id, request.span_context.span_id());
    assert_eq!(
        process.links.links.len(),
        1,
        "the link is kept in parent mode"
    );
    assert_eq!(answer.span_context.trace_id(), trace);
    assert_eq!(answer.parent_span_id, process.span_context.span_id());
    // The reply inbox is temporary and templated.
    let answer_attributes = attributes(&answer);
    assert!(answer_attributes["messaging.destination.name"].starts_with("_INBOX."));
    assert_eq!(
        answer_attributes["messaging.destination.template"],
        "_INBOX.*"
    );
    assert_eq!(answer_attributes["messaging.destination.temporary"], "true");
    // The requester span covers the round trip: it ends after the reply was published.
    assert!(request.end_time >= answer.end_time);
    task.abort();
}

#[tokio::test]
async fn request_without_responders_fails_with_a_typed_error() {
    let url = support::url();
    let client = support::connect().await;
    let telemetry = Telemetry::new();
    let subject = support::unique("nobody");
    let mut requester = Requester::new(client.clone()).traced(telemetry.instrumentation(&url));
    let err = requester
        .ready()
        .await
        .unwrap()
        .call(Publish::new(subject.as_str(), "ping"))
        .await
        .unwrap_err();
    assert!(matches!(err, tracelink_nats::Error::Request(_)), "{err:?}");
    let span = telemetry
        .wait_for(&format!("publish {subject}"), 1)
        .await
        .remove(0);
    assert_eq!(attributes(&span)["error.type"], "no_responders");
    assert!(matches!(span.status, Status::Error { .. }));
}

/// Core NATS has no acknowledgement: whatever the policy, settling makes no call and records no
/// settle span, and a failed message is not delivered again (at most once).
#[tokio::test]
async fn settle_spans_core_nats_makes_no_settle_call_and_does_not_redeliver() {
    let url = support::url();
    let client = support::connect().await;
    let telemetry = Telemetry::new();
    let instrumentation = telemetry.instrumentation(&url);
    let subject = support::unique("noack");
    let subscriber = client.subscribe(subject.clone()).await.unwrap();
    support::round_trip(&client).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = service_fn({
        let seen = seen.clone();
        move |delivery: NatsDelivery| {
            let payload = String::from_utf8_lossy(&delivery.message.payload).into_owned();
            seen.lock().unwrap().push(payload.clone());
            async move {
                match payload.as_str() {
                    "fail" => Err(std::io::Error::other("fails")),
                    _ => Ok(()),
                }
            }
        }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(
        NatsConsumer::new(subscriber, instrumentation.clone())
            .with_settle_spans()
            .run(handler, stopped),
    );
    for payload in ["ok", "fail", "last"] {
        client
            .publish(subject.clone(), payload.into())
            .await
            .unwrap();
    }
    telemetry.wait_for(&format!("process {subject}"), 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    consumer.await.unwrap().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        ["ok", "fail", "last"],
        "no redelivery"
    );
    let names = telemetry.names();
    assert_eq!(names.len(), 3, "process spans only: {names:?}");
}

/// Shutdown while a handler runs: the handler finishes, then `run` returns Ok.
#[tokio::test]
async fn graceful_shutdown_core_nats_lets_the_running_handler_finish() {
    let url = support::url();
    let client = support::connect().await;
    let telemetry = Telemetry::new();
    let subject = support::unique("shutdown");
    let subscriber = client.subscribe(subject.clone()).await.unwrap();
    support::round_trip(&client).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(AtomicUsize::new(0));
    let handler = service_fn({
        let started = started.clone();
        let finished = finished.clone();
        move |_: NatsDelivery| {
            let started = started.clone();
            let finished = finished.clone();
            async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(())
            }
        }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(
        NatsConsumer::new(subscriber, telemetry.instrumentation(&url)).run(handler, stopped),
    );
    client
        .publish(subject.clone(), "slow".into())
        .await
        .unwrap();
    started.notified().await;
    stop.send(()).unwrap();
    consumer.await.unwrap().unwrap();
    assert_eq!(finished.load(Ordering::SeqCst), 1, "the handler finished");
    let span = telemetry
        .wait_for(&format!("process {subject}"), 1)
        .await
        .remove(0);
    assert_eq!(span.status, Status::Unset);
}

/// `OnFailure::Stop`: the first failure stops the consumer with `ConsumeError::Handler`.
#[tokio::test]
async fn on_failure_stop_core_nats_returns_the_handler_error() {
    let url = support::url();
    let client = support::connect().await;
    let instrumentation = Instrumentation::new(tracelink_nats::messaging_system(&url));
    let subject = support::unique("stop");
    let subscriber = client.subscribe(subject.clone()).await.unwrap();
    support::round_trip(&client).await;
    let handler = service_fn(|delivery: NatsDelivery| async move {
        match &delivery.message.payload[..] {
            b"fail" => Err(std::io::Error::other("fails")),
            _ => Ok(()),
        }
    });
    let consumer = tokio::spawn(
        NatsConsumer::new(subscriber, instrumentation)
            .on_failure(OnFailure::Stop)
            .run(handler, std::future::pending::<()>()),
    );
    for payload in ["ok", "fail"] {
        client
            .publish(subject.clone(), payload.into())
            .await
            .unwrap();
    }
    let result = tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("the consumer stops")
        .unwrap();
    assert!(
        matches!(result, Err(ConsumeError::Handler(ref e)) if e.to_string() == "fails"),
        "{result:?}"
    );
}

/// The end of the subscription ends the consumer with Ok.
#[tokio::test]
async fn unsubscribed_source_ends_the_consumer() {
    let url = support::url();
    let client = support::connect().await;
    let instrumentation = Instrumentation::new(tracelink_nats::messaging_system(&url));
    let mut subscriber = client.subscribe(support::unique("end")).await.unwrap();
    subscriber.unsubscribe().await.unwrap();
    let handler = service_fn(|_: NatsDelivery| async { Ok::<_, std::convert::Infallible>(()) });
    tokio::time::timeout(
        Duration::from_secs(10),
        NatsConsumer::new(subscriber, instrumentation).run(handler, std::future::pending::<()>()),
    )
    .await
    .expect("ends")
    .unwrap();
}
