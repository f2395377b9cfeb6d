//! The consume driver ([`Consumer`]) over an in-memory source: settling after the handler, the
//! failure policy, concurrency and ordering keys, shutdown, receive and settle spans, batches.
//! Every adapter's consumer is this driver, so what holds here holds on every broker; the
//! adapters' own tests check their sources and settlers against real brokers.

#[path = "../layers/support.rs"]
mod support;

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::KeyValue;
use support::*;
use tokio::sync::{mpsc, Notify};
use tower::service_fn;
use tracelink_core::{
    BatchConfig, ConsumeError, Consumer, Destination, ErrorType, OnFailure, Received, Settlement,
    Settler, Source,
};

/// What happened, in order: `handled <id>`, `<verb> <id>`.
type Log = Arc<Mutex<Vec<String>>>;

fn lines(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[derive(Debug, thiserror::Error)]
#[error("broker error")]
struct BrokerError;

impl ErrorType for BrokerError {
    fn error_type(&self) -> Cow<'static, str> {
        Cow::Borrowed("broker_error")
    }
}

/// Messages from a channel; one per receive, or up to `max` per receive in `pull` mode.
struct ChannelSource {
    rx: mpsc::UnboundedReceiver<Msg>,
    log: Log,
    pull: bool,
    fail_settle: bool,
}

impl Source for ChannelSource {
    type Message = Msg;
    type Error = BrokerError;
    type Settler = LogSettler;

    fn settler(&self) -> LogSettler {
        LogSettler {
            log: self.log.clone(),
            fail: self.fail_settle,
        }
    }

    async fn receive(mut self, max: usize) -> (Self, Result<Received<Msg>, BrokerError>) {
        let Some(first) = self.rx.recv().await else {
            return (self, Ok(Received::Closed));
        };
        if first.queue == "broken" {
            return (self, Err(BrokerError));
        }
        if !self.pull {
            return (self, Ok(Received::One(first)));
        }
        let mut batch = vec![first];
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        (self, Ok(Received::Batch(batch)))
    }

    fn destination(&self) -> Option<Destination<'_>> {
        self.pull.then(|| Destination::new("pulled"))
    }

    fn ordering_key(&self, message: &Msg) -> Option<u64> {
        let key = message.header("key")?;
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        Some(hasher.finish())
    }

    fn default_prefetch(&self) -> usize {
        if self.pull {
            10
        } else {
            1
        }
    }

    fn receive_spans_by_default(&self) -> bool {
        self.pull
    }
}

struct LogSettler {
    log: Log,
    fail: bool,
}

fn verb(settlement: Settlement) -> &'static str {
    match settlement {
        Settlement::Ack => "ack",
        Settlement::Redeliver { delay: None } => "redeliver",
        Settlement::Redeliver { delay: Some(_) } => "redeliver_later",
        Settlement::Reject => "reject",
        Settlement::Release => "release",
        _ => "other",
    }
}

impl Settler<Msg> for LogSettler {
    type Receipt = String;
    type Error = BrokerError;

    fn receipt(&self, message: &Msg) -> String {
        message.id.clone().unwrap_or_default()
    }

    fn operation(&self, settlement: Settlement) -> Option<&'static str> {
        Some(verb(settlement))
    }

    fn settle(
        &self,
        receipt: String,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + 'static + use<> {
        let log = self.log.clone();
        let fail = self.fail;
        async move {
            log.lock()
                .unwrap()
                .push(format!("{} {receipt}", verb(settlement)));
            if fail {
                Err(BrokerError)
            } else {
                Ok(())
            }
        }
    }

    fn settle_all(
        &self,
        items: Vec<(String, Settlement)>,
    ) -> impl Future<Output = Vec<Result<(), BrokerError>>> + Send + 'static + use<> {
        if items.len() > 1 {
            let ids: Vec<String> = items.iter().map(|(id, _)| id.clone()).collect();
            self.log
                .lock()
                .unwrap()
                .push(format!("together {}", ids.join(",")));
        }
        let calls: Vec<_> = items
            .into_iter()
            .map(|(receipt, settlement)| self.settle(receipt, settlement))
            .collect();
        futures_util::future::join_all(calls)
    }
}

struct Harness {
    t: Telemetry,
    tx: mpsc::UnboundedSender<Msg>,
    log: Log,
}

fn harness(pull: bool, fail_settle: bool) -> (Harness, Consumer<ChannelSource>) {
    let t = Telemetry::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let log = Log::default();
    let source = ChannelSource {
        rx,
        log: log.clone(),
        pull,
        fail_settle,
    };
    let consumer = Consumer::new(source, t.instrumentation());
    (Harness { t, tx, log }, consumer)
}

