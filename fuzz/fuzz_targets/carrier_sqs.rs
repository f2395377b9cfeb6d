//! The SQS carrier: `AttributeExtractor` over message attributes of every data type, and the
//! X-Ray `AWSTraceHeader` parser.
#![no_main]

use std::collections::HashMap;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;
use libfuzzer_sys::fuzz_target;
use opentelemetry::propagation::Extractor;
use tracelink_fuzz::{check_extractor, decode_headers, oracle_unique};
use tracelink_sqs::carrier::{attribute_text, span_context_from_xray};
use tracelink_sqs::AttributeExtractor;

/// The first byte of a value picks the attribute's data type.
fn attribute(bytes: &[u8]) -> Option<MessageAttributeValue> {
    let (&tag, rest) = bytes.split_first()?;
    let text = String::from_utf8_lossy(rest).into_owned();
    let builder = MessageAttributeValue::builder();
    let builder = match tag % 7 {
        0 => builder.data_type("Binary").binary_value(Blob::new(rest)),
        1 => builder.data_type("Number").string_value(text),
        2 => builder.data_type("String.custom").string_value(text),
        3 => builder
            .data_type("Binary.bytes")
            .binary_value(Blob::new(rest)),
        4 => builder.data_type("StringX").string_value(text),
        _ => builder.data_type("String").string_value(text),
    };
    builder.build().ok()
}

fuzz_target!(|data: &[u8]| {
    let mut attributes = HashMap::new();
    for (key, value) in decode_headers(data) {
        if let Some(attribute) = attribute(value) {
            let _ = attribute_text(&attribute);
            attributes.insert(String::from_utf8_lossy(key).into_owned(), attribute);
        }
        if let Ok(text) = std::str::from_utf8(value) {
            if let Some(sc) = span_context_from_xray(text) {
                assert!(sc.is_valid());
            }
        }
    }
    let raw: Vec<(&[u8], Option<&[u8]>)> = attributes
        .iter()
        .map(|(k, v)| (k.as_bytes(), attribute_text(v).map(str::as_bytes)))
        .collect();
    let extractor = AttributeExtractor(&attributes);
    for key in ["traceparent", "tracestate", "baggage"] {
        assert_eq!(extractor.get(key), oracle_unique(&raw, key), "{key}");
    }
    check_extractor(&extractor);
});
