//! The hostile-header corpus (`tracelink-testkit`), plus header values of every non-string AMQP
//! type, through the consume loop against RabbitMQ: every message reaches the handler exactly
//! once and is acked, the loop keeps running, and each `process` span is a fresh root, linked
//! only where the context was usable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use lapin::BasicProperties;
use opentelemetry::trace::{SpanId, TraceContextExt};
use opentelemetry::Context;
use tokio::sync::Notify;
use tower::service_fn;
use tracelink_amqp::{AmqpConsumer, AmqpDelivery};
use tracelink_core::Instrumentation;
use tracelink_testkit::{
    baggage_size, check_baggage, check_process_span, corpus, w3c_propagator, Case, Expect,
    VALID_TRACEPARENT,
};

use crate::support::*;

/// RabbitMQ's default `frame_max` (128 KiB): a content header (the properties with their
/// headers table) must fit in one frame, so larger header sets cannot be published at all.
const FRAME_MAX: usize = 131_072;

/// `traceparent` carried by each non-string AMQP type (the valid value where the type can
/// hold text); only strings and byte arrays of UTF-8 read as text.
fn typed_cases() -> Vec<(&'static str, AMQPValue, Expect)> {
    let mut nested = FieldTable::default();
    nested.insert(
        "traceparent".into(),
        AMQPValue::LongString(VALID_TRACEPARENT.into()),
    );
    vec![
        (
            "amqp-short-string",
            AMQPValue::ShortString(VALID_TRACEPARENT.into()),
            Expect::Linked,
        ),
        (
            "amqp-byte-array",
            AMQPValue::ByteArray(ByteArray::from(VALID_TRACEPARENT.as_bytes())),
            Expect::Linked,
        ),
        (
            "amqp-byte-array-not-utf8",
            AMQPValue::ByteArray(ByteArray::from(&[0xff_u8, 0xfe][..])),
            Expect::FreshRoot,
        ),
        ("amqp-boolean", AMQPValue::Boolean(true), Expect::FreshRoot),
        ("amqp-short-int", AMQPValue::ShortInt(-3), Expect::FreshRoot),
        ("amqp-long-int", AMQPValue::LongInt(42), Expect::FreshRoot),
        (
            "amqp-long-long-int",
            AMQPValue::LongLongInt(i64::MIN),
            Expect::FreshRoot,
        ),
        ("amqp-float", AMQPValue::Float(f32::NAN), Expect::FreshRoot),
        ("amqp-double", AMQPValue::Double(1e300), Expect::FreshRoot),
        (
            "amqp-decimal",
            AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 7 }),
            Expect::FreshRoot,
        ),
        (
            "amqp-timestamp",
            AMQPValue::Timestamp(u64::MAX),
            Expect::FreshRoot,
        ),
        (
            "amqp-table",
            AMQPValue::FieldTable(nested),
            Expect::FreshRoot,
        ),
        (
            "amqp-array",
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                VALID_TRACEPARENT.into(),
            )])),
            Expect::FreshRoot,
        ),
        ("amqp-void", AMQPValue::Void, Expect::FreshRoot),
    ]
}

#[derive(Debug, Clone)]
struct Seen {
    span_id: SpanId,
    baggage: (usize, usize),
}

