//! Cost of tracelink's core per message, against what the OpenTelemetry SDK itself needs.
//!
//! * `yardstick/*`: two SDK spans started and ended plus one W3C inject and one extract with the
//!   SDK's `TraceContextPropagator` over a `HashMap`: the least any instrumentation must pay.
//! * `tracelink/*`: a message through `ProducerLayer` around a no-op publish service, then
//!   through `ConsumerLayer` around a no-op handler (metrics included, aggregated by a periodic reader that exports once a minute).
//! * `carrier/*`: inject + extract of a W3C context through the core's `HashMap` carriers.
//! * `propagator/{sdk,tracelink}/*`: one inject or extract with the SDK's `TraceContextPropagator`
//!   and with tracelink's `W3cTraceContextPropagator` (`inject-str`: the borrowed `traceparent`
//!   the layers use with it), over a byte buffer, a `HashMap` and a list of header pairs.
//!
//! `sampled` exports through a batch processor into an exporter that discards; `unsampled` uses
//! the `AlwaysOff` sampler. After criterion, the bench prints heap allocations per message and
//! per inject, counted by a global allocator wrapper (the per-inject table covers the brokers'
//! carriers when built with `--features kafka,amqp,nats,sqs`).
//!
//! Run: `cargo bench --bench core`

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, Criterion};
use futures_util::FutureExt as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tower::{service_fn, Service};
use tracelink::core::carrier::{unique_value, MapExtractor, MapInjector, StrInjector};
use tracelink::core::propagation::W3cTraceContextPropagator;
use tracelink::core::{IncomingMessage, OutgoingMessage};
use tracelink::{ConsumerLayer, Destination, Instrumentation, MessagingSystem, ProducerLayer};

/// Counts allocations, so the bench can report them per message.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Debug)]
struct Discard;

/// Spans that reached [`Discard`]: the batch processor drops spans when its queue is full, and a
/// dropped span costs the producing thread less than an exported one.
static EXPORTED: AtomicU64 = AtomicU64::new(0);

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        EXPORTED.fetch_add(batch.len() as u64, Ordering::Relaxed);
        black_box(batch);
        Ok(())
    }
}

fn tracer_provider(sampled: bool) -> SdkTracerProvider {
    let builder = SdkTracerProvider::builder().with_batch_exporter(Discard);
    if sampled {
        builder.with_sampler(Sampler::AlwaysOn).build()
    } else {
        builder.with_sampler(Sampler::AlwaysOff).build()
    }
}

#[derive(Clone)]
struct Msg {
    headers: HashMap<String, String>,
}

impl OutgoingMessage for Msg {
    fn destination(&self) -> Destination<'_> {
        Destination::new("orders")
    }
    fn with_headers_mut(&mut self, f: &mut dyn FnMut(&mut dyn Injector)) {
        f(&mut MapInjector(&mut self.headers))
    }
    fn body_size(&self) -> Option<usize> {
        Some(64)
    }
}

impl IncomingMessage for Msg {
    fn destination(&self) -> Destination<'_> {
        Destination::new("orders")
    }
    fn with_headers(&self, f: &mut dyn FnMut(&dyn Extractor)) {
        f(&MapExtractor(&self.headers))
    }
    fn body_size(&self) -> Option<usize> {
        Some(64)
    }
}

/// The SDK alone: producer span + inject, extract + consumer span.
fn yardstick(tracer: &opentelemetry_sdk::trace::SdkTracer, propagator: &TraceContextPropagator) {
    let mut headers: HashMap<String, String> = HashMap::new();
    let span = tracer
        .span_builder("send orders")
        .with_kind(SpanKind::Producer)
        .start(tracer);
    let cx = Context::new().with_span(span);
    propagator.inject_context(&cx, &mut headers);
    cx.span().end();
    let parent = propagator.extract(&headers);
    let span = tracer
        .span_builder("process orders")
        .with_kind(SpanKind::Consumer)
        .start_with_context(tracer, &parent);
    let cx = parent.with_span(span);
    cx.span().end();
    black_box(cx);
}

/// Stands for a client that copies header bytes into a buffer of its own (rdkafka's
/// `OwnedHeaders`, a frame being written): reused between iterations, so the carrier itself
/// allocates nothing and what a propagator allocates shows.
struct WireInjector<'a>(&'a mut Vec<u8>);

