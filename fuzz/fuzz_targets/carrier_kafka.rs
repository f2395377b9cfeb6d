//! The Kafka carrier: `HeaderExtractor` over rdkafka headers (byte values, null values,
//! repeated keys).
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry::propagation::Extractor;
use rdkafka::message::{Header, OwnedHeaders};
use tracelink_fuzz::{check_extractor, decode_headers, oracle_unique};
use tracelink_kafka::carrier::HeaderExtractor;

fuzz_target!(|data: &[u8]| {
    let decoded = decode_headers(data);
    let keys: Vec<String> = decoded
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    let mut headers = OwnedHeaders::new();
    let mut raw: Vec<(&[u8], Option<&[u8]>)> = Vec::new();
    for (key, (_, value)) in keys.iter().zip(&decoded) {
        if key.contains('\0') {
            // rdkafka's `OwnedHeaders::insert` takes names as C strings; the wire cannot carry
            // such a name to a consumer either.
            continue;
        }
        // An empty value stands for a null header value.
        let value = (!value.is_empty()).then_some(*value);
        headers = headers.insert(Header {
            key: key.as_str(),
            value,
        });
        raw.push((key.as_bytes(), value));
    }
    let extractor = HeaderExtractor(&headers);
    for key in ["traceparent", "tracestate", "baggage"] {
        assert_eq!(extractor.get(key), oracle_unique(&raw, key));
    }
    check_extractor(&extractor);
});
