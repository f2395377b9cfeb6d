//! Header carrier helpers shared by every adapter, and the reference carrier over
//! `HashMap<String, String>`.
//!
//! # Rules every tracelink carrier follows
//!
//! * **Never fail, never panic.** An injector skips a key or value its header type cannot hold;
//!   an extractor reads a value that is not text (non-UTF-8 bytes, an AMQP integer, ...) as absent.
//! * **Case-insensitive names.** Go clients canonicalise `traceparent` to `Traceparent`; lookups
//!   ignore ASCII case so such headers are read.
//! * **Repeated keys.** When a key appears more than once (Kafka and NATS headers allow it),
//!   identical values read as that value, and *conflicting* values read as absent: tracelink cannot
//!   tell which copy is authentic, so the message starts a fresh trace instead of linking to a
//!   context that may have been forged or left stale. [`unique_value`] implements the rule.
//! * **Replace, don't duplicate.** Injecting a key that is already present replaces it.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};

/// Longest header value an extraction will read, in bytes; longer values read as absent.
///
/// W3C Baggage caps a whole header at 8192 bytes and `traceparent`/`tracestate` are far shorter,
/// so nothing valid is longer; refusing longer values bounds the work a hostile producer can cause.
pub const MAX_HEADER_VALUE_LEN: usize = 8192;

/// Reads `bytes` as text: `None` when they are not valid UTF-8.
pub fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

/// The one value of `key` among `entries`, matching names case-insensitively.
///
/// `entries` yields `(name, value)` pairs, with `None` for a value that is not text. Returns the
/// value when every entry named `key` carries the same text; `None` when there is none, when one
/// of them is not text, or when they disagree (see the module docs for why).
pub fn unique_value<'a, I>(entries: I, key: &str) -> Option<&'a str>
where
    I: IntoIterator<Item = (&'a str, Option<&'a str>)>,
{
    let mut found: Option<&'a str> = None;
    for (name, value) in entries {
        if !name.eq_ignore_ascii_case(key) {
            continue;
        }
        match (found, value) {
            (_, None) => return None,
            (None, Some(v)) => found = Some(v),
            (Some(prev), Some(v)) if prev == v => {}
            (Some(_), Some(_)) => return None,
        }
    }
    found
}

/// Every value of `key` among `entries` (case-insensitive names, text values only), for
/// [`Extractor::get_all`].
pub fn all_values<'a, I>(entries: I, key: &str) -> Option<Vec<&'a str>>
where
    I: IntoIterator<Item = (&'a str, Option<&'a str>)>,
{
    let values: Vec<&'a str> = entries
        .into_iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(key))
        .filter_map(|(_, value)| value)
        .collect();
    (!values.is_empty()).then_some(values)
}

/// Injects into a `HashMap<String, String>`, replacing any key that differs only in ASCII case.
#[derive(Debug)]
pub struct MapInjector<'a>(pub &'a mut HashMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if self.0.contains_key(key) {
            self.0.insert(key.to_owned(), value);
            return;
        }
        self.0.retain(|k, _| !k.eq_ignore_ascii_case(key));
        self.0.insert(key.to_owned(), value);
    }

    fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional);
    }
}

/// Extracts from a `HashMap<String, String>`, matching keys case-insensitively.
#[derive(Debug, Clone, Copy)]
pub struct MapExtractor<'a>(pub &'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // The exact key is the common case; only fall back to a scan when it is absent or when a
        // differently-cased twin could make it ambiguous.
        if let Some(v) = self.0.get(key) {
            if self.0.len() == 1 {
                return Some(v.as_str());
            }
        }
        unique_value(
            self.0.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))),
            key,
        )
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        all_values(
            self.0.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))),
            key,
        )
    }
}

