//! Carriers over the AMQP headers table ([`FieldTable`]).
//!
//! Values are injected as long strings (`S`), which every AMQP client reads back as text; an
//! empty value is left out (and removes a stale copy of its key).
//! Extraction reads long strings, short strings and byte arrays that hold UTF-8; any other value
//! type (integers, tables, arrays, timestamps, ...) reads as absent. Names match
//! case-insensitively and conflicting duplicates read as absent, per the rules in
//! [`tracelink_core::carrier`].

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::propagation::{Extractor, Injector};
use tracelink_core::carrier::{all_values, text, unique_value};

/// The text of a header value: long strings, short strings and byte arrays holding UTF-8.
/// Every other AMQP type, and bytes that are not UTF-8, read as `None`.
pub fn value_text(value: &AMQPValue) -> Option<&str> {
    match value {
        AMQPValue::LongString(s) => text(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        AMQPValue::ByteArray(b) => text(b.as_slice()),
        _ => None,
    }
}

/// Injects into an AMQP headers table as long strings, replacing any key that differs only in
/// ASCII case. A key longer than an AMQP short string (255 bytes) is skipped.
#[derive(Debug)]
pub struct FieldTableInjector<'a>(pub &'a mut FieldTable);

impl Injector for FieldTableInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if key.len() > 255 {
            return;
        }
        // An empty value (the W3C propagator's `tracestate` when there is none) says nothing:
        // leave it out, saving the bytes on every message, but still drop any stale copy.
        let empty = value.is_empty();
        let stale = self
            .0
            .inner()
            .keys()
            .any(|k| k.as_str().eq_ignore_ascii_case(key) && (empty || k.as_str() != key));
        if stale {
            // FieldTable offers no removal: rebuild it without the other copies.
            let kept: BTreeMap<ShortString, AMQPValue> = self
                .0
                .inner()
                .iter()
                .filter(|(k, _)| !k.as_str().eq_ignore_ascii_case(key))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            *self.0 = FieldTable::from(kept);
        }
        if !empty {
            // Named only now: a short string is an allocation, and an empty value needs none.
            let Ok(name) = ShortString::try_new(key) else {
                return;
            };
            self.0
                .insert(name, AMQPValue::LongString(LongString::from(value)));
        }
    }
}

/// Extracts from an AMQP headers table, matching names case-insensitively.
#[derive(Debug, Clone, Copy)]
pub struct FieldTableExtractor<'a>(pub &'a FieldTable);

impl FieldTableExtractor<'_> {
    fn entries(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.0
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str(), value_text(v)))
    }
}

