//! The consumer layer's whole extraction path: a message of one of the adapters' types (chosen
//! by the first input byte) built from the fuzz input, run through `ConsumerLayer` (link or
//! parent mode) around a handler. The handler must run exactly once, the span must be a root
//! (link mode) and baggage must stay within W3C's limits.
#![no_main]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use tower::{service_fn, Layer, ServiceExt};
use tracelink_core::{ConsumerLayer, IncomingMessage};
use tracelink_fuzz::{decode_headers, instrumentation};

fn run<M: IncomingMessage + Send + 'static>(message: M, parent: bool) {
    let instr = instrumentation(parent);
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let service = ConsumerLayer::from(instr.clone()).layer(service_fn(move |_: M| {
        seen.fetch_add(1, Ordering::SeqCst);
        let cx = Context::current();
        let (entries, _) = tracelink_testkit::baggage_size(&cx);
        assert!(entries <= tracelink_testkit::MAX_BAGGAGE_ENTRIES);
        let span = cx.span();
        assert!(
            span.span_context().is_valid(),
            "the handler runs in the process span"
        );
        async { Ok::<_, Infallible>(()) }
    }));
    let result = service
        .oneshot(message)
        .now_or_never()
        .expect("the consumer layer completes without a runtime");
    assert!(result.is_ok());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the handler runs exactly once"
    );
}

fn kafka(headers: &[(&[u8], &[u8])], parent: bool) {
    use tracelink_kafka::rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
    let mut owned = OwnedHeaders::new();
    for (key, value) in headers {
        let key = String::from_utf8_lossy(key);
        if key.contains('\0') {
            continue;
        }
        let value = (!value.is_empty()).then_some(*value);
        owned = owned.insert(Header { key: &key, value });
    }
    let message = OwnedMessage::new(
        Some(b"payload".to_vec()),
        headers.first().map(|(k, _)| k.to_vec()),
        "topic".into(),
        Timestamp::NotAvailable,
        0,
        42,
        Some(owned),
    );
    run(
        tracelink_kafka::KafkaMessage::new(message).with_group("group"),
        parent,
    );
}

fn amqp(headers: &[(&[u8], &[u8])], parent: bool) {
    use tracelink_amqp::lapin::message::Delivery;
    use tracelink_amqp::lapin::types::{AMQPValue, ByteArray, FieldTable, LongString, ShortString};
    use tracelink_amqp::lapin::BasicProperties;
    let mut table = FieldTable::default();
    for (i, (key, value)) in headers.iter().enumerate() {
        let Ok(name) = ShortString::try_new(String::from_utf8_lossy(key).into_owned()) else {
            continue;
        };
        let value = if i % 3 == 2 {
            AMQPValue::ByteArray(ByteArray::from(*value))
        } else if i % 5 == 4 {
            AMQPValue::LongLongInt(value.len() as i64)
        } else {
            AMQPValue::LongString(LongString::from(*value))
        };
        table.insert(name, value);
    }
    let mut delivery = Delivery::mock(1, "exchange".into(), "key".into(), false, b"x".to_vec());
    delivery.properties = BasicProperties::default()
        .with_headers(table)
        .with_message_id("id".into());
    run(
        tracelink_amqp::AmqpDelivery::new(delivery, "queue".into()),
        parent,
    );
}

fn nats(headers: &[(&[u8], &[u8])], parent: bool) {
    use std::str::FromStr;
    use tracelink_nats::async_nats::{HeaderMap, HeaderName, HeaderValue, Message};
    let mut map = HeaderMap::new();
    for (key, value) in headers {
        let (Ok(key), Ok(value)) = (std::str::from_utf8(key), std::str::from_utf8(value)) else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(key), HeaderValue::from_str(value)) {
            map.append(name, value);
        }
    }
    let message = Message {
        subject: "subject".into(),
        reply: None,
        payload: tracelink_nats::Bytes::from_static(b"x"),
        headers: Some(map),
        status: None,
        description: None,
        length: 1,
    };
    run(tracelink_nats::NatsDelivery::new(message, None), parent);
}

fn sqs(headers: &[(&[u8], &[u8])], parent: bool) {
    use aws_sdk_sqs::primitives::Blob;
    use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
    let mut attributes = HashMap::new();
    let mut builder = Message::builder().message_id("id").receipt_handle("rh");
    for (i, (key, value)) in headers.iter().enumerate() {
        let key = String::from_utf8_lossy(key).into_owned();
        let text = String::from_utf8_lossy(value).into_owned();
        if key == "AWSTraceHeader" {
            builder = builder.attributes(MessageSystemAttributeName::AwsTraceHeader, text);
            continue;
        }
        if key == "body" {
            // An SNS envelope (or anything else) as the body.
            builder = builder.body(text);
            continue;
        }
        let attribute = if i % 2 == 1 {
            MessageAttributeValue::builder()
                .data_type("Binary")
                .binary_value(Blob::new(*value))
        } else {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(text)
        };
        if let Ok(attribute) = attribute.build() {
            attributes.insert(key, attribute);
        }
    }
    let message = builder.set_message_attributes(Some(attributes)).build();
    let received = tracelink_sqs::ReceivedMessage::new(
        message,
        "http://127.0.0.1:5000/000000000000/queue",
        instrumentation(parent),
    );
    run(received, parent);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let headers = decode_headers(rest);
    let parent = selector & 0x80 != 0;
    match selector % 4 {
        0 => kafka(&headers, parent),
        1 => amqp(&headers, parent),
        2 => nats(&headers, parent),
        _ => sqs(&headers, parent),
    }
});
