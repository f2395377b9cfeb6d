//! The hostile-header corpus (`tracelink-testkit`) through a core NATS subscription and through
//! JetStream: every message the client can carry reaches the handler exactly once (on JetStream:
//! and is acked), the consumer keeps running, and each `process` span is a fresh root, linked
//! only where the context was usable.
//!
//! Cases with bytes that are not UTF-8 are written on the wire by hand (`HPUB`): async-nats
//! cannot build them, and cannot receive them either. Its parser reads a header block that is
//! not UTF-8 as a protocol error: the subscriber's client drops the connection (losing the
//! message, as core NATS does on any disconnect) and reconnects, and the subscription goes on.
//! The tests pin that behaviour down: such messages never reach tracelink.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, TraceContextExt};
use opentelemetry::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tower::service_fn;
use tracelink_core::Instrumentation;
use tracelink_nats::{NatsConsumer, NatsDelivery};
use tracelink_testkit::{
    baggage_size, check_baggage, check_process_span, corpus, w3c_propagator, Case,
};

use crate::support::{self, Telemetry};

#[derive(Debug, Clone)]
struct Seen {
    span_id: SpanId,
    baggage: (usize, usize),
}

/// What went wrong with each case: a case the client refused or could not read must not have
/// reached the handler; every other one must have been handled once, with the promised span and
/// baggage.
fn check_cases(
    cases: &[Case],
    seen: &BTreeMap<String, Vec<Seen>>,
    telemetry: &Telemetry,
    refused: &[&str],
    unreadable: &[&str],
) -> Vec<String> {
    let spans = telemetry.spans();
    let mut failures = Vec::new();
    for case in cases {
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
    failures
}

/// Publishes `headers` on `subject` over a raw protocol connection (`HPUB`), so that any bytes
/// reach the server; waits for the server's `PONG` so the message was routed.
/// A case's text headers as an async-nats header map.
fn header_map<'a>(text: impl IntoIterator<Item = (&'a str, &'a str)>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in text {
        headers.append(
            HeaderName::from_str(name).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

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
    let instrumentation = Instrumentation::builder(tracelink_nats::messaging_system(&url))
        .with_tracer_provider(&telemetry.provider)
        .with_propagator(w3c_propagator())
        .build();
    let subject = support::unique("hostile");
    let max_payload = client.server_info().max_payload;
    let subscriber = client.subscribe(subject.clone()).await.unwrap();
    support::round_trip(&client).await;

    let cases: Vec<Case> = corpus();
    let mut sent = Vec::new();
    let mut refused = Vec::new();
    let mut unreadable = Vec::new();
    for case in &cases {
        if case.size() + case.name.len() > max_payload {
            // Over the server's max_payload: the client refuses it before it is sent.
            let headers = header_map(case.text_headers().unwrap());
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
                let headers = header_map(text);
                publisher
                    .publish_with_headers(subject.clone(), headers, case.name.into())
                    .await
                    .unwrap();
                support::round_trip(&publisher).await;
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
                support::round_trip(&client).await;
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
    let handler = service_fn({
        let seen = seen.clone();
        move |delivery: NatsDelivery| {
            let payload = String::from_utf8_lossy(&delivery.message.payload).into_owned();
            let cx = Context::current();
            seen.lock().unwrap().entry(payload).or_default().push(Seen {
                span_id: cx.span().span_context().span_id(),
                baggage: baggage_size(&cx),
            });
            async { Ok::<_, std::convert::Infallible>(()) }
        }
    });
    tokio::time::timeout(
        Duration::from_secs(30),
        NatsConsumer::new(subscriber, instrumentation).run(
            handler,
            support::until(|| seen.lock().unwrap().contains_key("sentinel")),
        ),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the sentinel never arrived; handled: {:?}",
            seen.lock().unwrap().keys().collect::<Vec<_>>()
        )
    })
    .expect("the subscription stays open");

    let seen = seen.lock().unwrap().clone();
    let failures = check_cases(&cases, &seen, &telemetry, &refused, &unreadable);
    assert_eq!(
        refused,
        vec!["tp-1mib"],
        "only the 1 MiB case exceeds max_payload"
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The whole corpus through JetStream and the JetStream consume loop: every case the client can
/// carry is stored, handled exactly once and acked, each `process` span a fresh root, linked only
/// where the context was usable.
///
/// The cases whose header block is not UTF-8 are stored too (the server does not read header
/// values); async-nats resets the connection on each delivery of one (see the module docs), so
/// they never reach a handler. The consumer sets `max_deliver: 1`, so the server gives up on
/// such a message after its first delivery, and says so in a `MAX_DELIVERIES` advisory: that
/// the advisories name exactly the unreadable messages shows every other message acked (an
/// unacked one would have hit the limit too once its ack wait ran out). Each reset costs the
/// loop a fetch that waits out async-nats' own guard (the expiry plus 5 s): one delivery each
/// keeps the test at about 20 s.
#[tokio::test]
async fn jetstream_hostile_headers_are_handled_once_with_fresh_roots() {
    use async_nats::jetstream::{self, consumer::pull, stream};
    use futures_util::{FutureExt, StreamExt};
    use tracelink_nats::{JetStreamConsumer, JetStreamDelivery, JetStreamSource};

    let url = support::url();
    let client = support::connect().await;
    let telemetry = Telemetry::new();
    let instrumentation = Instrumentation::builder(tracelink_nats::messaging_system(&url))
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
            // Left behind on the shared server by a failed run: gone in 5 minutes.
            max_age: Duration::from_secs(300),
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("workers".into()),
            ack_wait: Duration::from_secs(2),
            max_deliver: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut advisories = client
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{name}.workers"
        ))
        .await
        .unwrap();
    support::round_trip(&client).await;
    let max_payload = client.server_info().max_payload;

    let cases: Vec<Case> = corpus();
    let mut refused = Vec::new();
    let mut unreadable = Vec::new();
    // Stream sequences of the messages the client acknowledged as stored.
    let mut acknowledged = BTreeMap::new();
    for case in &cases {
        match case.text_headers() {
            Some(text) => {
                let headers = header_map(text);
                let sent = js
                    .publish_with_headers(subject.clone(), headers, case.name.into())
                    .await;
                if case.size() + case.name.len() > max_payload {
                    // Over the server's max_payload: the client refuses it before it is sent.
                    assert!(
                        sent.is_err(),
                        "{}: over max_payload yet accepted",
                        case.name
                    );
                    refused.push(case.name);
                    continue;
                }
                let ack = sent.unwrap().await.unwrap();
                acknowledged.insert(ack.sequence, case.name);
            }
            None => {
                // No acknowledgement asked for: its sequence is the one the others leave free.
                raw_publish(&url, &subject, &case.headers, case.name.as_bytes()).await;
                unreadable.push(case.name);
            }
        }
    }
    let ack = js
        .publish(subject.clone(), "sentinel".into())
        .await
        .unwrap()
        .await
        .unwrap();
    acknowledged.insert(ack.sequence, "sentinel");
    // Each message was routed to the stream before the next was sent, so they are stored in
    // order, and the sentinel is the last.
    let unreadable_sequences: BTreeSet<u64> = (1..ack.sequence)
        .filter(|seq| !acknowledged.contains_key(seq))
        .collect();
    assert_eq!(
        unreadable_sequences.len(),
        unreadable.len(),
        "every case the client can carry is stored, the unreadable ones too: {acknowledged:?}"
    );

    let seen: Arc<Mutex<BTreeMap<String, Vec<Seen>>>> = Arc::default();
    let handler = service_fn({
        let seen = seen.clone();
        move |delivery: JetStreamDelivery| {
            let payload = String::from_utf8_lossy(&delivery.message.payload).into_owned();
            let cx = Context::current();
            seen.lock().unwrap().entry(payload).or_default().push(Seen {
                span_id: cx.span().span_context().span_id(),
                baggage: baggage_size(&cx),
            });
            async { Ok::<_, std::convert::Infallible>(()) }
        }
    });
    let connects = client.statistics().connects.load(Ordering::SeqCst);
    // One message per fetch; a reset connection fails a fetch, which the source retries.
    let source = JetStreamSource::new(consumer.clone()).with_expires(Duration::from_secs(1));
    // Consume until the sentinel was handled and the server holds nothing for the consumer:
    // every message acked or given up on.
    let done = {
        let seen = seen.clone();
        let consumer = consumer.clone();
        async move {
            loop {
                if seen.lock().unwrap().contains_key("sentinel") {
                    if let Ok(info) = consumer.clone().info().await {
                        if (info.num_pending, info.num_ack_pending) == (0, 0) {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    tokio::time::timeout(
        Duration::from_secs(90),
        JetStreamConsumer::new(source, instrumentation)
            .with_prefetch(1)
            .run(handler, done),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "still pending after 90 s; handled: {:?}",
            seen.lock().unwrap().keys().collect::<Vec<_>>()
        )
    })
    .expect("the consumer runs through the resets");
    let resets = client.statistics().connects.load(Ordering::SeqCst) - connects;

    // The server gave up on exactly the unreadable messages.
    let mut given_up = BTreeSet::new();
    let read_advisory = |message: async_nats::Message| -> u64 {
        let text = String::from_utf8_lossy(&message.payload).into_owned();
        let digits: String = text
            .split_once("\"stream_seq\":")
            .map(|(_, rest)| rest.trim_start())
            .unwrap_or_default()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("an advisory: {text}"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while given_up.len() < unreadable_sequences.len() && Instant::now() < deadline {
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), advisories.next()).await
        {
            given_up.insert(read_advisory(message));
        }
    }
    support::round_trip(&client).await;
    while let Some(Some(message)) = advisories.next().now_or_never() {
        given_up.insert(read_advisory(message));
    }
    assert_eq!(
        given_up, unreadable_sequences,
        "MAX_DELIVERIES advisories name exactly the unreadable messages: every other was acked"
    );

    let seen = seen.lock().unwrap().clone();
    let failures = check_cases(&cases, &seen, &telemetry, &refused, &unreadable);
    assert_eq!(
        seen.get("sentinel").map(Vec::len),
        Some(1),
        "the sentinel is handled once"
    );
    assert_eq!(
        refused,
        vec!["tp-1mib"],
        "only the 1 MiB case exceeds max_payload"
    );
    assert_eq!(
        unreadable,
        vec!["tp-not-utf8", "tracestate-not-utf8", "baggage-not-utf8"],
        "the cases that are not UTF-8"
    );
    assert!(failures.is_empty(), "{failures:#?}");
    // Each unreadable message was delivered once, resetting the connection.
    assert!(
        resets >= unreadable.len() as u64,
        "{resets} connection resets for {} unreadable messages",
        unreadable.len()
    );
    eprintln!("jetstream hostile: {resets} connection resets");
}
