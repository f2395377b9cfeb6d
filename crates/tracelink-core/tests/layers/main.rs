//! Layer tests: exact span names, kinds, attributes, parents and links through the SDK's
//! in-memory exporters. No broker needed.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use support::*;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tracelink_core::{
    BaggagePolicy, BatchConsumerLayer, BatchProducerLayer, ConsumerLayer, Destination,
    Instrumentation, LinkMode, ProducerLayer, SpanName, TypeNameErrorType,
};

type Sent = Arc<Mutex<Vec<Msg>>>;

/// A fake broker client: records what it was asked to publish, answers with an offset.
fn broker(sent: Sent) -> impl Service<Msg, Response = Ack, Error = std::io::Error> + Clone {
    service_fn(move |msg: Msg| {
        let sent = sent.clone();
        async move {
            let mut sent = sent.lock().unwrap();
            sent.push(msg);
            Ok(Ack {
                offset: sent.len() as i64 - 1,
            })
        }
    })
}

/// Publishes `msg` through a producer layer built from `instr`; returns what reached the broker.
async fn publish(instr: &Instrumentation, msg: Msg) -> Msg {
    let sent = Sent::default();
    let mut svc = ServiceBuilder::new()
        .layer(ProducerLayer::from(instr.clone()))
        .service(broker(sent.clone()));
    svc.ready().await.unwrap().call(msg).await.unwrap();
    let out = sent.lock().unwrap().pop().unwrap();
    out
}

/// Consumes `msg` with a handler recording the context it ran in; returns that context.
async fn consume(instr: &Instrumentation, msg: Msg) -> Context {
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let mut svc = ServiceBuilder::new()
        .layer(ConsumerLayer::from(instr.clone()))
        .service(service_fn(move |_msg: Msg| {
            let seen = seen2.clone();
            async move {
                *seen.lock().unwrap() = Some(Context::current());
                Ok::<_, Infallible>(())
            }
        }));
    svc.ready().await.unwrap().call(msg).await.unwrap();
    let cx = seen.lock().unwrap().take().expect("handler was called");
    cx
}

#[tokio::test]
async fn producer_span_and_injection() {
    let t = Telemetry::new();
    let instr = t.instrumentation();
    let mut msg = Msg::new("orders").with_header("user", "kept").with_header(
        "Traceparent",
        "00-11111111111111111111111111111111-2222222222222222-01",
    );
    msg.id = Some("m-1".into());
    let out = publish(&instr, msg).await;

    let span = t.span("send orders");
    assert_eq!(span.span_kind, SpanKind::Producer);
    assert_eq!(span.parent_span_id, SpanId::INVALID);
    assert_eq!(span.status, Status::Unset);
    assert_eq!(
        attrs(&span.attributes),
        expected(&[
            ("messaging.system", "test_broker"),
            ("messaging.operation.type", "send"),
            ("messaging.operation.name", "send"),
            ("messaging.destination.name", "orders"),
            ("server.address", "broker.local"),
            ("server.port", "5672"),
            ("messaging.message.id", "m-1"),
            ("messaging.message.body.size", "5"),
            ("messaging.test.offset", "0"),
        ])
    );
    // The stale header is replaced, not duplicated; the user's header stays.
    assert_eq!(out.header("user"), Some("kept"));
    let traceparents: Vec<_> = out
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
        .collect();
    assert_eq!(traceparents.len(), 1);
    assert_eq!(
        out.header("traceparent"),
        Some(
            format!(
                "00-{}-{}-01",
                span.span_context.trace_id(),
                span.span_context.span_id()
            )
            .as_str()
        )
    );
}

#[tokio::test]
async fn producer_failure_records_error_type() {
    let t = Telemetry::new();
    let mut svc = ServiceBuilder::new()
        .layer(ProducerLayer::from(t.instrumentation()))
        .service(service_fn(|_msg: Msg| async {
            Err::<Ack, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
        }));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Msg::new("orders"))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "inner error unchanged"
    );
    let span = t.span("send orders");
    assert_eq!(span.status, Status::error("ConnectionRefused"));
    assert!(span
        .attributes
        .contains(&KeyValue::new("error.type", "ConnectionRefused")));
}

#[tokio::test]
async fn unsampled_producer_still_injects_context() {
    let spans = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff)
        .with_simple_exporter(spans.clone())
        .build();
    let instr = Instrumentation::builder(Telemetry::system())
        .with_tracer_provider(&provider)
        .with_propagator(w3c())
        .build();
    let out = publish(&instr, Msg::new("orders")).await;
    let tp = out.header("traceparent").expect("context injected");
    assert!(tp.ends_with("-00"), "sampled flag off: {tp}");
    assert!(spans.get_finished_spans().unwrap().is_empty());
}

