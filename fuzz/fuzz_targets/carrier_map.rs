//! The reference carrier (`MapExtractor` over `HashMap<String, String>`) and the core helpers
//! `unique_value`, `all_values`, `text` and `is_valid_traceparent`.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use tracelink_core::carrier::{all_values, is_valid_traceparent, text, unique_value, MapExtractor};
use tracelink_fuzz::{check_extractor, decode_headers, oracle_unique};

fuzz_target!(|data: &[u8]| {
    let headers = decode_headers(data);
    let raw: Vec<(&[u8], Option<&[u8]>)> = headers.iter().map(|(k, v)| (*k, Some(*v))).collect();
    // unique_value and all_values over raw entries (non-UTF-8 names are left out, as carriers
    // whose names are bytes do).
    let entries: Vec<(&str, Option<&str>)> = raw
        .iter()
        .filter_map(|(k, v)| Some((text(k)?, v.and_then(text))))
        .collect();
    let named: Vec<(&[u8], Option<&[u8]>)> = raw
        .iter()
        .filter(|(k, _)| text(k).is_some())
        .copied()
        .collect();
    for key in ["traceparent", "tracestate", "baggage"] {
        assert_eq!(
            unique_value(entries.iter().copied(), key),
            oracle_unique(&named, key)
        );
        if let Some(all) = all_values(entries.iter().copied(), key) {
            assert!(!all.is_empty());
        }
    }
    if let Some(first) = text(data) {
        let _ = is_valid_traceparent(first);
    }
    let map: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    check_extractor(&MapExtractor(&map));
});