impl WireInjector<'_> {
    fn write(&mut self, key: &str, value: &str) {
        self.0.extend_from_slice(key.as_bytes());
        self.0.push(b':');
        self.0.extend_from_slice(value.as_bytes());
        self.0.push(b'\n');
    }
}

impl Injector for WireInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.write(key, &value);
    }
}

impl StrInjector for WireInjector<'_> {
    fn set_str(&mut self, key: &str, value: &str) {
        self.write(key, value);
    }
}

/// Headers as a broker delivers them: `(name, value)` pairs in order, looked up by a scan with
/// the carrier rules (Kafka, NATS).
struct PairsExtractor<'a>(&'a [(String, String)]);

impl Extractor for PairsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        unique_value(
            self.0.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))),
            key,
        )
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// What a message from tracelink's producer carries: two application headers and `traceparent`.
fn broker_headers(cx: &Context) -> Vec<(String, String)> {
    let mut map = HashMap::new();
    W3cTraceContextPropagator::new().inject_context(cx, &mut MapInjector(&mut map));
    let mut pairs = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        (
            "message-id".to_owned(),
            "7d9f1c2e-8a41-4f0b-9d3e-1b2c3d4e5f60".to_owned(),
        ),
    ];
    pairs.extend(map);
    pairs
}

/// What the no-op publish service answers: the message as the broker would have received it.
struct Sent(Msg);

impl tracelink::core::PublishResponse for Sent {}

struct Ours<P, C> {
    producer: P,
    consumer: C,
}

fn ours(
    tracer_provider: &SdkTracerProvider,
    meter_provider: &SdkMeterProvider,
) -> Ours<
    impl Service<Msg, Response = Sent, Error = Infallible>,
    impl Service<Msg, Response = (), Error = Infallible>,
> {
    ours_with(
        tracer_provider,
        Some(meter_provider),
        TraceContextPropagator::new(),
    )
}

/// The same, with tracelink's own W3C propagator.
fn ours_fast(
    tracer_provider: &SdkTracerProvider,
    meter_provider: &SdkMeterProvider,
) -> Ours<
    impl Service<Msg, Response = Sent, Error = Infallible>,
    impl Service<Msg, Response = (), Error = Infallible>,
> {
    ours_with(
        tracer_provider,
        Some(meter_provider),
        W3cTraceContextPropagator::new(),
    )
}

/// `meter_provider: None` records metrics to the global meter provider, which no one installed
/// here: no-op instruments, to show what the metrics cost.
fn ours_with<P: TextMapPropagator + Send + Sync + 'static>(
    tracer_provider: &SdkTracerProvider,
    meter_provider: Option<&SdkMeterProvider>,
    propagator: P,
) -> Ours<
    impl Service<Msg, Response = Sent, Error = Infallible>,
    impl Service<Msg, Response = (), Error = Infallible>,
> {
    let mut builder = Instrumentation::builder(
        MessagingSystem::new("bench").with_server("127.0.0.1", Some(9092)),
    )
    .with_tracer_provider(tracer_provider)
    .with_propagator(propagator);
    if let Some(meter_provider) = meter_provider {
        builder = builder.with_meter_provider(meter_provider);
    }
    let instr = builder.build();
    let producer = tower::Layer::layer(
        &ProducerLayer::from(instr.clone()),
        service_fn(|m: Msg| async move { Ok::<_, Infallible>(Sent(m)) }),
    );
    let consumer = tower::Layer::layer(
        &ConsumerLayer::from(instr),
        service_fn(|m: Msg| async move {
            black_box(m);
            Ok::<_, Infallible>(())
        }),
    );
    Ours { producer, consumer }
}

/// One message in through the producer layer, out through the consumer layer's handler.
fn round_trip<P, C>(ours: &mut Ours<P, C>)
where
    P: Service<Msg, Response = Sent, Error = Infallible>,
    C: Service<Msg, Response = (), Error = Infallible>,
{
    let msg = Msg {
        headers: HashMap::new(),
    };
    let Some(Ok(Sent(received))) = ours.producer.call(msg).now_or_never() else {
        unreachable!("the no-op publish service is ready at once")
    };
    let _ = black_box(ours.consumer.call(received).now_or_never());
}

