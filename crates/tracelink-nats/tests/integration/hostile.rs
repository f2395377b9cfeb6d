//! The hostile-header corpus (`tracelink-testkit`) through a core NATS subscription: every
//! message the client can carry reaches the handler exactly once, the subscriber keeps running,
//! and each `process` span is a fresh root, linked only where the context was usable.
//!
//! Cases with bytes that are not UTF-8 are written on the wire by hand (`HPUB`): async-nats
//! cannot build them, and cannot receive them either. Its parser reads a header block that is
//! not UTF-8 as a protocol error: the subscriber's client drops the connection (losing the
//! message, as core NATS does on any disconnect) and reconnects, and the subscription goes on.
//! The test pins that behaviour down: such messages never reach tracelink.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, TraceContextExt};
use opentelemetry::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tower::{service_fn, Layer};
use tracelink_core::{ConsumerLayer, Instrumentation};
use tracelink_nats::Delivery;
use tracelink_testkit::{
    baggage_size, check_baggage, check_process_span, corpus, w3c_propagator, Case,
};

use crate::support::{self, Telemetry};

#[derive(Debug, Clone)]
struct Seen {
    span_id: SpanId,
    baggage: (usize, usize),
}

/// Publishes `headers` on `subject` over a raw protocol connection (`HPUB`), so that any bytes
/// reach the server; waits for the server's `PONG` so the message was routed.
async fn raw_publish(url: &str, subject: &str, headers: &[(String, Vec<u8>)], payload: &[u8]) {
    let address = url.trim_start_matches("nats://").trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("no NATS server at {address}: {e}"));
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    read.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("INFO"), "{line}");
    let mut block = b"NATS/1.0\r\n".to_vec();
    for (name, value) in headers {
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value);
        block.extend_from_slice(b"\r\n");
    }
    block.extend_from_slice(b"\r\n");
    let mut frame = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}}\r\nHPUB {subject} {} {}\r\n",
        block.len(),
        block.len() + payload.len()
    )
    .into_bytes();
    frame.extend_from_slice(&block);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\nPING\r\n");
    write.write_all(&frame).await.unwrap();
    loop {
        line.clear();
        assert!(
            read.read_line(&mut line).await.unwrap() > 0,
            "server closed"
        );
        assert!(!line.starts_with("-ERR"), "server refused: {line}");
        if line.starts_with("PONG") {
            return;
        }
    }
}

