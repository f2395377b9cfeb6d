//! The hostile-header corpus (`tracelink-testkit`) through the Kafka adapter, against the mock
//! cluster and tansu: every message reaches the handler exactly once, the loop keeps running,
//! and each `process` span is a fresh root, linked only where the context was usable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::{SpanId, TraceContextExt};
use opentelemetry::Context;
use rdkafka::message::{Header, OwnedHeaders};
use tokio::sync::{mpsc, oneshot};
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::{Instrumentation, MessagingSystem};
use tracelink_kafka::{KafkaMessage, KafkaPublisher, KafkaRecord};
use tracelink_testkit::{
    baggage_size, check_baggage, check_process_span, corpus, w3c_propagator, Case, Expect,
    OTHER_TRACEPARENT, VALID_TRACEPARENT,
};

use support::{unique, Backend, Telemetry, TEST_TIMEOUT};

/// Kafka headers may repeat a name exactly; map-based carriers cannot, so these are Kafka's own.
fn kafka_cases() -> Vec<Case> {
    let mut cases = corpus();
    cases.push(Case {
        name: "kafka-tp-twice-same-name",
        what: "traceparent twice under the very same name, different values",
        headers: vec![
            ("traceparent".into(), VALID_TRACEPARENT.into()),
            ("traceparent".into(), OTHER_TRACEPARENT.into()),
        ],
        expect: Expect::FreshRoot,
    });
    cases.push(Case {
        name: "kafka-tp-null",
        what: "a null traceparent value next to a valid copy",
        headers: vec![
            ("traceparent".into(), VALID_TRACEPARENT.into()),
            ("Traceparent".into(), Vec::new()),
        ],
        expect: Expect::FreshRoot,
    });
    cases
}

#[derive(Debug, Clone)]
struct Seen {
    span_id: SpanId,
    baggage: (usize, usize),
}

both_backends!(hostile_headers_are_delivered_once_with_fresh_roots);
async fn hostile_headers_are_delivered_once_with_fresh_roots(backend: Backend) {
    let topic = unique("hostile");
    backend.create_topic(&topic, 1).await;
    let telemetry = Telemetry::new();
    let cases = kafka_cases();
    let mut config = backend.producer_config();
    // Room for the 1 MiB header (the producer's own default limit is 1000000 bytes).
    config.set("message.max.bytes", "4000000");
    let mut raw = KafkaPublisher::new(config.create().expect("producer"));
    let mut sent = Vec::new();
    for case in &cases {
        let headers = case
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (key, value)| {
                h.insert(Header {
                    key: key.as_str(),
                    // The empty value of `kafka-tp-null` is sent as a null value.
                    value: (!value.is_empty()).then_some(value.as_slice()),
                })
            });
        let mut record = KafkaRecord::new(&topic).with_payload(case.name);
        record.headers = Some(headers);
        raw.ready()
            .await
            .unwrap()
            .call(record)
            .await
            .unwrap_or_else(|e| panic!("{}: the broker refused the record: {e:?}", case.name));
        sent.push(case.name);
    }
    // Sent last: reaching it shows the loop kept running through every hostile record.
    let sentinel = "sentinel";
    raw.ready()
        .await
        .unwrap()
        .call(KafkaRecord::new(&topic).with_payload(sentinel))
        .await
        .expect("publish the sentinel");

    let instrumentation = Instrumentation::builder(MessagingSystem::new("kafka"))
        .with_tracer_provider(&telemetry.provider)
        .with_propagator(w3c_propagator())
        .build();
    let mut consume_config = tracelink_kafka::consumer_config(&backend.brokers(), &unique("group"));
    consume_config
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    let source = tracelink_kafka::KafkaSource::from_config(&consume_config).expect("consumer");
    rdkafka::consumer::Consumer::subscribe(&**source.consumer(), &[topic.as_str()])
        .expect("subscribe");
    let consume = tracelink_kafka::KafkaConsumer::new(source, instrumentation);

    let seen: Arc<Mutex<BTreeMap<String, Vec<Seen>>>> = Arc::default();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let handler = {
        let seen = seen.clone();
        service_fn(move |message: KafkaMessage| {
            let payload =
                String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            let cx = Context::current();
            seen.lock()
                .unwrap()
                .entry(payload.clone())
                .or_default()
                .push(Seen {
                    span_id: cx.span().span_context().span_id(),
                    baggage: baggage_size(&cx),
                });
            if payload == sentinel {
                let _ = done_tx.send(());
            }
            async { Ok::<_, std::io::Error>(()) }
        })
    };
    let watcher = async move {
        done_rx.recv().await;
        let _ = stop_tx.send(());
    };
    let run = consume.run(handler, async move {
        let _ = stop_rx.await;
    });
    let (result, ()) = tokio::time::timeout(TEST_TIMEOUT, async { tokio::join!(run, watcher) })
        .await
        .expect("the consume loop did not reach the sentinel in time");
    result.expect("hostile headers never stop the loop");

    let seen = seen.lock().unwrap().clone();
    let spans = telemetry.named(&format!("process {topic}"));
    assert_eq!(spans.len(), cases.len() + 1, "one process span per record");
    let mut failures = Vec::new();
    for case in &cases {
        let runs = seen.get(case.name).cloned().unwrap_or_default();
        if runs.len() != 1 {
            failures.push(format!("{}: handled {} times", case.name, runs.len()));
            continue;
        }
        let span = spans
            .iter()
            .find(|s| s.span_context.span_id() == runs[0].span_id)
            .expect("the handler's span was exported");
        failures.extend(check_process_span(case, span).err());
        failures.extend(check_baggage(case, runs[0].baggage).err());
    }
    assert_eq!(seen.get(sentinel).map(Vec::len), Some(1));
    assert!(failures.is_empty(), "{failures:#?}");
}
