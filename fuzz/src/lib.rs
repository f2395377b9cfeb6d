//! Shared by the fuzz targets: the instrumentation every target extracts through, and the
//! properties every carrier's extraction must hold on any input.

use std::sync::OnceLock;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracelink_core::carrier::{is_valid_traceparent, text, MAX_HEADER_VALUE_LEN};
use tracelink_core::{Instrumentation, LinkMode, MessagingSystem};

pub use tracelink_testkit::decode_headers;

struct Shared {
    _provider: SdkTracerProvider,
    link: Instrumentation,
    parent: Instrumentation,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        // Spans are recorded (always-on sampler) and dropped: no exporter, bounded memory.
        let provider = SdkTracerProvider::builder().build();
        let link = Instrumentation::builder(MessagingSystem::new("fuzz"))
            .with_tracer_provider(&provider)
            .with_propagator(tracelink_testkit::w3c_propagator())
            .with_captured_headers(["traceparent", "x-user"])
            .build();
        let parent = link.with_link_mode(LinkMode::Parent);
        Shared {
            _provider: provider,
            link,
            parent,
        }
    })
}

/// The instrumentation (W3C trace context and baggage, header capture on), in link mode, or in
/// parent mode when `parent`.
pub fn instrumentation(parent: bool) -> &'static Instrumentation {
    let s = shared();
    if parent {
        &s.parent
    } else {
        &s.link
    }
}

/// The reference semantics of `carrier::unique_value` over raw `(name, bytes)` entries.
pub fn oracle_unique<'a>(entries: &[(&'a [u8], Option<&'a [u8]>)], key: &str) -> Option<&'a str> {
    let mut found: Vec<Option<&str>> = Vec::new();
    for (name, value) in entries {
        if text(name).is_some_and(|n| n.eq_ignore_ascii_case(key)) {
            found.push(value.and_then(|v| text(v)));
        }
    }
    let first = (*found.first()?)?;
    found.iter().all(|v| *v == Some(first)).then_some(first)
}

/// What extraction through `extractor` must guarantee on any input: no panic, `get` agrees
/// with `get_all`, a context comes only from a well-formed `traceparent` within the size
/// bound, and baggage stays within W3C's limits.
pub fn check_extractor(extractor: &dyn Extractor) {
    for key in extractor.keys() {
        if let Some(value) = extractor.get(key) {
            let all = extractor.get_all(key).unwrap_or_default();
            assert!(all.contains(&value), "get({key:?}) is not among get_all");
        }
    }
    let cx = instrumentation(false).extract(extractor);
    let span = cx.span();
    if span.span_context().is_valid() {
        let tp = extractor
            .get("traceparent")
            .expect("a context without a traceparent");
        assert!(
            tp.len() <= MAX_HEADER_VALUE_LEN,
            "an oversized traceparent was read"
        );
        assert!(
            is_valid_traceparent(tp),
            "a malformed traceparent was read: {tp:?}"
        );
        assert!(span.span_context().is_remote());
    }
    assert!(cx.baggage().len() <= tracelink_testkit::MAX_BAGGAGE_ENTRIES);
    assert!(
        span.span_context()
            .trace_state()
            .header()
            .split(',')
            .count()
            <= 32
    );
}
