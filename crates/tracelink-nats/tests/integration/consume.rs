//! The core's consume lifecycle on JetStream: settle spans with JetStream's verbs, the failure
//! policies as the broker sees them, graceful shutdown, `OnFailure::Stop`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures_util::StreamExt;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::SpanData;
use tower::service_fn;
use tracelink_core::{ConsumeError, Instrumentation, OnFailure};
use tracelink_nats::{JetStreamConsumer, JetStreamDelivery, JetStreamSource};

use crate::jetstream::setup;
use crate::support::{self, assert_kind, attributes, until, Telemetry};

fn payload(delivery: &JetStreamDelivery) -> String {
    String::from_utf8_lossy(&delivery.message.payload).into_owned()
}

async fn publish(js: &jetstream::Context, subject: &str, payloads: &[&str]) {
    for p in payloads {
        js.publish(subject.to_owned(), p.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

async fn info(consumer: &PullConsumer) -> jetstream::consumer::Info {
    consumer.clone().info().await.unwrap().clone()
}

/// One handler run: the payload, the delivery count, whether the broker had acked the message
/// before the handler finished (read at the end of the handler).
#[derive(Debug, Clone, PartialEq)]
struct Run {
    payload: String,
    delivered: i64,
    acked_before_end: bool,
}

/// A handler failing on the first delivery of `fail*` payloads, recording each run.
fn recording_handler(
    consumer: PullConsumer,
    runs: Arc<Mutex<Vec<Run>>>,
) -> impl tower::Service<
    JetStreamDelivery,
    Response = (),
    Error = std::io::Error,
    Future = impl std::future::Future<Output = Result<(), std::io::Error>> + Send,
> + Send
       + 'static {
    service_fn(move |delivery: JetStreamDelivery| {
        let consumer = consumer.clone();
        let runs = runs.clone();
        async move {
            let sequence = delivery.stream_sequence().unwrap();
            let delivered = delivery.delivered().unwrap();
            let text = payload(&delivery);
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Acks are not confirmed: a round trip to the server (consumer info) lets an early
            // ack show.
            let state = info(&consumer).await;
            let acked_before_end = state.ack_floor.stream_sequence >= sequence;
            runs.lock().unwrap().push(Run {
                payload: text.clone(),
                delivered,
                acked_before_end,
            });
            if text.starts_with("fail") && delivered == 1 {
                return Err(std::io::Error::other("first attempt fails"));
            }
            Ok(())
        }
    })
}

fn by_name<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn assert_settle_span(settle: &SpanData, process: &SpanData, verb: &str) {
    assert_kind(settle, SpanKind::Client);
    let a = attributes(settle);
    assert_eq!(a["messaging.operation.type"], "settle", "{settle:?}");
    assert_eq!(a["messaging.operation.name"], verb, "{settle:?}");
    assert_eq!(settle.parent_span_id, process.span_context.span_id());
    assert_eq!(
        settle.span_context.trace_id(),
        process.span_context.trace_id()
    );
    assert!(settle.start_time >= process.end_time || settle.start_time >= process.start_time);
}

/// The settle span of each process span, by verb.
fn settles_of(spans: &[SpanData], process: &SpanData) -> Vec<String> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == process.span_context.span_id())
        .filter(|s| {
            attributes(s)
                .get("messaging.operation.type")
                .map(String::as_str)
                == Some("settle")
        })
        .map(|s| attributes(s)["messaging.operation.name"].clone())
        .collect()
}