impl Harness {
    /// Publishes `id` on `queue` through a producer layer, so it carries a context.
    async fn send(&self, queue: &str, id: &str, key: Option<&str>) {
        let mut msg = Msg::new(queue);
        msg.id = Some(id.to_owned());
        if let Some(key) = key {
            msg = msg.with_header("key", key);
        }
        let instr = self.t.instrumentation();
        let sent = Arc::new(Mutex::new(None));
        let slot = sent.clone();
        let mut producer = tower::Layer::layer(
            &tracelink_core::ProducerLayer::from(instr),
            service_fn(move |msg: Msg| {
                let slot = slot.clone();
                async move {
                    *slot.lock().unwrap() = Some(msg);
                    Ok::<_, std::io::Error>(Ack { offset: 0 })
                }
            }),
        );
        tower::ServiceExt::oneshot(&mut producer, msg)
            .await
            .unwrap();
        let msg = sent.lock().unwrap().take().unwrap();
        self.tx.send(msg).unwrap();
    }
}

/// A handler logging `handled <id>`, failing for ids starting with `bad`.
fn handler(
    log: Log,
) -> impl tower::Service<Msg, Response = (), Error = std::io::Error, Future: Send> + Send {
    service_fn(move |msg: Msg| {
        let log = log.clone();
        async move {
            let id = msg.id.clone().unwrap_or_default();
            tokio::task::yield_now().await;
            log.lock().unwrap().push(format!("handled {id}"));
            if id.starts_with("bad") {
                Err(std::io::Error::other("handler failed"))
            } else {
                Ok(())
            }
        }
    })
}

/// Resolves once `log` has `n` lines.
async fn lines_reach(log: &Log, n: usize) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while log.lock().unwrap().len() < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the consumer made progress");
}

#[tokio::test]
async fn settles_after_the_handler_per_the_failure_policy() {
    for (policy, failed) in [
        (OnFailure::Redeliver, "redeliver bad"),
        (
            OnFailure::RedeliverAfter(Duration::from_secs(3)),
            "redeliver_later bad",
        ),
        (OnFailure::Reject, "reject bad"),
    ] {
        let (h, consumer) = harness(false, false);
        let consumer = consumer.on_failure(policy);
        h.send("orders", "good", None).await;
        h.send("orders", "bad", None).await;
        let log = h.log.clone();
        let stop = async move { lines_reach(&log, 4).await };
        consumer.run(handler(h.log.clone()), stop).await.unwrap();
        assert_eq!(
            lines(&h.log),
            ["handled good", "ack good", "handled bad", failed],
            "{policy:?}"
        );
        let spans: Vec<_> =
            h.t.finished()
                .into_iter()
                .filter(|s| s.name == "process orders")
                .collect();
        assert_eq!(spans.len(), 2);
        let bad = &spans[1];
        assert_eq!(bad.status, Status::error("Other"));
        let rejected = bad.events.iter().any(|e| e.name == "message rejected");
        assert_eq!(rejected, policy == OnFailure::Reject, "{policy:?}");
    }
}

#[tokio::test]
async fn stop_policy_gives_the_message_back_and_returns_the_handler_error() {
    let (h, consumer) = harness(false, false);
    h.send("orders", "bad", None).await;
    h.send("orders", "later", None).await;
    let result = consumer
        .on_failure(OnFailure::Stop)
        .with_prefetch(2)
        .run(handler(h.log.clone()), std::future::pending::<()>())
        .await;
    assert!(
        matches!(result, Err(ConsumeError::Handler(_))),
        "{result:?}"
    );
    let lines = lines(&h.log);
    assert_eq!(lines[..2], ["handled bad", "redeliver bad"]);
    // `later` was received ahead of the handler (prefetch 2) and is given back unhandled.
    assert_eq!(lines[2..], ["release later"]);
}

#[tokio::test]
async fn concurrency_bounds_the_handlers_and_ordering_keys_keep_order() {
    let (h, consumer) = harness(false, false);
    for i in 0..4 {
        for key in ["a", "b", "c"] {
            h.send("orders", &format!("{key}{i}"), Some(key)).await;
        }
    }
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m, log) = (running.clone(), most.clone(), h.log.clone());
    let handler = service_fn(move |msg: Msg| {
        let (r, m, log) = (r.clone(), m.clone(), log.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            log.lock()
                .unwrap()
                .push(format!("handled {}", msg.id.unwrap()));
            Ok::<_, Infallible>(())
        }
    });
    let done = h.log.clone();
    consumer
        .with_concurrency(2)
        .with_prefetch(6)
        .run(handler, async move { lines_reach(&done, 24).await })
        .await
        .unwrap();
    assert_eq!(most.load(Ordering::SeqCst), 2, "at most 2 handlers at once");
    let handled: Vec<String> = lines(&h.log)
        .into_iter()
        .filter_map(|l| l.strip_prefix("handled ").map(str::to_owned))
        .collect();
    for key in ["a", "b", "c"] {
        let order: Vec<&String> = handled.iter().filter(|id| id.starts_with(key)).collect();
        let expected: Vec<String> = (0..4).map(|i| format!("{key}{i}")).collect();
        assert_eq!(
            order,
            expected.iter().collect::<Vec<_>>(),
            "order of key {key}"
        );
    }
}

