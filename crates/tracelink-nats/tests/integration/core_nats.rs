//! Core NATS: publish/subscribe, Go-style headers, queue groups, request/reply.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use tokio::sync::mpsc;
use tower::{service_fn, Layer, Service, ServiceExt};
use tracelink_core::ConsumerLayer;
use tracelink_nats::{Delivery, Publish, Publisher, Requester, ResponderLayer, Subscription};

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

    let mut subscription = Subscription::subscribe(&client, subject.as_str())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut handler = ConsumerLayer::from(instrumentation.clone()).layer(service_fn(
        move |delivery: Delivery| {
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
        },
    ));

    let mut headers = HeaderMap::new();
    headers.insert("user", "kept");
    let mut publisher = Publisher::traced(client.clone(), instrumentation);
    publisher
        .ready()
        .await
        .unwrap()
        .call(Publish::new(subject.as_str(), "hello").with_headers(headers))
        .await
        .unwrap();

    subscription
        .process_next(&mut handler)
        .await
        .unwrap()
        .unwrap();
    let (payload, user) = rx.recv().await.unwrap();
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
    let mut subscription = Subscription::subscribe(&client, subject.as_str())
        .await
        .unwrap();
    client.flush().await.unwrap();

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

    let mut handler = ConsumerLayer::from(telemetry.instrumentation(&url)).layer(service_fn(
        |_: Delivery| async { Ok::<_, std::convert::Infallible>(()) },
    ));
    subscription
        .process_next(&mut handler)
        .await
        .unwrap()
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
        let subscription = Subscription::queue_subscribe(&client, subject.as_str(), group.as_str())
            .await
            .unwrap();
        let handled = handled.clone();
        let handler = ConsumerLayer::from(instrumentation.clone()).layer(service_fn(
            move |delivery: Delivery| {
                let handled = handled.clone();
                async move {
                    assert!(delivery.queue_group().is_some());
                    handled.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(())
                }
            },
        ));
        tasks.push(tokio::spawn(subscription.run(handler)));
    }
    client.flush().await.unwrap();

    let mut publisher = Publisher::traced(client.clone(), instrumentation);
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

    let subscription = Subscription::subscribe(&client, subject.as_str())
        .await
        .unwrap();
    let responder = ResponderLayer::new(client.clone(), &telemetry.builder(&url).build()).layer(
        service_fn(|request: Delivery| async move {
            let mut answer = b"re: ".to_vec();
            answer.extend_from_slice(&request.message.payload);
            Ok::<_, std::convert::Infallible>(tracelink_nats::Bytes::from(answer))
        }),
    );
    let task = tokio::spawn(subscription.run(responder));
    client.flush().await.unwrap();

    let mut requester = Requester::traced(client.clone(), telemetry.instrumentation(&url));
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
    let mut requester = Requester::traced(client.clone(), telemetry.instrumentation(&url));
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
