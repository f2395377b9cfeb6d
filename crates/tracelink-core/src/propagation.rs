//! A W3C Trace Context propagator that does the SDK's job with less work per message.
//!
//! [`W3cTraceContextPropagator`] reads and writes the same `traceparent`/`tracestate` headers as
//! `opentelemetry_sdk::propagation::TraceContextPropagator`, and a differential test holds the
//! two to the same results over valid and hostile input. What differs:
//!
//! * it formats `traceparent` into a stack buffer with a lookup table instead of `format!` over
//!   `u128` hex, and hands it to the carrier borrowed ([`StrInjector::set_str`]): injecting into
//!   a carrier whose client copies header bytes itself (rdkafka's `OwnedHeaders`) allocates
//!   nothing. Through the plain [`Injector`] interface the value is copied into the `String`
//!   that [`Injector::set`] takes;
//! * it parses `traceparent` in place, without collecting its fields into a `Vec`, and builds no
//!   `TraceState` when `tracestate` is absent or empty;
//! * it accepts only well-formed headers ([`carrier::is_valid_traceparent`]): the SDK also
//!   accepts ids of the wrong length, which tracelink's layers refuse before any propagator
//!   sees them anyway;
//! * for a context without trace state it hands the carrier an empty `tracestate`, as the SDK
//!   does, but borrowed (no allocation): tracelink's carriers take an empty value as "remove this
//!   key, write nothing" ([`MapInjector`](crate::carrier::MapInjector) and every adapter), so a
//!   message published again with the headers it was consumed with does not pair the new
//!   `traceparent` with the old trace's `tracestate`, and no empty header is sent (an empty
//!   header means the same as none to every reader, and costs a message attribute on SQS).
//!
//! The layers use whatever propagator is installed; opt in with
//! `InstrumentationBuilder::with_propagator(W3cTraceContextPropagator::new())`. For baggage,
//! compose with [`W3cTraceContextPropagator::followed_by`]
//! (`W3cTraceContextPropagator::new().followed_by(BaggagePropagator::new())`): it writes the same
//! headers as the API's `TextMapCompositePropagator` of the two, and the layers still write
//! `traceparent` without allocating. A `TextMapCompositePropagator` that contains this
//! propagator works too, with the same headers, but the layers cannot see inside it: they take
//! the generic [`Injector`] path, one `String` a header.
//!
//! [`carrier::is_valid_traceparent`]: crate::carrier::is_valid_traceparent

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;

use crate::carrier::{
    parse_traceparent, Bounded, CopyingInjector, StrInjector, MAX_HEADER_VALUE_LEN,
};

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

    /// Injects like [`inject_context`](TextMapPropagator::inject_context), handing `traceparent`
    /// to [`StrInjector::set_str`] borrowed from a stack buffer: nothing is allocated unless the
    /// carrier needs an owned value, or the context has a non-empty `tracestate` (written as
    /// the `String` that `TraceState::header` builds).
    pub fn inject_context_str(&self, cx: &Context, injector: &mut dyn StrInjector) {
        inject(cx, injector);
    }

    /// This propagator followed by `next` (the SDK's `BaggagePropagator`, say): the headers of
    /// both, like the API's `TextMapCompositePropagator` of the two, while the layers keep
    /// writing `traceparent` without allocating.
    pub fn followed_by<P>(self, next: P) -> W3cCompositePropagator
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        W3cCompositePropagator::default().followed_by(next)
    }
}

/// Upper-case-free hex of every byte, two digits each.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 0x0f]];
        i += 1;
    }
    table
};

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
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

/// Writes `traceparent` (borrowed) and a non-empty `tracestate` for a valid span context.
fn inject(cx: &Context, injector: &mut dyn StrInjector) {
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    let bytes = format_traceparent(sc);
    // Only ASCII hex digits and dashes were written: this never fails.
    if let Ok(text) = std::str::from_utf8(&bytes) {
        injector.set_str(TRACEPARENT, text);
    }
    // No state is the common case: skip building its (empty) header. An empty value tells the
    // carrier to drop a stale `tracestate` (a message published again with the headers it was
    // consumed with would otherwise pair this `traceparent` with another trace's state); the
    // carriers write no empty header.
    let state = match *sc.trace_state() != TraceState::NONE {
        true => sc.trace_state().header(),
        false => String::new(),
    };
    match state.is_empty() {
        true => injector.set_str(TRACESTATE, ""),
        false => injector.set(TRACESTATE, state),
    }
}

