//! Carriers over rdkafka's message headers.
//!
//! Kafka header values are arbitrary bytes (or null) and keys may repeat. Following the rules in
//! [`tracelink_core::carrier`]:
//!
//! * a value that is not valid UTF-8, or null, reads as absent;
//! * names match case-insensitively;
//! * **repeated keys**: when a key appears more than once with the *same* value, that value is
//!   read; when the copies *disagree* (or one of them is not text), the key reads as absent, so the
//!   message starts a fresh trace instead of linking to a context that may be stale or forged
//!   ([`Extractor::get_all`] still returns every text copy);
//! * injecting replaces every copy of the key already present (any case) and keeps every other
//!   header, in order; an empty value only removes the key (an empty header reads the same as
//!   none, and propagators set one to clear a stale `tracestate`).

use std::panic::{catch_unwind, AssertUnwindSafe};

use opentelemetry::propagation::{Extractor, Injector};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tracelink_core::carrier::{all_values, text, unique_value, StrInjector};

/// Injects into rdkafka's [`OwnedHeaders`], replacing any header of the same name (ignoring ASCII
/// case) and keeping the others.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut OwnedHeaders);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.set_str(key, &value);
    }
}

/// rdkafka copies a header's bytes into librdkafka's own list: `traceparent` goes in borrowed.
impl StrInjector for HeaderInjector<'_> {
    fn set_str(&mut self, key: &str, value: &str) {
        // `insert` takes the headers by value: leave an empty list in their place meanwhile.
        let headers = std::mem::take(self.0);
        *self.0 = insert_replacing(headers, key, value.as_bytes());
    }
}

/// The injector of [`KafkaRecord`](crate::KafkaRecord), over its optional headers: the same
/// rules as [`HeaderInjector`], without the placeholder list `HeaderInjector` needs (one
/// librdkafka allocation and free a header), and no list at all until a header is set.
pub(crate) struct RecordInjector<'a>(pub(crate) &'a mut Option<OwnedHeaders>);

impl Injector for RecordInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.set_str(key, &value);
    }
}

impl StrInjector for RecordInjector<'_> {
    fn set_str(&mut self, key: &str, value: &str) {
        if value.is_empty() && self.0.is_none() {
            // Nothing to remove, nothing to write.
            return;
        }
        let headers = self.0.take().unwrap_or_default();
        *self.0 = Some(insert_replacing(headers, key, value.as_bytes()));
    }
}

/// `headers` with `key` set to `value`: every copy of `key` (any ASCII case) removed, the other
/// headers kept in order, the new one appended.
fn insert_replacing(headers: OwnedHeaders, key: &str, value: &[u8]) -> OwnedHeaders {
    // Headers rdkafka cannot read (a non-UTF-8 name copied from a consumed message) are kept as
    // they are: the new value is appended rather than failing or dropping them.
    let present = guarded(&headers, |h| {
        h.iter().any(|header| header.key.eq_ignore_ascii_case(key))
    })
    .unwrap_or(false);
    let headers = if present {
        // `OwnedHeaders` cannot remove an entry: rebuild it without the stale copies.
        let rebuilt = guarded(&headers, |h| {
            let mut rebuilt = OwnedHeaders::new_with_capacity(h.count() + 1);
            for header in h.iter() {
                if !header.key.eq_ignore_ascii_case(key) {
                    rebuilt = rebuilt.insert(header);
                }
            }
            rebuilt
        });
        rebuilt.unwrap_or(headers)
    } else {
        headers
    };
    if value.is_empty() {
        // An empty value only removes the key (see the module docs).
        return headers;
    }
    headers.insert(Header {
        key,
        value: Some(value),
    })
}

/// Extracts from anything implementing rdkafka's [`Headers`]: the [`BorrowedHeaders`] of a
/// consumed message or [`OwnedHeaders`].
///
/// See the [module docs](self) for how repeated keys and non-text values read.
///
/// [`BorrowedHeaders`]: rdkafka::message::BorrowedHeaders
#[derive(Debug)]
pub struct HeaderExtractor<'a, H: ?Sized>(pub &'a H);

impl<H: Headers + ?Sized> Extractor for HeaderExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        guarded(self.0, |h| unique_value(entries(h), key)).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        guarded(self.0, |h| {
            all_headers(h).map(|header| header.key).collect()
        })
        .unwrap_or_default()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        guarded(self.0, |h| all_values(entries(h), key)).flatten()
    }
}

fn all_headers<H: Headers + ?Sized>(headers: &H) -> impl Iterator<Item = Header<'_, &[u8]>> {
    (0..headers.count()).filter_map(|idx| headers.try_get(idx))
}

fn entries<H: Headers + ?Sized>(headers: &H) -> impl Iterator<Item = (&str, Option<&str>)> {
    all_headers(headers).map(|header| (header.key, header.value.and_then(text)))
}