#[tokio::test]
async fn hostile_headers_are_delivered_once_with_fresh_roots() {
    let t = telemetry();
    let (_connection, channel, queue) = channel_with_queue("hostile", FieldTable::default()).await;
    let mut cases: Vec<(Case, FieldTable)> = Vec::new();
    for case in corpus() {
        let mut table = FieldTable::default();
        for (key, value) in &case.headers {
            table.insert(
                key.as_str().into(),
                AMQPValue::LongString(LongString::from(value.clone())),
            );
        }
        cases.push((case, table));
    }
    for (name, value, expect) in typed_cases() {
        let mut table = FieldTable::default();
        table.insert("traceparent".into(), value);
        let case = Case {
            name,
            what: "traceparent of a non-string AMQP type",
            headers: Vec::new(),
            expect,
        };
        cases.push((case, table));
    }

    let mut delivered_cases = Vec::new();
    let mut refused = Vec::new();
    for (case, table) in &cases {
        let properties = BasicProperties::default()
            .with_message_id(case.name.into())
            .with_headers(table.clone());
        if case.size() > FRAME_MAX || case.headers.is_empty() {
            // Published on a connection of its own, with publisher confirms: the broker may
            // refuse a header set (a content header larger than a frame, a field type it does
            // not know) by closing the channel or the connection.
            let own = connect(&unique("refusable")).await;
            let own_channel = own.create_channel().await.expect("channel");
            own_channel
                .confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await
                .expect("confirm.select");
            let confirmed = within("refusable publish", async {
                match own_channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        case.name.as_bytes(),
                        properties,
                    )
                    .await
                {
                    Ok(confirm) => matches!(confirm.await, Ok(c) if c.is_ack()),
                    Err(_) => false,
                }
            })
            .await;
            let _ = own.close(200, "done".into()).await;
            if confirmed {
                delivered_cases.push(case.name);
            } else {
                refused.push(case.name);
            }
            continue;
        }
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                case.name.as_bytes(),
                properties,
            )
            .await
            .unwrap_or_else(|e| panic!("{}: publish: {e}", case.name))
            .await
            .unwrap_or_else(|e| panic!("{}: published: {e}", case.name));
        delivered_cases.push(case.name);
    }
    // RabbitMQ refuses the 1 MiB header set (over a frame), and two AMQP 0-9-1 field types it
    // does not implement in tables (short string `s`, which it reads as a 16-bit integer, and
    // float `f`): those never reach the queue, so no consumer can see them.
    assert_eq!(
        refused,
        vec!["tp-1mib", "amqp-short-string", "amqp-float"],
        "what the broker refuses"
    );
    let sentinel = "sentinel";
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            sentinel.as_bytes(),
            BasicProperties::default().with_message_id(sentinel.into()),
        )
        .await
        .expect("publish")
        .await
        .expect("published");
    let expected = delivered_cases.len() + 1;

    let instrumentation = Instrumentation::builder(tracelink_amqp::messaging_system(&url()))
        .with_tracer_provider(&t.provider)
        .with_propagator(w3c_propagator())
        .build();
    let seen: Arc<Mutex<BTreeMap<String, Vec<Seen>>>> = Arc::default();
    let done = Arc::new(Notify::new());
    let handler = {
        let (seen, done) = (seen.clone(), done.clone());
        service_fn(move |delivery: AmqpDelivery| {
            let id = delivery
                .properties()
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default();
            let cx = Context::current();
            let mut seen = seen.lock().unwrap();
            seen.entry(id).or_default().push(Seen {
                span_id: cx.span().span_context().span_id(),
                baggage: baggage_size(&cx),
            });
            if seen.values().map(Vec::len).sum::<usize>() == expected {
                done.notify_one();
            }
            async { Ok::<_, std::convert::Infallible>(()) }
        })
    };
    let consumer = consume(&channel, &queue).await;
    let signal = {
        let done = done.clone();
        async move { done.notified().await }
    };
    within(
        "every hostile message handled",
        AmqpConsumer::new(consumer, instrumentation).run(handler, signal),
    )
    .await
    .expect("hostile headers never stop the loop");

    let seen = seen.lock().unwrap().clone();
    let spans = t.spans();
    let mut failures = Vec::new();
    for (case, _) in &cases {
        let runs = seen.get(case.name).cloned().unwrap_or_default();
        if refused.contains(&case.name) {
            if !runs.is_empty() {
                failures.push(format!("{}: refused yet delivered", case.name));
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
        seen.get(sentinel).map(Vec::len),
        Some(1),
        "the loop kept running"
    );
    assert!(failures.is_empty(), "{failures:#?}");
    // Every message was acked: once the channel is closed nothing returns to the queue.
    channel.close(200, "done".into()).await.expect("close");
    let (_c, check, _) = channel_with_queue("hostile-check", FieldTable::default()).await;
    assert_eq!(
        ready_count(&check, &queue).await,
        0,
        "every message was acked"
    );
}
