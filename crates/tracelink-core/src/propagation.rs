//! A W3C Trace Context propagator that does the SDK's job with less work per message.
//!
//! [`W3cTraceContextPropagator`] reads and writes the same `traceparent`/`tracestate` headers as
//! `opentelemetry_sdk::propagation::TraceContextPropagator`, and a differential test holds the
//! two to the same results over valid and hostile input. What differs:
//!
//! * it formats `traceparent` into a stack buffer with a lookup table (one allocation, the
//!   `String` that [`Injector::set`] takes) instead of `format!` over `u128` hex;
//! * it parses `traceparent` in place, without collecting its fields into a `Vec`;
//! * it accepts only well-formed headers ([`carrier::is_valid_traceparent`]): the SDK also
//!   accepts ids of the wrong length, which tracelink's layers refuse before any propagator
//!   sees them anyway;
//! * it does not write an empty `tracestate` header (the SDK does): an empty header means the
//!   same as none to every reader, and costs a message attribute on SQS.
//!
//! The layers use whatever propagator is installed; opt in with
//! `InstrumentationBuilder::with_propagator(W3cTraceContextPropagator::new())`, composed with
//! the SDK's `BaggagePropagator` when baggage matters.
//!
//! [`carrier::is_valid_traceparent`]: crate::carrier::is_valid_traceparent

use std::str::FromStr;

use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;

use crate::carrier::parse_traceparent;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// W3C Trace Context (`traceparent`, `tracestate`), byte-compatible with the SDK's
/// `TraceContextPropagator`; see the [module docs](self) for what it does differently.
#[derive(Debug, Clone, Copy, Default)]
pub struct W3cTraceContextPropagator {
    _private: (),
}

impl W3cTraceContextPropagator {
    /// The propagator.
    pub fn new() -> Self {
        Self::default()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
}

/// The `traceparent` value of `sc`: `00-{trace id}-{span id}-{flags}`.
pub(crate) fn format_traceparent(sc: &SpanContext) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    write_hex(&mut out[3..35], &sc.trace_id().to_bytes());
    write_hex(&mut out[36..52], &sc.span_id().to_bytes());
    let flags = (sc.trace_flags() & TraceFlags::SAMPLED).to_u8();
    write_hex(&mut out[53..55], &[flags]);
    out
}

/// The span context in a `traceparent` value (and `tracestate`), if well-formed and valid.
pub(crate) fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let (trace_id, span_id, flags) = parse_traceparent(traceparent)?;
    let trace_state = tracestate
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let sc = SpanContext::new(
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        trace_state,
    );
    sc.is_valid().then_some(sc)
}

impl TextMapPropagator for W3cTraceContextPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let bytes = format_traceparent(sc);
        // Only ASCII hex digits and dashes were written: this never fails.
        let text = std::str::from_utf8(&bytes)
            .map(str::to_owned)
            .unwrap_or_default();
        injector.set(TRACEPARENT, text);
        let state = sc.trace_state().header();
        if !state.is_empty() {
            injector.set(TRACESTATE, state);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match extractor
            .get(TRACEPARENT)
            .and_then(|tp| parse(tp, extractor.get(TRACESTATE)))
        {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(fields())
    }
}

fn fields() -> &'static [String; 2] {
    static FIELDS: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()])
}
