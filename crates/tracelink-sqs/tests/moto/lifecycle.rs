//! The consume lifecycle against moto: settle spans, graceful shutdown, `OnFailure::Stop` and
//! `OnFailure::Reject`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_semantic_conventions::attribute as semconv;
use tokio::sync::Notify;
use tower::{service_fn, Service, ServiceExt};
use tracelink_core::{ConsumeError, OnFailure};
use tracelink_sqs::{ReceivedMessage, SendRequest, SqsConsumer, SqsPublisher, SqsSource};

use crate::support::*;

async fn send(client: &aws_sdk_sqs::Client, url: &str, t: &Telemetry, bodies: &[&str]) {
    let mut publisher = SqsPublisher::new(client.clone()).traced(t.instrumentation.clone());
    for body in bodies {
        publisher
            .ready()
            .await
            .unwrap()
            .call(SendRequest::new(url, *body))
            .await
            .unwrap();
    }
}

fn source(client: &aws_sdk_sqs::Client, url: &str) -> SqsSource {
    SqsSource::new(client.clone(), url).with_wait_time(Duration::from_secs(1))
}

/// The bodies a consumer gets from `url` within `time`, each handled successfully.
async fn drain(
    client: &aws_sdk_sqs::Client,
    url: &str,
    t: &Telemetry,
    time: Duration,
) -> Vec<String> {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let log = bodies.clone();
    let handler = service_fn(move |m: ReceivedMessage| {
        log.lock().unwrap().push(m.body().to_owned());
        async { Ok::<_, Infallible>(()) }
    });
    SqsConsumer::new(source(client, url), t.instrumentation.clone())
        .run(handler, tokio::time::sleep(time))
        .await
        .unwrap();
    let mut bodies = bodies.lock().unwrap().clone();
    bodies.sort();
    bodies
}

/// Completes once `flag` is set.
async fn set(flag: Arc<AtomicBool>) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn message_id(span: &SpanData) -> String {
    string_attr(span, semconv::MESSAGING_MESSAGE_ID)
}

#[tokio::test]
async fn settle_spans_name_the_sqs_call_and_follow_the_handler() {
    let client = client().await;
    let url = queue(&client, "settle", &[]).await;
    let name = tracelink_sqs::queue_name(&url).to_owned();
    let t = telemetry();
    send(&client, &url, &t, &["ok", "fail"]).await;

    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let (handler_attempts, handler_done) = (attempts.clone(), done.clone());
    let handler = service_fn(move |m: ReceivedMessage| {
        let mut attempts = handler_attempts.lock().unwrap();
        let n = attempts.entry(m.body().to_owned()).or_default();
        *n += 1;
        let result = if m.body() == "fail" && *n == 1 {
            Err(std::io::Error::other("first attempt fails"))
        } else {
            if attempts.values().sum::<u32>() == 3 {
                handler_done.store(true, Ordering::SeqCst);
            }
            Ok(())
        };
        async move {
            // Long enough that a settle call made before the handler finished would show.
            tokio::time::sleep(Duration::from_millis(50)).await;
            result
        }
    });
    tokio::time::timeout(
        Duration::from_secs(30),
        SqsConsumer::new(source(&client, &url), t.instrumentation.clone())
            .with_settle_spans()
            .on_failure(OnFailure::RedeliverAfter(Duration::ZERO))
            .run(handler, set(done)),
    )
    .await
    .expect("both messages handled")
    .unwrap();

    // The failed message was made visible at once and handled again; both are deleted.
    assert_eq!(attempts.lock().unwrap()["fail"], 2);
    assert_eq!(attempts.lock().unwrap()["ok"], 1);
    assert_eq!(messages_left(&client, &url).await, 0);

    let processes = t.named(&format!("process {name}"));
    assert_eq!(processes.len(), 3);
    let deletes = t.named(&format!("delete {name}"));
    let changes = t.named(&format!("change_visibility {name}"));
    assert_eq!(deletes.len(), 2, "one delete per success");
    assert_eq!(changes.len(), 1, "one visibility change for the failure");
    for (settle, operation) in deletes
        .iter()
        .map(|s| (s, "delete"))
        .chain(changes.iter().map(|s| (s, "change_visibility")))
    {
        assert_kind(settle, SpanKind::Client);
        assert_attrs(
            settle,
            &[
                KeyValue::new(semconv::MESSAGING_SYSTEM, "aws_sqs"),
                KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, "settle"),
                KeyValue::new(semconv::MESSAGING_OPERATION_NAME, operation),
                KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, name.clone()),
            ],
        );
        let process = processes
            .iter()
            .find(|p| p.span_context.span_id() == settle.parent_span_id)
            .unwrap_or_else(|| panic!("`{}` is a child of a process span", settle.name));
        assert_eq!(message_id(process), message_id(settle));
        assert_eq!(
            process.span_context.trace_id(),
            settle.span_context.trace_id()
        );
        assert!(
            settle.start_time >= process.end_time,
            "settled only after the handler finished"
        );
        let failed = matches!(process.status, opentelemetry::trace::Status::Error { .. });
        assert_eq!(failed, operation == "change_visibility");
    }
}