/// rdkafka 0.39 panics (`CStr::to_str().unwrap()`) when a header *name* on the wire is not
/// UTF-8. Such headers must not take a consumer down: reading them is treated as "no headers".
fn guarded<'h, H: ?Sized, T>(headers: &'h H, f: impl FnOnce(&'h H) -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(|| f(headers))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::Context;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    fn headers(pairs: &[(&str, Option<&[u8]>)]) -> OwnedHeaders {
        pairs.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header { key, value: *value })
        })
    }

    fn pairs(h: &OwnedHeaders) -> Vec<(String, Option<Vec<u8>>)> {
        h.iter()
            .map(|x| (x.key.to_owned(), x.value.map(<[u8]>::to_vec)))
            .collect()
    }

    fn context() -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    #[test]
    fn round_trip_keeps_user_headers() {
        let mut h = headers(&[("user", Some(b"1")), ("other", None)]);
        let propagator = TraceContextPropagator::new();
        propagator.inject_context(&context(), &mut HeaderInjector(&mut h));
        let cx = propagator.extract(&HeaderExtractor(&h));
        assert_eq!(
            cx.span().span_context().span_id(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        let got = pairs(&h);
        assert_eq!(got[0], ("user".into(), Some(b"1".to_vec())));
        assert_eq!(got[1], ("other".into(), None));
        let injected: Vec<&str> = got[2..].iter().map(|(k, _)| k.as_str()).collect();
        // The SDK sets an empty `tracestate` for a context without state: not written.
        assert_eq!(injected, vec!["traceparent"]);
    }

    #[test]
    fn an_empty_value_removes_the_key_and_writes_nothing() {
        let mut h = headers(&[("TraceState", Some(b"old=1")), ("user", Some(b"kept"))]);
        HeaderInjector(&mut h).set("tracestate", String::new());
        assert_eq!(pairs(&h), vec![("user".to_owned(), Some(b"kept".to_vec()))]);
        let mut none = None;
        RecordInjector(&mut none).set_str("tracestate", "");
        assert!(none.is_none(), "no header list built for nothing");
    }

    #[test]
    fn injection_replaces_stale_copies_in_any_case() {
        let mut h = headers(&[
            ("Traceparent", Some(b"stale-1")),
            ("user", Some(b"kept")),
            ("traceparent", Some(b"stale-2")),
        ]);
        HeaderInjector(&mut h).set("traceparent", "fresh".into());
        assert_eq!(
            pairs(&h),
            vec![
                ("user".to_owned(), Some(b"kept".to_vec())),
                ("traceparent".to_owned(), Some(b"fresh".to_vec())),
            ]
        );
    }

    #[test]
    fn non_utf8_and_null_values_read_as_absent() {
        let h = headers(&[("traceparent", Some(&[0xff, 0xfe][..])), ("baggage", None)]);
        let ex = HeaderExtractor(&h);
        assert_eq!(ex.get("traceparent"), None);
        assert_eq!(ex.get("baggage"), None);
        assert_eq!(ex.get_all("traceparent"), None);
        assert_eq!(ex.keys(), vec!["traceparent", "baggage"]);
    }

    #[test]
    fn repeated_keys_agree_or_read_as_absent() {
        let same = headers(&[("traceparent", Some(b"a")), ("TRACEPARENT", Some(b"a"))]);
        assert_eq!(HeaderExtractor(&same).get("traceparent"), Some("a"));
        let conflict = headers(&[("traceparent", Some(b"a")), ("traceparent", Some(b"b"))]);
        assert_eq!(HeaderExtractor(&conflict).get("traceparent"), None);
        assert_eq!(
            HeaderExtractor(&conflict).get_all("traceparent"),
            Some(vec!["a", "b"])
        );
        let with_binary = headers(&[("traceparent", Some(b"a")), ("traceparent", Some(&[0xff]))]);
        assert_eq!(HeaderExtractor(&with_binary).get("traceparent"), None);
    }

    /// The record's injector, through the borrowed path tracelink's W3C propagator takes:
    /// the same headers as the SDK's propagator through `HeaderInjector` (less the empty
    /// `tracestate` the SDK writes), stale copies replaced, user headers kept in order.
    #[test]
    fn record_injection_matches_the_header_injector() {
        use tracelink_core::propagation::W3cTraceContextPropagator;
        use tracelink_core::{Instrumentation, MessagingSystem};

        let instrumentation = Instrumentation::builder(MessagingSystem::new("kafka"))
            .with_propagator(W3cTraceContextPropagator::new())
            .build();
        let user = || headers(&[("Traceparent", Some(b"stale")), ("user", Some(b"1"))]);
        let mut record = crate::KafkaRecord::new("t");
        record.headers = Some(user());
        instrumentation.inject_message(&context(), &mut record);
        let mut expected = user();
        TraceContextPropagator::new()
            .inject_context(&context(), &mut HeaderInjector(&mut expected));
        let expected: Vec<_> = pairs(&expected)
            .into_iter()
            .filter(|(_, v)| v.as_deref() != Some(b""))
            .collect();
        assert_eq!(pairs(record.headers.as_ref().unwrap()), expected);
        assert_eq!(expected[0], ("user".to_owned(), Some(b"1".to_vec())));
        assert_eq!(expected[1].0, "traceparent");

        // A record without headers gets a list only when something is injected.
        let mut bare = crate::KafkaRecord::new("t");
        instrumentation.inject_message(&Context::new(), &mut bare);
        assert!(bare.headers.is_none());
        instrumentation.inject_message(&context(), &mut bare);
        assert_eq!(pairs(bare.headers.as_ref().unwrap()), expected[1..]);

        // The plain injector's borrowed path follows the same rules.
        let mut h = user();
        HeaderInjector(&mut h).set_str("traceparent", "fresh");
        assert_eq!(
            pairs(&h),
            vec![
                ("user".to_owned(), Some(b"1".to_vec())),
                ("traceparent".to_owned(), Some(b"fresh".to_vec())),
            ]
        );
    }

    #[test]
    fn conflicting_traceparents_start_a_fresh_trace() {
        let mut first = headers(&[]);
        TraceContextPropagator::new().inject_context(&context(), &mut HeaderInjector(&mut first));
        let value = first.iter().next().and_then(|h| h.value).unwrap().to_vec();
        let h = headers(&[
            ("traceparent", Some(&value)),
            (
                "traceparent",
                Some(b"00-11111111111111111111111111111111-2222222222222222-01"),
            ),
        ]);
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(&h));
        assert!(!cx.span().span_context().is_valid());
    }
}