fn benches(c: &mut Criterion) {
    let propagator = TraceContextPropagator::new();
    for sampled in [true, false] {
        let label = if sampled { "sampled" } else { "unsampled" };
        let provider = tracer_provider(sampled);
        let meters = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
            .build();
        let tracer = provider.tracer("yardstick");
        c.bench_function(&format!("yardstick/{label}"), |b| {
            b.iter(|| yardstick(&tracer, &propagator))
        });
        let mut ours = ours(&provider, &meters);
        c.bench_function(&format!("tracelink/{label}"), |b| {
            b.iter(|| round_trip(&mut ours))
        });
        let mut fast = ours_fast(&provider, &meters);
        c.bench_function(&format!("tracelink-w3c/{label}"), |b| {
            b.iter(|| round_trip(&mut fast))
        });
    }
    let provider = tracer_provider(true);
    let tracer = provider.tracer("carrier");
    let cx = Context::new().with_span(tracer.start("x"));
    c.bench_function("carrier/inject+extract", |b| {
        b.iter(|| {
            let mut headers = HashMap::new();
            propagator.inject_context(&cx, &mut MapInjector(&mut headers));
            black_box(propagator.extract(&MapExtractor(&headers)));
        })
    });
    propagators(c, &cx);
}

/// The two `HashMap`s the extract cases read: `traceparent` alone (what tracelink's carriers, and
/// the Java and Python SDKs, write for a context without trace state), and what the Rust SDK's
/// propagator writes into a `HashMap` through the API's own `Injector` for it (`traceparent` and
/// an empty `tracestate`).
fn extract_maps(cx: &Context) -> [HashMap<String, String>; 2] {
    let sdk = TraceContextPropagator::new();
    let mut traceparent_only = HashMap::new();
    sdk.inject_context(cx, &mut MapInjector(&mut traceparent_only));
    let mut as_sdk_writes = HashMap::new();
    sdk.inject_context(cx, &mut as_sdk_writes);
    assert_eq!(
        as_sdk_writes.get("tracestate").map(String::as_str),
        Some("")
    );
    [traceparent_only, as_sdk_writes]
}

/// `propagator/{sdk,tracelink}/{inject,extract,extract-sdk-map,extract-pairs}`: one propagator
/// call, over the carriers described at [`WireInjector`], the `HashMap`s of [`extract_maps`]
/// (`extract`: `traceparent` alone; `extract-sdk-map`: with the Rust SDK's empty `tracestate`)
/// and [`PairsExtractor`] ([`broker_headers`]).
fn propagators(c: &mut Criterion, cx: &Context) {
    let sdk = TraceContextPropagator::new();
    let ours = W3cTraceContextPropagator::new();
    let [map, sdk_map] = extract_maps(cx);
    let pairs = broker_headers(cx);
    let mut wire = Vec::with_capacity(256);
    for (name, p) in [
        ("sdk", &sdk as &dyn TextMapPropagator),
        ("tracelink", &ours as &dyn TextMapPropagator),
    ] {
        c.bench_function(&format!("propagator/{name}/inject"), |b| {
            b.iter(|| {
                wire.clear();
                p.inject_context(cx, &mut WireInjector(&mut wire));
                black_box(&wire);
            })
        });
        if name == "tracelink" {
            // What the layers do with this propagator installed: `traceparent` borrowed.
            c.bench_function("propagator/tracelink/inject-str", |b| {
                b.iter(|| {
                    wire.clear();
                    ours.inject_context_str(cx, &mut WireInjector(&mut wire));
                    black_box(&wire);
                })
            });
        }
        c.bench_function(&format!("propagator/{name}/extract"), |b| {
            b.iter(|| black_box(p.extract(&MapExtractor(&map))))
        });
        c.bench_function(&format!("propagator/{name}/extract-sdk-map"), |b| {
            b.iter(|| black_box(p.extract(&MapExtractor(&sdk_map))))
        });
        c.bench_function(&format!("propagator/{name}/extract-pairs"), |b| {
            b.iter(|| black_box(p.extract(&PairsExtractor(&pairs))))
        });
    }
}