#[tokio::test]
async fn reject_deletes_the_failed_message() {
    let client = client().await;
    let url = queue(
        &client,
        "reject",
        &[(QueueAttributeName::VisibilityTimeout, "1")],
    )
    .await;
    let name = tracelink_sqs::queue_name(&url).to_owned();
    let t = telemetry();
    send(&client, &url, &t, &["poison"]).await;

    let attempts = Arc::new(Mutex::new(0));
    let handler_attempts = attempts.clone();
    let handler = service_fn(move |_m: ReceivedMessage| {
        *handler_attempts.lock().unwrap() += 1;
        async { Err::<(), _>(std::io::Error::other("poison")) }
    });
    // Longer than the visibility timeout: a message left in the queue would come back.
    SqsConsumer::new(source(&client, &url), t.instrumentation.clone())
        .with_settle_spans()
        .on_failure(OnFailure::Reject)
        .run(handler, tokio::time::sleep(Duration::from_secs(3)))
        .await
        .unwrap();
    assert_eq!(*attempts.lock().unwrap(), 1, "rejected: never redelivered");
    assert_eq!(messages_left(&client, &url).await, 0, "deleted");
    let delete = t.one(&format!("delete {name}"));
    let process = t.one(&format!("process {name}"));
    assert_eq!(delete.parent_span_id, process.span_context.span_id());
}

#[tokio::test]
async fn shutdown_lets_the_running_handler_finish_and_gives_back_the_rest() {
    let client = client().await;
    // Released messages are visible again at once; a receive dropped at shutdown may hold
    // some until this visibility timeout.
    let url = queue(
        &client,
        "shutdown",
        &[(QueueAttributeName::VisibilityTimeout, "2")],
    )
    .await;
    let t = telemetry();
    send(&client, &url, &t, &["m0", "m1", "m2"]).await;

    let started = Arc::new(Notify::new());
    let finished = Arc::new(Mutex::new(Vec::new()));
    let (handler_started, handler_finished) = (started.clone(), finished.clone());
    let handler = service_fn(move |m: ReceivedMessage| {
        let (started, finished) = (handler_started.clone(), handler_finished.clone());
        let body = m.body().to_owned();
        async move {
            started.notify_one();
            // Still running when shutdown fires.
            tokio::time::sleep(Duration::from_millis(500)).await;
            finished.lock().unwrap().push(body);
            Ok::<_, Infallible>(())
        }
    });
    tokio::time::timeout(
        Duration::from_secs(30),
        SqsConsumer::new(source(&client, &url), t.instrumentation.clone())
            .run(handler, started.notified()),
    )
    .await
    .expect("run returns after shutdown")
    .expect("a graceful shutdown is Ok");

    let finished = finished.lock().unwrap().clone();
    assert_eq!(
        finished.len(),
        1,
        "the running handler finished: {finished:?}"
    );
    // The handled message was deleted; the others come back to a new consumer.
    let rest = drain(&client, &url, &t, Duration::from_secs(5)).await;
    let mut expected: Vec<String> = ["m0", "m1", "m2"].map(String::from).to_vec();
    expected.retain(|b| *b != finished[0]);
    assert_eq!(rest, expected);
    assert_eq!(messages_left(&client, &url).await, 0);
}