#[tokio::test]
async fn consumer_link_mode_starts_new_trace_with_link() {
    let t = Telemetry::new();
    let instr = t.instrumentation();
    let mut msg = publish(&instr, Msg::new("orders")).await;
    msg.id = Some("m-7".into());
    let handler_cx = consume(&instr, msg).await;

    let producer = t.span("send orders");
    let process = t.span("process orders");
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(process.parent_span_id, SpanId::INVALID, "a root span");
    assert_ne!(
        process.span_context.trace_id(),
        producer.span_context.trace_id(),
        "a new trace"
    );
    assert_eq!(process.links.links.len(), 1);
    assert_same(&process.links.links[0].span_context, &producer.span_context);
    assert_eq!(
        ids(&handler_cx),
        (
            process.span_context.trace_id(),
            process.span_context.span_id()
        ),
        "the handler runs inside the process span"
    );
    assert_eq!(
        attrs(&process.attributes),
        expected(&[
            ("messaging.system", "test_broker"),
            ("messaging.operation.type", "process"),
            ("messaging.operation.name", "process"),
            ("messaging.destination.name", "orders"),
            ("messaging.consumer.group.name", "workers"),
            ("server.address", "broker.local"),
            ("server.port", "5672"),
            ("messaging.message.id", "m-7"),
            ("messaging.message.body.size", "5"),
        ])
    );
}

#[tokio::test]
async fn consumer_parent_mode_continues_trace_and_keeps_link() {
    let t = Telemetry::new();
    let instr = t.builder().with_link_mode(LinkMode::Parent).build();
    let msg = publish(&instr, Msg::new("orders")).await;
    consume(&instr, msg).await;
    let producer = t.span("send orders");
    let process = t.span("process orders");
    assert_eq!(
        process.span_context.trace_id(),
        producer.span_context.trace_id()
    );
    assert_eq!(process.parent_span_id, producer.span_context.span_id());
    assert!(process.parent_span_is_remote);
    assert_eq!(process.links.links.len(), 1);
    assert_same(&process.links.links[0].span_context, &producer.span_context);
}

/// With an ambient span (say an HTTP request that pulls a message), Link mode makes the process
/// span its child (and links to the producer); Parent mode makes it the producer's child.
#[tokio::test]
async fn ambient_span_in_each_mode() {
    for mode in [LinkMode::Link, LinkMode::Parent] {
        let t = Telemetry::new();
        let instr = t.builder().with_link_mode(mode).build();
        let msg = publish(&instr, Msg::new("orders")).await;
        let tracer = t.tracer_provider.tracer("app");
        let ambient = tracer.start("http request");
        let ambient_cx = Context::current_with_span(ambient);
        {
            let _guard = ambient_cx.clone().attach();
            consume(&instr, msg).await;
        }
        ambient_cx.span().end();
        let producer = t.span("send orders");
        let request = t.span("http request");
        let process = t.span("process orders");
        assert_same(&process.links.links[0].span_context, &producer.span_context);
        match mode {
            LinkMode::Link => {
                assert_eq!(process.parent_span_id, request.span_context.span_id());
                assert_eq!(
                    process.span_context.trace_id(),
                    request.span_context.trace_id()
                );
            }
            LinkMode::Parent => {
                assert_eq!(process.parent_span_id, producer.span_context.span_id());
                assert_eq!(
                    process.span_context.trace_id(),
                    producer.span_context.trace_id()
                );
            }
        }
        // The conventions: when the producer is the parent, the ambient span it displaces is
        // added as a link. In link mode the ambient span is the parent, so no second link.
        let links = &process.links.links;
        match mode {
            LinkMode::Link => assert_eq!(links.len(), 1),
            LinkMode::Parent => {
                assert_eq!(links.len(), 2);
                assert_same(&links[1].span_context, &request.span_context);
            }
        }
    }
}

#[tokio::test]
async fn parent_mode_without_ambient_span_links_the_producer_only() {
    let t = Telemetry::new();
    let instr = t.builder().with_link_mode(LinkMode::Parent).build();
    let msg = publish(&instr, Msg::new("orders")).await;
    consume(&instr, msg).await;
    let process = t.span("process orders");
    assert_eq!(process.links.links.len(), 1);
    assert_same(
        &process.links.links[0].span_context,
        &t.span("send orders").span_context,
    );
}

/// A future that never completes, to be dropped.
async fn never<T>() -> T {
    std::future::pending().await
}

