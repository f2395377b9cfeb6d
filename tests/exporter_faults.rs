//! The telemetry exporter is unreachable or hangs (issue 9): messages keep flowing, spans are
//! dropped, memory stays bounded.
//!
//! Each test sends [`N`] messages through `ProducerLayer` into a bounded in-process channel
//! (1024) and, in another task, through `ConsumerLayer` around a handler that records which
//! message it got; 100% sampled (`Sampler::AlwaysOn`: a PRODUCER and a CONSUMER span per
//! message), tracelink's W3C propagator. The spans go to the real `opentelemetry-otlp` exporter
//! (gRPC over tonic, or HTTP/protobuf over the blocking reqwest client) behind the SDK's batch
//! processor with its default settings (queue of 2048 spans, batches of 512), pointed at:
//!
//! * a closed loopback port (nothing listens): every export fails after the exporter's retries,
//!   with its default 10 s timeout;
//! * a listener in this test that accepts TCP connections and never reads or writes a byte;
//! * a listener that reads the request and never answers (HTTP: a raw socket reading the POST;
//!   gRPC: a tonic `TraceService` whose `export` never completes).
//!
//! Against the hanging listeners the exporter's timeout is raised to 10 minutes, so the first
//! export stays stuck for the whole test (with the default 10 s it would give up and move to
//! the next batch every 10 s: the same picture, only less provable).
//!
//! Every test asserts:
//!
//! * **every message is handled exactly once**, under a generous overall timeout that only
//!   detects a hang;
//! * **the flow is not held up by the exporter**: for the hanging listeners, all `N` messages
//!   were handled while an export was provably stuck (the listener accepted a connection, the
//!   exporter's first `export` call had started and had not returned when the last message was
//!   handled, and the listener never sent a byte); for the closed port, no export succeeded. In
//!   both cases the batch processor **dropped spans instead of blocking**: of the `2 N` spans
//!   that ended (counted by a second span processor), fewer than `2 N - 2048` reached the
//!   exporter, so more spans ended than the exporter took plus everything the queue can hold;
//! * **resident memory stays bounded**: the peak (`VmHWM`, reset before the flow through
//!   `/proc/self/clear_refs`) minus `VmRSS` before the flow stays under [`MEMORY_BOUND_KB`];
//! * **shutdown does not hang**: `shutdown_with_timeout(1 s)` returns. With a hanging
//!   exporter it returns `Err(Timeout)`: the processor's thread is blocked inside the stuck
//!   export and cannot take the shutdown message; the spans still queued are lost, and the
//!   thread stays blocked until the export's own timeout fires (then it exports what is left
//!   once more and exits). With the closed port it usually times out too (the thread is
//!   between the exporter's retries, which go on for up to its 10 s timeout). An application
//!   shutting down with a dead or hanging collector therefore waits at most the timeout it
//!   gives shutdown (5 s for `shutdown()`), not the exporter's.
//!
//! A control, `keeping_every_span_breaks_the_memory_bound`, shows that the memory bound would
//! catch spans being kept.
//!
//! The tests share the process's memory figures, so they run one at a time (a lock).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::resource::Resource;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tracelink::core::propagation::W3cTraceContextPropagator;
use tracelink::{ConsumerLayer, Instrumentation, MessagingSystem};

#[path = "support/in_process.rs"]
mod in_process;
use in_process::{closed_port, memory_kb, queueing_producer, reset_peak, Message};

/// Messages per test. A debug build handles them in a few seconds; 2 N spans are far more than
/// the batch processor's queue (2048) and its first batch (512) together.
const N: usize = 100_000;

/// The batch processor's default queue size (`OTEL_BSP_MAX_QUEUE_SIZE`, not set here).
const QUEUE: usize = 2048;

/// Bound on resident growth during one flow.
///
/// Why it means something: if the batch processor (or the exporter) kept spans instead of
/// dropping them, the `2 N` spans of a flow would stay resident. The control test
/// `keeping_every_span_breaks_the_memory_bound` runs the same flow into an exporter that keeps
/// every span and asserts that it grows past this bound (measured: about 140 MB for 200,000
/// spans in a debug build). A flow whose spans are dropped needs a few MB (the queue of 2048
/// spans, one batch, tonic or reqwest buffers; 0.6 to 4 MB measured).
const MEMORY_BOUND_KB: u64 = 50 * 1024;

/// Detects a blocked flow; not a speed assertion.
const FLOW_DEADLINE: Duration = Duration::from_secs(180);