#[tokio::test]
async fn stop_policy_returns_the_handler_error_and_the_message_comes_back() {
    let client = client().await;
    let url = queue(
        &client,
        "stop",
        &[(QueueAttributeName::VisibilityTimeout, "1")],
    )
    .await;
    let t = telemetry();
    send(&client, &url, &t, &["bad"]).await;

    let handler = service_fn(|_m: ReceivedMessage| async {
        Err::<(), _>(std::io::Error::other("cannot handle"))
    });
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        SqsConsumer::new(source(&client, &url), t.instrumentation.clone())
            .on_failure(OnFailure::Stop)
            .run(handler, std::future::pending::<()>()),
    )
    .await
    .expect("the failure stops the consumer")
    .unwrap_err();
    match err {
        ConsumeError::Handler(e) => assert_eq!(e.to_string(), "cannot handle"),
        other => panic!("a handler error: {other:?}"),
    }
    assert_eq!(
        drain(&client, &url, &t, Duration::from_secs(4)).await,
        ["bad"],
        "redelivered after the visibility timeout"
    );
    assert_eq!(messages_left(&client, &url).await, 0);
}

#[tokio::test]
async fn batch_consumer_settles_with_batch_calls() {
    let client = client().await;
    let url = queue(&client, "batches", &[]).await;
    let name = tracelink_sqs::queue_name(&url).to_owned();
    let t = telemetry();
    send(&client, &url, &t, &["a", "b", "c"]).await;

    let batches = Arc::new(Mutex::new(Vec::new()));
    let (log, done) = (batches.clone(), Arc::new(AtomicBool::new(false)));
    let handler_done = done.clone();
    let handler = service_fn(move |messages: Vec<ReceivedMessage>| {
        let mut batches = log.lock().unwrap();
        batches.push(messages.len());
        let attempt = batches.len();
        if batches.iter().sum::<usize>() >= 6 {
            handler_done.store(true, Ordering::SeqCst);
        }
        async move {
            match attempt {
                // The first batch fails: every message of it is made visible again at once.
                1 => Err(std::io::Error::other("the first batch fails")),
                _ => Ok(()),
            }
        }
    });
    tokio::time::timeout(
        Duration::from_secs(30),
        SqsConsumer::new(source(&client, &url), t.instrumentation.clone())
            .with_batch(tracelink_core::BatchConfig {
                max_messages: 3,
                max_wait: Duration::from_secs(2),
            })
            .with_settle_spans()
            .on_failure(OnFailure::RedeliverAfter(Duration::ZERO))
            .run_batches(handler, set(done)),
    )
    .await
    .expect("both batches handled")
    .unwrap();
    assert_eq!(
        *batches.lock().unwrap(),
        [3, 3],
        "the failed batch came back whole"
    );
    assert_eq!(
        messages_left(&client, &url).await,
        0,
        "deleted after success"
    );
    assert_eq!(t.named(&format!("change_visibility {name}")).len(), 3);
    assert_eq!(t.named(&format!("delete {name}")).len(), 3);
}