#[tokio::test]
async fn every_span_ends_as_cancelled_when_its_future_or_guard_is_dropped() {
    let t = Telemetry::new();
    let instr = t.instrumentation();

    // Producer.
    let mut producer = ProducerLayer::from(instr.clone()).layer(service_fn(|_msg: Msg| {
        never::<Result<Ack, std::io::Error>>()
    }));
    drop(producer.ready().await.unwrap().call(Msg::new("single")));

    // Batch producer: the `send` span and each `create` span.
    let mut batch_producer =
        BatchProducerLayer::from(instr.clone()).layer(service_fn(|_msgs: Vec<Msg>| {
            never::<Result<Vec<Result<Ack, std::io::Error>>, std::io::Error>>()
        }));
    drop(
        batch_producer
            .ready()
            .await
            .unwrap()
            .call(vec![Msg::new("batch"), Msg::new("batch")]),
    );

    // Batch consumer.
    let mut batch_consumer =
        BatchConsumerLayer::from(instr.clone()).layer(service_fn(|_msgs: Vec<Msg>| {
            never::<Result<(), Infallible>>()
        }));
    drop(
        batch_consumer
            .ready()
            .await
            .unwrap()
            .call(vec![Msg::new("consumed"), Msg::new("consumed")]),
    );

    // Receive and settle spans held by a consumer that is dropped mid-way.
    let receive = instr
        .receive_span(
            Destination::new("pulled"),
            std::time::SystemTime::now(),
            &[Msg::new("pulled")],
        )
        .unwrap();
    drop(receive);
    drop(instr.settle_span(
        "ack",
        Destination::new("settled"),
        &Context::new(),
        Vec::new(),
    ));

    for name in [
        "send single",
        "send batch",
        "process consumed",
        "receive pulled",
        "ack settled",
    ] {
        let span = t.span(name);
        assert_eq!(span.status, Status::error("cancelled"), "{name}");
        assert!(
            span.attributes
                .contains(&KeyValue::new("error.type", "cancelled")),
            "{name}"
        );
    }
    let creates: Vec<_> = t
        .finished()
        .into_iter()
        .filter(|s| s.name == "create batch")
        .collect();
    assert_eq!(creates.len(), 2);
    for create in creates {
        assert_eq!(create.status, Status::error("cancelled"));
    }
}

#[tokio::test]
async fn handler_failure_is_recorded() {
    let t = Telemetry::new();
    let mut svc = ServiceBuilder::new()
        .layer(ConsumerLayer::from(t.instrumentation()).with_error_type(TypeNameErrorType))
        .service(service_fn(|_msg: Msg| async {
            Err::<(), _>(std::fmt::Error)
        }));
    let err = svc.ready().await.unwrap().call(Msg::new("orders")).await;
    assert!(err.is_err());
    let process = t.span("process orders");
    assert_eq!(process.status, Status::error("core::fmt::Error"));
    assert!(process
        .attributes
        .contains(&KeyValue::new("error.type", "core::fmt::Error")));
}

#[tokio::test]
async fn dropped_future_ends_span_as_cancelled() {
    let t = Telemetry::new();
    let mut svc = ServiceBuilder::new()
        .layer(ConsumerLayer::from(t.instrumentation()))
        .service(service_fn(|_msg: Msg| async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(())
        }));
    let fut = svc.ready().await.unwrap().call(Msg::new("orders"));
    assert!(tokio::time::timeout(Duration::from_millis(10), fut)
        .await
        .is_err());
    let process = t.span("process orders");
    assert_eq!(process.status, Status::error("cancelled"));
}

#[tokio::test]
async fn otel_and_tracing_spans_in_the_handler_are_children() {
    use tracing_subscriber::layer::SubscriberExt;
    let t = Telemetry::new();
    let instr = t.instrumentation();
    let msg = publish(&instr, Msg::new("orders")).await;
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(t.tracer_provider.tracer("handler")));
    let _default = tracing::subscriber::set_default(subscriber);
    let tracer = t.tracer_provider.tracer("handler");
    let mut svc = ServiceBuilder::new()
        .layer(ConsumerLayer::from(instr))
        .service(service_fn(move |_msg: Msg| {
            let otel_child = tracer.start("otel child");
            async move {
                drop(otel_child);
                {
                    let span = tracing::info_span!("tracing child");
                    let _entered = span.enter();
                    tracing::info!("working");
                }
                tokio::task::yield_now().await;
                Ok::<_, Infallible>(())
            }
        }));
    svc.ready().await.unwrap().call(msg).await.unwrap();
    let process = t.span("process orders");
    for child in ["otel child", "tracing child"] {
        let span = t.span(child);
        assert_eq!(
            span.parent_span_id,
            process.span_context.span_id(),
            "{child}"
        );
        assert_eq!(
            span.span_context.trace_id(),
            process.span_context.trace_id()
        );
    }
}