#[tokio::test]
async fn settle_spans_ack_and_nak_then_redelivered() {
    let url = support::url();
    let telemetry = Telemetry::new();
    let instrumentation = telemetry.instrumentation(&url);
    let (js, stream, subject, consumer) =
        setup(support::connect().await, Duration::from_secs(30)).await;
    publish(&js, &subject, &["ok", "fail"]).await;

    let runs = Arc::new(Mutex::new(Vec::new()));
    let handler = recording_handler(consumer.clone(), runs.clone());
    let source = JetStreamSource::new(consumer.clone()).with_expires(Duration::from_secs(1));
    JetStreamConsumer::new(source, instrumentation)
        .with_settle_spans()
        .run(handler, until(|| runs.lock().unwrap().len() == 3))
        .await
        .unwrap();

    let runs = runs.lock().unwrap().clone();
    let mut seen: Vec<_> = runs
        .iter()
        .map(|r| (r.payload.as_str(), r.delivered))
        .collect();
    seen.sort();
    assert_eq!(seen, [("fail", 1), ("fail", 2), ("ok", 1)], "{runs:?}");
    assert!(
        runs.iter().all(|r| !r.acked_before_end),
        "nothing acked before its handler finished: {runs:?}"
    );

    let processes = telemetry.wait_for(&format!("process {subject}"), 3).await;
    let acks = telemetry.wait_for(&format!("ack {subject}"), 2).await;
    let naks = telemetry.wait_for(&format!("nak {subject}"), 1).await;
    let spans = telemetry.spans();
    for process in &processes {
        let verbs = settles_of(&spans, process);
        let failed = matches!(process.status, Status::Error { .. });
        assert_eq!(
            verbs,
            [if failed { "nak" } else { "ack" }],
            "one settle span per process span"
        );
    }
    for settle in acks.iter().chain(&naks) {
        let process = processes
            .iter()
            .find(|p| p.span_context.span_id() == settle.parent_span_id)
            .expect("the settle span's parent is a process span");
        assert_settle_span(
            settle,
            process,
            if settle.name.starts_with("ack") {
                "ack"
            } else {
                "nak"
            },
        );
    }
    assert!(by_name(&spans, &format!("term {subject}")).is_empty());
    crate::jetstream::assert_all_acked(&consumer, 2).await;
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn settle_spans_reject_terminates_the_message() {
    let url = support::url();
    let client = support::connect().await;
    let telemetry = Telemetry::new();
    let instrumentation = telemetry.instrumentation(&url);
    let (js, stream, subject, consumer) = setup(client.clone(), Duration::from_secs(30)).await;
    let mut terminated = client
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.workers"
        ))
        .await
        .unwrap();
    support::round_trip(&client).await;
    publish(&js, &subject, &["fail", "ok"]).await;

    let runs = Arc::new(Mutex::new(Vec::new()));
    let handler = recording_handler(consumer.clone(), runs.clone());
    let source = JetStreamSource::new(consumer.clone()).with_expires(Duration::from_secs(1));
    JetStreamConsumer::new(source, instrumentation)
        .with_settle_spans()
        .on_failure(OnFailure::Reject)
        .run(handler, until(|| runs.lock().unwrap().len() == 2))
        .await
        .unwrap();

    // The server says it terminated the failed message (stream sequence 1).
    let advisory = tokio::time::timeout(Duration::from_secs(10), terminated.next())
        .await
        .expect("a MSG_TERMINATED advisory")
        .unwrap();
    let text = String::from_utf8_lossy(&advisory.payload).into_owned();
    assert!(text.contains("\"stream_seq\":1"), "{text}");
    // Nothing pending, nothing redelivered.
    crate::jetstream::assert_all_acked(&consumer, 2).await;
    assert_eq!(info(&consumer).await.num_redelivered, 0);

    let processes = telemetry.wait_for(&format!("process {subject}"), 2).await;
    let term = telemetry
        .wait_for(&format!("term {subject}"), 1)
        .await
        .remove(0);
    let ack = telemetry
        .wait_for(&format!("ack {subject}"), 1)
        .await
        .remove(0);
    let failed = processes
        .iter()
        .find(|p| matches!(p.status, Status::Error { .. }))
        .unwrap();
    assert_settle_span(&term, failed, "term");
    let succeeded = processes
        .iter()
        .find(|p| !matches!(p.status, Status::Error { .. }))
        .unwrap();
    assert_settle_span(&ack, succeeded, "ack");
    assert!(
        failed.events.iter().any(|e| e.name == "message rejected"),
        "{:?}",
        failed.events
    );
    js.delete_stream(&stream).await.unwrap();
}