/// The exporter's timeout against the hanging listeners: longer than any run of this test, so
/// the first export is still stuck when the last message is handled.
const STUCK_EXPORT_TIMEOUT: Duration = Duration::from_secs(600);

/// What `shutdown_with_timeout` is given.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// Detects a shutdown that hangs in spite of its timeout.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);

/// One test at a time: they read the process's resident memory.
static SERIAL: Mutex<()> = Mutex::new(());

/// What the exporter under test was asked to do.
#[derive(Debug, Default)]
struct ExportCounts {
    /// `export` calls made.
    started: AtomicUsize,
    /// `export` calls that returned.
    finished: AtomicUsize,
    /// `export` calls that returned `Ok`.
    succeeded: AtomicUsize,
    /// Spans handed to `export`.
    spans: AtomicUsize,
}

/// The real OTLP exporter, counting what it is handed.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    counts: Arc<ExportCounts>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.counts.started.fetch_add(1, Ordering::SeqCst);
        self.counts.spans.fetch_add(batch.len(), Ordering::SeqCst);
        let result = self.inner.export(batch).await;
        if result.is_ok() {
            self.counts.succeeded.fetch_add(1, Ordering::SeqCst);
        }
        self.counts.finished.fetch_add(1, Ordering::SeqCst);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource)
    }
}

/// Counts the spans that ended (every one, before the batch processor may drop it).
#[derive(Debug, Clone, Default)]
struct Ended(Arc<AtomicUsize>);

impl SpanProcessor for Ended {
    fn on_start(&self, _: &mut Span, _: &Context) {}
    fn on_end(&self, _: SpanData) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Grpc,
    Http,
}

/// Where the exporter points.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Collector {
    /// A loopback port nothing listens on.
    ClosedPort,
    /// Accepts connections, never reads or writes.
    AcceptsNeverAnswers,
    /// Reads the request, never answers.
    ReadsNeverAnswers,
}

/// What a hanging listener saw.
#[derive(Debug, Default)]
struct Listener {
    accepted: AtomicUsize,
    /// Bytes read from the exporter (raw listeners that read).
    read: AtomicUsize,
    /// The first bytes of the first connection (raw listeners that read).
    head: Mutex<Vec<u8>>,
    /// Export requests received (the gRPC service that never answers).
    requests: AtomicUsize,
}

/// A `TraceService` whose `export` never completes: it counts the request and waits forever.
#[derive(Clone)]
struct NeverAnswers(Arc<Listener>);

#[tonic::async_trait]
impl TraceService for NeverAnswers {
    async fn export(
        &self,
        _: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.requests.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

/// Starts a raw listener that accepts and keeps every connection open without writing; when
/// `read`, it also reads everything the client sends.
async fn raw_listener(listener: Arc<Listener>, read: bool) -> SocketAddr {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut stream, _)) = socket.accept().await else {
                continue;
            };
            listener.accepted.fetch_add(1, Ordering::SeqCst);
            if read {
                let listener = listener.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    // Never writes; the stream is dropped (closed) only when the client closes.
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        listener.read.fetch_add(n, Ordering::SeqCst);
                        let mut head = listener.head.lock().unwrap();
                        if head.len() < 256 {
                            let take = n.min(256 - head.len());
                            head.extend_from_slice(&buffer[..take]);
                        }
                    }
                    std::future::pending::<()>().await;
                });
            } else {
                held.push(stream);
            }
        }
    });
    address
}

/// Starts a gRPC server (HTTP/2, tonic's generated service served by hyper) whose
/// `TraceService::export` never answers.
async fn grpc_never_answers(listener: Arc<Listener>) -> SocketAddr {
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else {
                continue;
            };
            listener.accepted.fetch_add(1, Ordering::SeqCst);
            let service = TraceServiceServer::new(NeverAnswers(listener.clone()));
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| service.clone().oneshot(request));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

fn exporter(
    transport: Transport,
    address: SocketAddr,
    timeout: Option<Duration>,
    runtime: &tokio::runtime::Runtime,
) -> opentelemetry_otlp::SpanExporter {
    match transport {
        Transport::Grpc => {
            // tonic's channel lives on the runtime it was built in.
            let _guard = runtime.enter();
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(format!("http://{address}"));
            match timeout {
                Some(timeout) => builder.with_timeout(timeout).build(),
                None => builder.build(),
            }
            .unwrap()
        }
        // Built outside the runtime: the blocking reqwest client must not live in async context.
        Transport::Http => {
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("http://{address}/v1/traces"));
            match timeout {
                Some(timeout) => builder.with_timeout(timeout).build(),
                None => builder.build(),
            }
            .unwrap()
        }
    }
}