/// The remote span context of parsed `traceparent` fields (well-formed, so the ids are not
/// zero: the context is valid) and a `tracestate`.
fn span_context(
    (trace_id, span_id, flags): (u128, u64, u8),
    tracestate: Option<&str>,
) -> SpanContext {
    // An empty header parses as the empty state: skip the parser (and its `Vec`) for it.
    let trace_state = match tracestate {
        Some(s) if !s.is_empty() => TraceState::from_str(s).unwrap_or_default(),
        _ => TraceState::default(),
    };
    SpanContext::new(
        TraceId::from(trace_id),
        SpanId::from(span_id),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        trace_state,
    )
}

/// The remote span context `extractor` carries, values longer than `max_len` read as absent.
/// `tracestate` is only looked up once `traceparent` proved well-formed.
fn extract_span_context(extractor: &dyn Extractor, max_len: usize) -> Option<SpanContext> {
    let traceparent = extractor.get(TRACEPARENT).filter(|v| v.len() <= max_len)?;
    let fields = parse_traceparent(traceparent)?;
    let tracestate = extractor.get(TRACESTATE).filter(|v| v.len() <= max_len);
    Some(span_context(fields, tracestate))
}

impl TextMapPropagator for W3cTraceContextPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        inject(cx, &mut CopyingInjector(injector));
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match extract_span_context(extractor, usize::MAX) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(w3c_fields())
    }
}

fn w3c_fields() -> &'static [String; 2] {
    static FIELDS: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()])
}

/// [`W3cTraceContextPropagator`] followed by other propagators, from
/// [`W3cTraceContextPropagator::followed_by`].
///
/// Injects and extracts like the API's `TextMapCompositePropagator` over the same propagators in
/// the same order (W3C first); [`fields`](TextMapPropagator::fields) lists each name once, in
/// order. Installed with `InstrumentationBuilder::with_propagator`, it lets the layers write
/// `traceparent` without allocating; the other propagators write through the carrier's
/// [`Injector`] as usual.
#[derive(Clone)]
pub struct W3cCompositePropagator {
    next: Vec<Arc<dyn TextMapPropagator + Send + Sync>>,
    fields: Vec<String>,
}

impl Default for W3cCompositePropagator {
    fn default() -> Self {
        Self {
            next: Vec::new(),
            fields: w3c_fields().to_vec(),
        }
    }
}

impl fmt::Debug for W3cCompositePropagator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("W3cCompositePropagator")
            .field("fields", &self.fields)
            .finish_non_exhaustive()
    }
}

impl W3cCompositePropagator {
    /// Adds `next` after the propagators already there.
    pub fn followed_by<P>(mut self, next: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        for field in next.fields() {
            if !self.fields.iter().any(|f| f == field) {
                self.fields.push(field.to_owned());
            }
        }
        self.next.push(Arc::new(next));
        self
    }

    /// Injects like [`inject_context`](TextMapPropagator::inject_context), with `traceparent`
    /// borrowed as in [`W3cTraceContextPropagator::inject_context_str`].
    pub fn inject_context_str(&self, cx: &Context, injector: &mut dyn StrInjector) {
        inject(cx, injector);
        for propagator in &self.next {
            propagator.inject_context(cx, injector);
        }
    }

    /// What the layers extract: the W3C context with values longer than
    /// [`MAX_HEADER_VALUE_LEN`](crate::carrier::MAX_HEADER_VALUE_LEN) read as absent (the same
    /// as the generic path through [`Bounded`], without checking `traceparent` twice), then the
    /// other propagators over [`Bounded`].
    pub(crate) fn extract_bounded(&self, extractor: &dyn Extractor) -> Context {
        let bounded = Bounded(extractor);
        let empty = Context::new();
        let cx = match extract_span_context(extractor, MAX_HEADER_VALUE_LEN) {
            Some(sc) => empty.with_remote_span_context(sc),
            None => empty,
        };
        self.next.iter().fold(cx, |cx, propagator| {
            propagator.extract_with_context(&cx, &bounded)
        })
    }

    /// The remote span context [`extract_bounded`](Self::extract_bounded) would put in its
    /// context, read without building that context (an `Arc` allocated and freed a message),
    /// when this is the W3C propagator alone: then nothing else could be in it. `None` when other
    /// propagators follow; their extraction needs the context.
    pub(crate) fn extract_span_context_alone(
        &self,
        extractor: &dyn Extractor,
    ) -> Option<Option<SpanContext>> {
        self.next
            .is_empty()
            .then(|| extract_span_context(extractor, MAX_HEADER_VALUE_LEN))
    }
}

impl TextMapPropagator for W3cCompositePropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        self.inject_context_str(cx, &mut CopyingInjector(injector));
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let first = W3cTraceContextPropagator::new().extract_with_context(cx, extractor);
        self.next.iter().fold(first, |cx, propagator| {
            propagator.extract_with_context(&cx, extractor)
        })
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}
