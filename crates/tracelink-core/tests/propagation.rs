//! Differential test: tracelink's W3C propagator against the SDK's, over valid and hostile input.

use std::collections::HashMap;
use std::str::FromStr;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracelink_core::carrier::{
    is_valid_traceparent, MapExtractor, MapInjector, StrInjector, MAX_HEADER_VALUE_LEN,
};
use tracelink_core::propagation::W3cTraceContextPropagator;
use tracelink_core::{
    Destination, IncomingMessage, Instrumentation, MessagingSystem, OutgoingMessage,
};

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

fn summary(cx: &Context) -> Summary {
    summarize(cx.span().span_context())
}

fn summarize(sc: &SpanContext) -> Summary {
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

/// A context with a remote span context of random ids and flags, carrying `state` as its trace
/// state when `with_state`.
fn random_context(rng: &mut Lcg, with_state: bool, state: &str) -> Context {
    let trace = TraceId::from_bytes(
        ((u128::from(rng.next()) << 64) | u128::from(rng.next())).to_be_bytes(),
    );
    let span = SpanId::from_bytes(rng.next().to_be_bytes());
    let state = match with_state {
        true => TraceState::from_str(state).unwrap(),
        false => TraceState::default(),
    };
    let flags = TraceFlags::new((rng.next() % 256) as u8);
    Context::new().with_remote_span_context(SpanContext::new(trace, span, flags, false, state))
}

#[test]
fn injection_matches_the_sdk_except_empty_tracestate() {
    let mut rng = Lcg(7);
    for i in 0..2_000 {
        let cx = random_context(
            &mut rng,
            i % 2 == 1,
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        );
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
fn republishing_drops_a_stale_tracestate() {
    // A message consumed from another trace, published again with its headers: the new
    // context has no trace state, so the old `tracestate` (any case) must not ride along with
    // the new `traceparent`. The SDK's propagator gets the same result through the carrier's
    // empty-value rule.
    let sc = SpanContext::new(
        TraceId::from_bytes([7; 16]),
        SpanId::from_bytes([9; 8]),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    let cx = Context::new().with_remote_span_context(sc);
    let stale = || {
        HashMap::from([
            ("traceparent".to_owned(), "00-old".to_owned()),
            ("TraceState".to_owned(), "other=1".to_owned()),
            ("user".to_owned(), "kept".to_owned()),
        ])
    };
    let propagators: [&dyn TextMapPropagator; 2] = [
        &W3cTraceContextPropagator::new(),
        &TraceContextPropagator::new(),
    ];
    for propagator in propagators {
        let mut headers = stale();
        propagator.inject_context(&cx, &mut MapInjector(&mut headers));
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert_eq!(headers["user"], "kept");
        assert!(headers["traceparent"].starts_with("00-07070707"));
    }
    // Through the layers' borrowed path too.
    let instrumentation = Instrumentation::builder(MessagingSystem::new("test"))
        .with_propagator(W3cTraceContextPropagator::new())
        .build();
    struct Msg(HashMap<String, String>);
    impl OutgoingMessage for Msg {
        fn destination(&self) -> Destination<'_> {
            Destination::new("q")
        }
        fn with_headers_mut(&mut self, f: &mut dyn FnMut(&mut dyn Injector)) {
            f(&mut MapInjector(&mut self.0))
        }
    }
    let mut message = Msg(stale());
    instrumentation.inject_message(&cx, &mut message);
    assert_eq!(message.0.len(), 2, "{:?}", message.0);
    assert!(!message
        .0
        .keys()
        .any(|k| k.eq_ignore_ascii_case("tracestate")));
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

/// The hostile inputs of the tests above, plus values around the layers' length bound.
fn hostile_headers() -> Vec<HashMap<String, String>> {
    let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let future = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let long_state: String = (0..1000)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let mut cases = vec![
        headers("", None),
        headers("00-abc-def-01", None),
        headers(&valid.to_uppercase(), None),
        headers(&format!("{valid}-extra"), None),
        headers(valid, None),
        headers(valid, Some("")),
        headers(valid, Some("congo=t61rcWkgMzE")),
        headers(valid, Some("invalid state")),
        headers(valid, Some(&long_state)),
        headers(valid, Some(&"a".repeat(MAX_HEADER_VALUE_LEN))),
        headers(
            valid,
            Some(&format!("k={}", "v".repeat(MAX_HEADER_VALUE_LEN - 2))),
        ),
        headers(
            valid,
            Some(&format!("k={}", "v".repeat(MAX_HEADER_VALUE_LEN - 1))),
        ),
        headers(
            &format!("{future}-{}", "x".repeat(MAX_HEADER_VALUE_LEN)),
            None,
        ),
        headers(
            &format!("{future}-{}", "x".repeat(MAX_HEADER_VALUE_LEN - 56)),
            None,
        ),
        headers(&" ".repeat(MAX_HEADER_VALUE_LEN + 1), None),
    ];
    let mut twins = headers(valid, None);
    twins.insert(
        "Traceparent".into(),
        "00-11111111111111111111111111111111-2222222222222222-01".into(),
    );
    cases.push(twins);
    let mut cased = HashMap::new();
    cased.insert("TraceParent".to_string(), valid.to_string());
    cased.insert("TRACESTATE".to_string(), "rojo=1".to_string());
    cases.push(cased);
    let mut with_baggage = headers(valid, None);
    with_baggage.insert("baggage".into(), "user=alice,tenant=7".into());
    cases.push(with_baggage);
    cases
}

fn instrumentation<P>(propagator: P) -> Instrumentation
where
    P: TextMapPropagator + Send + Sync + 'static,
{
    Instrumentation::builder(MessagingSystem::new("test"))
        .with_propagator(propagator)
        .build()
}

fn baggage_of(cx: &Context) -> Vec<(String, String)> {
    let mut items: Vec<_> = cx
        .baggage()
        .iter()
        .map(|(k, (v, _))| (k.to_string(), v.to_string()))
        .collect();
    items.sort();
    items
}

/// Our propagator alone (the layers' own path), inside a composite the layers cannot look into
/// (the generic path), and followed by baggage.
fn layer_setups() -> [Instrumentation; 3] {
    [
        instrumentation(W3cTraceContextPropagator::new()),
        instrumentation(TextMapCompositePropagator::new(vec![Box::new(
            W3cTraceContextPropagator::new(),
        )])),
        instrumentation(W3cTraceContextPropagator::new().followed_by(BaggagePropagator::new())),
    ]
}

/// The layers read our propagator through a path of their own (no second shape check, the
/// length bound applied inline): it must give what the generic path gives, which a composite
/// the layers cannot look into takes.
#[test]
fn layers_extract_the_same_through_either_path() {
    let [fast, generic, fast_baggage] = layer_setups();
    let generic_baggage = instrumentation(TextMapCompositePropagator::new(vec![
        Box::new(W3cTraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    for h in hostile_headers() {
        let label = format!("{:.80?}", h);
        let ours = fast.extract(&MapExtractor(&h));
        assert_eq!(
            summary(&ours),
            summary(&generic.extract(&MapExtractor(&h))),
            "{label}"
        );
        let (a, b) = (
            fast_baggage.extract(&MapExtractor(&h)),
            generic_baggage.extract(&MapExtractor(&h)),
        );
        assert_eq!(summary(&a), summary(&b), "{label}");
        assert_eq!(baggage_of(&a), baggage_of(&b), "{label}");
    }
}

/// An incoming message over a header map.
struct Received<'a>(&'a HashMap<String, String>);

impl IncomingMessage for Received<'_> {
    fn destination(&self) -> Destination<'_> {
        Destination::new("orders")
    }

    fn with_headers(&self, f: &mut dyn FnMut(&dyn Extractor)) {
        f(&MapExtractor(self.0))
    }
}

/// With tracelink's propagator alone, the layers read the producer's span context without
/// building a `Context`: what they read must be what `extract` returns, through our propagator
/// and through a composite the layers cannot look into, over the hostile corpus.
#[test]
fn layers_read_the_producer_context_extract_reads() {
    let [fast, generic, with_baggage] = layer_setups();
    let mut read = 0;
    for h in hostile_headers() {
        let label = format!("{:.80?}", h);
        let extracted = summary(&fast.extract(&MapExtractor(&h)));
        let message = Received(&h);
        for instrumentation in [&fast, &generic, &with_baggage] {
            let producer = instrumentation.producer_context(&message);
            assert_eq!(producer.as_ref().and_then(summarize), extracted, "{label}");
        }
        read += usize::from(extracted.is_some());
    }
    assert!(read > 3, "the corpus has readable headers too ({read})");
}

/// A traceparent just past the bound reads as absent through both paths, and one within it is
/// read: the bound is applied, not merely the same on both sides.
#[test]
fn layers_bound_header_lengths() {
    let fast = instrumentation(W3cTraceContextPropagator::new());
    let future = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let within = headers(
        &format!("{future}-{}", "x".repeat(MAX_HEADER_VALUE_LEN - 56)),
        None,
    );
    let past = headers(
        &format!("{future}-{}", "x".repeat(MAX_HEADER_VALUE_LEN - 55)),
        None,
    );
    assert!(summary(&fast.extract(&MapExtractor(&within))).is_some());
    assert!(summary(&fast.extract(&MapExtractor(&past))).is_none());
    let long_state = headers(
        future,
        Some(&format!("k={}", "v".repeat(MAX_HEADER_VALUE_LEN - 1))),
    );
    let sc = summary(&fast.extract(&MapExtractor(&long_state))).unwrap();
    assert_eq!(sc.3, "", "an over-long tracestate reads as absent");
}

/// A carrier that records what it was given, and how.
#[derive(Default)]
struct Recording {
    borrowed: Vec<(String, String)>,
    owned: Vec<(String, String)>,
}

/// Follows the carriers' rule: an empty value removes the key and writes nothing.
impl Injector for Recording {
    fn set(&mut self, key: &str, value: String) {
        self.borrowed.retain(|(k, _)| k != key);
        self.owned.retain(|(k, _)| k != key);
        if !value.is_empty() {
            self.owned.push((key.to_owned(), value));
        }
    }
}

impl StrInjector for Recording {
    fn set_str(&mut self, key: &str, value: &str) {
        self.borrowed.retain(|(k, _)| k != key);
        self.owned.retain(|(k, _)| k != key);
        if !value.is_empty() {
            self.borrowed.push((key.to_owned(), value.to_owned()));
        }
    }
}

#[test]
fn str_injection_writes_the_same_headers_and_traceparent_borrowed() {
    let mut rng = Lcg(11);
    let mut cx_baggage = None;
    for i in 0..500 {
        let cx = random_context(&mut rng, i % 2 == 1, "rojo=00f067aa0ba902b7")
            .with_baggage([KeyValue::new("user", "alice")]);
        let mut plain = HashMap::new();
        W3cTraceContextPropagator::new().inject_context(&cx, &mut MapInjector(&mut plain));
        let mut rec = Recording::default();
        W3cTraceContextPropagator::new().inject_context_str(&cx, &mut rec);
        assert_eq!(rec.borrowed.len(), 1);
        assert_eq!(rec.borrowed[0].0, "traceparent");
        let mut all: HashMap<String, String> = rec.borrowed.into_iter().chain(rec.owned).collect();
        assert_eq!(all, plain);

        // Composed with baggage: the same headers as the API's composite of the two.
        let composite = W3cTraceContextPropagator::new().followed_by(BaggagePropagator::new());
        let reference = TextMapCompositePropagator::new(vec![
            Box::new(W3cTraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]);
        let mut expected = HashMap::new();
        reference.inject_context(&cx, &mut MapInjector(&mut expected));
        let mut via_str = Recording::default();
        composite.inject_context_str(&cx, &mut via_str);
        all = via_str.borrowed.into_iter().chain(via_str.owned).collect();
        assert_eq!(all, expected);
        let mut via_injector = HashMap::new();
        composite.inject_context(&cx, &mut MapInjector(&mut via_injector));
        assert_eq!(via_injector, expected);
        assert!(expected.contains_key("baggage"));
        cx_baggage = Some(expected);
    }
    let h = cx_baggage.unwrap();
    let composite = W3cTraceContextPropagator::new().followed_by(BaggagePropagator::new());
    assert_eq!(
        baggage_of(&composite.extract(&MapExtractor(&h))),
        vec![("user".to_owned(), "alice".to_owned())]
    );
    let fields: Vec<_> = composite.fields().collect();
    assert_eq!(fields, vec!["traceparent", "tracestate", "baggage"]);
}

/// A message whose carrier takes borrowed values, to see which path the layers' inject took.
struct Message {
    headers: Recording,
}

impl OutgoingMessage for Message {
    fn destination(&self) -> Destination<'_> {
        Destination::new("q")
    }
    fn with_headers_mut(&mut self, f: &mut dyn FnMut(&mut dyn Injector)) {
        f(&mut self.headers)
    }
    fn with_str_injector(&mut self, f: &mut dyn FnMut(&mut dyn StrInjector)) {
        f(&mut self.headers)
    }
}

#[test]
fn instrumentation_injects_traceparent_borrowed_only_for_our_propagator() {
    let cx = Context::new()
        .with_remote_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
        .with_baggage([KeyValue::new("user", "alice")]);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let inject = |instr: &Instrumentation| {
        let mut m = Message {
            headers: Recording::default(),
        };
        instr.inject_message(&cx, &mut m);
        (m.headers.borrowed, m.headers.owned)
    };
    let tp = || vec![("traceparent".to_owned(), traceparent.to_owned())];
    let baggage = || vec![("baggage".to_owned(), "user=alice".to_owned())];
    assert_eq!(
        inject(&instrumentation(W3cTraceContextPropagator::new())),
        (tp(), vec![])
    );
    assert_eq!(
        inject(&instrumentation(
            W3cTraceContextPropagator::new().followed_by(BaggagePropagator::new())
        )),
        (tp(), baggage())
    );
    // Any other propagator goes through the plain injector, as before.
    let (borrowed, owned) = inject(&instrumentation(TextMapCompositePropagator::new(vec![
        Box::new(W3cTraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])));
    assert!(borrowed.is_empty());
    assert_eq!(owned, [tp(), baggage()].concat());
    let (borrowed, owned) = inject(&instrumentation(TraceContextPropagator::new()));
    assert!(borrowed.is_empty());
    assert_eq!(owned[0], tp()[0]);
}