/// Publishes `n` messages and consumes them in another task; returns how often each message
/// reached the handler.
async fn flow(instrumentation: Instrumentation, n: usize) -> Vec<u32> {
    let seen: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    let (tx, mut rx) = mpsc::channel::<Message>(1024);
    let consumer_instrumentation = instrumentation.clone();
    let consumer_seen = seen.clone();
    let consumer = tokio::spawn(async move {
        let mut consumer = ServiceBuilder::new()
            .layer(ConsumerLayer::from(consumer_instrumentation))
            .service(service_fn(move |message: Message| {
                consumer_seen[message.id].fetch_add(1, Ordering::SeqCst);
                std::future::ready(Ok::<_, Infallible>(()))
            }));
        while let Some(message) = rx.recv().await {
            consumer.ready().await.unwrap().call(message).await.unwrap();
        }
    });
    let mut producer = queueing_producer(instrumentation, tx);
    for id in 0..n {
        let message = Message::new(id);
        producer.ready().await.unwrap().call(message).await.unwrap();
    }
    // Dropping the producer drops the last sender: the consumer ends after the last message.
    drop(producer);
    consumer.await.unwrap();
    seen.iter().map(|s| s.load(Ordering::SeqCst)).collect()
}

fn run(transport: Transport, collector: Collector) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = Arc::new(Listener::default());
    let (address, timeout) = match collector {
        Collector::ClosedPort => (closed_port(), None),
        Collector::AcceptsNeverAnswers => (
            runtime.block_on(raw_listener(listener.clone(), false)),
            Some(STUCK_EXPORT_TIMEOUT),
        ),
        Collector::ReadsNeverAnswers => (
            match transport {
                Transport::Grpc => runtime.block_on(grpc_never_answers(listener.clone())),
                Transport::Http => runtime.block_on(raw_listener(listener.clone(), true)),
            },
            Some(STUCK_EXPORT_TIMEOUT),
        ),
    };
    let counts = Arc::new(ExportCounts::default());
    let ended = Ended::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_span_processor(ended.clone())
        .with_batch_exporter(Counting {
            inner: exporter(transport, address, timeout, &runtime),
            counts: counts.clone(),
        })
        .build();
    let instrumentation = Instrumentation::builder(MessagingSystem::new("in_process"))
        .with_tracer_provider(&provider)
        .with_propagator(W3cTraceContextPropagator::new())
        .build();

    assert!(
        reset_peak(),
        "resetting VmHWM through /proc/self/clear_refs"
    );
    let (before, _) = memory_kb();
    let started = Instant::now();
    let seen = runtime.block_on(async {
        tokio::time::timeout(FLOW_DEADLINE, flow(instrumentation, N))
            .await
            .unwrap_or_else(|_| panic!("the message flow did not finish within {FLOW_DEADLINE:?}"))
    });
    let elapsed = started.elapsed();
    let (after, peak) = memory_kb();
    // Read right after the last message was handled.
    let exports_started = counts.started.load(Ordering::SeqCst);
    let exports_finished = counts.finished.load(Ordering::SeqCst);
    let exports_succeeded = counts.succeeded.load(Ordering::SeqCst);
    let exported_spans = counts.spans.load(Ordering::SeqCst);
    let ended_spans = ended.0.load(Ordering::SeqCst);
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{transport:?} {collector:?}: {N} messages in {elapsed:?}; {ended_spans} spans ended, \
         {exported_spans} handed to the exporter in {exports_started} export calls \
         ({exports_finished} returned, {exports_succeeded} succeeded); VmRSS {before} kB before, \
         {after} kB after, peak growth {growth} kB; listener: {} accepted, {} bytes read, {} \
         gRPC requests",
        listener.accepted.load(Ordering::SeqCst),
        listener.read.load(Ordering::SeqCst),
        listener.requests.load(Ordering::SeqCst),
    );

    // Every message handled exactly once.
    let wrong: Vec<(usize, u32)> = seen
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != 1)
        .map(|(i, n)| (i, *n))
        .take(10)
        .collect();
    assert_eq!(
        wrong,
        vec![],
        "messages not handled exactly once (id, times)"
    );
    assert_eq!(ended_spans, 2 * N, "a PRODUCER and a CONSUMER span each");

    // The exporter was stuck (or failing) while the messages flowed.
    assert!(exports_started >= 1, "the batch processor tried to export");
    assert_eq!(exports_succeeded, 0, "no export can succeed");
    match collector {
        Collector::ClosedPort => {}
        Collector::AcceptsNeverAnswers | Collector::ReadsNeverAnswers => {
            assert!(
                listener.accepted.load(Ordering::SeqCst) >= 1,
                "the hanging listener accepted the exporter's connection"
            );
            assert_eq!(
                exports_finished, 0,
                "the first export was still stuck when the last message was handled"
            );
        }
    }
    if collector == Collector::ReadsNeverAnswers {
        match transport {
            Transport::Grpc => assert!(
                listener.requests.load(Ordering::SeqCst) >= 1,
                "the gRPC listener received an export request"
            ),
            Transport::Http => {
                let head = listener.head.lock().unwrap().clone();
                assert!(
                    head.starts_with(b"POST /v1/traces "),
                    "the listener read the exporter's request: {:?}",
                    String::from_utf8_lossy(&head)
                );
            }
        }
    }
    // Spans were dropped rather than waited for: more ended than the exporter took plus
    // everything the processor's queue can hold.
    assert!(
        exported_spans + QUEUE < ended_spans,
        "the batch processor dropped spans ({ended_spans} ended, {exported_spans} exported, \
         queue {QUEUE})"
    );

    assert!(
        growth < MEMORY_BOUND_KB,
        "resident memory grew by {growth} kB during the flow (bound {MEMORY_BOUND_KB} kB)"
    );

    // Shutdown returns within its timeout even though the exporter hangs. On a thread of its
    // own: it blocks, and a hang must fail the test rather than stall it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let shutdown_provider = provider.clone();
    let shutdown_started = Instant::now();
    std::thread::spawn(move || {
        let _ = done_tx.send(shutdown_provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT));
    });
    let result = done_rx
        .recv_timeout(SHUTDOWN_DEADLINE)
        .unwrap_or_else(|_| panic!("shutdown did not return within {SHUTDOWN_DEADLINE:?}"));
    eprintln!(
        "{transport:?} {collector:?}: shutdown returned {result:?} after {:?}",
        shutdown_started.elapsed()
    );
    if collector != Collector::ClosedPort {
        // The processor's thread is inside the stuck export: shutdown gives up at its timeout.
        assert!(
            result.is_err(),
            "shutdown cannot complete while the export hangs"
        );
    }
    // Tasks still waiting on the hanging collector are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(5));
}