/// Whether `value` is a well-formed W3C `traceparent` (Trace Context level 1, section 3.2).
///
/// The SDK's `TraceContextPropagator` accepts ids of the wrong length (`00-abc-def-01` parses as
/// trace id `0xabc`); a context read from such a header would link to a span nobody produced.
/// So tracelink checks the shape before the propagator sees it: lower-case hex, exact field
/// lengths, version `ff` refused, nothing after a version-00 header, non-zero ids.
pub fn is_valid_traceparent(value: &str) -> bool {
    fn hex(s: &[u8]) -> bool {
        s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
    fn zero(s: &[u8]) -> bool {
        s.iter().all(|&b| b == b'0')
    }
    let v = value.trim_matches(|c| c == ' ' || c == '\t').as_bytes();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return false;
    }
    let (version, trace_id, span_id, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    if !(hex(version) && hex(trace_id) && hex(span_id) && hex(flags)) || version == b"ff" {
        return false;
    }
    if zero(trace_id) || zero(span_id) {
        return false;
    }
    match (version, v.len()) {
        (b"00", 55) => true,
        (b"00", _) => false,
        // Later versions may append fields after a dash.
        (_, 55) => true,
        (_, _) => v[55] == b'-',
    }
}

const TRACEPARENT: &str = "traceparent";

/// Wraps an extractor so that values longer than [`MAX_HEADER_VALUE_LEN`], and malformed
/// `traceparent` values, read as absent.
pub(crate) struct Bounded<'a>(pub(crate) &'a dyn Extractor);

impl Extractor for Bounded<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self
            .0
            .get(key)
            .filter(|v| v.len() <= MAX_HEADER_VALUE_LEN)?;
        if key.eq_ignore_ascii_case(TRACEPARENT) && !is_valid_traceparent(value) {
            return None;
        }
        Some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let values: Vec<&str> = self
            .0
            .get_all(key)?
            .into_iter()
            .filter(|v| v.len() <= MAX_HEADER_VALUE_LEN)
            .collect();
        (!values.is_empty()).then_some(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn injector_replaces_differently_cased_key() {
        let mut m = map(&[("Traceparent", "stale"), ("user", "kept")]);
        MapInjector(&mut m).set("traceparent", "fresh".into());
        assert_eq!(m, map(&[("traceparent", "fresh"), ("user", "kept")]));
    }

    #[test]
    fn extractor_is_case_insensitive() {
        let m = map(&[("Traceparent", "v"), ("other", "x")]);
        assert_eq!(MapExtractor(&m).get("traceparent"), Some("v"));
        assert_eq!(MapExtractor(&m).get("missing"), None);
    }

    #[test]
    fn conflicting_duplicates_read_as_absent() {
        let m = map(&[("traceparent", "a"), ("TRACEPARENT", "b")]);
        assert_eq!(MapExtractor(&m).get("traceparent"), None);
        assert_eq!(
            MapExtractor(&m).get_all("traceparent").map(|mut v| {
                v.sort();
                v
            }),
            Some(vec!["a", "b"])
        );
        let same = map(&[("traceparent", "a"), ("TRACEPARENT", "a")]);
        assert_eq!(MapExtractor(&same).get("traceparent"), Some("a"));
    }

    #[test]
    fn unique_value_rules() {
        let entries = [("k", Some("1")), ("K", None)];
        assert_eq!(
            unique_value(entries, "k"),
            None,
            "a non-text twin is a conflict"
        );
        assert_eq!(unique_value([("k", Some("1"))], "k"), Some("1"));
        assert_eq!(unique_value([("x", Some("1"))], "k"), None);
    }

    #[test]
    fn text_rejects_invalid_utf8() {
        assert_eq!(text(b"ok"), Some("ok"));
        assert_eq!(text(&[0xff, 0xfe]), None);
    }

    #[test]
    fn traceparent_shape() {
        let ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert!(is_valid_traceparent(ok));
        assert!(is_valid_traceparent(&format!(" {ok}")));
        assert!(is_valid_traceparent(&ok.replacen("00", "01", 1)));
        assert!(is_valid_traceparent(&format!(
            "{}-extra",
            ok.replacen("00", "01", 1)
        )));
        for bad in [
            "",
            "00-abc-def-01",
            &ok.to_uppercase(),
            &ok.replacen("00", "ff", 1),
            &format!("{ok}-extra"),
            &format!("{}x", ok.replacen("00", "01", 1)),
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad}");
        }
    }

    #[test]
    fn bounded_drops_oversized_values() {
        let big = "x".repeat(MAX_HEADER_VALUE_LEN + 1);
        let m = map(&[
            ("baggage", big.as_str()),
            ("tracestate", "ok"),
            ("traceparent", "bad"),
        ]);
        let inner = MapExtractor(&m);
        let b = Bounded(&inner);
        assert_eq!(b.get("baggage"), None);
        assert_eq!(b.get_all("baggage"), None);
        assert_eq!(b.get("tracestate"), Some("ok"));
        assert_eq!(b.get("traceparent"), None);
    }
}
