//! Carriers over SQS message attributes, and the X-Ray format of the `AWSTraceHeader` system
//! attribute.
//!
//! They follow the rules of [`tracelink_core::carrier`]: they never fail, names match without
//! regard to ASCII case, conflicting duplicates read as absent, and an injected key replaces one
//! that differs only in case.

use std::collections::HashMap;

use aws_sdk_sqs::types::MessageAttributeValue;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::SpanContext;
use tracelink_core::carrier::{all_values, text, unique_value};

/// The `DataType` of injected attributes.
const STRING: &str = "String";

/// Injects into SQS message attributes as `String` attributes.
///
/// It does not enforce SQS's 10-attribute limit: the [`SqsPublisher`](crate::SqsPublisher) decides
/// what fits before it builds the request.
#[derive(Debug)]
pub struct AttributeInjector<'a>(pub &'a mut HashMap<String, MessageAttributeValue>);

impl Injector for AttributeInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Some(value) = string_attribute(value) else {
            // Empty: SQS rejects it, and it says "none": drop a stale copy of the key.
            self.0.retain(|k, _| !k.eq_ignore_ascii_case(key));
            return;
        };
        if !self.0.contains_key(key) {
            self.0.retain(|k, _| !k.eq_ignore_ascii_case(key));
        }
        self.0.insert(key.to_owned(), value);
    }

    fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional);
    }
}

/// Extracts from SQS message attributes: `String` attributes (and custom `String.*` types), and
/// `Binary` attributes holding UTF-8 text (some SDKs send headers as bytes). Numbers and
/// non-UTF-8 binaries read as absent.
#[derive(Debug, Clone, Copy)]
pub struct AttributeExtractor<'a>(pub &'a HashMap<String, MessageAttributeValue>);

impl AttributeExtractor<'_> {
    fn entries(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.0.iter().map(|(k, v)| (k.as_str(), attribute_text(v)))
    }
}

impl Extractor for AttributeExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        unique_value(self.entries(), key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        all_values(self.entries(), key)
    }
}

/// The text of a message attribute: a `String` value, or a `Binary` value that is UTF-8.
pub fn attribute_text(value: &MessageAttributeValue) -> Option<&str> {
    let data_type = value.data_type();
    if has_base_type(data_type, "String") {
        value.string_value()
    } else if has_base_type(data_type, "Binary") {
        value.binary_value().and_then(|b| text(b.as_ref()))
    } else {
        None
    }
}