#[tokio::test]
async fn settle_all_reports_a_refused_entry_alone() {
    use tracelink_core::{Received, Settlement, Settler, Source};
    let client = client().await;
    let url = queue(&client, "entries", &[]).await;
    let t = telemetry();
    send(&client, &url, &t, &["a", "b"]).await;
    let mut source = source(&client, &url).with_max_messages(2);
    source.bind(&t.instrumentation);
    let settler = source.settler();
    let mut received = Vec::new();
    let mut source = Some(source);
    while received.len() < 2 {
        let (back, result) = source.take().unwrap().receive(2).await;
        source = Some(back);
        match result.unwrap() {
            Received::Batch(messages) => received.extend(messages),
            other => panic!("a batch: {other:?}"),
        }
    }
    let results = settler
        .settle_all(vec![
            (settler.receipt(&received[0]), Settlement::Ack),
            (Some("not-a-receipt-handle".to_owned()), Settlement::Ack),
            (settler.receipt(&received[1]), Settlement::Release),
        ])
        .await;
    assert!(results[0].is_ok(), "{results:?}");
    match &results[1] {
        Err(tracelink_sqs::SqsError::Entry { operation, source }) => {
            assert_eq!(*operation, "DeleteMessageBatch");
            assert_eq!(source.code, "ReceiptHandleIsInvalid");
        }
        other => panic!("a refused entry: {other:?}"),
    }
    assert!(results[2].is_ok(), "{results:?}");
    // `a` is deleted, `b` visible again at once.
    let rest = drain(&client, &url, &t, Duration::from_secs(2)).await;
    assert_eq!(rest.len(), 1);
    assert_eq!(messages_left(&client, &url).await, 0);
}

/// Counts the SQS operations a client calls (`X-Amz-Target`).
#[derive(Debug, Clone, Default)]
struct Calls(Arc<Mutex<HashMap<String, usize>>>);

impl aws_sdk_sqs::config::Intercept for Calls {
    fn name(&self) -> &'static str {
        "Calls"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_sdk_sqs::config::RuntimeComponents,
        _cfg: &mut aws_sdk_sqs::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if let Some(target) = context.request().headers().get("x-amz-target") {
            let operation = target.rsplit('.').next().unwrap_or(target).to_owned();
            *self.0.lock().unwrap().entry(operation).or_default() += 1;
        }
        Ok(())
    }
}

#[tokio::test]
async fn deletes_of_handlers_that_finish_together_share_a_call() {
    let plain = client().await;
    let url = queue(&plain, "coalesce", &[]).await;
    let t = telemetry();
    let bodies: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    send(&plain, &url, &t, &refs).await;

    let calls = Calls::default();
    let config = plain
        .config()
        .to_builder()
        .interceptor(calls.clone())
        .build();
    let client = aws_sdk_sqs::Client::from_conf(config);
    let handled = Arc::new(Mutex::new(Vec::new()));
    let log = handled.clone();
    let handler = service_fn(move |m: ReceivedMessage| {
        log.lock().unwrap().push(m.body().to_owned());
        async { Ok::<_, Infallible>(()) }
    });
    let all = {
        let handled = handled.clone();
        async move {
            while handled.lock().unwrap().len() < 10 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        SqsConsumer::new(source(&client, &url), t.instrumentation.clone())
            .with_concurrency(10)
            .with_settle_spans()
            .run(handler, all),
    )
    .await
    .expect("all handled")
    .unwrap();
    assert_eq!(messages_left(&plain, &url).await, 0);
    let calls = calls.0.lock().unwrap().clone();
    let deletes = calls.get("DeleteMessage").copied().unwrap_or(0)
        + calls.get("DeleteMessageBatch").copied().unwrap_or(0);
    let receives = calls.get("ReceiveMessage").copied().unwrap_or(0);
    assert!(receives >= 1 && deletes >= 1, "calls counted: {calls:?}");
    assert!(
        deletes <= receives,
        "at most one delete call per receive: {calls:?}"
    );
    // Each message still has its own settle span.
    let name = tracelink_sqs::queue_name(&url);
    assert_eq!(t.named(&format!("delete {name}")).len(), 10);
}
