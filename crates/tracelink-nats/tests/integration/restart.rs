//! A server restart in the middle of a JetStream stream, on a server of the test's own.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tower::{service_fn, Layer, Service, ServiceExt};
use tracelink_core::ConsumerLayer;
use tracelink_nats::{JetStreamConsumer, JetStreamDelivery, JetStreamPublisher, Publish};

use crate::jetstream::setup;
use crate::support::{NatsServer, Telemetry};

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
    let mut publisher = JetStreamPublisher::traced(js.clone(), instrumentation.clone());
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
    let mut handler = ConsumerLayer::from(instrumentation.clone()).layer(service_fn({
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
    }));
    let mut loop_ = JetStreamConsumer::new(consumer, instrumentation)
        .with_batch_size(5)
        .with_expires(Duration::from_secs(1));

    // Part of the stream, then the server dies and comes back with its store.
    assert_eq!(loop_.process_next(&mut handler).await.unwrap(), 5);
    server.restart();

    let mut errors = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (succeeded.lock().unwrap().len() as u64) < COUNT {
        assert!(
            Instant::now() < deadline,
            "not all messages consumed; errors: {errors:?}"
        );
        match loop_.process_next(&mut handler).await {
            Ok(_) => {}
            // Reported as a typed error; the loop is simply resumed.
            Err(err) => {
                errors.push(format!("{err:?}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eprintln!("errors reported while the server restarted: {errors:?}");
    assert_eq!(
        *succeeded.lock().unwrap(),
        (1..=COUNT).collect::<BTreeSet<_>>(),
        "nothing lost"
    );

    // Everything acked in the end, and only messages a handler succeeded on (all of them here).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut consumer = loop_.consumer().clone();
        let info = consumer.info().await.unwrap().clone();
        if info.ack_floor.stream_sequence == COUNT && info.num_ack_pending == 0 {
            assert_eq!(info.num_pending, 0);
            break;
        }
        assert!(Instant::now() < deadline, "not all acked: {info:?}");
        // Redeliveries of messages whose ack was lost with the connection.
        let _ = loop_.process_next(&mut handler).await;
    }
    drop(client);
}