/// `String` or `String.custom`, but not `StringX`.
fn has_base_type(data_type: &str, base: &str) -> bool {
    data_type
        .strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// A `String` message attribute holding `value`; `None` for an empty value, which SQS rejects.
pub(crate) fn string_attribute(value: String) -> Option<MessageAttributeValue> {
    if value.is_empty() {
        return None;
    }
    MessageAttributeValue::builder()
        .data_type(STRING)
        .string_value(value)
        .build()
        .ok()
}

/// The `AWSTraceHeader` value (X-Ray format, `Root=1-…;Parent=…;Sampled=…`) for `span_context`;
/// `None` when the context is invalid.
///
/// The format comes from `opentelemetry-aws`'s X-Ray propagator, so it matches what the AWS
/// SDKs, Lambda and the X-Ray daemon read. Trace state rides along; baggage cannot.
pub fn xray_header(span_context: &SpanContext) -> Option<String> {
    opentelemetry_aws::trace::xray_propagator::span_context_to_string(span_context)
}

/// Parses an `AWSTraceHeader` value; `None` when it is not a valid X-Ray trace header.
pub fn span_context_from_xray(header: &str) -> Option<SpanContext> {
    if header.len() > tracelink_core::carrier::MAX_HEADER_VALUE_LEN {
        return None;
    }
    opentelemetry_aws::trace::xray_propagator::span_context_from_str(header.trim())
        .filter(SpanContext::is_valid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::primitives::Blob;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    fn string(v: &str) -> MessageAttributeValue {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .unwrap()
    }

    fn binary(data_type: &str, v: &[u8]) -> MessageAttributeValue {
        MessageAttributeValue::builder()
            .data_type(data_type)
            .binary_value(Blob::new(v.to_vec()))
            .build()
            .unwrap()
    }

    #[test]
    fn inject_then_extract_round_trips() {
        let mut attrs = HashMap::new();
        AttributeInjector(&mut attrs).set("traceparent", "00-abc-def-01".into());
        assert_eq!(attrs["traceparent"].data_type(), "String");
        assert_eq!(
            AttributeExtractor(&attrs).get("traceparent"),
            Some("00-abc-def-01")
        );
        assert_eq!(AttributeExtractor(&attrs).keys(), vec!["traceparent"]);
    }

    #[test]
    fn injector_replaces_differently_cased_key_and_skips_empty() {
        let mut attrs = HashMap::from([("Traceparent".to_owned(), string("stale"))]);
        AttributeInjector(&mut attrs).set("traceparent", "fresh".into());
        AttributeInjector(&mut attrs).set("tracestate", String::new());
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs["traceparent"].string_value(), Some("fresh"));
    }

    #[test]
    fn extractor_reads_utf8_binary_and_custom_string_types() {
        let attrs = HashMap::from([
            ("traceparent".to_owned(), binary("Binary", b"tp")),
            ("tracestate".to_owned(), string("ts")),
            ("baggage".to_owned(), binary("Binary", &[0xff, 0xfe])),
            (
                "n".to_owned(),
                MessageAttributeValue::builder()
                    .data_type("Number")
                    .string_value("1")
                    .build()
                    .unwrap(),
            ),
            (
                "custom".to_owned(),
                MessageAttributeValue::builder()
                    .data_type("String.json")
                    .string_value("{}")
                    .build()
                    .unwrap(),
            ),
            (
                "odd".to_owned(),
                MessageAttributeValue::builder()
                    .data_type("Stringy")
                    .string_value("x")
                    .build()
                    .unwrap(),
            ),
        ]);
        let ex = AttributeExtractor(&attrs);
        assert_eq!(ex.get("TRACEPARENT"), Some("tp"));
        assert_eq!(ex.get("tracestate"), Some("ts"));
        assert_eq!(ex.get("baggage"), None, "non-UTF-8 binary reads as absent");
        assert_eq!(ex.get("n"), None, "numbers are not text headers");
        assert_eq!(ex.get("custom"), Some("{}"));
        assert_eq!(ex.get("odd"), None);
    }

    #[test]
    fn conflicting_case_twins_read_as_absent() {
        let attrs = HashMap::from([
            ("traceparent".to_owned(), string("a")),
            ("Traceparent".to_owned(), string("b")),
        ]);
        assert_eq!(AttributeExtractor(&attrs).get("traceparent"), None);
        assert_eq!(
            AttributeExtractor(&attrs)
                .get_all("traceparent")
                .map(|v| v.len()),
            Some(2)
        );
    }

    #[test]
    fn xray_round_trip() {
        let sc = SpanContext::new(
            TraceId::from_hex("5759e988bd862e3fe1be46a994272793").unwrap(),
            SpanId::from_hex("53995c3f42cd8ad8").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let header = xray_header(&sc).unwrap();
        assert_eq!(
            header,
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
        );
        let back = span_context_from_xray(&header).unwrap();
        assert_eq!(back.trace_id(), sc.trace_id());
        assert_eq!(back.span_id(), sc.span_id());
        assert!(back.is_sampled());
        assert!(back.is_remote());
    }

    #[test]
    fn bad_xray_headers_read_as_absent() {
        for bad in [
            "",
            "Root=1-zz;Parent=1;Sampled=1",
            "garbage",
            "Root=1-5759e988-bd862e3fe1be46a994272793",
        ] {
            assert!(span_context_from_xray(bad).is_none(), "{bad}");
        }
        assert!(xray_header(&SpanContext::empty_context()).is_none());
    }
}