#[test]
fn grpc_closed_port() {
    run(Transport::Grpc, Collector::ClosedPort);
}

#[test]
fn http_closed_port() {
    run(Transport::Http, Collector::ClosedPort);
}

#[test]
fn grpc_accepts_and_never_answers() {
    run(Transport::Grpc, Collector::AcceptsNeverAnswers);
}

#[test]
fn grpc_reads_and_never_answers() {
    run(Transport::Grpc, Collector::ReadsNeverAnswers);
}

#[test]
fn http_accepts_and_never_answers() {
    run(Transport::Http, Collector::AcceptsNeverAnswers);
}

#[test]
fn http_reads_and_never_answers() {
    run(Transport::Http, Collector::ReadsNeverAnswers);
}

/// The control: the same flow into an exporter that keeps every span (the SDK's simple
/// processor into `InMemorySpanExporter`) grows past [`MEMORY_BOUND_KB`], so the bound above
/// would catch a processor or exporter that kept spans instead of dropping them.
#[test]
fn keeping_every_span_breaks_the_memory_bound() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOn)
        .with_simple_exporter(exporter.clone())
        .build();
    let instrumentation = Instrumentation::builder(MessagingSystem::new("in_process"))
        .with_tracer_provider(&provider)
        .with_propagator(W3cTraceContextPropagator::new())
        .build();
    assert!(
        reset_peak(),
        "resetting VmHWM through /proc/self/clear_refs"
    );
    let (before, _) = memory_kb();
    let seen = runtime.block_on(async {
        tokio::time::timeout(FLOW_DEADLINE, flow(instrumentation, N))
            .await
            .unwrap_or_else(|_| panic!("the message flow did not finish within {FLOW_DEADLINE:?}"))
    });
    let (_, peak) = memory_kb();
    let growth = peak.saturating_sub(before);
    let kept = exporter.get_finished_spans().unwrap().len();
    eprintln!("keeping every span: {kept} spans kept, peak growth {growth} kB");
    assert!(seen.iter().all(|n| *n == 1), "every message handled once");
    assert_eq!(kept, 2 * N, "every span kept");
    assert!(
        growth > MEMORY_BOUND_KB,
        "keeping {kept} spans grew resident memory by {growth} kB, within the bound of \
         {MEMORY_BOUND_KB} kB: the bound would not catch spans being kept"
    );
    provider.shutdown().unwrap();
}