fn baggage_message(instr_pub: &Instrumentation) -> Msg {
    let _ = instr_pub;
    let mut entries = String::new();
    for i in 0..10 {
        if i > 0 {
            entries.push(',');
        }
        entries.push_str(&format!("k{i}=value{i}"));
    }
    Msg::new("orders").with_header("baggage", entries)
}

#[tokio::test]
async fn baggage_kept_dropped_and_capped() {
    let cases = [
        (BaggagePolicy::Keep, 10usize),
        (BaggagePolicy::Drop, 0),
        (
            BaggagePolicy::Cap {
                max_entries: 3,
                max_bytes: 8192,
            },
            3,
        ),
        (
            BaggagePolicy::Cap {
                max_entries: 64,
                max_bytes: 16,
            },
            2,
        ),
    ];
    for (policy, expected_entries) in cases {
        let t = Telemetry::new();
        let instr = t.builder().with_baggage_policy(policy).build();
        let msg = baggage_message(&instr);
        let cx = consume(&instr, msg).await;
        assert_eq!(cx.baggage().len(), expected_entries, "{policy:?}");
        if expected_entries > 0 {
            assert_eq!(cx.baggage().get("k0").map(|v| v.as_str()), Some("value0"));
        }
    }
}

#[tokio::test]
async fn producer_baggage_reaches_the_handler_end_to_end() {
    let t = Telemetry::new();
    let instr = t.instrumentation();
    let cx = Context::current().with_baggage(vec![KeyValue::new("tenant", "acme")]);
    let msg = {
        let _g = cx.attach();
        publish(&instr, Msg::new("orders")).await
    };
    assert_eq!(msg.header("baggage"), Some("tenant=acme"));
    let handler_cx = consume(&instr, msg).await;
    assert_eq!(
        handler_cx.baggage().get("tenant").map(|v| v.as_str()),
        Some("acme")
    );
}

const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Every hostile header yields a fresh root trace without a link, and the handler runs once.
#[tokio::test]
async fn hostile_headers_give_a_fresh_root_and_still_deliver() {
    let mut big_tracestate = String::new();
    for i in 0..40 {
        if i > 0 {
            big_tracestate.push(',');
        }
        big_tracestate.push_str(&format!("v{i}=x"));
    }
    let many_baggage: String = (0..70).map(|i| format!("k{i}=v,")).collect();
    let cases: Vec<(&str, Msg)> = vec![
        ("missing", Msg::new("q")),
        (
            "wrong version",
            Msg::new("q").with_header("traceparent", VALID.replacen("00-", "ff-", 1)),
        ),
        (
            "short trace id",
            Msg::new("q").with_header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            ),
        ),
        (
            "all-zero trace id",
            Msg::new("q").with_header(
                "traceparent",
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            ),
        ),
        (
            "all-zero span id",
            Msg::new("q").with_header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            ),
        ),
        (
            "upper-case hex",
            Msg::new("q").with_header("traceparent", VALID.to_uppercase()),
        ),
        (
            "trailing garbage",
            Msg::new("q").with_header("traceparent", format!("{VALID}-zz")),
        ),
        (
            "1 MiB value",
            Msg::new("q").with_header("traceparent", "0".repeat(1 << 20)),
        ),
        (
            "twice, different values",
            Msg::new("q").with_header("traceparent", VALID).with_header(
                "traceparent",
                "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ),
        (
            "non-UTF-8",
            Msg::new("q").with_header("traceparent", vec![0xff, 0xfe, 0x00, 0x41]),
        ),
        (
            "valid twin not text",
            Msg::new("q")
                .with_header("traceparent", VALID)
                .with_header("Traceparent", vec![0xc3, 0x28]),
        ),
        (
            "oversized baggage only",
            Msg::new("q").with_header("baggage", "k=".to_string() + &"v".repeat(9000)),
        ),
        (
            "over 64 baggage entries only",
            Msg::new("q").with_header("baggage", many_baggage),
        ),
        (
            "over 32 tracestate members, bad traceparent",
            Msg::new("q")
                .with_header("traceparent", "00-xyz")
                .with_header("tracestate", big_tracestate),
        ),
    ];
    for (name, msg) in cases {
        let t = Telemetry::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let calls2 = calls.clone();
        let mut svc = ServiceBuilder::new()
            .layer(ConsumerLayer::from(t.instrumentation()))
            .service(service_fn(move |_msg: Msg| {
                calls2.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(()) }
            }));
        svc.ready().await.unwrap().call(msg).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}: delivered once");
        let process = t.span("process q");
        assert_eq!(process.parent_span_id, SpanId::INVALID, "{name}: a root");
        assert!(process.links.links.is_empty(), "{name}: no link");
    }
}

