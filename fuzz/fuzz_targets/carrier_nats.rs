//! The NATS carrier: `HeaderExtractor` over an `async_nats::HeaderMap` (repeated names, any
//! case, every value the map accepts).
#![no_main]

use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use opentelemetry::propagation::Extractor;
use tracelink_fuzz::{check_extractor, decode_headers, oracle_unique};
use tracelink_nats::async_nats::{HeaderMap, HeaderName, HeaderValue};
use tracelink_nats::HeaderExtractor;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for (key, value) in decode_headers(data) {
        let (Ok(key), Ok(value)) = (std::str::from_utf8(key), std::str::from_utf8(value)) else {
            // async-nats headers are text: the client refuses anything else on the wire.
            continue;
        };
        let (Ok(name), Ok(value)) = (HeaderName::from_str(key), HeaderValue::from_str(value))
        else {
            continue;
        };
        headers.append(name, value);
    }
    let raw: Vec<(&[u8], Option<&[u8]>)> = headers
        .iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(move |v| (name.as_bytes(), Some(v.as_str().as_bytes())))
        })
        .collect();
    let extractor = HeaderExtractor(&headers);
    for key in ["traceparent", "tracestate", "baggage"] {
        assert_eq!(extractor.get(key), oracle_unique(&raw, key), "{key}");
    }
    check_extractor(&extractor);
});
