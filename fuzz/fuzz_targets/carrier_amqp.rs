//! The AMQP carrier: `FieldTableExtractor` over a headers table whose values take every AMQP
//! type (long and short strings, byte arrays, integers, booleans, tables, arrays, void, ...).
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry::propagation::Extractor;
use tracelink_amqp::carrier::value_text;
use tracelink_amqp::lapin::types::{
    AMQPValue, ByteArray, FieldArray, FieldTable, LongString, ShortString,
};
use tracelink_amqp::FieldTableExtractor;
use tracelink_fuzz::{check_extractor, decode_headers, oracle_unique};

/// The first byte of a value picks its AMQP type.
fn value(bytes: &[u8]) -> AMQPValue {
    let Some((&tag, rest)) = bytes.split_first() else {
        return AMQPValue::LongString(LongString::from(Vec::new()));
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    match tag % 12 {
        0 => AMQPValue::ByteArray(ByteArray::from(rest)),
        1 => match ShortString::try_new(text.clone()) {
            Ok(s) => AMQPValue::ShortString(s),
            Err(_) => AMQPValue::LongString(LongString::from(text)),
        },
        2 => AMQPValue::LongInt(rest.len() as i32),
        3 => AMQPValue::Boolean(rest.first().is_some_and(|b| b & 1 == 1)),
        4 => {
            let mut nested = FieldTable::default();
            nested.insert(
                "traceparent".into(),
                AMQPValue::LongString(LongString::from(rest)),
            );
            AMQPValue::FieldTable(nested)
        }
        5 => AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
            LongString::from(rest),
        )])),
        6 => AMQPValue::Void,
        7 => AMQPValue::Timestamp(rest.len() as u64),
        8 => AMQPValue::Double(rest.len() as f64),
        _ => AMQPValue::LongString(LongString::from(rest)),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut table = FieldTable::default();
    for (key, bytes) in decode_headers(data) {
        let Ok(name) = ShortString::try_new(String::from_utf8_lossy(key).into_owned()) else {
            continue;
        };
        let v = value(bytes);
        let _ = value_text(&v);
        table.insert(name, v);
    }
    let raw: Vec<(&[u8], Option<&[u8]>)> = table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().as_bytes(), value_text(v).map(str::as_bytes)))
        .collect();
    let extractor = FieldTableExtractor(&table);
    for key in ["traceparent", "tracestate", "baggage"] {
        assert_eq!(extractor.get(key), oracle_unique(&raw, key), "{key}");
    }
    check_extractor(&extractor);
});
