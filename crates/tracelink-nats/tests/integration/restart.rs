//! A server restart in the middle of a stream, on a server of the test's own: JetStream, and
//! core NATS request/reply.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_semantic_conventions::attribute as attr;
use tokio::sync::{oneshot, Notify};
use tower::{service_fn, Layer, Service, ServiceExt};
use tracelink_nats::{
    Bytes, JetStreamConsumer, JetStreamDelivery, JetStreamPublisher, JetStreamSource, NatsDelivery,
    Publish, Requester, ResponderLayer,
};

use crate::jetstream::setup;
use crate::support::{self, attributes, NatsServer, Telemetry};

#[tokio::test]
async fn server_restart_mid_stream_loses_nothing_and_acks_nothing_early() {
    let mut server = NatsServer::start();
    let url = server.url();
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap();
    let telemetry = Telemetry::new();
    let instrumentation = telemetry.instrumentation(&url);
    // A short ack wait so that a settlement lost with the connection is redelivered quickly.
    let (js, _stream, subject, consumer) = setup(client.clone(), Duration::from_secs(2)).await;
    const COUNT: u64 = 30;
    let mut publisher = JetStreamPublisher::new(js.clone()).traced(instrumentation.clone());
    for i in 0..COUNT {
        publisher
            .ready()
            .await
            .unwrap()
            .call(Publish::new(subject.as_str(), format!("job {i}")))
            .await
            .unwrap();
    }

    // Every handler run that succeeded, by stream sequence. Message 3 fails on its first
    // delivery, just before the restart: it must come back (it was not acked), and be acked
    // only once a handler succeeded on it.
    let succeeded = Arc::new(Mutex::new(BTreeSet::new()));
    let handler = service_fn({
        let succeeded = succeeded.clone();
        move |delivery: JetStreamDelivery| {
            let succeeded = succeeded.clone();
            async move {
                let sequence = delivery.stream_sequence().unwrap();
                if sequence == 3 && delivery.delivered() == Some(1) {
                    return Err(std::io::Error::other("fails before the restart"));
                }
                succeeded.lock().unwrap().insert(sequence);
                Ok::<_, std::io::Error>(())
            }
        }
    });
    // Part of the stream (5 messages fetched at a time), then the server dies and comes back
    // with its store: the consumer goes on through the reconnect (failed fetches are retried).
    let source = JetStreamSource::new(consumer.clone()).with_expires(Duration::from_secs(1));
    let run = tokio::spawn({
        let succeeded = succeeded.clone();
        JetStreamConsumer::new(source, instrumentation)
            .with_prefetch(5)
            .run(handler, async move {
                // Everything handled and acked in the end, and only messages a handler
                // succeeded on (all of them here); acks lost with the connection bring
                // redeliveries, handled on the way.
                loop {
                    if succeeded.lock().unwrap().len() as u64 == COUNT {
                        if let Ok(info) = consumer.clone().info().await {
                            if info.ack_floor.stream_sequence == COUNT
                                && info.num_ack_pending == 0
                                && info.num_pending == 0
                            {
                                return;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while (succeeded.lock().unwrap().len() as u64) < 5 {
        assert!(Instant::now() < deadline, "the first messages are consumed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.restart();

    let result = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "not all messages consumed and acked; succeeded: {:?}",
                succeeded.lock().unwrap()
            )
        })
        .unwrap();
    // A settlement that failed with the connection would stop the consumer: acks are not
    // confirmed, so it does not; an error here is reported as it is.
    result.expect("the consumer runs through the restart");
    assert_eq!(
        *succeeded.lock().unwrap(),
        (1..=COUNT).collect::<BTreeSet<_>>(),
        "nothing lost"
    );
    drop(client);
}

/// Core NATS is at most once: a message in flight when the server dies is lost, and a reply is
/// the only acknowledgement there is. The promise over request/reply is therefore: a requester
/// that retries until it gets a reply has every request handled successfully and answered, and a
/// reply exists only for a handler run that succeeded (the responder replies after its handler,
/// never on failure). Across the restart a request may be handled more than once (a reply lost
/// with the connection makes the requester ask again): at least once, never zero times.
///
/// `COUNT` requests, four at a time, each retried until answered (a 1 s request timeout). Request
/// 3 fails its first attempt (no reply: the requester times out and asks again). The server is
/// killed while the handler holds request 10 (other requests are in flight), stays down for
/// 300 ms, and comes back on the same port; the responder's subscription keeps running through
/// the reconnect and answers the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_server_restart_mid_stream_every_request_is_answered_after_its_handler_succeeded() {
    const COUNT: usize = 30;
    const FAILS_FIRST: usize = 3;
    const KILLED_DURING: usize = 10;

    let mut server = NatsServer::start();
    let url = server.url();
    let connect = || {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(1)))
            .connect(url.clone())
    };
    // Each side has a connection of its own, as separate processes would.
    let responder_client = connect().await.unwrap();
    let requester_client = connect().await.unwrap();
    let telemetry = Telemetry::new();
    let instrumentation = telemetry.instrumentation(&url);
    let subject = support::unique("restart");

    // Handler runs by message id (`{request}.{attempt}`): true when the run succeeded.
    let runs: Arc<Mutex<BTreeMap<String, bool>>> = Arc::default();
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let kill_tx = Arc::new(Mutex::new(Some(kill_tx)));
    let killed = Arc::new(Notify::new());
    let layer = ResponderLayer::new(responder_client.clone(), &instrumentation);
    let handler = layer.layer(service_fn({
        let (runs, killed) = (runs.clone(), killed.clone());
        move |request: NatsDelivery| {
            let (runs, kill_tx, killed) = (runs.clone(), kill_tx.clone(), killed.clone());
            async move {
                let id = request
                    .message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .map(|v| v.as_str().to_owned())
                    .expect("every request carries its id");
                let (n, attempt) = id.split_once('.').expect("request.attempt");
                let n: usize = n.parse().unwrap_or(usize::MAX);
                if n == FAILS_FIRST && attempt == "1" {
                    runs.lock().unwrap().insert(id, false);
                    return Err(std::io::Error::other("fails its first attempt"));
                }
                if n == KILLED_DURING && attempt == "1" {
                    // The server dies while this handler runs; it succeeds all the same,
                    // and its reply goes out on whatever connection the client has then.
                    let tx = kill_tx.lock().unwrap().take();
                    if let Some(tx) = tx {
                        let _ = tx.send(());
                        killed.notified().await;
                    }
                }
                runs.lock().unwrap().insert(id.clone(), true);
                Ok::<_, std::io::Error>(Bytes::from(id))
            }
        }
    }));
    let subscriber = responder_client.subscribe(subject.clone()).await.unwrap();
    // The subscription is in place before the first request.
    support::round_trip(&responder_client).await;
    let responder = tokio::spawn(
        layer
            .consumer(subscriber)
            .run(handler, std::future::pending::<()>()),
    );

    // Per request: the message ids of its attempts, each with the reply or the error it got.
    let requester = Requester::new(requester_client.clone()).traced(instrumentation.clone());
    let ask = {
        let subject = subject.clone();
        move |n: usize| {
            let mut requester = requester.clone();
            let subject = subject.clone();
            async move {
                let mut outcomes: Vec<(String, Result<String, String>)> = Vec::new();
                for attempt in 1.. {
                    let id = format!("{n}.{attempt}");
                    let result = requester
                        .ready()
                        .await
                        .unwrap()
                        .call(Publish::new(subject.clone(), n.to_string()).with_message_id(&id))
                        .await;
                    match result {
                        Ok(reply) => {
                            let payload = String::from_utf8_lossy(&reply.0.payload).into_owned();
                            outcomes.push((id, Ok(payload)));
                            break;
                        }
                        Err(err) => {
                            outcomes.push((id, Err(format!("{err}"))));
                            // No responders (the responder has not resubscribed yet) comes back at
                            // once: do not spin.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                (n, outcomes)
            }
        }
    };
    let requests = tokio::spawn(
        futures_util::stream::iter(0..COUNT)
            .map(ask.clone())
            .buffer_unordered(4)
            .collect::<Vec<_>>(),
    );

    let connects = |c: &async_nats::Client| c.statistics().connects.load(Ordering::SeqCst);
    let before = (connects(&responder_client), connects(&requester_client));
    tokio::time::timeout(Duration::from_secs(30), kill_rx)
        .await
        .expect("request 10 reached its handler")
        .unwrap();
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    killed.notify_one();
    let server = tokio::task::spawn_blocking(move || {
        server.start_again();
        server
    })
    .await
    .unwrap();

    let outcomes = tokio::time::timeout(Duration::from_secs(60), requests)
        .await
        .expect("every request answered within 60 s")
        .unwrap();
    let after = (connects(&responder_client), connects(&requester_client));
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "both clients reconnected: {before:?} -> {after:?}"
    );
    assert!(
        !responder.is_finished(),
        "the responder's subscription keeps running after the reconnect"
    );

    // One request more, answered: every request sent before it was handled (one subscription
    // handles in order), so no handler run, and no span, is still to come.
    let (_, sentinel) = ask(COUNT).await;
    let runs = runs.lock().unwrap().clone();
    let attempts: usize = outcomes.iter().map(|(_, o)| o.len()).sum::<usize>() + sentinel.len();

    let mut answered = BTreeSet::new();
    for (n, attempts) in outcomes.iter().chain(std::iter::once(&(COUNT, sentinel))) {
        let last = attempts.last().unwrap();
        let reply = last.1.as_ref().unwrap();
        // The reply names the attempt whose handler produced it: that run succeeded.
        assert_eq!(
            runs.get(reply),
            Some(&true),
            "{n}: reply {reply:?} without a success"
        );
        assert!(reply.starts_with(&format!("{n}.")), "{n}: reply {reply:?}");
        answered.insert(*n);
        // No failed run was ever answered.
        for (id, result) in attempts {
            if runs.get(id) == Some(&false) {
                assert!(result.is_err(), "{id}: the handler failed yet a reply came");
            }
        }
    }
    assert_eq!(answered, (0..=COUNT).collect::<BTreeSet<_>>(), "none lost");
    assert_eq!(
        runs.get(&format!("{FAILS_FIRST}.1")),
        Some(&false),
        "request {FAILS_FIRST} failed its first attempt"
    );
    assert_eq!(
        runs.get(&format!("{KILLED_DURING}.1")),
        Some(&true),
        "request {KILLED_DURING} was held through the kill"
    );

    let errors: Vec<&String> = outcomes
        .iter()
        .flat_map(|(_, o)| o.iter().filter_map(|(_, r)| r.as_ref().err()))
        .collect();
    eprintln!(
        "core restart: {} requests, {attempts} attempts, {} handler runs; errors: {errors:?}",
        COUNT + 1,
        runs.len()
    );

    // Spans: one `publish` per attempt; one `process` per handler run, each a child of (and
    // linked to) the span of the attempt it served; a reply span per successful run.
    let producers = telemetry
        .wait_for(&format!("publish {subject}"), attempts)
        .await;
    let processes = telemetry
        .wait_for(&format!("process {subject}"), runs.len())
        .await;
    telemetry
        .wait_for("publish _INBOX.*", runs.values().filter(|ok| **ok).count())
        .await;
    let by_id: BTreeMap<String, _> = producers
        .iter()
        .map(|s| (attributes(s)[attr::MESSAGING_MESSAGE_ID].clone(), s))
        .collect();
    assert_eq!(by_id.len(), attempts, "one producer span per attempt");
    for process in &processes {
        assert_eq!(process.span_kind, SpanKind::Consumer);
        let id = attributes(process)[attr::MESSAGING_MESSAGE_ID].clone();
        let producer = by_id[&id].span_context.clone();
        assert_eq!(process.span_context.trace_id(), producer.trace_id(), "{id}");
        assert_eq!(process.parent_span_id, producer.span_id(), "{id}: parent");
        let links: Vec<_> = process
            .links
            .links
            .iter()
            .map(|l| (l.span_context.trace_id(), l.span_context.span_id()))
            .collect();
        assert_eq!(
            links,
            vec![(producer.trace_id(), producer.span_id())],
            "{id}: link"
        );
        assert_eq!(
            matches!(process.status, Status::Error { .. }),
            !runs[&id],
            "{id}: status"
        );
    }
    drop(server);
}
