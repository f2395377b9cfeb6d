//! Differential test: tracelink's W3C propagator against the SDK's, over valid and hostile input.

use std::collections::HashMap;
use std::str::FromStr;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracelink_core::carrier::{is_valid_traceparent, MapExtractor, MapInjector};
use tracelink_core::propagation::W3cTraceContextPropagator;

/// A small deterministic generator, so failures reproduce.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
}

fn summary(cx: &Context) -> Option<(TraceId, SpanId, TraceFlags, String, bool)> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        (
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags(),
            sc.trace_state().header(),
            sc.is_remote(),
        )
    })
}

type Summary = Option<(TraceId, SpanId, TraceFlags, String, bool)>;

fn extract_both(headers: &HashMap<String, String>) -> (Summary, Summary) {
    let ours = summary(&W3cTraceContextPropagator::new().extract(&MapExtractor(headers)));
    let sdk = summary(&TraceContextPropagator::new().extract(&MapExtractor(headers)));
    (ours, sdk)
}

fn headers(traceparent: &str, tracestate: Option<&str>) -> HashMap<String, String> {
    let mut h = HashMap::new();
    h.insert("traceparent".to_string(), traceparent.to_string());
    if let Some(ts) = tracestate {
        h.insert("tracestate".to_string(), ts.to_string());
    }
    h
}

#[test]
fn extraction_matches_the_sdk_on_well_formed_input() {
    let mut rng = Lcg(42);
    let states = [
        None,
        Some(""),
        Some("congo=t61rcWkgMzE"),
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        Some("invalid state"),
    ];
    for i in 0..5_000 {
        let trace: u128 = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        let span = rng.next();
        let flags = (rng.next() % 256) as u8;
        let version = if i % 7 == 0 { "01" } else { "00" };
        let suffix = if version == "01" && i % 2 == 0 {
            "-future"
        } else {
            ""
        };
        let tp = format!("{version}-{trace:032x}-{span:016x}-{flags:02x}{suffix}");
        let state = states[i % states.len()];
        let (ours, sdk) = extract_both(&headers(&tp, state));
        assert_eq!(ours, sdk, "{tp} {state:?}");
    }
}

#[test]
fn extraction_on_hostile_input_is_the_sdk_after_the_shape_check() {
    let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let many: String = (0..40)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let inputs: Vec<(String, Option<String>)> = vec![
        ("".into(), None),
        ("00-abc-def-01".into(), None),
        (valid.to_uppercase(), None),
        (valid.replacen("00", "ff", 1), None),
        (format!("{valid}-extra"), None),
        (format!("{valid}x"), None),
        (
            "00-00000000000000000000000000000000-b7ad6b7169203331-01".into(),
            None,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01".into(),
            None,
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g".into(),
            None,
        ),
        (
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01".into(),
            None,
        ),
        ("0".repeat(100_000), None),
        (format!(" {valid} "), None),
        (valid.into(), Some(many)),
        (valid.into(), Some("a".repeat(10_000))),
        (valid.replace('-', "_"), None),
        (
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            None,
        ),
    ];
    for (tp, ts) in inputs {
        let h = headers(&tp, ts.as_deref());
        let ours = summary(&W3cTraceContextPropagator::new().extract(&MapExtractor(&h)));
        let sdk = if is_valid_traceparent(&tp) {
            summary(&TraceContextPropagator::new().extract(&MapExtractor(&h)))
        } else {
            None
        };
        assert_eq!(
            ours,
            sdk,
            "{:.80} {:?}",
            tp,
            ts.as_deref().map(|s| &s[..s.len().min(40)])
        );
    }
}

#[test]
fn injection_matches_the_sdk_except_empty_tracestate() {
    let mut rng = Lcg(7);
    for i in 0..2_000 {
        let trace = TraceId::from_bytes(
            ((u128::from(rng.next()) << 64) | u128::from(rng.next())).to_be_bytes(),
        );
        let span = SpanId::from_bytes(rng.next().to_be_bytes());
        let state = if i % 2 == 0 {
            TraceState::default()
        } else {
            TraceState::from_str("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").unwrap()
        };
        let flags = TraceFlags::new((rng.next() % 256) as u8);
        let cx = Context::new()
            .with_remote_span_context(SpanContext::new(trace, span, flags, false, state));
        let mut ours = HashMap::new();
        W3cTraceContextPropagator::new().inject_context(&cx, &mut MapInjector(&mut ours));
        let mut sdk = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut MapInjector(&mut sdk));
        sdk.retain(|_, v| !v.is_empty());
        assert_eq!(ours, sdk);
    }
    // Nothing is injected for an invalid context, as with the SDK.
    let mut ours = HashMap::new();
    W3cTraceContextPropagator::new().inject_context(&Context::new(), &mut MapInjector(&mut ours));
    assert!(ours.is_empty());
}

#[test]
fn fields_are_the_sdks() {
    let (a, b) = (
        W3cTraceContextPropagator::new(),
        TraceContextPropagator::new(),
    );
    let ours: Vec<_> = a.fields().collect();
    let sdk: Vec<_> = b.fields().collect();
    assert_eq!(ours, sdk);
}
