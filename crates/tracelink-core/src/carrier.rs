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
    parse_traceparent(value).is_some()
}

/// Value of each byte as a lower-case hex digit, `INVALID` for everything else.
const INVALID: u8 = 0xff;
const HEX_VALUE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Decodes lower-case hex `text` into `out` (two digits a byte); `false` on any other byte.
fn decode_hex(text: &[u8], out: &mut [u8]) -> bool {
    let mut bad = 0u8;
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        bad |= hi | lo;
        *byte = (hi << 4) | (lo & 0x0f);
    }
    // Valid digits are below 16; INVALID has the high bits set.
    bad & 0xf0 == 0
}

/// The fields of a well-formed `traceparent` (see [`is_valid_traceparent`]): trace id, span id
/// and the flags byte, decoded in one pass.
pub(crate) fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let v = value.trim_matches(|c| c == ' ' || c == '\t').as_bytes();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut version = [0u8; 1];
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut flags = [0u8; 1];
    let ok = decode_hex(&v[0..2], &mut version)
        & decode_hex(&v[3..35], &mut trace_id)
        & decode_hex(&v[36..52], &mut span_id)
        & decode_hex(&v[53..55], &mut flags);
    if !ok || version[0] == 0xff || trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    let well_formed = match (version[0], v.len()) {
        (0, len) => len == 55,
        // Later versions may append fields after a dash.
        (_, 55) => true,
        (_, _) => v[55] == b'-',
    };
    well_formed.then_some((trace_id, span_id, flags[0]))
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