/// `TRACELINK_BENCH_CASE=propagator/<sdk|tracelink>/<inject|inject-str|extract|extract-sdk-map|extract-pairs>`:
/// one propagator operation `n` times, for callgrind.
fn single_propagator_case(case: &str, n: u64) {
    let provider = tracer_provider(true);
    let cx = Context::new().with_span(provider.tracer("carrier").start("x"));
    let sdk = TraceContextPropagator::new();
    let ours = W3cTraceContextPropagator::new();
    let p: &dyn TextMapPropagator = if case.contains("/sdk/") { &sdk } else { &ours };
    let [map, sdk_map] = extract_maps(&cx);
    let pairs = broker_headers(&cx);
    let mut wire = Vec::with_capacity(256);
    for _ in 0..n {
        if case.ends_with("/inject") {
            wire.clear();
            p.inject_context(&cx, &mut WireInjector(&mut wire));
            black_box(&wire);
        } else if case.ends_with("/inject-str") {
            wire.clear();
            ours.inject_context_str(&cx, &mut WireInjector(&mut wire));
            black_box(&wire);
        } else if case.ends_with("/extract") {
            black_box(p.extract(&MapExtractor(&map)));
        } else if case.ends_with("/extract-sdk-map") {
            black_box(p.extract(&MapExtractor(&sdk_map)));
        } else {
            black_box(p.extract(&PairsExtractor(&pairs)));
        }
    }
}

fn allocations_per_message() {
    const N: u64 = 10_000;
    let propagator = TraceContextPropagator::new();
    println!("\nheap allocations per message (produce + consume), {N} messages:");
    for sampled in [true, false] {
        let label = if sampled { "sampled" } else { "unsampled" };
        let provider = tracer_provider(sampled);
        let meters = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
            .build();
        let tracer = provider.tracer("yardstick");
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..N {
            yardstick(&tracer, &propagator);
        }
        let yard = ALLOCATIONS.load(Ordering::Relaxed) - before;
        let mut ours = ours(&provider, &meters);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..N {
            round_trip(&mut ours);
        }
        let ours = ALLOCATIONS.load(Ordering::Relaxed) - before;
        let mut fast = ours_fast(&provider, &meters);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..N {
            round_trip(&mut fast);
        }
        let fast = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!(
            "  {label:9}  yardstick {:5.1}  tracelink (SDK propagator) {:5.1}  tracelink (W3cTraceContextPropagator) {:5.1}",
            yard as f64 / N as f64,
            ours as f64 / N as f64,
            fast as f64 / N as f64
        );
        let _ = provider.shutdown();
    }
}

/// Heap allocations (Rust's global allocator) per inject of one sampled context, as the producer
/// layers inject: `Instrumentation::inject_message` with the SDK's propagator, and with
/// tracelink's (which hands `traceparent` over borrowed). Broker carriers are counted when the
/// bench is built with their feature; building and dropping the message itself is measured
/// separately and subtracted. What a C client allocates inside (librdkafka) is not counted here.
fn allocations_per_inject() {
    const N: u64 = 10_000;
    let provider = tracer_provider(true);
    let cx = Context::new().with_span(provider.tracer("carrier").start("x"));
    let sdk = Instrumentation::builder(MessagingSystem::new("bench"))
        .with_propagator(TraceContextPropagator::new())
        .build();
    let ours = Instrumentation::builder(MessagingSystem::new("bench"))
        .with_propagator(W3cTraceContextPropagator::new())
        .build();
    let per_op = |f: &mut dyn FnMut()| {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..N {
            f();
        }
        (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / N as f64
    };
    println!("\nheap allocations per inject (SDK propagator / tracelink's), {N} injects:");
    /// Allocations of `inject` into a fresh message from `make`, less those of `make` alone.
    fn row<M: OutgoingMessage>(
        name: &str,
        per_op: &dyn Fn(&mut dyn FnMut()) -> f64,
        make: &dyn Fn() -> M,
        instrs: [&Instrumentation; 2],
        cx: &Context,
    ) {
        let base = per_op(&mut || drop(black_box(make())));
        let [sdk, ours] = instrs.map(|instr| {
            per_op(&mut || {
                let mut m = make();
                instr.inject_message(cx, &mut m);
                drop(black_box(m));
            }) - base
        });
        println!("  {name:44} {sdk:5.1} / {ours:5.1}");
    }
    let mut wire = Vec::with_capacity(256);
    let wire_counts = [&sdk, &ours].map(|instr| {
        per_op(&mut || {
            wire.clear();
            let mut m = WireMsg(&mut wire);
            instr.inject_message(&cx, &mut m);
        })
    });
    println!(
        "  {:44} {:5.1} / {:5.1}",
        "wire buffer (a client that copies bytes)", wire_counts[0], wire_counts[1]
    );
    row(
        "HashMap<String, String>",
        &per_op,
        &|| Msg {
            headers: HashMap::new(),
        },
        [&sdk, &ours],
        &cx,
    );
    #[cfg(feature = "kafka")]
    row(
        "kafka: KafkaRecord, no headers of its own",
        &per_op,
        &|| tracelink::kafka::KafkaRecord::new("orders"),
        [&sdk, &ours],
        &cx,
    );
    #[cfg(feature = "kafka")]
    row(
        "kafka: KafkaRecord with one header",
        &per_op,
        &|| tracelink::kafka::KafkaRecord::new("orders").with_header("content-type", "json"),
        [&sdk, &ours],
        &cx,
    );
    #[cfg(feature = "amqp")]
    row(
        "amqp: Publish (FieldTable), no headers",
        &per_op,
        &|| tracelink::amqp::Publish::new("".into(), "orders".into(), b"{}".to_vec()),
        [&sdk, &ours],
        &cx,
    );
    #[cfg(feature = "nats")]
    row(
        "nats: Publish (HeaderMap), no headers",
        &per_op,
        &|| tracelink::nats::Publish::new("orders", &b"{}"[..]),
        [&sdk, &ours],
        &cx,
    );
    #[cfg(feature = "sqs")]
    row(
        "sqs: SendRequest (staged attributes)",
        &per_op,
        &|| tracelink::sqs::SendRequest::new("http://127.0.0.1:5000/000000000000/orders", "{}"),
        [&sdk, &ours],
        &cx,
    );
    let _ = provider.shutdown();
}

/// An outgoing message over a [`WireInjector`].
struct WireMsg<'a>(&'a mut Vec<u8>);

