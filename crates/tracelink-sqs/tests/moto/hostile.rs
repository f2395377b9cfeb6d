//! The hostile-header corpus (`tracelink-testkit`) as SQS message attributes (text as `String`,
//! other bytes as `Binary`), plus messages that already carry SQS's 10 attributes, through the
//! consumer against moto: every message reaches the handler exactly once and is deleted, the
//! consumer keeps polling, and each `process` span is a fresh root, linked only where the
//! context was usable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;
use opentelemetry::trace::{SpanId, TraceContextExt};
use opentelemetry::Context;
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::Instrumentation;
use tracelink_sqs::{
    messaging_system, ReceivedMessage, SendRequest, SqsConsumer, SqsPublisher, SqsSource,
};
use tracelink_testkit::{
    baggage_size, check_baggage, check_process_span, corpus, w3c_propagator, Case, Expect,
};

use crate::support::*;

#[derive(Debug, Clone)]
struct Seen {
    span_id: SpanId,
    baggage: (usize, usize),
}

fn attribute(value: &[u8]) -> MessageAttributeValue {
    match std::str::from_utf8(value) {
        Ok(text) => MessageAttributeValue::builder()
            .data_type("String")
            .string_value(text)
            .build()
            .unwrap(),
        Err(_) => MessageAttributeValue::builder()
            .data_type("Binary")
            .binary_value(Blob::new(value))
            .build()
            .unwrap(),
    }
}

fn ten_user_attributes() -> Vec<(String, MessageAttributeValue)> {
    (0..10)
        .map(|i| (format!("user{i}"), attribute(format!("v{i}").as_bytes())))
        .collect()
}

#[tokio::test]
async fn hostile_attributes_are_delivered_once_with_fresh_roots() {
    let client = client().await;
    let url = queue(&client, "hostile", &[]).await;
    let t = telemetry();
    let instrumentation =
        Instrumentation::builder(messaging_system(Some(&endpoint()), Some("us-east-1")))
            .with_tracer_provider(&t.provider)
            .with_propagator(w3c_propagator())
            .build();

    let cases = corpus();
    let mut refused = Vec::new();
    for case in &cases {
        let mut send = client
            .send_message()
            .queue_url(&url)
            .message_body(case.name);
        for (name, value) in &case.headers {
            send = send.message_attributes(name, attribute(value));
        }
        if let Err(e) = send.send().await {
            // SQS caps a message (body and attributes) at 1 MiB (256 KiB before August 2025);
            // only the 1 MiB case can be over. moto accepts it; real SQS refuses it.
            assert_eq!(case.name, "tp-1mib", "refused by SQS: {e:?}");
            refused.push(case.name);
        }
    }

    // 10 user attributes already present: a raw message with no room for a context, and one
    // through the traced sender, which falls back to the `AWSTraceHeader` system attribute.
    let mut crowded = client
        .send_message()
        .queue_url(&url)
        .message_body("sqs-ten-attributes-raw");
    for (name, value) in ten_user_attributes() {
        crowded = crowded.message_attributes(name, value);
    }
    crowded.send().await.expect("10 attributes fit");
    let mut request = SendRequest::new(&url, "sqs-ten-attributes-traced");
    for (name, value) in ten_user_attributes() {
        request = request.with_attribute(name, value);
    }
    let mut sender = SqsPublisher::new(client.clone()).traced(instrumentation.clone());
    sender
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .expect("tracing never pushes a send over the 10-attribute limit");
    let traced_producer = t
        .named(&format!("send {}", tracelink_sqs::queue_name(&url)))
        .pop()
        .expect("a send span")
        .span_context;

    let seen: Arc<Mutex<BTreeMap<String, Vec<Seen>>>> = Arc::default();
    let handler_seen = seen.clone();
    // "All": the corpus has `Traceparent` as Go clients spell it, which SQS names exactly.
    let source = SqsSource::new(client.clone(), &url)
        .with_wait_time(Duration::from_secs(1))
        .with_message_attribute_names(["All"]);
    let handler = service_fn(move |m: ReceivedMessage| {
        let cx = Context::current();
        handler_seen
            .lock()
            .unwrap()
            .entry(m.body().to_owned())
            .or_default()
            .push(Seen {
                span_id: cx.span().span_context().span_id(),
                baggage: baggage_size(&cx),
            });
        async { Ok::<_, std::convert::Infallible>(()) }
    });
    let expected = cases.len() - refused.len() + 2;
    let all_handled = {
        let seen = seen.clone();
        async move {
            while seen.lock().unwrap().values().map(Vec::len).sum::<usize>() < expected {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        SqsConsumer::new(source.clone(), instrumentation.clone()).run(handler.clone(), all_handled),
    )
    .await
    .unwrap_or_else(|_| panic!("handled only {:?}", seen.lock().unwrap().keys()))
    .expect("hostile attributes never stop the consumer");
    // Another two seconds of consuming: nothing comes back (every message was deleted after its
    // handler).
    SqsConsumer::new(source, instrumentation)
        .run(handler, tokio::time::sleep(Duration::from_secs(2)))
        .await
        .unwrap();

    let seen = seen.lock().unwrap().clone();
    let spans = t.spans();
    let span_of = |runs: &[Seen]| {
        spans
            .iter()
            .find(|s| s.span_context.span_id() == runs[0].span_id)
            .expect("the handler's span was exported")
            .clone()
    };
    let mut failures = Vec::new();
    for case in &cases {
        let runs = seen.get(case.name).cloned().unwrap_or_default();
        if refused.contains(&case.name) {
            continue;
        }
        if runs.len() != 1 {
            failures.push(format!("{}: handled {} times", case.name, runs.len()));
            continue;
        }
        failures.extend(check_process_span(case, &span_of(&runs)).err());
        failures.extend(check_baggage(case, runs[0].baggage).err());
    }
    let raw = seen
        .get("sqs-ten-attributes-raw")
        .cloned()
        .unwrap_or_default();
    assert_eq!(raw.len(), 1, "the crowded raw message is handled once");
    let raw_case = Case {
        name: "sqs-ten-attributes-raw",
        what: "10 user attributes, no context",
        headers: Vec::new(),
        expect: Expect::FreshRoot,
    };
    failures.extend(check_process_span(&raw_case, &span_of(&raw)).err());
    let traced = seen
        .get("sqs-ten-attributes-traced")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        traced.len(),
        1,
        "the crowded traced message is handled once"
    );
    let span = span_of(&traced);
    let links: Vec<_> = span.links.iter().map(|l| ids(&l.span_context)).collect();
    assert_eq!(
        links,
        vec![ids(&traced_producer)],
        "linked through AWSTraceHeader"
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        messages_left(&client, &url).await,
        0,
        "every message was deleted"
    );
}