#[tokio::test]
async fn a_redelivered_ordered_message_gives_back_what_was_queued_behind_it() {
    let (h, consumer) = harness(false, false);
    h.send("orders", "bad0", Some("p")).await;
    h.send("orders", "p1", Some("p")).await;
    h.send("orders", "q0", Some("q")).await;
    let done = h.log.clone();
    consumer
        .with_prefetch(3)
        .run(handler(h.log.clone()), async move {
            lines_reach(&done, 5).await
        })
        .await
        .unwrap();
    let lines = lines(&h.log);
    assert!(lines.contains(&"release p1".to_owned()), "{lines:?}");
    assert!(!lines.contains(&"handled p1".to_owned()), "{lines:?}");
    assert!(lines.contains(&"ack q0".to_owned()), "{lines:?}");
}

#[tokio::test]
async fn shutdown_finishes_and_settles_in_flight_and_gives_back_the_rest() {
    let (h, consumer) = harness(false, false);
    for id in ["first", "second", "third"] {
        h.send("orders", id, None).await;
    }
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (e, r, log) = (entered.clone(), release.clone(), h.log.clone());
    let handler = service_fn(move |msg: Msg| {
        let (e, r, log) = (e.clone(), r.clone(), log.clone());
        async move {
            e.notify_one();
            r.notified().await;
            log.lock()
                .unwrap()
                .push(format!("handled {}", msg.id.unwrap()));
            Ok::<_, Infallible>(())
        }
    });
    let shutdown = {
        let entered = entered.clone();
        let release = release.clone();
        async move {
            entered.notified().await;
            // Let the consumer receive the other two (prefetch 3), then shut down while the
            // handler runs, and let it finish after that.
            tokio::time::sleep(Duration::from_millis(20)).await;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                release.notify_one();
            });
        }
    };
    consumer
        .with_prefetch(3)
        .run(handler, shutdown)
        .await
        .unwrap();
    assert_eq!(
        lines(&h.log),
        [
            "together second,third",
            "release second",
            "release third",
            "handled first",
            "ack first"
        ]
    );
}

#[tokio::test]
async fn a_closed_source_ends_the_run_and_a_failed_receive_is_an_error() {
    let (h, consumer) = harness(false, false);
    h.send("orders", "only", None).await;
    drop(h.tx);
    consumer
        .run(handler(h.log.clone()), std::future::pending::<()>())
        .await
        .unwrap();
    assert_eq!(lines(&h.log), ["handled only", "ack only"]);

    let (h, consumer) = harness(true, false);
    h.send("broken", "x", None).await;
    let result = consumer
        .run(handler(h.log.clone()), std::future::pending::<()>())
        .await;
    match result {
        Err(ConsumeError::Receive { error_type, .. }) => assert_eq!(error_type, "broker_error"),
        other => panic!("expected a receive error, got {other:?}"),
    }
    let receive = h.t.span("receive pulled");
    assert_eq!(receive.status, Status::error("broker_error"));
}

#[tokio::test]
async fn settle_spans_are_client_children_of_the_process_span_and_failures_stop() {
    let (h, consumer) = harness(false, true);
    h.send("orders", "good", None).await;
    let result = consumer
        .with_settle_spans()
        .run(handler(h.log.clone()), std::future::pending::<()>())
        .await;
    match result {
        Err(ConsumeError::Settle {
            operation,
            error_type,
            ..
        }) => {
            assert_eq!(operation, "ack");
            assert_eq!(error_type, "broker_error");
        }
        other => panic!("expected a settle error, got {other:?}"),
    }
    let process = h.t.span("process orders");
    let ack = h.t.span("ack orders");
    assert_eq!(ack.span_kind, SpanKind::Client);
    assert_eq!(ack.parent_span_id, process.span_context.span_id());
    assert_eq!(ack.span_context.trace_id(), process.span_context.trace_id());
    assert_eq!(ack.status, Status::error("broker_error"));
    assert_eq!(
        attrs(&ack.attributes),
        expected(&[
            ("messaging.system", "test_broker"),
            ("messaging.operation.type", "settle"),
            ("messaging.operation.name", "ack"),
            ("messaging.destination.name", "orders"),
            ("messaging.message.id", "good"),
            ("server.address", "broker.local"),
            ("server.port", "5672"),
            ("error.type", "broker_error"),
        ])
    );
}