#[tokio::test]
async fn identical_duplicates_and_other_case_still_link() {
    for msg in [
        Msg::new("q")
            .with_header("traceparent", VALID)
            .with_header("traceparent", VALID),
        Msg::new("q").with_header("Traceparent", VALID),
    ] {
        let t = Telemetry::new();
        consume(&t.instrumentation(), msg).await;
        let process = t.span("process q");
        assert_eq!(process.links.links.len(), 1);
        assert_eq!(
            process.links.links[0].span_context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
    }
}

#[tokio::test]
async fn tracestate_with_over_32_members_still_links() {
    // The traceparent is valid; the SDK drops an unusable tracestate and keeps the parent.
    let big: String = (0..40)
        .map(|i| format!("v{i}=x"))
        .collect::<Vec<_>>()
        .join(",");
    let t = Telemetry::new();
    let msg = Msg::new("q")
        .with_header("traceparent", VALID)
        .with_header("tracestate", big);
    consume(&t.instrumentation(), msg).await;
    let process = t.span("process q");
    assert_eq!(process.links.links.len(), 1);
}

#[tokio::test]
async fn batch_consumer_links_each_message() {
    let t = Telemetry::new();
    let instr = t.instrumentation();
    let mut batch = Vec::new();
    for i in 0..3 {
        let mut m = publish(&instr, Msg::new("orders")).await;
        m.id = Some(format!("m-{i}"));
        batch.push(m);
    }
    batch.push(Msg::new("orders").with_header("traceparent", "garbage"));
    let mut svc = ServiceBuilder::new()
        .layer(BatchConsumerLayer::from(instr))
        .service(service_fn(|msgs: Vec<Msg>| async move {
            assert_eq!(msgs.len(), 4);
            Ok::<_, Infallible>(())
        }));
    svc.ready().await.unwrap().call(batch).await.unwrap();
    let producers: Vec<_> = t
        .finished()
        .into_iter()
        .filter(|s| s.name == "send orders")
        .collect();
    let process = t.span("process orders");
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert!(process
        .attributes
        .contains(&KeyValue::new("messaging.batch.message_count", 4)));
    assert_eq!(process.links.links.len(), 3, "one link per valid context");
    for (i, (link, producer)) in process.links.links.iter().zip(&producers).enumerate() {
        assert_same(&link.span_context, &producer.span_context);
        assert!(link
            .attributes
            .contains(&KeyValue::new("messaging.message.id", format!("m-{i}"))));
    }
}

#[derive(Debug)]
struct BatchAck(Vec<Result<Ack, std::io::Error>>);

impl tracelink_core::BatchPublishResponse for BatchAck {
    fn entry(
        &self,
        index: usize,
        attributes: &mut Vec<KeyValue>,
    ) -> Result<(), std::borrow::Cow<'static, str>> {
        self.0.entry(index, attributes)
    }
}

#[tokio::test]
async fn batch_publish_gives_each_message_its_own_context() {
    let t = Telemetry::new();
    let seen: Arc<Mutex<Vec<Msg>>> = Arc::default();
    let seen2 = seen.clone();
    let mut svc = ServiceBuilder::new()
        .layer(BatchProducerLayer::from(t.instrumentation()))
        .service(service_fn(move |msgs: Vec<Msg>| {
            seen2.lock().unwrap().extend(msgs.iter().cloned());
            async move {
                Ok::<_, std::io::Error>(BatchAck(vec![
                    Ok(Ack { offset: 0 }),
                    Err(std::io::Error::from(std::io::ErrorKind::InvalidData)),
                    Ok(Ack { offset: 1 }),
                ]))
            }
        }));
    let batch = vec![Msg::new("orders"), Msg::new("orders"), Msg::new("orders")];
    svc.ready().await.unwrap().call(batch).await.unwrap();

    let send = t.span("send orders");
    assert_eq!(send.span_kind, SpanKind::Client);
    assert!(send
        .attributes
        .contains(&KeyValue::new("messaging.batch.message_count", 3)));
    assert_eq!(
        send.status,
        Status::error("InvalidData"),
        "partial failure shows"
    );
    let creates: Vec<_> = t
        .finished()
        .into_iter()
        .filter(|s| s.name == "create orders")
        .collect();
    assert_eq!(creates.len(), 3);
    let sent = seen.lock().unwrap();
    for (msg, create) in sent.iter().zip(&creates) {
        assert_eq!(create.span_kind, SpanKind::Producer);
        assert_eq!(create.parent_span_id, send.span_context.span_id());
        let tp = msg.header("traceparent").unwrap();
        assert!(tp.contains(&create.span_context.span_id().to_string()));
    }
    assert_eq!(creates[1].status, Status::error("InvalidData"));
    assert_eq!(creates[0].status, Status::Unset);
}