impl OutgoingMessage for WireMsg<'_> {
    fn destination(&self) -> Destination<'_> {
        Destination::new("orders")
    }
    fn with_headers_mut(&mut self, f: &mut dyn FnMut(&mut dyn Injector)) {
        f(&mut WireInjector(self.0))
    }
    fn with_str_injector(&mut self, f: &mut dyn FnMut(&mut dyn StrInjector)) {
        f(&mut WireInjector(self.0))
    }
}

criterion_group!(core, benches);

/// `TRACELINK_BENCH_CASE=<yardstick|tracelink>-<sampled|unsampled> TRACELINK_BENCH_N=<n>` runs
/// just that case `n` times and exits: for instruction counts under `valgrind --tool=callgrind`,
/// which do not depend on what else the machine is doing (see BENCHMARKS.md).
fn single_case(case: &str, n: u64) {
    let sampled = case.ends_with("-sampled");
    let provider = tracer_provider(sampled);
    let meters = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
        .build();
    if case.starts_with("yardstick") {
        let propagator = TraceContextPropagator::new();
        let tracer = provider.tracer("yardstick");
        for _ in 0..n {
            yardstick(&tracer, &propagator);
        }
    } else if case.starts_with("tracelink-nometrics") {
        let mut ours = ours_with(&provider, None, W3cTraceContextPropagator::new());
        for _ in 0..n {
            round_trip(&mut ours);
        }
    } else if case.starts_with("tracelink-w3c") {
        let mut ours = ours_fast(&provider, &meters);
        for _ in 0..n {
            round_trip(&mut ours);
        }
    } else {
        let mut ours = ours(&provider, &meters);
        for _ in 0..n {
            round_trip(&mut ours);
        }
    }
    let _ = provider.shutdown();
    if sampled {
        eprintln!(
            "spans exported: {} of {}",
            EXPORTED.load(Ordering::Relaxed),
            2 * n
        );
    }
}

fn main() {
    if let Ok(case) = std::env::var("TRACELINK_BENCH_CASE") {
        let n = std::env::var("TRACELINK_BENCH_N")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        if case.starts_with("propagator/") {
            single_propagator_case(&case, n);
        } else {
            single_case(&case, n);
        }
        return;
    }
    if std::env::var_os("TRACELINK_BENCH_ALLOCS").is_some() {
        // Allocation counts only: `TRACELINK_BENCH_ALLOCS=1 cargo test --bench core --features
        // kafka,amqp,nats,sqs` (a debug build; the counts do not depend on optimisation).
        allocations_per_inject();
        return;
    }
    core();
    Criterion::default().configure_from_args().final_summary();
    allocations_per_message();
    allocations_per_inject();
}