impl Extractor for FieldTableExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let table = self.0.inner();
        if table.len() == 1 {
            // One entry: an exact hit is the answer; a miss may still match in another ASCII
            // case (`Traceparent` from a Go client), which the scan below finds.
            if let Some(value) = table.get(key) {
                return value_text(value);
            }
        }
        unique_value(self.entries(), key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(ShortString::as_str).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        all_values(self.entries(), key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{ByteArray, FieldArray};

    fn table(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(k.into(), v);
        }
        t
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.into())
    }

    #[test]
    fn a_lone_header_matches_in_any_case() {
        let t = table(vec![("Traceparent", long("v"))]);
        assert_eq!(FieldTableExtractor(&t).get("traceparent"), Some("v"));
        assert_eq!(FieldTableExtractor(&t).get("tracestate"), None);
    }

    #[test]
    fn injects_long_strings_and_keeps_user_headers() {
        let mut t = table(vec![("user", AMQPValue::LongInt(7))]);
        FieldTableInjector(&mut t).set("traceparent", "00-abc".into());
        assert_eq!(t.inner().get("traceparent"), Some(&long("00-abc")));
        assert_eq!(t.inner().get("user"), Some(&AMQPValue::LongInt(7)));
    }

    #[test]
    fn injection_replaces_differently_cased_keys() {
        let mut t = table(vec![
            ("Traceparent", long("stale")),
            ("TRACEPARENT", AMQPValue::Boolean(true)),
            ("other", long("kept")),
        ]);
        FieldTableInjector(&mut t).set("traceparent", "fresh".into());
        assert_eq!(
            t,
            table(vec![
                ("traceparent", long("fresh")),
                ("other", long("kept"))
            ])
        );
        FieldTableInjector(&mut t).set("traceparent", "again".into());
        assert_eq!(
            t,
            table(vec![
                ("traceparent", long("again")),
                ("other", long("kept"))
            ])
        );
    }

    #[test]
    fn empty_values_are_left_out_and_remove_stale_copies() {
        let mut t = table(vec![("TraceState", long("stale")), ("user", long("kept"))]);
        FieldTableInjector(&mut t).set("tracestate", String::new());
        assert_eq!(t, table(vec![("user", long("kept"))]));
        FieldTableInjector(&mut t).set("tracestate", String::new());
        assert_eq!(t, table(vec![("user", long("kept"))]));
    }

    #[test]
    fn over_long_keys_are_skipped() {
        let mut t = FieldTable::default();
        FieldTableInjector(&mut t).set(&"k".repeat(256), "v".into());
        assert!(t.inner().is_empty());
    }

    #[test]
    fn round_trip() {
        let mut t = FieldTable::default();
        FieldTableInjector(&mut t).set("traceparent", "tp".into());
        FieldTableInjector(&mut t).set("tracestate", "ts".into());
        let ex = FieldTableExtractor(&t);
        assert_eq!(ex.get("traceparent"), Some("tp"));
        assert_eq!(ex.get("TraceState"), Some("ts"));
        assert_eq!(ex.get("baggage"), None);
        let mut keys = ex.keys();
        keys.sort_unstable();
        assert_eq!(keys, vec!["traceparent", "tracestate"]);
    }

    #[test]
    fn text_types_are_read() {
        let t = table(vec![
            ("a", long("long")),
            ("b", AMQPValue::ShortString("short".into())),
            (
                "c",
                AMQPValue::ByteArray(ByteArray::from(b"bytes".to_vec())),
            ),
        ]);
        let ex = FieldTableExtractor(&t);
        assert_eq!(ex.get("a"), Some("long"));
        assert_eq!(ex.get("b"), Some("short"));
        assert_eq!(ex.get("c"), Some("bytes"));
    }

    #[test]
    fn other_types_read_as_absent() {
        let values = vec![
            AMQPValue::Boolean(true),
            AMQPValue::ShortShortInt(1),
            AMQPValue::LongInt(1),
            AMQPValue::LongLongInt(1),
            AMQPValue::Double(1.5),
            AMQPValue::Timestamp(1),
            AMQPValue::Void,
            AMQPValue::FieldArray(FieldArray::from(vec![long("x")])),
            AMQPValue::FieldTable(table(vec![("traceparent", long("x"))])),
            AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
            AMQPValue::ByteArray(ByteArray::from(vec![0xc3, 0x28])),
        ];
        for value in values {
            let t = table(vec![("traceparent", value.clone()), ("x", long("y"))]);
            assert_eq!(
                FieldTableExtractor(&t).get("traceparent"),
                None,
                "{value:?}"
            );
            let single = table(vec![("traceparent", value.clone())]);
            assert_eq!(
                FieldTableExtractor(&single).get("traceparent"),
                None,
                "{value:?}"
            );
        }
    }

    #[test]
    fn conflicting_duplicates_read_as_absent() {
        let t = table(vec![("traceparent", long("a")), ("Traceparent", long("b"))]);
        let ex = FieldTableExtractor(&t);
        assert_eq!(ex.get("traceparent"), None);
        assert_eq!(ex.get_all("traceparent").map(|v| v.len()), Some(2));
        let same = table(vec![("traceparent", long("a")), ("Traceparent", long("a"))]);
        assert_eq!(FieldTableExtractor(&same).get("traceparent"), Some("a"));
        let non_text = table(vec![
            ("traceparent", long("a")),
            ("Traceparent", AMQPValue::LongInt(1)),
        ]);
        assert_eq!(FieldTableExtractor(&non_text).get("traceparent"), None);
    }
}