#[tokio::test]
async fn pull_sources_record_receive_spans_linked_to_each_message() {
    let (h, consumer) = harness(true, false);
    h.send("orders", "one", None).await;
    h.send("orders", "two", None).await;
    let done = h.log.clone();
    consumer
        .run(handler(h.log.clone()), async move {
            lines_reach(&done, 4).await
        })
        .await
        .unwrap();
    let receive = h.t.span("receive pulled");
    assert_eq!(receive.span_kind, SpanKind::Client);
    assert_eq!(receive.links.links.len(), 2);
    assert!(receive
        .attributes
        .contains(&KeyValue::new("messaging.batch.message_count", 2)));
    // Each message's process span is a trace of its own, linked to its producer.
    let processes: Vec<_> =
        h.t.finished()
            .into_iter()
            .filter(|s| s.name == "process orders")
            .collect();
    assert_eq!(processes.len(), 2);
    for process in processes {
        assert_eq!(process.links.links.len(), 1);
        assert_ne!(
            process.span_context.trace_id(),
            receive.span_context.trace_id()
        );
    }
}

#[tokio::test]
async fn batches_get_one_process_span_with_a_link_each_and_settle_every_message() {
    let (h, consumer) = harness(true, false);
    for id in ["a", "b", "c"] {
        h.send("orders", id, None).await;
    }
    let log = h.log.clone();
    let batch_handler = service_fn(move |msgs: Vec<Msg>| {
        let log = log.clone();
        async move {
            let ids: Vec<String> = msgs.into_iter().map(|m| m.id.unwrap()).collect();
            log.lock()
                .unwrap()
                .push(format!("handled {}", ids.join(",")));
            Ok::<_, Infallible>(())
        }
    });
    let done = h.log.clone();
    consumer
        .with_settle_spans()
        .with_batch(BatchConfig {
            max_messages: 3,
            max_wait: Duration::from_millis(50),
        })
        .run_batches(batch_handler, async move { lines_reach(&done, 4).await })
        .await
        .unwrap();
    assert_eq!(
        lines(&h.log),
        ["handled a,b,c", "together a,b,c", "ack a", "ack b", "ack c"]
    );
    let process = h.t.span("process orders");
    assert_eq!(process.links.links.len(), 3);
    let acks: Vec<_> =
        h.t.finished()
            .into_iter()
            .filter(|s| s.name == "ack orders")
            .collect();
    assert_eq!(acks.len(), 3);
    for ack in acks {
        assert_eq!(ack.parent_span_id, process.span_context.span_id());
    }
}

#[tokio::test]
async fn a_handler_that_cannot_become_ready_stops_the_consumer_and_gives_messages_back() {
    let (h, consumer) = harness(false, false);
    h.send("orders", "waiting", None).await;
    let failing = FailsReady;
    let result = consumer.run(failing, std::future::pending::<()>()).await;
    assert!(
        matches!(result, Err(ConsumeError::NotReady(_))),
        "{result:?}"
    );
    assert_eq!(lines(&h.log), ["release waiting"]);
}

/// A handler whose `poll_ready` fails.
struct FailsReady;

impl tower::Service<Msg> for FailsReady {
    type Response = ();
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<(), std::io::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Err(std::io::Error::other("gone")))
    }

    fn call(&mut self, _msg: Msg) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn settlements_due_in_the_same_turn_go_to_the_settler_together() {
    let (h, consumer) = harness(true, false);
    for id in ["x", "y", "z"] {
        h.send("orders", id, None).await;
    }
    // Handlers that finish at once: received in one pull, run side by side, done in one turn.
    let log = h.log.clone();
    let handler = service_fn(move |msg: Msg| {
        let log = log.clone();
        async move {
            log.lock()
                .unwrap()
                .push(format!("handled {}", msg.id.unwrap()));
            Ok::<_, Infallible>(())
        }
    });
    let done = h.log.clone();
    consumer
        .with_concurrency(3)
        .run(handler, async move { lines_reach(&done, 7).await })
        .await
        .unwrap();
    let lines = lines(&h.log);
    assert!(
        lines.contains(&"together x,y,z".to_owned()),
        "one settle_all call for the three: {lines:?}"
    );
    for id in ["x", "y", "z"] {
        assert!(lines.contains(&format!("ack {id}")), "{lines:?}");
    }
}