#[tokio::test]
async fn receive_span_links_and_skips_empty_polls() {
    let t = Telemetry::new();
    let instr = t.instrumentation();
    let none: Vec<Msg> = Vec::new();
    assert!(instr
        .receive_span(
            Destination::new("orders"),
            std::time::SystemTime::now(),
            &none
        )
        .is_none());
    let msgs = vec![
        publish(&instr, Msg::new("orders")).await,
        publish(&instr, Msg::new("orders")).await,
    ];
    instr
        .receive_span(
            Destination::new("orders"),
            std::time::SystemTime::now(),
            &msgs,
        )
        .unwrap()
        .end();
    let receive = t.span("receive orders");
    assert_eq!(receive.span_kind, SpanKind::Client);
    assert_eq!(receive.links.links.len(), 2);
    assert!(receive
        .attributes
        .contains(&KeyValue::new("messaging.batch.message_count", 2)));

    // A failed poll still gets a span, with the error.
    let t = Telemetry::new();
    t.instrumentation().receive_failed(
        Destination::new("orders"),
        std::time::SystemTime::now(),
        "AWS.SimpleQueueService.NonExistentQueue",
    );
    let failed = t.span("receive orders");
    assert_eq!(
        failed.status,
        Status::error("AWS.SimpleQueueService.NonExistentQueue")
    );
    assert!(failed.links.links.is_empty());
    assert!(receive
        .attributes
        .contains(&KeyValue::new("messaging.operation.type", "receive")));
}

#[tokio::test]
async fn span_name_strategies_and_templates() {
    let t = Telemetry::new();
    let instr = t
        .builder()
        .with_span_name(SpanName::Template("user-queue.*".into()))
        .build();
    publish(&instr, Msg::new("user-queue.42")).await;
    let span = t.span("send user-queue.*");
    assert!(span.attributes.contains(&KeyValue::new(
        "messaging.destination.name",
        "user-queue.42"
    )));
}

#[tokio::test]
async fn header_capture_is_opt_in() {
    let t = Telemetry::new();
    let instr = t
        .builder()
        .with_captured_headers([
            "Content-Type",
            "x-missing",
            "Authorization",
            "x-api-key",
            "X-Auth-Token",
            "db_password",
        ])
        .build();
    consume(
        &instr,
        Msg::new("q")
            .with_header("content-type", "application/json")
            .with_header("secret", "s3cr3t")
            .with_header("authorization", "Bearer s3cr3t")
            .with_header("x-api-key", "s3cr3t")
            .with_header("x-auth-token", "s3cr3t")
            .with_header("db_password", "s3cr3t"),
    )
    .await;
    let process = t.span("process q");
    assert!(process.attributes.contains(&KeyValue::new(
        "messaging.header.content-type",
        "application/json"
    )));
    assert!(!process.attributes.iter().any(|kv| {
        kv.key.as_str().contains("secret")
            || kv.key.as_str().contains("missing")
            || kv.value.as_str().contains("s3cr3t")
    }));
}

#[tokio::test]
async fn metrics_values_and_attributes() {
    let t = Telemetry::new();
    let instr = t.instrumentation();
    let msg = publish(&instr, Msg::new("orders")).await;
    consume(&instr, msg).await;
    let mut failing = ServiceBuilder::new()
        .layer(ConsumerLayer::from(instr.clone()))
        .service(service_fn(|_m: Msg| async {
            Err::<(), _>(std::io::Error::from(std::io::ErrorKind::InvalidInput))
        }));
    let _ = failing
        .ready()
        .await
        .unwrap()
        .call(Msg::new("orders"))
        .await;

    let metrics = t.collect_metrics();
    assert_eq!(
        counter_sum(
            &metrics,
            "messaging.client.sent.messages",
            &[("messaging.destination.name", "orders")]
        ),
        1
    );
    assert_eq!(
        counter_sum(&metrics, "messaging.client.consumed.messages", &[]),
        2
    );
    assert_eq!(
        counter_sum(
            &metrics,
            "messaging.client.consumed.messages",
            &[("error.type", "InvalidInput")]
        ),
        1
    );
    let (count, sets) = histogram(&metrics, "messaging.client.operation.duration", &[]);
    assert_eq!(count, 1);
    assert_eq!(
        sets[0],
        expected(&[
            ("messaging.system", "test_broker"),
            ("messaging.operation.name", "send"),
            ("messaging.destination.name", "orders"),
            ("server.address", "broker.local"),
            ("server.port", "5672"),
        ])
    );
    let (count, _) = histogram(&metrics, "messaging.process.duration", &[]);
    assert_eq!(count, 2);
    let (failed, sets) = histogram(
        &metrics,
        "messaging.process.duration",
        &[("error.type", "InvalidInput")],
    );
    assert_eq!(failed, 1);
    assert_eq!(
        sets[0],
        expected(&[
            ("messaging.system", "test_broker"),
            ("messaging.operation.name", "process"),
            ("messaging.destination.name", "orders"),
            ("messaging.consumer.group.name", "workers"),
            ("server.address", "broker.local"),
            ("server.port", "5672"),
            ("error.type", "InvalidInput"),
        ])
    );
}