#[tokio::test]
async fn hostile_headers_are_delivered_once_with_fresh_roots() {
    let url = support::url();
    // The subscriber has a client of its own: the non-UTF-8 cases reset its connection.
    let client = support::connect().await;
    let publisher = support::connect().await;
    let telemetry = Telemetry::new();
    let instrumentation = Instrumentation::builder(tracelink_nats::system(&url))
        .with_tracer_provider(&telemetry.provider)
        .with_propagator(w3c_propagator())
        .build();
    let subject = support::unique("hostile");
    let max_payload = client.server_info().max_payload;
    let mut subscription = tracelink_nats::Subscription::subscribe(&client, subject.as_str())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let cases: Vec<Case> = corpus();
    let mut sent = Vec::new();
    let mut refused = Vec::new();
    let mut unreadable = Vec::new();
    for case in &cases {
        if case.size() + case.name.len() > max_payload {
            // Over the server's max_payload: the client refuses it before it is sent.
            let mut headers = HeaderMap::new();
            for (name, value) in case.text_headers().unwrap() {
                headers.append(
                    HeaderName::from_str(name).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            let result = publisher
                .publish_with_headers(subject.clone(), headers, case.name.into())
                .await;
            assert!(
                result.is_err(),
                "{}: over max_payload yet accepted",
                case.name
            );
            refused.push(case.name);
            continue;
        }
        match case.text_headers() {
            Some(text) => {
                let mut headers = HeaderMap::new();
                for (name, value) in text {
                    headers.append(
                        HeaderName::from_str(name).unwrap(),
                        HeaderValue::from_str(value).unwrap(),
                    );
                }
                publisher
                    .publish_with_headers(subject.clone(), headers, case.name.into())
                    .await
                    .unwrap();
                publisher.flush().await.unwrap();
            }
            None => {
                let stats = client.statistics();
                let before = stats.connects.load(Ordering::SeqCst);
                raw_publish(&url, &subject, &case.headers, case.name.as_bytes()).await;
                // The subscriber's client reconnects (and resubscribes) before the next case.
                let deadline = Instant::now() + Duration::from_secs(10);
                while stats.connects.load(Ordering::SeqCst) == before {
                    assert!(
                        Instant::now() < deadline,
                        "{}: the subscriber's connection was not reset",
                        case.name
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                client.flush().await.unwrap();
                unreadable.push(case.name);
            }
        }
        sent.push(case.name);
    }
    client
        .publish(subject.clone(), "sentinel".into())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let seen: Arc<Mutex<BTreeMap<String, Vec<Seen>>>> = Arc::default();
    let mut handler = ConsumerLayer::from(instrumentation).layer(service_fn({
        let seen = seen.clone();
        move |delivery: Delivery| {
            let payload = String::from_utf8_lossy(&delivery.message.payload).into_owned();
            let cx = Context::current();
            seen.lock().unwrap().entry(payload).or_default().push(Seen {
                span_id: cx.span().span_context().span_id(),
                baggage: baggage_size(&cx),
            });
            async { Ok::<_, std::convert::Infallible>(()) }
        }
    }));
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            subscription
                .process_next(&mut handler)
                .await
                .expect("the subscription stays open")
                .unwrap();
            if seen.lock().unwrap().contains_key("sentinel") {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the sentinel never arrived; handled: {:?}",
            seen.lock().unwrap().keys().collect::<Vec<_>>()
        )
    });

    let seen = seen.lock().unwrap().clone();
    let spans = telemetry.spans();
    let mut failures = Vec::new();
    for case in &cases {
        let runs = seen.get(case.name).cloned().unwrap_or_default();
        if refused.contains(&case.name) || unreadable.contains(&case.name) {
            if !runs.is_empty() {
                failures.push(format!("{}: expected async-nats to drop it", case.name));
            }
            continue;
        }
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
    assert_eq!(
        refused,
        vec!["tp-1mib"],
        "only the 1 MiB case exceeds max_payload"
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// JetStream stores a message whose header block is not UTF-8 and redelivers it; async-nats
/// resets the connection on each delivery. With `max_deliver` set, the server gives up on it and
/// the messages around it are handled exactly once: the consumer keeps running.
#[tokio::test]
async fn jetstream_survives_a_header_block_that_is_not_utf8() {
    use async_nats::jetstream::{self, consumer::pull, stream};
    use tracelink_nats::{JetStreamConsumer, JetStreamDelivery};

    let url = support::url();
    let client = support::connect().await;
    let telemetry = Telemetry::new();
    let instrumentation = Instrumentation::builder(tracelink_nats::system(&url))
        .with_tracer_provider(&telemetry.provider)
        .with_propagator(w3c_propagator())
        .build();
    let js = jetstream::new(client.clone());
    let name = support::unique("HOSTILE");
    let subject = format!("{}.events", name.to_lowercase());
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            max_age: Duration::from_secs(300),
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("workers".into()),
            ack_wait: Duration::from_secs(1),
            max_deliver: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let publish = |payload: &'static str| {
        let js = js.clone();
        let subject = subject.clone();
        async move {
            js.publish(subject, payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    publish("before").await;
    let bad = [("traceparent".to_owned(), vec![0xff, 0xfe, 0x00])];
    raw_publish(&url, &subject, &bad, b"not-utf8").await;
    publish("after").await;

    let handled: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let mut handler = ConsumerLayer::from(instrumentation.clone()).layer(service_fn({
        let handled = handled.clone();
        move |delivery: JetStreamDelivery| {
            let payload = String::from_utf8_lossy(&delivery.message.payload).into_owned();
            *handled.lock().unwrap().entry(payload).or_default() += 1;
            async { Ok::<_, std::convert::Infallible>(()) }
        }
    }));
    let connects = client.statistics().connects.load(Ordering::SeqCst);
    let mut loop_ = JetStreamConsumer::new(consumer, instrumentation)
        .with_batch_size(1)
        .with_expires(Duration::from_secs(1));
    let mut errors = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while handled.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "handled only {:?}",
            handled.lock().unwrap()
        );
        if loop_.process_next(&mut handler).await.is_err() {
            // The reset connection fails a fetch; the loop is simply resumed.
            errors += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Keep consuming a little: neither neighbour comes again, the bad message never arrives.
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let _ = loop_.process_next(&mut handler).await;
    }
    let handled = handled.lock().unwrap().clone();
    assert_eq!(
        handled,
        BTreeMap::from([("after".to_owned(), 1), ("before".to_owned(), 1)]),
        "the messages around it are handled exactly once; it never reaches a handler"
    );
    let resets = client.statistics().connects.load(Ordering::SeqCst) - connects;
    assert!(resets >= 1, "the bad message reset the connection");
    eprintln!("connection resets: {resets}, failed fetches: {errors}");
}
