//! The consumer stops (its task is dropped, as a crash would) while handlers hold received
//! messages: nothing was deleted, and after the visibility timeout a new consumer gets every
//! message back. (A failing handler is `failing_handler_*` in `main.rs`.)

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use tokio::sync::mpsc;
use tower::{service_fn, Service, ServiceExt};
use tracelink_sqs::{ReceivedMessage, SendRequest, SqsConsumer, SqsPublisher, SqsSource};

use crate::support::*;

#[tokio::test]
async fn consumer_stopped_before_deleting_loses_nothing() {
    const COUNT: usize = 3;
    let client = client().await;
    let url = queue(
        &client,
        "stopped",
        &[(QueueAttributeName::VisibilityTimeout, "2")],
    )
    .await;
    let t = telemetry();
    let mut send = SqsPublisher::new(client.clone()).traced(t.instrumentation.clone());
    for i in 0..COUNT {
        send.ready()
            .await
            .unwrap()
            .call(SendRequest::new(&url, format!("m{i}")))
            .await
            .unwrap();
    }

    // The doomed consumer: its handlers never finish.
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<String>();
    let doomed = SqsConsumer::new(
        SqsSource::new(client.clone(), &url)
            .with_wait_time(Duration::from_secs(1))
            .with_max_messages(10),
        t.instrumentation.clone(),
    )
    .with_concurrency(COUNT);
    let handler = service_fn(move |m: ReceivedMessage| {
        let _ = started_tx.send(m.body().to_owned());
        async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(())
        }
    });
    let run = doomed.run(handler, std::future::pending::<()>());
    let mut started = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    {
        tokio::pin!(run);
        while started.is_empty() {
            assert!(Instant::now() < deadline, "no handler started");
            tokio::select! {
                result = &mut run => panic!("a consumer with stuck handlers returned: {result:?}"),
                Some(body) = started_rx.recv() => { started.insert(body); }
            }
        }
        // Let the rest of the received batch reach its handlers, then drop the consumer
        // mid-handler, as a crash would.
        let _ = tokio::time::timeout(Duration::from_millis(300), &mut run).await;
    }
    while let Ok(body) = started_rx.try_recv() {
        started.insert(body);
    }
    assert_eq!(
        messages_left(&client, &url).await,
        COUNT as i64,
        "nothing deleted before a handler succeeded"
    );

    // After the visibility timeout, a new consumer receives everything, the held ones included.
    let handled = Arc::new(Mutex::new(Vec::new()));
    let log = handled.clone();
    let fresh = SqsConsumer::new(
        SqsSource::new(client.clone(), &url).with_wait_time(Duration::from_secs(1)),
        t.instrumentation.clone(),
    );
    let handler = service_fn(move |m: ReceivedMessage| {
        log.lock().unwrap().push(m.body().to_owned());
        async { Ok::<_, Infallible>(()) }
    });
    let all_back = {
        let handled = handled.clone();
        async move {
            while handled.lock().unwrap().len() < COUNT {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fresh.run(handler, all_back))
        .await
        .unwrap_or_else(|_| panic!("only {:?} came back", handled.lock().unwrap()))
        .unwrap();
    let handled: BTreeSet<String> = handled.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        handled,
        (0..COUNT).map(|i| format!("m{i}")).collect::<BTreeSet<_>>(),
        "every message came back, including the {started:?} held by the stopped consumer"
    );
    assert!(started.is_subset(&handled));
    assert_eq!(
        messages_left(&client, &url).await,
        0,
        "deleted after success"
    );
    // Every process span (held or handled) links to its message's send span.
    let name = tracelink_sqs::queue_name(&url);
    let sends: Vec<_> = t
        .named(&format!("send {name}"))
        .iter()
        .map(|s| ids(&s.span_context))
        .collect();
    for process in t.named(&format!("process {name}")) {
        let links = link_ids(&process);
        assert_eq!(links.len(), 1);
        assert!(sends.contains(&links[0]));
    }
}