/// Shutdown while a handler runs: the handler finishes, its message is acked, `run` returns
/// Ok, and the messages fetched but never handled are given back (`nak`) at once: a new
/// consumer gets them long before the ack wait (30 s) ran out.
#[tokio::test]
async fn graceful_shutdown_settles_the_running_message_and_gives_back_the_rest() {
    let url = support::url();
    let telemetry = Telemetry::new();
    let instrumentation = telemetry.instrumentation(&url);
    let (js, stream, subject, consumer) =
        setup(support::connect().await, Duration::from_secs(30)).await;
    publish(&js, &subject, &["first", "second", "third"]).await;

    let started = Arc::new(tokio::sync::Notify::new());
    let finished = Arc::new(Mutex::new(Vec::new()));
    let handler = service_fn({
        let started = started.clone();
        let finished = finished.clone();
        move |delivery: JetStreamDelivery| {
            let started = started.clone();
            let finished = finished.clone();
            async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(500)).await;
                finished.lock().unwrap().push(payload(&delivery));
                Ok::<_, std::io::Error>(())
            }
        }
    });
    let source = JetStreamSource::new(consumer.clone()).with_expires(Duration::from_secs(5));
    let run = tokio::spawn(
        JetStreamConsumer::new(source, instrumentation.clone())
            .with_settle_spans()
            .run(handler, async move { started.notified().await }),
    );
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run returns")
        .unwrap()
        .unwrap();
    assert_eq!(
        *finished.lock().unwrap(),
        ["first"],
        "the running handler finished"
    );
    telemetry.wait_for(&format!("ack {subject}"), 1).await;
    let nak_spans = telemetry
        .names()
        .into_iter()
        .filter(|n| n.starts_with("nak "))
        .count();
    assert_eq!(
        nak_spans, 0,
        "messages given back have no process span, so no settle span"
    );

    // A new consumer gets the two others, redelivered at once.
    let again = Arc::new(Mutex::new(BTreeMap::new()));
    let handler = service_fn({
        let again = again.clone();
        move |delivery: JetStreamDelivery| {
            again
                .lock()
                .unwrap()
                .insert(payload(&delivery), delivery.delivered().unwrap());
            async { Ok::<_, std::io::Error>(()) }
        }
    });
    let source = JetStreamSource::new(consumer.clone()).with_expires(Duration::from_secs(1));
    tokio::time::timeout(
        Duration::from_secs(10),
        JetStreamConsumer::new(source, instrumentation)
            .run(handler, until(|| again.lock().unwrap().len() == 2)),
    )
    .await
    .expect("given back at once, not after the ack wait")
    .unwrap();
    let again = again.lock().unwrap().clone();
    assert_eq!(
        again,
        BTreeMap::from([("second".to_owned(), 2), ("third".to_owned(), 2)]),
        "delivered a second time"
    );
    crate::jetstream::assert_all_acked(&consumer, 3).await;
    js.delete_stream(&stream).await.unwrap();
}

/// `OnFailure::Stop`: `run` returns `ConsumeError::Handler`, and the message is redelivered.
#[tokio::test]
async fn on_failure_stop_returns_the_handler_error_and_the_message_comes_back() {
    let url = support::url();
    let instrumentation = Instrumentation::new(tracelink_nats::messaging_system(&url));
    let (js, stream, subject, consumer) =
        setup(support::connect().await, Duration::from_secs(30)).await;
    publish(&js, &subject, &["fail"]).await;

    let handler = service_fn(|_: JetStreamDelivery| async {
        Err::<(), _>(std::io::Error::other("stop here"))
    });
    let source = JetStreamSource::new(consumer.clone()).with_expires(Duration::from_secs(1));
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        JetStreamConsumer::new(source, instrumentation.clone())
            .on_failure(OnFailure::Stop)
            .run(handler, std::future::pending::<()>()),
    )
    .await
    .expect("the consumer stops");
    assert!(
        matches!(result, Err(ConsumeError::Handler(ref e)) if e.to_string() == "stop here"),
        "{result:?}"
    );

    let delivered = Arc::new(Mutex::new(Vec::new()));
    let handler = service_fn({
        let delivered = delivered.clone();
        move |delivery: JetStreamDelivery| {
            delivered
                .lock()
                .unwrap()
                .push(delivery.delivered().unwrap());
            async { Ok::<_, std::io::Error>(()) }
        }
    });
    let source = JetStreamSource::new(consumer.clone()).with_expires(Duration::from_secs(1));
    tokio::time::timeout(
        Duration::from_secs(10),
        JetStreamConsumer::new(source, instrumentation)
            .run(handler, until(|| !delivered.lock().unwrap().is_empty())),
    )
    .await
    .expect("redelivered at once (nak)")
    .unwrap();
    assert_eq!(*delivered.lock().unwrap(), [2]);
    crate::jetstream::assert_all_acked(&consumer, 1).await;
    js.delete_stream(&stream).await.unwrap();
}