/// A retry *outside* the consumer layer records one `process` span per attempt.
#[tokio::test]
async fn composes_with_retry_timeout_and_concurrency_limit() {
    #[derive(Clone)]
    struct Twice(usize);
    impl<E> tower::retry::Policy<Msg, (), E> for Twice {
        type Future = std::future::Ready<()>;
        fn retry(&mut self, _req: &mut Msg, result: &mut Result<(), E>) -> Option<Self::Future> {
            if result.is_err() && self.0 > 0 {
                self.0 -= 1;
                Some(std::future::ready(()))
            } else {
                None
            }
        }
        fn clone_request(&mut self, req: &Msg) -> Option<Msg> {
            Some(req.clone())
        }
    }

    let t = Telemetry::new();
    let attempts = Arc::new(AtomicUsize::new(0));
    let attempts2 = attempts.clone();
    let mut svc = ServiceBuilder::new()
        .concurrency_limit(4)
        .retry(Twice(2))
        .layer(ConsumerLayer::from(t.instrumentation()))
        .timeout(Duration::from_secs(5))
        .service(service_fn(move |_m: Msg| {
            let n = attempts2.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err::<(), tower::BoxError>("first attempt fails".into())
                } else {
                    Ok(())
                }
            }
        }));
    svc.ready()
        .await
        .unwrap()
        .call(Msg::new("q"))
        .await
        .unwrap();
    let spans: Vec<_> = t
        .finished()
        .into_iter()
        .filter(|s| s.name == "process q")
        .collect();
    assert_eq!(spans.len(), 2, "one span per attempt");
    assert_eq!(spans[0].status, Status::error("_OTHER"));
    assert_eq!(spans[1].status, Status::Unset);

    // A timeout inside the layer fails the handler with error.type=timeout.
    let t = Telemetry::new();
    let mut svc = ServiceBuilder::new()
        .layer(ConsumerLayer::from(t.instrumentation()))
        .timeout(Duration::from_millis(5))
        .service(service_fn(|_m: Msg| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Infallible>(())
        }));
    assert!(svc
        .ready()
        .await
        .unwrap()
        .call(Msg::new("q"))
        .await
        .is_err());
    assert_eq!(t.span("process q").status, Status::error("timeout"));
}

#[test]
fn fields_name_the_propagators_headers() {
    let t = Telemetry::new();
    let mut fields = t.instrumentation().fields();
    fields.sort();
    assert_eq!(fields, ["baggage", "traceparent", "tracestate"]);
}

#[tokio::test]
async fn settle_span_is_a_client_child_of_the_process_span() {
    let t = Telemetry::new();
    let instr = t.instrumentation();
    let process_cx = consume(&instr, Msg::new("orders")).await;
    instr
        .settle_span(
            "ack",
            Destination::new("orders"),
            &process_cx,
            vec![KeyValue::new("messaging.rabbitmq.message.delivery_tag", 7)],
        )
        .end();
    instr
        .settle_span("nack", Destination::new("orders"), &process_cx, Vec::new())
        .fail("channel_closed");
    let process = t.span("process orders");
    let ack = t.span("ack orders");
    assert_eq!(ack.span_kind, SpanKind::Client);
    assert_eq!(ack.parent_span_id, process.span_context.span_id());
    assert_eq!(
        attrs(&ack.attributes),
        expected(&[
            ("messaging.system", "test_broker"),
            ("messaging.operation.type", "settle"),
            ("messaging.operation.name", "ack"),
            ("messaging.destination.name", "orders"),
            ("server.address", "broker.local"),
            ("server.port", "5672"),
            ("messaging.rabbitmq.message.delivery_tag", "7"),
        ])
    );
    assert_eq!(
        t.span("nack orders").status,
        Status::error("channel_closed")
    );
    let metrics = t.collect_metrics();
    let (acks, _) = histogram(
        &metrics,
        "messaging.client.operation.duration",
        &[("messaging.operation.name", "ack")],
    );
    let (nacks, _) = histogram(
        &metrics,
        "messaging.client.operation.duration",
        &[
            ("messaging.operation.name", "nack"),
            ("error.type", "channel_closed"),
        ],
    );
    assert_eq!((acks, nacks), (1, 1));
}

