//! Carriers over [`async_nats::HeaderMap`], following the rules in [`tracelink_core::carrier`].

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};
use tracelink_core::carrier::{all_values, unique_value};

/// Injects into a NATS [`HeaderMap`].
///
/// A key or value NATS cannot carry (a name with `:` or non-ASCII characters, a value with a line
/// break) is skipped; a key already present (in any ASCII case) is replaced, and the user's other
/// headers are kept.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

/// The propagators' usual keys, named without allocating.
fn header_name(key: &str) -> Option<HeaderName> {
    const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
    const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
    match key {
        "traceparent" => Some(TRACEPARENT),
        "tracestate" => Some(TRACESTATE),
        "baggage" => Some(BAGGAGE),
        _ => HeaderName::from_str(key).ok(),
    }
}

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Some(name) = header_name(key) else {
            return;
        };
        // `HeaderValue::from(String)` panics on line breaks: check first, then move the String in.
        if value.contains(['\r', '\n']) {
            return;
        }
        // An empty value (the W3C propagator's `tracestate` when there is none) reads the same
        // as an absent header: send nothing, but drop a stale copy a re-published message carries.
        let empty = value.is_empty();
        let stale = |n: &HeaderName| {
            let n: &str = n.as_ref();
            n.eq_ignore_ascii_case(key) && (empty || n != key)
        };
        if self.0.iter().any(|(n, _)| stale(n)) {
            // HeaderMap has no `remove`: rebuild it without the stale entries (rare: only when a
            // message that already carries a context, such as a Go client's `Traceparent`, is
            // published again).
            let old = std::mem::take(self.0);
            for (n, values) in old.iter().filter(|(n, _)| !stale(n)) {
                for v in values {
                    self.0.append(n.clone(), v.clone());
                }
            }
        }
        if !empty {
            self.0.insert(name, HeaderValue::from(value));
        }
    }
}

/// Extracts from a NATS [`HeaderMap`]: names match case-insensitively (Go clients send
/// `Traceparent`), and a key with conflicting values reads as absent
/// ([`unique_value`]).
#[derive(Debug, Clone, Copy)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

/// Every `(name, value)` pair of `headers`, for the core's carrier helpers.
pub(crate) fn entries(headers: &HeaderMap) -> impl Iterator<Item = (&str, Option<&str>)> {
    headers.iter().flat_map(|(name, values)| {
        let name: &str = name.as_ref();
        values.iter().map(move |v| (name, Some(v.as_str())))
    })
}

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        unique_value(entries(self.0), key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        all_values(entries(self.0), key)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::Context;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    fn span_context() -> SpanContext {
        SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID),
            SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )
    }

    #[test]
    fn round_trip_keeps_user_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("user", "kept");
        let cx = Context::new().with_remote_span_context(span_context());
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut headers));
        assert_eq!(
            headers.get("traceparent").map(HeaderValue::as_str),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(headers.get("user").map(HeaderValue::as_str), Some("kept"));
        let extracted = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        assert_eq!(
            extracted.span().span_context().span_id(),
            span_context().span_id()
        );
    }

    #[test]
    fn go_style_names_are_read_and_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        headers.append("Other", "a");
        headers.append("Other", "b");
        assert_eq!(
            HeaderExtractor(&headers).get("traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        HeaderInjector(&mut headers).set("traceparent", "fresh".into());
        assert_eq!(HeaderExtractor(&headers).keys().len(), 2);
        assert_eq!(
            headers.get("traceparent").map(HeaderValue::as_str),
            Some("fresh")
        );
        assert!(headers.get("Traceparent").is_none());
        assert_eq!(
            headers.get_all("Other").count(),
            2,
            "user headers are kept whole"
        );
    }

    #[test]
    fn repeated_keys_follow_the_core_rule() {
        let mut headers = HeaderMap::new();
        headers.append("traceparent", "a");
        headers.append("traceparent", "b");
        assert_eq!(HeaderExtractor(&headers).get("traceparent"), None);
        assert_eq!(
            HeaderExtractor(&headers).get_all("traceparent"),
            Some(vec!["a", "b"])
        );
        let mut same = HeaderMap::new();
        same.append("traceparent", "a");
        same.append("Traceparent", "a");
        assert_eq!(HeaderExtractor(&same).get("TRACEPARENT"), Some("a"));
    }

    #[test]
    fn empty_values_are_not_sent_and_replace_stale_ones() {
        let mut headers = HeaderMap::new();
        HeaderInjector(&mut headers).set("tracestate", String::new());
        assert!(headers.is_empty());
        headers.insert("Tracestate", "stale=1");
        headers.insert("user", "kept");
        HeaderInjector(&mut headers).set("tracestate", String::new());
        assert_eq!(HeaderExtractor(&headers).keys(), vec!["user"]);
    }

    #[test]
    fn invalid_keys_and_values_are_skipped() {
        let mut headers = HeaderMap::new();
        HeaderInjector(&mut headers).set("bad:key", "v".into());
        HeaderInjector(&mut headers).set("bad key", "v".into());
        HeaderInjector(&mut headers).set("ok", "line\r\nbreak".into());
        HeaderInjector(&mut headers).set("ünïcode", "v".into());
        assert!(headers.is_empty());
        assert_eq!(HeaderExtractor(&headers).get("traceparent"), None);
    }
}