#[tokio::test]
async fn with_tracing_off_no_span_is_built_but_contexts_propagate_and_metrics_count() {
    let t = Telemetry::new();
    let off = Instrumentation::builder(Telemetry::system())
        .with_tracer_provider(&opentelemetry::trace::noop::NoopTracerProvider::new())
        .with_meter_provider(&t.meter_provider)
        .with_propagator(w3c())
        .with_link_mode(LinkMode::Parent)
        .build();
    // An application span of another (recording) provider is the publish's parent: its context
    // goes into the headers, as through a no-op span.
    let app = t.tracer_provider.tracer("app");
    let request = app.start("http request");
    let request_cx = Context::current_with_span(request);
    let sent = {
        let _guard = request_cx.clone().attach();
        publish(&off, Msg::new("orders")).await
    };
    let (trace_id, span_id) = ids(&request_cx);
    assert_eq!(
        sent.header("traceparent"),
        Some(format!("00-{trace_id}-{span_id}-01").as_str())
    );
    // Consumed inside another application span, in parent mode: the handler sees the
    // producer's context, and the ambient span is neither ended nor touched.
    let worker = app.start("worker");
    let worker_cx = Context::current_with_span(worker);
    let handler_cx = {
        let _guard = worker_cx.clone().attach();
        consume(&off, sent).await
    };
    assert_eq!(ids(&handler_cx), (trace_id, span_id));
    assert!(t.finished().is_empty(), "no span ended: {:?}", t.finished());
    worker_cx.span().end();
    request_cx.span().end();
    assert_eq!(t.finished().len(), 2);
    let metrics = t.collect_metrics();
    assert_eq!(
        counter_sum(&metrics, "messaging.client.sent.messages", &[]),
        1
    );
    assert_eq!(
        counter_sum(&metrics, "messaging.client.consumed.messages", &[]),
        1
    );
}

#[tokio::test]
async fn on_inject_sees_each_message_with_its_own_context_and_its_event_lands_on_that_span() {
    let t = Telemetry::new();
    let instr = t.instrumentation();
    // A hook placing the injected context the way an adapter with header rules would: it reads
    // the context it was given (not the headers) and notes the placement on the span.
    let hook = |msg: &mut Msg, cx: &Context| {
        let (trace_id, span_id) = ids(cx);
        msg.headers.push((
            "x-placed".into(),
            format!("{trace_id}-{span_id}").into_bytes(),
        ));
        Some((
            "context placed",
            vec![KeyValue::new("placed.in", "x-placed")],
        ))
    };
    let sent = Sent::default();
    let mut single = ProducerLayer::from(instr.clone())
        .on_inject(hook)
        .layer(broker(sent.clone()));
    single
        .ready()
        .await
        .unwrap()
        .call(Msg::new("single"))
        .await
        .unwrap();
    let send = t.span("send single");
    let placed = sent.lock().unwrap().pop().unwrap();
    assert_eq!(
        placed.header("x-placed").unwrap(),
        format!(
            "{}-{}",
            send.span_context.trace_id(),
            send.span_context.span_id()
        )
    );
    assert_eq!(send.events.events.len(), 1);
    assert_eq!(send.events.events[0].name, "context placed");

    let batch_sent = Arc::new(Mutex::new(Vec::new()));
    let store = batch_sent.clone();
    let mut batch = BatchProducerLayer::from(instr.clone())
        .on_inject(hook)
        .layer(service_fn(move |msgs: Vec<Msg>| {
            let store = store.clone();
            async move {
                let acks: Vec<Result<Ack, std::io::Error>> =
                    msgs.iter().map(|_| Ok(Ack { offset: 0 })).collect();
                store.lock().unwrap().extend(msgs);
                Ok::<_, std::io::Error>(acks)
            }
        }));
    batch
        .ready()
        .await
        .unwrap()
        .call(vec![Msg::new("batch"), Msg::new("batch")])
        .await
        .unwrap();
    let creates: Vec<_> = t
        .finished()
        .into_iter()
        .filter(|s| s.name == "create batch")
        .collect();
    assert_eq!(creates.len(), 2);
    let placed: Vec<String> = batch_sent
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.header("x-placed").unwrap().to_owned())
        .collect();
    for create in &creates {
        assert_eq!(
            create.events.events.len(),
            1,
            "the event is on each create span"
        );
        let own = format!(
            "{}-{}",
            create.span_context.trace_id(),
            create.span_context.span_id()
        );
        assert!(placed.contains(&own), "{own} not in {placed:?}");
    }
    assert!(t.span("send batch").events.events.is_empty());
}
